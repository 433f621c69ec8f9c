"""What decoding an image will cost, read from its declared structure before any pixel is decoded.

A file's width x height is not what bounds its decoder: a 16x16 TIFF may declare
46000x46000 tiles (libtiff allocates one tile: 2 GB), a 2048x2048 progressive
JPEG may hold 20,000 scans (libjpeg decodes every one over every block), and a
progressive JPEG keeps full-resolution coefficients even when drafted to 1/8.
:func:`estimate` reads the headers (Pillow's parsed TIFF tags, the JPEG marker
segments) and returns a :class:`Cost`:

* ``pixels``: the largest buffer the decoder holds, in pixels of 4 bytes (how
  Pillow stores RGB and RGBA): the output image, or a tile/strip buffer, the
  decoded samples of a deep TIFF, or progressive JPEG coefficients if larger.
  The caller refuses it over ``max_pixels`` (413) and holds it against the process's pixel budget while decoding.
* ``work``: pixel passes the decoder makes (full-resolution pixels x progressive
  scans); decodes whose work is at most :data:`INLINE_WORK` and whose format has
  no decoder we consider risky run in the worker thread, the others in the
  isolated lane (:mod:`nsfw_core.images.sandbox`) under the decode deadline.
* ``scans``: progressive JPEG scans (refused over ``max_scans``).

Figures of what each class of hostile file cost before and after are in RELIABILITY.md.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

# Work (pixel passes) a decode may take in a worker thread, with no deadline: a 16-megapixel
# baseline JPEG or PNG, or a 1.6-megapixel progressive JPEG of 10 scans, decodes in well under
# a second here.  Anything more goes to the isolated lane, where NSFW_DECODE_TIMEOUT applies.
INLINE_WORK = 16_000_000

# Formats always decoded in the isolated lane: libtiff has many codecs and allocation paths.
ISOLATED_FORMATS = frozenset({"tiff"})

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS = b"\xff\xda"
MIN_ROW = 8  # pixels a row counts for, however narrow (see estimate)


@dataclasses.dataclass(frozen=True)
class Cost:
    """What decoding one image will take (see the module docstring)."""

    pixels: int
    work: int
    scans: int = 1
    why: str = ""  # what dominates ``pixels`` beyond the image itself, for the 413 message
    isolated: bool = False  # a format always decoded in the isolated lane (ISOLATED_FORMATS)

    @property
    def inline(self) -> bool:
        return not self.isolated and self.work <= INLINE_WORK


@dataclasses.dataclass(frozen=True)
class JpegLayout:
    """The frame header and scan count of a JPEG, from its marker segments."""

    progressive: bool
    # (horizontal, vertical) sampling factor of each component
    sampling: tuple[tuple[int, int], ...]
    scans: int


def jpeg_layout(data: bytes) -> JpegLayout | None:
    """Walk the marker segments to the first scan; count the scans after it.

    Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart
    marker, so every ``FF DA`` after the first scan header starts another scan.
    Sequential JPEGs count as one scan.
    ``None`` when the segments end before a frame header and a scan (Pillow then
    reports the file as corrupt).
    """
    pos, progressive, sampling = 2, False, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in _JPEG_SOF and sampling is None:
            count = data[pos + 9] if pos + 9 < len(data) else 0
            sampling = tuple((data[pos + 11 + 3 * i] >> 4, data[pos + 11 + 3 * i] & 15)
                             for i in range(count) if pos + 11 + 3 * i < len(data))
            progressive = marker in _JPEG_PROGRESSIVE
        if marker == 0xDA:
            if sampling is None:
                return None
            # Only progressive scans are decoded over and over: libjpeg stops a sequential JPEG at
            # the first scan after its components are complete (a test checks it). So counting
            # (about 1 ms per MB) is only paid for progressive files.
            scans = 1 + data.count(_SOS, pos + 2 + length) if progressive else 1
            return JpegLayout(progressive, sampling, scans)
        pos += 2 + length
    return None


def estimate(fmt: str, img: Any, data: bytes, output: tuple[int, int]) -> Cost:
    """The :class:`Cost` of decoding ``img`` (opened lazily by Pillow from ``data``) to ``output`` (W, H).

    Pillow keeps a pointer and allocator overhead per row, and its decoders per-row
    buffers: an image 1 pixel wide took 26-49 bytes a pixel against about 15 for a
    photograph (decode fuzz, RELIABILITY.md).  So every row counts as at least
    :data:`MIN_ROW` pixels; for images at least that wide nothing changes.
    """
    width, height = img.size
    out_pixels = output[1] * max(output[0], MIN_ROW)
    if fmt == "jpeg":
        return _jpeg_cost(data, width, height, out_pixels)
    if fmt == "tiff":
        return _tiff_cost(img, width, height)
    work = height * max(width, MIN_ROW)
    if fmt == "webp" and _animated_webp(data):
        # libwebp's animation decoder composes frames on a canvas and keeps the previous one.
        return Cost(pixels=2 * out_pixels, work=2 * work, why="an animated WebP's two canvases")
    return Cost(pixels=out_pixels, work=work, why=f"{height} rows" if width < MIN_ROW else "")


def _animated_webp(data: bytes) -> bool:
    return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)


def _jpeg_cost(data: bytes, width: int, height: int, out_pixels: int) -> Cost:
    layout = jpeg_layout(data)
    if layout is None or not layout.sampling:
        return Cost(pixels=out_pixels, work=width * height)
    full = width * height
    if not layout.progressive:
        return Cost(pixels=out_pixels, work=full)
    # Progressive: libjpeg keeps every component's coefficients (2 bytes each) at full
    # resolution until the last scan, whatever scale the output is drafted to.
    hmax = max(h for h, _ in layout.sampling) or 1
    vmax = max(v for _, v in layout.sampling) or 1
    coefficients = sum(_ceil_to(width * h // hmax, 8) * _ceil_to(height * v // vmax, 8)
                       for h, v in layout.sampling)
    return Cost(pixels=max(out_pixels, -(-coefficients * 2 // 4)), work=full * layout.scans, scans=layout.scans,
                why=f"{layout.scans} progressive scans over {len(layout.sampling)} full-resolution components")


def _tiff_cost(img: Any, width: int, height: int) -> Cost:
    tags = getattr(img, "tag_v2", {})
    samples = _tag_int(tags.get(277), 1)
    bits = tags.get(258, 1)
    if isinstance(bits, tuple) and len(bits) > 1:
        bits_per_pixel = sum(_tag_int(b, 1) for b in bits)
    else:
        bits_per_pixel = _tag_int(bits, 1) * samples
    bits_per_pixel = max(bits_per_pixel, samples)
    if 322 in tags or 323 in tags:
        buf_w, buf_h, what = _tag_int(tags.get(322), width), _tag_int(tags.get(323), height), "tile"
    else:
        buf_w, buf_h, what = width, min(_tag_int(tags.get(278), height), height), "strip"
    raw_bytes = -(-width * bits_per_pixel // 8) * height  # the decoded samples before conversion
    buffer_bytes = -(-buf_w * bits_per_pixel // 8) * buf_h  # one tile or strip, as libtiff allocates it
    buffers = -(-width // buf_w) * -(-height // buf_h)  # libtiff decodes every tile or strip whole
    return Cost(pixels=max(height * max(width, MIN_ROW), -(-raw_bytes // 4), -(-buffer_bytes // 4)),
                work=width * height + buffers * buf_w * buf_h,
                why=f"{buf_w}x{buf_h} {what}s of {bits_per_pixel} bits per pixel", isolated=True)


def _tag_int(value: Any, default: int) -> int:
    if isinstance(value, tuple):
        value = value[0] if value else default
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


def _ceil_to(n: int, k: int) -> int:
    return max(k, -(-n // k) * k)
