"""Asking the OpenID Connect provider again about a sign-in: its userinfo endpoint, with the access token.

Streamlit keeps the sign-in's access token in its signed cookie (``st.user.tokens["access"]`` once the
``[auth]`` section has ``expose_tokens = ["access"]``, as nsfw_ui/oidc.py writes it).  :func:`userinfo`
sends it to the provider's ``userinfo_endpoint`` (from its discovery document, :func:`endpoint`, read once
an hour): a provider that revoked the token, or whose user was disabled, answers 401, 403 or 400
(:class:`Refused`); otherwise it answers the user's claims as they are now (an address no longer verified
shows there).  A provider that cannot be reached, or answers anything else, raises :class:`Unavailable`.
Tokens are never logged nor put in an error message.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

TIMEOUT_S = 5.0
METADATA_TTL_S = 3600.0
MAX_BYTES = 256 * 1024
# Answers that refuse the token itself (RFC 6750 3.1: 400 invalid_request, 401 invalid_token, 403
# insufficient_scope; some providers answer 400 to a revoked token).  Anything else is an outage.
REFUSALS = (400, 401, 403)

_lock = threading.Lock()
_endpoints: dict[str, tuple[str, float]] = {}  # metadata URL -> (userinfo endpoint, monotonic time read)


class Refused(Exception):
    """The provider refused the access token (HTTP 401 or 403): the sign-in is no longer good."""


class Unavailable(Exception):
    """The provider could not be asked, or gave an answer that says nothing about the sign-in."""


def _get(url: str, headers: dict[str, str] | None = None) -> Any:
    import httpx  # requirements.txt: Authlib's Starlette client needs it too

    try:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False) as client:
            reply = client.get(url, headers=headers or {})
    except httpx.HTTPError as exc:
        raise Unavailable(f"{type(exc).__name__} from {_host(url)}") from None
    return reply


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).netloc or "?"
    except ValueError:
        return "?"


def _json(reply: Any, what: str) -> dict[str, Any]:
    if len(reply.content) > MAX_BYTES:
        raise Unavailable(f"{what} is larger than {MAX_BYTES} bytes")
    try:
        body = reply.json()
    except ValueError:
        raise Unavailable(f"{what} is not JSON ({reply.headers.get('content-type', 'no content type')})") from None
    if not isinstance(body, dict):
        raise Unavailable(f"{what} is not a JSON object")
    return body


def endpoint(metadata_url: str) -> str:
    """The provider's ``userinfo_endpoint``, from its discovery document (read at most once an hour)."""
    now = time.monotonic()
    with _lock:
        known = _endpoints.get(metadata_url)
    if known is not None and now - known[1] < METADATA_TTL_S:
        return known[0]
    reply = _get(metadata_url)
    if reply.status_code != 200:
        raise Unavailable(f"the provider's discovery document answered HTTP {reply.status_code}")
    found = _json(reply, "the provider's discovery document").get("userinfo_endpoint")
    if not isinstance(found, str) or not found.startswith(("https://", "http://")):
        raise Unavailable("the provider's discovery document names no userinfo_endpoint")
    with _lock:
        _endpoints[metadata_url] = (found, now)
    return found


def _error_code(reply: Any) -> str:
    """The OAuth error code of a refusal (``invalid_token``...), from ``WWW-Authenticate`` or the JSON body,
    as ``", invalid_token"``; "" when there is none that is plainly a code."""
    found = re.search(r'error="([^"]*)"', reply.headers.get("www-authenticate", ""))
    code: Any = found.group(1) if found else None
    if code is None and len(reply.content) <= MAX_BYTES:
        try:
            body = reply.json()
        except ValueError:
            body = None
        code = body.get("error") if isinstance(body, dict) else None
    return f", {code}" if isinstance(code, str) and re.fullmatch(r"[a-z_]{1,40}", code) else ""


def userinfo(metadata_url: str, access_token: str) -> dict[str, Any]:
    """The user's claims as the provider gives them now; :class:`Refused` when it refuses the token."""
    url = endpoint(metadata_url)
    reply = _get(url, {"Authorization": f"Bearer {access_token}", "Accept": "application/json"})
    if reply.status_code in REFUSALS:
        raise Refused(f"the identity provider refused this sign-in's access token (HTTP {reply.status_code}"
                      f"{_error_code(reply)}: revoked, expired, or the user was disabled)")
    if reply.status_code != 200:
        raise Unavailable(f"the provider's userinfo endpoint answered HTTP {reply.status_code}")
    return _json(reply, "the provider's userinfo answer")
