"""The files that describe a labelled set: manifests of (path or URL, label) and tables of precomputed scores.

A manifest is CSV (``path,label``, the header optional) or JSON (a list of ``{path, label}`` objects or
``[path, label]`` pairs, ``{"items": [...]}`` or ``{path: label}``): :func:`parse_manifest` reads its text,
:func:`load_manifest` a file, resolving relative paths against the manifest's folder, or, with
``confine``, keeping every path inside that folder (:func:`~nsfw_core.calibration.confined.within`).
A score table (:func:`load_score_table`) is a CSV of ``id,label`` and the five class scores: a set
with no images to read.  Both files are read only when regular, at most :data:`MANIFEST_MAX_BYTES`
(:func:`read_set_file`).  All bad rows are reported in one :class:`LabelSetError` (the first
:data:`MAX_ERRORS_LISTED`), by row number and path, never quoting the file's contents.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping

from nsfw_core.base.files import FileTooLarge, read_regular_file
from nsfw_core.base.labels import (
    CLASS_NAMES,
    LABELS,
    LabelledItem,
    LabelSetError,
    check_binary_map,
    normalise_label,
    to_binary,
)
from nsfw_core.calibration.confined import read_beneath, within
from nsfw_core.images.fetch import is_url

MANIFEST_NAMES = ("manifest.csv", "manifest.json", "labels.csv", "labels.json")
MAX_ERRORS_LISTED = 10
MANIFEST_MAX_BYTES = 32 << 20  # a manifest or score table; 5000 rows take well under 1 MB


def expected_labels() -> str:
    """The labels a set may use, for error messages."""
    return ", ".join(LABELS)


def _resolve_source(raw: str, base_dir: Path | None, confine: Path | None, where: str) -> str:
    """URL as given; a relative path joined to ``base_dir``; with ``confine``, a path (relative to it,
    or absolute) must resolve inside it, symbolic links included."""
    raw = raw.strip()
    if is_url(raw):
        return raw
    if confine is not None:
        resolved = None if raw.startswith("~") else within(raw, confine)
        if resolved is None:
            if Path(raw).is_absolute():
                raise ValueError(f"absolute path {raw!r} is outside {where}")
            raise ValueError(f"path {raw!r} leaves {where}")
        return str(resolved)
    path = Path(raw).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path.resolve())


_SOURCE_KEYS = ("path", "source", "url", "file", "filename", "image")
_LABEL_KEYS = ("label", "class", "category")


def _rows_from_csv(text: str) -> list[tuple[int, Any, Any]]:
    """(line number, source, label) rows; the header is optional (path,label by default)."""
    reader = csv.reader(io.StringIO(text))
    rows = [(reader.line_num, r) for r in reader if r and any(cell.strip() for cell in r)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0][1]]
    src_col, label_col = 0, 1
    if any(h in _SOURCE_KEYS for h in header) or any(h in _LABEL_KEYS for h in header):
        named_src = next((header.index(k) for k in _SOURCE_KEYS if k in header), None)
        named_label = next((header.index(k) for k in _LABEL_KEYS if k in header), None)
        if named_src is None or named_label is None:
            raise LabelSetError(f"CSV header {rows[0][1]} needs a path column ({'/'.join(_SOURCE_KEYS)})"
                                f" and a label column ({'/'.join(_LABEL_KEYS)})")
        src_col, label_col = named_src, named_label
        rows = rows[1:]
    out = []
    for line, r in rows:
        src = r[src_col] if len(r) > src_col else None
        label = r[label_col] if len(r) > label_col else None
        out.append((line, src, label))
    return out


def _rows_from_json(text: str) -> list[tuple[int, Any, Any]]:
    """Accepts [{"path":…, "label":…}, …], [[path, label], …], {"items": […]} or {path: label}."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise LabelSetError(f"manifest is not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("items"), list):
        doc = doc["items"]
    if isinstance(doc, dict):
        return [(i + 1, k, v) for i, (k, v) in enumerate(doc.items())]
    if not isinstance(doc, list):
        raise LabelSetError("JSON manifest must be a list of {path, label} objects, [path, label] pairs,"
                            " {\"items\": [...]} or {path: label}")
    out = []
    for i, entry in enumerate(doc, start=1):
        if isinstance(entry, dict):
            lower = {str(k).lower(): v for k, v in entry.items()}
            src = next((lower[k] for k in _SOURCE_KEYS if k in lower), None)
            label = next((lower[k] for k in _LABEL_KEYS if k in lower), None)
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            src, label = entry
        else:
            src, label = None, None
        out.append((i, src, label))
    return out


