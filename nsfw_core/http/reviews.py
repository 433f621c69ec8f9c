"""The reviewer API and the evaluation, for the review tools teams already have (issue 25).

* ``POST /v1/reviews/claim``: the next item, held by the key under a lease (NSFW_REVIEW_LEASE_SECONDS): its
  public review id (``rv_...``, unguessable: the id its creator got and the webhooks' id), its image (the
  bytes that were classified, in base64) and, unless it is an audit item (reviewed blind), the model's
  verdict and scores and, for a refused look-alike, the ``match`` the Review page shows (issue 29: the
  remembered decision PDQ found while the model saw the image differently); ``{"item": null}`` when nothing
  is left for this key;
* ``POST /v1/reviews/{id}/decision`` with ``{"label": "adult" | "safe" | one of the five classes}``: the same
  rules as the Review page: only the key holding the item (or a pending one) decides it, the decision is
  webhooked, and remembered (later copies of the image get it) only when the API handed the reviewer the
  item's own bytes (``seen``, issue 29); double review takes it as a vote;
* ``POST /v1/reviews/undo``: the key's latest decision undone, the item back to the key under a new lease;
* ``GET /v1/evaluation?since=&until=``: :func:`nsfw_core.calibration.production.evaluate` for the window.

Keys: NSFW_REVIEWER_API_KEYS and NSFW_ADMIN_API_KEYS, separate from the clients' NSFW_API_KEYS (a client key
is refused with 403: client keys never act on review items).  A reviewer or admin key may act on any item,
named by any of its review ids.  The identity a decision records is the key's id, ``key:<16 hex digits of
its SHA-256>``, never the key.  Reviewer identities (``decided_by``, the votes of a disagreement) are shown
to reviewer and admin keys only.  An admin key also decides the items two reviewers disagreed on.  Each
request counts against NSFW_RATE_LIMIT like the others, one unit in a bucket of its key's (no share of the
machine: that divides the model's capacity among client keys); a missing or wrong key counts against
NSFW_WRONG_KEY_LIMIT per client address (429 beyond it) like a wrong client key.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import hashlib
import hmac
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nsfw_core import ratelimit
from nsfw_core.base import requestid
from nsfw_core.base.errors import Forbidden, Unauthorized
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.http.bodies import read_body
from nsfw_core.http.contract import ContractError, DecisionRequest, decode
from nsfw_core.http.guard import bearer, rate_limit, wrong_key
from nsfw_core.images.sniff import FORMATS, VIDEO_FORMATS, sniff, sniff_video
from nsfw_core.state.errors import ReviewConflict, ReviewUnavailable, TooManyClaims
from nsfw_core.state.known import item_hashes
from nsfw_core.state.review import Item, ItemNotFound, ReviewError, iso

if TYPE_CHECKING:
    from nsfw_core.context import Context

log = logging.getLogger(__name__)

T = TypeVar("T")
DECISION_BODY_BYTES = 1024
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # GET /v1/evaluation's since and until (ASCII digits only)


class KeyHolder:
    """Who a reviewer API request comes from: the key's id (``key:<hex>``) and whether it is an admin key."""

    def __init__(self, name: str, admin: bool) -> None:
        self.name, self.admin = name, admin


def key_id(key: str) -> str:
    """The id recorded for a key: ``key:`` and the first 16 hex digits of its SHA-256 (never the key), the rule of
    :func:`nsfw_core.ratelimit.key_id` (a client key's id in the webhook events)."""
    return ratelimit.key_id(key)


def _matches(token: bytes, keys: tuple[str, ...]) -> bool:
    found = False
    for key in keys:  # no early exit: the time does not depend on which key matches
        found |= hmac.compare_digest(token, key.encode())
    return found


def role_of(request: Request, ctx: Context) -> KeyHolder | None:
    """The reviewer or admin key a request carries, or None (no key, a client key, an unknown one); refuses
    nothing.  What shows reviewer identities (``decided_by``) to reviewer and admin keys only."""
    keys = ctx.settings.reviewer_keys
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if not keys.configured or scheme.lower() != "bearer" or not token:
        return None
    raw = token.encode("utf-8", "surrogatepass")
    admin = _matches(raw, keys.admin)
    return KeyHolder(key_id(token), admin) if admin or _matches(raw, keys.reviewer) else None


async def holder(request: Request, ctx: Context) -> KeyHolder:
    """The reviewer or admin key of the request (401 without one, 403 for a client's API key), then its rate
    limit.

    Every 401 counts against the client address's NSFW_WRONG_KEY_LIMIT first (429 beyond it), as the API's do:
    a reviewer key opens every item's bytes, so guessing one is limited like guessing a client key.  A client's
    key (403) is a right key in the wrong place, not a guess: not counted.  A right key's calls count against
    NSFW_RATE_LIMIT in a bucket of that key's, one unit each, and never against a client's share."""
    keys = ctx.settings.reviewer_keys
    if not keys.configured:
        raise Unauthorized("the reviewer API is off: set NSFW_REVIEWER_API_KEYS (or NSFW_ADMIN_API_KEYS)")
    token = bearer(request)
    raw = token.encode("utf-8", "surrogatepass")
    admin = bool(token) and _matches(raw, keys.admin)
    reviewer = bool(token) and _matches(raw, keys.reviewer)
    if not (admin or reviewer):
        if token and _matches(raw, ctx.serving.api_keys):
            raise Forbidden("a client API key cannot review; use a key of NSFW_REVIEWER_API_KEYS")
        await wrong_key(request, ctx)
        if not token:
            raise Unauthorized("a reviewer API key is required: send 'Authorization: Bearer <key>'")
        raise Unauthorized("the reviewer API key is not valid")
    await rate_limit(request, ctx, role_key=token)
    return KeyHolder(key_id(token), admin)


