"""The steps every classifying route takes first, in one order: the API key, its rate limit, readiness.

One function for both API generations, so ``/predict`` and ``/v1/classify`` can never drift apart:
:func:`guard` checks ``Authorization: Bearer <key>`` when NSFW_API_KEYS is set (401), counts the
request against its key's bucket (NSFW_RATE_LIMIT: 429 with ``Retry-After``; ``/predict`` and ``/v1``
share one bucket per key) and refuses while the model is not ready (503 ``not_ready``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request

from nsfw_core.base.errors import NotReady, Unauthorized

if TYPE_CHECKING:
    from nsfw_core.context import Context


def guard(request: Request, ctx: Context, *, ready: bool = True) -> dict[str, str] | None:
    """API key, rate limit, then (``ready``) readiness; the RateLimit headers for the answer, or None."""
    authorize(request, ctx.serving.api_keys)
    headers = rate_limit(request, ctx)
    if ready and not ctx.ready:
        raise NotReady(f"the service is not ready: {ctx.reason}")
    return headers


def authorize(request: Request, api_keys: tuple[str, ...]) -> None:
    """With API keys configured, require ``Authorization: Bearer <key>`` (constant-time compare)."""
    if not api_keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    matched = False
    for key in api_keys:  # no early exit: the time does not depend on which key matches
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if not matched:
        raise Unauthorized("the API key is not valid")


def rate_limit(request: Request, ctx: Context) -> dict[str, str] | None:
    """Count the request against its key's rate limit (NSFW_RATE_LIMIT): the RateLimit headers for the
    answer, or None without a limit; 429 ``rate_limited`` beyond it."""
    if ctx.limiter is None:
        return None
    headers: dict[str, str] = ctx.limiter.check(client_key(request, bool(ctx.serving.api_keys)))
    request.state.ratelimit = headers
    return headers


def client_key(request: Request, keyed: bool) -> str:
    """Whose bucket a request counts against: its API key (stored hashed), else its peer address."""
    if keyed:
        return "key:" + request.headers.get("authorization", "").partition(" ")[2].strip()
    return "addr:" + (request.client.host if request.client else "")


def client_id(request: Request, ctx: Context) -> str:
    """Who a request is, as the database keeps it (review items, review ids, decisions that protect only
    it): a hash of :func:`client_key` (the API key, else the peer address), never the key itself."""
    key = client_key(request, bool(ctx.serving.api_keys))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
