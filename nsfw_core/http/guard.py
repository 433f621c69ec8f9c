"""The steps every classifying route takes first, in one order: the API key, its budgets, readiness.

One function for both API generations, so ``/predict`` and ``/v1/classify`` can never drift apart:
:func:`guard` checks ``Authorization: Bearer <key>`` when NSFW_API_KEYS is set (401; a client address
that sent more wrong keys than NSFW_WRONG_KEY_LIMIT gets 429 instead), makes the request's
:class:`~nsfw_core.ratelimit.Meter` and charges its entry unit against its key's budgets
(NSFW_RATE_LIMIT and the key's share of the machine, NSFW_KEY_SHARE: 429 with ``Retry-After``;
``/predict`` and ``/v1`` share one budget per key), and refuses while the model is not ready (503
``not_ready``).  The rest of what the request costs is charged where it becomes known
(:mod:`nsfw_core.intake`: frames, model, decoding work).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from typing import TYPE_CHECKING, Iterator

from starlette.requests import Request

from nsfw_core import ratelimit
from nsfw_core.base.errors import Forbidden, NotReady, Unauthorized

if TYPE_CHECKING:
    from nsfw_core.context import Context


async def guard(request: Request, ctx: Context, *, ready: bool = True) -> dict[str, str] | None:
    """API key, budgets, then (``ready``) readiness; the RateLimit headers for the answer, or None."""
    await authorize(request, ctx, ctx.serving.api_keys, role_keys_elsewhere=True)
    headers = await rate_limit(request, ctx)
    if ready and not ctx.ready:
        raise NotReady(f"the service is not ready: {ctx.reason}")
    return headers


def bearer(request: Request) -> str:
    """The token of ``Authorization: Bearer <token>`` ("" when there is none)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def matches(token: str, keys: tuple[str, ...]) -> str | None:
    """The key ``token`` is, compared in constant time (no early exit: the time does not tell which)."""
    found = None
    given = token.encode("utf-8", "surrogatepass")
    for key in keys:
        if hmac.compare_digest(given, key.encode()):
            found = key
    return found


async def authorize(request: Request, ctx: Context, keys: tuple[str, ...], *, role_keys_elsewhere: bool = False
                    ) -> None:
    """With ``keys`` configured, require ``Authorization: Bearer <one of them>``: 401 without it; a wrong one
    also counts against the client address's NSFW_WRONG_KEY_LIMIT, beyond which it is 429 (a right key
    always passes).  With ``role_keys_elsewhere`` (the client API), a reviewer or admin key is a right key in
    the wrong place, not a guess: 403, not counted, as a client key on the reviewer API is."""
    if not keys:
        return
    token = bearer(request)
    if token and matches(token, keys) is not None:
        return
    if token and role_keys_elsewhere:
        roles = ctx.settings.reviewer_keys
        if matches(token, roles.reviewer + roles.admin) is not None:
            raise Forbidden("a reviewer or admin key cannot use the client API; use a key of NSFW_API_KEYS")
    await wrong_key(request, ctx)
    if not token:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    raise Unauthorized("the API key is not valid")


async def wrong_key(request: Request, ctx: Context) -> None:
    """Count a request that brought no right key (none, or a wrong one) against its client address's
    NSFW_WRONG_KEY_LIMIT: 429 ``rate_limited`` (limit ``wrong_key``) beyond it.  Every route that takes keys
    calls it before its 401: the API's (client keys), /metrics (the metrics token) and the reviewer API's."""
    limiter = ctx.wrong_keys
    if limiter is None:
        return
    address = "addr:" + (request.client.host if request.client else "")
    if limiter.shared:
        await asyncio.to_thread(limiter.check, address)
    else:
        limiter.check(address)


async def rate_limit(request: Request, ctx: Context, *, role_key: str | None = None) -> dict[str, str] | None:
    """Make the request's meter and charge its entry unit (NSFW_RATE_LIMIT, NSFW_KEY_SHARE): the RateLimit
    headers for the answer, or None without a rate limit; 429 ``rate_limited`` beyond a budget.

    ``role_key``: the reviewer or admin key of a reviewer API request, which has a NSFW_RATE_LIMIT budget of its
    own (one unit a call) and no share of the machine (the share divides the model's capacity among clients;
    the reviewer API runs no model)."""
    if role_key is not None:
        meter = ratelimit.Meter("key:" + role_key, None, ctx.limiter, None)
    else:
        keyed = bool(ctx.serving.api_keys)
        # the budgets go by the client's database id (a video job keeps it, and charges its frames to them)
        meter = ratelimit.Meter(ratelimit.client_budget(client_id(request, ctx)),
                                ratelimit.key_id(bearer(request)) if keyed else None, ctx.limiter, ctx.share)
    ratelimit.bind(meter)
    request.state.meter = meter
    if ctx.limiter is not None and ctx.limiter.shared:
        headers = await asyncio.to_thread(meter.enter)
    else:
        headers = meter.enter()
    if headers is not None:
        request.state.ratelimit = headers
    return headers


def client_key(request: Request, keyed: bool) -> str:
    """Whose budgets a request counts against: its API key (stored hashed), else its peer address."""
    if keyed:
        return "key:" + bearer(request)
    return "addr:" + (request.client.host if request.client else "")


@contextlib.contextmanager
def admitted(request: Request, ctx: Context, images: float) -> Iterator[None]:
    """Admit a guarded request's ``images`` (one unit each, its client's share included; 503 / 429), and tell
    its meter, so that one of its images costing more may still run while the client has nothing else in
    flight."""
    meter = getattr(request.state, "meter", None)
    with ctx.admission.admit(images, meter.client if meter is not None else None):
        if meter is not None:
            meter.admitted = float(min(images, ctx.admission.key_limit))
        yield


def client_id(request: Request, ctx: Context) -> str:
    """Who a request is, as the database keeps it (review items, review ids, decisions that protect only
    it): a hash of :func:`client_key` (the API key, else the peer address), never the key itself."""
    key = client_key(request, bool(ctx.serving.api_keys))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