async def _db(ctx: Context, work: Callable[[], T], what: str) -> T:
    """``work`` on a worker thread; a database that is down is 503 without its address or driver error."""
    try:
        return await asyncio.to_thread(requestid.in_context(work))
    except (ItemNotFound, ReviewConflict, TooManyClaims):
        raise
    except ReviewError as exc:
        log.error("%s: %s", what, exc.message)
        raise ReviewUnavailable("the review database is unavailable; retry later (details in the server log)") \
            from None


def _answer(request: Request, body: Any) -> JSONResponse:
    return JSONResponse(body, headers=getattr(request.state, "ratelimit", None))


def _item_id(ctx: Context, raw: str) -> int:
    """The item a review id names, whichever client it was given to (a reviewer or admin key may act on any
    item); 404 for anything else (malformed, unknown, purged, the queue's own numbers)."""
    found = ctx.review_queue.ticket(raw)
    if found is None:
        raise ItemNotFound(f"no review item {raw[:40]!r} (review ids are rv_ and 22 characters)")
    return found[0]


def shown_bytes(item: Item) -> bytes | None:
    """The bytes the API hands a reviewer: the stored ones, only when they are the bytes that were classified
    (their sha256 is the item's).  :func:`decision` passes their sha256 as ``seen``."""
    if item.image and hashlib.sha256(item.image).hexdigest() == item.sha256:
        return item.image
    return None


def stored_match(item: Item) -> dict[str, Any] | None:
    """The refused look-alike match the queue keeps with ``item`` (``matched``, from
    :meth:`~nsfw_core.state.known.Match.for_reviewer`), checked field by field against the contract's
    ``ClaimedMatch``; None without one, for an audit item (reviewed blind: the match is the model's view), and
    for a value that does not parse (the Review page shows nothing then either)."""
    if item.blind or not item.matched:
        return None
    try:
        m = json.loads(item.matched)
    except ValueError:
        return None
    if not isinstance(m, dict):
        return None
    source, by, label, verdict, distance = (m.get(k) for k in ("source", "by", "label", "verdict", "distance"))
    if source not in ("review", "list") or by not in ("pdq", "vpdq") or not isinstance(label, str) \
            or verdict not in ("adult", "safe") or type(distance) is not int or not 0 <= distance <= 256:
        return None
    out: dict[str, Any] = {"source": source, "by": by, "label": label, "verdict": verdict, "distance": distance}
    share = m.get("share")
    if isinstance(share, (int, float)) and not isinstance(share, bool) and 0 <= share <= 1:
        out["share"] = float(share)
    for key in ("review_id", "entry_id"):  # the queue's own numbers: the caller names them for the API
        if type(m.get(key)) is int:
            out[key] = m[key]
    return out


def _match(ctx: Context, item: Item) -> dict[str, Any] | None:
    """The contract's ``ClaimedMatch`` for ``item``: :func:`stored_match`, the decided item named by its review id
    (while it is kept) and the matched entry by its SHA-256 (while it is remembered), never by the queue's or
    the known images' numbers (the API names no item by those)."""
    m = stored_match(item)
    if m is None:
        return None
    review_id, entry_id = m.pop("review_id", None), m.pop("entry_id", None)
    if review_id is not None and m["source"] == "review":
        try:
            m["review_id"] = ctx.review_queue.public_id(review_id)
        except ItemNotFound:  # purged with the retention; the decision it left is still remembered
            pass
    entry = ctx.known.entry(entry_id) if entry_id is not None else None
    if entry is not None and entry.sha256:
        m["sha256"] = entry.sha256
    return m


