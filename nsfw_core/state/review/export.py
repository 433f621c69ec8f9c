"""The decided items as a labelled set: a manifest CSV, or a ZIP of the manifest and the stored images.

Both are what the calibration page and the CLI read (:mod:`nsfw_core.calibration.labelsets`); the queue's
:meth:`~nsfw_core.state.review.ReviewQueue.export_csv` and :meth:`~nsfw_core.state.review.ReviewQueue.export_zip`
hand them the decided items.
"""

from __future__ import annotations

import io
import zipfile
from typing import Callable, Iterable, Mapping

from nsfw_core.base import spreadsheet
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.images.sniff import suffix
from nsfw_core.state.review.items import Item, iso

CSV_COLUMNS = ("path", "label", "sha256", "model", *CLASS_NAMES, "decided_at")


def image_suffix(data: bytes) -> str:
    """A file suffix for stored image bytes, from their magic number (``.jpg`` when unknown)."""
    return suffix(data) or ".jpg"


def manifest_csv(items: Iterable[Item], paths: Mapping[int, str]) -> str:
    """``path,label,sha256,model,<5 scores>,decided_at`` for decided items, in the order given.

    ``path`` is ``paths[item id]`` when given, else the item's source; ``decided_at`` in UTC ISO 8601.
    """
    buf = io.StringIO()
    writer = spreadsheet.writer(buf, lineterminator="\n")  # formulas written as text (CSV injection)
    writer.writerow(CSV_COLUMNS)
    for it in items:
        writer.writerow([paths.get(it.id, it.source), it.decision, it.sha256, it.model,
                         *(repr(float(it.scores[c])) for c in CLASS_NAMES), iso(it.decided_at)])
    return buf.getvalue()


def manifest_zip(items: Iterable[Item], image: Callable[[int], bytes | None]) -> tuple[bytes, dict[str, int]]:
    """A ZIP of ``manifest.csv`` + ``images/<sha256>.<ext>`` for decided items; ``image(id)`` gives stored bytes.

    Items with stored bytes point at their file in the archive, URL items
    without bytes keep their URL, and uploads without stored bytes are left
    out.  Returns the archive and ``{"items", "images", "left_out"}``.
    """
    buf = io.BytesIO()
    paths: dict[int, str] = {}
    kept: list[Item] = []
    left_out = 0
    written: set[str] = set()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for it in items:
            data = image(it.id) if it.has_image else None
            if data:
                name = f"images/{it.sha256}{image_suffix(data)}"
                if name not in written:
                    zf.writestr(name, data)
                    written.add(name)
                paths[it.id] = name
                kept.append(it)
            elif it.is_url:
                kept.append(it)
            else:
                left_out += 1
        zf.writestr("manifest.csv", manifest_csv(kept, paths))
    return buf.getvalue(), {"items": len(kept), "images": len(written), "left_out": left_out}
