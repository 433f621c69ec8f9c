"""Fuzz ``nsfw_core.decode.decode`` with mutated images, for as long as you like.

    python bench/fuzz_decode.py --iterations 10000 [--seed N]
    python bench/fuzz_decode.py --seed N --iteration I      # replay one case, with its traceback

Each iteration takes one file of the seed corpus (the reference JPEGs plus small
generated PNG/GIF/WebP/BMP/TIFF/JPEG files in many modes), applies 1-4 random
mutations (byte flips, overwrites with boundary values, truncation, insertion,
deletion, splices from another file) and decodes the result.  The property:
``decode`` returns a C-contiguous ``uint8`` array of shape (H, W, 3), or raises an
``NSFWError`` with status 413, 415 or 422 that was not Pillow's own bomb check
firing first.  Anything else is counted as *unexpected*; the script then prints
a reproducer for each and exits with status 1.

Iteration ``I`` of seed ``N`` only depends on ``(N, I)`` (and the Pillow version,
which writes the generated part of the corpus), so a reproducer replays alone.
tests/test_decode_fuzz.py imports the corpus, the mutations and the check from here.
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from nsfw_core.decode import decode  # noqa: E402
from nsfw_core.errors import NSFWError  # noqa: E402

REFERENCE = ROOT / "tests" / "fixtures" / "reference"
EXPECTED_STATUSES = (413, 415, 422)
OUTCOMES = ("ok", "413", "415", "422", "unexpected")
INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00",
               b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x01", b"\x01\x00")
DRAFT_SIZES = (None, None, 224)

Mutation = tuple  # one of ("flip", pos, xor) | ("truncate", pos) | ("insert", pos, bytes) | ...


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
        return data[:pos] + mutation[2] + data[pos + len(mutation[2]) :]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + mutation[2] + data[pos:]
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
    except Exception as exc:  # noqa: BLE001 - catching everything is the point
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


# --- command line ------------------------------------------------------------------------------


def _strict_bomb_warnings() -> None:
    """Pillow's chatter about corrupt files is expected; its bomb warning is not."""
    warnings.simplefilter("ignore")
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def replay(seed: int, iteration: int, corpus: dict[str, bytes]) -> int:
    name, mutations, draft_size = case(seed, iteration, corpus)
    data = mutated(name, mutations, corpus)
    print(f"seed {seed} iteration {iteration}: {name} ({len(data)} bytes), draft_size={draft_size}")
    for mutation in mutations:
        print("  ", mutation if mutation[0] != "insert" else (*mutation[:2], f"{len(mutation[2])} bytes"))
    result, detail = outcome(data, draft_size)
    print(f"outcome: {result}")
    if isinstance(detail, BaseException):
        traceback.print_exception(detail)
    elif detail:
        print(detail)
    return 1 if result == "unexpected" else 0


def run(seed: int, iterations: int, corpus: dict[str, bytes]) -> int:
    counts: collections.Counter[str] = collections.Counter()
    failures: list[tuple[int, object]] = []
    slowest = (0.0, -1, "")
    start = time.perf_counter()
    for iteration in range(iterations):
        name, mutations, draft_size = case(seed, iteration, corpus)
        data = mutated(name, mutations, corpus)
        began = time.perf_counter()
        result, detail = outcome(data, draft_size)
        took = time.perf_counter() - began
        slowest = max(slowest, (took, iteration, f"{name}, {result}"))
        counts[result] += 1
        if result == "unexpected":
            failures.append((iteration, detail))
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fuzz_decode: {iterations} iterations, seed {seed}, {len(corpus)} seed files, "
           f"{elapsed:.1f} s ({1000 * elapsed / max(iterations, 1):.2f} ms/iteration), peak RSS {peak_mib:.0f} MiB")
    for name in OUTCOMES:
        print(f"  {name:<10} {counts[name]:>7}")
    print(f"slowest: {1000 * slowest[0]:.1f} ms (iteration {slowest[1]}: {slowest[2]})")
    for iteration, detail in failures[:20]:
        print(f"UNEXPECTED at iteration {iteration}: {detail!r}")
        print(f"  reproduce: python bench/fuzz_decode.py --seed {seed} --iteration {iteration}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iteration", type=int, help="replay this single iteration and show its traceback")
    args = parser.parse_args(argv)
    _strict_bomb_warnings()
    corpus = seed_corpus()
    if args.iteration is not None:
        return replay(args.seed, args.iteration, corpus)
    return run(args.seed, args.iterations, corpus)


if __name__ == "__main__":
    sys.exit(main())
