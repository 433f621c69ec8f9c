"""CPU cost of each per-request stage of the service outside the forward pass.

Run with the project's venv: ``python bench/prototypes/stage_costs.py IMAGE_DIR [--seconds 1]``.
For each test image: sha256 of the bytes, ``pipeline.decode_for`` (with the
service's default JPEG draft) and ``Model.preprocess``'s resize.  CPU
milliseconds per call (process time, median of repetitions), so other jobs on
the machine matter less.  The forward pass's CPU per image is in (a).

A prototype kept for the record: ``resize_gather`` gathers the four
neighbours of each output pixel before converting to float (bit-identical to
``resize_bilinear``, asserted).  It was not cheaper: numpy's 2-D fancy
indexing costs what the saved float work gains, and the resize is ~2 ms
anyway, so preprocess is not worth changing.  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from nsfw_core.inference.model import _axis, resize_bilinear  # noqa: E402


def resize_gather(image: np.ndarray, size: int) -> np.ndarray:
    """Same result as nsfw_core.inference.model.resize_bilinear, bit for bit; converts only size*size*4 pixels."""
    h, w = image.shape[:2]
    ys, y0, y1 = _axis(h, size)
    xs, x0, x1 = _axis(w, size)
    top, bottom = image[y0], image[y1]  # (size, W, C) uint8: row gathers stay in uint8
    tl, tr = top[:, x0].astype(np.float32), top[:, x1].astype(np.float32)
    bl, br = bottom[:, x0].astype(np.float32), bottom[:, x1].astype(np.float32)
    wy = ys[:, None, None]
    left = tl + (bl - tl) * wy  # == rows[:, x0] of resize_bilinear, element for element
    right = tr + (br - tr) * wy
    return left + (right - left) * xs[None, :, None]


def cpu_ms(fn, seconds: float, reps: int = 5) -> float:
    fn()
    out = []
    for _ in range(reps):
        n, c0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds / reps or n == 0:
            fn()
            n += 1
        out.append((time.process_time() - c0) / n * 1000)
    return round(statistics.median(out), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("image_dir")
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    from nsfw_core.inference.pipeline import decode_for
    from nsfw_core.base.settings import load_settings

    settings = load_settings({})

    class _M:  # decode_for only needs input_size
        input_size = 224

    out = {}
    for path in sorted(Path(a.image_dir).iterdir()):
        if path.suffix not in (".jpg", ".png"):
            continue
        data = path.read_bytes()
        rgb = decode_for(_M, data, settings)
        ref = resize_bilinear(rgb, 224)
        assert np.array_equal(ref, resize_gather(rgb, 224)), f"{path.name}: gather variant differs"
        row = {
            "decoded_shape": list(rgb.shape),
            "sha256_ms": cpu_ms(lambda: hashlib.sha256(data).hexdigest(), a.seconds),
            "decode_ms": cpu_ms(lambda: decode_for(_M, data, settings), a.seconds),
            "preprocess_ms": cpu_ms(lambda: resize_bilinear(rgb, 224) * np.float32(1 / 255), a.seconds),
            "preprocess_gather_ms": cpu_ms(lambda: resize_gather(rgb, 224) * np.float32(1 / 255), a.seconds),
        }
        out[path.stem] = row
        print(path.stem, row, file=sys.stderr, flush=True)
    print(json.dumps({"stages": out}))


if __name__ == "__main__":
    main()
