"""Streamlit's upload endpoint is bounded (nsfw_ui/uploads.py): a total in memory for all sessions, a
Content-Length required, and no uploads from a session that may not upload.

Found by a security test: an anonymous client opened a websocket session, made up its own XSRF token
(cookie and header) and PUT 50 files of 10 MB to ``/_stcore/upload_file/<its session id>/<file id>``,
every one answered 204, the process grew by 500 MiB and kept it after the websocket closed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import uuid
from typing import Any, Iterator

import pytest

from nsfw_core.base.settings import load_settings
from nsfw_ui import uploads
from tests.helpers.appprocess import app_process
from tests.helpers.paths import ADMIN_SECRET
from tests.helpers.stws import Session, session, text, trigger

MB = 1024 * 1024
CAP = 3 * MB  # NSFW_MAX_UPLOAD_STORE_BYTES of the servers here
API_KEY = "uploads-test-api-key-0123456789"

pytestmark = pytest.mark.timeout(300)


# ---------------------------------------------------------------- the middleware alone


class Downstream:
    """Streamlit's side: records what reached it, 'stores' the body's size."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.held = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls.append(scope["path"])
        size = int(dict(scope["headers"]).get(b"content-length", b"0"))
        self.held += size
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def call(guard: uploads.UploadGuard, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, receive, send))
    head = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], head, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def guarded() -> Iterator[tuple[uploads.UploadGuard, Downstream]]:
    down = Downstream()
    registry = uploads._Sessions(limit=3)
    registry.note("allowed", True)
    registry.note("refused", False)
    yield uploads.UploadGuard(down, 1000, held=lambda: down.held, registry=registry), down


def refused(reply: tuple[int, dict[str, Any], bytes], status: int, code: str) -> dict[str, Any]:
    got, headers, body = reply
    assert got == status, reply
    assert headers["content-type"] == "application/json"
    parsed = json.loads(body)
    assert parsed["code"] == code and parsed["message"] and parsed["request_id"] == headers["x-request-id"], parsed
    return headers


def test_the_guard_bounds_the_total_and_refuses_what_it_cannot_size(guarded):
    guard, down = guarded
    path = "/_stcore/upload_file/allowed/f1"
    assert call(guard, "PUT", path, {"Content-Length": "600"})[0] == 204
    assert call(guard, "PUT", path, {"Content-Length": "400"})[0] == 204  # exactly the cap: 1000
    headers = refused(call(guard, "PUT", path, {"Content-Length": "1"}), 503, "upload_store_full")
    assert headers["retry-after"] == "5"
    down.held = 0  # the page let go of them
    refused(call(guard, "PUT", path, {"Content-Length": "1001"}), 413, "upload_too_large")
    refused(call(guard, "PUT", path, {}), 411, "length_required")
    refused(call(guard, "POST", path, {"Transfer-Encoding": "chunked"}), 411, "length_required")
    refused(call(guard, "PUT", path, {"Content-Length": "10", "Transfer-Encoding": "chunked"}), 411, "length_required")
    refused(call(guard, "PUT", path, {"Content-Length": "-1"}), 411, "length_required")
    refused(call(guard, "PUT", "/_stcore/upload_file/refused/f1", {"Content-Length": "1"}), 403, "upload_forbidden")
    refused(call(guard, "PUT", "/_stcore/upload_file/unknown/f1", {"Content-Length": "1"}), 403, "upload_forbidden")
    assert down.calls == [path, path]
    assert guard._in_flight == 0  # every reservation released
    # other paths and methods pass untouched
    assert call(guard, "DELETE", "/_stcore/upload_file/refused/f1", {})[0] == 204
    assert call(guard, "PUT", "/_stcore/other", {})[0] == 204
    assert dict(guard.refused) == {"upload_store_full": 1, "upload_too_large": 1, "length_required": 4,
                                   "upload_forbidden": 2}


