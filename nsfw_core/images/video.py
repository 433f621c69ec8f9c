"""Videos: MP4/MOV and WebM/MKV, sampled by time and decoded with FFmpeg's libraries (PyAV).

Everything here runs in the isolated lane's child process (:mod:`nsfw_core.images.sandbox`): FFmpeg's
demuxers and decoders read hostile bytes, so they run under the lane's deadline and memory limit, and
only the sampled frames' model inputs (and small thumbnails) come back, never a full-resolution frame.

The steps, each bounded before the next one costs more:

1. **Open** with the demuxer the magic bytes named (``mov`` or ``matroska``; FFmpeg never guesses among
   its hundreds of formats, and the MOV demuxer's external data references stay off), with a bounded
   probe.  :func:`declared` reads what the container says: streams, the video stream's codec, size and
   duration.  More than :data:`MAX_STREAMS` streams, a codec other than H.264, H.265, VP8, VP9 or AV1,
   a frame over ``max_pixels`` are refused before any packet is read.
2. **Index**: every packet of the video stream is read (not decoded: its time, whether it is a
   keyframe, its size), at most :data:`MAX_PACKETS`.  The real duration is what the packets cover, not
   what the header claims (an "hours-long" video of a few frames is a few frames).
3. **Plan** (:func:`plan`): instants at ``fps`` a second, spread further apart so that at most
   ``max_frames`` fit; the first frame always, the others at an unpredictable point of their interval
   (a keyed draw from ``seed``), so content placed between fixed sample instants is not safe from them.
   Each instant gives the frame on screen then.  Decoding starts at the keyframe before each such
   frame: the groups of pictures that hold no sampled frame are never decoded (keyframe seeking,
   done from the index, which works on files without a seek index too).
4. **Decode**: inside those ranges, frames no other frame refers to are skipped unless one of them is
   a sampled frame (FFmpeg's ``skip_frame``), so what is judged is exactly the frame shown at each
   instant.  Each sampled frame is turned upright (the stream's rotation), converted to RGB, handed to
   ``each`` (the model input, a thumbnail) and dropped.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import logging
import math
import struct
from array import array
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from nsfw_core.base.errors import ImageTooLarge, NotAnImage, NSFWError, UndecodableImage, VideoTooLong

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Containers by the name :func:`nsfw_core.images.sniff.sniff_video` gives -> FFmpeg's demuxer.
DEMUXERS = {"mp4": "mov", "mov": "mov", "webm": "matroska", "mkv": "matroska"}
#: The decoders used (the one FFmpeg picks for the stream) -> the codec's name.  FFmpeg's own "av1"
#: decoder needs a hardware accelerator; FFmpeg picks dav1d, which the PyAV wheel bundles.
DECODERS = {"h264": "h264", "hevc": "hevc", "vp8": "vp8", "vp9": "vp9", "libdav1d": "av1"}
MAX_STREAMS = 16  # streams of any kind in one file; more is refused (413) before any packet is read
MAX_PACKETS = 500_000  # video packets indexed: 4.6 hours at 30 frames a second
PROBE_BYTES = 5_000_000  # what FFmpeg may read to find the streams' parameters
THREADS = 2  # decoder threads (frame threading); each holds its own working set
# What decoding holds per pixel of the declared frame size, in bytes: up to 16 reference frames plus
# the frames in flight in the threads, in 4:2:0 at up to 16 bits a sample, the RGB conversion, and the
# decoder's per-picture tables.  The isolated lane's memory limit is this times width x height (plus
# the child's base), so a stream whose frames are larger than its header said hits the limit.
BYTES_PER_PIXEL = 96
#: The pixel budget a decoding video holds, per pixel of its frame (in the 4-byte pixels images count).
BUDGET_PER_PIXEL = BYTES_PER_PIXEL // 4


@dataclasses.dataclass(frozen=True)
class Declared:
    """What the container declares about its video stream, before any packet is read."""

    container: str
    codec: str
    width: int
    height: int
    duration_ms: int  # as declared (0: not declared)
    streams: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One frame to judge: its place in presentation order, when it is shown, and the packet that holds it."""

    index: int
    time_ms: int
    packet: int  # in decode (file) order


