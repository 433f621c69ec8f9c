"""nsfw_core.state.sessions: sign-ins as server-side sessions that sign-out, lifetimes, the operator and the
identity provider end, seen by every replica within about a second (issue 31, point 2)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pytest

from nsfw_core.access import Identity, Role
from nsfw_core.base.settings import SessionConfig, load_settings
from nsfw_core.state.db import open_pool
from nsfw_core.state.sessions import (
    ALL,
    CACHE_S,
    FIRST_SEEN_S,
    SIGNED_OUT,
    Revalidation,
    SigninSessions,
    main,
    oidc_session_id,
    oidc_subject,
)

IDLE_S, MAX_S, REVALIDATE_S = 600.0, 7200.0, 300.0
T0 = 1_900_000_000.0
ADMIN = Identity("admin@example.com", Role.ADMIN, "oidc")
SECRET_ADMIN = Identity("admin (secret, session a1b2c3)", Role.ADMIN, "secret")
ADMIN_SECRET = "admin-secret-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    pools = []

    def pool():
        p = open_pool(url, tmp_path / "data")
        pools.append(p)
        return p

    yield pool
    for p in pools:
        p.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def sessions(pool, clock, *, revalidate_s: float = REVALIDATE_S, **kwargs) -> SigninSessions:
    return SigninSessions(pool, SessionConfig(idle_s=IDLE_S, max_s=MAX_S, revalidate_s=revalidate_s),
                          clock=clock, **kwargs)


def claims(clock: Clock, nonce: str = "n-1", sub: str = "u-1", **more: Any) -> dict[str, Any]:
    return {"iss": "https://idp.example", "sub": sub, "aud": "app", "iat": int(clock.now), "exp": int(clock.now) + 3600,
            "nonce": nonce, "email": "admin@example.com", "email_verified": True, "provider": "default",
            "origin": "https://nsfw.example", "is_logged_in": True, **more}


def test_the_session_id_is_the_claims_hash_without_the_tokens(clock):
    one = claims(clock)
    assert oidc_session_id(one) == oidc_session_id(one | {"tokens": {"access": "at-1"}})  # exposed or not
    as_in_the_cookie = one | {"origin": "https://nsfw.example"}  # st.user drops the cookie's origin
    assert oidc_session_id({k: v for k, v in one.items() if k != "origin"}) == oidc_session_id(as_in_the_cookie)
    assert oidc_session_id(one) != oidc_session_id(claims(clock, nonce="n-2"))  # each sign-in its own
    assert oidc_session_id(one).startswith("oidc-") and "at-1" not in oidc_session_id(one)


# ---------------------------------------------------------------- ending: sign-out, every tab and replica


def test_sign_out_ends_an_oidc_session_for_every_tab_replica_and_copy_of_the_cookie(database, clock):
    here, there = sessions(database(), clock), sessions(database(), clock)  # two replicas, one database
    cookie = claims(clock)
    assert here.check_oidc(cookie, ADMIN).ok and there.check_oidc(cookie, ADMIN).ok
    assert here.end(oidc_session_id(cookie)) is True
    ended = here.check_oidc(cookie, ADMIN)  # this replica: at once
    assert (ended.ok, ended.ended, ended.reason) == (False, True, SIGNED_OUT)
    assert ended.message == f"Your sign-in has ended: {SIGNED_OUT}. Sign in again."
    started = time.monotonic()
    while there.check_oidc(cookie, ADMIN).ok:  # the other: once its copy in memory is older than CACHE_S
        assert time.monotonic() - started < CACHE_S + 1.0
        time.sleep(0.05)
    assert time.monotonic() - started <= CACHE_S + 1.0
    assert not sessions(database(), clock).check_oidc(cookie, ADMIN).ok  # a new process: the row says ended
    assert here.end(oidc_session_id(cookie)) is False  # already ended
    # a new sign-in of the same user is a new session
    clock.now += 5
    assert here.check_oidc(claims(clock, nonce="n-2"), ADMIN).ok


def test_a_secret_sign_in_is_a_session_that_sign_out_ends(database, clock):
    store = sessions(database(), clock)
    session = store.start_secret(SECRET_ADMIN, ADMIN_SECRET)
    assert session.startswith("secret-") and len(session) == len("secret-") + 32
    assert store.check_secret(session, SECRET_ADMIN, ADMIN_SECRET).ok
    other = sessions(database(), clock)
    assert other.check_secret(session, SECRET_ADMIN, ADMIN_SECRET).ok
    store.end(session)
    assert not store.check_secret(session, SECRET_ADMIN, ADMIN_SECRET).ok and store.check_secret(session, SECRET_ADMIN, ADMIN_SECRET).ended
    assert not sessions(database(), clock).check_secret(session, SECRET_ADMIN, ADMIN_SECRET).ok
    for unknown in ("", "secret-" + "0" * 32):
        status = store.check_secret(unknown, SECRET_ADMIN, ADMIN_SECRET)
        assert (status.ok, status.ended) == (False, True)


def test_an_open_tab_s_own_checks_do_not_keep_an_idle_sign_in_alive(database, clock):
    """An open tab checks its sign-in every 2 s (nsfw_ui.auth.watch) with touch=False: that is no action of the
    visitor's, so the idle lifetime still ends a sign-in left open.  With touch (the default, every action), the
    same checks would keep it alive forever."""
    store = sessions(database(), clock)
    secret = store.start_secret(SECRET_ADMIN, ADMIN_SECRET)
    oidc = claims(clock)
    assert store.check_oidc(oidc, ADMIN).ok
    for _ in range(int(IDLE_S // 60) - 1):  # a check a minute, just under the idle lifetime
        clock.now += 60
        assert store.check_secret(secret, SECRET_ADMIN, ADMIN_SECRET, touch=False).ok
        assert store.check_oidc(oidc, ADMIN, touch=False).ok
    clock.now += 120  # past IDLE_S since the last action: both end, whatever the tab checked
    for status in (store.check_secret(secret, SECRET_ADMIN, ADMIN_SECRET, touch=False),
                   store.check_oidc(oidc, ADMIN, touch=False)):
        assert (status.ok, status.ended) == (False, True) and "nothing was done" in status.reason
    # an action extends it: the same minute-by-minute checks with touch keep a new sign-in alive past IDLE_S
    acting = store.start_secret(SECRET_ADMIN, ADMIN_SECRET)
    for _ in range(int(IDLE_S // 60) + 5):
        clock.now += 60
        assert store.check_secret(acting, SECRET_ADMIN, ADMIN_SECRET).ok


def test_a_resumed_secret_sign_in_keeps_only_the_identity_it_proved(database, clock):
    """Issue 29, point 7: a browser session resumed with a secret sign-in's identity is checked against the
    server's row: another name or role is refused, and a changed (or removed) secret ends the sign-ins made
    with the old one, on every replica."""
    store = sessions(database(), clock)
    session = store.start_secret(SECRET_ADMIN, ADMIN_SECRET)
    row, _ = store._read(session, None)
    assert row is not None and ADMIN_SECRET not in repr(row)  # 32 bits of its hash, never the secret
    other_name = dataclasses.replace(SECRET_ADMIN, name="admin (secret, session ffffff)")
    as_reviewer = dataclasses.replace(SECRET_ADMIN, role=Role.REVIEWER)
    for who in (other_name, as_reviewer):
        status = store.check_secret(session, who, ADMIN_SECRET)
        assert (status.ok, status.ended) == (False, True)
    assert store.check_secret(session, SECRET_ADMIN, ADMIN_SECRET).ok  # refusing a stranger ends nothing
    rotated = store.check_secret(session, SECRET_ADMIN, "a-new-admin-secret-987654")
    assert (rotated.ok, rotated.ended) == (False, True) and "secret" in rotated.reason
    assert not sessions(database(), clock).check_secret(session, SECRET_ADMIN, ADMIN_SECRET).ok  # ended for good
    removed = store.start_secret(SECRET_ADMIN, ADMIN_SECRET)
    assert not store.check_secret(removed, SECRET_ADMIN, "").ok


def test_a_cookie_the_server_never_saw_is_refused_unless_new(database, clock):
    store = sessions(database(), clock)
    old = claims(clock)
    clock.now += FIRST_SEEN_S + 1
    status = store.check_oidc(old, ADMIN)  # e.g. a session ended and purged, or the database was lost
    assert (status.ok, status.ended) == (False, True) and "no record of this sign-in" in status.reason
    fresh = claims(clock, nonce="n-3")
    clock.now += FIRST_SEEN_S - 1
    assert store.check_oidc(fresh, ADMIN).ok
    no_iat = {k: v for k, v in claims(clock, nonce="n-4").items() if k != "iat"}
    assert not store.check_oidc(no_iat, ADMIN).ok
    assert not store.check_oidc(claims(clock, nonce="n-5") | {"iat": True}, ADMIN).ok


# ---------------------------------------------------------------- lifetimes


@pytest.mark.parametrize("kind", ["oidc", "secret"])
def test_idle_lifetime(database, clock, kind):
    store = sessions(database(), clock, cache_s=0)
    cookie = claims(clock)

    def check():
        return store.check_oidc(cookie, ADMIN) if kind == "oidc" else store.check_secret(session, SECRET_ADMIN, ADMIN_SECRET)

    session = store.start_secret(SECRET_ADMIN, ADMIN_SECRET) if kind == "secret" else ""
    assert check().ok
    for _ in range(5):  # each action extends it (last_seen is written at most every TOUCH_S)
        clock.now += IDLE_S * 0.6
        assert check().ok
    clock.now += IDLE_S + 1
    status = check()
    assert (status.ok, status.ended, status.reason) == (False, True, "nothing was done for more than 10 minutes")
    clock.now += 1
    assert not check().ok  # recorded: it stays ended


@pytest.mark.parametrize("kind", ["oidc", "secret"])
def test_absolute_lifetime(database, clock, kind):
    store = sessions(database(), clock, cache_s=0, revalidate_s=0)
    cookie = claims(clock)
    session = store.start_secret(SECRET_ADMIN, ADMIN_SECRET) if kind == "secret" else ""

    def check():
        return store.check_oidc(cookie, ADMIN) if kind == "oidc" else store.check_secret(session, SECRET_ADMIN, ADMIN_SECRET)

    assert check().ok
    while clock.now + IDLE_S / 2 < T0 + MAX_S:
        clock.now += IDLE_S / 2
        assert check().ok, clock.now - T0
    clock.now = T0 + MAX_S
    status = check()
    assert (status.ok, status.ended) == (False, True)
    assert status.reason == "it began more than 2 hours ago (the longest a sign-in lasts)"


def test_lifetimes_come_from_the_settings():
    config = load_settings({"NSFW_SESSION_IDLE_MINUTES": "15", "NSFW_SESSION_MAX_HOURS": "8",
                            "NSFW_OIDC_REVALIDATE_SECONDS": "120"}).session_config
    assert (config.idle_s, config.max_s, config.revalidate_s) == (900, 28800, 120)
    assert load_settings({}).session_config == SessionConfig(idle_s=1800, max_s=43200, revalidate_s=300)


# ---------------------------------------------------------------- the operator


def test_end_all_ends_every_session_and_cookies_not_seen_yet(database, clock):
    store = sessions(database(), clock)
    seen = claims(clock)
    unseen = claims(clock, nonce="n-unseen", sub="u-2")  # issued, its tab not yet connected
    assert store.check_oidc(seen, ADMIN).ok
    secret = store.start_secret(SECRET_ADMIN, ADMIN_SECRET)
    clock.now += 1
    assert store.end_subject(ALL, "test", "the operator ended all sign-ins") == 2
    assert store.check_oidc(seen, ADMIN).reason == "the operator ended all sign-ins"
    assert not store.check_oidc(unseen, ADMIN).ok
    assert not store.check_secret(secret, SECRET_ADMIN, ADMIN_SECRET).ok
    clock.now += 1
    assert store.check_oidc(claims(clock, nonce="n-after"), ADMIN).ok  # signing in again works


def test_end_one_account(database, clock):
    store = sessions(database(), clock)
    alice, bob = claims(clock, sub="alice"), claims(clock, sub="bob", email="bob@example.com")
    assert store.check_oidc(alice, ADMIN).ok and store.check_oidc(bob, ADMIN).ok
    clock.now += 1
    assert store.end_subject(oidc_subject(alice), "test", "ended") == 1
    assert not store.check_oidc(alice, ADMIN).ok and store.check_oidc(bob, ADMIN).ok


def test_the_command_line_ends_all_sessions(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NSFW_DATABASE_URL", raising=False)
    monkeypatch.setenv("NSFW_DATA_DIR", str(tmp_path))
    pool = open_pool(None, tmp_path)
    store = SigninSessions(pool, load_settings({}).session_config)
    now = time.time()
    cookie = {"iss": "https://idp", "sub": "u", "iat": int(now), "nonce": "n", "email": "a@example.com",
              "email_verified": True}
    assert store.check_oidc(cookie, Identity("a@example.com", Role.ADMIN, "oidc")).ok
    assert main(["list"]) == 0
    assert "oidc\tadmin\t'a@example.com'" in capsys.readouterr().out
    assert main(["end", "A@example.com"]) == 0 and "1 sessions of" in capsys.readouterr().out
    assert main(["end", "nobody@example.com"]) == 1
    assert main(["end-all"]) == 0
    time.sleep(CACHE_S)
    assert not store.check_oidc(cookie, Identity("a@example.com", Role.ADMIN, "oidc")).ok
    pool.close()


# ---------------------------------------------------------------- the identity provider, asked again


def test_revalidation_at_the_provider(database, clock, caplog):
    store = sessions(database(), clock, cache_s=0)
    cookie = claims(clock)
    answers: list[Revalidation] = []
    asked = []

    def ask() -> Revalidation:
        asked.append(clock.now)
        return answers.pop(0)

    assert store.check_oidc(cookie, ADMIN, ask).ok and asked == []  # the token was just checked at sign-in
    clock.now += REVALIDATE_S
    answers.append(Revalidation.ok())
    assert store.check_oidc(cookie, ADMIN, ask).ok and len(asked) == 1
    clock.now += REVALIDATE_S - 1
    assert store.check_oidc(cookie, ADMIN, ask).ok and len(asked) == 1  # not due yet
    clock.now += 1
    answers.append(Revalidation.refused("the identity provider refused this sign-in's access token (HTTP 401)"))
    caplog.set_level(logging.INFO)
    status = store.check_oidc(cookie, ADMIN, ask)
    assert (status.ok, status.ended) == (False, True) and "HTTP 401" in status.reason
    assert not sessions(database(), clock).check_oidc(cookie, ADMIN).ok  # ended for every replica
    assert "ended by the identity provider's answer" in caplog.text


def test_a_provider_that_cannot_be_reached_is_allowed_twice_the_interval(database, clock, monkeypatch):
    monkeypatch.setattr("nsfw_core.state.sessions.RETRY_S", 0)
    store = sessions(database(), clock, cache_s=0)
    cookie = claims(clock)
    calls = []

    def down() -> Revalidation:
        calls.append(clock.now)
        return Revalidation.unavailable("ConnectTimeout from idp.example")

    assert store.check_oidc(cookie, ADMIN, down).ok
    clock.now += REVALIDATE_S
    assert store.check_oidc(cookie, ADMIN, down).ok and len(calls) == 1
    clock.now += REVALIDATE_S - 1
    assert store.check_oidc(cookie, ADMIN, down).ok
    clock.now += 1
    status = store.check_oidc(cookie, ADMIN, down)
    assert (status.ok, status.ended) == (False, False)  # no rights now, not ended: the provider may come back
    assert status.message.startswith("Your sign-in cannot be checked right now")
    assert store.check_oidc(cookie, ADMIN, Revalidation.ok).ok  # it answers again


def test_revalidation_is_off_at_zero(database, clock):
    store = sessions(database(), clock, revalidate_s=0, cache_s=0)
    cookie = claims(clock)
    assert store.check_oidc(cookie, ADMIN, lambda: pytest.fail("asked")).ok
    clock.now += IDLE_S - 1
    assert store.check_oidc(cookie, ADMIN, lambda: pytest.fail("asked")).ok


# ---------------------------------------------------------------- failures and housekeeping


def test_a_database_that_cannot_be_reached_grants_nothing(database, clock, caplog):
    pool = database()
    store = sessions(pool, clock)
    cookie = claims(clock)
    assert store.check_oidc(cookie, ADMIN).ok
    secret = store.start_secret(SECRET_ADMIN, ADMIN_SECRET)
    pool.close()
    store._cache.clear()
    for status in (store.check_oidc(cookie, ADMIN), store.check_secret(secret, SECRET_ADMIN, ADMIN_SECRET)):
        assert (status.ok, status.ended) == (False, False)
        assert status.message == ("Your sign-in cannot be checked right now: the server cannot reach its database. "
                                  "Try again in a moment.")
    assert caplog.text.count("sign-in sessions cannot be checked") == 1  # once per outage


def test_purge_forgets_what_could_no_longer_be_valid(database, clock):
    store = sessions(database(), clock)
    cookie = claims(clock)
    assert store.check_oidc(cookie, ADMIN).ok
    clock.now += MAX_S + 86400 + 1
    assert store.purge() == 1
    store._cache.clear()
    assert not store.check_oidc(cookie, ADMIN).ok  # forgotten, and too old to be new
