"""The edits of issue 17 that a decided image must survive: re-encoded, resized, cropped, watermarked; and the
look-alikes of issue 29 that must not inherit its decision: another picture's detail over its shading, alpha blends.

Shared by tests/test_known.py, tests/test_lookalikes.py, bench/known_images.py (which measures how far each edit
moves the hash) and bench/lookalikes.py (the blend attack).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    im.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def edited_copies(data: bytes) -> dict[str, bytes]:
    """JPEG quality 70, resized to 50 %, 2 % cropped off each side, a light text watermark."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    dx, dy = round(w * 0.02), round(h * 0.02)
    mark = Image.new("RGBA", im.size, (0, 0, 0, 0))
    ImageDraw.Draw(mark).text((w * 0.05, h * 0.85), "© example.com", fill=(255, 255, 255, 128),
                              font_size=max(10, h // 20))
    return {"jpeg q70": jpeg(im, 70), "resized 50%": jpeg(im.resize((w // 2, h // 2), Image.Resampling.BILINEAR)),
            "cropped 2%": jpeg(im.crop((dx, dy, w - dx, h - dy))),
            "watermarked": jpeg(Image.alpha_composite(im.convert("RGBA"), mark))}


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def detail_over_shading(a: bytes, b: bytes, radius: float = 6, gain: float = 1.0) -> bytes:
    """Picture ``b``'s detail (``gain`` times what a Gaussian blur of ``radius`` removes) drawn over the blurred
    shading of ``a`` (224x224 PNG): it shows b, and PDQ, which sees only coarse shading, puts it near a."""
    pa = Image.open(io.BytesIO(a)).convert("RGB").resize((224, 224))
    pb = Image.open(io.BytesIO(b)).convert("RGB").resize((224, 224))
    low_a = np.asarray(pa.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    high_b = np.asarray(pb, dtype=np.float32) - np.asarray(pb.filter(ImageFilter.GaussianBlur(radius)),
                                                           dtype=np.float32)
    return png(low_a + gain * high_b)


def alpha_blend(a: bytes, b: bytes, alpha: float) -> bytes:
    """``(1 - alpha) * a + alpha * b`` at 224x224 (PNG)."""
    pa = np.asarray(Image.open(io.BytesIO(a)).convert("RGB").resize((224, 224)), dtype=np.float32)
    pb = np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((224, 224)), dtype=np.float32)
    return png((1 - alpha) * pa + alpha * pb)
