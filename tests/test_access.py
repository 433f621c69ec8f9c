"""nsfw_core.access: roles, permissions, local mode, e-mail allow-lists, secret sign-in."""

from __future__ import annotations

import logging
import re

import pytest

from nsfw_core.access import (
    ANONYMOUS,
    LOCAL,
    Access,
    AttemptLimiter,
    Identity,
    Permission,
    Role,
    loopback_host,
    same_origin,
    secrets_toml_auth,
)
from nsfw_core.base.errors import Forbidden, TooManyAttempts
from nsfw_core.base.settings import SettingsError, load_settings

ADMIN_SECRET = "a" * 16 + "-admin"
REVIEWER_SECRET = "r" * 16 + "-reviewer"


def access(oidc: bool = False, **env: str) -> Access:
    return Access(load_settings(env).access_config, oidc_from_secrets=oidc)


REVIEWER = Identity("r", Role.REVIEWER, "secret")
ADMIN = Identity("a", Role.ADMIN, "secret")


@pytest.mark.parametrize(("who", "allowed"), [
    (ANONYMOUS, set()),
    (REVIEWER, {Permission.CLASSIFY, Permission.REVIEW, Permission.EVALUATE}),
    (ADMIN, set(Permission)),
])
def test_roles_when_the_api_is_keyed(who, allowed):
    rules = access(NSFW_API_KEYS="k" * 20)
    assert {p for p in Permission if rules.can(who, p)} == allowed


def test_anonymous_may_classify_when_the_api_is_public_or_the_demo_is():
    assert access().can(ANONYMOUS, Permission.CLASSIFY)
    assert access(NSFW_API_KEYS="k" * 20, NSFW_PUBLIC_DEMO="true").can(ANONYMOUS, Permission.CLASSIFY)
    for p in (Permission.REVIEW, Permission.CALIBRATE, Permission.SAVE_THRESHOLDS, Permission.EXPORT):
        assert not access(NSFW_PUBLIC_DEMO="true").can(ANONYMOUS, p)


def test_require_raises_forbidden():
    with pytest.raises(Forbidden) as err:
        access().require(REVIEWER, Permission.SAVE_THRESHOLDS)
    assert (err.value.status, err.value.code) == (403, "forbidden")
    assert err.value.message == "save_thresholds needs the admin role; r is reviewer"
    access().require(ADMIN, Permission.SAVE_THRESHOLDS)


# ---------------------------------------------------------------- local mode


def test_local_mode_needs_a_loopback_host():
    with pytest.raises(SettingsError, match="NSFW_LOCAL_MODE=true needs a loopback NSFW_HOST"):
        load_settings({"NSFW_LOCAL_MODE": "true"})
    with pytest.raises(SettingsError):
        load_settings({"NSFW_LOCAL_MODE": "true", "NSFW_HOST": "192.168.1.5"})
    for host in ("127.0.0.1", "::1", "localhost"):
        assert load_settings({"NSFW_LOCAL_MODE": "true", "NSFW_HOST": host}).local_mode


@pytest.mark.parametrize(("host", "local"), [
    ("localhost:8080", True), ("127.0.0.1:8080", True), ("[::1]:8080", True), ("localhost", True),
    ("LOCALHOST.:8080", True),
    ("evil.example:8080", False),  # DNS rebinding: a page of evil.example made to point at 127.0.0.1
    ("localhost.evil.example", False), ("127.0.0.1.nip.io:8080", False), ("10.0.0.5:8080", False),
    ("localhost:80x", False), ("", False), ("[::1]x", False),
])
def test_loopback_host(host, local):
    assert loopback_host(host) is local


def test_local_visitor():
    rules = access(NSFW_LOCAL_MODE="true", NSFW_HOST="127.0.0.1")
    assert rules.local_visitor({"Host": "localhost:8080"}) == LOCAL
    assert rules.local_visitor({"Host": "evil.example:8080"}) is None
    assert rules.local_visitor({}) is None
    for proxy in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host", "X-Forwarded-Proto",
                  "X-Forwarded-Port", "Via", "X-Client-IP", "True-Client-IP", "CF-Connecting-IP", "via"):
        assert rules.local_visitor({"Host": "localhost:8080", proxy: "203.0.113.9"}) is None, proxy
    assert access(NSFW_HOST="127.0.0.1").local_visitor({"Host": "localhost:8080"}) is None  # not local mode
    assert rules.warnings() == []


