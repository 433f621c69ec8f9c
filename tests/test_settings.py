"""Settings parsing and the settings table of the docs (docs/settings.md)."""

from __future__ import annotations

import pytest

from nsfw_core.base.settings import (
    ROOT,
    SETTINGS,
    SETTINGS_PAGE,
    TABLE_END,
    TABLE_START,
    SettingsError,
    load_settings,
    markdown_table,
    page_with_table,
)

KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"


def table_in_page(page: str) -> str:
    """The generated part of the settings page's text: what lies between its two markers."""
    start = page.index(TABLE_START) + len(TABLE_START)
    return page[start:page.index(TABLE_END, start)].strip("\n")


def test_defaults():
    s = load_settings(environ={})
    assert s.port == 8080 and s.model == "MobileNetV2Mid"
    assert s.max_bytes == 10 * 1024 * 1024 and s.max_pixels == 50_000_000
    assert s.fetch_timeout == 10.0 and s.max_redirects == 5
    assert s.allow_private_hosts == () and s.api_keys == ()
    assert s.adult_classes == ("porn", "sexy") and s.safe_classes == ("neutral", "drawings")
    assert s.model_dir == str(ROOT / "model") and s.data_dir == str(ROOT / "var")


def test_environment_values_are_parsed():
    s = load_settings(environ={"PORT": "9000", "NSFW_ALLOW_PRIVATE_HOSTS": " 127.0.0.1:8000, localhost ,",
                               "NSFW_API_KEYS": f"{KEY_A},{KEY_B}", "NSFW_JPEG_DRAFT": "false",
                               "NSFW_DATA_DIR": "/tmp/x"})
    assert s.port == 9000
    assert s.allow_private_hosts == ("127.0.0.1:8000", "localhost")
    assert s.api_keys == (KEY_A, KEY_B) and s.jpeg_draft is False and s.data_dir == "/tmp/x"


@pytest.mark.parametrize("name,value", [("PORT", "abc"), ("PORT", "70000"), ("NSFW_MODEL", "ResNet"),
                                        ("NSFW_ADULT_THRESHOLD", "1.5"), ("NSFW_ADULT_CLASSES", "porn,nude"),
                                        ("NSFW_FETCH_TIMEOUT", "nan"), ("NSFW_JPEG_DRAFT", "maybe")])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings(environ={name: value})


def test_the_settings_page_table_is_generated_from_the_code():
    page = SETTINGS_PAGE.read_text()
    assert table_in_page(page) == markdown_table(), (
        "docs/settings.md is out of date: run .venv/bin/python -m nsfw_core.base.settings --write")
    assert page_with_table(page) == page
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


def test_every_setting_has_its_row_on_the_settings_page():
    rows = table_in_page(SETTINGS_PAGE.read_text()).splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{s.name}`" for s in SETTINGS]


def test_the_generated_table_replaces_only_what_lies_between_the_markers():
    page = SETTINGS_PAGE.read_text()
    stale = page.replace("| `PORT` |", "| `PORT_OLD` |", 1)
    assert stale != page and page_with_table(stale) == page


@pytest.mark.parametrize("cookie_secret", ["", "cookie-secret-0123456789abcdef"])
def test_a_short_oidc_client_secret_refuses_to_load(cookie_secret):
    """Issue 29: keys and secrets have a minimum length.  With NSFW_OIDC_COOKIE_SECRET empty the sign-in cookie's
    key is derived from the client secret, so a short one made that key guessable; before, any length loaded.
    Refused like every secret (whether or not it signs the cookie), the value never shown."""
    short = "abc123"
    env = {"NSFW_OIDC_METADATA_URL": "https://idp.example/.well-known/openid-configuration",
           "NSFW_OIDC_CLIENT_ID": "nsfw-app", "NSFW_OIDC_CLIENT_SECRET": short,
           "NSFW_OIDC_COOKIE_SECRET": cookie_secret}
    with pytest.raises(SettingsError) as raised:
        load_settings(environ=env)
    message = str(raised.value)
    assert message == "NSFW_OIDC_CLIENT_SECRET=<secret>: must be at least 16 characters"
    assert short not in message
    long_enough = "c" * 16
    oidc = load_settings(environ={**env, "NSFW_OIDC_CLIENT_SECRET": long_enough}).access_config.oidc
    assert oidc.client_secret == long_enough
