"""The nsfwjs input preprocessing: a bilinear resize (``align_corners=True``), then scaling to [0, 1].

Pure numpy, the same whichever runtime runs the network.  :func:`preprocess` is what
:meth:`nsfw_core.inference.model.Model.preprocess` does; :func:`resize_bilinear` is its resize.
"""

from __future__ import annotations

import numpy as np

_WIDE = 8192


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (size, size, 3) float32 in [0, 1], as nsfwjs prepares its input."""
    out = resize_bilinear(rgb, size)
    out *= np.float32(1.0 / 255.0)
    return out


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, C) array to (size, size, C) float32, bilinear, align_corners=True.

    The same sampling as ``tf.image.resizeBilinear(img, [size, size], true)`` in
    TF.js (and TF's legacy ``align_corners``): output pixel i reads input
    coordinate ``i * (in - 1) / (size - 1)``.  Only the four neighbours of each
    output pixel are gathered and converted to float, so the cost does not grow
    with the input's size (BENCHMARKS.md has the time).
    """
    h, w = image.shape[:2]
    ys, y0, y1 = _axis(h, size)
    xs, x0, x1 = _axis(w, size)
    # Take the sampled rows first (cache-friendly) unless the image is both wider than tall and
    # wider than _WIDE; then the sampled columns.  Either way the intermediate holds at most
    # size x max(min(H, W), _WIDE) pixels, whatever the aspect ratio (rows first on a very wide,
    # one-pixel-tall image would hold size x W pixels).
    if w <= h or w <= _WIDE:
        near, far = np.take(image, y0, axis=0), np.take(image, y1, axis=0)  # (size, w, C)
        top_left, top_right = np.take(near, x0, axis=1), np.take(near, x1, axis=1)
        left, right = np.take(far, x0, axis=1), np.take(far, x1, axis=1)
    else:
        near, far = np.take(image, x0, axis=1), np.take(image, x1, axis=1)  # (h, size, C)
        top_left, top_right = np.take(near, y0, axis=0), np.take(far, y0, axis=0)
        left, right = np.take(near, y1, axis=0), np.take(far, y1, axis=0)
    top_left, top_right = top_left.astype(np.float32), top_right.astype(np.float32)
    left, right = left.astype(np.float32), right.astype(np.float32)
    wy = ys[:, None, None]
    left -= top_left  # left = top_left + (bottom_left - top_left) * wy, in place
    left *= wy
    left += top_left
    right -= top_right
    right *= wy
    right += top_right
    right -= left  # out = left + (right - left) * wx
    right *= xs[None, :, None]
    right += left
    return right


def _axis(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = (n - 1) / (size - 1) if size > 1 else 0.0
    coord = np.arange(size, dtype=np.float64) * scale
    lo = np.floor(coord).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    return (coord - lo).astype(np.float32), lo, hi
