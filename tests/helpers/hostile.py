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


# ---------------------------------------------------------------- structure-aware builders
#
# General builders used by bench/fuzz_decode.py's structure-aware generators: every field
# of the declared structure is a parameter, and the pixel data is either complete (valid
# streams of zeros, built directly rather than by an encoder, so that large declared images
# stay cheap to generate) or deliberately short.


class _Bits:
    """MSB-first bit writer; ``stuff`` inserts a 0x00 after each 0xFF (JPEG entropy-coded data)."""

    def __init__(self, stuff: bool = False) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0
        self.stuff = stuff

    def put(self, value: int, n: int) -> None:
        self.acc = (self.acc << n) | (value & ((1 << n) - 1))
        self.n += n
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF and self.stuff:
                self.out.append(0)
        self.acc &= (1 << self.n) - 1

    def zeros(self, n: int) -> None:
        first = min(n, (8 - self.n) % 8)
        if first:
            self.put(0, first)
            n -= first
        if self.n == 0:
            self.out += bytes(n // 8)
            self.put(0, n % 8)
        else:  # pragma: no cover - the partial byte was filled above
            self.put(0, n)

    def flush(self, pad_bit: int = 1) -> bytes:
        pad = (8 - self.n) % 8
        if pad:
            self.put((1 << pad) - 1 if pad_bit else 0, pad)
        return bytes(self.out)


# JPEG Huffman tables for all-zero coefficients: DC has one code, '0' (category 0, no change);
# AC has the 15 end-of-band run symbols 0x00, 0x10, ..., 0xE0 with 4-bit codes 0000..1110.
_JPEG_DHT_DC = bytes([1] + [0] * 15) + b"\x00"
_JPEG_DHT_AC = bytes([0, 0, 0, 15] + [0] * 12) + bytes(r << 4 for r in range(15))


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg(width: int, height: int, *, sampling: tuple[tuple[int, int], ...] = ((1, 1),), progressive: bool = False,
         scans: int | None = None, precision: int = 8, full: bool = True, restart: int = 0) -> bytes:
    """A JPEG of ``width`` x ``height`` whose every coefficient is zero, built marker by marker.

    ``sampling``: the (h, v) factors of each component (their count is the component
    count; any values, valid or not, are written).  ``progressive`` writes SOF2, a DC
    scan and one AC scan per component; ``scans`` then appends repeated AC scans up to
    that total.  ``full=False`` leaves each scan's entropy-coded data almost empty, so
    the file is tiny whatever it declares.  ``restart`` writes a DRI segment (the data
    then carries no restart markers: libjpeg warns and resynchronises).
    """
    ncomp = len(sampling)
    out = bytearray(b"\xff\xd8")
    out += _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += _segment(0xDB, b"\x00" + b"\x01" * 64)
    sof = struct.pack(">BHHB", precision, height, width, ncomp)
    for i, (h, v) in enumerate(sampling):
        sof += bytes([i + 1, ((h & 15) << 4) | (v & 15), 0])
    out += _segment(0xC2 if progressive else 0xC0, sof)
    out += _segment(0xC4, b"\x00" + _JPEG_DHT_DC + b"\x10" + _JPEG_DHT_AC)
    if restart:
        out += _segment(0xDD, struct.pack(">H", restart & 0xFFFF))
    hmax = max((h for h, _ in sampling), default=1) or 1
    vmax = max((v for _, v in sampling), default=1) or 1

    def blocks(comps: list[int]) -> int:
        if len(comps) == 1:
            h, v = sampling[comps[0]]
            cw, ch = -(-width * max(h, 1) // hmax), -(-height * max(v, 1) // vmax)
            return -(-cw // 8) * -(-ch // 8)
        mcus = -(-width // (8 * hmax)) * -(-height // (8 * vmax))
        return mcus * sum(max(h, 1) * max(v, 1) for h, v in (sampling[c] for c in comps))

    interleave = ncomp <= 4 and sum(max(h, 1) * max(v, 1) for h, v in sampling) <= 10
    groups = [list(range(ncomp))] if interleave and ncomp else [[c] for c in range(ncomp)]

    def scan(comps: list[int], ss: int, se: int, ah: int, al: int, bits_per_block: int, eob: bool) -> bytes:
        head = bytes([len(comps)]) + b"".join(bytes([c + 1, 0x00]) for c in comps) + bytes([ss, se, (ah << 4) | al])
        writer = _Bits(stuff=True)
        count = blocks(comps) if full else min(blocks(comps), 64)
        if eob:
            while count > 0:
                run = min(count, 32767)
                r = run.bit_length() - 1
                writer.put(r, 4)
                if r:
                    writer.put(run - (1 << r), r)
                count -= run
        else:
            writer.zeros(count * bits_per_block)
        return _segment(0xDA, head) + writer.flush()

    if not progressive:
        for comps in groups:
            out += scan(comps, 0, 63, 0, 0, 5, False)
    else:
        body = [scan(comps, 0, 0, 0, 0, 1, False) for comps in groups]
        ac = [scan([c], 1, 63, 0, 0, 0, True) for c in range(ncomp)]
        body += ac
        while scans is not None and len(body) < scans and ac:
            body.append(ac[len(body) % len(ac)])
        out += b"".join(body)
    return bytes(out + b"\xff\xd9")


# ---------------------------------------------------------------- PNG, any IHDR


def _zlib_zeros(n: int, level: int = 1) -> bytes:
    comp = zlib.compressobj(level)
    block = bytes(min(n, 1 << 20))
    parts = []
    while n > 0:
        parts.append(comp.compress(block[: min(n, len(block))]))
        n -= len(block)
    parts.append(comp.flush())
    return b"".join(parts)


def png_raw_size(width: int, height: int, channels: int, bit_depth: int, interlace: int) -> int:
    """Bytes of filtered scanlines the IHDR declares (Adam7 passes when ``interlace``)."""
    def rows(w: int, h: int) -> int:
        return 0 if w <= 0 or h <= 0 else h * (1 + -(-w * channels * bit_depth // 8))
    if interlace != 1:
        return rows(width, height)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    return sum(rows(-(-(width - x) // dx), -(-(height - y) // dy)) for x, y, dx, dy in passes)


def png_any(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0, interlace: int = 0,
            palette: int | None = None, trns: int | None = None, idat_chunks: int = 1, empty_idats: int = 0,
            full: bool = True, ztxt_bomb: int = 0, actl_frames: int | None = None) -> bytes:
    """A PNG with any IHDR values (valid or not) and zero pixels.

    ``palette``: bytes in PLTE (any count, not only multiples of 3); ``trns``: bytes
    in tRNS; the zlib stream is split over ``idat_chunks`` IDATs, plus ``empty_idats``
    empty ones; ``full=False`` keeps only the first 64 bytes of it.  ``ztxt_bomb``
    adds a zTXt chunk that inflates to that many bytes; ``actl_frames`` an APNG acTL
    chunk (and an fcTL for the default image) declaring that many frames.
    """
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type, 1)
    stream = _zlib_zeros(png_raw_size(width, height, channels, bit_depth, interlace)) if full else \
        _zlib_zeros(1 << 16)[:64]
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    out += _chunk(b"IHDR", struct.pack(">IIBBBBB", width & 0xFFFFFFFF, height & 0xFFFFFFFF, bit_depth,
                                       colour_type, 0, 0, interlace))
    if ztxt_bomb:
        out += _chunk(b"zTXt", b"Comment\x00\x00" + _zlib_zeros(ztxt_bomb, 9))
    if actl_frames is not None:
        out += _chunk(b"acTL", struct.pack(">II", actl_frames & 0xFFFFFFFF, 0))
        out += _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, width & 0xFFFFFFFF, height & 0xFFFFFFFF, 0, 0, 1, 10, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", bytes(range(256)) * (palette // 256) + bytes(range(palette % 256)))
    if trns is not None:
        out += _chunk(b"tRNS", b"\x00" * trns)
    n = max(1, idat_chunks)
    step = -(-len(stream) // n) or 1
    pieces = [stream[i:i + step] for i in range(0, len(stream), step)] or [b""]
    for i, piece in enumerate(pieces):
        out += _chunk(b"IDAT", piece)
        if i == 0:
            out += _chunk(b"IDAT", b"") * empty_idats
    return bytes(out + _chunk(b"IEND", b""))


# ---------------------------------------------------------------- GIF, any screen and frames


def _gif_lzw_zeros(width: int, height: int) -> bytes:
    """Pillow's LZW data (min code size byte, sub-blocks, terminator) for a ``width`` x ``height`` frame of zeros."""
    buf = io.BytesIO()
    Image.new("P", (max(1, width), max(1, height)), 0).save(buf, "GIF")
    data = buf.getvalue()
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    assert data[pos] == 0x2C
    local = data[pos + 9]
    pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
    start = pos
    pos += 1
    while data[pos]:
        pos += 1 + data[pos]
    return data[start:pos + 1]


_GIF_TINY_LZW = b"\x02\x02\x44\x01\x00"  # one pixel of colour 0


def gif_any(screen: tuple[int, int], frames: list[tuple[int, int, int, int]], *, full: bool = True,
            interlace: bool = False, global_bits: int | None = 1, local_bits: int | None = None) -> bytes:
    """A GIF with logical screen ``screen`` and one image descriptor (x, y, w, h) per frame.

    The first frame carries complete LZW data for its declared size when ``full``;
    the others (and the first when not ``full``) carry one pixel's worth.
    """
    flags = 0x80 | (global_bits - 1) if global_bits else 0
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", screen[0] & 0xFFFF, screen[1] & 0xFFFF, flags, 0, 0))
    if global_bits:
        out += bytes(3 << global_bits)
    if len(frames) > 1:
        out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for i, (x, y, w, h) in enumerate(frames):
        out += b"\x21\xf9\x04\x04\x01\x00\x00\x00"
        lflags = (0x40 if interlace else 0) | ((0x80 | (local_bits - 1)) if local_bits else 0)
        out += b"\x2c" + struct.pack("<HHHHB", x & 0xFFFF, y & 0xFFFF, w & 0xFFFF, h & 0xFFFF, lflags)
        if local_bits:
            out += bytes(3 << local_bits)
        out += _gif_lzw_zeros(w, h) if full and i == 0 else _GIF_TINY_LZW
    return bytes(out + b"\x3b")


# ---------------------------------------------------------------- WebP, any canvas and frames


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def webp_bitstream(width: int, height: int, *, lossless: bool = True) -> bytes:
    """The image chunks (VP8L, or ALPH + VP8) of a Pillow-encoded ``width`` x ``height`` transparent image."""
    buf = io.BytesIO()
    Image.new("RGBA", (max(1, width), max(1, height)), (0, 0, 0, 0)).save(buf, "WEBP", lossless=lossless, quality=10)
    data = buf.getvalue()
    pos, chunks = 12, []
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if kind in (b"VP8L", b"VP8 ", b"ALPH"):
            chunks.append(data[pos:pos + 8 + size + (size & 1)])
        pos += 8 + size + (size & 1)
    return b"".join(chunks)


def webp_any(canvas: tuple[int, int], frames: list[tuple[int, int, bytes]], *, animated: bool = True,
             alpha: bool = True) -> bytes:
    """An extended (VP8X) WebP of ``canvas`` (W, H), any values up to 2**24.

    ``frames``: (x, y, image chunks) each; animated files wrap each in an ANMF chunk
    whose declared size is read from the bitstream's chunk when it is a VP8L, else 1x1;
    still files take the first frame's chunks as they are.
    """
    flags = (0x02 if animated else 0) | (0x10 if alpha else 0)
    body = bytearray(b"WEBP")
    body += _riff_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + ((canvas[0] - 1) & 0xFFFFFF).to_bytes(3, "little")
                        + ((canvas[1] - 1) & 0xFFFFFF).to_bytes(3, "little"))
    if animated:
        body += _riff_chunk(b"ANIM", b"\x00\x00\x00\x00\x00\x00")
        for x, y, chunks in frames:
            w = h = 1
            i = chunks.find(b"VP8L")
            if i >= 0 and len(chunks) >= i + 13:
                bits = int.from_bytes(chunks[i + 9:i + 13], "little")
                w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            head = b"".join(((v // 2) & 0xFFFFFF).to_bytes(3, "little") for v in (x, y))
            head += ((w - 1) & 0xFFFFFF).to_bytes(3, "little") + ((h - 1) & 0xFFFFFF).to_bytes(3, "little")
            body += _riff_chunk(b"ANMF", head + (10).to_bytes(3, "little") + b"\x00" + chunks)
    elif frames:
        body += frames[0][2]
    return b"RIFF" + struct.pack("<I", len(body)) + bytes(body)


# ---------------------------------------------------------------- TIFF, any tags


_TIFF_FMT = {1: "B", 2: "B", 3: "H", 4: "I", 5: "I", 16: "Q"}


def tiff_any(ifds: list[list[tuple[int, int, list[int | str]]]], data: bytes, *, big_endian: bool = False,
             loop: str | None = None) -> bytes:
    """A TIFF with one IFD per entry of ``ifds``, each a list of (tag, type, values).

    ``data`` is placed right after the 8-byte header, at offset :data:`TIFF_DATA_OFFSET`,
    so callers write strip and tile offsets as absolute numbers.  A value ``"ifd0"``
    is replaced by the first IFD's offset (an EXIF or sub-IFD pointer that loops).
    ``loop``: ``"self"`` makes the last IFD point at itself as the next one,
    ``"first"`` at the first IFD.
    """
    bo = ">" if big_endian else "<"
    out = bytearray((b"MM\x00*" if big_endian else b"II*\x00") + b"\x00\x00\x00\x00")
    out += data
    if len(out) % 2:
        out += b"\x00"
    first = len(out)
    struct.pack_into(bo + "I", out, 4, first)
    offsets = []
    for n, entries in enumerate(ifds):
        entries = sorted(entries, key=lambda e: e[0])
        start = len(out)
        offsets.append(start)
        extra_at = start + 2 + 12 * len(entries) + 4
        ifd = bytearray(struct.pack(bo + "H", len(entries)))
        extra = bytearray()
        for tag, kind, values in entries:
            vals = [first if v == "ifd0" else int(v) for v in values]
            fmt = _TIFF_FMT.get(kind, "B")
            mask = (1 << (8 * struct.calcsize(fmt))) - 1
            if kind == 5:  # rationals: value / 1
                packed = struct.pack(f"{bo}{2 * len(vals)}I", *(x for v in vals for x in (v & 0xFFFFFFFF, 1)))
            else:
                packed = struct.pack(f"{bo}{len(vals)}{fmt}", *(v & mask for v in vals))
            if len(packed) <= 4:
                ifd += struct.pack(bo + "HHI", tag, kind, len(vals)) + packed.ljust(4, b"\x00")
            else:
                ifd += struct.pack(bo + "HHII", tag, kind, len(vals), extra_at + len(extra))
                extra += packed + (b"\x00" if len(packed) % 2 else b"")
        nxt = 0
        if n + 1 < len(ifds):
            nxt = extra_at + len(extra)
        elif loop == "self":
            nxt = start
        elif loop == "first":
            nxt = first
        ifd += struct.pack(bo + "I", nxt)
        out += ifd + extra
    return bytes(out)


TIFF_DATA_OFFSET = 8


def tiff_lzw_zeros(n: int) -> bytes:
    """A TIFF LZW stream of ``n`` zero bytes (9-bit codes throughout: a clear code every 200 codes)."""
    writer = _Bits()
    left = n
    while left > 0:
        writer.put(256, 9)  # clear
        length = 1
        codes = 0
        while left > 0 and codes < 200:
            take = min(length, left)
            writer.put(0 if take == 1 else 256 + take, 9)
            left -= take
            length += 1
            codes += 1
    writer.put(257, 9)  # end of information
    return writer.flush(pad_bit=0)


def packbits_zeros(n: int) -> bytes:
    """A PackBits stream of ``n`` zero bytes."""
    full, rest = divmod(n, 128)
    return b"\x81\x00" * full + (bytes([257 - rest, 0]) if rest > 1 else b"\x00\x00" if rest else b"")
