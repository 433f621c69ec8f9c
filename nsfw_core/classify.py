"""Classifying an image: the one use case every front end calls, and its one result type.

:class:`Classification` is what the API answers (``to_dict()`` is its detailed JSON),
what the CLI prints and what the pages show.  :func:`judge` is the only place where
scores become a verdict (through :meth:`~nsfw_core.base.verdict.Thresholds.decide`).

* :func:`classify_url` / :func:`classify_bytes`: the API's path, on the event loop: fetch
  and decode in the context's worker threads (expensive images in the isolated lane),
  the forward pass in the micro-batcher, then the verdict and, when the verdict says
  so, a review item.
* :func:`classify_sources`: the CLI's and the pages' path, synchronous and batched by
  itself (:func:`~nsfw_core.inference.pipeline.score_sources`), one :class:`Outcome` per source.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np

from nsfw_core.base import requestid
from nsfw_core.base.errors import NSFWError, Overloaded
from nsfw_core.base.labels import ADULT
from nsfw_core.base.verdict import Thresholds
from nsfw_core.images import phash
from nsfw_core.images.decode import Plan
from nsfw_core.inference.model import Model, scores_dict
from nsfw_core.inference.pipeline import FrameInputs, Scored, score_sources
from nsfw_core.state.known import Match

if TYPE_CHECKING:
    from nsfw_core.context import Context

log = logging.getLogger(__name__)

UPLOAD_SOURCE = "upload"  # the review item's source for images sent in the request body
ISOLATED_QUEUE = 4  # expensive images admitted per decode process (decoding or waiting); 503 beyond
REVIEW_UNAVAILABLE = "the review queue is unavailable; see the server log"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str


@dataclasses.dataclass(frozen=True)
class Timings:
    """Where the time went, in milliseconds (rounded to 0.01)."""

    fetch_ms: float
    decode_ms: float
    inference_ms: float
    total_ms: float

    @classmethod
    def of(cls, fetch_s: float, decode_s: float, inference_s: float, total_s: float) -> Timings:
        return cls(_ms(fetch_s), _ms(decode_s), _ms(inference_s), _ms(total_s))


@dataclasses.dataclass(frozen=True)
class ReviewTicket:
    """What queueing for human review gave: the item's id, or the error that stopped it."""

    id: int | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class FrameScore:
    """One sampled frame of an animation: its index, when it is first shown, and the model's scores."""

    index: int
    time_ms: int
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "time_ms": self.time_ms, "scores": dict(self.scores)}


@dataclasses.dataclass(frozen=True)
class Classification:
    """One image's scores, its verdict under the thresholds in force, and how it was reached."""

    scores: dict[str, float]
    verdict: str
    adult_score: float
    safe_score: float
    thresholds: Thresholds
    model: ModelInfo
    timings: Timings
    sha256: str
    review: ReviewTicket | None = None  # set when the verdict was sent to human review
    thresholds_version: int | None = None  # the thresholds history's version (None: the defaults)
    frames: tuple[FrameScore, ...] | None = None  # an animation's sampled frames (None: a still image)
    deciding_frame: int | None = None  # the frame whose scores and verdict the image got (its worst)
    verdict_source: str = "model"  # who decided the verdict: "model", or "review" / "list" (a known image)
    match: Match | None = None  # the remembered decision or hash-list entry the image matched

    def to_dict(self) -> dict[str, Any]:
        """The API's detailed answer (``/predict?detail=1``); the OpenAPI schema ``Detail`` describes it."""
        out: dict[str, Any] = {
            "scores": dict(self.scores),
            "verdict": self.verdict,
            "adult_score": self.adult_score,
            "safe_score": self.safe_score,
            "thresholds": {**self.thresholds.to_dict(), "version": self.thresholds_version},
            "model": dataclasses.asdict(self.model),
            "timings": dataclasses.asdict(self.timings),
            "sha256": self.sha256,
            "verdict_source": self.verdict_source,
        }
        if self.match is not None:
            out["match"] = self.match.to_dict()
        if self.frames is not None:
            out["frames"] = [f.to_dict() for f in self.frames]
            out["deciding_frame"] = self.deciding_frame
        if self.review is not None:
            out["review_id"] = self.review.id
            if self.review.error is not None:
                out["review_error"] = self.review.error
        return out

    def under(self, thresholds: Thresholds, version: int | None = None) -> Classification:
        """The same scores judged under other thresholds (the pages re-judge when thresholds change)."""
        return judge(self.scores, thresholds, self.model, self.timings, self.sha256, version, frames=self.frames,
                     match=self.match)


