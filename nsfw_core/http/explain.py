"""``POST /v1/explain``: where in an image the model found each class (:mod:`nsfw_core.inference.explain`).

The same image forms as ``/v1/classify`` (JSON with ``{"image": {"url"} or {"base64"}}``, ``model`` and
``id``, or the bytes as the body, raw or multipart, with ``?model=``), the same guard (API key, rate limit,
readiness), the same admission, body caps and deadline, and the same intake (SSRF-safe fetch, decoding
under the limits, the isolated lane).  It answers the model's scores and a heat-map per class over a
grid of ``NSFW_EXPLAIN_GRID`` cells a side, in nats of log-odds, or with ``?format=png`` the overlay of
one class's map (``?class=``; by default the class the verdict turns on, :func:`deciding_class`) drawn
on the image as the model saw it.

**Cost.**  An explanation is :func:`~nsfw_core.inference.explain.passes` forward passes (65 for 8 x 8),
run on the model's lanes through its micro-batcher like any classification, so it is charged as that many
images on its model (:mod:`nsfw_core.ratelimit`'s cost units: the passes times the model's relative cost).
The request's meter (made by the guard) pays for the image as ``/v1/classify`` does (its frames and
decoding work, charged by the intake once its headers are read), then for the occluded passes
(:func:`charge`) before they run; a cost larger than the burst runs from a full bucket and leaves it in
debt.  In flight it holds the passes at the model's cost (:func:`units`), admitted before the body is read
for the model ``?model=`` names (or the default) and again for a JSON body's model; larger than the limit
(or the key's share), it is counted at it and runs alone.  An animation's (a video's) frames are scored
first and its deciding frame (the worst, as ``/v1/classify`` judges it) is explained.  While the passes run
the request polls whether its client is still there; when it is gone, every pass not yet run is cancelled
(499 in the access log).

Nothing is queued for review and no known image is looked up: the answer explains the model, not a
verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, TypeVar

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nsfw_core import ratelimit
from nsfw_core.base import requestid
from nsfw_core.base.errors import InputError, NotReady
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.logs import url_for_log
from nsfw_core.base.verdict import Thresholds
from nsfw_core.http.bodies import MULTIPART_SLACK, expected_body, read_body, uploaded_image
from nsfw_core.http.contract import (
    ContractError,
    ExplainRequest,
    base64_text_cap,
    check_id,
    check_image,
    decode,
    image_bytes,
)
from nsfw_core.http.guard import admitted, guard
from nsfw_core.http.routing import note
from nsfw_core.http.v1 import JSON_SLACK
from nsfw_core.images import overlay
from nsfw_core.images.sniff import sniff_video
from nsfw_core.inference import explain as method
from nsfw_core.inference.model import scores_dict
from nsfw_core.inference.pipeline import FrameInputs
from nsfw_core.inference.registry import Lane

if TYPE_CHECKING:
    from nsfw_core.context import Context

log = logging.getLogger(__name__)

FORMATS = ("json", "png")
POLL_S = 0.05  # how often a waiting explanation checks that its client is still there
PNG_SIDE = 448  # the overlay's longer side at most (the model input, 224, scaled up twice)
T = TypeVar("T")


class ClientGone(InputError):
    """The client closed the connection before the answer: the work left was cancelled (nobody reads this)."""

    status = 499
    code = "client_closed_request"


def deciding_class(scores: dict[str, float], thresholds: Thresholds) -> str:
    """The class whose map a reviewer looks at first: the highest-scoring adult class when the verdict under
    ``thresholds`` is adult or unknown, else the highest-scoring safe class."""
    return method.deciding_class(scores, thresholds.decide(scores), thresholds.adult_classes,
                                 thresholds.safe_classes)


def units(ctx: Context, model: str | None, passes: int) -> float:
    """What ``passes`` forward passes of ``model`` (None: the default) cost, in cost units."""
    return passes * ctx.models.cost(model)


async def charge(ctx: Context, units: float) -> None:
    """Charge the request's meter ``units`` more (the occluded passes), with what it paid so far as slack (429
    when a budget refuses; in a worker thread when the buckets are in the database).  The one place an
    explanation's passes reach the budgets."""
    meter = ratelimit.current()
    if meter is None or units <= 0:
        return
    if ctx.limiter is not None and ctx.limiter.shared:
        await asyncio.get_running_loop().run_in_executor(ctx.executor, requestid.in_context(meter.charge_more,
                                                                                            units))
    else:
        meter.charge_more(units)


