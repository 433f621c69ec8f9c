"""A heat-map drawn over its image: the evidence for one class, where the model found it.

:func:`overlay` takes the image (any size: the map's grid covers the whole image, as the model's
input covers it) and a (rows, cols) map of evidence (:mod:`nsfw_core.inference.explain`, nats of
log-odds; positive = evidence for the class).  Only the positive evidence is drawn, scaled to the
map's largest value (or to ``scale``), smoothed across cells and coloured from transparent through
red to yellow (below a tenth of the strongest, nothing); the image under it is dimmed a little so the colours
read on any picture.  A map
with no positive evidence above :data:`MIN_EVIDENCE` draws nothing but the dimmed image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MIN_EVIDENCE = 0.01  # nats: below this a map is "nothing measurable"
DIM = 0.75  # the image's brightness under the map
MAX_ALPHA = 0.7
FAINT = 0.1  # evidence below this share of the strongest is not drawn (a faint wash over the whole image says nothing)


def _colours(t: np.ndarray) -> np.ndarray:
    """t in [0, 1] -> (..., 3) float RGB in [0, 1]: dark red -> red -> orange -> yellow."""
    r = np.clip(0.55 + 1.5 * t, 0.0, 1.0)
    g = np.clip(2.0 * t - 0.6, 0.0, 1.0)
    b = np.clip(4.0 * t - 3.4, 0.0, 1.0) * 0.6
    return np.stack([r, g, b], axis=-1)


def strength(heat: np.ndarray, scale: float | None = None) -> np.ndarray:
    """The map's positive evidence in [0, 1] (divided by ``scale``, default its largest value)."""
    pos = np.maximum(np.asarray(heat, dtype=np.float64), 0.0)
    top = float(pos.max()) if scale is None else float(scale)
    if top < MIN_EVIDENCE:
        return np.zeros_like(pos)
    out: np.ndarray = np.clip(pos / top, 0.0, 1.0)
    return out


def overlay(rgb: np.ndarray | Image.Image, heat: np.ndarray, *, scale: float | None = None) -> Image.Image:
    """``rgb`` ((H, W, 3) uint8 or an image) with the positive evidence of ``heat`` drawn over it."""
    img = (rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb, dtype=np.uint8))).convert("RGB")
    w, h = img.size
    t = strength(heat, scale)
    # the grid smoothed to the image's size: each cell's value at its centre, bilinear in between
    small = Image.fromarray((t * 255.0).astype(np.uint8), "L")
    up = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    alpha = (MAX_ALPHA * np.clip((up - FAINT) / (1.0 - FAINT), 0.0, 1.0) ** 0.75)[..., None]
    base = np.asarray(img, dtype=np.float64) / 255.0 * DIM
    out = base * (1.0 - alpha) + _colours(up) * alpha
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


def png(image: Image.Image) -> bytes:
    """The image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False)
    return buf.getvalue()
