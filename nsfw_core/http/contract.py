"""The API's typed contract, for both generations: the request and response models, their validation,
their OpenAPI schemas.

The models are :mod:`msgspec` structs (msgspec: small, no dependencies, strict JSON decoding
straight into typed objects, JSON Schema generation).  One definition serves three purposes:

* validation: :func:`decode` parses a body into a model with strict types (no ``"1"`` for ``1``,
  no booleans for numbers), unknown fields refused, bounded sizes; every failure is a
  :class:`ContractError`, 400 with a stable ``code`` and the JSON path of the bad ``field``
  (``$.image.base64``, ``$.items[3].id``);
* the OpenAPI document: :func:`schemas` gives the ``components/schemas`` of v1, generated
  by ``msgspec.json.schema_components`` (limits that are settings, such as the base64 length
  or the items per batch, are filled in from the settings);
* the answers: :class:`ClassifyResult` and friends describe what v1 answers; tests validate
  real answers against the generated schemas.

The original API's ``/predict/batch`` body (a list of URLs, or ``{"items": [...], "detail": bool}``
with ``{"id", "url"}`` objects) is decoded by the same contract (:class:`PredictBatch`); unknown
fields stay ignored there, as they always were, and a body that does not match is 400
``bad_request`` naming the item (:func:`decode_predict_batch`).

Sizes are checked before any decoding: the body is read under a byte cap, and a base64 string
longer than :func:`base64_cap` (the encoded length of ``NSFW_MAX_BYTES`` bytes) is refused
with 413 ``too_large`` before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from nsfw_core.base.errors import BadRequest, InputError, TooLarge
from nsfw_core.base.labels import CLASS_NAMES, DECISION_LABELS, VERDICTS
from nsfw_core.base.settings import MODEL_NAMES
from nsfw_core.http.errors import TooManyItems

MAX_ID_LENGTH = 256  # characters in a client's string id (both generations' batches, v1's id)
MAX_ID_NUMBER = 2**53 - 1  # a numeric id: within what a JSON number carries exactly everywhere
REF_TEMPLATE = "#/components/schemas/{name}"

T = TypeVar("T")

Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
ClientId = (Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
            | Annotated[int, msgspec.Meta(ge=-MAX_ID_NUMBER, le=MAX_ID_NUMBER)]
            | Annotated[float, msgspec.Meta(ge=-MAX_ID_NUMBER, le=MAX_ID_NUMBER)] | None)
URLText = Annotated[str, msgspec.Meta(min_length=1)]
ModelName = Literal["MobileNetV2Mid", "MobileNetV2", "InceptionV3"]
Verdict = Literal["adult", "unknown", "safe"]
ReviewStatus = Literal["pending", "claimed", "decided"]

assert tuple(ModelName.__args__) == MODEL_NAMES  # type: ignore[attr-defined]
assert tuple(Verdict.__args__) == tuple(VERDICTS)  # type: ignore[attr-defined]


class ContractError(InputError):
    """A body that does not match the contract: 400, ``code`` invalid_json / invalid_request / invalid_base64."""

    status = 400
    code = "invalid_request"


class InvalidJSON(ContractError):
    code = "invalid_json"


class InvalidBase64(ContractError):
    code = "invalid_base64"


# ---------------------------------------------------------------- requests


class Image(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Exactly one of ``url`` (http(s), fetched through the SSRF-safe fetcher) or ``base64`` (the bytes,
    standard alphabet, padding required; ASCII whitespace and line breaks are ignored)."""

    url: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    base64: Annotated[str, msgspec.Meta(min_length=1)] | None = None


class ThresholdsIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """This request's thresholds (0 to 1) instead of the ones in force; an absent one keeps its value."""

    adult: Fraction | None = None
    safe: Fraction | None = None


AdapterFlag = Annotated[bool | None, msgspec.Meta(
    description="false: judge with the base model even when an adapter is in force (default: the adapter in force)")]


class ClassifyRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /v1/classify`` as JSON (the image bytes as the body work too)."""

    image: Image
    model: ModelName | None = None
    thresholds: ThresholdsIn | None = None
    id: ClientId = None
    adapter: AdapterFlag = None


class BatchItem(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    image: Image
    id: ClientId = None


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /v1/classify/batch``: items (URLs and base64 mixed), one model and thresholds for all."""

    items: list[BatchItem]
    model: ModelName | None = None
    thresholds: ThresholdsIn | None = None
    adapter: AdapterFlag = None


# ---------------------------------------------------------------- responses


class Scores(msgspec.Struct, forbid_unknown_fields=True):
    drawings: float
    hentai: float
    neutral: float
    porn: float
    sexy: float


