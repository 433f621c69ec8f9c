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
        "expose_tokens": ["access"],  # st.user.tokens["access"]: re-checking the sign-in at the provider
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


# ---------------------------------------------------------------- asking the provider again (issue 31)


def _json(body: object, code: int = 200):
    import json as _j

    from tests.helpers.servers import send

    return send(_j.dumps(body).encode(), "application/json", code)


@pytest.fixture
def provider(local_server, monkeypatch):
    """A provider's discovery document and userinfo endpoint on a local server; ``claims`` is what it answers."""
    from nsfw_core import userinfo

    monkeypatch.setattr(userinfo, "_endpoints", {})
    state = {"claims": {"sub": "u-1", "email": "admin@example.com", "email_verified": True}, "status": 200}
    local_server.route("/.well-known/openid-configuration",
                       lambda h: _json({"userinfo_endpoint": local_server.url("/userinfo")})(h))
    local_server.route("/userinfo", lambda h: _json(state["claims"], int(str(state["status"])))(h))
    state["metadata"] = local_server.url("/.well-known/openid-configuration")
    state["server"] = local_server
    return state


def test_userinfo_sends_the_access_token_and_reads_the_claims(provider):
    from nsfw_core import userinfo

    assert userinfo.userinfo(provider["metadata"], "at-secret-1") == provider["claims"]
    [_, asked] = provider["server"].requests
    assert asked.path == "/userinfo" and asked.headers["authorization"] == "Bearer at-secret-1"
    userinfo.userinfo(provider["metadata"], "at-secret-1")
    assert [r.path for r in provider["server"].requests].count("/.well-known/openid-configuration") == 1  # cached


@pytest.mark.parametrize(("code", "error"), [(401, "Refused"), (403, "Refused"), (400, "Refused"),
                                             (500, "Unavailable"), (302, "Unavailable"), (404, "Unavailable"),
                                             (429, "Unavailable")])
def test_userinfo_refusals_and_failures(provider, code, error):
    from nsfw_core import userinfo

    provider["status"] = code
    with pytest.raises(getattr(userinfo, error)) as err:
        userinfo.userinfo(provider["metadata"], "at-secret-2")
    assert "at-secret-2" not in str(err.value) and f"HTTP {code}" in str(err.value)


def test_userinfo_of_a_provider_that_cannot_be_reached(monkeypatch):
    from nsfw_core import userinfo
    from tests.helpers.appserver import free_port

    monkeypatch.setattr(userinfo, "_endpoints", {})
    with pytest.raises(userinfo.Unavailable) as err:
        userinfo.userinfo(f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration", "at-secret-3")
    assert "at-secret-3" not in str(err.value)


def test_revalidator_ends_what_the_provider_no_longer_vouches_for(provider, monkeypatch):
    from nsfw_core.access import Access, Role
    from nsfw_ui import signin

    monkeypatch.setattr(signin, "metadata_url", lambda _provider: provider["metadata"])
    rules = Access(load_settings({"NSFW_ADMIN_EMAILS": "admin@example.com",
                                  "NSFW_REVIEWER_EMAILS": "@example.com"}).access_config, oidc_from_secrets=True)
    claims = {"sub": "u-1", "email": "admin@example.com", "email_verified": True, "provider": "default"}
    who = rules.from_oidc(claims)
    assert who.role is Role.ADMIN
    assert signin.revalidator(rules, claims, who, {}) is None  # no access token exposed: cannot ask
    ask = signin.revalidator(rules, claims, who, {"access": "at-4"})
    assert ask is not None and ask().outcome == "ok"
    for now, why in [
        ({"sub": "u-1", "email": "admin@example.com", "email_verified": False}, "no longer gives this address"),
        ({"sub": "u-1", "email": "admin@example.com"}, "no longer gives this address the admin role"),
        ({"sub": "u-1", "email": "other@example.com", "email_verified": True}, "address at the identity provider changed"),
        ({"sub": "u-2", "email": "admin@example.com", "email_verified": True}, "answered for another user"),
    ]:
        provider["claims"] = now
        answer = ask()
        assert (answer.outcome, why in answer.reason) == ("refused", True), (now, answer)
    provider["claims"], provider["status"] = {"error": "invalid_token"}, 401
    answer = ask()
    assert answer.outcome == "refused" and "(HTTP 401, invalid_token: revoked" in answer.reason
    provider["status"] = 503
    assert ask().outcome == "unavailable"
