"""Test videos, made here from the images the project ships (PyAV encodes them; nothing is downloaded).

:func:`make` encodes ``seconds`` of video: each shipped image shown for ``hold`` seconds, panning slowly
(real motion, so the encoder writes real predicted frames), or the frames a caller gives.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from tests.helpers.paths import ROOT

DEMO = sorted((ROOT / "data" / "demo").glob("*/*.jpg"))
CONTAINERS = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "matroska"}
ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp8": "libvpx", "vp9": "libvpx-vp9", "av1": "libsvtav1"}


def pictures(paths: Sequence[Path] = tuple(DEMO)) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def panning(images: Sequence[np.ndarray], seconds: float, fps: int, size: tuple[int, int],
            hold: float, pan: bool = True) -> Iterator[np.ndarray]:
    """Frames: image k shown from k*hold to (k+1)*hold seconds (cycling), panning across it (or still)."""
    width, height = size
    big = [np.asarray(Image.fromarray(im).resize((width + width // 8, height + height // 8))) for im in images]
    per = max(1, round(hold * fps))
    for i in range(round(seconds * fps)):
        k, t = divmod(i, per)
        t = t if pan else 0
        im = big[k % len(big)]
        x = (width // 8) * t // per
        y = (height // 8) * t // per
        yield np.ascontiguousarray(im[y:y + height, x:x + width])


def make(container: str = "mp4", codec: str = "h264", *, seconds: float = 4.0, fps: int = 10,
         size: tuple[int, int] = (320, 240), hold: float = 1.0, images: Sequence[np.ndarray] | None = None,
         frames: Sequence[np.ndarray] | None = None, options: dict[str, str] | None = None,
         rotation: int | None = None, pan: bool = True) -> bytes:
    """A video's bytes (see the module docstring)."""
    import av

    buf = io.BytesIO()
    out = av.open(buf, "w", format=CONTAINERS[container])
    stream: Any = out.add_stream(ENCODERS[codec], rate=Fraction(fps))
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    opts: dict[str, str] = {"preset": "ultrafast"} if codec in ("h264", "hevc") else {}
    if codec == "hevc":
        opts["x265-params"] = "log-level=none"
    if codec in ("vp8", "vp9"):
        opts.update({"deadline": "realtime", "cpu-used": "8"})
    if codec == "av1":
        opts["preset"] = "12"
    opts.update(options or {})
    stream.options = opts
    if rotation is not None:
        stream.set_display_rotation(rotation)
    source = frames if frames is not None else panning(images or pictures(), seconds, fps, size, hold, pan)
    for pixels in source:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return buf.getvalue()


def outgrowing(small: tuple[int, int] = (64, 48), big: tuple[int, int] = (1024, 1024)) -> bytes:
    """An MKV whose H.264 stream declares ``small`` frames (its header, its first frames) and then, with a new
    sequence header in the stream, carries ``big`` ones: a decoder sizing its buffers by the header is wrong."""
    import av

    def elementary(size: tuple[int, int], n: int) -> bytes:
        buf = io.BytesIO()
        out = av.open(buf, "w", format="h264")
        stream: Any = out.add_stream("libx264", rate=Fraction(5))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "ultrafast"}
        rng = np.random.default_rng(n)
        for _ in range(n):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        out.close()
        return buf.getvalue()

    src: Any = av.open(io.BytesIO(elementary(small, 5) + elementary(big, 2)), format="h264")
    raw = src.streams.video[0]
    buf = io.BytesIO()
    out: Any = av.open(buf, "w", format="matroska")
    stream: Any = out.add_stream("h264", rate=5)
    stream.width, stream.height = small
    stream.codec_context.extradata = raw.codec_context.extradata
    for n, packet in enumerate(p for p in src.demux(raw) if p.size):
        packet.stream, packet.pts, packet.dts, packet.time_base = stream, n, n, Fraction(1, 5)
        out.mux(packet)
    out.close()
    src.close()
    return buf.getvalue()
