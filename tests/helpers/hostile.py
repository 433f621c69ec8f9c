"""Hostile images built byte by byte: small files whose declared structure is expensive.

Each builder returns ``bytes`` that stay far under ``NSFW_MAX_BYTES`` and whose
declared width x height stays within ``NSFW_MAX_PIXELS``; what makes them hostile
is the structure around the pixels (tile sizes, scan counts, aspect ratio, frames).
Used by tests/test_reliability.py, tests/test_decode.py and bench/fuzz_decode.py.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

# ---------------------------------------------------------------- TIFF

_TIFF_TYPES = {"SHORT": 3, "LONG": 4}


def tiff(width: int = 16, height: int = 16, *, tile: tuple[int, int] | None = (46000, 46000),
         rows_per_strip: int | None = None, bits: int = 8, samples: int = 1, compression: int = 1,
         pages: int = 1, data: bytes | None = None) -> bytes:
    """A little-endian TIFF whose first IFD declares ``tile`` (or strips of ``rows_per_strip``).

    The pixel data is ``data`` (default: zeros for one strip or tile of the declared
    image, not of the declared tile), so the file is tiny while the tile is huge.
    ``pages`` chains that many IFDs (each pointing at the same data).
    """
    payload = data if data is not None else b"\x00" * max(1, width * height * samples * bits // 8)
    header = b"II*\x00" + struct.pack("<I", 8)
    entries: list[tuple[int, str, int]] = [
        (256, "LONG", width), (257, "LONG", height), (258, "SHORT", bits), (259, "SHORT", compression),
        (262, "SHORT", 1 if samples < 3 else 2), (277, "SHORT", samples), (284, "SHORT", 1),
    ]
    if tile is not None:
        entries += [(322, "LONG", tile[0]), (323, "LONG", tile[1]), (324, "LONG", 0), (325, "LONG", len(payload))]
    else:
        entries += [(273, "LONG", 0), (278, "LONG", rows_per_strip or height), (279, "LONG", len(payload))]
    entries.sort()
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size * pages
    out = bytearray(header)
    for page in range(pages):
        ifd = bytearray(struct.pack("<H", len(entries)))
        for tag, kind, value in entries:
            if tag in (273, 324):
                value = data_offset
            fmt = "<HHIHH" if kind == "SHORT" else "<HHII"
            ifd += struct.pack(fmt, tag, _TIFF_TYPES[kind], 1, value, 0) if kind == "SHORT" else \
                struct.pack(fmt, tag, _TIFF_TYPES[kind], 1, value)
        nxt = 8 + ifd_size * (page + 1) if page + 1 < pages else 0
        ifd += struct.pack("<I", nxt)
        out += ifd
    return bytes(out) + payload


# ---------------------------------------------------------------- PNG


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(width: int, height: int, *, colour_type: int = 0, bit_depth: int = 8, palette: bytes | None = None,
        interlace: int = 0) -> bytes:
    """A PNG of ``width`` x ``height`` zero pixels, compressed (a 2,000,000x1 grey PNG is about 2 KB)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row = 1 + (width * channels * bit_depth + 7) // 8
    comp = zlib.compressobj(9)
    body = bytearray()
    blank = b"\x00" * row
    for _ in range(height):
        body += comp.compress(blank)
    body += comp.flush()
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type,
                                                           0, 0, interlace))
    if colour_type == 3:
        out += _chunk(b"PLTE", palette if palette is not None else b"\x00\x00\x00" * 256)
    return out + _chunk(b"IDAT", bytes(body)) + _chunk(b"IEND", b"")


# ---------------------------------------------------------------- JPEG


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment up to and including the first SOS header."""
    out, pos = [], 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        out.append((marker, pos, pos + 2 + length))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def progressive_scans(size: int = 2048, scans: int = 20_000) -> bytes:
    """A progressive grey JPEG of ``size`` x ``size`` with ``scans`` extra (empty) AC refinement scans.

    Pillow encodes a flat grey image progressively; its last scan (AC refinement,
    all coefficients zero: a few bytes of EOB runs) is then repeated.  libjpeg
    decodes every repeated scan over every block: the cost grows with
    ``scans x size^2`` while the file grows by ~15 bytes a scan.
    """
    buf = io.BytesIO()
    Image.new("L", (size, size), 128).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xDA]
    last = data[starts[-1]:data.rindex(b"\xff\xd9")]
    return data[:-2] + last * scans + b"\xff\xd9"


# ---------------------------------------------------------------- GIF / WebP


def animated_gif(frames: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """An animated GIF of ``frames`` tiny frames (each 1x1 at the origin, 10 ms)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", size[0], size[1], 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for _ in range(frames):
        out += b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return bytes(out + b"\x3b")


def animated_webp(frames: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """An animated WebP of ``frames`` frames, encoded by Pillow (libwebp)."""
    imgs = [Image.new("RGB", size, (i % 256, 0, 0)) for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, "WEBP", save_all=True, append_images=imgs[1:], duration=10, lossless=True)
    return buf.getvalue()
