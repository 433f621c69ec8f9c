"""Streamlit's own metrics endpoint (``/_stcore/metrics``) behind the same rule as the API's ``/metrics``.

Streamlit serves its cache and session statistics at ``/_stcore/metrics`` to anyone: how many sessions are
open (whether reviewers are working) and what their caches hold.  :class:`MetricsGuard`, an ASGI middleware
of ``st.App``, applies :func:`nsfw_core.http.ops.metrics`' rule to it: when ``NSFW_API_KEYS`` or
``NSFW_METRICS_TOKEN`` is set, a request needs ``Authorization: Bearer <an API key or the token>`` (401
``unauthorized`` in JSON otherwise); with neither, it is public like the rest of the API.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from nsfw_core.base import requestid
from nsfw_core.http.guard import matches

PATH = "/_stcore/metrics"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def guarded(path: str) -> bool:
    """Whether ``path`` reaches Streamlit's metrics (any case, a trailing slash, ``;parameters``)."""
    return path.split(";", 1)[0].rstrip("/").lower().endswith(PATH)


class MetricsGuard:
    """ASGI middleware: ``/_stcore/metrics`` needs an API key or the metrics token when either is configured."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = tuple(k for k in keys if k)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token and matches(token, self.keys) is not None:
            await self.app(scope, receive, send)
            return
        rid = requestid.choose(None)
        message = ("an API key or the metrics token is required: send 'Authorization: Bearer <key>'" if not token
                   else "the API key is not valid")
        body = json.dumps({"code": "unauthorized", "message": message, "request_id": rid}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"), (requestid.HEADER.lower().encode(), rid.encode())]})
        await send({"type": "http.response.body", "body": body})