assert tuple(Scores.__struct_fields__) == CLASS_NAMES


class ThresholdsOut(msgspec.Struct, forbid_unknown_fields=True):
    adult: float
    safe: float
    adult_classes: list[str]
    safe_classes: list[str]
    version: int | None  # the thresholds history's version in force; null: the defaults, an override, an adapter's
    overridden: bool  # true when the request's thresholds were used


class ModelOut(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    version: str


class TimingsOut(msgspec.Struct, forbid_unknown_fields=True):
    fetch_ms: float
    decode_ms: float
    inference_ms: float
    total_ms: float


class Frame(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    index: Annotated[int, msgspec.Meta(ge=0)]
    time_ms: Annotated[int, msgspec.Meta(ge=0)]
    scores: Scores
    adult_score: Annotated[float, msgspec.Meta(
        ge=0.0, le=1.0, description="the adapter's adult score of this frame (only when an adapter is in force)"
    )] | msgspec.UnsetType = msgspec.UNSET


class AdapterOut(msgspec.Struct, forbid_unknown_fields=True):
    """The adapter in force that gave ``adult_score`` (its probability; ``safe_score`` is one minus it) and whose
    thresholds judged; the five ``scores`` stay the base model's."""

    name: str
    version: Annotated[int, msgspec.Meta(ge=1)]


class ExampleOut(msgspec.Struct, forbid_unknown_fields=True):
    """The example set whose verdict the image got (``verdict_source`` examples)."""

    set: str
    verdict: Verdict
    similarity: Annotated[float, msgspec.Meta(description="the image's highest similarity to one of the set's "
                                                          "examples (centred cosine)")]
    threshold: Annotated[float, msgspec.Meta(description="the set's threshold: at or above it, the set decides")]


class MatchOut(msgspec.Struct, forbid_unknown_fields=True):
    """The known image whose human verdict this image got (``verdict_source`` review or list); the scores
    stay the model's.  No distance and no ids: the answer is not an oracle for another client's items."""

    source: Literal["review", "list"]
    by: Annotated[Literal["sha256", "pdq", "vpdq"], msgspec.Meta(
        description="the same bytes, or a PDQ hash within NSFW_MATCH_DISTANCE whose model scores agree; vpdq: a "
                    "video most of whose sampled frames (80 %) match most of a known video's, its worst frame "
                    "scored alike")]
    label: Annotated[str, msgspec.Meta(description="the reviewer's label, or the list's (allow, deny, safe, adult)")]


class Segment(msgspec.Struct, forbid_unknown_fields=True):
    """Consecutive sampled frames of a video with the same verdict."""

    start_ms: Annotated[int, msgspec.Meta(ge=0, description="the first frame's time")]
    end_ms: Annotated[int, msgspec.Meta(ge=0, description="the next segment's first frame's time (the video's end "
                                                          "for the last)")]
    verdict: Verdict
    max_scores: Annotated[Scores, msgspec.Meta(description="each class's highest score among the segment's frames")]


class VideoOut(msgspec.Struct, forbid_unknown_fields=True):
    """A video: its container and codec as declared, its frame size, what its frames cover."""

    container: Literal["mp4", "mov", "webm", "mkv"]
    codec: Literal["h264", "hevc", "vp8", "vp9", "av1"]
    width: Annotated[int, msgspec.Meta(ge=1)]
    height: Annotated[int, msgspec.Meta(ge=1)]
    duration_ms: Annotated[int, msgspec.Meta(ge=0)]
    frames: Annotated[int, msgspec.Meta(ge=1, description="frames in the video stream (not all are judged)")]


class DetailThresholds(msgspec.Struct, forbid_unknown_fields=True):
    adult: float
    safe: float
    adult_classes: list[str]
    safe_classes: list[str]
    version: Annotated[int | None, msgspec.Meta(
        description="the thresholds history's version in force (null: the defaults, the request's own, or the "
                    "adapter's in force, which 'adapter' names)")]


class Detail(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One image's rich answer (``/predict?detail=1``): scores, verdict, how it was reached."""

    scores: Scores
    verdict: Verdict
    adult_score: float
    safe_score: float
    thresholds: DetailThresholds
    model: ModelOut
    timings: TimingsOut
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    verdict_source: Annotated[Literal["model", "review", "list", "examples"], msgspec.Meta(
        description="who decided the verdict: the model (or the adapter in force, 'adapter'); review: a reviewer "
                    "decided this image or a near copy of it (match says which); list: it is on an admin's "
                    "allow/deny hash list; examples: it is like an example of an admin's example set ('example')")]
    match: MatchOut | msgspec.UnsetType = msgspec.UNSET
    adapter: AdapterOut | msgspec.UnsetType = msgspec.UNSET
    example: ExampleOut | msgspec.UnsetType = msgspec.UNSET
    frames: Annotated[list[Frame], msgspec.Meta(
        min_length=1, description="an animated GIF, WebP or PNG, or a multi-page TIFF: its sampled frames (at "
                                  "most NSFW_MAX_FRAMES); a video's (NSFW_VIDEO_FPS a second, at most "
                                  "NSFW_MAX_VIDEO_FRAMES; index: the frame's number in presentation order); the "
                                  "scores and verdict are the worst frame's (highest adult score)")
    ] | msgspec.UnsetType = msgspec.UNSET
    deciding_frame: Annotated[int, msgspec.Meta(
        ge=0, description="the index of the frame whose scores the image got")] | msgspec.UnsetType = msgspec.UNSET
    deciding_time_ms: Annotated[int, msgspec.Meta(
        ge=0, description="when the deciding frame is shown")] | msgspec.UnsetType = msgspec.UNSET
    video: VideoOut | msgspec.UnsetType = msgspec.UNSET
    segments: Annotated[list[Segment], msgspec.Meta(
        min_length=1, description="a video's timeline: consecutive sampled frames with the same verdict merged "
                                  "(Rekognition's segments, Hive's per-frame classes)")] | msgspec.UnsetType = \
        msgspec.UNSET
    review_id: Annotated[str | None, msgspec.Meta(
        description="present when the verdict is sent to human review (NSFW_REVIEW_VERDICTS): this client's review "
                    "id (unguessable; GET /v1/reviews/{id} with the same API key); null when it was not queued "
                    "(review_error says why)")] | msgspec.UnsetType = msgspec.UNSET
    review_error: Annotated[str, msgspec.Meta(
        description="why it was not queued: the queue is unavailable, or the API key's review quota "
                    "(NSFW_REVIEW_QUOTA) is spent; the verdict stands")] | msgspec.UnsetType = msgspec.UNSET


class ClassifyResult(Detail, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One image's rich answer in API v1: ``/predict?detail=1``'s fields plus the request's and the client's ids."""

    thresholds: ThresholdsOut  # type: ignore[assignment]
    request_id: str
    id: ClientId


class JobResult(Detail, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A finished job's answer: a video's Detail, with whether the job's own thresholds were used."""

    thresholds: ThresholdsOut  # type: ignore[assignment]


class Error(msgspec.Struct):
    """Every error: a stable ``code``, a message; ``field`` (a JSON path) when the body did not match; other
    details by code (``item``, ``limit``, ``allow``...)."""

    code: str
    message: str
    request_id: Annotated[str, msgspec.Meta(
        description="the request's id, as in the X-Request-ID response header (absent in a batch item's error)"
    )] | msgspec.UnsetType = msgspec.UNSET
    field: str | msgspec.UnsetType = msgspec.UNSET


class BatchResult(msgspec.Struct):
    """One ``/predict/batch`` item: scores and verdict (all of Detail with detail=true), or error."""

    id: ClientId
    url: URLText
    scores: Scores | msgspec.UnsetType = msgspec.UNSET
    verdict: Verdict | msgspec.UnsetType = msgspec.UNSET
    error: Error | msgspec.UnsetType = msgspec.UNSET


class BatchResults(msgspec.Struct, forbid_unknown_fields=True):
    """``/predict/batch``'s answer: one result per item, in order."""

    results: list[BatchResult]


class HealthThresholds(msgspec.Struct):
    adult: float
    safe: float
    adult_classes: list[str]
    safe_classes: list[str]
    version: int | None
    source: str


class Health(msgspec.Struct):
    """``GET /health`` when ready."""

    status: Literal["ok"]
    model: str
    version: str
    runtime: Literal["litert", "tensorflow"]
    thresholds: HealthThresholds
    warnings: list[str]
    batcher: dict[str, Any]
    in_flight: dict[str, int]


class BatchError(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: ClientId
    error: Error


class BatchResponse(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str
    results: list[Any]  # each a ClassifyResult or a BatchError (msgspec unions need tags; the schema says oneOf)


class Review(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A review item's state: ``label`` and ``decided_at`` (UTC ISO 8601) once decided; ``decided_by`` only to
    reviewer and admin keys and in webhook events (never to a client key).  An audit item (``kind`` audit: a
    sampled automatic verdict) never shows the model's verdict."""

    id: Annotated[str, msgspec.Meta(description="the review id (rv_ and 22 URL-safe characters)")]
    status: ReviewStatus
    sha256: str
    created_at: str
    verdict: Annotated[str, msgspec.Meta(
        description="the model's verdict that sent it to review (absent for an audit item: reviewed blind)"
    )] | msgspec.UnsetType = msgspec.UNSET
    kind: Annotated[Literal["review", "audit"], msgspec.Meta(
        description="audit: a random sample of the automatic verdicts (NSFW_AUDIT_RATE); absent: review")] = "review"
    label: str | None = None
    decided_by: Annotated[str | None, msgspec.Meta(
        description="who decided (a reviewer's name or e-mail address, or key:<hex> for a reviewer API key): "
                    "shown to reviewer and admin keys and in webhook events, never to a client key")] = None
    decided_at: str | None = None


class Undone(msgspec.Struct, forbid_unknown_fields=True):
    """The decision an undo took back (``review.undone``): the reviewer's label, never the model's verdict (an
    audit item's undo is as blind as its decision)."""

    label: str | None
    decided_by: str | None
    decided_at: str


class WebhookEvent(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a webhook receives for each decision (``type`` ``review.decided``) and each undo (``review.undone``:
    the item is open again; ``undone`` says what was taken back).

    ``review.id`` is the review id the item's creator got (``rv_...``; another client that sent the same image
    has an id of its own, not shown here).  An audit item (``review.kind`` audit, sampled by the server) is
    blind in both events, as it is to its reviewers: no model verdict, and no ``client_key_id`` (no client
    asked for it).  Under double review, a vote that decides nothing sends no event: ``review.decided`` comes
    when two votes agree or an admin decides a disagreement (``decided_by`` is whoever's vote decided), and
    ``review.undone`` when that decision is taken back."""

    id: str  # the event's id, stable across retries: the receiver's idempotency key
    type: Literal["review.decided", "review.undone"]
    created_at: str
    review: Review
    client_key_id: Annotated[str | None, msgspec.Meta(
        description="the id of the API key whose request queued the image (key: + the first 16 hex digits of the "
                    "key's SHA-256, the creator's like review.id); null without API keys and for an audit item")] = None
    undone: Undone | msgspec.UnsetType = msgspec.UNSET


class VideoSource(msgspec.Struct, forbid_unknown_fields=True):
    """The video, by URL (fetched through the SSRF-safe fetcher, at most NSFW_JOB_MAX_BYTES)."""

    url: URLText


class JobRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /v1/jobs``: a video judged in the background (longer than a request takes: NSFW_MAX_VIDEO_SECONDS)."""

    video: VideoSource
    model: ModelName | None = None
    thresholds: ThresholdsIn | None = None
    id: ClientId = None
    adapter: AdapterFlag = None


class JobProgress(msgspec.Struct, forbid_unknown_fields=True):
    frames_done: Annotated[int, msgspec.Meta(ge=0, description="sampled frames judged so far")]
    frames_total: Annotated[int | None, msgspec.Meta(
        description="sampled frames to judge (null until the video is fetched and its container read)")]


JOB_ID_PATTERN = "^job_[0-9a-f]{32}$"
JobStatus = Literal["queued", "running", "done", "failed"]


class Job(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A video job: its state, its progress, and once done its result (a video's Detail) or once failed its error."""

    id: Annotated[str, msgspec.Meta(pattern=JOB_ID_PATTERN)]
    status: JobStatus
    url: str
    model: str
    client_id: ClientId
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: JobProgress
    result: JobResult | msgspec.UnsetType = msgspec.UNSET
    error: Error | msgspec.UnsetType = msgspec.UNSET


class JobEvent(msgspec.Struct, forbid_unknown_fields=True):
    """What a webhook receives when a job ends (``type`` ``job.completed``; ``job.status`` done or failed): the job
    as GET /v1/jobs/{id} shows it, its result without the per-frame scores (the segments are there)."""

    id: str  # the event's id, stable across retries: the receiver's idempotency key
    type: Literal["job.completed"]
    created_at: str
    client_key_id: Annotated[str | None, msgspec.Meta(
        description="the API key that made the job: key: and 16 hex digits of its SHA-256, as the review "
                    "events say (null without keys)")]
    job: Job



# ---------------------------------------------------------------- the reviewer API and the evaluation (issue 25)

Label = Literal["adult", "safe", "drawings", "hentai", "neutral", "porn", "sexy"]
assert tuple(Label.__args__) == DECISION_LABELS  # type: ignore[attr-defined]


class DecisionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/reviews/{id}/decision``: the reviewer's label."""

    label: Label


class ClaimedImage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The image to review: the bytes that were classified (``base64`` and ``media_type``), or, only for a
    review item queued before URL bytes were kept (issue 29), the ``url`` it was fetched from: what it serves
    now may be another image, so a decision on it is recorded and not remembered for copies.  An audit item
    always comes with its bytes.  Absent fields do not apply."""

    base64: str | msgspec.UnsetType = msgspec.UNSET
    media_type: str | msgspec.UnsetType = msgspec.UNSET
    url: str | msgspec.UnsetType = msgspec.UNSET


class VoteOut(msgspec.Struct, forbid_unknown_fields=True):
    reviewer: str
    label: str


class ClaimedMatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A remembered decision (or hash-list entry) the image looks like to PDQ while the model sees it
    differently, so it did not clear the image (issue 29: a perceptual hash alone never clears): the
    reviewer decides knowing it, as on the Review page.  Shown to reviewer and admin keys only, never to a
    client key, never for an audit item (reviewed blind)."""

    source: Annotated[Literal["review", "list"], msgspec.Meta(
        description="review: a reviewer's remembered decision; list: a hash-list entry")]
    by: Annotated[Literal["pdq", "vpdq"], msgspec.Meta(
        description="pdq: the image's PDQ hash; vpdq: a video's sampled frames, matched as a whole")]
    label: Annotated[str, msgspec.Meta(description="the reviewer's label, or the list's (allow, deny, safe, "
                                                   "adult)")]
    verdict: Literal["adult", "safe"]
    distance: Annotated[int, msgspec.Meta(ge=0, le=256, description="PDQ bits of 256 that differ (a video: the "
                                                                    "median of its matched frames')")]
    review_id: Annotated[str, msgspec.Meta(
        description="the decided item's review id (rv_...), while it is kept (NSFW_REVIEW_RETENTION_DAYS; its "
                    "remembered decision outlives it)")] | msgspec.UnsetType = msgspec.UNSET
    sha256: Annotated[str, msgspec.Meta(
        description="the SHA-256 of the decided image (or the list entry's), when it has one and is still "
                    "remembered")] | msgspec.UnsetType = msgspec.UNSET
    share: Annotated[float, msgspec.Meta(
        ge=0, le=1, description="a video: the share of its sampled frames that matched")] | msgspec.UnsetType = \
        msgspec.UNSET


class ClaimedItem(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A claimed item, held by this key until ``lease_until``.  ``verdict``, ``scores``, ``model`` and
    ``match`` only for a review item: an audit item is reviewed blind.  ``match``: a refused look-alike's
    (present only when there is one).  ``votes``: the two labels of a disagreement (admins)."""

    id: Annotated[str, msgspec.Meta(description="the item's review id (rv_ and 22 URL-safe characters), for "
                                                "/v1/reviews/{id}/decision")]
    kind: Literal["review", "audit"]
    source: str
    created_at: str
    lease_until: str
    image: ClaimedImage | None
    verdict: Verdict | msgspec.UnsetType = msgspec.UNSET
    scores: Scores | msgspec.UnsetType = msgspec.UNSET
    model: str | msgspec.UnsetType = msgspec.UNSET
    match: ClaimedMatch | msgspec.UnsetType = msgspec.UNSET
    escalated: bool = False
    votes: list[VoteOut] | msgspec.UnsetType = msgspec.UNSET


class Claim(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/reviews/claim`` and ``/v1/reviews/undo``: the item now held, or null (nothing to review, or
    nothing to undo)."""

    item: ClaimedItem | None


class DecisionResult(msgspec.Struct, forbid_unknown_fields=True):
    """What a decision did: ``decided``; ``second_review`` (double review: another reviewer decides too);
    ``escalated`` (the two reviewers disagreed: an admin decides)."""

    outcome: Literal["decided", "second_review", "escalated"]
    review: Review


Interval = Annotated[list[float | None], msgspec.Meta(min_length=2, max_length=2)]


class PerDay(msgspec.Struct, forbid_unknown_fields=True):
    estimate: float | None
    ci95: Interval


class AutomaticOut(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One automatic verdict's audit: ``overturned`` of ``audited`` items a reviewer labelled otherwise, the
    estimated ``precision`` and its 95 % interval (null without audited items)."""

    audited: int
    overturned: int
    precision: float | None
    ci95: Interval | None
    effective_sample: float
    pending: int
    audit_rate: float
    decisions: int
    decisions_per_day: float | None
    wrong_per_day: PerDay | None
    note: str | msgspec.UnsetType = msgspec.UNSET


class Evaluation(msgspec.Struct, forbid_unknown_fields=True):
    """``GET /v1/evaluation``: how the automatic decisions fare in production (docs/review.md).  Figures without
    data are null; ``missing`` says what is missing and how to get it."""

    window: dict[str, Any]
    sampling: dict[str, Any]
    automatic: dict[str, AutomaticOut]
    wrong_per_day: dict[str, Any] | None
    unknown: dict[str, Any]
    agreement: dict[str, Any]
    daily: list[dict[str, Any]]
    drift: dict[str, Any]
    missing: list[str]



# ---------------------------------------------------------------- POST /v1/explain (issue 30)

ClassName = Literal["drawings", "hentai", "neutral", "porn", "sexy"]
assert tuple(ClassName.__args__) == CLASS_NAMES  # type: ignore[attr-defined]
HeatMap = Annotated[list[list[float]], msgspec.Meta(
    description="rows x cols cells, top row first: how much the class's log-odds fall (nats) when the cell is "
                "hidden; positive = evidence for the class, negative = evidence against it")]


class ExplainRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /v1/explain`` as JSON (the image bytes as the body work too)."""

    image: Image
    model: ModelName | None = None
    class_: Annotated[ClassName | None, msgspec.Meta(
        description="the class whose map ?format=png draws (default: the deciding class)")] = \
        msgspec.field(default=None, name="class")
    id: ClientId = None


class ExplainMethod(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[Literal["occlusion"], msgspec.Meta(
        description="each cell hidden in turn (one forward pass each) and the fall of each class's log-odds")]
    fill: Annotated[str, msgspec.Meta(description="what a hidden cell is painted in: the image's median colour")]
    units: str


class Grid(msgspec.Struct, forbid_unknown_fields=True):
    rows: Annotated[int, msgspec.Meta(ge=1)]
    cols: Annotated[int, msgspec.Meta(ge=1)]


class HeatMaps(msgspec.Struct, forbid_unknown_fields=True):
    drawings: HeatMap
    hentai: HeatMap
    neutral: HeatMap
    porn: HeatMap
    sexy: HeatMap


class ExplainResult(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Where the model found each class: its scores and a heat-map per class over a grid of cells."""

    request_id: str
    id: ClientId
    model: ModelOut
    scores: Scores
    method: ExplainMethod
    grid: Grid
    passes: Annotated[int, msgspec.Meta(ge=1, description="forward passes the explanation took (its cost in images)")]
    heatmaps: HeatMaps
    class_: Annotated[ClassName, msgspec.Meta(
        description="the deciding class: the highest-scoring adult class when the model's verdict under the "
                    "thresholds in force is adult or unknown, else the highest-scoring safe class (or the "
                    "requested one)")] = msgspec.field(name="class")
    frame: Annotated[int, msgspec.Meta(
        ge=0, description="an animation's: the frame explained, its deciding frame")] | msgspec.UnsetType = \
        msgspec.UNSET
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    timings: TimingsOut


REQUESTS: tuple[type, ...] = (ClassifyRequest, BatchRequest, DecisionRequest, JobRequest, ExplainRequest)
RESPONSES: tuple[type, ...] = (ClassifyResult, BatchError, BatchResponse, Review, WebhookEvent, Error, Claim,
                               DecisionResult, Evaluation, Job, JobEvent, ExplainResult)


# ---------------------------------------------------------------- validation

_PATH = re.compile(r" - at `(\$[^`]*)`$")


def decode(raw: bytes, model: type[T]) -> T:
    """``raw`` JSON as ``model``, strictly; :class:`ContractError` naming the field otherwise."""
    try:
        return msgspec.json.decode(raw, type=model, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _PATH.search(text)
        field = found.group(1) if found else "$"
        message = text[:found.start()] if found else text
        raise ContractError(f"{message} at {field}", field=field) from None
    except msgspec.DecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:  # msgspec raises it, not DecodeError, for invalid UTF-8 inside a string
        raise InvalidJSON("the body is not valid JSON: it is not UTF-8 text") from None


def check_id(ident: Any, field: str) -> None:
    """A string id must be valid Unicode (no lone surrogate), or the answer could not carry it."""
    if isinstance(ident, str):
        try:
            ident.encode("utf-8")
        except UnicodeEncodeError:
            raise ContractError(f"{field} is not valid Unicode (a lone surrogate)", field=field) from None


def base64_cap(max_bytes: int) -> int:
    """The longest base64 text (without whitespace) of ``max_bytes`` bytes."""
    return 4 * ((max_bytes + 2) // 3)


def base64_text_cap(max_bytes: int) -> int:
    """What a base64 string may take with line breaks (76-character lines, CRLF) before it is refused."""
    cap = base64_cap(max_bytes)
    return cap + 2 * (cap // 76 + 1)


BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_B64_WS = re.compile(r"[ \t\r\n]+")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def image_bytes(text: str, max_bytes: int, field: str) -> bytes:
    """Decode a base64 image under the byte cap: the length is checked first, before anything is decoded.

    Standard alphabet, padding required, ASCII whitespace ignored; anything else is 400 ``invalid_base64``.
    """
    if len(text) > base64_text_cap(max_bytes):
        raise TooLarge(f"{field} is {len(text)} characters of base64; the image limit is {max_bytes} bytes",
                       limit=max_bytes, field=field)
    compact = _B64_WS.sub("", text)
    if len(compact) > base64_cap(max_bytes):
        raise TooLarge(f"{field} holds more than {max_bytes} bytes", limit=max_bytes, field=field)
    if not compact:
        raise InvalidBase64(f"{field} is empty", field=field)
    if len(compact) % 4 or not _B64.match(compact):
        raise InvalidBase64(f"{field} is not valid base64 (standard alphabet, padded to a multiple of 4)",
                            field=field)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"{field} is not valid base64", field=field) from None
    if len(data) > max_bytes:
        raise TooLarge(f"{field} is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes, field=field)
    if not data:
        raise InvalidBase64(f"{field} decodes to no bytes", field=field)
    return data


def check_image(image: Image, field: str) -> None:
    """Exactly one of url and base64."""
    if (image.url is None) == (image.base64 is None):
        raise ContractError(f'{field} needs exactly one of "url" and "base64"', field=field)
    if image.url is not None:
        check_id(image.url, f"{field}.url")


# ---------------------------------------------------------------- the original API's batch

class PredictBatchItem(msgspec.Struct):
    """One item of ``/predict/batch``: an image URL and the client's id (other fields are ignored)."""

    url: URLText
    id: ClientId = None


class PredictBatch(msgspec.Struct):
    """``/predict/batch``'s object form; ``detail`` overrides the ``?detail=`` query flag when given."""

    items: list[PredictBatchItem | URLText]
    detail: bool | msgspec.UnsetType = msgspec.UNSET


PredictBatchBody = PredictBatch | list[PredictBatchItem | URLText]
ID_RULE = f"a string of at most {MAX_ID_LENGTH} characters or a number between -{MAX_ID_NUMBER} and {MAX_ID_NUMBER}"
URL_RULE = "a non-empty URL string (or an object with one)"
BATCH_SHAPE = 'expected {"items": [{"id": ..., "url": ...}, ...]} or a list of URLs'


def decode_predict_batch(raw: bytes, max_items: int) -> tuple[list[tuple[Any, str]], bool | None]:
    """A ``/predict/batch`` body -> ([(id, url), ...], detail or None when the body does not say).

    The whole body is checked before any work starts, so nothing the answer echoes back (ids and
    urls) can fail to encode after the images were classified.  A body that does not match is 400
    ``bad_request`` with the first bad item's index in ``item``; over ``max_items`` is 413.
    """
    try:
        body = msgspec.json.decode(raw, type=PredictBatchBody, strict=True)
    except RecursionError:
        raise BadRequest("the body is JSON nested too deep") from None
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _explain_batch(raw, exc, max_items) from None
    items = body.items if isinstance(body, PredictBatch) else body
    if len(items) > max_items:
        raise TooManyItems(f"{len(items)} items; at most {max_items} per request", limit=max_items)
    pairs = [(item.id, item.url) if isinstance(item, PredictBatchItem) else (None, item) for item in items]
    detail = body.detail if isinstance(body, PredictBatch) and isinstance(body.detail, bool) else None
    return pairs, detail


def _explain_batch(raw: bytes, exc: Exception, max_items: int) -> InputError:
    """The error for a batch body the contract refused, in the words clients have always read.

    msgspec names the path of what did not match; the body read by Python's lenient JSON parser gives
    the value there.  Bodies strict JSON refuses but Python reads (NaN, lone surrogates) are walked for
    the value the contract could not take.
    """
    try:
        doc = json.loads(raw)
    except RecursionError:
        return BadRequest("the body is JSON nested too deep")
    except json.JSONDecodeError as err:
        return BadRequest(f"the body is not valid JSON: {err}")
    except UnicodeDecodeError:
        return BadRequest("the body is not valid JSON: it is not UTF-8 text")
    except ValueError:  # an integer literal longer than Python converts
        return BadRequest("the body is not valid JSON we accept: a number in it is too long")
    found = _PATH.search(str(exc))
    path = found.group(1) if found else "$"
    if isinstance(doc, dict):
        if "items" not in doc:
            return BadRequest('the body needs an "items" list')
        if "detail" in doc and not isinstance(doc["detail"], bool):
            return BadRequest('"detail" must be true or false')
        items = doc["items"]
    else:
        items = doc
    if not isinstance(items, list):
        return BadRequest(BATCH_SHAPE)
    if len(items) > max_items:
        return TooManyItems(f"{len(items)} items; at most {max_items} per request", limit=max_items)
    index = re.search(r"\[(\d+)\]", path)
    if index is None:  # strict JSON refused a value Python reads: find the first item holding one
        index_n = next((i for i, item in enumerate(items) if not _strict_json(item)), None)
        if index_n is None:
            return BadRequest(f"the body does not match: {exc}")
        return _explain_item(index_n, items[index_n], None)
    i = int(index.group(1))
    field = path.rsplit(".", 1)[1] if path.endswith((".id", ".url")) else None
    return _explain_item(i, items[i], field)


def _explain_item(index: int, item: Any, field: str | None) -> BadRequest:
    where = f"items[{index}]"
    if isinstance(item, dict):
        ident, url = item.get("id"), item.get("url")
        if field == "id" or (field is None and not _strict_json(ident)):
            return BadRequest(f"{where}.id must be {ID_RULE}, got {_kind(ident)}", item=index)
        if "url" not in item:
            return BadRequest(f'{where} needs a "url"', item=index)
        where += ".url"
    else:
        url = item
    if isinstance(url, str) and url and not _strict_json(url):
        return BadRequest(f"{where} has a URL that is not valid Unicode (a lone surrogate)", item=index)
    what = "an empty string" if url == "" else "a number" if isinstance(url, (int, float)) \
        and not isinstance(url, bool) and math.isfinite(url) else _kind(url)
    return BadRequest(f"{where} must be {URL_RULE}, got {what}", item=index)


def _strict_json(value: Any) -> bool:
    """False for what strict JSON cannot carry: non-finite numbers, strings with lone surrogates (nested too)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_strict_json(v) for v in value)
    if isinstance(value, dict):
        return all(_strict_json(k) and _strict_json(v) for k, v in value.items())
    return True


def _kind(value: Any) -> str:
    """A short description of a JSON value for error messages (never the value itself: it may be huge)."""
    if isinstance(value, str):
        if len(value) > MAX_ID_LENGTH:
            return f"a string of {len(value)} characters"
        return "a string that is not valid Unicode"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    if isinstance(value, (int, float)):
        return "a number out of range"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


# ---------------------------------------------------------------- OpenAPI


def schemas(*, max_bytes: int, max_url_length: int, max_batch_items: int) -> dict[str, Any]:
    """The ``components/schemas`` of API v1's requests and answers, generated from the models, with these limits."""
    _, components = msgspec.json.schema_components(REQUESTS + RESPONSES, ref_template=REF_TEMPLATE)
    return schema_limits(components, max_bytes=max_bytes, max_url_length=max_url_length,
                         max_batch_items=max_batch_items)


def schema_limits(components: dict[str, Any], *, max_bytes: int, max_url_length: int,
                  max_batch_items: int) -> dict[str, Any]:
    """Generated ``components`` with what the structs cannot say filled in: the limits that are settings, and
    the rules checked in code (exactly one of url and base64; the batch item forms)."""
    image = components["Image"]
    image["properties"]["url"]["anyOf"][0]["maxLength"] = max_url_length
    b64 = image["properties"]["base64"]["anyOf"][0]
    b64["maxLength"] = base64_text_cap(max_bytes)
    # the documented form: no whitespace (the API also accepts ASCII whitespace and line breaks)
    b64["pattern"] = BASE64_PATTERN
    b64["minLength"] = 4
    image["oneOf"] = [{"required": ["url"], "properties": {"url": {"type": "string"}}},
                      {"required": ["base64"], "properties": {"base64": {"type": "string"}}}]
    image["minProperties"] = 1
    image["maxProperties"] = 1
    image["description"] = (image.get("description", "") + f" At most {max_bytes} bytes (NSFW_MAX_BYTES).").strip()
    components["BatchResponse"]["properties"]["results"]["items"] = {
        "oneOf": [{"$ref": REF_TEMPLATE.format(name="ClassifyResult")},
                  {"$ref": REF_TEMPLATE.format(name="BatchError")}]}
    components["BatchRequest"]["properties"]["items"]["maxItems"] = max_batch_items
    components["BatchRequest"]["properties"]["items"]["minItems"] = 1
    if "PredictBatch" in components:
        components["PredictBatch"]["properties"]["items"]["maxItems"] = max_batch_items
    id_text = (f"the client's id, echoed back: a string of at most {MAX_ID_LENGTH} characters or a number within "
               f"+-{MAX_ID_NUMBER}")
    for name in ("ClassifyRequest", "BatchItem", "BatchError", "ClassifyResult", "PredictBatchItem", "BatchResult",
                 "ExplainRequest", "ExplainResult"):
        props = components.get(name, {}).get("properties", {})
        if "id" in props:
            props["id"]["description"] = id_text
    return components
