"""Deterministic, photograph-like test images (gradients + shapes + blur + sensor noise).

Smooth content with fine noise compresses like a photo (a few bits per pixel
in JPEG q90), unlike flat synthetic images, so decode times are realistic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# name -> (width, height, format)
SPECS: dict[str, tuple[int, int, str]] = {
    "jpeg_0.3mp": (640, 480, "JPEG"),
    "jpeg_1mp": (1280, 800, "JPEG"),
    "jpeg_12mp": (4000, 3000, "JPEG"),
    "png_1mp": (1280, 800, "PNG"),
    "gif_16f": (480, 360, "GIF"),  # animated: 16 different frames of 100 ms (issue 17's frames row)
}
EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif"}
GIF_FRAMES = 16


def make_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Low-frequency colour field: a coarse random grid upsampled bicubically.
    coarse = rng.integers(30, 226, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    scale = min(width, height)
    for _ in range(18):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(scale // 12, scale // 3, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1.5, scale / 400)))
    arr = np.asarray(img, dtype=np.int16)
    noise = rng.normal(0.0, 6.0, size=(height, width, 1)).astype(np.int16)  # luminance grain
    arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def generate(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Write every image of SPECS into ``out_dir`` (reused when already there); returns facts per image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    facts: dict[str, dict[str, Any]] = {}
    for i, (name, (w, h, fmt)) in enumerate(SPECS.items()):
        path = out_dir / f"{name}.{EXT[fmt]}"
        if not path.exists():
            img = make_image(w, h, seed=1000 + i)
            tmp = path.with_suffix(".tmp")
            if fmt == "JPEG":
                img.save(tmp, "JPEG", quality=90)
            elif fmt == "GIF":
                frames = [img] + [make_image(w, h, seed=2000 + 100 * i + k) for k in range(1, GIF_FRAMES)]
                img.save(tmp, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
            else:
                img.save(tmp, "PNG", compress_level=6)
            tmp.replace(path)
        facts[name] = {"file": path.name, "width": w, "height": h, "format": fmt,
                       "megapixels": round(w * h / 1e6, 2), "bytes": path.stat().st_size}
    return facts


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(generate(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/scratch/images"))))
