"""No other site may frame the browser app (clickjacking): an ASGI middleware of ``st.App``.

Every HTTP answer gets ``X-Frame-Options: SAMEORIGIN`` and ``Content-Security-Policy:
frame-ancestors 'self'``, so a page elsewhere cannot lay the Sign in, review or hash-list pages
under its own buttons.  Same-origin frames (Streamlit's own component iframes) keep working.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADERS = ((b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", b"frame-ancestors 'self'"))


class NoFraming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in HEADERS if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)
