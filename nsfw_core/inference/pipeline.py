"""bytes -> decoded RGB -> model input -> scores: the steps every front end shares.

The API, the CLI and the pages all decode through one :class:`Decoder` (the process
context holds it), so the pixel and byte limits, the pixel budget, the isolated lane
for expensive images and preprocessing are the same everywhere.  The API splits the
work in two (:meth:`Decoder.plan` and a prepare step in a worker thread, the forward
pass in the micro-batcher); the CLI and the pages use :func:`score_sources`, which
batches by itself.  Turning scores into a verdict is :mod:`nsfw_core.classify`'s job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from nsfw_core.base.errors import InvalidURL, NotAnImage, NSFWError, TooLarge, UndecodableImage
from nsfw_core.base.files import FileTooLarge, read_regular_file
from nsfw_core.base.settings import DecodeLimits, FetchPolicy
from nsfw_core.images import decode as _decode
from nsfw_core.images import video as _video
from nsfw_core.images.fetch import ConnectionPool, fetch, is_url
from nsfw_core.images.frames import FrameRef, sample
from nsfw_core.images.phash import query_hash
from nsfw_core.images.sandbox import Sandbox, VideoReply, VideoStream, thumbnail
from nsfw_core.images.sniff import sniff_video
from nsfw_core.inference.model import Model, scores_dict

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".mp4", ".mov", ".webm",
                  ".mkv")
# JPEG draft decoding keeps the shorter side at least this many times the model's
# input. nsfwjs's align_corners resize point-samples the full image, so a smaller
# draft (which box-filters) moves borderline images (BENCHMARKS.md, "Figures that used to sit
# in code comments").
DRAFT_FACTOR = 4
# Most of NSFW_DECODE_PIXEL_BUDGET one expensive (isolated) decode may hold, so that cheap
# images never wait behind it (RELIABILITY.md, "hostile images").
ISOLATED_SHARE = 0.75
# Sampled frames whose model inputs differ by less than this (mean absolute difference, inputs in
# [0, 1]) from the frame kept before them are not classified: the same picture, held longer.
NEAR_IDENTICAL = 2.0 / 255
# A video's decoded frames taken off the decoding child's pipe ahead of the model (600 KB each at 224 x 224).
PREFETCH = 32


@dataclasses.dataclass(frozen=True)
class FrameInputs:
    """An animation's sampled frames as model inputs, ``(k, S, S, 3)``, with each one's index and time;
    a video's (``video``: what its container declares and its real duration, :class:`VideoInfo`)."""

    inputs: np.ndarray
    refs: tuple[FrameRef, ...]
    video: VideoInfo | None = None
    thumbs: np.ndarray | None = None  # (k, side, side, 3) uint8 when asked for

    def __len__(self) -> int:
        return len(self.refs)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """A video as its container declares it, and what its packets really cover."""

    container: str
    codec: str
    width: int
    height: int
    duration_ms: int  # what the frames cover
    frames: int  # the video stream's frames (packets)
    keyframes: int
    decoded: int  # frames fed to the decoder (the groups of pictures holding a sampled frame)
    samples: tuple[tuple[int, int], ...] = ()  # (index, time_ms) of each frame planned
    decoded_bytes: int = 0  # the bytes of the frames fed to the decoder

    @classmethod
    def of(cls, meta: dict[str, Any]) -> VideoInfo:
        return cls(str(meta["container"]), str(meta["codec"]), int(meta["width"]), int(meta["height"]),
                   int(meta["duration_ms"]), int(meta["packets"]), int(meta["keyframes"]), int(meta["decoded"]),
                   tuple((int(i), int(t)) for i, t in meta.get("samples", ())), int(meta.get("decoded_bytes", 0)))

    def to_dict(self) -> dict[str, Any]:
        return {"container": self.container, "codec": self.codec, "width": self.width, "height": self.height,
                "duration_ms": self.duration_ms, "frames": self.frames}