def judge(scores: dict[str, float], thresholds: Thresholds, model: ModelInfo, timings: Timings,
          sha256: str, thresholds_version: int | None = None, *,
          frames: Sequence[FrameScore] | None = None, match: Match | None = None) -> Classification:
    """Scores -> a :class:`Classification`: the one place a verdict is decided.

    An animation (``frames``) is judged on its worst frame, the one with the highest adult score under
    ``thresholds`` (the earliest on a tie): the image gets that frame's scores and verdict.  A known image
    (``match``: a reviewer's remembered decision or a hash-list entry, :mod:`nsfw_core.state.known`) gets the
    human verdict instead, ``verdict_source`` "review" or "list"; its scores stay the model's.

    Except one case: a perceptual (PDQ) match never clears an image the model calls adult.  PDQ sees
    only an image's coarse shading, so another picture's detail laid over a listed or safe-decided
    image's blurred shading stays within the match distance while showing something else (the security
    test matched such an image at 26 bits while the model gave it porn 0.745).  Only the exact bytes
    (sha256) may turn a model's "adult" into "safe"; a PDQ match may still make a verdict stricter, or
    decide what the model left "unknown".
    """
    deciding = None
    if frames:
        worst = max(frames, key=lambda f: (thresholds.adult_score(f.scores), -f.index))
        scores, deciding = worst.scores, worst.index
    model_verdict = thresholds.decide(scores)
    if match is not None and match.by != "sha256" and model_verdict == ADULT and match.verdict != ADULT:
        match = None
    return Classification(
        scores=scores,
        verdict=model_verdict if match is None else match.verdict,
        adult_score=thresholds.adult_score(scores),
        safe_score=thresholds.safe_score(scores),
        thresholds=thresholds,
        model=model,
        timings=timings,
        sha256=sha256,
        thresholds_version=thresholds_version,
        frames=tuple(frames) if frames else None,
        deciding_frame=deciding,
        verdict_source="model" if match is None else match.kind,
        match=match,
    )


# ---------------------------------------------------------------- the API's path (async)


class _Isolate(NamedTuple):
    """An expensive image, read and checked by a worker, to be decoded in the isolated lane."""

    plan: Plan
    data: bytes
    model: Model | None = None  # None: the default model


class Lane(NamedTuple):
    """A model other than the default and the micro-batcher that runs it (:mod:`nsfw_core.models`)."""

    model: Model
    batcher: Any


async def classify_url(ctx: Context, url: str, *, lane: Lane | None = None,
                       thresholds: Thresholds | None = None) -> Classification:
    """Fetch ``url`` safely, then classify it; see :func:`classify_bytes`."""
    batcher = ctx.require_ready() if lane is None else lane.batcher
    started = time.perf_counter()
    model = None if lane is None else lane.model
    with contextlib.ExitStack() as held:  # an animation's frames are held in flight until answered
        fetch_s, x, sha, decode_s = await _preparing(ctx, held, _fetch_and_prepare, ctx, url, model)
        result = await _finish(ctx, batcher, x, sha, fetch_s, decode_s, started, model, thresholds)
    ctx.metrics.observe_classification(result, fetched=True, source=result.verdict_source)
    return await _maybe_queue(ctx, result, url, None, x)


async def classify_bytes(ctx: Context, data: bytes, *, lane: Lane | None = None,
                         thresholds: Thresholds | None = None) -> Classification:
    """Classify image bytes: scores, verdict, thresholds, model, timings and sha256.

    ``lane``: another model and its batcher (API v1's per-request model; default: the default model);
    ``thresholds``: the request's own thresholds instead of the ones in force (version None).
    """
    batcher = ctx.require_ready() if lane is None else lane.batcher
    started = time.perf_counter()
    model = None if lane is None else lane.model
    with contextlib.ExitStack() as held:  # an animation's frames are held in flight until answered
        x, sha, decode_s = await _preparing(ctx, held, _prepare, ctx, data, model)
        result = await _finish(ctx, batcher, x, sha, 0.0, decode_s, started, model, thresholds)
    ctx.metrics.observe_classification(result, fetched=False, source=result.verdict_source)
    return await _maybe_queue(ctx, result, UPLOAD_SOURCE, data, x)


