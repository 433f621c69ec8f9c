"""Animations: their timeline read from the bytes, and which frames to classify.

An animated GIF, WebP or PNG (APNG), or a multi-page TIFF, is judged on several of
its frames, not on the first alone (a benign first frame would otherwise let
anything through).  :func:`timeline` reads every frame's index, display time and
area from the container, without decoding a pixel, walking the blocks the way
browsers read them:

* GIF: each image descriptor is a frame; its delay is the preceding Graphic Control
  Extension's, in 1/100 s.  Browsers show a delay of 0 or 10 ms for 100 ms, and so
  does the timeline;
* WebP: each ``ANMF`` chunk of an animated (``VP8X`` with the animation flag) file,
  with its 24-bit duration in milliseconds;
* APNG: each ``fcTL`` chunk (delay ``num/den`` seconds, ``den`` 0 meaning 1/100);
  a default image that is not part of the animation (``IDAT`` before the first
  ``fcTL``) is frame 0, with no display time, as Pillow numbers it: viewers without
  APNG support show it;
* TIFF: each page (IFD) is a frame, all of equal weight.

:func:`sample` picks at most ``max_frames`` of them: the first, the last, and the
frames on screen at evenly spaced instants of the animation's display time (a frame
shown for 3 s among 10 ms frames is sampled however many there are); instants that
fall on the same frame leave room for the longest-shown others, so an animation of
at most ``max_frames`` frames is classified whole, its 10 ms frames included.  The image's
verdict is then its worst sampled frame's (:mod:`nsfw_core.classify`).

Frame counts are capped (:data:`MAX_FRAMES_READ`): a file declaring more is refused
(413) before anything is decoded.  Decoding walks every frame up to the last one
(GIF, APNG and WebP frames are drawn over the previous ones), so the cost estimate
(:func:`walk_work`) counts all of them, and an animation too costly to walk goes to
the isolated lane with its deadline like any expensive image.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import struct
from typing import Any

from nsfw_core.base.errors import ImageTooLarge

MAX_FRAMES_READ = 20_000  # more frames than this: 413 before any decoding
GIF_MIN_DELAY_MS = 20  # browsers show shorter GIF delays (0, 10 ms) for GIF_DEFAULT_DELAY_MS
GIF_DEFAULT_DELAY_MS = 100
PAGE_MS = 1000  # a TIFF page's nominal display time
FRAME_OVERHEAD = 4096  # decoding one frame costs at least this many pixels' work (per-frame bookkeeping)


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame of an animation: Pillow's index, when it is shown, for how long, its area in pixels."""

    index: int
    start_ms: int
    duration_ms: int
    area: int


@dataclasses.dataclass(frozen=True)
class Timeline:
    """The frames of an animated image (two or more), in order."""

    frames: tuple[Frame, ...]

    @property
    def total_ms(self) -> int:
        last = self.frames[-1]
        return last.start_ms + last.duration_ms

    def __len__(self) -> int:
        return len(self.frames)


@dataclasses.dataclass(frozen=True)
class FrameRef:
    """A sampled frame, as the API reports it: its index and the time it is first shown."""

    index: int
    time_ms: int


def _too_many(fmt: str) -> ImageTooLarge:
    return ImageTooLarge(f"the {fmt.upper()} has more than {MAX_FRAMES_READ} frames")


def _build(fmt: str, entries: list[tuple[int, int]]) -> Timeline | None:
    """(duration_ms, area) per frame -> a Timeline (None for fewer than two frames)."""
    if len(entries) > MAX_FRAMES_READ:
        raise _too_many(fmt)
    if len(entries) < 2:
        return None
    frames, start = [], 0
    for index, (duration, area) in enumerate(entries):
        frames.append(Frame(index, start, duration, area))
        start += duration
    return Timeline(tuple(frames))


# ---------------------------------------------------------------- GIF


GIF_MARKERS = re.compile(rb"[!,;]")  # extension, image descriptor, trailer: Pillow skips any other byte
MAX_GIF_BLOCKS = 200_000  # sub-blocks walked; more: 413 (a 10 MB GIF of 255-byte blocks has 41,000)
# Stray bytes between a GIF's blocks: encoders write none; Pillow skips them one at a time in Python
# (0.9 s for 10 MB, in the thread that opens the file), so more than this is refused (422).
MAX_JUNK = 64 << 10