@pytest.mark.parametrize("host, origin, local", [
    ("localhost:8080", "http://localhost:8080", True),  # the app's own page
    ("localhost:8080", "HTTP://LOCALHOST:8080", True),
    ("127.0.0.1:8080", "http://127.0.0.1:8080", True),
    ("[::1]:8080", "http://[::1]:8080", True),
    ("localhost", "https://localhost", True),
    ("localhost:8080", "http://localhost:9999", False),  # another local server's page
    ("localhost:8080", "http://127.0.0.1:8080", False),  # another origin, even if the same machine
    ("localhost:8080", "http://localhost", False),
    ("localhost:8080", "http://evil.example", False),
    ("localhost:8080", "null", False),  # a file opened from disk, a sandboxed frame
    ("localhost:8080", "", False),
    ("localhost:8080", "http://localhost:8080.evil.example", False),
    ("localhost:8080", "http://localhost:8080/", False),
])
def test_local_visitor_needs_the_same_origin(host, origin, local):
    rules = access(NSFW_LOCAL_MODE="true", NSFW_HOST="127.0.0.1")
    assert (rules.local_visitor({"Host": host, "Origin": origin}) == LOCAL) is local
    assert same_origin(origin, host) is local
    assert rules.local_visitor({"host": host, "origin": origin}) == (LOCAL if local else None)


def test_local_visitor_without_an_origin_is_local():  # not a browser's websocket: curl, a script on the machine
    rules = access(NSFW_LOCAL_MODE="true", NSFW_HOST="127.0.0.1")
    assert rules.local_visitor({"Host": "localhost:8080"}) == LOCAL




# ---------------------------------------------------------------- OpenID Connect


def verified(email: object) -> dict[str, object]:
    return {"email": email, "email_verified": True}


def test_roles_from_email_allow_lists():
    rules = access(True, NSFW_ADMIN_EMAILS="boss@example.com", NSFW_REVIEWER_EMAILS="@example.com, eve@other.org")
    assert rules.from_oidc({"email": "Boss@Example.com", "email_verified": True}) == \
        Identity("Boss@Example.com", Role.ADMIN, "oidc")
    assert rules.from_oidc(verified("ann@example.com")).role is Role.REVIEWER
    assert rules.from_oidc(verified("eve@other.org")).role is Role.REVIEWER
    assert rules.from_oidc(verified("mallory@other.org")).role is Role.ANONYMOUS
    assert rules.from_oidc(verified("ann@sub.example.com")).role is Role.ANONYMOUS  # the domain, exactly
    assert rules.from_oidc(verified("boss@example.com.evil.org")).role is Role.ANONYMOUS
    assert rules.from_oidc({"email": "boss@example.com", "email_verified": False}).role is Role.ANONYMOUS
    assert rules.from_oidc({"sub": "123"}) == Identity("oidc:123", Role.ANONYMOUS, "oidc")


# What held before issue 31 and must keep holding: plain ASCII case-insensitively, nothing else folded
@pytest.mark.parametrize(("email", "role"), [
    ("BOSS@EXAMPLE.COM", Role.ADMIN), ("boss+tag@example.com", Role.REVIEWER),  # +tag: another address
    ("boss\uff20example.com", Role.ANONYMOUS),  # FULLWIDTH COMMERCIAL AT
    ("boss@ex\u0430mple.com", Role.ANONYMOUS),  # CYRILLIC SMALL LETTER A in the domain
    ("boss@example.com.", Role.ANONYMOUS), ("ann@example.com.", Role.ANONYMOUS),  # trailing dot
    ("ann@evilexample.com", Role.ANONYMOUS), ("ann@example.com.evil.org", Role.ANONYMOUS),  # domain suffix tricks
])
def test_only_plain_ascii_is_folded(email, role):
    rules = access(True, NSFW_ADMIN_EMAILS="boss@example.com", NSFW_REVIEWER_EMAILS="@example.com")
    assert rules.from_oidc(verified(email)).role is role


