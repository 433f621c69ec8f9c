"""Video jobs over HTTP: ``POST /v1/jobs`` (202 with the job) and ``GET /v1/jobs/{id}`` (its state).

A video longer than a synchronous request takes (NSFW_MAX_VIDEO_SECONDS), or any video a client prefers not
to wait for, is sent by URL as a job (like Sightengine's and Rekognition's asynchronous video moderation): the
answer is 202 at once with the job's id (and ``Location``); the job is judged in the background by whichever
instance claims it (:mod:`nsfw_core.jobs`), and ``GET /v1/jobs/{id}`` gives its status, its progress (frames
judged of the frames to judge) and, once done, the result with its timeline, or its error; with
``NSFW_WEBHOOK_URL`` a ``job.completed`` event is POSTed, signed like the review events.

The same first steps as every v1 route (:func:`~nsfw_core.http.guard.guard`: API key, rate limit).  A job is
its client's, as a review id is (issue 29): with API keys its key's, without keys its address's
(:func:`~nsfw_core.http.guard.client_id`); any other client reads 404, as for a job that does not exist,
even with the id (128 random bits).  A video the job sends to review gets a review id of that client's, and
is matched against the decisions that client may use (everyone's, and those made for its own thresholds).
A client may have :data:`MAX_OPEN_JOBS` queued or running at once (429 ``too_many_jobs`` beyond).  A POST
retried with the same client ``id`` and URL answers 200 with the job the first one made (an idempotent
retry), not a second job; with another model or thresholds it is 409 ``job_conflict``, not that job.
``?model=`` and ``?adapter=`` are read as on every v1 route (a model that is not one is 400 whatever the
body; each must agree with the body's).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nsfw_core import ratelimit
from nsfw_core.base import requestid
from nsfw_core.base.errors import InvalidURL
from nsfw_core.base.logs import url_for_log
from nsfw_core.http.bodies import adapter_wanted, query_model, read_body
from nsfw_core.http.contract import JOB_ID_PATTERN, JobRequest, check_id, decode
from nsfw_core.http.errors import NotFound
from nsfw_core.http.guard import bearer, client_id, guard
from nsfw_core.http.routing import note
from nsfw_core.images.fetch import check_url
from nsfw_core.jobs import job_view

if TYPE_CHECKING:
    from nsfw_core.context import Context

log = logging.getLogger(__name__)

MAX_OPEN_JOBS = 100  # a client's queued and running jobs at once
BODY_SLACK = 4096  # the JSON around the URL
_JOB_ID = re.compile(JOB_ID_PATTERN)


def _answer(request: Request, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status,
                        headers={**(getattr(request.state, "ratelimit", None) or {}), **(headers or {})})


async def create(request: Request, ctx: Context) -> Response:
    """POST /v1/jobs: ``{"video": {"url": ...}, "model", "thresholds", "id", "adapter"}`` -> 202 and the queued job
    (one cost unit now; its frames are charged to the same client's budgets as they are judged).  ``"adapter":
    false`` judges it with the base model even when an adapter is in force when it is judged."""
    await guard(request, ctx, ready=False)
    query_model(request)  # a ?model= that is not a model: 400 before the body is read
    limits = ctx.serving
    req = decode(await read_body(request, limits.max_url_length + BODY_SLACK, limits.body_timeout), JobRequest)
    url = req.video.url
    check_id(url, "$.video.url")
    check_id(req.id, "$.id")
    try:
        check_url(url, ctx.fetch_policy)  # the fetcher's own syntax checks now; its address checks when fetched
    except InvalidURL as exc:
        raise InvalidURL(f"the video's URL: {exc.message}", field="$.video.url") from None
    thresholds = None
    if req.thresholds is not None:
        thresholds = {k: v for k, v in (("adult", req.thresholds.adult), ("safe", req.thresholds.safe))
                      if v is not None} or None
    model = query_model(request, req.model) or ctx.settings.model
    adapter = adapter_wanted(request, req.adapter)
    decode_limits = ctx.settings.decode_limits
    info = note(request)
    info.url = url_for_log(url)
    job, created = await asyncio.to_thread(requestid.in_context(
        lambda: ctx.jobs.create_once(url, client=client_id(request, ctx), client_ref=req.id, model=model,
                                thresholds=thresholds,
                                sampling={"fps": decode_limits.video_fps, "max_frames": decode_limits.max_video_frames},
                                max_open=MAX_OPEN_JOBS,
                                client_key=ratelimit.key_id(bearer(request)) if limits.api_keys else None,
                                adapter=adapter)))
    if not created:  # the same client id and URL again: the job made the first time, not a second one
        return _answer(request, job_view(job), 200, {"Location": f"/v1/jobs/{job.id}"})
    log.info("video job %s queued: %s", job.id, url_for_log(url))
    if ctx.job_runner is not None:
        ctx.job_runner.poke.set()
    return _answer(request, job_view(job), 202, {"Location": f"/v1/jobs/{job.id}"})


async def get(request: Request, ctx: Context) -> Response:
    """GET /v1/jobs/{id}: the job's status, progress, and its result or error once it ended."""
    await guard(request, ctx, ready=False)
    raw = request.path_params.get("id", "")
    if not _JOB_ID.match(raw):
        raise NotFound(f"no job {raw[:60]!r}: job ids are job_ and 32 hex digits")
    job = await asyncio.to_thread(requestid.in_context(lambda: ctx.jobs.get(raw)))
    if job is None or job.client != client_id(request, ctx):
        raise NotFound(f"no job {raw} (or it was deleted: NSFW_JOB_RETENTION_DAYS)")
    return _answer(request, job_view(job))