class VideoDecode:
    """One video being decoded in the isolated lane, frames handed out as they come (see :meth:`Decoder.video`).

    :meth:`start` reads what the container declares and the plan (the video's info), then holds the video's
    share of the pixel budget and starts a reader thread that takes the decoded frames off the child's pipe
    into a queue of at most :data:`PREFETCH` frames, so the child decodes while the model judges the frames
    already out; :meth:`take` returns the next ones.  Close it (``with``) to stop (the child is killed if it
    is mid-stream).
    """

    def __init__(self, decoder: Decoder, replies: VideoStream, budget_pixels: Callable[[VideoInfo], int],
                 size: int) -> None:
        self._decoder = decoder
        self.size = size
        self._replies = replies
        self._budget_pixels = budget_pixels
        self._stack = contextlib.ExitStack()
        self._stack.callback(replies.close)
        self._queue: queue.Queue[VideoReply | BaseException | None] = queue.Queue(PREFETCH)
        self._reader: threading.Thread | None = None
        self._closed = threading.Event()
        self.info: VideoInfo | None = None
        self.done = False

    def __enter__(self) -> VideoDecode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        if self._reader is not None:
            self._replies.interrupt()  # a child mid-stream is killed: the reader blocked on its pipe gets EOF
            while self._reader.is_alive():  # and one waiting for room in the queue gets it
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
            self._reader.join()
        self._stack.close()  # the pipes and the slot, once no thread reads them

    def start(self) -> VideoInfo:
        """Blocking: the video's :class:`VideoInfo` (raises the core's typed errors, 413 before decoding)."""
        first = next(self._replies, None)
        if first is None or first.kind != "info":
            raise UndecodableImage("the isolated decoder sent back a malformed result")
        self.info = VideoInfo.of(first.meta)
        self._stack.enter_context(self._decoder.budget.hold(self._budget_pixels(self.info), share=ISOLATED_SHARE))
        self._reader = threading.Thread(target=self._read, name="nsfw-video-reader", daemon=True)
        self._reader.start()
        return self.info

    def _read(self) -> None:
        try:
            for reply in self._replies:
                if self._closed.is_set():
                    return
                self._queue.put(reply)
            self._queue.put(None)
        except BaseException as exc:  # a typed error, a deadline, a killed child: the taker raises it
            if not self._closed.is_set():
                self._queue.put(exc)

    def take(self, limit: int | None = None) -> FrameInputs:
        """Blocking: the next decoded frames (all that are left without ``limit``), possibly none at the end."""
        assert self.info is not None, "start() first"
        xs: list[np.ndarray] = []
        thumbs: list[np.ndarray] = []
        refs: list[FrameRef] = []
        while not self.done and (limit is None or len(refs) < limit):
            reply = self._queue.get()
            if reply is None:
                self.done = True
                break
            if isinstance(reply, BaseException):
                self.done = True
                raise reply
            assert reply.x is not None
            xs.append(reply.x)
            if reply.thumb is not None:
                thumbs.append(reply.thumb)
            refs.append(FrameRef(int(reply.meta["index"]), int(reply.meta["time_ms"])))
        inputs = np.stack(xs) if xs else np.zeros((0, self.size, self.size, 3), np.float32)
        return FrameInputs(inputs, tuple(refs), self.info, np.stack(thumbs) if thumbs else None)


def distinct_frames(inputs: np.ndarray, refs: tuple[FrameRef, ...]) -> FrameInputs:
    """Drop each frame that is near-identical to the frame kept before it (the first is always kept)."""
    keep = [0]
    for i in range(1, len(refs)):
        if float(np.abs(inputs[i] - inputs[keep[-1]]).mean()) >= NEAR_IDENTICAL:
            keep.append(i)
    return FrameInputs(np.ascontiguousarray(inputs[keep]), tuple(refs[i] for i in keep))


# ---------------------------------------------------------------- reading sources