@pytest.mark.parametrize("flag", [None, "true", "false", "True", "yes", "no", 1, 0, "1", [], {}, [True]])
def test_only_a_boolean_true_email_verified_verifies(flag):
    """Absent, a string (some providers send "true"/"false"), a number, None: not verified, no role."""
    rules = access(True, NSFW_ADMIN_EMAILS="admin@example.com", NSFW_REVIEWER_EMAILS="@example.com")
    claims = {"sub": "s-1", "email": "admin@example.com"} | ({} if flag is None else {"email_verified": flag})
    who = rules.from_oidc(claims)
    assert (who.name, who.role, who.via) == ("admin@example.com", Role.ANONYMOUS, "oidc")
    assert "email_verified true (a JSON boolean)" in who.note
    assert rules.from_oidc(claims | {"email_verified": None}).role is Role.ANONYMOUS
    assert rules.from_oidc(claims | {"email_verified": True}).role is Role.ADMIN


@pytest.mark.parametrize("email", [
    "\u212aevin@example.com",  # KELVIN SIGN: "\u212aevin".lower() == "kevin"
    "admin@example.com\u00a0", "\u00a0admin@example.com", "admin@example.com\u2003", "admin@example.com\u3000",
    "admin@example.com\u200b", "admin@example.com\ufeff", "admin@example.com\u2028",  # zero-width, BOM, LS
    " admin@example.com", "admin@example.com ", "admin@example.com\t", "admin@example.com\n",
    "admin@example.com\r\n", "admin@example.com\x00", "admin@example.com\x7f", "admin@example.com\x0b",
    "\nadmin@example.com", "admin @example.com",
    "x@evil.org@example.com", "admin@example.com@evil.org", "@example.com", "admin@", "admin",
    "ADMİN@example.com",  # LATIN CAPITAL LETTER I WITH DOT ABOVE
    "admin@EXAMPLE.CO\u041c",  # CYRILLIC CAPITAL EM
])
def test_an_address_not_in_the_exact_plain_form_gets_no_role(email):
    rules = access(True, NSFW_ADMIN_EMAILS="admin@example.com,kevin@example.com", NSFW_REVIEWER_EMAILS="@example.com")
    who = rules.from_oidc({"sub": "s-2", "email": email, "email_verified": True})
    assert (who.role, who.via) == (Role.ANONYMOUS, "oidc"), email
    assert who.note.startswith("No role: the e-mail address your identity provider sent, ") and \
        "is not a plain address: it " in who.note
    # what is shown is printable ASCII: no newline, control character or look-alike letter reaches the page
    assert who.name.isascii() and who.name.isprintable() and "\n" not in who.note and who.note.isascii()


@pytest.mark.parametrize("email", [None, 42, ["admin@example.com"], {"a": 1}, ""])
def test_a_missing_or_non_string_email_gets_no_role(email):
    rules = access(True, NSFW_ADMIN_EMAILS="admin@example.com", NSFW_REVIEWER_EMAILS="@example.com")
    claims = {"sub": "s-3", "email_verified": True} | ({} if email is None else {"email": email})
    who = rules.from_oidc(claims)
    assert (who.name, who.role) == ("oidc:s-3", Role.ANONYMOUS)
    assert who.note == "No role: your identity provider sent no e-mail address."


@pytest.mark.parametrize("bad", ["alice", "alice@", "@", "a@b", "a b@example.com", "a@b@example.com",
                                 "\u212aevin@example.com", "admin@ex\u0430mple.com", "a\tb@example.com"])
def test_bad_allow_list_entries_are_refused(bad):
    with pytest.raises(SettingsError, match="NSFW_ADMIN_EMAILS"):
        load_settings({"NSFW_ADMIN_EMAILS": bad})


def test_secrets_toml_auth(tmp_path):
    with_auth = tmp_path / "a.toml"
    with_auth.write_text('[auth]\nclient_id = "x"\n')
    other = tmp_path / "b.toml"
    other.write_text('key = "x"\n')
    broken = tmp_path / "c.toml"
    broken.write_text("[auth\n")
    assert secrets_toml_auth([other, broken, tmp_path / "missing.toml"]) is False
    assert secrets_toml_auth([broken, with_auth]) is True


# ---------------------------------------------------------------- warnings


def test_warnings_say_when_the_operator_pages_are_locked():
    [warning] = access().warnings()
    assert warning.startswith("sign-in is not configured: the calibrate and review pages are locked")
    assert access(NSFW_ADMIN_SECRET=ADMIN_SECRET).warnings() == []
    [warning] = access(True).warnings()
    assert "nobody who signs in gets a role" in warning
    assert access(True, NSFW_ADMIN_EMAILS="@example.com").warnings() == []