async def _maybe_queue(ctx: Context, result: Classification, source: str, data: bytes | None,
                       prepared: Any = None) -> Classification:
    """Queue the image for human review when its verdict says so (a known image's verdict never does).

    The item keeps the image's perceptual hashes (``prepared``: the model input), remembered with its
    decision.  A queue failure (database down) does not fail the prediction: the result
    carries ``review_error`` instead and the failure is logged.
    """
    if result.match is not None or not ctx.queues(result.verdict):
        return result

    def enqueue() -> int:
        queue = ctx.review_queue
        queue.purge_if_due()
        x = prepared.x if isinstance(prepared, _Recognised) else prepared
        hashes = phash.join_hex(phash.stored_hashes(x)) if isinstance(x, np.ndarray) else None
        return queue.enqueue(result.sha256, source, result.scores, result.model.name, result.verdict,
                             image_bytes=data, phash=hashes)

    try:
        review_id = await asyncio.get_running_loop().run_in_executor(ctx.executor, requestid.in_context(enqueue))
    except Exception as exc:  # any database error; the verdict still stands
        log.error("could not queue %s for review: %r", result.sha256, exc)
        return dataclasses.replace(result, review=ReviewTicket(None, REVIEW_UNAVAILABLE))
    return dataclasses.replace(result, review=ReviewTicket(review_id))