def test_the_sessions_remembered_are_bounded_and_the_latest_run_wins():
    registry = uploads._Sessions(limit=2)
    registry.note("a", True)
    registry.note("b", True)
    registry.note("a", False)  # signed out
    registry.note("c", True)  # "b" was run least recently: forgotten
    assert (registry.may_upload("a"), registry.may_upload("b"), registry.may_upload("c")) == (False, False, True)


def test_the_default_cap_is_128_mib():
    assert load_settings({}).max_upload_store_bytes == 128 * MB
    assert load_settings({"NSFW_MAX_UPLOAD_STORE_BYTES": "1000"}).max_upload_store_bytes == 1000


# ---------------------------------------------------------------- against python app.py


def xsrf_headers() -> dict[str, str]:
    """A made-up XSRF token, cookie and header alike: what Streamlit accepts from any client."""
    from streamlit.web.server.starlette.starlette_app_utils import generate_xsrf_token_string

    token = generate_xsrf_token_string()
    return {"Cookie": f"_streamlit_xsrf={token}", "X-Xsrftoken": token}


def put_file(base: str, session_id: str, size: int, *, chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **xsrf_headers()}
        path = f"/_stcore/upload_file/{session_id}/{uuid.uuid4()}"
        if chunked:
            conn.request("PUT", path, body=iter([body]), headers=headers, encode_chunked=True)
        else:
            conn.request("PUT", path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def session_id(s: Session) -> str:
    run = s.run()
    [new] = run.of("new_session")
    sid: str = new.initialize.session_id
    assert re.fullmatch(r"[0-9a-f-]{36}", sid), sid
    return sid


def error(reply: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    assert reply[0] == status, reply
    assert reply[1]["content-type"] == "application/json" and reply[1]["x-request-id"], reply
    assert json.loads(reply[2])["code"] == code, reply


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> Iterator[str]:
    """The API public (no keys): anonymous visitors may use the Classify page and upload."""
    with app_process(tmp_path_factory.mktemp("public"), NSFW_MAX_UPLOAD_STORE_BYTES=str(CAP)) as (base, _):
        yield base


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[str]:
    """A keyed API and the admin secret: anonymous visitors get the Sign in page only, and no uploads."""
    with app_process(tmp_path_factory.mktemp("keyed"), NSFW_MAX_UPLOAD_STORE_BYTES=str(CAP),
                     NSFW_API_KEYS=API_KEY, NSFW_ADMIN_SECRET=ADMIN_SECRET) as (base, _):
        yield base


def test_uploads_past_the_total_are_refused_on_the_real_server(public):
    with session(public) as a, session(public) as b:
        first, second = session_id(a), session_id(b)
        assert put_file(public, first, 1 * MB)[0] == 204
        assert put_file(public, second, 1 * MB)[0] == 204
        error(put_file(public, first, 1 * MB + 1), 503, "upload_store_full")  # 3 MiB + the form's framing
        error(put_file(public, second, 2 * MB), 503, "upload_store_full")
        error(put_file(public, second, CAP + 1), 413, "upload_too_large")
        error(put_file(public, first, 1000, chunked=True), 411, "length_required")
        error(put_file(public, str(uuid.uuid4()), 1000), 403, "upload_forbidden")  # no such session
        assert put_file(public, first, 100_000)[0] == 204  # what is left under the cap


def test_an_anonymous_session_of_a_keyed_server_may_not_upload_and_an_admin_may(keyed):
    with session(keyed) as anonymous, session(keyed) as admin:
        error(put_file(keyed, session_id(anonymous), 1000), 403, "upload_forbidden")
        admin_id = session_id(admin)
        error(put_file(keyed, admin_id, 1000), 403, "upload_forbidden")  # not signed in yet
        form = admin.run()
        field, submit = form.widget("sign_in_secret_value"), form.widget("FormSubmitter:sign_in_secret-Sign in")
        signed = admin.run(widgets=(text(field.id, ADMIN_SECRET), trigger(submit.id)))
        assert any(e.text.endswith(" · admin") for e in signed.elements)
        assert put_file(keyed, admin_id, 1000)[0] == 204
        error(put_file(keyed, session_id(anonymous), 1000), 403, "upload_forbidden")
