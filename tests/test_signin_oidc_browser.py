"""Sign-in with OpenID Connect in a real browser: Streamlit's ``st.login`` against a real provider process.

The provider is ``oidc-provider-mock`` (``python -m oidc_provider_mock``, requirements-dev.txt) on a
free port of 127.0.0.1: its authorize page asks for a subject and signs in whoever is typed, with
``email`` = the subject unless ``PUT /users/{sub}`` set other claims (then exactly those: the fixture gives
each test user ``email_verified: true``, the only value that verifies).  The server is ``python app.py`` of
the runtime install (a virtualenv of requirements.txt only, tests/helpers/slim.py: a package that only the
development environment has is missing there, as it would be for users), started as a deployment would be
(not local mode, ``NSFW_API_KEYS`` set, no public demo), with the ``NSFW_OIDC_*`` settings pointing at the
provider (app.py hands them to Streamlit as an ``[auth]`` secrets section) and the allow-lists
``NSFW_ADMIN_EMAILS=admin@example.com,kevin@example.com``, ``NSFW_REVIEWER_EMAILS=@example.com``; no
sign-in secret, so the provider is the only way in.

Debian's headless Chromium (as tests/test_e2e_browser.py) opens the app at ``http://localhost:PORT``,
the origin of the redirect URI (``http://localhost:PORT/oauth2callback``, the default): the sign-in
cookie is bound to it.  Each test starts signed out (cookies of localhost deleted).

Issue 31, as an attacker with an account at the provider tried it (each test fails without its fix): claims
the provider did not verify exactly (no or a non-boolean ``email_verified``, KELVIN SIGN, Unicode spaces,
control characters, two @) give no role; a second tab open during Sign out loses its rights at its next
action (its Clear does nothing); the sign-in cookie copied before Sign out and replayed in a fresh browser is
refused; a user whose tokens the provider revoked, or whose address it no longer verifies, has no role once
``NSFW_OIDC_REVALIDATE_SECONDS`` (2 s here) have passed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
import urllib.request
from typing import Any, Iterator

import pytest

from tests.helpers.appprocess import Process, app_process, free_port, http_status
from tests.helpers.browser import chromium

WAIT_S = 30
API_KEY = "signin-test-api-key-0123456789"
CLIENT_ID = "nsfw-moderation-test"
CLIENT_SECRET = "oidc-client-secret-0123456789abcdef"
ADMIN = "admin@example.com"
KEVIN = "kevin@example.com"  # the second admin: "\u212aevin@example.com" (KELVIN SIGN) lowercases to it
REVIEWER = "reviewer@example.com"
REVIEWER_SUB = "rev-0042"  # the reviewer's subject differs from the address: the role comes from `email`
STRANGER = "stranger@example.org"
UNVERIFIED = "unverified-0007"  # claims admin@example.com with email_verified false
SCORES = {"drawings": 0.1, "hentai": 0.05, "neutral": 0.45, "porn": 0.25, "sexy": 0.15}
SIGN_IN = "Sign in with your identity provider"
REVALIDATE_S = 2  # the server asks the provider again about a sign-in this often (NSFW_OIDC_REVALIDATE_SECONDS)
ALL_PAGES = ["Classify", "Calibrate thresholds", "Review queue", "Review grid", "Evaluate production", "Hash lists",
             "Account"]

pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------- the provider, the server, the browser


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> Iterator[str]:
    """oidc-provider-mock on 127.0.0.1:<free port>; yields its base URL."""
    if importlib.util.find_spec("oidc_provider_mock") is None:
        pytest.skip("oidc-provider-mock is not installed (requirements-dev.txt)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "STREAMLIT_"))}
    env["NO_COLOR"] = "1"
    process = Process([sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port)],
                      tmp_path_factory.mktemp("oidc") / "provider.log", env)
    try:
        process.wait_until(lambda: http_status(base + "/.well-known/openid-configuration") == 200,
                           "oidc-provider-mock", 30)
        _put_user(base, ADMIN, {"email": ADMIN, "email_verified": True})
        _put_user(base, STRANGER, {"email": STRANGER, "email_verified": True})
        _put_user(base, REVIEWER_SUB, {"email": REVIEWER, "email_verified": True, "name": "Rita Reviewer"})
        _put_user(base, UNVERIFIED, {"email": ADMIN, "email_verified": False})
        yield base
    finally:
        process.stop()


def _put_user(base: str, sub: str, claims: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{base}/users/{sub}", data=json.dumps(claims).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 204, reply.status


def _enqueue_one(env: dict[str, str]) -> None:
    """One item in the server's review queue before it starts."""
    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.review import ReviewQueue

    with ReviewQueue.from_settings(load_settings(env)) as queue:
        assert queue.enqueue("c" * 64, "upload:signin.jpg", SCORES, "MobileNetV2Mid", "unknown") == 1