def parse_manifest(
    data: bytes | str,
    fmt: str,
    *,
    base_dir: str | Path | None = None,
    binary_map: Mapping[str, str] | None = None,
    confine: str | Path | None = None,
    where: str | None = None,
) -> list[LabelledItem]:
    """Parse manifest text (``fmt`` "csv" or "json").

    Relative paths are joined to ``base_dir`` (kept relative to the working
    folder when None).  With ``confine`` every path is taken relative to that
    folder (or absolute) and must resolve inside it, links included (used for
    uploaded manifests, manifests on the server and inside uploaded archives);
    URLs are kept, for the safe fetcher; ``where`` names that folder in errors
    ("the archive"; its path by default).  All bad rows are reported in one
    :class:`LabelSetError` (the first ten listed), by row number and path.
    """
    mapping = check_binary_map(binary_map)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise LabelSetError(f"manifest is not UTF-8 text: {exc}") from exc
    fmt = fmt.lower().lstrip(".")
    if fmt == "csv":
        rows, what = _rows_from_csv(data), "line"
    elif fmt == "json":
        rows, what = _rows_from_json(data), "entry"
    else:
        raise LabelSetError(f"unknown manifest format {fmt!r}; use csv or json")
    base = Path(base_dir) if base_dir is not None else None
    confine_dir = Path(confine) if confine is not None else None
    confine_name = where or str(confine_dir)
    items: list[LabelledItem] = []
    errors: list[str] = []
    for line, src, label in rows:
        row = f"{what} {line}"
        if not isinstance(src, str) or not src.strip():
            errors.append(f"{row}: missing path ({src!r}, {label!r})")
            continue
        try:
            binary = to_binary(label, mapping)
        except ValueError:
            errors.append(f"{row}: unknown label {label!r} for {src!r}")
            continue
        try:
            source = _resolve_source(src, base, confine_dir, confine_name)
        except ValueError as exc:
            errors.append(f"{row}: {exc}")
            continue
        items.append(LabelledItem(source, normalise_label(label), binary))
    if errors:
        listed = "; ".join(errors[:MAX_ERRORS_LISTED])
        more = f" (and {len(errors) - MAX_ERRORS_LISTED} more)" if len(errors) > MAX_ERRORS_LISTED else ""
        raise LabelSetError(f"{len(errors)} bad row(s) in the manifest: {listed}{more}. "
                            f"Labels must be one of: {expected_labels()}")
    if not items:
        raise LabelSetError("the manifest lists no images")
    return items


def read_set_file(path: Path, what: str, confine: Path | None = None) -> bytes:
    """A manifest's or score table's bytes: a regular file, at most :data:`MANIFEST_MAX_BYTES`; with
    ``confine``, only inside it (:func:`read_confined`'s walk). Errors never quote the contents."""
    try:
        if confine is None:
            return read_regular_file(path, MANIFEST_MAX_BYTES)
        resolved = within(path, confine)
        if resolved is None:
            raise LabelSetError(f"{what} {path} leaves {confine}")
        return read_beneath(confine.resolve(), resolved, MANIFEST_MAX_BYTES)
    except FileTooLarge as exc:
        raise LabelSetError(f"{what} {path} is larger than {MANIFEST_MAX_BYTES} bytes") from exc
    except OSError as exc:
        raise LabelSetError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def load_manifest(path: str | Path, *, binary_map: Mapping[str, str] | None = None,
                  confine: str | Path | None = None, where: str | None = None) -> list[LabelledItem]:
    """Read a ``.csv`` or ``.json`` manifest file; relative paths are resolved against its folder.

    Only a regular file is read, at most :data:`MANIFEST_MAX_BYTES` (a FIFO or a device named by
    the command line is refused, not waited on).  With ``confine`` the manifest itself must lie
    inside that folder, links resolved, and its paths too (:func:`parse_manifest`).
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "json"):
        raise LabelSetError(f"{path}: a manifest must be a .csv or .json file")
    data = read_set_file(path, "manifest", Path(confine) if confine is not None else None)
    return parse_manifest(data, fmt, base_dir=path.resolve().parent, binary_map=binary_map, confine=confine,
                          where=where)


def load_score_table(path: str | Path, *, binary_map: Mapping[str, str] | None = None
                     ) -> list[tuple[LabelledItem, dict[str, float]]]:
    """A CSV of precomputed scores: ``id,label`` and the five class columns.

    Items get ``source = "scores:<id>"`` (there is no image to read).  Used for
    the synthetic set that gives the maths and the page an adult side without
    adult images in the repository.
    """
    mapping = check_binary_map(binary_map)
    path = Path(path)
    try:
        text = read_set_file(path, "score table").decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelSetError(f"score table {path} is not UTF-8 text") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("id", "label", *CLASS_NAMES) if c not in (reader.fieldnames or [])]
    if missing:
        raise LabelSetError(f"{path}: score table lacks the column(s) {', '.join(missing)}")
    out: list[tuple[LabelledItem, dict[str, float]]] = []
    errors: list[str] = []
    for row in reader:
        where = f"line {reader.line_num}"
        try:
            binary = to_binary(row["label"], mapping)
        except ValueError:
            errors.append(f"{where}: unknown label {row['label']!r}")
            continue
        try:
            scores = {c: float(row[c]) for c in CLASS_NAMES}
        except (TypeError, ValueError):
            errors.append(f"{where}: a class score is not a number")
            continue
        out.append((LabelledItem(f"scores:{row['id']}", normalise_label(row["label"]), binary), scores))
    if errors:
        raise LabelSetError(f"{len(errors)} bad row(s) in {path}: {'; '.join(errors[:MAX_ERRORS_LISTED])}")
    return out
