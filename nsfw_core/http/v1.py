"""API v1: ``POST /v1/classify``, ``POST /v1/classify/batch``, ``GET /v1/reviews/{id}`` and ``GET /docs``.

Beside ``/predict`` (unchanged), shaped like the moderation APIs clients integrate (Rekognition,
Azure Content Safety): JSON bodies validated by the typed contract (:mod:`nsfw_core.http.contract`),
images by URL or base64, a model and thresholds per request (:mod:`nsfw_core.inference.registry`), the rich
answer always, with the request's id and the client's.  The same API keys, admission (images in
flight, body bytes in memory) and body deadline as ``/predict``; plus a rate limit per key
(:mod:`nsfw_core.http.ratelimit`) and the review decisions' webhooks (:mod:`nsfw_core.state.webhooks`), whose
background delivery :func:`start` begins with the API's lifespan.

Byte caps: ``/v1/classify``'s JSON body may hold one image of ``NSFW_MAX_BYTES`` in base64 (its
length is checked before it is decoded); a batch's body may hold, besides ``NSFW_MAX_BATCH_ITEMS``
URLs, base64 images of ``NSFW_MAX_BYTES`` in all (the batch holds no more memory than one upload).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import weakref
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from nsfw_core.base import requestid
from nsfw_core.base.logs import extra_fields, url_for_log
from nsfw_core.base.settings import MODEL_NAMES
from nsfw_core.base.verdict import Thresholds
from nsfw_core.classify import Classification, Lane, classify_bytes, classify_url
from nsfw_core.context import Context, current
from nsfw_core.http.app import (
    BATCH_ITEM_BYTES,
    MULTIPART_SLACK,
    ApiRoute,
    NotFound,
    as_error,
    authorize,
    expected_body,
    note,
    read_body,
    uploaded_image,
)
from nsfw_core.http.contract import (
    BatchRequest,
    ClassifyRequest,
    ContractError,
    ThresholdsIn,
    TooManyItems,
    base64_text_cap,
    check_id,
    check_image,
    decode,
    image_bytes,
)
from nsfw_core.http.docs import docs_page
from nsfw_core.http.ratelimit import RateLimiter
from nsfw_core.inference.registry import ModelCache

log = logging.getLogger(__name__)

JSON_SLACK = 4096  # room for the JSON around one image (model, thresholds, id)
MAX_REVIEW_ID = 2**63 - 1


# ---------------------------------------------------------------- per-process services


@dataclasses.dataclass
class Services:
    models: ModelCache
    limiter: RateLimiter | None
    deliverer: Any = None  # webhooks.Deliverer when NSFW_WEBHOOK_URL is set
    task: asyncio.Task[None] | None = None


_services: weakref.WeakKeyDictionary[Context, Services] = weakref.WeakKeyDictionary()


def services(ctx: Context) -> Services:
    found = _services.get(ctx)
    if found is None:
        settings = ctx.settings
        rate = settings.rate_limit
        found = _services[ctx] = Services(ModelCache(ctx, settings.model_memory_mb * 1024 * 1024),
                                          RateLimiter(rate) if rate is not None else None)
    return found


async def start(ctx: Context) -> None:
    """With the API's lifespan: the webhooks' outbox hook and their delivery task."""
    svc = services(ctx)
    settings = ctx.settings
    if not settings.webhook_url:
        return
    from nsfw_core.state.webhooks import Deliverer, outbox_hook

    def hook_up() -> Any:
        queue = ctx.review_queue
        if outbox_hook not in queue.decision_hooks:
            queue.decision_hooks.append(outbox_hook)
        return queue

    try:
        queue = await asyncio.to_thread(hook_up)
    except Exception as exc:  # the database is down: no decisions can be made either
        log.error("webhooks are off: the review database is unavailable (%r)", exc)
        return
    svc.deliverer = Deliverer(queue, settings.webhook_url, settings.webhook_secret, ctx.fetch_policy)
    svc.task = asyncio.get_running_loop().create_task(svc.deliverer.run(), name="nsfw-webhooks")
    log.info("webhooks: review decisions are POSTed to %s", url_for_log(settings.webhook_url))


async def stop(ctx: Context) -> None:
    svc = _services.pop(ctx, None)
    if svc is None:
        return
    if svc.task is not None:
        svc.task.cancel()
        try:
            await svc.task
        except (asyncio.CancelledError, Exception):
            pass
    await svc.models.close()


# ---------------------------------------------------------------- helpers


def rate_limit(request: Request, ctx: Context) -> dict[str, str] | None:
    """Count the request against its key's rate limit (NSFW_RATE_LIMIT): the RateLimit headers for the
    answer, or None without a limit; 429 ``rate_limited`` beyond it. /predict and /v1 share one bucket."""
    svc = services(ctx)
    if svc.limiter is None:
        return None
    request.state.ratelimit = svc.limiter.check(_client(request, bool(ctx.serving.api_keys)))
    return request.state.ratelimit


def _guard(request: Request) -> tuple[Context, Services]:
    """API keys, then the key's rate limit (its headers go on the answer)."""
    ctx = current()
    authorize(request, ctx.serving.api_keys)
    rate_limit(request, ctx)
    return ctx, services(ctx)