async def _preparing(ctx: Context, held: contextlib.ExitStack, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a fetch/decode step in a worker, counted in ``ctx.preparing`` for the batcher.

    A cheap image is decoded in the worker; an expensive one (the step hands back an
    :class:`_Isolate`) then waits for the isolated lane on a thread of its own, leaving
    the workers to cheap images.  An animation (:class:`_Animated`) first takes its sampled
    frames' places in flight (each frame is an image; ``held`` keeps them until the answer), so a
    busy server refuses it before decoding, not after.
    """
    ctx.preparing += 1
    try:
        loop = asyncio.get_running_loop()
        *head, x, sha, decode_s = await loop.run_in_executor(ctx.executor, requestid.in_context(fn, *args))
        if isinstance(x, _Animated):
            held.enter_context(ctx.admission.admit(x.frames - 1))
            if x.plan.cost.inline:
                t0 = time.perf_counter()
                x = await loop.run_in_executor(ctx.executor, requestid.in_context(_decode_inline, ctx, x, sha))
                decode_s += time.perf_counter() - t0
            else:
                x = _Isolate(x.plan, x.data, x.model)
        if isinstance(x, _Isolate):
            x, isolated_s = await _isolated_decode(ctx, x)
            t0 = time.perf_counter()
            x = await loop.run_in_executor(ctx.executor, requestid.in_context(_recognise, ctx, x, sha))
            decode_s += isolated_s + time.perf_counter() - t0
        return (*head, x, sha, decode_s)
    finally:
        ctx.preparing -= 1


async def _isolated_decode(ctx: Context, pending: _Isolate) -> tuple[np.ndarray | FrameInputs, float]:
    """Decode in the isolated lane; 503 overloaded when its queue would be longer than
    ISOLATED_QUEUE per decode process (so each answer comes within a few deadlines)."""
    limit = ISOLATED_QUEUE * ctx.decoder.limits.processes
    if ctx.isolated_pending >= limit:
        ctx.admission.rejected += 1
        raise Overloaded(f"too many expensive images being decoded ({ctx.isolated_pending} of {limit}); "
                         "retry later")
    ctx.isolated_pending += 1
    try:
        t0 = time.perf_counter()
        x = await asyncio.get_running_loop().run_in_executor(
            ctx.isolated, requestid.in_context(ctx.decoder.prepare_isolated, pending.model or ctx.model(),
                                               pending.data, pending.plan))
        return x, time.perf_counter() - t0
    finally:
        ctx.isolated_pending -= 1


def _prepare(ctx: Context, data: bytes, chosen: Model | None = None
             ) -> tuple[_Recognised | _Isolate | _Animated, str, float]:
    """Worker thread: read the headers (limits), decode a cheap image and preprocess it; hash the bytes."""
    t0 = time.perf_counter()
    model = chosen or ctx.model()
    plan = ctx.decoder.plan(model, data)
    sha = hashlib.sha256(data).hexdigest()
    refs = ctx.decoder.sampled(plan)
    if refs is not None:
        return _Animated(plan, data, chosen, len(refs)), sha, time.perf_counter() - t0
    if not plan.cost.inline:
        return _Isolate(plan, data, chosen), sha, time.perf_counter() - t0
    x = ctx.decoder.prepare_inline(model, data, plan)
    return _recognise(ctx, x, sha), sha, time.perf_counter() - t0


class _Animated(NamedTuple):
    """An animation, read and checked by a worker: its frames are admitted before they are decoded."""

    plan: Plan
    data: bytes
    model: Model | None
    frames: int  # frames to classify (at most NSFW_MAX_FRAMES)


def _decode_inline(ctx: Context, pending: _Animated, sha: str) -> _Recognised:
    """Worker thread: decode and preprocess a cheap animation's sampled frames."""
    return _recognise(ctx, ctx.decoder.prepare_inline(pending.model or ctx.model(), pending.data, pending.plan), sha)


class _Recognised(NamedTuple):
    """A prepared image and the known image it matched, if any."""

    x: np.ndarray | FrameInputs
    match: Match | None


def _recognise(ctx: Context, x: np.ndarray | FrameInputs, sha: str) -> _Recognised:
    """Worker thread: look the image up among the known ones, by sha256 and (a still image) PDQ of its model input."""
    query = phash.query_hash(x) if isinstance(x, np.ndarray) else None
    return _Recognised(x, ctx.known.lookup(sha, query))


def _fetch_and_prepare(ctx: Context, url: str, chosen: Model | None = None
                       ) -> tuple[float, _Recognised | _Isolate | _Animated, str, float]:
    """Worker thread: fetch (SSRF-safe, capped) then prepare."""
    t0 = time.perf_counter()
    content = ctx.fetch(url)
    return (time.perf_counter() - t0, *_prepare(ctx, content, chosen))


async def _finish(ctx: Context, batcher: Any, prepared: _Recognised, sha: str, fetch_s: float,
                  decode_s: float, started: float, chosen: Model | None = None,
                  override: Thresholds | None = None) -> Classification:
    t0 = time.perf_counter()
    x, match = prepared
    frames = None
    if isinstance(x, FrameInputs):  # its frames were admitted in flight before decoding (_preparing)
        rows = await asyncio.gather(*(batcher.predict(f) for f in x.inputs))
        frames = [FrameScore(ref.index, ref.time_ms, scores_dict(row)) for ref, row in zip(x.refs, rows, strict=True)]
        scores = frames[0].scores
    else:
        scores = scores_dict(await batcher.predict(x))
    inference_s = time.perf_counter() - t0
    model = chosen or ctx.model()
    active = ctx.thresholds.current()
    thresholds, version = (active.thresholds, active.version) if override is None else (override, None)
    return judge(scores, thresholds, ModelInfo(model.name, model.version),
                 Timings.of(fetch_s, decode_s, inference_s, time.perf_counter() - started), sha, version,
                 frames=frames, match=match)


# ---------------------------------------------------------------- the CLI's and the pages' path


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One source's :class:`Classification`, or the error that stopped it."""

    source: str
    classification: Classification | None = None
    error: NSFWError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """``{"source", "scores", "verdict"}`` or ``{"source", "error": {"code", "message"}}`` (the CLI's lines)."""
        if self.classification is None:
            assert self.error is not None
            return {"source": self.source, "error": self.error.to_dict()}
        return {"source": self.source, "scores": dict(self.classification.scores),
                "verdict": self.classification.verdict}


def outcome(scored: Scored, model: Model, thresholds: Thresholds, thresholds_version: int | None = None,
            match: Match | None = None) -> Outcome:
    """Judge one :class:`~nsfw_core.inference.pipeline.Scored` under ``thresholds`` (a known image: ``match``)."""
    if scored.scores is None:
        return Outcome(scored.source, error=scored.error, seconds=scored.seconds)
    timings = Timings.of(scored.load_s, scored.decode_s, scored.inference_s, scored.seconds)
    frames = None if scored.frames is None else [FrameScore(ref.index, ref.time_ms, s) for ref, s in scored.frames]
    classification = judge(scored.scores, thresholds, ModelInfo(model.name, model.version), timings,
                           scored.sha256 or "", thresholds_version, frames=frames, match=match)
    return Outcome(scored.source, classification, seconds=scored.seconds)


def classify_sources(
    ctx: Context,
    sources: Sequence[str],
    *,
    model_name: str | None = None,
    loader: Callable[[str], bytes] | None = None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    known: bool = True,
) -> list[Outcome]:
    """Classify paths or URLs (or keys ``loader`` reads) with the thresholds in force; errors per item.

    ``known``: a known image (a reviewer's remembered decision, a hash list) gets the human verdict, as in
    the API; False gives the model's verdict for every image.
    """
    model = ctx.model(model_name)
    scored = score_sources(model, sources, ctx.decoder, loader or ctx.load_bytes, batch_size=batch_size,
                           progress=progress, perceptual=known)
    active = ctx.thresholds.current()
    return [outcome(s, model, active.thresholds, active.version,
                    ctx.known.lookup(s.sha256, s.phash) if known and s.sha256 and s.scores is not None else None)
            for s in scored]