def _query(request: Request) -> tuple[str | None, str, str | None]:
    """``?model=``, ``?format=`` (json or png) and ``?class=`` (for the PNG), each refused (400) when unknown."""
    params = request.query_params
    name = params.get("model")
    if name is not None and name not in ("MobileNetV2Mid", "MobileNetV2", "InceptionV3"):
        raise ContractError("model must be one of MobileNetV2Mid, MobileNetV2, InceptionV3", field="model")
    fmt = params.get("format", "json")
    if fmt not in FORMATS:
        raise ContractError(f"format must be one of {', '.join(FORMATS)}", field="format")
    wanted = params.get("class")
    if wanted is not None and wanted not in CLASS_NAMES:
        raise ContractError(f"class must be one of {', '.join(CLASS_NAMES)}", field="class")
    return name, fmt, wanted


@contextlib.asynccontextmanager
async def _lane(ctx: Context, name: str | None) -> AsyncIterator[Lane]:
    """The default model's lane (503 not_ready until it runs), or another model's, loaded on demand (as
    :class:`~nsfw_core.classify.Classifier` picks its lane)."""
    if name is None or name == ctx.models.default:
        lane = ctx.models.default_lane()
        if lane is None or not lane.batcher.running:
            raise NotReady(f"the service is not ready: {ctx.models.reason}")
        yield lane
        return
    async with ctx.models.lane(name) as other:
        yield other


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, polling every :data:`POLL_S` whether the client went away; if it did, ``work`` is
    cancelled (its passes not yet run with it) and :class:`ClientGone` raised."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise ClientGone("the client closed the connection; the explanation was cancelled")
    finally:
        if not task.done():
            task.cancel()


async def explain(request: Request, ctx: Context) -> Response:
    """POST /v1/explain: one image, by URL or base64 in JSON, or as the body (raw or multipart)."""
    await guard(request, ctx)
    queried, fmt, wanted = _query(request)
    limits = ctx.serving
    info = note(request)
    grid = limits.explain_grid
    passes = method.passes(grid)
    ident: Any = None
    with contextlib.ExitStack() as place:
        # in flight before the body is read, as /v1/classify: its passes at the cost of the model named so far
        place.enter_context(admitted(request, ctx, units(ctx, queried, passes)))
        if _json_type(request):
            cap = base64_text_cap(limits.max_bytes) + limits.max_url_length + JSON_SLACK
            with ctx.admission.hold_body(expected_body(request, cap)):
                req = decode(await read_body(request, cap, limits.body_timeout), ExplainRequest)
                check_image(req.image, "$.image")
                check_id(req.id, "$.id")
                if queried is not None and req.model is not None and queried != req.model:
                    raise ContractError(f"?model={queried} contradicts the body's model {req.model}; send one",
                                        field="model")
                model, ident, url = req.model or queried, req.id, req.image.url
                wanted = wanted or req.class_
                data = None if req.image.base64 is None else image_bytes(req.image.base64, limits.max_bytes,
                                                                         "$.image.base64")
                del req
                if units(ctx, model, passes) != units(ctx, queried, passes):  # the body named another model
                    place.close()  # given back and taken again at once (the event loop's: nothing in between)
                    place.enter_context(admitted(request, ctx, units(ctx, model, passes)))
                if url is not None:
                    info.url = url_for_log(url)
                result = await _unless_gone(request, _explained(ctx, model, url, data, grid))
        else:
            with ctx.admission.hold_body(expected_body(request, limits.max_bytes + MULTIPART_SLACK)):
                data = await uploaded_image(request, limits.max_bytes, limits.body_timeout)
                result = await _unless_gone(request, _explained(ctx, queried, None, data, grid))
    explanation, sha, timings, size, x = result
    thresholds = ctx.thresholds.current().thresholds
    shown = wanted or deciding_class(explanation.scores, thresholds)
    headers = dict(getattr(request.state, "ratelimit", None) or {})
    if fmt == "png":
        image = overlay.overlay(_as_seen(x, size), explanation.heatmaps[shown])
        headers.update({"X-Explain-Class": shown, "X-Explain-Passes": str(explanation.passes)})
        return Response(overlay.png(image), media_type="image/png", headers=headers)
    body = {"request_id": requestid.current(), "id": ident, **explanation.to_dict(), "class": shown,
            "sha256": sha, "timings": timings}
    return JSONResponse(body, headers=headers)


