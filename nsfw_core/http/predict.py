"""The original API, unchanged for its clients: ``POST /predict`` and ``POST /predict/batch``.

* ``POST /predict?url=<image URL>``: the five class probabilities,
  ``{"drawings", "hentai", "neutral", "porn", "sexy"}``.  Instead of ``url`` the body may carry the
  image (raw bytes, or ``multipart/form-data`` with a ``file`` or ``image`` field).  ``detail=1``
  gives the rich answer (verdict, scores, thresholds, model, timings, sha256).  ``adapter=false``: the base
  model judges even when an adapter is in force (the five scores are always the base model's).
* ``POST /predict/batch``: ``{"items": [{"id", "url"}, ...], "detail": bool}`` or a plain list of
  URLs -> ``{"results": [...]}`` in order, errors per item.  The body is decoded by the typed
  contract (:func:`~nsfw_core.http.contract.decode_predict_batch`), as API v1's are.

Both take the same steps as API v1 (:mod:`nsfw_core.http.guard`): the API key, the key's rate
limit, readiness, admission before the body is read; then the body and the classification.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nsfw_core.base.errors import BadRequest, InvalidURL
from nsfw_core.base.logs import extra_fields, url_for_log
from nsfw_core.classify import Classification
from nsfw_core.http.bodies import (
    BATCH_ITEM_BYTES,
    MULTIPART_SLACK,
    expected_body,
    flag,
    has_body,
    read_body,
    uploaded_image,
)
from nsfw_core.http.contract import decode_predict_batch
from nsfw_core.http.errors import as_error
from nsfw_core.http.guard import admitted, client_id, guard
from nsfw_core.http.routing import note

if TYPE_CHECKING:
    from nsfw_core.context import Context

log = logging.getLogger(__name__)


async def predict(request: Request, ctx: Context) -> Response:
    """POST /predict: one image by ``?url=`` or in the body."""
    headers = await guard(request, ctx)
    limits = ctx.serving
    detail = flag(request, "detail")
    adapter = flag(request, "adapter", default=True)
    url = request.query_params.get("url")
    info = note(request)
    if url:
        info.url = url_for_log(url)
    result: Classification
    with admitted(request, ctx, 1):  # before the body is read: a flood is refused, not buffered
        if url is None:
            # the body's memory is reserved before it is read and kept until the answer
            with ctx.admission.hold_body(expected_body(request, limits.max_body + MULTIPART_SLACK)):
                image = await uploaded_image(request, limits.max_bytes, limits.body_timeout,
                                             max_video_bytes=limits.max_video_bytes)
                result = await ctx.classifier.data(image, client=client_id(request, ctx), adapter=adapter)
        elif has_body(request):
            raise BadRequest("send either ?url= or an image in the body, not both")
        elif not url:
            raise InvalidURL("missing url: pass ?url=<image URL> or send the image in the request body")
        else:
            result = await ctx.classifier.url(url, client=client_id(request, ctx), adapter=adapter)
    info.verdict, info.timings = result.verdict, result.timings
    return JSONResponse(result.to_dict() if detail else result.scores, headers=headers)


async def predict_batch(request: Request, ctx: Context) -> Response:
    """POST /predict/batch: many URLs, one result (or error) each, in order."""
    headers = await guard(request, ctx)
    limits = ctx.serving
    queried = flag(request, "detail")
    adapter = flag(request, "adapter", default=True)
    limit = limits.max_batch_items * (limits.max_url_length + BATCH_ITEM_BYTES)
    with ctx.admission.hold_body(expected_body(request, limit)):
        body = await read_body(request, limit, limits.body_timeout)
    items, detail = decode_predict_batch(body, limits.max_batch_items)
    detail = queried if detail is None else detail
    info = note(request)
    info.items = len(items)
    with admitted(request, ctx, len(items)):
        client = client_id(request, ctx)
        results = await asyncio.gather(*(_item(ctx, index, ident, url, detail, client, adapter)
                                         for index, (ident, url) in enumerate(items)))
    info.item_errors = sum(1 for r in results if "error" in r)
    tally = collections.Counter(r["verdict"] for r in results if "verdict" in r)
    info.verdicts = ",".join(f"{v}:{n}" for v, n in sorted(tally.items())) or None
    return JSONResponse({"results": results}, headers=headers)


async def _item(ctx: Context, index: int, ident: Any, url: str, detail: bool, client: str,
                adapter: bool = True) -> dict[str, Any]:
    """One checked batch entry -> ``{"id", "url", "scores", "verdict"}`` (or the detail) or
    ``{"id", "url", "error"}``.  A failed item is counted and logged (with the request's id)."""
    out: dict[str, Any] = {"id": ident, "url": url}
    try:
        result = await ctx.classifier.url(url, client=client, adapter=adapter)
    except Exception as exc:  # one bad item must not fail the others
        err = as_error(exc)
        out["error"] = err.to_dict()
        ctx.metrics.observe_error(err.code, err.details.get("limit"))
        log.info("batch item %d: %s %d %s url=%s", index, err.code, err.status, err.message, url_for_log(url),
                 extra=extra_fields(item=index, code=err.code, status=err.status, url=url_for_log(url)))
        return out
    out.update(result.to_dict() if detail else {"scores": result.scores, "verdict": result.verdict})
    return out