@dataclasses.dataclass(frozen=True)
class Plan:
    """The frames to judge and what decoding them takes."""

    samples: tuple[Sample, ...]
    duration_ms: int
    packets: int
    keyframes: int
    decoded: int  # packets that will be fed to the decoder (the groups of pictures holding a sample)
    decoded_bytes: int = 0  # their bytes: the bitstream the decoder reads (entropy decoding costs by the bit)


# ---------------------------------------------------------------- sampling (pure)


def instants(duration_ms: int, fps: float, max_frames: int, seed: int) -> list[int]:
    """Sample instants (ms) over ``[0, duration_ms)``: ``fps`` a second, spread so that at most
    ``max_frames`` fit; the first at 0, each other one at a point of its interval drawn from ``seed``."""
    if duration_ms <= 0 or max_frames < 1:
        return [0]
    interval = max(1000.0 / fps, duration_ms / max_frames)
    count = max(1, min(max_frames, math.ceil(duration_ms / interval)))
    out = [0]
    for k in range(1, count):
        out.append(min(duration_ms - 1, int((k + _unit(seed, k)) * interval)))
    return out


def _unit(seed: int, k: int) -> float:
    """A number in [0, 1) drawn from (seed, k): the same for the same video and key, unknown without them."""
    digest = hashlib.blake2b(struct.pack("<qq", seed & ((1 << 63) - 1), k), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


@dataclasses.dataclass
class Index:
    """The video stream's packets in file (decode) order: presentation time (stream units), keyframe flag,
    size in bytes."""

    pts: array  # type: ignore[type-arg]
    key: bytearray
    time_base: float  # seconds per unit
    size: array = dataclasses.field(default_factory=lambda: array("q"))  # type: ignore[type-arg]

    def __len__(self) -> int:
        return len(self.pts)


def plan(index: Index, fps: float, max_frames: int, seed: int, skip: int = 0, at_ms: int | None = None) -> Plan:
    """The frames shown at the sample instants (see the module docstring), after the first ``skip`` of them;
    with ``at_ms``, only the frame shown then (a review item's deciding frame, decoded alone for its evidence)."""
    n = len(index)
    if n == 0:
        raise UndecodableImage("the video has no video frames", format="video")
    order = sorted(range(n), key=lambda i: (index.pts[i], i))  # presentation order
    start = index.pts[order[0]]
    times = [round((index.pts[i] - start) * index.time_base * 1000) for i in order]
    step = times[-1] - times[-2] if n > 1 else 0
    duration = times[-1] + max(step, 1)
    chosen: list[Sample] = []
    seen: set[int] = set()
    wanted = [min(max(0, int(at_ms)), duration - 1)] if at_ms is not None else instants(duration, fps, max_frames,
                                                                                            seed)
    for t in wanted:
        shown = max(0, bisect.bisect_right(times, t) - 1)  # the frame on screen at t
        if shown not in seen:
            seen.add(shown)
            chosen.append(Sample(shown, times[shown], order[shown]))
    samples = tuple(chosen[skip:])
    keys = [i for i in range(n) if index.key[i]]
    ranges = _ranges(samples, keys)
    sizes = index.size if len(index.size) == n else None
    return Plan(samples, duration, n, len(keys), sum(hi - lo + 1 for lo, hi in ranges),
                sum(sum(sizes[lo:hi + 1]) for lo, hi in ranges) if sizes is not None else 0)


def _ranges(samples: tuple[Sample, ...], keys: list[int]) -> list[tuple[int, int]]:
    """Packet ranges (decode order, inclusive) to feed the decoder: from the keyframe at or before each
    sampled packet up to it, overlapping ranges merged."""
    spans = []
    for s in samples:
        k = bisect.bisect_right(keys, s.packet) - 1
        spans.append((keys[k] if k >= 0 else 0, s.packet))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


# ---------------------------------------------------------------- FFmpeg (the child process)


def _av() -> Any:
    import av  # FFmpeg's libraries: imported by the isolated lane's child (and the tests), never the server

    av.logging.set_level(av.logging.PANIC)  # a hostile file's decoder warnings are not the server's log
    return av


def _open(data: bytes, container: str) -> Any:
    av = _av()
    options = {"probesize": str(PROBE_BYTES), "analyzeduration": "5000000", "fpsprobesize": "0"}
    if DEMUXERS[container] == "mov":
        options["enable_drefs"] = "0"  # never open the files a MOV's data references name
    try:
        return av.open(io.BytesIO(data), format=DEMUXERS[container], options=options)
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        raise UndecodableImage(f"the {container} video is truncated or corrupt", format=container) from exc


def declared(box: Any, container: str, max_pixels: int) -> tuple[Declared, Any]:
    """What ``box`` (an opened container) declares, checked: :class:`NotAnImage` without a video stream or
    with an unsupported codec, :class:`ImageTooLarge` over :data:`MAX_STREAMS` streams or ``max_pixels``."""
    streams = len(box.streams)
    if streams > MAX_STREAMS:
        raise ImageTooLarge(f"the video has {streams} streams, over the limit of {MAX_STREAMS}", streams=streams)
    videos = [s for s in box.streams if s.type == "video"]
    if not videos:
        raise NotAnImage(f"the {container} file has no video stream", detected=f"{container} without video")
    stream = videos[0]
    decoder = stream.codec_context.name if stream.codec_context is not None else "unknown"
    codec = DECODERS.get(decoder, decoder)
    if decoder not in DECODERS:
        raise NotAnImage(f"the video's codec ({codec}) is not supported; supported: H.264, H.265, VP8, VP9, AV1",
                         detected=f"{container} video ({codec})")
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if width <= 0 or height <= 0:
        raise UndecodableImage(f"the {container} video declares no frame size", format=container)
    if width * height > max_pixels:
        raise ImageTooLarge(f"the video's frames are {width}x{height}, over the limit of {max_pixels} pixels "
                            "(NSFW_MAX_VIDEO_PIXELS)", width=width, height=height, max_pixels=max_pixels)
    duration = 0
    if stream.duration is not None and stream.time_base is not None:
        duration = int(stream.duration * stream.time_base * 1000)
    elif box.duration is not None:
        duration = int(box.duration // 1000)
    return Declared(container, codec, width, height, max(0, duration), streams), stream


def read_index(box: Any, stream: Any, max_ms: int | None) -> Index:
    """Every packet of ``stream`` (times and keyframe flags, no payload kept), within :data:`MAX_PACKETS`
    and, with ``max_ms``, a duration of at most that (a longer video is refused as it is read)."""
    base = float(stream.time_base) if stream.time_base is not None else 1 / 90000
    pts: array = array("q")  # type: ignore[type-arg]
    size: array = array("q")  # type: ignore[type-arg]
    key = bytearray()
    first: int | None = None
    for packet in _demux(box, stream):
        if packet.size == 0:
            continue
        t = packet.pts if packet.pts is not None else packet.dts
        if t is None:
            t = pts[-1] + 1 if pts else 0
        pts.append(int(t))
        size.append(int(packet.size))
        key.append(1 if packet.is_keyframe else 0)
        if len(pts) > MAX_PACKETS:
            raise ImageTooLarge(f"the video has more than {MAX_PACKETS} frames", max_frames=MAX_PACKETS)
        first = int(t) if first is None else min(first, int(t))
        if max_ms is not None and (int(t) - first) * base * 1000 > max_ms:
            raise too_long(max_ms)
    if pts:
        key[0] = 1  # decoding starts at the first packet whatever it is flagged
    return Index(pts, key, base, size)


def too_long(max_ms: int) -> VideoTooLong:
    return VideoTooLong(f"the video is longer than {max_ms / 1000:g} s, the most a synchronous request takes "
                        "(NSFW_MAX_VIDEO_SECONDS); send it as a job: POST /v1/jobs with its URL",
                        max_seconds=max_ms / 1000)


def _demux(box: Any, stream: Any) -> Iterator[Any]:
    av = _av()
    try:
        yield from box.demux(stream)
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        log.debug("demuxing stopped: %s", exc)  # a truncated file: the packets read so far are the video


def frames(data: bytes, container: str, *, max_pixels: int, fps: float, max_frames: int, seed: int,
           max_ms: int | None = None, skip: int = 0, at_ms: int | None = None,
           each: Callable[[np.ndarray], T]) -> Iterator[tuple[Declared, Plan] | tuple[Sample, T]]:
    """Open, check, index and plan (the first item: ``(Declared, Plan)``), then each sampled frame as
    ``(Sample, each(rgb))``, in file order.  Raises the core's typed errors; a frame the decoder cannot
    produce is left out, and no frame at all is :class:`UndecodableImage`."""
    try:
        box = _open(data, container)
        try:
            found, stream = declared(box, container, max_pixels)
            index = read_index(box, stream, max_ms)
        finally:
            box.close()
        chosen = plan(index, fps, max_frames, seed, skip, at_ms)
        yield found, chosen
        if not chosen.samples:
            return
        produced = 0
        for item in _decode(data, container, chosen, index, found, each):
            produced += 1
            yield item
        if produced == 0:
            raise UndecodableImage(f"no frame of the {container} video could be decoded", format=container)
    except (NSFWError, MemoryError):  # av.error.MemoryError is a MemoryError
        raise
    except Exception as exc:  # whatever else FFmpeg or PyAV raise on a hostile file
        raise UndecodableImage(f"the {container} video is truncated or corrupt", format=container) from exc


def _decode(data: bytes, container: str, chosen: Plan, index: Index, found: Declared,
            each: Callable[[np.ndarray], T]) -> Iterator[tuple[Sample, T]]:
    keys = [i for i in range(len(index)) if index.key[i]]
    ranges = _ranges(chosen.samples, keys)
    wanted = {s.packet: s for s in chosen.samples}
    by_pts = {index.pts[s.packet]: s for s in chosen.samples}
    box = _open(data, container)
    try:
        stream = next(s for s in box.streams if s.type == "video")
        context = stream.codec_context
        context.thread_type = "AUTO"
        context.thread_count = THREADS
        r = 0
        position = -1
        for packet in _demux(box, stream):
            if packet.size == 0:
                continue
            position += 1
            while r < len(ranges) and position > ranges[r][1]:
                yield from _drain(context, by_pts, found, each, flush=True)
                r += 1
            if r >= len(ranges):
                break
            if position < ranges[r][0]:
                continue
            context.skip_frame = "DEFAULT" if position in wanted else "NONREF"
            yield from _take(_decode_packet(context, packet), by_pts, found, each)
        yield from _drain(context, by_pts, found, each, flush=False)
    finally:
        box.close()


def _decode_packet(context: Any, packet: Any) -> list[Any]:
    av = _av()
    try:
        return list(context.decode(packet))
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        log.debug("a packet could not be decoded: %s", exc)
        return []


def _drain(context: Any, by_pts: dict[int, Sample], found: Declared, each: Callable[[np.ndarray], T],
           *, flush: bool) -> Iterator[tuple[Sample, T]]:
    av = _av()
    try:
        pending = list(context.decode(None))
    except MemoryError:
        raise
    except av.error.FFmpegError:
        pending = []
    yield from _take(pending, by_pts, found, each)
    if flush:
        context.flush_buffers()


def _take(decoded: list[Any], by_pts: dict[int, Sample], found: Declared,
          each: Callable[[np.ndarray], T]) -> Iterator[tuple[Sample, T]]:
    for frame in decoded:
        sample = by_pts.pop(frame.pts, None) if frame.pts is not None else None
        if sample is None:
            continue
        if frame.width * frame.height > found.width * found.height * 4:
            raise ImageTooLarge(f"a frame of the video is {frame.width}x{frame.height}, larger than the "
                                f"{found.width}x{found.height} it declared")
        rgb = frame.to_ndarray(format="rgb24")
        rotation = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # quarter turns counter-clockwise
        if rotation:
            rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation))
        out = each(rgb)
        del rgb
        yield sample, out
