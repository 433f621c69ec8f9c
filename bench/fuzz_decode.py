"""Fuzz ``nsfw_core.images.decode`` with mutated and structure-aware images, for as long as you like.

    python bench/fuzz_decode.py --iterations 10000 [--seed N] [--mode structure|mutate|both] [--jobs J]
    python bench/fuzz_decode.py --mode M --seed N --iteration I   # replay one case, with its traceback

Two kinds of case.  *mutate*: each iteration takes one file of the seed corpus (the reference JPEGs plus small
generated PNG/GIF/WebP/BMP/TIFF/JPEG files in many modes), applies 1-4 random
mutations (byte flips, overwrites with boundary values, truncation, insertion,
deletion, splices from another file) and decodes the result.  The property:
``decode`` returns a C-contiguous ``uint8`` array of shape (H, W, 3), or raises an
``NSFWError`` with status 413, 415 or 422 that was not Pillow's own bomb check
firing first.  Anything else is counted as *unexpected*; the script then prints
a reproducer for each and exits with status 1.

*structure*: each iteration builds a valid-looking file whose declared structure is
hostile (tests/helpers/hostile.py): TIFF tags (tile and strip sizes, bits and samples
per pixel, compression, photometric, pages, IFD loops), PNG IHDR (sizes near the
pixel limit and extreme aspect ratios, bit depths, colour types, interlace, palette
sizes, many IDATs), JPEG frame headers (sizes, sampling factors, component counts,
progressive scan counts around ``max_scans``), GIF screens and frame counts, WebP
VP8X canvases and animation frame counts.  ``--mode both`` (the default) runs mutate
cases at even iterations and structure cases at odd ones.

The property checked by the run (:func:`bounded_outcome`) is the service's path:
``plan()`` first (it may refuse with 413/415/422); if ``cost.inline``, ``decode`` in
this process, where the plan and decode together must take at most
:data:`INLINE_CPU_S` of CPU time and grow the peak RSS by at most
:data:`MEM_PER_COST_PIXEL` bytes per ``cost.pixels`` plus :data:`MEM_SLACK`;
otherwise the decode goes through ``nsfw_core.images.sandbox.Sandbox`` (one child,
:data:`SANDBOX_TIMEOUT` s), where a ``DecodeTimeout`` is expected, the answer must
come within the deadline plus :data:`SANDBOX_SLACK_S`, and the child's peak RSS
obeys the same memory bound.  The peak RSS comes from ``VmHWM`` after resetting it
(``/proc/self/clear_refs``).  By default cases run in a worker subprocess (``--jobs``
of them), so that a crash or a hang is one unexpected case rather than the end of the run.

Iteration ``I`` of seed ``N`` only depends on ``(N, I)`` and the kind of case (and the
Pillow version, which writes the generated part of the corpus and some bitstreams), so
a reproducer replays alone.  tests/test_decode_fuzz.py imports the corpus, the
mutations, the generators and the checks from here.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import io
import json
import os
import random
import re
import resource
import select
import subprocess
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
from PIL import Image, TiffImagePlugin

from nsfw_core.base.errors import DecodeTimeout, NSFWError
from nsfw_core.images.decode import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SCANS, decode, plan
from nsfw_core.images.sandbox import Sandbox
from tests.helpers import hostile

REFERENCE = ROOT / "tests" / "fixtures" / "reference"
EXPECTED_STATUSES = (413, 415, 422)
OUTCOMES = ("ok", "413", "415", "422", "timeout", "unexpected")
MODES = ("structure", "mutate", "both")
INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00",
               b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x01", b"\x01\x00")
DRAFT_SIZES = (None, None, 224)

Mutation = tuple[Any, ...]  # one of ("flip", pos, xor) | ("truncate", pos) | ("insert", pos, bytes) | ...


# --- corpus ------------------------------------------------------------------------------------


def _save(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth gradient plus noise, so that compressors produce non-trivial streams."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(height) * 7, np.arange(width) * 5) % 256
    rgba = (ramp[:, :, None] + rng.integers(0, 40, (height, width, 4))) % 256
    rgba[:, :, 3] = np.where(rng.random((height, width)) < 0.3, 0, 255 - ramp // 2)
    return Image.fromarray(rgba.astype(np.uint8), "RGBA").convert(mode)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _generated() -> dict[str, bytes]:
    rgb, rgba = _noise("RGB", (24, 16), 1), _noise("RGBA", (20, 14), 2)
    frames = [_noise("RGB", (16, 12), seed).convert("P") for seed in (3, 4, 5)]
    grey16 = Image.fromarray((np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365).astype(np.uint16))
    floats = Image.fromarray(np.linspace(-20, 300, 48, dtype=np.float32).reshape(6, 8))
    return {
        "jpeg-baseline": _save(rgb, "JPEG", quality=80),
        "jpeg-progressive-exif6": _save(rgb, "JPEG", quality=80, progressive=True, exif=_exif(6)),
        "jpeg-grey": _save(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "png-rgb": _save(rgb, "PNG"),
        "png-rgba-interlaced": _save(rgba, "PNG", interlace=1),
        "png-palette-trns": _save(rgba.convert("P"), "PNG", transparency=0),
        "png-la": _save(rgba.convert("LA"), "PNG"),
        "png-i16": _save(grey16, "PNG"),
        "png-1bit": _save(rgb.convert("1"), "PNG"),
        "png-exif8": _save(rgb, "PNG", exif=_exif(8)),
        "gif-animated": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], transparency=0, loop=0),
        "gif-still": _save(rgb.convert("P"), "GIF", comment=b"fuzz"),
        "webp-lossy": _save(rgb, "WEBP", quality=70),
        "webp-lossless-alpha": _save(rgba, "WEBP", lossless=True),
        "webp-animated": _save(rgba, "WEBP", save_all=True, append_images=[rgba.rotate(180)], duration=40),
        "bmp-rgb": _save(rgb, "BMP"),
        "bmp-palette": _save(rgb.convert("P"), "BMP"),
        "bmp-1bit": _save(rgb.convert("1"), "BMP"),
        "tiff-lzw": _save(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-multipage": _save(rgb, "TIFF", save_all=True, append_images=[rgba]),
        "tiff-i16": _save(grey16, "TIFF"),
        "tiff-float": _save(floats, "TIFF"),
        "tiff-cmyk": _save(rgb.convert("CMYK"), "TIFF"),
        "tiff-jpeg": _save(rgb, "TIFF", compression="jpeg"),
        "tiff-pa": _save(rgba.convert("PA"), "TIFF"),
    }


def seed_corpus() -> dict[str, bytes]:
    """Name -> bytes of every seed file, in a stable order."""
    corpus = {f"ref-{path.stem}": path.read_bytes() for path in sorted(REFERENCE.glob("*.jpg"))}
    corpus.update(_generated())
    return corpus


# --- mutations ---------------------------------------------------------------------------------


def apply_mutation(data: bytes, mutation: Mutation, corpus: dict[str, bytes]) -> bytes:
    """Apply one mutation; positions are taken modulo the length, so any integer works."""
    kind, pos = mutation[0], mutation[1] % (len(data) + 1)
    if kind == "flip":
        if pos == len(data):
            return data
        return data[:pos] + bytes([data[pos] ^ mutation[2]]) + data[pos + 1 :]
    if kind == "overwrite":
        patch: bytes = mutation[2]
        return data[:pos] + patch + data[pos + len(patch) :]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        inserted: bytes = mutation[2]
        return data[:pos] + inserted + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + mutation[2] :]
    if kind == "splice":
        donor = corpus[mutation[2]]
        start = mutation[3] % (len(donor) + 1)
        return data[:pos] + donor[start : start + mutation[4]] + data[pos + mutation[4] :]
    raise ValueError(f"unknown mutation {kind!r}")


def random_mutation(rng: random.Random, names: list[str]) -> Mutation:
    # Half of the positions fall in the first 256 bytes, where the headers are.
    pos = rng.randrange(256) if rng.random() < 0.5 else rng.randrange(1 << 31)
    kind = rng.choice(("flip", "flip", "overwrite", "truncate", "insert", "delete", "splice"))
    if kind == "flip":
        return (kind, pos, rng.randrange(1, 256))
    if kind == "overwrite":
        return (kind, pos, rng.choice(INTERESTING))
    if kind == "truncate":
        return (kind, pos)
    if kind == "insert":
        return (kind, pos, rng.randbytes(rng.randrange(1, 65)))
    if kind == "delete":
        return (kind, pos, rng.randrange(1, 65))
    return (kind, pos, rng.choice(names), rng.randrange(1 << 31), rng.randrange(1, 257))


def case(seed: int, iteration: int, corpus: dict[str, bytes]) -> tuple[str, list[Mutation], int | None]:
    """The seed file, mutations and draft size of one iteration."""
    rng = random.Random(f"{seed}:{iteration}")
    names = list(corpus)
    name = rng.choice(names)
    mutations = [random_mutation(rng, names) for _ in range(rng.randint(1, 4))]
    return name, mutations, rng.choice(DRAFT_SIZES)


def mutated(name: str, mutations: list[Mutation], corpus: dict[str, bytes]) -> bytes:
    data = corpus[name]
    for mutation in mutations:
        data = apply_mutation(data, mutation, corpus)
    return data


# --- the property ------------------------------------------------------------------------------


def outcome(data: bytes, draft_size: int | None = None) -> tuple[str, BaseException | str | None]:
    """("ok" | "413" | "415" | "422", None) or ("unexpected", the exception or a description)."""
    try:
        arr = decode(data, draft_size=draft_size)
    except NSFWError as exc:
        if exc.status not in EXPECTED_STATUSES:
            return "unexpected", exc
        if isinstance(exc.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            return "unexpected", f"Pillow's bomb check fired before ours: {exc.__cause__!r}"
        return str(exc.status), None
    except Exception as exc:
        return "unexpected", exc
    problem = array_problem(arr)
    return ("unexpected", problem) if problem else ("ok", None)


def array_problem(arr: object) -> str | None:
    if not isinstance(arr, np.ndarray):
        return f"returned {type(arr).__name__}, not an ndarray"
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        return f"returned dtype {arr.dtype} shape {arr.shape}"
    if not arr.flags.c_contiguous:
        return "returned a non-contiguous array"
    return None


# --- structure-aware generators ----------------------------------------------------------------
#
# Each generator draws the declared structure of one file from ``rng`` and returns a
# description (printed by a replay) and the bytes.  Most cases are small, so that a run is
# fast; a fixed share declare sizes near the pixel limit, extreme aspect ratios and
# structures at the edges of what the formats allow.

MAX_PIXELS = DEFAULT_MAX_PIXELS
EDGE_SIDES = (1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 16383, 16384, 16385,
              32767, 32768, 65535)
FULL_DATA_BYTES = 48 << 20  # larger declared images get short data (decoders stop at its end)
FAMILIES = ("tiff", "png", "jpeg", "gif", "webp")
STRUCTURE_DRAFT_SIZES = (None, None, 224, 896)


def _dims(rng: random.Random, max_side: int = 65535) -> tuple[int, int]:
    kind = rng.choices(("small", "medium", "large", "aspect", "near_max", "over", "edge"),
                       weights=(38, 22, 6, 12, 6, 6, 10))[0]
    if kind == "small":
        w, h = rng.randint(1, 64), rng.randint(1, 64)
    elif kind == "medium":
        w, h = rng.randint(64, 1024), rng.randint(64, 1024)
    elif kind == "large":
        w, h = rng.randint(1024, 6000), rng.randint(1024, 6000)
    elif kind == "aspect":
        short = rng.choice((1, 1, 2, 3, 4, rng.randint(5, 64)))
        w = rng.randint(10_000, max(10_000, min(max_side, int(MAX_PIXELS * 1.2) // short)))
        h = short
    elif kind == "near_max":
        w = rng.randint(2_000, min(max_side, 40_000))
        h = MAX_PIXELS // w + rng.choice((-1, 0, 0, 1, 2))
    elif kind == "over":
        w = rng.randint(7_000, max_side)
        h = rng.randint(MAX_PIXELS // w + 1, max(MAX_PIXELS // w + 1, min(max_side, 4 * MAX_PIXELS // w)))
    else:
        w, h = rng.choice(EDGE_SIDES), rng.choice(EDGE_SIDES)
    w, h = min(max(w, 1), max_side), min(max(h, 1), max_side)
    return (w, h) if rng.random() < 0.5 else (h, w)


def _pick(rng: random.Random, common: tuple[int, ...], rare: tuple[int, ...], p_rare: float = 0.15) -> int:
    return rng.choice(rare) if rare and rng.random() < p_rare else rng.choice(common)


# Pillow's supported TIFF layouts: (byte order, photometric, sample formats, fill order, bits, extra samples).
_TIFF_LAYOUTS = sorted(TiffImagePlugin.OPEN_INFO)


def gen_tiff(rng: random.Random) -> tuple[dict[str, Any], bytes]:
    w, h = _dims(rng, 1 << 20)
    known = rng.choice(_TIFF_LAYOUTS) if rng.random() < 0.7 else None
    if known is not None:  # a layout Pillow decodes: the rest of the structure is what is hostile
        samples, bits = len(known[4]), known[4][0]
        photometric = known[1]
    else:
        samples = _pick(rng, (1, 1, 1, 3, 3, 4, 2), (5, rng.randint(6, 40), 0))
        bits = _pick(rng, (8, 8, 8, 1, 16, 4, 2, 32), (12, 24, 64, rng.randint(0, 255)))
        photometric = (1 if samples < 3 else 2) if rng.random() < 0.6 else \
            _pick(rng, (0, 1, 2, 3, 4, 5, 6, 8), (rng.randint(9, 65535), 32844))
    compression = _pick(rng, (1, 1, 5, 8, 32773, 7), (2, 3, 4, 6, 34676, 34712, 50000, 0, 65535), 0.1)
    planar = _pick(rng, (1, 1, 1, 2), (0, 3), 0.05)
    tiled = rng.random() < 0.5
    spp_bits = max(samples, 1) * bits
    if tiled:
        tw = _pick(rng, (16, 64, 256, 512, 1024, 4096, 16384, 46000), (rng.randint(1, 70000), 65536, 1 << 20))
        th = _pick(rng, (16, 64, 256, 512, 1024, 4096, 16384, 46000), (rng.randint(1, 70000), 65536, 1 << 20))
        across, down = -(-w // tw), -(-h // th)
        seg_bytes = -(-tw * (bits if planar == 2 else spp_bits) // 8) * th
        layout: dict[str, Any] = {"tile": (tw, th)}
    else:
        rps = _pick(rng, (h, h, 1, rng.randint(1, h), 16, 8192), (0xFFFFFFFF, 65535, 0, h + 1))
        across, down = 1, -(-h // max(rps, 1))
        seg_bytes = -(-w * (bits if planar == 2 else spp_bits) // 8) * min(max(rps, 1), h)
        layout = {"rows_per_strip": rps}
    segments = across * down * (max(samples, 1) if planar == 2 else 1)
    count = segments if segments <= 4096 else rng.choice((1, 4096))
    full = rng.random() < 0.6 and seg_bytes <= (16 << 20)
    raw = seg_bytes if full else min(seg_bytes, 256)
    if compression == 8:
        blob = zlib.compress(bytes(raw), 1)
    elif compression == 5:
        blob = hostile.tiff_lzw_zeros(raw if raw <= (4 << 20) else 256)
    elif compression == 32773:
        blob = hostile.packbits_zeros(raw)
    elif compression == 7:
        jw, jh = (layout["tile"] if tiled else (w, min(max(layout["rows_per_strip"], 1), h)))
        small = jw * jh <= 4_000_000 and full
        blob = hostile.jpeg(min(jw, 65535) if small else 16, min(jh, 65535) if small else 16,
                            sampling=((1, 1),) * min(max(samples, 1), 4) if photometric != 6 else ((2, 2), (1, 1), (1, 1)))
    else:
        blob = bytes(raw)
    if not full and rng.random() < 0.3:
        blob = rng.randbytes(len(blob))
    short_or_long = lambda v: 3 if v <= 0xFFFF and rng.random() < 0.5 else 4  # noqa: E731
    off = hostile.TIFF_DATA_OFFSET
    entries: list[tuple[int, int, list[Any]]] = [
        (256, short_or_long(w), [w]), (257, short_or_long(h), [h]),
        (258, 3, list(known[4]) if known else [bits] * (max(samples, 1) if rng.random() < 0.8 else 1)),
        (259, 3, [compression]), (262, 3, [photometric]), (277, 3, [samples]), (284, 3, [planar]),
    ]
    if tiled:
        entries += [(322, short_or_long(layout["tile"][0]), [layout["tile"][0]]),
                    (323, short_or_long(layout["tile"][1]), [layout["tile"][1]]),
                    (324, 4, [off] * count), (325, 4, [len(blob)] * count)]
    else:
        entries += [(273, 4, [off] * count), (278, 4, [layout["rows_per_strip"]]), (279, 4, [len(blob)] * count)]
    extras: dict[str, Any] = {}
    if known is not None:
        extras["layout"] = known
        if known[2] != (1,):
            entries.append((339, 3, list(known[2])))
        if known[3] != 1:
            entries.append((266, 3, [known[3]]))
        if known[5]:
            entries.append((338, 3, list(known[5])))
    elif rng.random() < 0.2:
        extras["sample_format"] = rng.choice((1, 2, 3, 4, 0))
        entries.append((339, 3, [extras["sample_format"]] * max(samples, 1)))
    if rng.random() < 0.2:
        extras["predictor"] = rng.choice((1, 2, 3, 0, 9))
        entries.append((317, 3, [extras["predictor"]]))
    if known is None and samples in (2, 4, 5) and rng.random() < 0.5:
        extras["extra_samples"] = rng.choice((0, 1, 2, 3))
        entries.append((338, 3, [extras["extra_samples"]]))
    if photometric == 3 or rng.random() < 0.05:
        colours = 3 * (1 << min(bits, 16)) if rng.random() < 0.8 else rng.choice((0, 3, 768, 3 * 65537))
        extras["colormap_values"] = colours
        if colours:
            entries.append((320, 3, [0] * colours))
    if photometric == 6 and rng.random() < 0.7:
        extras["ycbcr_subsampling"] = (rng.choice((1, 2, 4, 0, 8)), rng.choice((1, 2, 4, 0, 8)))
        entries.append((530, 3, list(extras["ycbcr_subsampling"])))
    if rng.random() < 0.2:
        extras["orientation"] = rng.choice((1, 3, 5, 6, 7, 8, 0, 9))
        entries.append((274, 3, [extras["orientation"]]))
    if rng.random() < 0.08:
        extras["exif_ifd_loop"] = True
        entries.append((34665, 4, ["ifd0"]))
    if rng.random() < 0.05:
        extras["subifd_loop"] = True
        entries.append((330, 4, ["ifd0"]))
    pages = _pick(rng, (1, 1, 1, 2, 3), (rng.randint(4, 64), rng.randint(64, 2000)), 0.15)
    ifd_bytes = sum(4 * len(values) for _tag, _kind, values in entries)
    pages = max(1, min(pages, (8 << 20) // max(ifd_bytes, 1)))  # at most ~8 MB of IFDs
    loop = rng.choice((None, None, None, None, "self", "first"))
    big_endian = known[0] == b"MM" if known is not None else rng.random() < 0.2
    data = hostile.tiff_any([entries] * pages, blob, big_endian=big_endian, loop=loop)
    desc = {"size": (w, h), "samples": samples, "bits": bits, "compression": compression, "photometric": photometric,
            "planar": planar, **layout, "segments": segments, "offsets": count, "full": full, "blob": len(blob),
            "pages": pages, "loop": loop, "big_endian": big_endian, **extras}
    return desc, data


_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def gen_png(rng: random.Random) -> tuple[dict[str, Any], bytes]:
    w, h = _dims(rng, MAX_PIXELS + 10)
    if rng.random() < 0.02:
        w, h = rng.choice(((1 << 31, 1), (1, 1 << 31), (0, 16), (16, 0), ((1 << 32) - 1, 1)))
    if rng.random() < 0.88:
        colour_type = rng.choice(tuple(_PNG_DEPTHS))
        bit_depth = rng.choice(_PNG_DEPTHS[colour_type])
    else:
        colour_type, bit_depth = rng.randint(0, 7), rng.choice((0, 1, 2, 3, 4, 5, 8, 16, 32))
    interlace = _pick(rng, (0, 0, 1), (2, 255), 0.03)
    palette = None
    if colour_type == 3 or rng.random() < 0.05:
        palette = _pick(rng, (768, 768, 3 * rng.randint(1, 256), 48), (0, 3, 765, 769, 3 * rng.randint(257, 400), 1))
    trns = None
    if rng.random() < 0.25:
        trns = {0: 2, 2: 6, 3: rng.randint(1, 256)}.get(colour_type, 2) if rng.random() < 0.8 else rng.randint(0, 300)
    idat_chunks = _pick(rng, (1, 1, 1, 2, 7), (rng.randint(8, 5000),), 0.1)
    empty_idats = _pick(rng, (0, 0, 0), (rng.randint(1, 20_000),), 0.05)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type, 1)
    raw = hostile.png_raw_size(w, h, channels, bit_depth, interlace)
    full = raw <= FULL_DATA_BYTES and rng.random() < 0.75
    ztxt = rng.choice((10**5, 10**6, 2 * 10**6)) if rng.random() < 0.03 else 0
    actl = rng.choice((0, 1, 2, 10**6, (1 << 31) - 1)) if rng.random() < 0.08 else None
    data = hostile.png_any(w, h, bit_depth=bit_depth, colour_type=colour_type, interlace=interlace, palette=palette,
                           trns=trns, idat_chunks=idat_chunks, empty_idats=empty_idats, full=full, ztxt_bomb=ztxt,
                           actl_frames=actl)
    desc = {"size": (w, h), "colour_type": colour_type, "bit_depth": bit_depth, "interlace": interlace,
            "palette": palette, "trns": trns, "idat_chunks": idat_chunks, "empty_idats": empty_idats,
            "raw_bytes": raw, "full": full, "ztxt_bomb": ztxt, "actl_frames": actl}
    return desc, data


def gen_jpeg(rng: random.Random) -> tuple[dict[str, Any], bytes]:
    w, h = _dims(rng, 65535)
    if rng.random() < 0.02:
        w, h = rng.choice(((0, 16), (16, 0)))
    ncomp = _pick(rng, (1, 1, 3, 3, 3, 4), (2, rng.randint(5, 10), 0), 0.08)
    if rng.random() < 0.7:
        luma = rng.choice(((1, 1), (2, 2), (2, 1), (1, 2)))
        sampling = tuple([luma] + [(1, 1)] * (ncomp - 1))[:ncomp]
    else:
        sampling = tuple((rng.choice((1, 2, 3, 4, 4, 0, 5, 15)), rng.choice((1, 2, 3, 4, 4, 0, 5, 15)))
                         for _ in range(ncomp))
    progressive = rng.random() < 0.5
    scans = None
    if progressive:
        scans = rng.choice((None, rng.randint(1, 20), DEFAULT_MAX_SCANS + rng.randint(-3, 3),
                            DEFAULT_MAX_SCANS + rng.randint(-3, 3), rng.randint(100, 2000)))
    precision = _pick(rng, (8,), (12, 16, 0, 7), 0.04)
    full = rng.random() < 0.6
    restart = rng.choice((1, 7, 65535)) if rng.random() < 0.05 else 0
    data = hostile.jpeg(w, h, sampling=sampling, progressive=progressive, scans=scans, precision=precision,
                        full=full, restart=restart)
    desc = {"size": (w, h), "sampling": sampling, "progressive": progressive, "scans": scans,
            "precision": precision, "full": full, "restart": restart}
    return desc, data


def gen_gif(rng: random.Random) -> tuple[dict[str, Any], bytes]:
    screen = _dims(rng, 65535)
    frames_n = _pick(rng, (1, 1, 2, 3, rng.randint(4, 100)), (rng.randint(100, 20_000),), 0.15)
    if rng.random() < 0.7:
        first = (0, 0, *screen)
    else:
        fw, fh = _dims(rng, 65535)
        first = (rng.choice((0, 0, rng.randint(0, 65535))), rng.choice((0, 0, rng.randint(0, 65535))), fw, fh)
    big_others = rng.random() < 0.2
    rects = [first]
    for _ in range(frames_n - 1):
        if big_others:
            rects.append((rng.randint(0, 100), rng.randint(0, 100), rng.randint(1, 65535), rng.randint(1, 65535)))
        else:
            rects.append((0, 0, 1, 1))
    full = first[2] * first[3] <= 16_000_000 and rng.random() < 0.7
    interlace = rng.random() < 0.15
    global_bits = rng.choice((1, 8, None))
    local_bits = rng.choice((None, None, None, 1, 8))
    data = hostile.gif_any(screen, rects, full=full, interlace=interlace, global_bits=global_bits,
                           local_bits=local_bits)
    desc = {"screen": screen, "frames": frames_n, "first": first, "big_others": big_others, "full": full,
            "interlace": interlace, "global_bits": global_bits, "local_bits": local_bits}
    return desc, data


_BITSTREAMS: dict[tuple[int, int, bool], bytes] = {}


def _webp_bitstream(w: int, h: int, lossless: bool) -> bytes:
    key = (w, h, lossless)
    if key not in _BITSTREAMS:
        if len(_BITSTREAMS) > 256:
            _BITSTREAMS.clear()
        _BITSTREAMS[key] = hostile.webp_bitstream(w, h, lossless=lossless)
    return _BITSTREAMS[key]


def gen_webp(rng: random.Random) -> tuple[dict[str, Any], bytes]:
    canvas = _dims(rng, 1 << 24)
    animated = rng.random() < 0.7
    frames_n = _pick(rng, (1, 1, 2, 3, rng.randint(4, 50)), (rng.randint(50, 5000),), 0.15) if animated else 1
    lossless = rng.random() < 0.8
    if rng.random() < 0.5 and canvas[0] * canvas[1] <= 4_000_000 and canvas[0] <= 16383 and canvas[1] <= 16383:
        fw, fh = canvas
    else:
        fw, fh = rng.randint(1, 64), rng.randint(1, 64)
    first = _webp_bitstream(fw, fh, lossless)
    other = _webp_bitstream(rng.randint(1, 16), rng.randint(1, 16), lossless) if frames_n > 1 else b""
    placement = rng.choice(("origin", "origin", "inside", "outside"))

    def where() -> tuple[int, int]:
        if placement == "origin":
            return 0, 0
        if placement == "inside":
            return rng.randint(0, max(0, canvas[0] - 16)) & ~1, rng.randint(0, max(0, canvas[1] - 16)) & ~1
        return rng.randint(0, 1 << 24), rng.randint(0, 1 << 24)

    frames = [(*where(), first)] + [(*where(), other) for _ in range(frames_n - 1)]
    alpha = rng.random() < 0.7
    data = hostile.webp_any(canvas, frames, animated=animated, alpha=alpha)
    desc = {"canvas": canvas, "animated": animated, "frames": frames_n, "first_frame": (fw, fh),
            "lossless": lossless, "placement": placement, "alpha": alpha}
    return desc, data


GENERATORS = {"tiff": gen_tiff, "png": gen_png, "jpeg": gen_jpeg, "gif": gen_gif, "webp": gen_webp}


def structure_case(seed: int, iteration: int) -> tuple[str, dict[str, Any], bytes, int | None]:
    """Family, description, bytes and draft size of one structure-aware iteration."""
    rng = random.Random(f"structure:{seed}:{iteration}")
    family = rng.choice(FAMILIES)
    draft_size = rng.choice(STRUCTURE_DRAFT_SIZES)
    desc, data = GENERATORS[family](rng)
    return family, desc, data, draft_size


def kind_of(mode: str, iteration: int) -> str:
    """``both`` runs mutate cases at even iterations, structure cases at odd ones."""
    if mode == "both":
        return "mutate" if iteration % 2 == 0 else "structure"
    return mode


def build_case(mode: str, seed: int, iteration: int, corpus: dict[str, bytes]) -> tuple[str, str, dict[str, Any], bytes, int | None]:
    """(kind, label, description, bytes, draft size) of iteration ``iteration``."""
    kind = kind_of(mode, iteration)
    if kind == "structure":
        family, desc, data, draft_size = structure_case(seed, iteration)
        return kind, family, desc, data, draft_size
    name, mutations, draft_size = case(seed, iteration, corpus)
    shown = [m if m[0] != "insert" else (*m[:2], f"{len(m[2])} bytes") for m in mutations]
    return kind, "mutate", {"seed_file": name, "mutations": shown}, mutated(name, mutations, corpus), draft_size


# --- the bounded property ----------------------------------------------------------------------

INLINE_CPU_S = 1.0  # plan + decode of an inline image, CPU seconds
PLAN_CPU_S = 1.0  # plan of any image
MEM_PER_COST_PIXEL = 16  # bytes of peak RSS growth allowed per declared cost pixel ...
MEM_SLACK = 64 << 20  # ... plus this
SANDBOX_TIMEOUT = 2.0
SANDBOX_SLACK_S = 1.0
_LIMITS = {"max_pixels": DEFAULT_MAX_PIXELS, "max_scans": DEFAULT_MAX_SCANS}
_SANDBOX_MEMLIMIT = "more memory than its declared size allows"

_malloc_trim: Callable[[int], Any] | None
try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _malloc_trim = None


def _proc_status(pid: int | str) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return {}
    return {k: int(v) * 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.MULTILINE)}


def _reset_peak(pid: int | str) -> int | None:
    """Reset the peak RSS of ``pid`` to its current RSS (Linux >= 4.0); the current RSS, or None."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status(pid).get("VmRSS")