def claimed(item: Item, public_id: str, votes: list[tuple[str, str]] | None = None,
            match: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's ``ClaimedItem``: an audit item blind (no verdict, scores, model or match).  The image is the
    bytes that were classified; only a review item queued before URL bytes were kept (issue 29) offers its URL
    instead (a decision on it is then not remembered: the API handed no bytes); an audit item never does.
    ``match``: the refused look-alike's (:func:`_match`), shown as the Review page shows it."""
    image: dict[str, Any] | None = None
    data = shown_bytes(item)
    if data is not None:
        fmt, video = sniff(data), sniff_video(data)  # a video item (issue 27): its container's media type
        media_type = VIDEO_FORMATS[video] if video is not None else FORMATS.get(fmt or "", "application/octet-stream")
        image = {"base64": base64.b64encode(data).decode("ascii"), "media_type": media_type}
    elif item.is_url and not item.blind and item.image is None:
        image = {"url": item.source}
    out: dict[str, Any] = {"id": public_id, "kind": item.kind, "source": item.source,
                           "created_at": iso(item.created_at), "lease_until": iso(item.lease_until),
                           "image": image}
    if not item.blind:
        out.update(verdict=item.verdict, scores={c: float(item.scores[c]) for c in CLASS_NAMES}, model=item.model)
        if match is not None:
            out["match"] = match
    if item.escalated:
        out["escalated"] = True
        if votes:
            out["votes"] = [{"reviewer": r, "label": label} for r, label in votes]
    return out


def _with_votes(ctx: Context, item: Item | None) -> dict[str, Any] | None:
    if item is None:
        return None
    votes = [(v.reviewer, v.label) for v in ctx.review_queue.votes(item.id)] if item.escalated else None
    return claimed(item, ctx.review_queue.public_id(item.id), votes, _match(ctx, item))


# ---------------------------------------------------------------- endpoints


async def claim(request: Request, ctx: Context) -> Response:
    """POST /v1/reviews/claim: the next item for this key, under a lease."""
    who = await holder(request, ctx)

    def work() -> dict[str, Any] | None:
        queue = ctx.review_queue
        queue.purge_if_due()
        # one key cannot take the whole queue away from the other reviewers
        return _with_votes(ctx, queue.claim(who.name, admin=who.admin, max_held=ctx.settings.review_max_held))

    return _answer(request, {"item": await _db(ctx, work, "POST /v1/reviews/claim")})


async def decision(request: Request, ctx: Context) -> Response:
    """POST /v1/reviews/{id}/decision: this key's label for the item it holds."""
    who = await holder(request, ctx)
    raw = request.path_params.get("id", "")
    body = decode(await read_body(request, DECISION_BODY_BYTES, ctx.serving.body_timeout), DecisionRequest)
    from nsfw_core.state.webhooks import review_dict

    def work() -> dict[str, Any]:
        queue = ctx.review_queue
        item_id = _item_id(ctx, raw)
        queue.public_id(item_id)  # the webhook's and the answer's id (an item queued before issue 29 gets one)
        held = queue.get(item_id)
        data = shown_bytes(held) if held is not None else None
        # seen: the bytes the API hands a reviewer of this item (claimed() hands these and no others); without
        # them (an upload not kept, an old URL item) the decision is recorded and remembered for nothing
        seen = hashlib.sha256(data).hexdigest() if data is not None else None
        # items the API queued carry their perceptual hashes; an older one gets them from the bytes shown
        hashes = item_hashes(ctx, queue, item_id, data) if data is not None else None
        item = queue.decide(item_id, who.name, body.label, phash=hashes, seen=seen, admin=who.admin)
        outcome = "decided" if item.status == "decided" else "escalated" if item.escalated else "second_review"
        return {"outcome": outcome, "review": review_dict(item)}  # decided_by: a reviewer key asks

    return _answer(request, await _db(ctx, work, f"POST /v1/reviews/{raw[:40]}/decision"))


async def undo(request: Request, ctx: Context) -> Response:
    """POST /v1/reviews/undo: this key's latest decision undone; the item is this key's again."""
    who = await holder(request, ctx)

    def work() -> dict[str, Any] | None:
        return _with_votes(ctx, ctx.review_queue.undo(who.name, reclaim=True))

    return _answer(request, {"item": await _db(ctx, work, "POST /v1/reviews/undo")})


def parse_time(raw: str, field: str) -> float:
    """``since`` / ``until``: a UTC date, ``YYYY-MM-DD`` (RFC 3339's full-date, the OpenAPI document's ``format:
    date``: exactly what the document allows, nothing more), as seconds since the epoch at its UTC midnight;
    400 ``invalid_request`` naming the parameter otherwise."""
    if not DATE_RE.fullmatch(raw):
        raise ContractError(f"{field} must be a UTC date, YYYY-MM-DD (2026-12-01)", field=field)
    try:
        day = _dt.date.fromisoformat(raw)
    except ValueError:
        raise ContractError(f"{field} is not a date: {raw[:20]!r}", field=field) from None
    return _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc).timestamp()


async def evaluation(request: Request, ctx: Context) -> Response:
    """GET /v1/evaluation?since=&until=: the automatic decisions' estimated precision, what the unknown items
    turned out to be, wrong decisions per day, reviewer agreement, by day, score drift."""
    await holder(request, ctx)
    from nsfw_core.calibration.production import DAY, MAX_DAYS

    now = time.time()
    params = request.query_params
    until = parse_time(params["until"], "until") if "until" in params else now
    since = parse_time(params["since"], "since") if "since" in params else None
    if since is not None and not since < until:
        raise ContractError("since must be before until", field="since")
    if since is not None and until - since > MAX_DAYS * DAY:
        raise ContractError(f"the window is at most {MAX_DAYS} days", field="since")
    report = await _db(ctx, lambda: ctx.evaluation(since=since, until=until, now=now), "GET /v1/evaluation")
    return _answer(request, report)