@pytest.fixture(scope="module")
def app(provider, slim_python, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """``python app.py`` configured for OpenID Connect, run by the runtime install's python (requirements.txt
    only, tests/helpers/slim.py: what users get); yields (http://localhost:PORT, its environment)."""
    with app_process(tmp_path_factory.mktemp("app"), prepare=_enqueue_one, python=slim_python,
                     NSFW_OIDC_METADATA_URL=f"{provider}/.well-known/openid-configuration",
                     NSFW_OIDC_CLIENT_ID=CLIENT_ID, NSFW_OIDC_CLIENT_SECRET=CLIENT_SECRET,
                     NSFW_ADMIN_EMAILS=f"{ADMIN},{KEVIN}", NSFW_REVIEWER_EMAILS="@example.com",
                     NSFW_API_KEYS=API_KEY, NSFW_OIDC_REVALIDATE_SECONDS=str(REVALIDATE_S)) as (base, env):
        yield base.replace("127.0.0.1", "localhost"), env


@pytest.fixture(scope="module")
def server(app: tuple[str, dict[str, str]]) -> str:
    """The app's URL as the browser opens it: on localhost, the redirect URI's origin."""
    return app[0]


@pytest.fixture(scope="module")
def server_env(app: tuple[str, dict[str, str]]) -> dict[str, str]:
    return app[1]


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def browser(driver, server) -> Iterator[Any]:
    """The driver, signed out: no cookie of the app's origin (the sign-in cookie is its)."""
    driver.get(server + "/_stcore/health")
    driver.delete_all_cookies()
    yield driver
    driver.get(server + "/_stcore/health")
    driver.delete_all_cookies()


# ---------------------------------------------------------------- page helpers


def _wait(driver, condition, message: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    try:
        return wait.until(condition, message)
    except TimeoutException:
        raise AssertionError(f"{message} (after {timeout} s at {driver.current_url}):\n{_body(driver)[:3000]}") from None


def _css(driver, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    elements: list[Any] = driver.find_elements(By.CSS_SELECTOR, selector)
    return elements


def _body(driver) -> str:
    text: str = driver.find_element("css selector", "body").text
    return text


def _headings(driver) -> list[str]:
    return [h.text for h in _css(driver, "h1")]


def _buttons(driver, label: str) -> list[Any]:
    return [b for b in _css(driver, "button") if b.text == label]


def _nav(driver) -> list[str]:
    """The navigation's page titles (Streamlit shows none when there is a single page)."""
    return [a.text.splitlines()[-1] for a in _css(driver, '[data-testid="stSidebarNav"] a')]


def _open_sign_in_page(driver, url: str) -> None:
    """``url`` in a fresh session, once the Sign in page (the default page of a visitor without a role) is drawn."""
    driver.get(url)
    _wait(driver, lambda d: "Sign in" in _headings(d) and _buttons(d, SIGN_IN), f"{url}: no Sign in page")


def _sign_in(driver, server: str, provider: str, subject: str, caption: str) -> None:
    """Press "Sign in with your identity provider", type ``subject`` on the provider's page, come back.

    Back on the app, the sidebar must say ``caption`` ("name · role").
    """
    _open_sign_in_page(driver, server + "/")
    assert _nav(driver) == [], "an anonymous visitor has a single page: no navigation"
    _buttons(driver, SIGN_IN)[0].click()
    _wait(driver, lambda d: d.current_url.startswith(provider + "/oauth2/authorize") and _css(d, 'input[name="sub"]'),
          "the provider's authorize page did not open")
    assert f"redirect_uri=http%3A%2F%2Flocalhost%3A{server.rsplit(':', 1)[1]}%2Foauth2callback" in driver.current_url
    _css(driver, 'input[name="sub"]')[0].send_keys(subject)
    _buttons(driver, "Authorize")[0].click()
    _wait(driver, lambda d: d.current_url.rstrip("/") == server and _caption(d) == caption and _css(d, "h1"),
          f"not back on the app signed in as {caption!r}")


def _caption(driver) -> str:
    """Who the sidebar says is signed in ("name · role")."""
    found = [el.text for el in _css(driver, '[data-testid="stSidebar"] [data-testid="stCaptionContainer"]')]
    return found[0] if found else ""


def _page_not_found(driver) -> bool:
    return any("Page not found" in el.text for el in _css(driver, '[data-testid="stDialog"]'))


def _review_db(env: dict[str, str]):
    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.review import ReviewQueue

    return ReviewQueue.from_settings(load_settings(env))


def _health(server: str) -> dict[str, Any]:
    with urllib.request.urlopen(server + "/health", timeout=10) as reply:
        body: dict[str, Any] = json.loads(reply.read())
        return body


def _refused(driver, url: str, default_heading: str, refused_heading: str) -> None:
    """``url`` is refused: Streamlit says "Page not found" and runs the visitor's default page instead."""
    driver.get(url)
    _wait(driver, lambda d: _page_not_found(d) and default_heading in _headings(d), f"{url} was not refused")
    assert refused_heading not in _headings(driver), (url, _headings(driver))
    assert not _buttons(driver, "Save thresholds") and not _css(driver, '[class*="st-key-label_"]')


def _locked_out(driver, server: str, default_heading: str = "Sign in") -> None:
    """Neither operator page opens by its URL for a visitor without a role (``default_heading``: the page they
    get instead, "Account" for one signed in without a role)."""
    _refused(driver, server + "/calibrate", default_heading, "Calibrate thresholds")
    _refused(driver, server + "/review", default_heading, "Review queue")


# ---------------------------------------------------------------- tests


def test_anonymous_visitor_gets_only_the_sign_in_page(browser, server, provider):
    _open_sign_in_page(browser, server + "/")
    assert _nav(browser) == []
    assert _headings(browser) == ["Sign in"]
    assert not _css(browser, 'input[type="password"]'), "no secret is configured: no secret form"
    assert _caption(browser) == ""
    _locked_out(browser, server)
    health = _health(server)
    assert health["warnings"] == [], health["warnings"]  # sign-in is configured, allow-lists set


def test_admin_signs_in_and_saves_thresholds(browser, server, server_env, provider):
    assert _health(server)["thresholds"]["version"] is None
    _sign_in(browser, server, provider, ADMIN, f"{ADMIN} · admin")
    _wait(browser, lambda d: _nav(d) == ALL_PAGES and "Classify images" in _headings(d), "not the admin's pages")

    browser.get(server + "/calibrate")
    save = _wait(browser, lambda d: "Calibrate thresholds" in _headings(d) and _buttons(d, "Save thresholds"),
                 "no Save thresholds button", 60)[0]
    save.click()
    _wait(browser, lambda d: any("as version 1;" in el.text for el in _css(d, '[data-testid="stAlertContentSuccess"]')),
          "the thresholds were not saved")
    thresholds = _health(server)["thresholds"]
    assert (thresholds["version"], thresholds["source"]) == (1, "database"), thresholds

    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.thresholds import ThresholdHistory

    history = ThresholdHistory.from_settings(load_settings(server_env))
    try:
        [version] = history.history()
    finally:
        history.close()
    assert (version.version, version.saved_by) == (1, ADMIN)
    with _review_db(server_env) as queue:  # the admin did not open the review page: the item is untouched
        assert queue.get(1).status == "pending"


def test_reviewer_reviews_but_cannot_calibrate(browser, server, server_env, provider):
    version_before = _health(server)["thresholds"]["version"]
    _sign_in(browser, server, provider, REVIEWER_SUB, f"{REVIEWER} · reviewer")
    _wait(browser, lambda d: _nav(d) == ["Classify", "Review queue", "Review grid", "Evaluate production", "Account"], "not the reviewer's pages")

    browser.get(server + "/review")
    _wait(browser, lambda d: "Review queue" in _headings(d) and f"you are {REVIEWER}" in _body(d)
          and [b for b in _css(d, ".st-key-label_adult button") if b.is_enabled()],
          "the review page did not show the item")
    assert not _css(browser, '[class*="st-key-download_reviewed"]'), "exports are for admins"
    with _review_db(server_env) as queue:
        item = queue.get(1)
        assert (item.status, item.claimed_by) == ("claimed", REVIEWER)
    _css(browser, ".st-key-label_adult button")[0].click()
    _wait(browser, lambda d: "Item 1: adult." in _body(d) and "Nothing left to review." in _body(d),
          "the decision was not recorded")
    with _review_db(server_env) as queue:
        item = queue.get(1)
    assert (item.status, item.decision, item.decided_by) == ("decided", "adult", REVIEWER)

    _refused(browser, server + "/calibrate", "Classify images", "Calibrate thresholds")
    assert _health(server)["thresholds"]["version"] == version_before


def test_signed_in_stranger_gets_neither_page(browser, server, provider):
    _sign_in(browser, server, provider, STRANGER, f"{STRANGER} · anonymous")
    _wait(browser, lambda d: f"Signed in as {STRANGER}, role anonymous" in _body(d), "no role said")
    assert _nav(browser) == [], "a stranger has the Account page only (the API is keyed: no Classify)"
    assert _headings(browser) == ["Account"]  # signed in: the page the navigation calls Account
    _locked_out(browser, server, "Account")


def test_unverified_address_of_an_admin_gets_no_role(browser, server, provider):
    """The provider says admin@example.com is not verified: no role."""
    _sign_in(browser, server, provider, UNVERIFIED, f"{ADMIN} · anonymous")
    assert _nav(browser) == []
    _locked_out(browser, server, "Account")


def test_sign_out_ends_the_session(browser, server, provider):
    """The Sign out button: Streamlit clears its cookie and passes by the provider's end-session page."""
    _sign_in(browser, server, provider, ADMIN, f"{ADMIN} · admin")
    browser.get(server + "/account")
    _wait(browser, lambda d: _buttons(d, "Sign out"), "no Sign out button")[0].click()
    _wait(browser, lambda d: d.current_url.startswith(provider + "/oauth2/end_session") and _buttons(d, "End session"),
          "the provider's end-session page did not open")
    _buttons(browser, "End session")[0].click()
    _wait(browser, lambda d: d.current_url.startswith(server) and _headings(d), "not back on the app")
    _open_sign_in_page(browser, server + "/")
    assert _nav(browser) == [] and _caption(browser) == ""
    _locked_out(browser, server)


# ---------------------------------------------------------------- issue 31: what an attacker with an account tried


# (subject at the provider, its claims, the sidebar's "name · role" once back, what the Account page says)
NOT_VERIFIED = "only email_verified true (a JSON boolean) counts as a verified address"
NOT_PLAIN = "is not a plain address: it"
ATTACKS = {
    "no email_verified": ("nov-1", {"email": ADMIN}, ADMIN, NOT_VERIFIED),
    "email_verified 'false'": ("strf-1", {"email": ADMIN, "email_verified": "false"}, ADMIN, NOT_VERIFIED),
    "email_verified 'true'": ("strt-1", {"email": ADMIN, "email_verified": "true"}, ADMIN, NOT_VERIFIED),
    "KELVIN SIGN": ("kel-1", {"email": "\u212aevin@example.com", "email_verified": True},
                    "\\u212aevin@example.com", NOT_PLAIN),
    "no-break space": ("nbsp-1", {"email": ADMIN + "\u00a0", "email_verified": True}, ADMIN + "\\xa0", NOT_PLAIN),
    "ideographic space": ("ideo-1", {"email": "\u3000" + ADMIN, "email_verified": True}, "\\u3000" + ADMIN,
                          NOT_PLAIN),
    "newline": ("nl-1", {"email": ADMIN + "\n", "email_verified": True}, ADMIN + "\\n", NOT_PLAIN),
    "control character": ("ctl-1", {"email": ADMIN + "\x00", "email_verified": True}, ADMIN + "\\x00", NOT_PLAIN),
    "two @": ("at-1", {"email": "x@evil.org@example.com", "email_verified": True}, "x@evil.org@example.com",
              NOT_PLAIN),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_claims_the_provider_did_not_verify_exactly_give_no_role(browser, server, provider, attack):
    """Each of these signed in as admin (or reviewer, through @example.com) before issue 31."""
    subject, claims, name, said = ATTACKS[attack]
    assert isinstance(claims, dict) and isinstance(name, str) and isinstance(said, str)
    _put_user(provider, subject, claims)
    _sign_in(browser, server, provider, subject, f"{name} · anonymous")
    assert _nav(browser) == [], "no role: the Account page only (the API is keyed: no Classify)"
    _wait(browser, lambda d: said in _body(d) and "role anonymous" in _body(d), "the page does not say why")
    _locked_out(browser, server, "Account")


def _list_entries(env: dict[str, str], add: list[Any] | None = None) -> list[Any]:
    """The hash list in the server's database (after adding ``add``)."""
    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.db import open_pool
    from nsfw_core.state.known import KnownImages

    settings = load_settings(env)
    pool = open_pool(settings.database_url or None, settings.data_dir)
    try:
        known = KnownImages(pool)
        if add:
            known.import_list(add, by="test")
        return known.list_entries()
    finally:
        pool.close()


def _sign_out(driver, server: str, provider: str) -> None:
    """The Account page's Sign out, and the provider's end-session page, back on the app."""
    driver.get(server + "/account")
    _wait(driver, lambda d: _buttons(d, "Sign out"), "no Sign out button")[0].click()
    _wait(driver, lambda d: d.current_url.startswith(provider + "/oauth2/end_session") and _buttons(d, "End session"),
          "the provider's end-session page did not open")
    _buttons(driver, "End session")[0].click()
    _wait(driver, lambda d: d.current_url.startswith(server) and _headings(d), "not back on the app")


def test_a_second_tab_loses_its_rights_when_the_first_signs_out(browser, server, server_env, provider):
    """Tab B, open on Hash lists during tab A's Sign out, presses Clear: refused, the list stays.  (Tab B also
    reruns by itself within about 2 s, nsfw_ui.auth.watch: when that came first, there is no button left to
    press; a forged press is test_signin_websocket's.)"""
    from nsfw_core.state.known import ListEntry

    entry = ListEntry("5" * 64, None, "deny", "a second tab's Clear must not remove this")
    assert entry in _list_entries(server_env, [entry])
    _sign_in(browser, server, provider, ADMIN, f"{ADMIN} · admin")
    tab_a = browser.current_window_handle
    browser.switch_to.new_window("tab")
    tab_b = browser.current_window_handle
    try:
        browser.get(server + "/lists")
        _wait(browser, lambda d: "Hash lists" in _headings(d) and _buttons(d, "Clear the list")
              and _caption(d) == f"{ADMIN} · admin", "tab B: no Hash lists page")
        browser.switch_to.window(tab_a)
        _sign_out(browser, server, provider)
        browser.switch_to.window(tab_b)
        pressed = _buttons(browser, "Clear the list")  # what tab B drew before, unless its watch reran it
        if pressed:
            from selenium.common.exceptions import StaleElementReferenceException

            with contextlib.suppress(StaleElementReferenceException):
                pressed[0].click()
        _wait(browser, lambda d: "Hash lists" not in _headings(d) and _caption(d) == "" and _nav(d) == []
              and "Your sign-in has ended: you signed out" in _body(d), "tab B kept the admin's rights")
        assert entry in _list_entries(server_env), "tab B's Clear removed the list after the sign-out"
        _refused(browser, server + "/lists", "Sign in", "Hash lists")
    finally:
        browser.close()
        browser.switch_to.window(tab_a)


def test_an_idle_tab_drops_the_operator_pages_when_another_tab_signs_out(browser, server, provider):
    """Issue 31: every open tab loses its rights at once.  Before, tab B kept drawing the admin's Hash lists page
    (its buttons refused only once pressed) until it did something; now it reruns by itself within about
    nsfw_ui.auth.WATCH_S (2 s) of the sign-out and shows what an anonymous visitor gets."""
    _sign_in(browser, server, provider, ADMIN, f"{ADMIN} · admin")
    tab_a = browser.current_window_handle
    browser.switch_to.new_window("tab")
    try:
        browser.get(server + "/lists")
        _wait(browser, lambda d: "Hash lists" in _headings(d) and _caption(d) == f"{ADMIN} · admin",
              "tab B: no Hash lists page")
        tab_b = browser.current_window_handle
        browser.switch_to.window(tab_a)
        _sign_out(browser, server, provider)
        browser.switch_to.window(tab_b)  # no click, no key: tab B is only looked at
        _wait(browser, lambda d: "Hash lists" not in _headings(d) and _caption(d) == "" and _nav(d) == []
              and "Your sign-in has ended: you signed out" in _body(d), "the idle tab kept the admin's page")
    finally:
        browser.close()
        browser.switch_to.window(tab_a)


@pytest.mark.parametrize("how", ["the Sign out button", "opening /auth/logout"])
def test_a_cookie_replayed_after_sign_out_is_refused(browser, server, provider, how):
    """The sign-in cookie copied before signing out, set in a fresh browser afterwards: not signed in."""
    _sign_in(browser, server, provider, ADMIN, f"{ADMIN} · admin")
    copied = [c for c in browser.get_cookies() if c["name"].startswith("_streamlit_user")]
    assert {c["name"] for c in copied} >= {"_streamlit_user", "_streamlit_user_tokens"}, copied
    if how == "the Sign out button":
        _sign_out(browser, server, provider)
    else:  # Streamlit's own route, without the page: the server ends the session all the same
        browser.get(server + "/auth/logout")
        _wait(browser, lambda d: d.current_url.startswith(provider + "/oauth2/end_session")
              and _buttons(d, "End session"), "the provider's end-session page did not open")
        _buttons(browser, "End session")[0].click()
        _wait(browser, lambda d: d.current_url.startswith(server) and _headings(d), "not back on the app")
    with chromium() as fresh:
        fresh.get(server + "/_stcore/health")
        for cookie in copied:
            fresh.add_cookie({k: cookie[k] for k in ("name", "value", "path", "httpOnly", "secure", "sameSite")
                              if k in cookie})
        fresh.get(server + "/")
        _wait(fresh, lambda d: "Sign in" in _headings(d) and _buttons(d, SIGN_IN)
              and "Your sign-in has ended: you signed out" in _body(d), "the replayed cookie was not refused")
        assert _nav(fresh) == [] and _caption(fresh) == ""
        _locked_out(fresh, server)


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 204, reply.status


DISABLE = {
    # the provider revokes the user's tokens (its userinfo endpoint then refuses the access token)
    "tokens revoked": (lambda base, sub: _post(f"{base}/users/{sub}/revoke-tokens"),
                       "the identity provider refused this sign-in's access token"),
    # the provider no longer says the address is verified
    "email_verified false": (lambda base, sub: _put_user(base, sub, {"email": sub, "email_verified": False}),
                             "the identity provider no longer gives this address the reviewer role"),
}


@pytest.mark.parametrize("how", list(DISABLE))
def test_a_user_disabled_at_the_provider_loses_access(browser, server, provider, how):
    """Within NSFW_OIDC_REVALIDATE_SECONDS (2 s here) of being disabled, the open session has no role."""
    disable, said = DISABLE[how]
    subject = f"dana-{how.split()[0]}@example.com"
    _put_user(provider, subject, {"email": subject, "email_verified": True})
    _sign_in(browser, server, provider, subject, f"{subject} · reviewer")
    browser.get(server + "/review")
    _wait(browser, lambda d: "Review queue" in _headings(d), "not the reviewer's review page")
    time.sleep(REVALIDATE_S + 0.5)
    browser.get(server + "/review")  # still the reviewer: the provider answers for the sign-in
    _wait(browser, lambda d: "Review queue" in _headings(d) and _caption(d) == f"{subject} · reviewer",
          "the reviewer lost access before being disabled")
    disable(provider, subject)
    disabled = time.monotonic()
    time.sleep(REVALIDATE_S + 0.5)
    browser.get(server + "/review")
    _wait(browser, lambda d: _page_not_found(d) and "Sign in" in _headings(d) and _caption(d) == ""
          and said in _body(d), f"still a reviewer {time.monotonic() - disabled:.1f} s after being disabled")
    _locked_out(browser, server)
    browser.delete_all_cookies()
    _sign_in(browser, server, provider, subject, f"{subject} · {'reviewer' if how == 'tokens revoked' else 'anonymous'}")
