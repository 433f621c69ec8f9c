"""Perceptual hashes of images: PDQ of the model input the pipeline has already made.

PDQ (Meta's open-source photo hash, PyPI ``pdqhash``) turns an image into 256 bits whose Hamming
distance stays small for re-encoded, resized and lightly edited copies; ``NSFW_MATCH_DISTANCE``
(default 31 of 256, PDQ's published default) decides what counts as the same picture.

What is hashed is the model's input (``Model.preprocess``: the decoded image resized to S x S,
224 for the default model, values in [0, 1]), converted back to 8 bits: every request has it already in
its worker thread, so a hash costs PDQ's work on 224 x 224 pixels (about 0.55 ms, BENCHMARKS.md) and
no second decode.  PDQ itself reduces any image to 64 x 64 without keeping its aspect ratio, so
hashing the square model input instead of the original changes a hash by a few bits only.  Stored
(decided) and queried images are hashed the same way.

PDQ is not robust to cropping (2 % off each side moves a hash by 24 to 66 bits on this repository's
images), so a *decided* image is stored with three hashes: the whole input and its centre with 2 %
and 4 % cut off each side (:func:`stored_hashes`).  Queries still hash once.

A hash whose PDQ quality is below :data:`MIN_QUALITY` (flat, featureless images: PDQ's own advice) is
not used: such images would match one another.  Animations are not hashed at all (an animation whose
first frame copies a decided image must not get that image's verdict); they match by sha256 only.
"""

from __future__ import annotations

import numpy as np

HASH_BYTES = 32  # 256 bits
HASH_HEX = HASH_BYTES * 2
MIN_QUALITY = 50  # PDQ's advice: hashes of lower quality are not reliable for matching
STORED_CROPS = (0.02, 0.04)  # a decided image is also stored cropped by these shares on each side


def _pdq() -> object:
    import pdqhash  # type: ignore[import-untyped]  # compiled extension: imported on first use, so importing this module costs nothing

    return pdqhash


def to_u8(x: np.ndarray) -> np.ndarray:
    """A model input (S, S, 3) float32 in [0, 1] -> the same pixels as C-contiguous uint8."""
    out = np.empty(x.shape, dtype=np.uint8)
    np.multiply(x, 255.0, out=out, casting="unsafe")  # truncation; both sides of a match do the same
    return out


def pdq(pixels: np.ndarray) -> tuple[bytes, int]:
    """PDQ of (H, W, 3) uint8 pixels: the 32-byte hash (standard hex order when ``.hex()``'d) and its quality."""
    bits, quality = _pdq().compute(np.ascontiguousarray(pixels))  # type: ignore[attr-defined]
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes(), int(quality)


def query_hash(x: np.ndarray) -> bytes | None:
    """The hash a request is looked up by (None when PDQ's quality is too low)."""
    digest, quality = pdq(to_u8(x))
    return digest if quality >= MIN_QUALITY else None


def stored_hashes(x: np.ndarray) -> list[bytes]:
    """The hashes a decided image is remembered by: whole, and cropped by :data:`STORED_CROPS`."""
    pixels = to_u8(x)
    h, w = pixels.shape[:2]
    out = []
    for share in (0.0, *STORED_CROPS):
        dy, dx = round(h * share), round(w * share)
        digest, quality = pdq(pixels[dy:h - dy, dx:w - dx])
        if quality >= MIN_QUALITY and digest not in out:
            out.append(digest)
    return out


def parse_hex(text: str) -> bytes:
    """A 64-digit hex PDQ hash -> 32 bytes; ValueError otherwise."""
    text = text.strip().lower()
    if len(text) != HASH_HEX:
        raise ValueError(f"a PDQ hash is {HASH_HEX} hex digits, not {len(text)}")
    return bytes.fromhex(text)


def join_hex(hashes: list[bytes]) -> str:
    """Hashes as the database stores them: hex, comma-separated (empty for none)."""
    return ",".join(h.hex() for h in hashes)


def split_hex(text: str | None) -> list[bytes]:
    return [bytes.fromhex(part) for part in (text or "").split(",") if part]


def distance(a: bytes, b: bytes) -> int:
    """Hamming distance of two hashes in bits."""
    return int(np.bitwise_count(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())