def read_file(path: str | Path, max_bytes: int) -> bytes:
    """Read a local image file, applying the same byte cap as uploads.

    Only a regular file is read, and never more than ``max_bytes + 1`` bytes of it
    (:func:`~nsfw_core.base.files.read_regular_file`): ``/dev/zero`` is refused rather than read
    without end, a FIFO is refused rather than waited on.  Callers that take paths from
    someone other than the local user confine them first (the labelled sets:
    :func:`nsfw_core.calibration.labelsets.item_loader`).
    """
    path = Path(path)
    try:
        return read_regular_file(path, max_bytes)
    except FileTooLarge as exc:
        raise TooLarge(f"{path} is larger than the limit of {max_bytes} bytes", limit=max_bytes) from exc
    except OSError as exc:
        raise InvalidURL(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_bytes(source: str, policy: FetchPolicy, pool: ConnectionPool | None = None) -> bytes:
    """The bytes of a URL (through the safe fetcher) or of a local file (CLI and labelled sets); a video may
    take ``policy.max_video_bytes``, an image ``policy.max_bytes``."""
    if is_url(source):
        return fetch(source, policy, pool=pool).content
    cap = max(policy.max_bytes, policy.max_video_bytes)
    try:
        data = read_file(source, cap)
    except TooLarge as exc:  # past both caps: say both (what the file is was not read)
        if cap == policy.max_bytes:
            raise
        raise TooLarge(f"{source} is larger than the limit of {cap} bytes for a video ({policy.max_bytes} for an "
                       "image)", limit=cap) from exc
    if len(data) > policy.max_bytes and sniff_video(data) is None:
        raise TooLarge(f"{source} is larger than the limit of {policy.max_bytes} bytes", limit=policy.max_bytes)
    return data


def iter_sources(inputs: Iterable[str]) -> list[str]:
    """Expand folders (recursively, image suffixes only, sorted); keep files and URLs as given."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if not is_url(item) and path.is_dir():
            out.extend(str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(item)
    return out


# ---------------------------------------------------------------- decoding under limits


class PixelBudget:
    """A weighted semaphore on pixels being decoded at once, so memory stays bounded.

    A 50-megapixel image needs several hundred MB while it is decoded; eight
    worker threads decoding such images together would need gigabytes.  Each
    decode holds its header's pixel count (capped at the budget, so one image
    always fits) until it is done; small images share the budget freely.
    """

    def __init__(self, pixels: int) -> None:
        self.capacity = pixels
        self.free = pixels
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, *, share: float = 1.0) -> Iterator[None]:
        """Hold ``pixels`` of the budget, capped at ``share`` of it (so one image always fits).

        Expensive images (the isolated lane) hold at most :data:`ISOLATED_SHARE`: whatever
        they decode, the rest stays free for cheap images, which never wait behind them.
        """
        need = max(1, min(pixels, int(self.capacity * share)))
        with self._cond:
            self._cond.wait_for(lambda: self.free >= need)
            self.free -= need
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


class Decoder:
    """Decoding under :class:`DecodeLimits`: one pixel budget and one isolated lane.

    The process context holds one, shared by the API's workers, the pages and the CLI.
    Every method reads the headers first (cheap, and it applies the limits: 413/415/422
    before anything is decoded); a cheap image then decodes in the calling thread, an
    expensive one in the isolated lane (:class:`~nsfw_core.images.sandbox.Sandbox`).
    """

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.budget = PixelBudget(limits.pixel_budget)
        self.sandbox = Sandbox(limits.processes, limits.timeout)
        self._seed_key = os.urandom(16)

    def close(self) -> None:
        """Stop the isolated lane's processes."""
        self.sandbox.close()

    def draft_size(self, model: Model) -> int | None:
        """The shorter side a large JPEG is drafted to for ``model`` (None: no drafting)."""
        return model.input_size * DRAFT_FACTOR if self.limits.jpeg_draft else None

    def _kwargs(self, draft_size: int | None) -> dict[str, Any]:
        return {"max_pixels": self.limits.max_pixels, "max_scans": self.limits.max_jpeg_scans,
                "draft_size": draft_size}

    def plan(self, model: Model, data: bytes) -> _decode.Plan:
        """Read the headers and apply every limit (413/415/422) before anything is decoded."""
        return _decode.plan(data, **self._kwargs(self.draft_size(model)))

    def decode_for(self, model: Model, data: bytes) -> np.ndarray:
        """Decode as ``model`` would see it before resizing (for display); see :meth:`preview`."""
        return self.preview(data, self.draft_size(model))

    def preview(self, data: bytes, draft_size: int | None) -> np.ndarray:
        """Decode for display, JPEGs drafted to ``draft_size``.

        The decode waits for its cost's share of the pixel budget.  An expensive image
        decodes in the isolated lane, whose answer is at most ``PREVIEW_SIDE`` pixels a side.
        """
        kwargs = self._kwargs(draft_size)
        plan = _decode.plan(data, **kwargs)
        share = 1.0 if plan.cost.inline else ISOLATED_SHARE
        with self.budget.hold(plan.cost.pixels, share=share):
            if plan.cost.inline:
                return _decode.decode(data, **kwargs)
            return self.sandbox.decode(data, limits=kwargs, cost_pixels=plan.cost.pixels)

    def sampled(self, plan: _decode.Plan) -> tuple[FrameRef, ...] | None:
        """The frames of an animation to classify (at most NSFW_MAX_FRAMES); None for a still image."""
        return sample(plan.timeline, self.limits.max_frames) if plan.timeline is not None else None

    def prepare_inline(self, model: Model, data: bytes, plan: _decode.Plan) -> np.ndarray | FrameInputs:
        """Decode a cheap image (``plan.cost.inline``) in this thread and preprocess it.

        An animation gives :class:`FrameInputs`: its sampled frames, near-identical ones dropped.
        """
        kwargs = self._kwargs(self.draft_size(model))
        refs = self.sampled(plan)
        if refs is not None:
            with self.budget.hold(plan.cost.pixels):
                inputs = np.stack(_decode.decode_frames(data, tuple(r.index for r in refs), each=model.preprocess,
                                                        **kwargs))
            return distinct_frames(inputs, refs)
        with self.budget.hold(plan.cost.pixels):
            rgb = _decode.decode(data, **kwargs)
        return model.preprocess(rgb)

    def prepare_isolated(self, model: Model, data: bytes, plan: _decode.Plan) -> np.ndarray | FrameInputs:
        """Decode and preprocess an expensive image in the isolated lane, under NSFW_DECODE_TIMEOUT."""
        refs = self.sampled(plan)
        with self.budget.hold(plan.cost.pixels, share=ISOLATED_SHARE):
            out = self.sandbox.prepare(data, size=model.input_size, limits=self._kwargs(self.draft_size(model)),
                                       cost_pixels=plan.cost.pixels,
                                       frames=None if refs is None else tuple(r.index for r in refs))
        return out if refs is None else distinct_frames(out, refs)

    def thumbnails(self, data: bytes, refs: tuple[FrameRef, ...], side: int) -> np.ndarray:
        """Frames ``refs`` of an animation as (k, side, side, 3) uint8 thumbnails (the classify page's strip)."""
        kwargs = self._kwargs(None)
        plan = _decode.plan(data, **kwargs)
        indices = tuple(r.index for r in refs)
        share = 1.0 if plan.cost.inline else ISOLATED_SHARE
        with self.budget.hold(plan.cost.pixels, share=share):
            if plan.cost.inline:
                return np.stack(_decode.decode_frames(data, indices, each=lambda rgb: thumbnail(rgb, side), **kwargs))
            return self.sandbox.thumbnails(data, side=side, frames=indices, limits=kwargs,
                                           cost_pixels=plan.cost.pixels)

    def video(self, model: Model, data: bytes, *, synchronous: bool = True, seed: int | None = None,
              skip: int = 0, thumbs: int = 0, fps: float | None = None, max_frames: int | None = None,
              at_ms: int | None = None) -> VideoDecode:
        """A video (``data``; :func:`~nsfw_core.images.sniff.sniff_video` names its container) to decode in
        the isolated lane, sampled at NSFW_VIDEO_FPS (at most NSFW_MAX_VIDEO_FRAMES frames).

        ``synchronous``: a request's video, at most NSFW_MAX_VIDEO_SECONDS long (413 video_too_long beyond)
        and decoded within NSFW_VIDEO_TIMEOUT in all; otherwise a job's, each frame within it.  ``seed`` picks
        the sample instants (the same seed, the same frames: a job keeps its own); by default one drawn from
        the bytes and this process's key.  ``skip``: frames already judged (a job resumed).  ``thumbs``: the
        side of a thumbnail sent back with each frame (0: none).  ``fps`` and ``max_frames``: a job's own
        sampling (fixed when it was created), instead of the settings'.  ``at_ms``: only the frame shown then
        (:meth:`video_frame`).
        """
        container = sniff_video(data)
        if container is None:
            raise NotAnImage("not a video: the bytes are not an MP4, MOV, WebM or MKV file")
        limits = self.limits
        request = {"container": container, "max_pixels": limits.max_video_pixels,
                   "fps": limits.video_fps if fps is None else fps,
                   "max_frames": limits.max_video_frames if max_frames is None else max_frames,
                   "seed": self.seed_for(data) if seed is None else seed,
                   "max_ms": int(limits.max_video_seconds * 1000) if synchronous else None, "skip": skip,
                   "size": model.input_size, "thumb": thumbs, "at_ms": at_ms}
        replies = self.sandbox.video(data, request, timeout=limits.video_timeout,
                                     total=limits.video_timeout if synchronous or at_ms is not None else None)
        return VideoDecode(self, replies, lambda info: info.width * info.height * _video.BUDGET_PER_PIXEL,
                           model.input_size)

    def video_frame(self, model: Model, data: bytes, at_ms: int) -> tuple[FrameRef, np.ndarray]:
        """The model input of the one frame of a video shown at ``at_ms`` (a review item's deciding frame) and its
        index and time: decoded alone in the isolated lane (the group of pictures that holds it, nothing else),
        within NSFW_VIDEO_TIMEOUT in all and the video's share of the pixel budget, whatever the video's length
        (its packets are indexed, not decoded).  Raises the core's typed errors."""
        with self.video(model, data, synchronous=False, at_ms=int(at_ms)) as decode:
            decode.start()
            found = decode.take(1)
        if not len(found):
            raise UndecodableImage("the video's frame could not be decoded", format="video")
        return found.refs[0], np.asarray(found.inputs[0])

    def seed_for(self, data: bytes) -> int:
        """The sample instants' seed for ``data``: the same bytes, the same frames in this process; unknown
        to a sender (a key drawn when the process started), so no sender can place content between them."""
        digest = hashlib.blake2b(data, key=self._seed_key, digest_size=8).digest()
        return int.from_bytes(digest, "little") & ((1 << 62) - 1)

    def prepare(self, model: Model, data: bytes, *, long_videos: bool = False) -> np.ndarray | FrameInputs:
        """bytes -> the (S, S, 3) float32 model input, or an animation's :class:`FrameInputs`, or a video's
        (under NSFW_MAX_VIDEO_SECONDS unless ``long_videos``: the command line's own files, each frame then
        within NSFW_VIDEO_TIMEOUT).  Raises the core's typed errors."""
        if sniff_video(data) is not None:
            with self.video(model, data, synchronous=not long_videos) as decode:
                decode.start()
                return decode.take()
        plan = self.plan(model, data)
        if plan.cost.inline:
            return self.prepare_inline(model, data, plan)
        return self.prepare_isolated(model, data, plan)