# ---------------------------------------------------------------- secrets


def test_secret_sign_in():
    rules = access(NSFW_ADMIN_SECRET=ADMIN_SECRET, NSFW_REVIEWER_SECRET=REVIEWER_SECRET)
    admin = rules.sign_in_with_secret(ADMIN_SECRET)
    assert (admin.role, admin.via) == (Role.ADMIN, "secret")
    assert re.fullmatch(r"admin \(secret, session [0-9a-f]{6}\)", admin.name), admin.name
    reviewer = rules.sign_in_with_secret(REVIEWER_SECRET)
    assert (reviewer.role, reviewer.via) == (Role.REVIEWER, "secret")
    assert re.fullmatch(r"reviewer \(secret, session [0-9a-f]{6}\)", reviewer.name), reviewer.name
    # each sign-in is its own identity: claims, undo and the audit trail tell them apart
    names = {rules.sign_in_with_secret(REVIEWER_SECRET).name for _ in range(20)}
    assert len(names) == 20 and reviewer.name not in names
    for wrong in ("", ADMIN_SECRET[:-1], ADMIN_SECRET + " ", "\udcff" * 3):
        with pytest.raises(Forbidden, match="^that secret is not valid$"):
            rules.sign_in_with_secret(wrong)


def test_an_empty_secret_never_matches_an_unset_role():
    rules = access(NSFW_ADMIN_SECRET=ADMIN_SECRET)  # no reviewer secret
    with pytest.raises(Forbidden):
        rules.sign_in_with_secret("")


def test_short_secrets_are_refused_and_never_echoed():
    with pytest.raises(SettingsError) as err:
        load_settings({"NSFW_ADMIN_SECRET": "hunter2"})
    assert "hunter2" not in str(err.value) and "at least 16 characters" in str(err.value)
    settings = load_settings({"NSFW_ADMIN_SECRET": ADMIN_SECRET, "NSFW_API_KEYS": "key-" + "k" * 20,
                              "NSFW_OIDC_CLIENT_SECRET": "oidc-client-secret-value"})
    for text in (repr(settings), repr(settings.access_config), repr(settings.serving_limits)):
        assert ADMIN_SECRET not in text and "oidc-client-secret-value" not in text


def test_failed_attempts_are_rate_limited_and_not_logged(caplog):
    now = [0.0]
    rules = Access(load_settings({"NSFW_ADMIN_SECRET": ADMIN_SECRET}).access_config, oidc_from_secrets=False,
                   limiter=AttemptLimiter(max_failures=3, window_s=60, clock=lambda: now[0]))
    caplog.set_level(logging.DEBUG)
    for i in range(3):
        with pytest.raises(Forbidden):
            rules.sign_in_with_secret(f"guess-number-{i}")
    with pytest.raises(TooManyAttempts) as err:
        rules.sign_in_with_secret(ADMIN_SECRET)  # even the right one: refused unchecked
    assert (err.value.status, err.value.code, err.value.details["retry_after"]) == (429, "too_many_attempts", 60)
    now[0] = 30.0
    with pytest.raises(TooManyAttempts) as err:
        rules.sign_in_with_secret(ADMIN_SECRET)
    assert err.value.details["retry_after"] == 30
    for _ in range(6):  # 8 refused in all during the lockout: counted, logged at the 1st, 2nd, 4th, 8th (no flood)
        with pytest.raises(TooManyAttempts):
            rules.sign_in_with_secret("guess-number-x")
    now[0] = 60.0
    assert rules.sign_in_with_secret(ADMIN_SECRET).role is Role.ADMIN
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "refused" in m or "lockout" in m] == [
        "sign-in with a secret refused unchecked: 3 failures in 60 s; 1 attempts refused in this lockout",
        "sign-in with a secret refused unchecked: 3 failures in 60 s; 2 attempts refused in this lockout",
        "sign-in with a secret refused unchecked: 3 failures in 60 s; 4 attempts refused in this lockout",
        "sign-in with a secret refused unchecked: 3 failures in 60 s; 8 attempts refused in this lockout",
        "sign-in lockout over: 8 attempts were refused unchecked during it",
    ]
    logged = "\n".join(messages)
    assert logged.count("sign-in with a secret failed") == 3
    assert "guess-number" not in logged and ADMIN_SECRET not in logged
