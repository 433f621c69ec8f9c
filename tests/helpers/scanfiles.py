"""A small catalogue for nsfw-scan's tests: the repository's benign images and hostile files beside them.

:func:`catalogue` fills a folder and returns what each file must become in the dataset: ``None`` for an
image the model scores, else the error code (:mod:`nsfw_core.base.errors`) its row must carry.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from tests.helpers import hostile
from tests.helpers.paths import REFERENCE_IMAGES, ROOT

DEMO_IMAGES = sorted((ROOT / "data" / "demo").rglob("*.jpg"))
BENIGN = [*REFERENCE_IMAGES, *DEMO_IMAGES]  # 22 JPEGs


def benign(folder: Path, copies: int = 1) -> dict[str, str | None]:
    """The repository's 22 JPEGs, ``copies`` times each (different names, the same bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str | None] = {}
    for k in range(copies):
        for src in BENIGN:
            dst = folder / f"{k:02d}-{src.parent.name}-{src.name}"
            shutil.copyfile(src, dst)
            out[str(dst)] = None
    return out


@functools.lru_cache(maxsize=1)
def _bomb() -> bytes:
    return hostile.png(8000, 8000)


def hostile_files(folder: Path) -> dict[str, str | None]:
    """Files a catalogue may hold by mistake or malice, each with the row it must give."""
    folder.mkdir(parents=True, exist_ok=True)
    house = (ROOT / "tests" / "fixtures" / "reference" / "house.jpg").read_bytes()
    files: dict[str, tuple[bytes, str | None]] = {
        "bomb.png": (_bomb(), "image_too_large"),  # 64 MP of zeros in 60 KB (the limit: 50 MP)
        "scans.jpg": (hostile.progressive_scans(512, 500), "image_too_large"),  # 500 progressive scans
        "tile.tif": (hostile.tiff(), "image_too_large"),  # a 16x16 TIFF declaring a 46000x46000 tile
        "truncated.jpg": (house[: len(house) // 3], "undecodable_image"),
        "notes.jpg": (b"this is not an image\n" * 10, "not_an_image"),
        "empty.png": (b"", "not_an_image"),
        "flat.png": (hostile.png(5000, 5000), None),  # 25 MP: decoded in the isolated lane, and scored
        "frames.gif": (hostile.animated_gif(6), None),  # an animation: scored on its frames
    }
    out: dict[str, str | None] = {}
    for name, (data, code) in files.items():
        (folder / name).write_bytes(data)
        out[str(folder / name)] = code
    return out


def catalogue(folder: Path, copies: int = 1) -> dict[str, str | None]:
    return {**benign(folder / "photos", copies), **hostile_files(folder / "odd")}