# ---------------------------------------------------------------- scoring many sources


DEFAULT_ADULT_CLASSES = ("porn", "sexy")  # the settings' default: a Scored's summary scores for an animation


def worst_frame(frames: Sequence[tuple[FrameRef, dict[str, float]]],
                adult_classes: Sequence[str]) -> tuple[FrameRef, dict[str, float]]:
    """The frame with the highest adult score (the sum of ``adult_classes``); the earliest on a tie."""
    return max(frames, key=lambda f: (sum(f[1][c] for c in adult_classes), -f[0].index))


@dataclasses.dataclass
class Scored:
    """The model's scores for one source, or the error that stopped it, with its timings."""

    source: str
    scores: dict[str, float] | None = None
    error: NSFWError | None = None
    sha256: str | None = None
    load_s: float = 0.0  # reading or fetching the bytes
    decode_s: float = 0.0  # headers, decode and preprocessing
    inference_s: float = 0.0  # the forward pass of this source's batch
    seconds: float = 0.0  # all of it
    frames: list[tuple[FrameRef, dict[str, float]]] | None = None  # an animation's sampled frames and scores
    phash: bytes | None = None  # a still image's PDQ hash (``perceptual``), to look it up among known images
    # The embedding from the same forward pass (nsfw_core.inference.embeddings): a still image's (D,), an
    # animation's worst frame's; ``frame_embeddings``: an animation's (k, D), one row per frame in ``frames``.
    embedding: np.ndarray | None = dataclasses.field(default=None, repr=False)
    frame_embeddings: np.ndarray | None = dataclasses.field(default=None, repr=False)
    video: VideoInfo | None = None  # a video's container, size and duration
    frame_hashes: tuple[bytes | None, ...] | None = None  # a video's frames' PDQ hashes (``perceptual``)

    @property
    def ok(self) -> bool:
        return self.error is None


