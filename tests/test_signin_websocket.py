"""The browser app's trust boundary over Streamlit's own websocket, against a real ``python app.py``.

A client speaks the protocol of Streamlit's frontend on ``/_stcore/stream``: it sends ``BackMsg``
``rerun_script`` messages (the page by its URL path or script hash, and widget states) and reads the
``ForwardMsg`` answers (navigation, page-not-found, the elements of the page) until the run finishes.
This is what an attacker can send without a browser, so nothing here goes through AppTest.

Both servers run on the runtime install's python (``requirements.txt`` only, tests/helpers/slim.py), as users
get them (issue 31): a sign-in that imports a part of a dependency the runtime install lacks fails here.

The deployed server (``NSFW_API_KEYS`` and ``NSFW_ADMIN_SECRET`` set, no local mode):

- an anonymous session gets the Sign in page and nothing else, whatever page it asks for: no
  operator widget (Save thresholds, Roll back, review decisions, exports, uploads) in any message;
- widget messages forged from that session with the real ids of the operator buttons (read from an
  admin's session, signed in with the secret through the form's widget states) change nothing: the
  thresholds version stays, the review item stays pending.  The same messages from the admin's
  session do save and decide, so the forged messages are the right ones.

The local-mode server (``NSFW_LOCAL_MODE=true`` on 127.0.0.1): a websocket whose ``Host`` names the
loopback is admin without signing in; one whose ``Host`` is another name (DNS rebinding), or that
carries proxy headers, is not.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any, Iterator

import pytest

from tests.helpers.appprocess import app_process, serving_python
from tests.helpers.paths import ADMIN_SECRET
from tests.helpers.stws import Run, Session, session, text, trigger

API_KEY = "ws-test-api-key-0123456789"
SCORES = {"drawings": 0.1, "hentai": 0.05, "neutral": 0.45, "porn": 0.25, "sexy": 0.15}
OPERATOR_LABELS = {"Save thresholds", "Roll back", "Re-score", "Suggest thresholds", "Fetch again",
                   "Undo last decision", "Review skipped items again"}
# The only widgets of an anonymous visitor: the secret form of the Sign in page
ANONYMOUS_WIDGET_KEYS = {"sign_in_secret_value", "FormSubmitter:sign_in_secret-Sign in"}
ASKED_PAGES = ("", "classify", "calibrate", "review", "evaluate", "lists", "account")

pytestmark = pytest.mark.timeout(300)


def health(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/health", timeout=10) as reply:
        body: dict[str, Any] = json.loads(reply.read())
        return body


def review_queue(env: dict[str, str]):
    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.review import ReviewQueue

    return ReviewQueue.from_settings(load_settings(env))


def listed(env: dict[str, str], add: list[Any] | None = None) -> list[Any]:
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


def saved_versions(env: dict[str, str]) -> list[Any]:
    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.thresholds import ThresholdHistory

    history = ThresholdHistory.from_settings(load_settings(env))
    try:
        return history.history()
    finally:
        history.close()


# ---------------------------------------------------------------- checks


def nav(run: Run) -> list[tuple[str, str]]:
    return [(path, title) for path, title, _ in run.navigation]


def assert_no_operator_widget(run: Run) -> None:
    """No operator page in the navigation and no operator widget in any message of the run."""
    assert not {title for _, title in nav(run)} & {"Calibrate thresholds", "Review queue"}, nav(run)
    assert not {"Calibrate thresholds", "Review queue"} & set(run.headings), run.headings
    assert not {e.kind for e in run.elements} & {"download_button", "slider", "toggle"}
    assert not {e.text for e in run.widgets} & OPERATOR_LABELS
    assert not [w.key for w in run.widgets
                if w.key.startswith(("label_", "cal_", "download_", "skip", "undo", "reveal_", "refetch"))]


def assert_anonymous(run: Run) -> None:
    """The deployed server's anonymous visitor: the Sign in page and its secret form, nothing else."""
    assert_no_operator_widget(run)
    assert nav(run) == [("", "Sign in")], run.navigation
    assert {w.key for w in run.widgets} == ANONYMOUS_WIDGET_KEYS, [(w.kind, w.key) for w in run.widgets]
    assert not {e.kind for e in run.elements} & {"file_uploader", "dataframe"}
    assert run.headings == ["Sign in"], run.headings


