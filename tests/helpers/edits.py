"""The edits of issue 17 that a decided image must survive: re-encoded, resized, cropped, watermarked.

Shared by tests/test_known.py and bench/known_images.py (which measures how far each edit moves the hash).
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


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
