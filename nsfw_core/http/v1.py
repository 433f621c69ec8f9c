"""API v1: ``POST /v1/classify``, ``POST /v1/classify/batch``, ``GET /v1/reviews/{id}`` and ``GET /docs``.

Beside ``/predict`` (unchanged), shaped like the moderation APIs clients integrate (Rekognition,
Azure Content Safety): JSON bodies validated by the typed contract (:mod:`nsfw_core.http.contract`),
images by URL or base64, a model and thresholds per request (the process's model registry,
:mod:`nsfw_core.inference.registry`), the rich answer always, with the request's id and the client's.
The same steps as ``/predict`` (:func:`~nsfw_core.http.guard.guard`: API key, rate limit per key,
readiness), the same admission (images in flight, body bytes in memory) and body deadline.

Byte caps: ``/v1/classify``'s JSON body may hold one image of ``NSFW_MAX_BYTES`` in base64 (its
length is checked before it is decoded); a batch's body may hold, besides ``NSFW_MAX_BATCH_ITEMS``
URLs, base64 images of ``NSFW_MAX_BYTES`` in all (the batch holds no more memory than one upload).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from nsfw_core.base import requestid
from nsfw_core.base.logs import extra_fields, url_for_log
from nsfw_core.base.verdict import Thresholds
from nsfw_core.classify import Classification
from nsfw_core.http.bodies import (
    BATCH_ITEM_BYTES,
    MULTIPART_SLACK,
    adapter_wanted,
    expected_body,
    query_model,
    read_body,
    uploaded_image,
    within_cap,
)
from nsfw_core.http.contract import (
    BatchRequest,
    ClassifyRequest,
    ContractError,
    ThresholdsIn,
    base64_text_cap,
    check_id,
    check_image,
    decode,
    image_bytes,
)
from nsfw_core.http.docs import docs_page
from nsfw_core.http.errors import TooManyItems, as_error
from nsfw_core.http.guard import admitted, client_id, guard
from nsfw_core.http.reviews import role_of
from nsfw_core.http.routing import note

if TYPE_CHECKING:
    from nsfw_core.context import Context

log = logging.getLogger(__name__)

JSON_SLACK = 4096  # room for the JSON around one image (model, thresholds, id)


# ---------------------------------------------------------------- helpers


def _answer(request: Request, body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=getattr(request.state, "ratelimit", None))


def _thresholds(ctx: Context, wanted: ThresholdsIn | None, model: str | None = None,
                adapter: bool = True) -> Thresholds | None:
    """The request's thresholds: the ones in force (the adapter's when one is) with the values it gives."""
    if wanted is None or (wanted.adult is None and wanted.safe is None):
        return None
    active = ctx.classifier.thresholds_in_force(model, adapter)
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


async def classify(request: Request, ctx: Context) -> Response:
    """POST /v1/classify: one image, by URL or base64 in JSON, or as the body (raw or multipart)."""
    await guard(request, ctx)
    queried = query_model(request)
    limits = ctx.serving
    info = note(request)
    override: Thresholds | None = None
    ident: Any = None
    with admitted(request, ctx, 1):  # before the body is read, as /predict
        if _json_type(request):
            cap = base64_text_cap(limits.max_body) + limits.max_url_length + JSON_SLACK
            with ctx.admission.hold_body(expected_body(request, cap)):
                req = decode(await read_body(request, cap, limits.body_timeout), ClassifyRequest)
                check_image(req.image, "$.image")
                check_id(req.id, "$.id")
                model = query_model(request, req.model)
                adapter = adapter_wanted(request, req.adapter)
                override, ident, url = _thresholds(ctx, req.thresholds, model, adapter), req.id, req.image.url
                data = None if req.image.base64 is None else within_cap(
                    image_bytes(req.image.base64, limits.max_body, "$.image.base64"), limits.max_bytes,
                    limits.max_video_bytes, "$.image.base64")
                del req  # the base64 text goes before the image is classified
                client = client_id(request, ctx)
                if url is not None:
                    info.url = url_for_log(url)
                    result = await ctx.classifier.url(url, model=model, thresholds=override, client=client,
                                                      adapter=adapter)
                else:
                    assert data is not None
                    result = await ctx.classifier.data(data, model=model, thresholds=override, client=client,
                                                       adapter=adapter)
        else:
            adapter = adapter_wanted(request, None)
            with ctx.admission.hold_body(expected_body(request, limits.max_body + MULTIPART_SLACK)):
                data = await uploaded_image(request, limits.max_bytes, limits.body_timeout,
                                            max_video_bytes=limits.max_video_bytes)
                result = await ctx.classifier.data(data, model=queried, client=client_id(request, ctx), adapter=adapter)
    info.verdict, info.timings = result.verdict, result.timings
    return _answer(request, result_dict(result, ident, override is not None))


async def classify_batch(request: Request, ctx: Context) -> Response:
    """POST /v1/classify/batch: many images (URLs and base64 mixed), one result or error each, in order."""
    await guard(request, ctx)
    query_model(request)  # a ?model= that is not a model: 400 before the body is read
    limits = ctx.serving
    cap = limits.max_batch_items * (limits.max_url_length + BATCH_ITEM_BYTES) + base64_text_cap(limits.max_bytes)
    with ctx.admission.hold_body(expected_body(request, cap)):
        req = decode(await read_body(request, cap, limits.body_timeout), BatchRequest)
        if len(req.items) > limits.max_batch_items:
            raise TooManyItems(f"{len(req.items)} items; at most {limits.max_batch_items} per request",
                               limit=limits.max_batch_items)
        if not req.items:
            raise ContractError("items is empty: send at least one", field="$.items")
        model = query_model(request, req.model)
        work: list[tuple[Any, str | None, bytes | None]] = []
        for index, item in enumerate(req.items):
            where = f"$.items[{index}]"
            check_image(item.image, f"{where}.image")
            check_id(item.id, f"{where}.id")
            data = None if item.image.base64 is None else image_bytes(item.image.base64, limits.max_bytes,
                                                                      f"{where}.image.base64")
            work.append((item.id, item.image.url, data))
        adapter = adapter_wanted(request, req.adapter)
        override = _thresholds(ctx, req.thresholds, model, adapter)
        del req
        info = note(request)
        info.items = len(work)
        client = client_id(request, ctx)
        with admitted(request, ctx, len(work)):
            results = await asyncio.gather(*(_batch_item(ctx, model, override, adapter, i, ident, url, data, client)
                                             for i, (ident, url, data) in enumerate(work)))
    info.item_errors = sum(1 for r in results if "error" in r)
    tally = collections.Counter(r["verdict"] for r in results if "verdict" in r)
    info.verdicts = ",".join(f"{v}:{n}" for v, n in sorted(tally.items())) or None
    return _answer(request, {"request_id": requestid.current(), "results": results})


async def _batch_item(ctx: Context, model: str | None, override: Thresholds | None, adapter: bool, index: int,
                      ident: Any, url: str | None, data: bytes | None, client: str) -> dict[str, Any]:
    try:
        if url is not None:
            result = await ctx.classifier.url(url, model=model, thresholds=override, client=client, adapter=adapter)
        else:
            assert data is not None
            result = await ctx.classifier.data(data, model=model, thresholds=override, client=client, adapter=adapter)
    except Exception as exc:  # one bad item must not fail the others
        err = as_error(exc)
        ctx.metrics.observe_error(err.code, err.details.get("limit"))
        shown = url_for_log(url) if url is not None else "base64"
        log.info("v1 batch item %d: %s %d %s image=%s", index, err.code, err.status, err.message, shown,
                 extra=extra_fields(item=index, code=err.code, status=err.status, url=shown))
        return {"id": ident, "error": err.to_dict()}
    return result_dict(result, ident, override is not None)


async def reviews(request: Request, ctx: Context) -> Response:
    """GET /v1/reviews/{id}: a review item's status, and the decision once made.

    ``id`` is the review id the classifying answer gave (unguessable, ``rv_`` and 22 characters), and it
    shows the item only to the client it was given to (the same API key; without keys, the same address):
    any other id, another client's included, is 404.  Who decided is never shown to a client key (reviewer
    identities, e-mail addresses under OpenID Connect, are for the pages, the operator's webhook and the
    reviewer and admin keys: a key that is one of those too sees ``decided_by``).
    """
    await guard(request, ctx, ready=False)
    raw = request.path_params.get("id", "")
    from nsfw_core.state.review import ItemNotFound, ReviewError, ReviewUnavailable
    from nsfw_core.state.webhooks import review_dict

    client = client_id(request, ctx)

    def read() -> Any:
        found = ctx.review_queue.ticket(raw)
        if found is None or found[1] != client:
            return None
        return ctx.review_queue.get(found[0])

    try:
        item = await asyncio.to_thread(requestid.in_context(read))
    except ReviewError as exc:  # the database's address and the driver's error go to the log, not the client
        log.error("GET /v1/reviews/%s: %s", raw[:80], exc.message)
        raise ReviewUnavailable("the review database is unavailable; retry later (details in the server log)") \
            from None
    if item is None:
        raise ItemNotFound(f"no review item {raw[:40]!r} for this API key (or it was purged)")
    body = review_dict(item)
    body["id"] = raw
    if role_of(request, ctx) is None:  # a client key (or none): never who decided
        body.pop("decided_by", None)
    return _answer(request, body)


async def docs(request: Request, ctx: Context) -> Response:
    """GET /docs: the OpenAPI document as a readable page, with no asset from the network."""
    return HTMLResponse(docs_page())