def _peak_growth(pid: int | str, base: int | None) -> int | None:
    peak = _proc_status(pid).get("VmHWM")
    return None if base is None or peak is None else max(0, peak - base)


def mem_bound(cost_pixels: int) -> int:
    return MEM_PER_COST_PIXEL * cost_pixels + MEM_SLACK


def _typed(exc: NSFWError) -> tuple[str, object]:
    if exc.status not in EXPECTED_STATUSES:
        return "unexpected", exc
    if isinstance(exc.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "unexpected", f"Pillow's bomb check fired before ours: {exc.__cause__!r}"
    return str(exc.status), None


class Checker:
    """Runs one case the way the service does (plan, then inline or isolated decode) and checks the bounds."""

    def __init__(self, sandbox_timeout: float = SANDBOX_TIMEOUT) -> None:
        self.sandbox_timeout = sandbox_timeout
        self._sandbox: Sandbox | None = None
        self._probe = _save(Image.new("RGB", (8, 8)), "PNG")

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def _ready_child(self) -> int | None:
        """The pid of an idle, started sandbox child (started with a probe decode if needed)."""
        if self._sandbox is None:
            self._sandbox = Sandbox(processes=1, timeout=max(self.sandbox_timeout, 10.0))
        idle = getattr(self._sandbox, "_idle", [])
        if not idle or idle[0].proc.poll() is not None:
            saved, self._sandbox.timeout = self._sandbox.timeout, 30.0
            try:
                self._sandbox.decode(self._probe, limits={**_LIMITS, "draft_size": None}, cost_pixels=64)
            finally:
                self._sandbox.timeout = saved
            idle = getattr(self._sandbox, "_idle", [])
        return idle[0].proc.pid if idle else None

    def check(self, data: bytes, draft_size: int | None) -> tuple[str, object, dict[str, Any]]:
        """(outcome, detail, figures); outcome as in :data:`OUTCOMES`, detail an exception or a text when unexpected."""
        limits: dict[str, Any] = {**_LIMITS, "draft_size": draft_size}
        fig: dict[str, Any] = {"path": "plan"}
        gc.collect()
        if _malloc_trim is not None:
            _malloc_trim(0)
        base = _reset_peak("self")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            found = plan(data, **limits)
        except NSFWError as exc:
            result, detail = _typed(exc)
        except Exception as exc:
            result, detail = "unexpected", exc
        else:
            result, detail = "", None
        fig["plan_cpu_s"] = round(time.process_time() - cpu0, 4)
        if result:  # plan refused (or broke)
            fig["mem"] = _peak_growth("self", base)
            return self._bounds(result, detail, fig, 0, fig["plan_cpu_s"], PLAN_CPU_S)
        cost = found.cost
        fig.update(format=found.format, size=(found.width, found.height), cost_pixels=cost.pixels,
                   cost_work=cost.work, scans=cost.scans, inline=cost.inline)
        if cost.inline:
            fig["path"] = "inline"
            result, detail = self._decode_inline(data, limits)
            fig["cpu_s"] = round(time.process_time() - cpu0, 4)
            fig["wall_s"] = round(time.perf_counter() - wall0, 4)
            fig["mem"] = _peak_growth("self", base)
            return self._bounds(result, detail, fig, cost.pixels, fig["cpu_s"], INLINE_CPU_S)
        fig["mem_plan"] = _peak_growth("self", base)
        if fig["mem_plan"] is not None and fig["mem_plan"] > mem_bound(cost.pixels):
            return "unexpected", (f"plan grew the peak RSS by {fig['mem_plan'] / 2**20:.0f} MiB, over "
                                  f"{mem_bound(cost.pixels) / 2**20:.0f} MiB"), fig
        if fig["plan_cpu_s"] > PLAN_CPU_S:
            return "unexpected", f"plan took {fig['plan_cpu_s']:.2f} s of CPU, over {PLAN_CPU_S} s", fig
        fig["path"] = "sandbox"
        return self._decode_isolated(data, limits, cost.pixels, fig)

    @staticmethod
    def _decode_inline(data: bytes, limits: dict[str, Any]) -> tuple[str, object]:
        try:
            arr = decode(data, **limits)
        except NSFWError as exc:
            result, detail = _typed(exc)
            if result == "413":  # plan accepted the same limits: only a failed allocation gets here
                return "unexpected", f"plan accepted the image, decode answered 413: {exc!r} (cause {exc.__cause__!r})"
            return result, detail
        except Exception as exc:
            return "unexpected", exc
        problem = array_problem(arr)
        return ("unexpected", problem) if problem else ("ok", None)

    def _decode_isolated(self, data: bytes, limits: dict[str, Any], cost_pixels: int, fig: dict[str, Any]) -> tuple[str, object, dict[str, Any]]:
        pid = self._ready_child()
        assert self._sandbox is not None  # _ready_child made it
        child_base = _reset_peak(pid) if pid else None
        self._sandbox.timeout = self.sandbox_timeout
        wall0 = time.perf_counter()
        try:
            arr = self._sandbox.decode(data, limits=limits, cost_pixels=cost_pixels)
        except DecodeTimeout:
            result, detail = "timeout", None
        except NSFWError as exc:
            result, detail = _typed(exc)
            if result == "413" and _SANDBOX_MEMLIMIT in exc.message:
                fig["sandbox_memlimit"] = True
        except Exception as exc:
            result, detail = "unexpected", exc
        else:
            problem = array_problem(arr)
            result, detail = ("unexpected", problem) if problem else ("ok", None)
        fig["wall_s"] = round(time.perf_counter() - wall0, 4)
        idle = getattr(self._sandbox, "_idle", [])
        if pid and idle and idle[0].proc.pid == pid:
            fig["mem"] = _peak_growth(pid, child_base)
        if result == "unexpected":
            return result, detail, fig
        if fig["wall_s"] > self.sandbox_timeout + SANDBOX_SLACK_S:
            return "unexpected", (f"the isolated decode answered after {fig['wall_s']:.2f} s, over the "
                                  f"{self.sandbox_timeout:g} s deadline + {SANDBOX_SLACK_S:g} s"), fig
        if fig.get("mem") is not None and fig["mem"] > mem_bound(cost_pixels):
            return "unexpected", (f"the isolated decode grew the child's peak RSS by {fig['mem'] / 2**20:.0f} MiB, "
                                  f"over {mem_bound(cost_pixels) / 2**20:.0f} MiB (16 B x {cost_pixels} cost pixels "
                                  f"+ 64 MiB)"), fig
        return result, detail, fig

    @staticmethod
    def _bounds(result: str, detail: object, fig: dict[str, Any], cost_pixels: int, cpu: float, cpu_bound: float
                ) -> tuple[str, object, dict[str, Any]]:
        if result == "unexpected":
            return result, detail, fig
        if cpu > cpu_bound:
            return "unexpected", f"{fig['path']} took {cpu:.2f} s of CPU, over {cpu_bound} s", fig
        if fig.get("mem") is not None and fig["mem"] > mem_bound(cost_pixels):
            return "unexpected", (f"{fig['path']} grew the peak RSS by {fig['mem'] / 2**20:.0f} MiB, over "
                                  f"{mem_bound(cost_pixels) / 2**20:.0f} MiB (16 B x {cost_pixels} cost pixels "
                                  f"+ 64 MiB)"), fig
        return result, detail, fig


def bounded_outcome(data: bytes, draft_size: int | None = None, checker: Checker | None = None
                    ) -> tuple[str, object, dict[str, Any]]:
    """:meth:`Checker.check` with a throwaway checker when none is given."""
    if checker is not None:
        return checker.check(data, draft_size)
    own = Checker()
    try:
        return own.check(data, draft_size)
    finally:
        own.close()


# --- command line ------------------------------------------------------------------------------


def _strict_bomb_warnings() -> None:
    """Pillow's chatter about corrupt files is expected; its bomb warning is not."""
    warnings.simplefilter("ignore")
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def _detail_text(detail: object) -> str:
    if isinstance(detail, BaseException):
        return "".join(traceback.format_exception(detail)).rstrip()
    return "" if detail is None else str(detail)


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def replay(mode: str, seed: int, iteration: int, corpus: dict[str, bytes], save: str | None = None) -> int:
    kind, label, desc, data, draft_size = build_case(mode, seed, iteration, corpus)
    print(f"seed {seed} iteration {iteration} ({kind}): {label} ({len(data)} bytes), draft_size={draft_size}")
    for key, value in desc.items():
        if key == "mutations":
            for mutation in value:
                print("  ", mutation)
        else:
            print(f"   {key}: {value}")
    if save:
        Path(save).write_bytes(data)
        print(f"saved to {save}")
    checker = Checker()
    try:
        result, detail, fig = checker.check(data, draft_size)
    finally:
        checker.close()
    print("figures:", json.dumps(fig, default=str))
    print(f"outcome: {result}")
    if isinstance(detail, BaseException):
        traceback.print_exception(detail)
    elif detail:
        print(detail)
    return 1 if result == "unexpected" else 0


def _iter_cases(mode: str, seed: int, iterations: range, corpus: dict[str, bytes]):
    """Yield one record per iteration, checked in this process."""
    checker = Checker()
    try:
        for iteration in iterations:
            t0 = time.perf_counter()
            kind, label, desc, data, draft_size = build_case(mode, seed, iteration, corpus)
            gen_s = time.perf_counter() - t0
            began = time.perf_counter()
            result, detail, fig = checker.check(data, draft_size)
            fig["case_s"] = round(time.perf_counter() - began, 4)
            fig["gen_s"] = round(gen_s, 4)
            yield {"i": iteration, "kind": kind, "label": label, "outcome": result, "detail": detail, "fig": fig,
                   "bytes": len(data)}
    finally:
        checker.close()


def worker(mode: str, seed: int, start: int, stop: int) -> int:
    """Run iterations [start, stop) and write one JSON line per case to the original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the records
    corpus = seed_corpus()
    for record in _iter_cases(mode, seed, range(start, stop), corpus):
        record["detail"] = _detail_text(record["detail"])
        out.write(json.dumps(record, default=str) + "\n")
    return 0


class _Job:
    """One worker subprocess over a range of iterations; restarted after the case it crashed on."""

    def __init__(self, mode: str, seed: int, start: int, stop: int) -> None:
        self.mode, self.seed, self.next, self.stop = mode, seed, start, stop
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""
        self.last_seen = time.monotonic()
        self.spawn()

    def spawn(self) -> None:
        self.buf = b""
        self.last_seen = time.monotonic()
        if self.next >= self.stop:
            self.proc = None
            return
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", self.mode, "--seed", str(self.seed),
             "--start", str(self.next), "--stop", str(self.stop)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)  # the worker and its sandbox child, nothing else
        if self.proc is not None:
            self.proc.wait()


def _run_workers(mode: str, seed: int, iterations: int, jobs: int, hang_s: float):
    """Yield records from ``jobs`` worker subprocesses; a crash or a hang yields an unexpected record."""
    bounds = [iterations * j // jobs for j in range(jobs + 1)]
    running = [_Job(mode, seed, bounds[j], bounds[j + 1]) for j in range(jobs) if bounds[j] < bounds[j + 1]]
    try:
        while any(job.proc is not None for job in running):
            live = {job.proc.stdout.fileno(): job for job in running
                    if job.proc is not None and job.proc.stdout is not None}  # stdout is always a pipe
            ready = select.select(list(live), [], [], 1.0)[0]
            for fd in ready:
                job = live[fd]
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    job.buf += chunk
                    job.last_seen = time.monotonic()
                    while b"\n" in job.buf:
                        line, job.buf = job.buf.split(b"\n", 1)
                        record = json.loads(line)
                        job.next = record["i"] + 1
                        yield record
                    continue
                assert job.proc is not None  # it was live
                code = job.proc.wait()
                if job.next < job.stop:  # died on case job.next
                    yield _lost(mode, job.next, f"the worker died on this case (exit status {code})")
                    job.next += 1
                job.spawn()
            for job in running:
                if job.proc is not None and time.monotonic() - job.last_seen > hang_s:
                    job.kill()
                    yield _lost(mode, job.next, f"no answer within {hang_s:g} s: the worker hung on this case")
                    job.next += 1
                    job.spawn()
    finally:
        for job in running:
            job.kill()


def _lost(mode: str, iteration: int, why: str) -> dict[str, Any]:
    kind = kind_of(mode, iteration)
    return {"i": iteration, "kind": kind, "label": kind, "outcome": "unexpected", "detail": why, "fig": {},
            "bytes": None}


def run(mode: str, seed: int, iterations: int, corpus: dict[str, bytes], *, jobs: int = 1, in_process: bool = False,
        hang_s: float = 120.0, log: str | None = None) -> int:
    counts: collections.Counter[str] = collections.Counter()
    by_label: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_path: collections.Counter[str] = collections.Counter()
    failures: list[dict[str, Any]] = []
    memlimits: list[dict[str, Any]] = []
    timeouts: list[dict[str, Any]] = []
    slowest: dict[str, tuple[Any, ...]] = {}
    worst_mem: dict[str, tuple[Any, ...]] = {}
    start = time.perf_counter()
    records = _iter_cases(mode, seed, range(iterations), corpus) if in_process else \
        _run_workers(mode, seed, iterations, jobs, hang_s)
    log_file = open(log, "a") if log else None
    try:
        for n, record in enumerate(records, 1):
            result, fig = record["outcome"], record["fig"]
            counts[result] += 1
            by_label[record["label"]][result] += 1
            path = fig.get("path", "?")
            by_path[path] += 1
            took = fig.get("cpu_s" if path == "inline" else "wall_s" if path == "sandbox" else "plan_cpu_s", 0.0)
            slowest[path] = max(slowest.get(path, (0.0, -1, "")), (took, record["i"], record["label"], result))
            if fig.get("mem") is not None:
                ratio = fig["mem"] / mem_bound(fig.get("cost_pixels", 0))
                worst_mem[path] = max(worst_mem.get(path, (0.0, -1, "", 0)),
                                      (ratio, record["i"], record["label"], fig["mem"]))
            if result == "unexpected":
                failures.append(record)
            elif fig.get("sandbox_memlimit"):
                memlimits.append(record)
            elif result == "timeout":
                timeouts.append(record)
            if log_file is not None:
                log_file.write(json.dumps({**record, "detail": _detail_text(record["detail"])}, default=str) + "\n")
                if n % 100 == 0:
                    log_file.flush()
                    elapsed = time.perf_counter() - start
                    print(f"  ... {n} cases, {elapsed:.0f} s, {counts['unexpected']} unexpected", flush=True)
    finally:
        if log_file is not None:
            log_file.close()
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    done = sum(counts.values())
    print(f"fuzz_decode: {done} iterations, mode {mode}, seed {seed}, {len(corpus)} seed files, "
          f"{elapsed:.1f} s ({1000 * elapsed / max(done, 1):.2f} ms/iteration), "
          f"{'in process' if in_process else f'{jobs} worker(s)'}, peak RSS {peak_mib:.0f} MiB")
    for name in OUTCOMES:
        print(f"  {name:<10} {counts[name]:>7}")
    print("by kind:  " + "; ".join(f"{label}: " + " ".join(f"{k}={v}" for k, v in sorted(c.items()))
                                   for label, c in sorted(by_label.items())))
    print("by path:  " + " ".join(f"{k}={v}" for k, v in sorted(by_path.items())))
    for path, (took, iteration, label, result) in sorted(slowest.items()):
        print(f"slowest {path}: {1000 * took:.1f} ms (iteration {iteration}: {label}, {result})")
    for path, (ratio, iteration, label, mem) in sorted(worst_mem.items()):
        print(f"largest memory growth / bound, {path}: {ratio:.2f} ({_mib(mem)}, iteration {iteration}: {label})")
    reproduce = "python bench/fuzz_decode.py --mode {kind} --seed " + str(seed) + " --iteration {i}"
    if memlimits:
        print(f"isolated decodes refused by the child's memory limit (413, bounded, but over the declared cost): "
              f"{len(memlimits)}")
        for record in memlimits[:10]:
            print(f"  {record['label']} iteration {record['i']}: {json.dumps(record['fig'], default=str)}")
            print("    reproduce: " + reproduce.format(**record))
    if timeouts:
        print(f"isolated decodes past the deadline (422 decode_timeout): {len(timeouts)}; first ones:")
        for record in timeouts[:5]:
            print(f"  {record['label']} iteration {record['i']}: cost {record['fig'].get('cost_pixels')} pixels, "
                  f"work {record['fig'].get('cost_work')}")
    for record in failures[:50]:
        print(f"UNEXPECTED at iteration {record['i']} ({record['label']}): {_detail_text(record['detail'])}")
        print(f"  figures: {json.dumps(record['fig'], default=str)}")
        print("  reproduce: " + reproduce.format(**record))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="both",
                        help="structure-aware cases, mutated seed files, or both (alternating; the default)")
    parser.add_argument("--iteration", type=int, help="replay this single iteration and show its traceback")
    parser.add_argument("--save", help="with --iteration: write the case's bytes to this file")
    parser.add_argument("--jobs", type=int, default=1, help="worker subprocesses (default 1)")
    parser.add_argument("--in-process", action="store_true", help="check the cases in this process (no workers)")
    parser.add_argument("--log", help="append one JSON line per case to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _strict_bomb_warnings()
    if args.worker:
        return worker(args.mode, args.seed, args.start, args.stop)
    corpus = seed_corpus()
    if args.iteration is not None:
        return replay(args.mode, args.seed, args.iteration, corpus, args.save)
    return run(args.mode, args.seed, args.iterations, corpus, jobs=max(1, args.jobs), in_process=args.in_process,
               log=args.log)


if __name__ == "__main__":
    sys.exit(main())
