"""nsfw_ui.oidc: OpenID Connect settings from the environment handed to Streamlit's st.login."""

from __future__ import annotations

import stat
import tomllib

import pytest
from streamlit import config

from nsfw_core.base.settings import load_settings
from nsfw_ui import oidc

ENV = {
    "NSFW_OIDC_METADATA_URL": "https://idp.example/.well-known/openid-configuration",
    "NSFW_OIDC_CLIENT_ID": "nsfw-app",
    "NSFW_OIDC_CLIENT_SECRET": 'se"cret\\with\nodd characters',
}


def settings(**env: str):
    return load_settings({**ENV, **env}).access_config.oidc


@pytest.fixture
def secrets_files(tmp_path):
    before = config.get_option("secrets.files")
    config.set_option("secrets.files", [str(tmp_path / "none.toml")])
    yield tmp_path
    config.set_option("secrets.files", before)


def test_redirect_uri():
    assert oidc.redirect_uri(settings(PORT="9000"), None) == "http://localhost:9000/oauth2callback"
    assert oidc.redirect_uri(settings(), "https://nsfw.example.app/") == "https://nsfw.example.app/oauth2callback"
    explicit = settings(NSFW_OIDC_REDIRECT_URI="https://x.example/oauth2callback")
    assert oidc.redirect_uri(explicit, "https://nsfw.example.app") == "https://x.example/oauth2callback"


def test_cookie_secret_is_derived_the_same_everywhere_unless_set():
    derived = oidc.cookie_secret(settings())
    assert derived == oidc.cookie_secret(settings()) and len(derived) == 64
    assert derived != oidc.cookie_secret(settings(NSFW_OIDC_CLIENT_SECRET="another-client-secret"))
    assert oidc.cookie_secret(settings(NSFW_OIDC_COOKIE_SECRET="c" * 40)) == "c" * 40


def test_auth_section_is_toml_that_reads_back_exactly():
    section = tomllib.loads(oidc.auth_section(settings(), "https://nsfw.example.app"))["auth"]
    assert section == {
        "redirect_uri": "https://nsfw.example.app/oauth2callback",
        "cookie_secret": oidc.cookie_secret(settings()),
        "client_id": "nsfw-app",
        "client_secret": 'se"cret\\with\nodd characters',
        "server_metadata_url": "https://idp.example/.well-known/openid-configuration",
    }


def test_install_writes_a_private_secrets_file(secrets_files):
    path = oidc.install(settings(), None)
    assert path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert config.get_option("secrets.files") == [str(secrets_files / "none.toml"), str(path)]
    assert tomllib.loads(path.read_text())["auth"]["client_id"] == "nsfw-app"


def test_install_does_nothing_when_not_configured_or_a_secrets_file_has_auth(secrets_files):
    assert oidc.install(load_settings({}).access_config.oidc) is None
    own = secrets_files / "secrets.toml"
    own.write_text('[auth]\nclient_id = "from-the-file"\n')
    config.set_option("secrets.files", [str(own)])
    assert oidc.install(settings()) is None
    assert config.get_option("secrets.files") == [str(own)]