# ---------------------------------------------------------------- the deployed server


@pytest.fixture(scope="module")
def deployed(slim_python, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """Keyed API, the admin secret, no local mode, no public demo, on the runtime install: (base URL,
    environment)."""
    with app_process(tmp_path_factory.mktemp("deployed"), python=slim_python, NSFW_ADMIN_SECRET=ADMIN_SECRET,
                     NSFW_API_KEYS=API_KEY) as (base, env):
        yield base, env


def test_the_servers_run_on_the_runtime_install(deployed, local, slim_python):
    """What the other tests say holds for the install users get, not for the development environment."""
    for base in (deployed[0], local):
        assert serving_python(int(base.rsplit(":", 1)[1])) == slim_python


def test_anonymous_session_sees_no_operator_widget_on_any_page(deployed):
    base, _ = deployed
    with session(base) as anonymous:
        for page in ASKED_PAGES:
            run = anonymous.run(page=page)
            assert_anonymous(run)
            if page in ("classify", "calibrate", "review", "evaluate", "lists"):
                assert run.page_not_found, page
        default = anonymous.run()
        [(_, _, account_hash)] = default.navigation
    # The pages of a signed-in admin, asked for by their script hashes from a fresh anonymous session
    with session(base) as admin:
        hashes = _admin_pages(admin)
    with session(base) as anonymous:
        for title, page_hash in hashes.items():
            run = anonymous.run(page_hash=page_hash)
            assert_anonymous(run)
            assert run.of("navigation")[-1].page_script_hash == account_hash, title


def _sign_in_with_secret(s: Session) -> Run:
    """Submit the Sign in page's secret form as the frontend does: the field's value and the submit trigger."""
    form = s.run()
    field, submit = form.widget("sign_in_secret_value"), form.widget("FormSubmitter:sign_in_secret-Sign in")
    return s.run(widgets=(text(field.id, ADMIN_SECRET), trigger(submit.id)))


def _admin_pages(s: Session) -> dict[str, str]:
    """Sign ``s`` in as admin; {page title: script hash}."""
    run = _sign_in_with_secret(s)
    assert nav(run) == [("", "Classify"), ("calibrate", "Calibrate thresholds"), ("review", "Review queue"),
                        ("review_grid", "Review grid"), ("evaluate", "Evaluate production"), ("lists", "Hash lists"),
                        ("account", "Account")]
    return {title: page_hash for _, title, page_hash in run.navigation}


def test_two_sign_ins_with_the_same_secret_are_two_identities(deployed):
    base, _ = deployed
    names = []
    for _ in range(2):
        with session(base) as s:
            run = _sign_in_with_secret(s)
            [name] = [e.text.removesuffix(" · admin") for e in run.elements if e.text.endswith(" · admin")]
            assert re.fullmatch(r"admin \(secret, session [0-9a-f]{6}\)", name), name
            names.append(name)
    assert names[0] != names[1]


def test_forged_widget_messages_from_an_anonymous_session_change_nothing(deployed):
    base, env = deployed
    assert health(base)["thresholds"]["version"] is None
    with session(base) as admin, session(base) as anonymous:
        pages = _admin_pages(admin)
        calibrate = admin.run(page_hash=pages["Calibrate thresholds"])
        assert calibrate.headings[0] == "Calibrate thresholds", calibrate.headings
        save = calibrate.widget("Save thresholds")
        review = admin.run(page_hash=pages["Review queue"])
        assert "Nothing left to review." in review.texts()
        decide = {key: review.widget(key).id for key in ("label_adult", "label_safe", "skip", "undo")}
        assert review.widget("download_reviewed_csv").kind == "download_button"
        lists = admin.run(page_hash=pages["Hash lists"])
        clear_list = lists.widget("lists_clear")

        with review_queue(env) as queue:
            item_id = queue.enqueue("d" * 64, "upload:forged.jpg", SCORES, "MobileNetV2Mid", "unknown")
        from nsfw_core.state.known import ListEntry

        entries = listed(env, [ListEntry("e" * 64, None, "deny", "forged clear must not remove this")])

        forged: list[dict[str, Any]] = [
            {"page_hash": pages["Calibrate thresholds"], "widgets": (trigger(save.id),)},
            {"page": "calibrate", "widgets": (trigger(save.id),)},
            {"widgets": (trigger(save.id),)},
            {"page_hash": pages["Review queue"], "widgets": (trigger(decide["label_adult"]),)},
            {"page": "review", "widgets": tuple(trigger(i) for i in decide.values())},
            {"page_hash": pages["Hash lists"], "widgets": (trigger(clear_list.id),)},
        ]
        for message in forged:
            assert_anonymous(anonymous.run(**message))
        # A widget state named like the session key of a secret sign-in: Streamlit's session state
        # refuses it (the page fails on it, in this session only) and nobody is signed in.
        run = anonymous.run(page="calibrate", widgets=(text("_nsfw_identity", "admin"), trigger(save.id)))
        assert_no_operator_widget(run)
        assert nav(run) == [("", "Sign in")] and run.page_not_found
        assert_anonymous(anonymous.run(page="calibrate"))
        assert health(base)["thresholds"]["version"] is None
        assert saved_versions(env) == []
        with review_queue(env) as queue:
            item = queue.get(item_id)
            assert (item.status, item.claimed_by, item.decided_by) == ("pending", None, None), item
            assert queue.counts()["decided"] == 0
        assert listed(env) == entries

        # The same messages from the admin's session do what the buttons do: they were the right ones.
        saved = admin.run(page_hash=pages["Calibrate thresholds"], widgets=(trigger(save.id),))
        assert "as version 1;" in saved.texts(), saved.texts()[-2000:]
        assert health(base)["thresholds"]["version"] == 1
        [me] = [e.text.removesuffix(" · admin") for e in saved.elements if e.text.endswith(" · admin")]
        assert re.fullmatch(r"admin \(secret, session [0-9a-f]{6}\)", me), me  # this sign-in's own name
        assert [v.saved_by for v in saved_versions(env)] == [me]
        held = admin.run(page_hash=pages["Review queue"])
        assert held.widget("label_adult").id == decide["label_adult"]
        assert "forged" in held.texts() and "1 being reviewed" in held.texts()
        decided = admin.run(page_hash=pages["Review queue"], widgets=(trigger(decide["label_adult"]),))
        assert f"Item {item_id}: **adult**." in decided.texts(), decided.texts()
        with review_queue(env) as queue:
            item = queue.get(item_id)
        assert (item.status, item.decision, item.decided_by) == ("decided", "adult", me)
        cleared = admin.run(page_hash=pages["Hash lists"], widgets=(trigger(clear_list.id),))
        assert "1 entries removed" in cleared.texts(), cleared.texts()[-2000:]
        assert listed(env) == []


def test_signing_out_of_a_secret_sign_in_ends_it_for_good(deployed):
    """Sign out of a secret sign-in: the session is ended in the database, and the same Streamlit session's
    messages (the Hash lists page's Clear, by its real widget id) change nothing afterwards (issue 31)."""
    base, env = deployed
    from nsfw_core.state.known import ListEntry

    entries = listed(env, [ListEntry("f" * 64, None, "deny", "clear after sign-out must not remove this")])
    before = {row.id for row in _live_sessions(env)}  # the other tests' sign-ins
    with session(base) as s:
        pages = _admin_pages(s)
        clear_list = s.run(page_hash=pages["Hash lists"]).widget("lists_clear")
        account = s.run(page="account")
        assert "Signed in as" in account.texts() and account.headings == ["Account"]  # as the navigation says
        [live] = [row for row in _live_sessions(env) if row.id not in before]
        assert (live.kind, live.role) == ("secret", "admin")
        s.run(page="account", widgets=(trigger(account.widget("sign_out").id),))  # the page reruns itself
        assert_anonymous(s.run(page="account"))
        assert live.id not in {row.id for row in _live_sessions(env)}
        messages: list[dict[str, Any]] = [{"page_hash": pages["Hash lists"], "widgets": (trigger(clear_list.id),)},
                                          {"page": "lists", "widgets": (trigger(clear_list.id),)}]
        for message in messages:
            assert_anonymous(s.run(**message))
    assert entries[-1] in listed(env)


def _live_sessions(env: dict[str, str]) -> list[Any]:
    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.db import open_pool
    from nsfw_core.state.sessions import SigninSessions

    settings = load_settings(env)
    pool = open_pool(settings.database_url or None, settings.data_dir)
    try:
        return SigninSessions(pool, settings.session_config).live()
    finally:
        pool.close()


# ---------------------------------------------------------------- local mode


@pytest.fixture(scope="module")
def local(slim_python, tmp_path_factory) -> Iterator[str]:
    """./run.sh's local mode (loopback only, the local visitor is admin), with a keyed API, on the runtime
    install."""
    with app_process(tmp_path_factory.mktemp("local"), python=slim_python, NSFW_LOCAL_MODE="true",
                     NSFW_API_KEYS=API_KEY) as (base, _):
        yield base


ADMIN_NAV = [("", "Classify"), ("calibrate", "Calibrate thresholds"), ("review", "Review queue"),
             ("review_grid", "Review grid"), ("evaluate", "Evaluate production"), ("lists", "Hash lists")]
NOT_LOCAL = [  # (Host name, other headers) that must not get local rights
    ("evil.example", {"Origin": "http://evil.example:{port}"}),  # DNS rebinding: the page's own origin
    ("localhost.evil.example", {}),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.7"}),  # a reverse proxy on the same host
    ("localhost", {"Forwarded": "for=203.0.113.7"}),
    ("localhost", {"X-Real-IP": "203.0.113.7"}),
    ("localhost", {"Via": "1.1 proxy"}),
    ("127.0.0.1", {"CF-Connecting-IP": "203.0.113.7"}),
    ("localhost", {"Origin": "http://localhost:9999"}),  # a page of another local server (cross-site websocket)
    ("127.0.0.1", {"Origin": "http://localhost:{port}"}),  # the same machine, another origin
]


@pytest.mark.parametrize("host, origin", [("127.0.0.1", None), ("localhost", None),
                                          ("localhost", "http://localhost:{port}")])  # the app's own page
def test_local_mode_makes_a_loopback_host_admin(local, host, origin):
    port = local.rsplit(":", 1)[1]
    headers = {"Origin": origin.format(port=port)} if origin else None
    with session(local, host=f"{host}:{port}", headers=headers) as s:
        run = s.run(page="calibrate")
        assert nav(run) == ADMIN_NAV
        assert not run.page_not_found
        assert run.headings[0] == "Calibrate thresholds", run.headings
        assert any(e.text == "local · admin" for e in run.elements)
        review = s.run(page="review")
        assert review.headings[0] == "Review queue" and review.widget("label_adult").kind == "button"


@pytest.mark.parametrize("host, headers", NOT_LOCAL)
def test_local_mode_refuses_other_hosts_and_proxied_requests(local, host, headers):
    port = local.rsplit(":", 1)[1]
    with session(local, host=f"{host}:{port}", headers={k: v.format(port=port) for k, v in headers.items()}) as s:
        for page in ("calibrate", "review"):
            run = s.run(page=page)
            assert run.page_not_found, page
            assert_no_operator_widget(run)
            assert not any(" · " in e.text and e.text.endswith("admin") for e in run.elements)
            assert nav(run) == [("", "Sign in")], nav(run)  # the API is keyed: not even Classify


@pytest.mark.parametrize("host, headers", NOT_LOCAL[:2])
def test_local_mode_with_a_keyed_api_gives_other_hosts_no_classify_page(local, host, headers):
    port = local.rsplit(":", 1)[1]
    with session(local, host=f"{host}:{port}", headers={k: v.format(port=port) for k, v in headers.items()}) as s:
        assert nav(s.run()) == [("", "Sign in")]


def test_no_local_mode_on_the_deployed_server(deployed):
    """The deployed server gives nothing to loopback Host headers: local mode is off."""
    base, _ = deployed
    with session(base, host=f"localhost:{base.rsplit(':', 1)[1]}") as s:
        assert_anonymous(s.run(page="calibrate"))