def score_sources(
    model: Model,
    sources: Sequence[str],
    decoder: Decoder,
    loader: Callable[[str], bytes],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    perceptual: bool = False,
    embeddings: bool = False,
    long_videos: bool = False,
) -> list[Scored]:
    """Score paths, URLs or keys (whatever ``loader`` reads) in batches; one :class:`Scored`
    per source, in order, errors per item.  ``perceptual``: also hash each still image's model input
    (:func:`nsfw_core.images.phash.query_hash`; the Classify page and the CLI look images up among the known ones,
    the calibration page does not).  ``embeddings``: also keep each image's embedding from the same forward
    pass (``Model.predict_with_embeddings``: adapters, example sets).  ``long_videos``: videos of any length
    (the command line), not only what a request takes."""
    both = getattr(model, "predict_with_embeddings", None) if embeddings else None
    results: list[Scored] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        prepared: list[tuple[Scored, np.ndarray | FrameInputs, float]] = []
        for source in chunk:
            t0 = time.perf_counter()
            result = Scored(source)
            try:
                data = loader(source)
                t1 = time.perf_counter()
                result.load_s = t1 - t0
                result.sha256 = hashlib.sha256(data).hexdigest()
                x = decoder.prepare(model, data, long_videos=long_videos)
                if perceptual and isinstance(x, np.ndarray):
                    result.phash = query_hash(x)
                if isinstance(x, FrameInputs) and x.video is not None:
                    result.video = x.video
                    if perceptual:
                        result.frame_hashes = tuple(query_hash(f) for f in x.inputs)
                result.decode_s = time.perf_counter() - t1
                prepared.append((result, x, t0))
            except NSFWError as exc:
                result.error = exc
                result.seconds = time.perf_counter() - t0
            results.append(result)
        if prepared:
            t_batch = time.perf_counter()
            rows = [p[1].inputs if isinstance(p[1], FrameInputs) else p[1][np.newaxis] for p in prepared]
            stacked = np.concatenate(rows)
            probs, features = both(stacked) if both is not None else (model.predict(stacked), None)
            now = time.perf_counter()
            start_row = 0
            for result, x, t0 in prepared:
                if isinstance(x, FrameInputs) and len(x) == 0:
                    result.error, result.scores = UndecodableImage("no frame of the video could be decoded"), None
                elif isinstance(x, FrameInputs):
                    result.frames = [(ref, scores_dict(row))
                                     for ref, row in zip(x.refs, probs[start_row:start_row + len(x)], strict=True)]
                    worst = worst_frame(result.frames, DEFAULT_ADULT_CLASSES)
                    result.scores = worst[1]
                    if features is not None:
                        result.frame_embeddings = features[start_row:start_row + len(x)]
                        result.embedding = result.frame_embeddings[result.frames.index(worst)]
                    start_row += len(x)
                else:
                    result.scores = scores_dict(probs[start_row])
                    if features is not None:
                        result.embedding = features[start_row]
                    start_row += 1
                result.inference_s = now - t_batch
                result.seconds = now - t0
        if progress is not None:
            progress(len(chunk))
    return results
