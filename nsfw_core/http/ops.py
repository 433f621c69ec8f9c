"""The operator's routes: ``GET /health``, ``GET /metrics`` and ``GET /openapi.json``.

* ``/health``: 200 once the model is loaded and warmed up (model, runtime, thresholds in force, warnings,
  the batcher and admission counters), else 503 ``not_ready`` with the reason;
* ``/metrics``: the Prometheus text format (:mod:`nsfw_core.metrics`), behind a key when NSFW_API_KEYS or
  NSFW_METRICS_TOKEN is set; rendered off the event loop (the review queue's probe may wait for its database);
* ``/openapi.json``: the one OpenAPI document of every route (:mod:`nsfw_core.http.openapi`).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nsfw_core.http.errors import error_body
from nsfw_core.http.guard import authorize
from nsfw_core.http.openapi import openapi_document
from nsfw_core.http.routing import note

if TYPE_CHECKING:
    from nsfw_core.context import Context


async def health(request: Request, ctx: Context) -> Response:
    """GET /health: 200 when the model is loaded and warm, 503 with the reason otherwise."""
    lane = ctx.models.default_lane()
    if not ctx.ready or lane is None:
        body = error_body("not_ready", ctx.reason, status="unavailable", reason=ctx.reason)
        note(request).code = "not_ready"
        return JSONResponse(body, status_code=503)
    active = ctx.thresholds.current()
    model, batcher = lane
    return JSONResponse({
        "status": "ok",
        "model": model.name,
        "version": model.version,
        "runtime": model.runtime,
        "thresholds": {**active.thresholds.to_dict(), "source": active.source, "version": active.version},
        "warnings": ([active.warning] if active.warning else []) + ctx.warnings(),
        "batcher": {**batcher.stats.to_dict(), "waiting": batcher.waiting},
        "in_flight": {"images": math.ceil(ctx.admission.in_flight), "limit": ctx.admission.limit,  # cost units
                      "rejected": ctx.admission.rejected},
    })


async def openapi(request: Request, ctx: Context) -> Response:
    """GET /openapi.json, with this server's limits (URL length, items per batch)."""
    return JSONResponse(openapi_document(ctx.settings))


async def metrics(request: Request, ctx: Context) -> Response:
    """GET /metrics: the Prometheus text format; with NSFW_API_KEYS or NSFW_METRICS_TOKEN set, a key or the
    token is required."""
    token = ctx.settings.metrics_token
    await authorize(request, ctx, ctx.serving.api_keys + ((token,) if token else ()))
    body = await asyncio.to_thread(ctx.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