def _client(request: Request, keyed: bool) -> str:
    if keyed:
        return "key:" + request.headers.get("authorization", "").partition(" ")[2].strip()
    return "addr:" + (request.client.host if request.client else "")


def _answer(request: Request, body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=getattr(request.state, "ratelimit", None))


def _thresholds(ctx: Context, wanted: ThresholdsIn | None) -> Thresholds | None:
    if wanted is None or (wanted.adult is None and wanted.safe is None):
        return None
    active = ctx.thresholds.current().thresholds
    return dataclasses.replace(active, adult=active.adult if wanted.adult is None else wanted.adult,
                               safe=active.safe if wanted.safe is None else wanted.safe)


def result_dict(result: Classification, ident: Any, overridden: bool) -> dict[str, Any]:
    """The contract's ``ClassifyResult``: ``/predict?detail=1``'s answer plus the request's and client's ids."""
    out = result.to_dict()
    out["thresholds"]["overridden"] = overridden
    return {"request_id": requestid.current(), "id": ident, **out}


def _json_type(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


# ---------------------------------------------------------------- endpoints


async def classify(request: Request) -> Response:
    """POST /v1/classify: one image, by URL or base64 in JSON, or as the body (raw or multipart)."""
    ctx, svc = _guard(request)
    ctx.require_ready()
    limits = ctx.serving
    info = note(request)
    override: Thresholds | None = None
    ident: Any = None
    with ctx.admission.admit(1):  # before the body is read, as /predict
        if _json_type(request):
            cap = base64_text_cap(limits.max_bytes) + limits.max_url_length + JSON_SLACK
            with ctx.admission.hold_body(expected_body(request, cap)):
                req = decode(await read_body(request, cap, limits.body_timeout), ClassifyRequest)
                check_image(req.image, "$.image")
                check_id(req.id, "$.id")
                model: str | None = req.model
                override, ident, url = _thresholds(ctx, req.thresholds), req.id, req.image.url
                data = None if req.image.base64 is None else image_bytes(req.image.base64, limits.max_bytes,
                                                                         "$.image.base64")
                del req  # the base64 text goes before the image is classified
                async with svc.models.lane(model) as lane:
                    if url is not None:
                        info.url = url_for_log(url)
                        result = await classify_url(ctx, url, lane=lane, thresholds=override)
                    else:
                        assert data is not None
                        result = await classify_bytes(ctx, data, lane=lane, thresholds=override)
        else:
            model = _check_model(request.query_params.get("model"))
            with ctx.admission.hold_body(expected_body(request, limits.max_bytes + MULTIPART_SLACK)):
                data = await uploaded_image(request, limits.max_bytes, limits.body_timeout)
                async with svc.models.lane(model) as lane:
                    result = await classify_bytes(ctx, data, lane=lane)
    info.verdict, info.timings = result.verdict, result.timings
    return _answer(request, result_dict(result, ident, override is not None))


async def classify_batch(request: Request) -> Response:
    """POST /v1/classify/batch: many images (URLs and base64 mixed), one result or error each, in order."""
    ctx, svc = _guard(request)
    ctx.require_ready()
    limits = ctx.serving
    cap = limits.max_batch_items * (limits.max_url_length + BATCH_ITEM_BYTES) + base64_text_cap(limits.max_bytes)
    with ctx.admission.hold_body(expected_body(request, cap)):
        req = decode(await read_body(request, cap, limits.body_timeout), BatchRequest)
        if len(req.items) > limits.max_batch_items:
            raise TooManyItems(f"{len(req.items)} items; at most {limits.max_batch_items} per request",
                               limit=limits.max_batch_items)
        if not req.items:
            raise ContractError("items is empty: send at least one", field="$.items")
        work: list[tuple[Any, str | None, bytes | None]] = []
        for index, item in enumerate(req.items):
            where = f"$.items[{index}]"
            check_image(item.image, f"{where}.image")
            check_id(item.id, f"{where}.id")
            data = None if item.image.base64 is None else image_bytes(item.image.base64, limits.max_bytes,
                                                                      f"{where}.image.base64")
            work.append((item.id, item.image.url, data))
        model, override = req.model, _thresholds(ctx, req.thresholds)
        del req
        info = note(request)
        info.items = len(work)
        with ctx.admission.admit(len(work)):
            async with svc.models.lane(model) as lane:
                results = await asyncio.gather(*(_batch_item(ctx, lane, override, i, ident, url, data)
                                                 for i, (ident, url, data) in enumerate(work)))
    info.item_errors = sum(1 for r in results if "error" in r)
    tally = collections.Counter(r["verdict"] for r in results if "verdict" in r)
    info.verdicts = ",".join(f"{v}:{n}" for v, n in sorted(tally.items())) or None
    return _answer(request, {"request_id": requestid.current(), "results": results})


async def _batch_item(ctx: Context, lane: Lane | None, override: Thresholds | None, index: int, ident: Any,
                      url: str | None, data: bytes | None) -> dict[str, Any]:
    try:
        if url is not None:
            result = await classify_url(ctx, url, lane=lane, thresholds=override)
        else:
            assert data is not None
            result = await classify_bytes(ctx, data, lane=lane, thresholds=override)
    except Exception as exc:  # one bad item must not fail the others
        err = as_error(exc)
        ctx.metrics.observe_error(err.code)
        shown = url_for_log(url) if url is not None else "base64"
        log.info("v1 batch item %d: %s %d %s image=%s", index, err.code, err.status, err.message, shown,
                 extra=extra_fields(item=index, code=err.code, status=err.status, url=shown))
        return {"id": ident, "error": err.to_dict()}
    return result_dict(result, ident, override is not None)


def _check_model(name: str | None) -> str | None:
    """The ``?model=`` of a raw body: one of the three models, or None for the default."""
    if name is not None and name not in MODEL_NAMES:
        raise ContractError(f"model must be one of {', '.join(MODEL_NAMES)}", field="model")
    return name


async def reviews(request: Request) -> Response:
    """GET /v1/reviews/{id}: a review item's status, and the decision once made."""
    ctx, _ = _guard(request)
    raw = request.path_params.get("id", "")
    # ASCII digits only: str.isdigit() also takes "²" (int() then fails: a 500) and other scripts' digits
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= MAX_REVIEW_ID:
        raise NotFound(f"no review item {raw[:40]!r}: ids are positive integers")
    from nsfw_core.state.review import ItemNotFound, ReviewError, ReviewUnavailable
    from nsfw_core.state.webhooks import review_dict

    try:
        item = await asyncio.to_thread(requestid.in_context(lambda: ctx.review_queue.get(int(raw))))
    except ReviewError as exc:  # the database's address and the driver's error go to the log, not the client
        log.error("GET /v1/reviews/%s: %s", raw, exc.message)
        raise ReviewUnavailable("the review database is unavailable; retry later (details in the server log)") \
            from None
    if item is None:
        raise ItemNotFound(f"review item {raw} does not exist (or was purged)", item_id=int(raw))
    return _answer(request, review_dict(item))


async def docs(request: Request) -> Response:
    """GET /docs: the OpenAPI document as a readable page, with no asset from the network."""
    return HTMLResponse(docs_page())


routes: list[ApiRoute] = [
    ApiRoute("/v1/classify", {"POST": classify}),
    ApiRoute("/v1/classify/batch", {"POST": classify_batch}),
    ApiRoute("/v1/reviews/{id}", {"GET": reviews}),
    ApiRoute("/docs", {"GET": docs}),
]
