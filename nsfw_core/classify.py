"""Classifying an image: the one use case every front end calls, and its one result type.

:class:`Classification` is what the API answers (``to_dict()`` is its detailed JSON),
what the CLI prints and what the pages show.  :func:`judge` is the only place where
scores become a verdict (through :meth:`~nsfw_core.base.verdict.Thresholds.decide`).
The image's embedding (:mod:`nsfw_core.inference.embeddings`), from the forward pass that gave the
scores, reaches :func:`judge` (``embedding=``; an animation's, each frame's on ``FrameScore.embedding``):
an adapter in force (:mod:`nsfw_core.state.adapters`) turns it into the adult score, an example set
(:mod:`nsfw_core.state.examples`) may decide by it, and whatever else needs it can read it there.  It is
not part of the answer; :meth:`Classifier.url` / :meth:`Classifier.data` keep it with a queued review item.

:class:`Classifier` is the use case, built once by the process context from the parts it
needs (nothing else of the context reaches it):

* :meth:`Classifier.url` / :meth:`Classifier.data`: the API's path, on the event loop: fetch
  and decode through the :class:`~nsfw_core.intake.Intake` (worker threads, expensive images in
  the isolated lane), the forward pass in the model's micro-batcher, then the verdict and, when
  the verdict says so, a review item (:class:`ReviewIntake`).
* :meth:`Classifier.sources`: the CLI's and the pages' path, synchronous and batched by
  itself (:func:`~nsfw_core.inference.pipeline.score_sources`), one :class:`Outcome` per source.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from concurrent.futures import Executor
from typing import Any, AsyncIterator, Callable, Sequence

import numpy as np

from nsfw_core.base import requestid
from nsfw_core.base.errors import NotReady, NSFWError
from nsfw_core.base.labels import ADULT
from nsfw_core.base.verdict import Thresholds
from nsfw_core.images import phash
from nsfw_core.inference.embeddings import ExampleMatch
from nsfw_core.inference.model import Model, scores_dict
from nsfw_core.inference.pipeline import FrameInputs, score_sources
from nsfw_core.inference.registry import Lane, ModelRegistry
from nsfw_core.intake import Intake, Prepared
from nsfw_core.state.adapters import Adapters, AdapterVersion
from nsfw_core.state.examples import ExampleSets
from nsfw_core.state.known import KnownImages, Match
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.thresholds import ThresholdHistory

log = logging.getLogger(__name__)

UPLOAD_SOURCE = "upload"  # the review item's source for images sent in the request body
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
    """One sampled frame of an animation: its index, when it is first shown, the model's scores and embedding,
    and, once judged under an adapter, the adapter's adult score."""

    index: int
    time_ms: int
    scores: dict[str, float]
    embedding: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    adapter_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "time_ms": self.time_ms, "scores": dict(self.scores)}
        if self.adapter_score is not None:
            out["adult_score"] = self.adapter_score
        return out


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
    verdict_source: str = "model"  # who decided: "model", "review" / "list" (a known image), "examples"
    match: Match | None = None  # the remembered decision or hash-list entry the image matched
    # The adapter in force that gave adult_score (None: the base model's summed classes) and the example set
    # that decided the verdict (verdict_source "examples").
    adapter: AdapterVersion | None = dataclasses.field(default=None, compare=False, repr=False)
    example: ExampleMatch | None = None

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
        if self.adapter is not None:
            out["adapter"] = self.adapter.ref
        if self.example is not None:
            out["example"] = self.example.to_dict()
        if self.frames is not None:
            out["frames"] = [f.to_dict() for f in self.frames]
            out["deciding_frame"] = self.deciding_frame
        if self.review is not None:
            out["review_id"] = self.review.id
            if self.review.error is not None:
                out["review_error"] = self.review.error
        return out

    def under(self, thresholds: Thresholds, version: int | None = None) -> Classification:
        """The same scores judged under other thresholds (the pages re-judge when thresholds change); an adapter
        that gave the adult score still gives it (``thresholds`` then apply to its score)."""
        return judge(self.scores, thresholds, self.model, self.timings, self.sha256, version, frames=self.frames,
                     match=self.match, adapter=self.adapter, example=self.example,
                     adapter_score=self.adult_score if self.adapter is not None and not self.frames else None)


def judge(scores: dict[str, float], thresholds: Thresholds, model: ModelInfo, timings: Timings,
          sha256: str, thresholds_version: int | None = None, *,
          frames: Sequence[FrameScore] | None = None, match: Match | None = None,
          embedding: np.ndarray | None = None, adapter: AdapterVersion | None = None,
          example: ExampleMatch | None = None, adapter_score: float | None = None) -> Classification:
    """Scores -> a :class:`Classification`: the one place a verdict is decided.

    The adult score is the sum of ``thresholds``' adult classes, or, with ``adapter`` (the adapter in force,
    :mod:`nsfw_core.state.adapters`) and the image's ``embedding``, the adapter's probability; the safe score
    is then one minus it, and ``thresholds``' values apply to these two scores (the five class scores stay
    the model's).  An animation (``frames``, each with its embedding) is judged on its worst frame, the one
    with the highest adult score (the earliest on a tie): the image gets that frame's scores and verdict.

    Who decides, first to last: a known image (``match``: a reviewer's remembered decision or a hash-list
    entry, :mod:`nsfw_core.state.known`) gets the human verdict, ``verdict_source`` "review" or "list"; an
    image that matched an example set (``example``, :mod:`nsfw_core.state.examples`) gets the set's verdict,
    ``verdict_source`` "examples"; otherwise the model's (or the adapter's) verdict stands.

    ``adapter_score`` (and a frame's ``adapter_score``): the adapter's score already computed (re-judging
    under other thresholds, :meth:`Classification.under`).

    Except one case: a perceptual (PDQ) match never clears an image the model calls adult.  PDQ sees
    only an image's coarse shading, so another picture's detail laid over a listed or safe-decided
    image's blurred shading stays within the match distance while showing something else (the security
    test matched such an image at 26 bits while the model gave it porn 0.745).  Only the exact bytes
    (sha256) may turn a model's "adult" into "safe"; a PDQ match may still make a verdict stricter, or
    decide what the model left "unknown".
    """
    deciding = None
    if adapter is not None:
        readable = [f.adapter_score is not None or f.embedding is not None for f in frames] if frames else \
            [adapter_score is not None or embedding is not None]
        if not all(readable):
            adapter = None  # no embedding to read: the base model judges
    if frames:
        if adapter is not None:
            frames = [f if f.adapter_score is not None else dataclasses.replace(
                f, adapter_score=adapter.score(f.embedding, f.scores))  # type: ignore[arg-type]
                for f in frames]
        else:
            frames = [f if f.adapter_score is None else dataclasses.replace(f, adapter_score=None) for f in frames]
        worst = max(frames, key=lambda f: (f.adapter_score if f.adapter_score is not None
                                           else thresholds.adult_score(f.scores), -f.index))
        scores, deciding = worst.scores, worst.index
        adult_score = worst.adapter_score
    elif adapter is not None:
        adult_score = adapter_score if adapter_score is not None else adapter.score(embedding, scores)  # type: ignore[arg-type]
    else:
        adult_score = None
    if adult_score is None:
        adult_score, safe_score = thresholds.adult_score(scores), thresholds.safe_score(scores)
        model_verdict = thresholds.decide(scores)
    else:
        safe_score = 1.0 - adult_score
        model_verdict = thresholds.decide_scores(adult_score, safe_score)
    if match is not None and match.by != "sha256" and model_verdict == ADULT and match.verdict != ADULT:
        match = None
    if match is not None:
        verdict, source, example = match.verdict, match.kind, None
    elif example is not None:
        verdict, source = example.verdict, "examples"
    else:
        verdict, source = model_verdict, "model"
    return Classification(
        scores=scores,
        verdict=verdict,
        adult_score=adult_score,
        safe_score=safe_score,
        thresholds=thresholds,
        model=model,
        timings=timings,
        sha256=sha256,
        thresholds_version=thresholds_version,
        frames=tuple(frames) if frames else None,
        deciding_frame=deciding,
        verdict_source=source,
        match=match,
        adapter=adapter,
        example=example,
    )


