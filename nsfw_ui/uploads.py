"""A bound on what the browser app's file uploads may hold in memory: an ASGI middleware in front of
Streamlit's upload endpoint (``PUT``/``POST /_stcore/upload_file/<session id>/<file id>``).

Streamlit keeps every uploaded file in memory (its uploaded-file manager) until the page or the session
lets go of it, with a per-file cap (``server.maxUploadSize``) and no total: anyone who opens a websocket
session (and makes up an XSRF token: the cookie and the header are both the client's) could upload
file after file and grow the process by hundreds of megabytes.  :class:`UploadGuard` refuses, in JSON:

- ``411 length_required``: no ``Content-Length`` (chunked), so the size is not known before the body;
- ``413 upload_too_large``: the upload alone is larger than ``NSFW_MAX_UPLOAD_STORE_BYTES``;
- ``503 upload_store_full`` (``Retry-After``): what the manager holds, plus the uploads in flight, plus
  this one would exceed ``NSFW_MAX_UPLOAD_STORE_BYTES``;
- ``403 upload_forbidden``: the session may not upload: the pages with an uploader need the Classify
  permission (reviewers, admins; anonymous visitors only when the Classify page is public), and the
  session's last script run (:func:`note_session`, from :func:`nsfw_ui.auth.identity`) said it has not.

The session's identity is what the app decided on the server for that session (local mode from its
websocket's ``Host``/``Origin``, OpenID Connect, a secret sign-in); the upload request itself carries
nothing the guard trusts but the session id in its path, which only that session's websocket was told.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from typing import Any, Awaitable, Callable

from nsfw_core.base import requestid

log = logging.getLogger(__name__)

UPLOAD_PREFIX = "/_stcore/upload_file/"
DRAIN_BYTES = 16 * 1024 * 1024  # a refused body read and dropped up to this, so that the client sees the answer
MAX_SESSIONS = 20_000  # sessions remembered (the least recently run forgotten first: they may rerun)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Sessions:
    """Which browser sessions may upload, as their latest script run decided."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit = limit
        self._may: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._lock = threading.Lock()

    def note(self, session_id: str, may_upload: bool) -> None:
        with self._lock:
            self._may[session_id] = may_upload
            self._may.move_to_end(session_id)
            while len(self._may) > self.limit:
                self._may.popitem(last=False)

    def may_upload(self, session_id: str) -> bool:
        with self._lock:
            return self._may.get(session_id, False)

    def clear(self) -> None:
        with self._lock:
            self._may.clear()


sessions = _Sessions()


def note_session(session_id: str, may_upload: bool) -> None:
    """Record whether the browser session ``session_id`` may upload files (each script run says it again)."""
    sessions.note(session_id, may_upload)


def held_bytes() -> int:
    """The bytes Streamlit's uploaded-file manager holds now (what ``/_stcore/metrics`` reports for it)."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return 0
    total = 0
    for stats in Runtime.instance().uploaded_file_mgr.get_stats().values():
        total += sum(getattr(stat, "byte_length", 0) for stat in stats)  # CacheStat
    return total


async def _drain(receive: Receive) -> None:
    """Read and drop a refused upload's body (up to :data:`DRAIN_BYTES`): a server that answers and closes
    while the client still sends makes its TCP stack reset the connection, and the client never reads
    the answer."""
    received = 0
    while received <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class UploadGuard:
    """ASGI middleware: the checks above for Streamlit's upload endpoint; everything else passes through."""

    def __init__(self, app: ASGIApp, max_store_bytes: int, *,
                 held: Callable[[], int] = held_bytes, registry: _Sessions | None = None) -> None:
        self.app = app
        self.max_store_bytes = max_store_bytes
        self.held = held
        self.sessions = registry or sessions
        self._in_flight = 0  # bytes of uploads admitted and not finished yet
        self._lock = threading.Lock()
        self.refused: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("PUT", "POST") \
                or not scope["path"].startswith(UPLOAD_PREFIX):
            await self.app(scope, receive, send)
            return
        size, refusal = self._admit(scope)
        if refusal is not None:
            await _drain(receive)
            await self._refuse(scope, send, *refusal)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self._in_flight -= size

    def _admit(self, scope: Scope) -> tuple[int, tuple[int, str, str, dict[str, str]] | None]:
        """(bytes reserved, None) or (0, the refusal: status, code, message, headers)."""
        session_id = scope["path"][len(UPLOAD_PREFIX):].split("/", 1)[0]
        if not self.sessions.may_upload(session_id):
            return 0, (403, "upload_forbidden", "this session may not upload files: sign in first", {})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length", "").strip()
        if "transfer-encoding" in headers or not length.isdigit():
            return 0, (411, "length_required", "an upload needs a Content-Length header (no chunked bodies)", {})
        size = int(length)
        if size > self.max_store_bytes:
            return 0, (413, "upload_too_large",
                       f"the upload ({size} bytes) is larger than the server keeps for uploads "
                       f"({self.max_store_bytes} bytes)", {})
        with self._lock:
            held = self.held()
            if held + self._in_flight + size > self.max_store_bytes:
                return 0, (503, "upload_store_full",
                           "the server holds as many uploaded files as it may: try again later", {"Retry-After": "5"})
            self._in_flight += size
        return size, None

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, message: str,
                      extra: dict[str, str]) -> None:
        with self._lock:
            self.refused[code] += 1
            count = self.refused[code]
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th... refusal of each kind: no log flood
            log.warning("upload refused: %s (%d so far)", code, count)
        rid = requestid.choose(None)
        body = json.dumps({"code": code, "message": message, "request_id": rid}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (requestid.HEADER.lower().encode(), rid.encode()), (b"connection", b"close")]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
