"""Images for a policy the five classes cannot express, made by the tests (issue 26's adapters and example sets).

The policy: a platform blocks *striped* pictures (diagonal bands of colour) and allows every other picture
(discs and ellipses on a gradient).  The model sees drawings either way; its adult score knows nothing of
stripes.  Each image is drawn from its own seed, so a set is the same on every run.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIDE = 256


def striped(seed: int) -> bytes:
    """Diagonal bands of two or three colours, at a random angle and width: blocked by the policy."""
    rng = random.Random(seed)
    im = Image.new("RGB", (SIDE, SIDE), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    colours = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(rng.choice((2, 3)))]
    width = rng.randrange(10, 30)
    slope = rng.uniform(-1.5, 1.5)
    for k, x in enumerate(range(-2 * SIDE, 2 * SIDE, width)):
        draw.polygon([(x, 0), (x + width // 2, 0), (x + width // 2 + slope * SIDE, SIDE), (x + slope * SIDE, SIDE)],
                     fill=colours[k % len(colours)])
    return _png(im)


def blobs(seed: int) -> bytes:
    """Discs and ellipses on a vertical gradient: allowed by the policy."""
    rng = random.Random(seed)
    top, bottom = (tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
    im = Image.new("RGB", (SIDE, SIDE))
    draw = ImageDraw.Draw(im)
    for y in range(SIDE):
        t = y / (SIDE - 1)
        draw.line([(0, y), (SIDE, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    for _ in range(rng.randrange(3, 9)):
        x, y, rx, ry = rng.randrange(SIDE), rng.randrange(SIDE), rng.randrange(10, 60), rng.randrange(10, 60)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=tuple(rng.randrange(256) for _ in range(3)))
    return _png(im)


def _png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def write_set(folder: Path, n_blocked: int, n_allowed: int, *, start: int = 0, labels: str = "policy") -> Path:
    """``n_blocked`` striped and ``n_allowed`` other images under ``folder``, with a ``manifest.csv`` labelling them
    adult (block) and safe (allow); ``labels="random"`` labels them by a coin instead (no policy to learn)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(start)
    rows = ["path,label"]
    for kind, draw, n in (("striped", striped, n_blocked), ("blobs", blobs, n_allowed)):
        for i in range(start, start + n):
            name = f"{kind}-{i}.png"
            (folder / name).write_bytes(draw(i))
            truth = ("adult" if kind == "striped" else "safe") if labels == "policy" else rng.choice(("adult", "safe"))
            rows.append(f"{name},{truth}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest
