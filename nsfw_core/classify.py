"""Classifying an image: the one use case every front end calls, and its one result type.

:class:`Classification` is what the API answers (``to_dict()`` is its detailed JSON),
what the CLI prints and what the pages show.  :func:`judge` is the only place where
scores become a verdict (through :meth:`~nsfw_core.base.verdict.Thresholds.decide`).
The image's embedding (:mod:`nsfw_core.inference.embeddings`), from the forward pass that gave the
scores, reaches :func:`judge` (``embedding=``; an animation's, each frame's on ``FrameScore.embedding``):
an adapter in force (:mod:`nsfw_core.state.adapters`) turns it into the adult score, an example set
(:mod:`nsfw_core.state.examples`) may decide by it, and a look-alike of a remembered decision must lie near
the decided image's.  It is not part of the answer (``Classification.embedding`` keeps it); a queued review or
audit item keeps it (:class:`ReviewIntake`), and so does the decision once remembered.

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
import functools
import json
import logging
import time
from concurrent.futures import Executor
from typing import Any, AsyncIterator, Callable, Sequence

import numpy as np

from nsfw_core import ratelimit
from nsfw_core.base import requestid
from nsfw_core.base.errors import NotReady, NSFWError
from nsfw_core.base.labels import ADULT, SAFE, UNKNOWN
from nsfw_core.base.verdict import Thresholds
from nsfw_core.images import phash
from nsfw_core.inference.embeddings import ExampleMatch, embedding_distance
from nsfw_core.inference.model import Model, scores_dict
from nsfw_core.inference.pipeline import FrameInputs, VideoInfo, score_sources
from nsfw_core.inference.registry import Lane, ModelRegistry
from nsfw_core.intake import Intake, Prepared
from nsfw_core.state.adapters import Adapters, AdapterVersion
from nsfw_core.state.examples import ExampleSets
from nsfw_core.state.known import KnownImages, Match
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review.audit import AUDIT, REVIEW, AuditPolicy
from nsfw_core.state.review.queue import QuotaSpent
from nsfw_core.state.thresholds import ThresholdHistory

log = logging.getLogger(__name__)

UPLOAD_SOURCE = "upload"  # the review item's source for images sent in the request body
REVIEW_UNAVAILABLE = "the review queue is unavailable; see the server log"
STRICTNESS = {SAFE: 0, UNKNOWN: 1, ADULT: 2}

# When the model sees a look-alike "alike" (issue 29, point 2): a perceptual (PDQ) match may clear an image only
# when the same model scored the decided image, and the new image's adult score (the thresholds' adult classes)
# is at most MATCH_ADULT_MARGIN above the decided image's: a look-alike is never cleared for being more adult
# than what the reviewer saw.  Calibrated with bench/lookalikes.py (docs/reliability.md): the edits a decided
# image must survive (JPEG q70, resized 50 %, cropped 2 %, watermarked) raised the adult score by at most
# 0.015 (88 copies of 22 images), while every blend of the blend attack that was answered safe raised it by more.
MATCH_ADULT_MARGIN = 0.03
# And where both images' embeddings exist (issue 26: remembered decisions keep the decided image's), the look-alike's
# must lie within MATCH_EMBEDDING_DISTANCE of the decided image's (one minus their cosine,
# :func:`~nsfw_core.inference.embeddings.embedding_distance`).  Calibrated with bench/lookalikes.py on the same
# edited copies (docs/reliability.md): they moved the embedding by at most 0.213 (a copy resized to 50 %; JPEG q70
# 0.029, cropped 0.059, watermarked 0.038), while every detail blend answered safe before issue 29 lay at 0.43 or
# more.  The alpha blends lie nearer (from 0.12): there the adult-score rule is what refuses them.
MATCH_EMBEDDING_DISTANCE = 0.3


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
    """What queueing for human review gave: the client's review id (unguessable), or the error that stopped it."""

    id: str | None
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
class Segment:
    """Consecutive sampled frames of a video with the same verdict: from the first one's time to the next
    segment's (the video's end for the last), and the highest score of each class among them."""

    start_ms: int
    end_ms: int
    verdict: str
    max_scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"start_ms": self.start_ms, "end_ms": self.end_ms, "verdict": self.verdict,
                "max_scores": dict(self.max_scores)}


def segments(frames: Sequence[FrameScore], thresholds: Thresholds, end_ms: int) -> tuple[Segment, ...]:
    """A video's timeline: its sampled frames (in time order), each judged under ``thresholds`` (on its
    ``adapter_score`` when an adapter judged the video, as :func:`judge` does), merged into runs of the same
    verdict."""
    out: list[Segment] = []
    ordered = sorted(frames, key=lambda f: f.time_ms)
    for i, frame in enumerate(ordered):
        verdict = thresholds.decide(frame.scores) if frame.adapter_score is None else \
            thresholds.decide_scores(frame.adapter_score, 1.0 - frame.adapter_score)
        if out and out[-1].verdict == verdict:
            last = out[-1]
            out[-1] = dataclasses.replace(last, max_scores={c: max(v, frame.scores[c])
                                                            for c, v in last.max_scores.items()})
        else:
            out.append(Segment(frame.time_ms, frame.time_ms, verdict, dict(frame.scores)))
        following = ordered[i + 1].time_ms if i + 1 < len(ordered) else max(end_ms, frame.time_ms)
        out[-1] = dataclasses.replace(out[-1], end_ms=following)
    return tuple(out)


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
    deciding_time_ms: int | None = None  # when the deciding frame is shown (None: a still image)
    video: VideoInfo | None = None  # a video: its container, size and duration (its frames are ``frames``)
    segments: tuple[Segment, ...] | None = None  # a video's timeline
    near: Match | None = None  # a look-alike match refused because the model disagrees (shown to reviewers only)
    # The image's embedding (an animation's deciding frame's), from the forward pass that gave the scores: kept
    # with a queued review item, compared with a look-alike's; never part of the answer.
    embedding: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

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
            out["deciding_time_ms"] = self.deciding_time_ms
        if self.video is not None:
            out["video"] = self.video.to_dict()
        if self.segments is not None:
            out["segments"] = [s.to_dict() for s in self.segments]
        if self.review is not None:
            out["review_id"] = self.review.id
            if self.review.error is not None:
                out["review_error"] = self.review.error
        return out

    def under(self, thresholds: Thresholds, version: int | None = None) -> Classification:
        """The same scores judged under other thresholds (the pages re-judge when thresholds change); an adapter
        that gave the adult score still gives it (``thresholds`` then apply to its score)."""
        return judge(self.scores, thresholds, self.model, self.timings, self.sha256, version, frames=self.frames,
                     match=self.match or self.near, adapter=self.adapter, example=self.example,
                     embedding=self.embedding, video=self.video,
                     adapter_score=self.adult_score if self.adapter is not None and not self.frames else None)


    def rejudged(self, base: Thresholds, version: int | None = None) -> Classification:
        """Judged again as a request would be now, under the thresholds history's ``base`` (its ``version``): a
        result an adapter scored keeps its score and is judged with the adapter's own thresholds (as
        :meth:`Classifier.thresholds_in_force` gives them), never the base values on the adapter's score."""
        if self.adapter is not None:
            return self.under(self.adapter.thresholds(base))
        return self.under(base, version)

    def frame_adult_score(self, frame: FrameScore) -> float:
        """A frame's adult score as its verdict used it: the adapter's when one scored it, else the summed
        classes of the thresholds this result was judged with."""
        return frame.adapter_score if frame.adapter_score is not None else self.thresholds.adult_score(frame.scores)


def judge(scores: dict[str, float], thresholds: Thresholds, model: ModelInfo, timings: Timings,
          sha256: str, thresholds_version: int | None = None, *,
          frames: Sequence[FrameScore] | None = None, match: Match | None = None,
          embedding: np.ndarray | None = None, adapter: AdapterVersion | None = None,
          example: ExampleMatch | None = None, adapter_score: float | None = None,
          video: VideoInfo | None = None) -> Classification:
    """Scores -> a :class:`Classification`: the one place a verdict is decided.

    The model's view: the adult score is the sum of ``thresholds``' adult classes, or, with ``adapter`` (the
    adapter in force, :mod:`nsfw_core.state.adapters`) and the image's ``embedding``, the adapter's probability;
    the safe score is then one minus it, and ``thresholds``' values apply to these two scores (the five class
    scores stay the model's).  An animation (``frames``, each with its embedding) is judged on its worst frame,
    the one with the highest adult score (the earliest on a tie): the image gets that frame's scores, verdict
    and embedding.  ``adapter_score`` (and a frame's ``adapter_score``): the adapter's score already computed
    (re-judging under other thresholds, :meth:`Classification.under`).

    Who decides, first to last (docs/review.md, "Who decides"):

    1. a known image (``match``: a reviewer's remembered decision or a hash-list entry,
       :mod:`nsfw_core.state.known`, already limited to the client's audience by the lookup) gets the human
       verdict, ``verdict_source`` "review" or "list", within the look-alike rule below;
    2. an image that matched an example set (``example``, :mod:`nsfw_core.state.examples`) gets the set's
       verdict, ``verdict_source`` "examples";
    3. the adapter's verdict when one is in force, else the model's (``verdict_source`` "model").

    The look-alike rule: PDQ sees only an image's coarse shading, so another picture's detail laid over a
    listed or safe-decided image's blurred shading stays within the match distance while showing something
    else (the security test matched such an image at 26 bits while the model gave it porn 0.745; issue 29 had
    30 % of such blends the model left "unknown" answered safe).  As hash-sharing programmes advise, a
    perceptual hash alone never clears:

    * a PDQ match never clears an image the model (or the adapter) calls adult, nor one an example set
      blocks (only the exact bytes, sha256, may);
    * a PDQ match may clear what the model left "unknown" only when the model sees the image alike
      (:func:`sees_alike`: scores from the same model; the score the verdict uses, the adapter's when one is
      in force, at most :data:`MATCH_ADULT_MARGIN` above the decided image's; and where both images'
      embeddings exist, within :data:`MATCH_EMBEDDING_DISTANCE` of each other), so a hash-list "allow" entry
      (no scores) never clears by PDQ.  Otherwise the match is refused: the next in the order decides, and
      the refused match is kept in ``near`` for the reviewer (never in the client's answer).

    A PDQ match may always make a verdict stricter (an adult decision or a "deny" entry): that fails closed.

    A video (``video``: its frames are ``frames``, judged on the worst as an animation's) gets its timeline
    (``segments``).  Its perceptual match is vPDQ's (``match.by`` "vpdq": most of its sampled frames and most of
    the known video's match, :mod:`nsfw_core.state.vpdq`), held to the same rule in that form: a frame-majority
    match never clears a video the model calls adult, and clears one the model left "unknown" only when the model
    sees it alike (its worst frame's adult score at most the margin above the decided video's worst frame's).
    """
    deciding = deciding_time = None
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
        scores, deciding, deciding_time = worst.scores, worst.index, worst.time_ms
        adult_score = worst.adapter_score
        embedding = worst.embedding
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
    near = None
    if match is not None and match.by != "sha256" and STRICTNESS[match.verdict] < STRICTNESS[model_verdict]:
        if model_verdict == ADULT:
            match = None
        elif not sees_alike(scores, match, thresholds, model.name, model_version=model.version,
                            embedding=embedding, adapter=adapter, adult_score=adult_score):
            near, match = match, None
    if match is not None and match.by != "sha256" and example is not None \
            and STRICTNESS[match.verdict] < STRICTNESS[example.verdict]:
        match = None  # an example set that blocks is not cleared by a perceptual match either
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
        deciding_time_ms=deciding_time,
        verdict_source=source,
        match=match,
        adapter=adapter,
        example=example,
        video=video,
        segments=segments(frames, thresholds, video.duration_ms) if video is not None and frames else None,
        near=near,
        embedding=embedding,
    )


def sees_alike(scores: dict[str, float], match: Match, thresholds: Thresholds, model_name: str, *,
               model_version: str | None = None, embedding: np.ndarray | None = None,
               adapter: AdapterVersion | None = None, adult_score: float | None = None) -> bool:
    """True when the model sees an image as it saw the decided one ``match`` names; False for an entry without
    scores (a hash list, a decision remembered before issue 29) or from another model.  All of:

    * the adult score the verdict uses at most :data:`MATCH_ADULT_MARGIN` above the decided image's: the
      thresholds' adult classes summed, or with ``adapter`` in force (``adult_score``, its score of this
      image) the adapter's score of the decided image, which needs the decided image's embedding from the
      model version the adapter reads (none kept: not alike, as fails closed);
    * where both embeddings exist (``embedding``: this image's, from ``model_version``; the match's, from the
      same version), at most :data:`MATCH_EMBEDDING_DISTANCE` apart (:func:`embedding_distance`).  A decision
      that keeps an embedding which could not be read now is not alike.
    """
    decided = match.scores
    if not decided or match.model != model_name or any(c not in decided for c in thresholds.adult_classes):
        return False
    if match.embedded and match.embedding is None:
        return False  # the decided image's embedding exists but could not be read: fail closed
    same_version = match.embedding is not None and (model_version is None or match.model_version == model_version)
    if adapter is not None:
        if not (same_version and match.model_version == adapter.model_version) or match.embedding is None:
            return False
        mine = adult_score if adult_score is not None else adapter.score(embedding, scores)  # type: ignore[arg-type]
        if mine > adapter.score(match.embedding, decided) + MATCH_ADULT_MARGIN:
            return False
    elif thresholds.adult_score(scores) > thresholds.adult_score(decided) + MATCH_ADULT_MARGIN:
        return False
    if embedding is not None and same_version and match.embedding is not None:
        return embedding_distance(embedding, match.embedding) <= MATCH_EMBEDDING_DISTANCE
    return True


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
                  client: str = "", adapter: bool = True) -> Classification:
        """Fetch ``url`` safely, then classify it; see :meth:`data`.  A queued URL item keeps the fetched
        bytes: the reviewer sees what was classified, never what the URL serves later."""
        started = time.perf_counter()
        async with self._lane(model) as lane:
            with contextlib.ExitStack() as held:  # an animation's frames are held in flight until answered
                prepared = await self.intake.url(url, lane.model, held, functools.partial(self._recognise, client))
                result, private = await self._finish(lane, prepared, started, thresholds, adapter)
        self.observe(result, True)
        return await self.review.submit(result, url, prepared.data, prepared.x, client=client, private=private)

    async def data(self, data: bytes, *, model: str | None = None, thresholds: Thresholds | None = None,
                   client: str = "", adapter: bool = True) -> Classification:
        """Classify image bytes: scores, verdict, thresholds, model, timings and sha256.

        ``model``: the name of another model than the default (API v1's per-request model);
        ``thresholds``: the request's own thresholds instead of the ones in force (version None); with an
        adapter in force they apply to its score (:meth:`thresholds_in_force` gives the ones they replace);
        ``client``: who asks (a hash of its API key, :func:`nsfw_core.http.guard.client_id`): the decisions
        only it may use, its review quota and its review ids;
        ``adapter``: False judges with the base model even when an adapter is in force.
        """
        started = time.perf_counter()
        async with self._lane(model) as lane:
            with contextlib.ExitStack() as held:
                prepared = await self.intake.data(data, lane.model, held, functools.partial(self._recognise, client))
                result, private = await self._finish(lane, prepared, started, thresholds, adapter)
        self.observe(result, False)
        return await self.review.submit(result, UPLOAD_SOURCE, data, prepared.x, client=client, private=private)

    def adapter_for(self, model: Model | ModelInfo, wanted: bool = True) -> AdapterVersion | None:
        """The adapter in force for ``model`` (trained on its version), unless not ``wanted``."""
        if not wanted or self.adapters is None:
            return None
        return self.adapters.current(model.name, model.version)

    def thresholds_in_force(self, model: str | None = None, adapter: bool = True) -> Thresholds:
        """The thresholds a request for ``model`` (default: the default model) is judged with: the adapter's in
        force when there is one (and ``adapter``), else the thresholds history's version in force."""
        base = self.thresholds.current().thresholds
        found = self.adapter_in_force(model) if adapter else None
        return found.thresholds(base) if found is not None else base

    def adapter_in_force(self, model: str | None = None) -> AdapterVersion | None:
        """The adapter a request for ``model`` (default: the default model) is judged by now, if any."""
        if self.adapters is None:
            return None
        loaded = self.models.loaded_model(model)  # not loaded yet: the adapter in force for its name
        return self.adapters.current(model or self.models.default, loaded.version if loaded is not None else None)
    def lane(self, name: str | None) -> contextlib.AbstractAsyncContextManager[Lane]:
        """The lane of model ``name`` (None: the default), as a request gets it (the video jobs use it)."""
        return self._lane(name)

    def known_video(self, sha: str, hashes: Sequence[bytes | None], client: str | None = None) -> Match | None:
        """The known video this one is: the same bytes, or most of its frames' PDQ hashes matching a known
        video's (:meth:`~nsfw_core.state.known.KnownImages.lookup_video`), among the decisions ``client`` may
        use."""
        return self.known.lookup_video(sha, hashes, client)

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

    def _recognise(self, client: str, x: np.ndarray | FrameInputs, sha: str) -> Match | None:
        """Worker thread: the known image this one is, by sha256 and (a still image) PDQ of its model input;
        a video by sha256 and its frames' PDQ hashes (:meth:`known_video`).  ``client``: whose decisions count
        (a decision for one client's own thresholds matches only it)."""
        if isinstance(x, FrameInputs) and x.video is not None:
            return self.known_video(sha, [phash.query_hash(f) for f in x.inputs], client)
        query = phash.query_hash(x) if isinstance(x, np.ndarray) else None
        return self.known.lookup(sha, query, client)

    async def _finish(self, lane: Lane, prepared: Prepared[Match | None], started: float,
                      override: Thresholds | None, use_adapter: bool = True) -> tuple[Classification, bool]:
        """The forward pass and the verdict (the result keeps the image's embedding, an animation's deciding
        frame's), and whether only the request's own choices send it to review (``private``: judged as the
        server judges by default it would not be queued; its decision then protects only this client)."""
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
        timings = Timings.of(prepared.fetch_s, prepared.decode_s, inference_s, time.perf_counter() - started)
        return self.verdict(scores, override, ModelInfo(lane.model.name, lane.model.version), timings,
                            prepared.sha256, frames=frames, match=prepared.found,
                            video=x.video if isinstance(x, FrameInputs) else None, embedding=embedding,
                            embeddings=embeddings, use_adapter=use_adapter)

    def verdict(self, scores: dict[str, float], override: Thresholds | None, info: ModelInfo, timings: Timings,
                sha256: str, *, frames: Sequence[FrameScore] | None = None, match: Match | None = None,
                video: VideoInfo | None = None, embedding: np.ndarray | None = None,
                embeddings: np.ndarray | None = None, use_adapter: bool = True) -> tuple[Classification, bool]:
        """:func:`judge` under the thresholds in force: the adapter in force for ``info``'s model (unless not
        ``use_adapter``) and its thresholds, else the thresholds history's; or ``override`` (the request's or the
        job's own).  The known image ``match``; an example set's match (``embeddings``: the image's, one row, or
        its frames').  And ``private``: the request's own thresholds (``override``) or its ``adapter: false``
        queue it for review where the server's defaults (the adapter in force and its thresholds, else the
        thresholds in force) would not; its decision then protects only its client.

        Without embeddings to read (a video job's frames stored before migration 12 have none) no adapter judges:
        the base model, under the thresholds history's version in force (never the adapter's thresholds on base
        scores)."""
        active = self.thresholds.current()
        readable = all(f.embedding is not None for f in frames) if frames else embedding is not None
        in_force = self.adapter_for(info) if readable else None
        adapter = in_force if use_adapter else None
        if override is not None:
            thresholds, version = override, None
        elif adapter is not None:
            thresholds, version = adapter.thresholds(active.thresholds), None
        else:
            thresholds, version = active.thresholds, active.version
        example = None
        if self.examples is not None:  # consulted even when a known image matched: a refused look-alike falls to it
            example = self.examples.match(info.name, info.version, embeddings)
        result = judge(scores, thresholds, info, timings, sha256, version, frames=frames, match=match,
                       embedding=embedding, adapter=adapter, example=example, video=video)
        private = False
        if (override is not None or adapter is not in_force) and self.review.queues(result.verdict):
            default_thresholds, default_version = ((in_force.thresholds(active.thresholds), None) if in_force
                                                  else (active.thresholds, active.version))
            by_default = judge(scores, default_thresholds, info, timings, sha256, default_version, frames=frames,
                               match=match, embedding=embedding, adapter=in_force, example=example, video=video)
            private = by_default.verdict_source != "model" or not self.review.queues(by_default.verdict)
        return result, private

    def sources(self, sources: Sequence[str], *, model_name: str | None = None,
                loader: Callable[[str], bytes] | None = None, batch_size: int = 16,
                progress: Callable[[int], None] | None = None, known: bool = True,
                adapter: bool = True, long_videos: bool = False) -> list[Outcome]:
        """Classify paths or URLs (or keys ``loader`` reads) with the thresholds in force; errors per item.

        ``known``: a known image (a reviewer's remembered decision, a hash list, an example set) gets the human
        verdict, as in the API; False gives the model's verdict for every image.  ``adapter``: the adapter in
        force judges, as in the API (False: the base model).
        """
        model = self.models.get(model_name)
        scored = score_sources(model, sources, self.intake.decoder, loader or self.load, batch_size=batch_size,
                               progress=progress, perceptual=known, embeddings=True, long_videos=long_videos)
        out = []
        info = ModelInfo(model.name, model.version)
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
            result, _ = self.verdict(s.scores if frames is None else frames[0].scores, None, info, timings,
                                     s.sha256 or "", frames=frames, match=found, video=s.video, embedding=s.embedding,
                                     embeddings=embeddings if known else None, use_adapter=adapter)
            out.append(Outcome(s.source, result, seconds=s.seconds))
        return out


class ReviewIntake:
    """What goes to human review: the verdicts NSFW_REVIEW_VERDICTS names, queued off the event loop, and
    a random sample of the automatic ones as audit items (``audit``: NSFW_AUDIT_RATE, NSFW_DOUBLE_REVIEW_RATE).

    ``queue`` opens the review queue on first use (its database may be down: the verdict still stands,
    the answer carries ``review_error``).
    """

    def __init__(self, verdicts: Sequence[str], queue: Callable[[], ReviewQueue], executor: Executor,
                 quota: int = 0, audit: AuditPolicy | None = None, adapters: Adapters | None = None) -> None:
        self.verdicts = tuple(verdicts)
        self.queue = queue
        self.executor = executor
        self.quota = int(quota)  # items one client may add per hour (NSFW_REVIEW_QUOTA; 0: no limit)
        self.audit = audit if audit is not None else AuditPolicy({})
        self.adapters = adapters  # keeps each queued image's embedding, for training adapters on reviewed items

    def queues(self, verdict: str) -> bool:
        """True when an image with this verdict goes to human review."""
        return verdict in self.verdicts

    async def submit(self, result: Classification, source: str, data: bytes | None,
                     prepared: np.ndarray | FrameInputs | None, *, client: str = "", private: bool = False,
                     frame_hashes: Sequence[bytes | None] | None = None) -> Classification:
        """Queue the image when its verdict says so (a known image's verdict never does), or as an audit item
        when the sample draws its automatic verdict.

        ``embedding``: the image's (an animation's deciding frame's), kept with the item so that a decided item
        can train an adapter (:mod:`nsfw_core.state.adapters`).

        The item keeps the image's perceptual hashes (``prepared``: the model input), remembered with its
        decision; a video's, its frames' (from ``prepared``'s frames, or ``frame_hashes``: a job's), and its
        bytes (``data``: always for a URL and for an audit item, for an upload when NSFW_REVIEW_STORE_UPLOADS
        is on; a video's the same: the reviewer sees the video that was classified).  ``client`` gets a review
        id of its own (unguessable) and spends its hourly quota; ``private``: only the request's own thresholds
        queue it, so its decision will protect only ``client``.  A refused look-alike (``result.near``) is shown
        to the reviewer.  A queue failure (database down) or a spent quota does not fail the prediction: the
        result carries ``review_error`` instead.  An audit item is the server's sample, not the client's
        request: it changes nothing in the answer (no ``review_id``, no ``review_error``: the automatic verdict
        stands), costs the client no quota, and its decision protects every client.
        """
        if result.match is not None:
            return result
        kind, probability = REVIEW, 1.0
        if not self.queues(result.verdict):
            sampled = self.audit.sample(result.verdict)
            if sampled is None:
                return result
            kind, probability = AUDIT, sampled
        reviews = self.audit.reviews()
        near = None if result.near is None else json.dumps(result.near.for_reviewer(), sort_keys=True)
        meter = ratelimit.current()
        key_id = meter.key_id if meter is not None else None  # whose image it is (the webhook events say)

        def enqueue() -> tuple[int, str]:
            queue = self.queue()
            queue.purge_if_due()
            media = "image"
            if result.video is not None:  # a video: one PDQ hash a sampled frame, matched as a whole
                media = "video"
                found = frame_hashes if frame_hashes is not None else (
                    [phash.query_hash(f) for f in prepared.inputs] if isinstance(prepared, FrameInputs) else [])
                hashes: str | None = phash.join_hex([h for h in found if h is not None]) or None
            else:
                hashes = phash.join_hex(phash.stored_hashes(prepared)) if isinstance(prepared, np.ndarray) else None
            if kind == AUDIT:  # the server's sample: for no client, no quota, protecting everyone, blind
                queued = queue.enqueue_for("", result.sha256, source, result.scores, result.model.name,
                                           result.verdict, image_bytes=data, phash=hashes, kind=AUDIT,
                                           probability=probability, reviews=reviews, media=media,
                                           deciding_ms=result.deciding_time_ms)
            else:
                queued = queue.enqueue_for(client, result.sha256, source, result.scores, result.model.name,
                                           result.verdict, image_bytes=data, phash=hashes,
                                           audience=client if private else "", matched=near, quota=self.quota,
                                           reviews=reviews, media=media, key_id=key_id,
                                           deciding_ms=result.deciding_time_ms)
            if self.adapters is not None and result.embedding is not None:
                try:  # a review item and an audit item alike: either may train an adapter once decided
                    self.adapters.save_item_embedding(queued[0], result.model.name, result.model.version,
                                                      result.embedding)
                except Exception as exc:  # the item is queued; only its use for training an adapter is lost
                    log.warning("review item %s: its embedding could not be kept (%r)", queued[0], exc)
            return queued

        try:
            _, ticket = await asyncio.get_running_loop().run_in_executor(self.executor,
                                                                         requestid.in_context(enqueue))
        except QuotaSpent as exc:
            log.info("not queued for review: %s", exc.message)
            return dataclasses.replace(result, review=ReviewTicket(None, exc.message))
        except Exception as exc:  # any database error; the verdict still stands
            log.error("could not queue %s for %s: %r", result.sha256, kind, exc)
            return result if kind == AUDIT else dataclasses.replace(result, review=ReviewTicket(None,
                                                                                                REVIEW_UNAVAILABLE))
        return result if kind == AUDIT else dataclasses.replace(result, review=ReviewTicket(ticket))


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