# ---------------------------------------------------------------- the one use case, on its parts


class Classifier:
    """Classifying images, handed exactly the parts it needs.

    ``intake`` fetches and decodes (worker threads, the isolated lane, admission of frames);
    ``models`` gives each request its model's lane (the default unless a request names another);
    ``known`` recognises a remembered decision or a hash-list entry; ``thresholds`` is the history
    whose version in force judges; ``review`` queues what a person must see; ``observe`` counts each
    classification (the metrics); ``adapters`` gives the adapter in force per model and ``examples``
    the example sets (None: neither is used).  :meth:`url` and :meth:`data` are the API's path, on the
    event loop; :meth:`sources` the CLI's and the pages' path, synchronous and batched by itself.
    """

    def __init__(self, intake: Intake, models: ModelRegistry, known: KnownImages, thresholds: ThresholdHistory,
                 review: ReviewIntake, load: Callable[[str], bytes],
                 observe: Callable[[Classification, bool], None] = lambda result, fetched: None, *,
                 adapters: Adapters | None = None, examples: ExampleSets | None = None) -> None:
        self.intake = intake
        self.models = models
        self.known = known
        self.thresholds = thresholds
        self.review = review
        self.load = load
        self.observe = observe
        self.adapters = adapters
        self.examples = examples

    async def url(self, url: str, *, model: str | None = None, thresholds: Thresholds | None = None,
                  adapter: bool = True) -> Classification:
        """Fetch ``url`` safely, then classify it; see :meth:`data`."""
        started = time.perf_counter()
        async with self._lane(model) as lane:
            with contextlib.ExitStack() as held:  # an animation's frames are held in flight until answered
                prepared = await self.intake.url(url, lane.model, held, self._recognise)
                result, embedding = await self._finish(lane, prepared, started, thresholds, adapter)
        self.observe(result, True)
        return await self.review.submit(result, url, None, prepared.x, embedding)

    async def data(self, data: bytes, *, model: str | None = None, thresholds: Thresholds | None = None,
                   adapter: bool = True) -> Classification:
        """Classify image bytes: scores, verdict, thresholds, model, timings and sha256.

        ``model``: the name of another model than the default (API v1's per-request model);
        ``thresholds``: the request's own thresholds instead of the ones in force (version None); with an
        adapter in force they apply to its score (:meth:`thresholds_in_force` gives the ones they replace);
        ``adapter``: False judges with the base model even when an adapter is in force.
        """
        started = time.perf_counter()
        async with self._lane(model) as lane:
            with contextlib.ExitStack() as held:
                prepared = await self.intake.data(data, lane.model, held, self._recognise)
                result, embedding = await self._finish(lane, prepared, started, thresholds, adapter)
        self.observe(result, False)
        return await self.review.submit(result, UPLOAD_SOURCE, data, prepared.x, embedding)

    def adapter_for(self, model: Model, wanted: bool = True) -> AdapterVersion | None:
        """The adapter in force for ``model`` (trained on its version), unless not ``wanted``."""
        if not wanted or self.adapters is None:
            return None
        return self.adapters.current(model.name, model.version)

    def thresholds_in_force(self, model: str | None = None, adapter: bool = True) -> Thresholds:
        """The thresholds a request for ``model`` (default: the default model) is judged with: the adapter's in
        force when there is one (and ``adapter``), else the thresholds history's version in force."""
        base = self.thresholds.current().thresholds
        if not adapter or self.adapters is None:
            return base
        loaded = self.models.loaded_model(model)  # not loaded yet: the adapter in force for its name
        found = self.adapters.current(model or self.models.default, loaded.version if loaded is not None else None)
        return found.thresholds(base) if found is not None else base

    @contextlib.asynccontextmanager
    async def _lane(self, name: str | None) -> AsyncIterator[Lane]:
        """The default model's lane (503 not_ready until it runs), or another model's, loaded on demand."""
        if name is None or name == self.models.default:
            lane = self.models.default_lane()
            if lane is None or not lane.batcher.running:
                raise NotReady(f"the service is not ready: {self.models.reason}")
            yield lane
            return
        async with self.models.lane(name) as other:
            yield other

    def _recognise(self, x: np.ndarray | FrameInputs, sha: str) -> Match | None:
        """Worker thread: the known image this one is, by sha256 and (a still image) PDQ of its model input."""
        query = phash.query_hash(x) if isinstance(x, np.ndarray) else None
        return self.known.lookup(sha, query)

    async def _finish(self, lane: Lane, prepared: Prepared[Match | None], started: float,
                      override: Thresholds | None, use_adapter: bool = True
                      ) -> tuple[Classification, np.ndarray | None]:
        """The forward pass and the verdict; with the image's embedding (an animation's deciding frame's)."""
        t0 = time.perf_counter()
        x = prepared.x
        frames = None
        embedding = None
        if isinstance(x, FrameInputs):  # its frames were admitted in flight before decoding (Intake)
            rows = await asyncio.gather(*(lane.batcher.infer(f) for f in x.inputs))
            frames = [FrameScore(ref.index, ref.time_ms, scores_dict(row.probs), row.embedding)
                      for ref, row in zip(x.refs, rows, strict=True)]
            scores = frames[0].scores
            if all(row.embedding is not None for row in rows):
                embeddings = np.stack([row.embedding for row in rows])  # type: ignore[misc]
            else:
                embeddings = None
        else:
            row = await lane.batcher.infer(x)
            scores, embedding = scores_dict(row.probs), row.embedding
            embeddings = None if embedding is None else embedding[None]
        inference_s = time.perf_counter() - t0
        result = self._judged(lane.model, scores, frames, embedding, embeddings, prepared.found, override,
                              use_adapter, Timings.of(prepared.fetch_s, prepared.decode_s, inference_s,
                                                      time.perf_counter() - started), prepared.sha256)
        if frames is not None and embeddings is not None and result.deciding_frame is not None:
            embedding = next(f.embedding for f in frames if f.index == result.deciding_frame)
        return result, embedding

    def _judged(self, model: Model, scores: dict[str, float], frames: list[FrameScore] | None,
                embedding: np.ndarray | None, embeddings: np.ndarray | None, found: Match | None,
                override: Thresholds | None, use_adapter: bool, timings: Timings, sha256: str) -> Classification:
        """The verdict: the adapter in force (unless not ``use_adapter``) and its thresholds, or the thresholds
        history's; an example set's match; the known image ``found``."""
        active = self.thresholds.current()
        adapter = self.adapter_for(model, use_adapter)
        if override is not None:
            thresholds, version = override, None
        elif adapter is not None:
            thresholds, version = adapter.thresholds(active.thresholds), None
        else:
            thresholds, version = active.thresholds, active.version
        example = None
        if self.examples is not None and found is None:
            example = self.examples.match(model.name, model.version, embeddings)
        return judge(scores, thresholds, ModelInfo(model.name, model.version), timings, sha256, version,
                     frames=frames, match=found, embedding=embedding, adapter=adapter, example=example)

    def sources(self, sources: Sequence[str], *, model_name: str | None = None,
                loader: Callable[[str], bytes] | None = None, batch_size: int = 16,
                progress: Callable[[int], None] | None = None, known: bool = True,
                adapter: bool = True) -> list[Outcome]:
        """Classify paths or URLs (or keys ``loader`` reads) with the thresholds in force; errors per item.

        ``known``: a known image (a reviewer's remembered decision, a hash list, an example set) gets the human
        verdict, as in the API; False gives the model's verdict for every image.  ``adapter``: the adapter in
        force judges, as in the API (False: the base model).
        """
        model = self.models.get(model_name)
        scored = score_sources(model, sources, self.intake.decoder, loader or self.load, batch_size=batch_size,
                               progress=progress, perceptual=known, embeddings=True)
        out = []
        for s in scored:
            if s.scores is None:
                out.append(Outcome(s.source, error=s.error, seconds=s.seconds))
                continue
            found = self.known.lookup(s.sha256, s.phash) if known and s.sha256 else None
            frames = None if s.frames is None else [
                FrameScore(ref.index, ref.time_ms, sc, None if s.frame_embeddings is None else s.frame_embeddings[i])
                for i, (ref, sc) in enumerate(s.frames)]
            embeddings = s.frame_embeddings if s.frames is not None else (
                None if s.embedding is None else s.embedding[None])
            timings = Timings.of(s.load_s, s.decode_s, s.inference_s, s.seconds)
            result = self._judged(model, s.scores if frames is None else frames[0].scores, frames, s.embedding,
                                  embeddings if known else None, found, None, adapter, timings, s.sha256 or "")
            out.append(Outcome(s.source, result, seconds=s.seconds))
        return out


