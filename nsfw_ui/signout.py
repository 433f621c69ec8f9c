"""Every way out of an OpenID Connect sign-in ends its session on the server: an ASGI middleware of ``st.App``.

The Account page's Sign out ends the session (:func:`nsfw_ui.auth.sign_out`) and then calls
``st.logout()``, which sends the browser to Streamlit's ``/auth/logout``.  A browser can also open
``/auth/logout`` itself (a bookmark, a link); Streamlit then only deletes the cookie from that browser.
:class:`EndSessionOnLogout` reads the sign-in cookie of such a request the way Streamlit's websocket
does (signed, maybe in chunks) and ends its session (:mod:`nsfw_core.state.sessions`) before
Streamlit answers, so a copy of the cookie is refused afterwards whichever way the user signed out.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)
LOGOUT = "/auth/logout"


def cookie_claims(cookies: dict[str, str]) -> dict[str, Any] | None:
    """The claims of a valid sign-in cookie as ``st.user`` has them (without ``tokens``); None without one."""
    from streamlit.web.server.starlette.starlette_server_config import USER_COOKIE_NAME
    from streamlit.web.server.starlette.starlette_websocket import _get_signed_cookie_with_chunks

    raw = _get_signed_cookie_with_chunks(cookies, USER_COOKIE_NAME)
    if not raw:
        return None
    payload = json.loads(raw)
    if not isinstance(payload, dict):
        return None
    return {"is_logged_in": payload.get("is_logged_in", False), **payload}


def _end(cookies: dict[str, str]) -> None:
    from nsfw_core.context import current
    from nsfw_core.state.sessions import oidc_session_id

    try:
        claims = cookie_claims(cookies)
        if claims is not None:
            current().signin_sessions.end(oidc_session_id(claims))
    except Exception as exc:  # Streamlit still clears the cookie; the session runs out by its lifetimes
        log.error("%s could not end the sign-in session (%s): a copy of the cookie stays valid until its "
                  "idle lifetime ends", LOGOUT, type(exc).__name__)


class EndSessionOnLogout:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/").endswith(LOGOUT):
            cookies = dict(HTTPConnection(scope).cookies)
            if cookies:
                await asyncio.to_thread(_end, cookies)
        await self.app(scope, receive, send)