def _json_type(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


async def _explained(ctx: Context, model: str | None, url: str | None, data: bytes | None, grid: int
                     ) -> tuple[method.Explanation, str, dict[str, float], tuple[int, int], np.ndarray]:
    """Fetch or take the image, decode it as the model sees it, pick its deciding frame (an animation), explain."""
    started = time.perf_counter()
    async with _lane(ctx, model) as lane:
        with contextlib.ExitStack() as held:  # an animation's frames are held in flight until answered
            def nothing(x: Any, sha: str) -> None:
                return None

            # the image is charged as /v1/classify charges it (its frames, its decoding work); its place in
            # flight is the explanation's, taken already
            if url is not None:
                prepared = await ctx.intake.url(url, lane.model, held, nothing, placed=True)
            else:
                assert data is not None
                prepared = await ctx.intake.data(data, lane.model, held, nothing, placed=True)
            size = await asyncio.get_running_loop().run_in_executor(
                ctx.executor, requestid.in_context(_displayed_size, ctx, lane, prepared.data, prepared.x))
            t0 = time.perf_counter()
            x, frame = prepared.x, None
            passes = method.passes(grid)
            cost = ctx.models.cost(lane.model.name)
            if isinstance(x, FrameInputs):
                # its frames were charged (scored here first); every pass on the deciding frame is more
                await charge(ctx, passes * cost)
                x, frame = await _deciding_frame(lane, x, ctx.thresholds.current().thresholds)
            else:
                await charge(ctx, (passes - 1) * cost)  # the image's own pass was charged with it
            explanation = await method.explain_on(lane.batcher.predict, x, name=lane.model.name,
                                                  version=lane.model.version, grid=grid, frame=frame)
    inference_s = time.perf_counter() - t0
    timings = {"fetch_ms": round(prepared.fetch_s * 1000, 2), "decode_ms": round(prepared.decode_s * 1000, 2),
               "inference_ms": round(inference_s * 1000, 2),
               "total_ms": round((time.perf_counter() - started) * 1000, 2)}
    return explanation, prepared.sha256, timings, size, x


async def _deciding_frame(lane: Lane, frames: FrameInputs, thresholds: Thresholds) -> tuple[np.ndarray, int]:
    """The frame an animation is judged on (the highest adult score, the earliest on a tie, as
    :func:`nsfw_core.classify.judge`) and its index."""
    rows = await asyncio.gather(*(lane.batcher.predict(f) for f in frames.inputs))
    scored = [(thresholds.adult_score(scores_dict(r)), -ref.index, k) for k, (ref, r) in
              enumerate(zip(frames.refs, rows, strict=True))]
    k = max(scored)[2]
    return frames.inputs[k], frames.refs[k].index


def _displayed_size(ctx: Context, lane: Lane, data: bytes, x: np.ndarray | FrameInputs) -> tuple[int, int]:
    """The image's displayed width and height, from its headers (nothing decoded again); a video's, its model
    input's (its container is read in the isolated lane only)."""
    if sniff_video(data) is not None:
        first = x.inputs[0] if isinstance(x, FrameInputs) else x
        return int(first.shape[1]), int(first.shape[0])
    plan = ctx.decoder.plan(lane.model, data)
    return plan.width, plan.height


def _as_seen(x: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The model input as an image with the picture's own proportions, :data:`PNG_SIDE` on its longer side."""
    w, h = size
    scale = PNG_SIDE / max(w, h, 1)
    shown = (max(1, round(w * scale)), max(1, round(h * scale)))
    pixels = Image.fromarray(np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    return pixels.resize(shown, Image.Resampling.BILINEAR)
