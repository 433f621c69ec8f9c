"""Perceptual hashes of images: PDQ of the model input the pipeline has already made.

PDQ (Meta's open-source photo hash, PyPI ``pdqhash``) turns an image into 256 bits whose Hamming
distance stays small for re-encoded, resized and lightly edited copies; ``NSFW_MATCH_DISTANCE``
(default 31 of 256, PDQ's published default) decides what counts as the same picture.

What is hashed is the model's input (``Model.preprocess``: the decoded image resized to S x S,
224 for the default model, values in [0, 1]): every request has it already in its worker thread, so
there is no second decode.  PDQ reduces any image to a 64 x 64 luma image (without keeping its aspect
ratio) before its DCT; :func:`luma64` does that reduction here with PDQ's own filter and decimation
written as a few weighted taps per pixel, and ``pdqhash`` (given 64 x 64, it skips its own reduction)
does the rest: 0.15 ms a hash instead of 0.55 ms for ``pdqhash`` on the 224 x 224 input, the same hash
within 0 to 2 bits on this repository's images.  Stored (decided) and queried images are hashed the
same way.

PDQ is not robust to cropping (2 % off each side moves a hash by 24 to 66 bits on this repository's
images), so a *decided* image is stored with three hashes: the whole input and its centre with 2 %
and 4 % cut off each side (:func:`stored_hashes`).  Queries still hash once.

A hash whose PDQ quality is below :data:`MIN_QUALITY` (flat, featureless images: PDQ's own advice) is
not used: such images would match one another.  Animations are not hashed at all (an animation whose
first frame copies a decided image must not get that image's verdict); they match by sha256 only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

HASH_BYTES = 32  # 256 bits
MIN_QUALITY = 50  # PDQ's advice: hashes of lower quality are not reliable for matching
STORED_CROPS = (0.02, 0.04)  # a decided image is also stored cropped by these shares on each side


def _pdq() -> object:
    import pdqhash  # type: ignore[import-untyped]  # compiled extension: imported on first use, so importing this module costs nothing

    return pdqhash


SIDE = 64  # PDQ hashes a 64 x 64 luma image; given one, it skips its own downscale
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32) * np.float32(255.0)


def _box(n: int, window: int) -> np.ndarray:
    """PDQ's 1-D box filter (``box1DFloat``: the window clipped at the ends) as an (n, n) matrix."""
    half = (window + 2) // 2
    out = np.zeros((n, n), dtype=np.float64)
    for o in range(n):
        lo, hi = max(0, o - (window - half)), min(n, o + half)
        out[o, lo:hi] = 1.0 / (hi - lo)
    return out


@lru_cache(maxsize=16)
def _downscale(n: int) -> tuple[np.ndarray, np.ndarray]:
    """PDQ's downscale of one axis of length ``n`` to 64: its Jarosz filter (the box filter twice, window
    ``(n + 127) // 128``) then decimation at the output pixels' centres.  As a (64, n) matrix it has a few
    non-zero weights a row; returned as their columns and weights, each (64, k)."""
    box = _box(n, (n + 2 * SIDE - 1) // (2 * SIDE))
    centres = ((np.arange(SIDE) + 0.5) * n / SIDE).astype(np.int64)
    matrix = (box @ box)[centres]
    taps = [np.flatnonzero(row) for row in matrix]
    k = max(len(t) for t in taps)
    columns = np.array([np.pad(t, (0, k - len(t)), mode="edge") for t in taps], dtype=np.int64)
    weights = np.array([np.pad(matrix[i, t], (0, k - len(t))) for i, t in enumerate(taps)], dtype=np.float32)
    return columns, weights


def luma64(x: np.ndarray) -> np.ndarray:
    """A model input (H, W, 3) float32 in [0, 1] -> the 64 x 64 luma PDQ would make of it, as (64, 64, 3)
    uint8 (three equal channels: PDQ's luma of it is the same values).

    The same filter and decimation as PDQ's C++ (``jaroszFilterFloat`` then ``decimateFloat``), as a few
    weighted taps per output pixel: about 60 us for 224 x 224 where PDQ's own takes 0.45 ms (BENCHMARKS.md).
    """
    h, w = x.shape[:2]
    luma = x @ _LUMA  # (H, W) in [0, 255]
    rows, row_weights = _downscale(h)
    cols, col_weights = _downscale(w)
    tall = np.einsum("okw,ok->ow", luma[rows], row_weights)  # (64, W)
    small = np.einsum("hok,ok->ho", tall[:, cols], col_weights)  # (64, 64)
    out = np.empty((SIDE, SIDE, 3), dtype=np.uint8)
    np.clip(small + 0.5, 0, 255, out=small)
    out[...] = small.astype(np.uint8)[:, :, None]
    return out


def pdq(pixels: np.ndarray) -> tuple[bytes, int]:
    """PDQ of (H, W, 3) uint8 pixels: the 32-byte hash (standard hex order when ``.hex()``'d) and its quality."""
    bits, quality = _pdq().compute(np.ascontiguousarray(pixels))  # type: ignore[attr-defined]
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes(), int(quality)


def query_hash(x: np.ndarray) -> bytes | None:
    """The hash a request is looked up by (None when PDQ's quality is too low)."""
    digest, quality = pdq(luma64(x))
    return digest if quality >= MIN_QUALITY else None


def stored_hashes(x: np.ndarray) -> list[bytes]:
    """The hashes a decided image is remembered by: whole, and cropped by :data:`STORED_CROPS`."""
    h, w = x.shape[:2]
    out = []
    for share in (0.0, *STORED_CROPS):
        dy, dx = round(h * share), round(w * share)
        digest, quality = pdq(luma64(x[dy:h - dy, dx:w - dx]))
        if quality >= MIN_QUALITY and digest not in out:
            out.append(digest)
    return out


def join_hex(hashes: list[bytes]) -> str:
    """Hashes as the database stores them: hex, comma-separated (empty for none)."""
    return ",".join(h.hex() for h in hashes)


def split_hex(text: str | None) -> list[bytes]:
    return [bytes.fromhex(part) for part in (text or "").split(",") if part]


def distance(a: bytes, b: bytes) -> int:
    """Hamming distance of two hashes in bits."""
    return int(np.bitwise_count(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())
