"""Rebuild the demo set's images (run from the project root: ``python data/demo/generate.py``).

- ``drawings/*.jpg`` are drawn here with Pillow (the project's own work, MIT).
- ``photos/*.jpg`` from scikit-image's bundled samples are copied only when
  scikit-image is importable (it is not a dependency of the project; install it
  temporarily to rebuild them).  Each is converted to RGB and shrunk to at most
  800 px on its long side.
- ``photos/nsfwjs_*.jpg`` and ``drawings/nsfwjs_logo.jpg`` come from
  ``tests/fixtures/reference`` (nsfwjs, MIT), shrunk the same way.

``manifest.csv`` and ``LICENSES.md`` are maintained by hand.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LONG_SIDE = 800
QUALITY = 85


def _save(img: Image.Image, path: Path) -> None:
    img = img.convert("RGB")
    img.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=QUALITY, optimize=True)


def _gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    d = ImageDraw.Draw(img)
    for y in range(h):
        t = y / max(h - 1, 1)
        d.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=False)))
    return img


def landscape() -> Image.Image:
    img = _gradient((480, 360), (120, 180, 255), (220, 240, 255))
    d = ImageDraw.Draw(img)
    d.ellipse([360, 30, 430, 100], fill=(255, 210, 60), outline=(240, 170, 0), width=3)
    d.polygon([(0, 260), (120, 170), (260, 250), (380, 160), (480, 230), (480, 360), (0, 360)], fill=(90, 170, 80))
    d.polygon([(0, 300), (200, 250), (480, 310), (480, 360), (0, 360)], fill=(60, 140, 60))
    d.rectangle([95, 230, 110, 300], fill=(110, 70, 30))
    d.ellipse([60, 160, 145, 250], fill=(40, 120, 40), outline=(20, 80, 20), width=2)
    return img


def house() -> Image.Image:
    img = Image.new("RGB", (480, 360), (200, 230, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 280, 480, 360], fill=(120, 200, 90))
    d.rectangle([140, 170, 340, 290], fill=(230, 90, 70), outline=(0, 0, 0), width=3)
    d.polygon([(120, 175), (240, 80), (360, 175)], fill=(120, 60, 40), outline=(0, 0, 0))
    d.rectangle([220, 220, 260, 290], fill=(90, 60, 30), outline=(0, 0, 0), width=2)
    for x in (160, 285):
        d.rectangle([x, 195, x + 35, 230], fill=(250, 250, 200), outline=(0, 0, 0), width=2)
        d.line([(x + 17, 195), (x + 17, 230)], fill=(0, 0, 0), width=2)
    d.rectangle([300, 95, 320, 140], fill=(150, 80, 60), outline=(0, 0, 0), width=2)
    for i in range(3):
        d.ellipse([30 + i * 40, 40, 90 + i * 40, 80], fill=(255, 255, 255))
    return img


def shapes() -> Image.Image:
    rng = random.Random(7)
    img = Image.new("RGB", (480, 360), (250, 248, 240))
    d = ImageDraw.Draw(img)
    palette = [(230, 57, 70), (29, 53, 87), (69, 123, 157), (168, 218, 220), (244, 162, 97), (42, 157, 143)]
    for _ in range(28):
        x, y, r = rng.randint(0, 480), rng.randint(0, 360), rng.randint(12, 60)
        color = rng.choice(palette)
        kind = rng.randint(0, 2)
        if kind == 0:
            d.ellipse([x - r, y - r, x + r, y + r], fill=color)
        elif kind == 1:
            d.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=color)
        else:
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=color)
    return img


def smiley() -> Image.Image:
    img = Image.new("RGB", (400, 400), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.ellipse([40, 40, 360, 360], fill=(255, 220, 0), outline=(0, 0, 0), width=6)
    d.ellipse([130, 130, 170, 190], fill=(0, 0, 0))
    d.ellipse([230, 130, 270, 190], fill=(0, 0, 0))
    d.arc([110, 150, 290, 300], start=20, end=160, fill=(0, 0, 0), width=8)
    return img


def sailboat() -> Image.Image:
    img = _gradient((480, 360), (255, 200, 150), (150, 200, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 240, 480, 360], fill=(30, 90, 160))
    for y in range(255, 360, 18):
        for x in range(0, 480, 40):
            d.arc([x, y, x + 40, y + 14], start=200, end=340, fill=(200, 230, 255), width=2)
    d.polygon([(170, 250), (330, 250), (300, 280), (200, 280)], fill=(120, 60, 30), outline=(0, 0, 0))
    d.line([(250, 250), (250, 90)], fill=(60, 40, 20), width=5)
    d.polygon([(255, 95), (255, 240), (340, 240)], fill=(255, 255, 255), outline=(0, 0, 0))
    d.polygon([(245, 110), (245, 240), (180, 240)], fill=(240, 240, 230), outline=(0, 0, 0))
    return img


def chart() -> Image.Image:
    img = Image.new("RGB", (480, 360), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.line([(50, 20), (50, 320), (460, 320)], fill=(0, 0, 0), width=3)
    values = [120, 200, 90, 260, 180, 230]
    for i, v in enumerate(values):
        x = 80 + i * 62
        d.rectangle([x, 320 - v, x + 40, 320], fill=(70, 130, 180), outline=(20, 60, 100), width=2)
    pts = [(100 + i * 62, 320 - v - 20) for i, v in enumerate(values)]
    d.line(pts, fill=(220, 80, 40), width=4)
    for x, y in pts:
        d.ellipse([x - 6, y - 6, x + 6, y + 6], fill=(220, 80, 40))
    for y in range(20, 320, 50):
        d.line([(45, y), (55, y)], fill=(0, 0, 0), width=2)
    return img


def flower() -> Image.Image:
    img = Image.new("RGB", (400, 400), (235, 250, 235))
    d = ImageDraw.Draw(img)
    d.line([(200, 220), (200, 390)], fill=(40, 140, 40), width=10)
    d.ellipse([200, 280, 280, 320], fill=(60, 170, 60))
    cx, cy = 200, 160
    for k in range(8):
        a = k * math.pi / 4
        px, py = cx + 70 * math.cos(a), cy + 70 * math.sin(a)
        d.ellipse([px - 40, py - 40, px + 40, py + 40], fill=(230, 90, 160), outline=(160, 40, 110), width=2)
    d.ellipse([cx - 40, cy - 40, cx + 40, cy + 40], fill=(250, 200, 40), outline=(180, 120, 0), width=3)
    return img


DRAWINGS = {
    "landscape": landscape, "house": house, "shapes": shapes, "smiley": smiley,
    "sailboat": sailboat, "chart": chart, "flower": flower,
}

# scikit-image sample -> (folder in the demo set, output name)
SKIMAGE = {
    "astronaut": "photos", "chelsea": "photos", "coffee": "photos", "rocket": "photos",
    "hubble_deep_field": "photos", "camera": "photos", "horse": "drawings",
}

REFERENCE = {"glasses": "photos", "house": "photos", "smile": "photos", "nsfwjs_logo": "drawings"}


def main() -> None:
    for name, draw in DRAWINGS.items():
        _save(draw(), HERE / "drawings" / f"pillow_{name}.jpg")
    for name, folder in REFERENCE.items():
        src = ROOT / "tests" / "fixtures" / "reference" / f"{name}.jpg"
        out = name if name.startswith("nsfwjs") else f"nsfwjs_{name}"
        _save(Image.open(src), HERE / folder / f"{out}.jpg")
    try:
        import numpy as np
        import skimage.data
    except ImportError:
        print("scikit-image is not installed: the skimage_*.jpg files were left as they are")
        return
    for name, folder in SKIMAGE.items():
        arr = np.asarray(getattr(skimage.data, name)())
        if arr.dtype == bool:
            arr = np.where(arr, 255, 0).astype(np.uint8)  # the horse: True is the background; black silhouette on white
        _save(Image.fromarray(arr), HERE / folder / f"skimage_{name}.jpg")


if __name__ == "__main__":
    main()