class ReviewIntake:
    """What goes to human review: the verdicts NSFW_REVIEW_VERDICTS names, queued off the event loop.

    ``queue`` opens the review queue on first use (its database may be down: the verdict still stands,
    the answer carries ``review_error``).
    """

    def __init__(self, verdicts: Sequence[str], queue: Callable[[], ReviewQueue], executor: Executor,
                 adapters: Adapters | None = None) -> None:
        self.verdicts = tuple(verdicts)
        self.queue = queue
        self.executor = executor
        self.adapters = adapters  # keeps each queued image's embedding, for training adapters on reviewed items

    def queues(self, verdict: str) -> bool:
        """True when an image with this verdict goes to human review."""
        return verdict in self.verdicts

    async def submit(self, result: Classification, source: str, data: bytes | None,
                     prepared: np.ndarray | FrameInputs, embedding: np.ndarray | None = None) -> Classification:
        """Queue the image when its verdict says so (a known image's verdict never does).

        ``embedding``: the image's (an animation's deciding frame's), kept with the item so that a decided item
        can train an adapter (:mod:`nsfw_core.state.adapters`).

        The item keeps the image's perceptual hashes (``prepared``: the model input), remembered with its
        decision.  A queue failure (database down) does not fail the prediction: the result carries
        ``review_error`` instead and the failure is logged.
        """
        if result.match is not None or not self.queues(result.verdict):
            return result

        def enqueue() -> int:
            queue = self.queue()
            queue.purge_if_due()
            hashes = phash.join_hex(phash.stored_hashes(prepared)) if isinstance(prepared, np.ndarray) else None
            item_id = queue.enqueue(result.sha256, source, result.scores, result.model.name, result.verdict,
                                    image_bytes=data, phash=hashes)
            if self.adapters is not None and embedding is not None:
                try:
                    self.adapters.save_item_embedding(item_id, result.model.name, result.model.version, embedding)
                except Exception as exc:  # the item is queued; only its use for training an adapter is lost
                    log.warning("review item %s: its embedding could not be kept (%r)", item_id, exc)
            return item_id

        try:
            review_id = await asyncio.get_running_loop().run_in_executor(self.executor,
                                                                         requestid.in_context(enqueue))
        except Exception as exc:  # any database error; the verdict still stands
            log.error("could not queue %s for review: %r", result.sha256, exc)
            return dataclasses.replace(result, review=ReviewTicket(None, REVIEW_UNAVAILABLE))
        return dataclasses.replace(result, review=ReviewTicket(review_id))


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