def _gif_walk(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """(duration_ms, area) per frame, and the stray bytes skipped, walking the blocks as Pillow's GIF plugin does.

    Pillow's ``data()`` reads one sub-block (None when its size byte is 0); after an extension it reads
    sub-blocks up to an empty one, even when the first was empty; it skips stray bytes between blocks;
    a comment ends at its first empty sub-block; a NETSCAPE application extension on the first frame
    has one more.  The same quirks here, or the frames counted would not be the frames decoded.
    """
    n = len(data)
    if n < 13:
        return [], 0
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    entries: list[tuple[int, int]] = []
    junk = blocks = 0

    def sub(at: int) -> tuple[int, bytes | None]:
        nonlocal blocks
        blocks += 1
        if blocks > MAX_GIF_BLOCKS:
            raise ImageTooLarge(f"the GIF has more than {MAX_GIF_BLOCKS} data blocks")
        if at >= n or data[at] == 0:
            return at + 1, None
        return at + 1 + data[at], data[at + 1:at + 1 + data[at]]

    while True:
        if entries:  # the previous frame's image data: sub-blocks up to an empty one
            block: bytes | None = b"x"
            while block:
                pos, block = sub(pos)
        delay_ms = 0
        while True:
            found = GIF_MARKERS.search(data, pos)
            if found is None:
                return entries, junk
            junk += found.start() - pos
            marker, pos = data[found.start()], found.start() + 1
            if marker == 0x3B:  # trailer
                return entries, junk
            if marker == 0x21:  # extension
                if pos >= n:
                    return entries, junk
                label = data[pos]
                pos, block = sub(pos + 1)
                if label == 0xF9 and block is not None:
                    if len(block) < 3:
                        return entries, junk  # Pillow fails on it: nothing after it is shown
                    delay_ms = int.from_bytes(block[1:3], "little") * 10
                elif label == 0xFE:  # comment: up to its first empty sub-block
                    while block:
                        pos, block = sub(pos)
                    continue
                elif label == 0xFF and not entries and block is not None and block.startswith(b"NETSCAPE2.0"):
                    pos, _ = sub(pos)
                while True:
                    pos, block = sub(pos)
                    if not block:
                        break
                continue
            # image descriptor: x, y, w, h, flags; a local colour table; the LZW code size
            if pos + 9 > n:
                return entries, junk
            width, height = struct.unpack_from("<2H", data, pos + 4)
            packed = data[pos + 8]
            pos += 9 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
            if pos >= n:
                return entries, junk
            pos += 1
            entries.append((GIF_DEFAULT_DELAY_MS if delay_ms < GIF_MIN_DELAY_MS else delay_ms, width * height))
            if len(entries) > MAX_FRAMES_READ:
                return entries, junk
            break


# ---------------------------------------------------------------- WebP


def _webp_entries(data: bytes) -> list[tuple[int, int]]:
    if data[12:16] != b"VP8X" or len(data) < 21 or not data[20] & 0x02:
        return []
    entries: list[tuple[int, int]] = []
    pos = 12
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    while pos + 8 <= end:
        tag = data[pos:pos + 4]
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == b"ANMF" and size >= 16 and pos + 24 <= len(data):
            body = pos + 8
            width = int.from_bytes(data[body + 6:body + 9], "little") + 1
            height = int.from_bytes(data[body + 9:body + 12], "little") + 1
            duration = int.from_bytes(data[body + 12:body + 15], "little")
            entries.append((duration, width * height))
            if len(entries) > MAX_FRAMES_READ:
                break
        pos += 8 + size + (size & 1)
    return entries


# ---------------------------------------------------------------- APNG


def _apng_entries(data: bytes) -> list[tuple[int, int]]:
    pos = 8
    animated = False
    declared = 0  # acTL's frame count: Pillow's, whatever the fcTL chunks say
    hidden_default = False  # an IDAT before the first fcTL: shown by viewers without APNG, not animated
    entries: list[tuple[int, int]] = []
    width = height = 0
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        tag = data[pos + 4:pos + 8]
        body = pos + 8
        if tag == b"IHDR" and length >= 8 and body + 8 <= len(data):
            width, height = struct.unpack_from(">II", data, body)
        elif tag == b"acTL" and length >= 8 and body + 8 <= len(data):
            animated = True
            declared = int.from_bytes(data[body:body + 4], "big")
        elif tag == b"IDAT" and not animated:
            return []  # acTL must come before the image data: a still PNG, no need to walk its chunks
        elif tag == b"IDAT" and not entries:
            hidden_default = True
        elif tag == b"fcTL" and length >= 26 and body + 26 <= len(data):
            w, h = struct.unpack_from(">II", data, body + 4)
            num, den = struct.unpack_from(">HH", data, body + 20)
            entries.append((int(round(1000 * num / (den or 100))), w * h))
            if len(entries) > MAX_FRAMES_READ:
                break
        elif tag == b"IEND":
            break
        pos = body + length + 4
    if not animated or not entries:
        return []
    entries = entries[:declared]
    # Pillow numbers a default image that is not part of the animation as frame 0
    return [(0, width * height), *entries] if hidden_default else entries


# ---------------------------------------------------------------- the public part


@dataclasses.dataclass(frozen=True)
class Scan:
    """What walking an image's container found: its frames (None: a still image), and the stray bytes
    between blocks that a decoder will also have to walk (a GIF's junk)."""

    timeline: Timeline | None
    junk: int = 0


def scan(fmt: str, data: bytes) -> Scan:
    """Walk the container of ``data`` (no pixel decoded).  Raises :class:`ImageTooLarge` beyond
    :data:`MAX_FRAMES_READ` frames or :data:`MAX_GIF_BLOCKS` blocks."""
    if fmt == "gif":
        entries, junk = _gif_walk(data)
        return Scan(_build(fmt, entries), junk)
    if fmt == "webp":
        return Scan(_build(fmt, _webp_entries(data)))
    if fmt == "png":
        return Scan(_build(fmt, _apng_entries(data)))
    if fmt == "tiff":
        return Scan(_build(fmt, [(PAGE_MS, 0)] * _tiff_pages(data)))
    return Scan(None)


def timeline(fmt: str, data: bytes, img: Any = None) -> Timeline | None:
    """The frames of an animated image (None for a still one), from the container alone (``img`` unused)."""
    del img
    return scan(fmt, data).timeline


def _tiff_pages(data: bytes) -> int:
    """Pages of a TIFF: the IFD chain's offsets alone (no tag parsed), a loop or a cut chain ending it."""
    head = data[:4]
    if head in (b"II*\x00", b"MM\x00*"):
        big = False
    elif head in (b"II+\x00", b"MM\x00+"):
        big = True
    else:
        return 1
    order = "<" if head[:2] == b"II" else ">"
    n = len(data)
    count_fmt, entry_size, offset_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
    try:
        offset = struct.unpack_from(order + offset_fmt, data, 8 if big else 4)[0]
    except struct.error:
        return 1
    seen: set[int] = set()
    pages = 0
    while offset and offset not in seen and offset + count_size <= n:
        seen.add(offset)
        pages += 1
        if pages > MAX_FRAMES_READ:
            raise _too_many("tiff")
        entries = struct.unpack_from(order + count_fmt, data, offset)[0]
        following = offset + count_size + entries * entry_size
        if following + offset_size > n:
            break
        offset = struct.unpack_from(order + offset_fmt, data, following)[0]
    return max(pages, 1)


def sample(tl: Timeline, max_frames: int) -> tuple[FrameRef, ...]:
    """At most ``max_frames`` frames: the first, the last, and those on screen at evenly spaced instants."""
    frames = tl.frames
    chosen = {0, len(frames) - 1}
    total = tl.total_ms
    starts = [f.start_ms for f in frames]
    slots = max(0, max_frames - 2)
    if total > 0:
        for k in range(1, slots + 1):
            instant = total * k / (slots + 1)
            chosen.add(max(0, bisect.bisect_right(starts, instant) - 1))
    else:  # no display time (all zero durations): spread by index
        for k in range(1, slots + 1):
            chosen.add(round((len(frames) - 1) * k / (slots + 1)))
    if len(chosen) < max_frames:  # instants that fell on the same frame: the longest-shown others
        for f in sorted(frames, key=lambda f: (-f.duration_ms, f.index)):
            if len(chosen) >= max_frames:
                break
            chosen.add(f.index)
    picked = sorted(chosen)
    if len(picked) > max_frames:  # max_frames of 1: the first frame only
        picked = picked[:max_frames]
    return tuple(FrameRef(i, frames[i].start_ms) for i in picked)


def walk_work(tl: Timeline, canvas_pixels: int, upto: int) -> int:
    """Work (in pixels) of decoding frames 0..``upto``: each frame is composed on the whole canvas (Pillow
    pastes it there and keeps the canvas for the next), however small its own area."""
    return sum(max(f.area, canvas_pixels) + FRAME_OVERHEAD for f in tl.frames[:upto + 1])
