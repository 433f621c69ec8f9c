"""Labelled image sets for calibrating the thresholds.

A labelled set is a list of :class:`LabelledItem` ``(source, label, binary)``:
``source`` is a local path or a URL, ``label`` is one of the five model classes
(``drawings``, ``hentai``, ``neutral``, ``porn``, ``sexy``) or directly one of
the binary labels ``adult`` / ``safe``, and ``binary`` is the truth used by the
calibration (``adult`` or ``safe``).

Five classes -> binary
----------------------
The labels, their aliases and the mapping live in :mod:`nsfw_core.labels` (re-exported
here).  The default mapping, :data:`DEFAULT_BINARY_MAP`, is::

    porn, sexy, hentai -> adult
    neutral, drawings  -> safe

Every loader takes ``binary_map=`` to change it (a mapping of the five class
names to ``"adult"``/``"safe"``; see :func:`make_binary_map`).  Note that it is
independent of the classes whose scores are *summed* by the verdict rule
(``Thresholds.adult_classes``, porn + sexy by default): the mapping says what
the truth of an image is, the classes say how the model's score is built.

Sources
-------
- a CSV or JSON manifest of (path or URL, label) — :func:`load_manifest`,
  :func:`parse_manifest`; relative paths are resolved against the manifest's
  folder;
- a folder with one sub-folder per label — :func:`load_folder`
  (:func:`load_path` picks manifest or folder by itself);
- a ZIP archive uploaded in the browser — :func:`load_zip`: it is extracted
  safely (no absolute paths, no ``..``, no links, caps on file count and
  sizes) into a cache folder and then read as a folder or through the
  manifest it contains;
- :func:`demo_set`, the benign demo set in ``data/demo``;
- :func:`synthetic_set`, made-up scores with labels (no images) in
  ``data/synthetic`` — the only adult side shipped with the project.

Errors are :class:`LabelSetError` (an ``InputError``, HTTP 400) with a message
that names the offending rows or files.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

from .fetch import is_url
from .labels import (
    ADULT,
    ALIASES,
    BINARY_LABELS,
    CLASS_NAMES,
    DEFAULT_BINARY_MAP,
    LABELS,
    SAFE,
    LabelledItem,
    LabelSetError,
    check_binary_map,
    make_binary_map,
    normalise_label,
    to_binary,
)
from .pipeline import IMAGE_SUFFIXES
from .settings import ROOT, Settings

__all__ = [
    # the label vocabulary, from nsfw_core.labels
    "ADULT", "ALIASES", "BINARY_LABELS", "CLASS_NAMES", "DEFAULT_BINARY_MAP", "LABELS", "SAFE",
    "LabelSetError", "LabelledItem", "make_binary_map", "normalise_label", "to_binary",
    # labelled sets
    "DEMO_DIR", "DEMO_MANIFEST", "MANIFEST_NAMES", "MAX_ERRORS_LISTED", "SYNTHETIC_SCORES", "ZIP_CACHE_FOLDER",
    "ZIP_MAX_FILES", "ZIP_MAX_FILE_BYTES", "ZIP_MAX_TOTAL_BYTES",
    "demo_set", "extract_zip", "find_manifest", "load_folder", "load_manifest", "load_path", "load_score_table",
    "load_zip", "parse_manifest", "relabel", "summary", "synthetic_set", "zip_cache_dir", "zip_cache_folder",
]

MANIFEST_NAMES = ("manifest.csv", "manifest.json", "labels.csv", "labels.json")
DEMO_DIR = ROOT / "data" / "demo"
DEMO_MANIFEST = DEMO_DIR / "manifest.csv"

# ZIP limits (the page passes the settings' byte cap as the per-file limit).
ZIP_MAX_FILES = 5000
ZIP_MAX_TOTAL_BYTES = 1 << 30  # 1 GiB uncompressed in all
ZIP_MAX_FILE_BYTES = 10 << 20  # per member, as NSFW_MAX_BYTES' default
MAX_ERRORS_LISTED = 10
ZIP_CACHE_FOLDER = "labelsets"  # under the data folder


# ---------------------------------------------------------------- labels


def relabel(items: Iterable[LabelledItem], binary_map: Mapping[str, str] | None) -> list[LabelledItem]:
    """The same items with ``binary`` recomputed under another mapping."""
    mapping = check_binary_map(binary_map)
    return [dataclasses.replace(it, binary=to_binary(it.label, mapping)) for it in items]


def summary(items: Iterable[LabelledItem]) -> dict[str, int]:
    """{"images": n, "adult": n_adult, "safe": n_safe}."""
    items = list(items)
    n_adult = sum(1 for it in items if it.binary == ADULT)
    return {"images": len(items), "adult": n_adult, "safe": len(items) - n_adult}


def _expected() -> str:
    return ", ".join(LABELS)


# ---------------------------------------------------------------- manifests


def _resolve_source(raw: str, base_dir: Path | None, confine: Path | None) -> str:
    """URL as given; a relative path joined to ``base_dir``; with ``confine``, it must stay inside it."""
    raw = raw.strip()
    if is_url(raw):
        return raw
    path = Path(raw).expanduser()
    if confine is not None:
        if path.is_absolute():
            raise ValueError(f"absolute path {raw!r} is not allowed in an uploaded archive")
        resolved = (confine / path).resolve()
        if not resolved.is_relative_to(confine.resolve()):
            raise ValueError(f"path {raw!r} leaves the archive")
        return str(resolved)
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
) -> list[LabelledItem]:
    """Parse manifest text (``fmt`` "csv" or "json").

    Relative paths are joined to ``base_dir`` (kept relative to the working
    folder when None).  With ``confine`` every path must be relative and stay
    inside that folder (used for manifests inside uploaded archives).  All bad
    rows are reported in one :class:`LabelSetError` (the first ten listed).
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
    items: list[LabelledItem] = []
    errors: list[str] = []
    for line, src, label in rows:
        where = f"{what} {line}"
        if not isinstance(src, str) or not src.strip():
            errors.append(f"{where}: missing path ({src!r}, {label!r})")
            continue
        try:
            binary = to_binary(label, mapping)
        except ValueError:
            errors.append(f"{where}: unknown label {label!r} for {src!r}")
            continue
        try:
            source = _resolve_source(src, base, confine_dir)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        items.append(LabelledItem(source, normalise_label(label), binary))
    if errors:
        listed = "; ".join(errors[:MAX_ERRORS_LISTED])
        more = f" (and {len(errors) - MAX_ERRORS_LISTED} more)" if len(errors) > MAX_ERRORS_LISTED else ""
        raise LabelSetError(f"{len(errors)} bad row(s) in the manifest: {listed}{more}. "
                            f"Labels must be one of: {_expected()}")
    if not items:
        raise LabelSetError("the manifest lists no images")
    return items


def load_manifest(path: str | Path, *, binary_map: Mapping[str, str] | None = None,
                  confine: str | Path | None = None) -> list[LabelledItem]:
    """Read a ``.csv`` or ``.json`` manifest file; relative paths are resolved against its folder."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "json"):
        raise LabelSetError(f"{path}: a manifest must be a .csv or .json file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LabelSetError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    return parse_manifest(data, fmt, base_dir=path.resolve().parent, binary_map=binary_map, confine=confine)


# ---------------------------------------------------------------- folders


def _skip(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def load_folder(path: str | Path, *, binary_map: Mapping[str, str] | None = None) -> list[LabelledItem]:
    """A folder with one sub-folder per label (images found recursively in each, sorted).

    Sub-folder names are labels (case-insensitive, ``drawing`` accepted);
    an unknown name is an error that lists it.  Hidden entries are ignored.
    """
    root = Path(path)
    if not root.is_dir():
        raise LabelSetError(f"{root} is not a folder")
    mapping = check_binary_map(binary_map)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not _skip(p.name))
    unknown = [p.name for p in subdirs
               if normalise_label(p.name) not in mapping and normalise_label(p.name) not in BINARY_LABELS]
    if unknown:
        raise LabelSetError(f"{root}: sub-folders must be named after labels ({_expected()}); "
                            f"unknown: {', '.join(unknown)}")
    items: list[LabelledItem] = []
    for sub in subdirs:
        label = normalise_label(sub.name)
        binary = to_binary(label, mapping)
        for f in sorted(sub.rglob("*")):
            rel = f.relative_to(sub)
            if any(_skip(part) for part in rel.parts) or not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            items.append(LabelledItem(str(f.resolve()), label, binary))
    if not items:
        raise LabelSetError(f"{root}: no images found; expected one sub-folder per label "
                            f"({_expected()}) holding {', '.join(IMAGE_SUFFIXES)} files")
    return items


def find_manifest(folder: str | Path) -> Path | None:
    folder = Path(folder)
    for name in MANIFEST_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_path(path: str | Path, *, binary_map: Mapping[str, str] | None = None,
              confine: str | Path | None = None) -> list[LabelledItem]:
    """A manifest file, a folder holding a manifest, or a folder with one sub-folder per label."""
    path = Path(path).expanduser()
    if path.is_file():
        return load_manifest(path, binary_map=binary_map, confine=confine)
    if not path.is_dir():
        raise LabelSetError(f"{path} does not exist")
    manifest = find_manifest(path)
    if manifest is not None:
        return load_manifest(manifest, binary_map=binary_map, confine=confine)
    return load_folder(path, binary_map=binary_map)


def server_roots(data_dir: str | Path) -> tuple[Path, ...]:
    """The only folders the pages may read labelled sets from on the server: the project's ``data/``
    and ``<data_dir>/labelsets`` (put your own sets there). Nothing else on the server's disk is read."""
    return ((ROOT / "data").resolve(), (Path(data_dir) / "labelsets").resolve())


def confined(raw: str, roots: Sequence[Path]) -> tuple[Path, Path]:
    """``raw`` (absolute, or relative to a root) resolved, and the root it lies in; LabelSetError if none.

    Symbolic links and ``..`` are resolved first, so neither leads out of a root.
    """
    raw = raw.strip()
    if raw and not raw.startswith("~"):
        path = Path(raw)
        for root in roots:
            target = (path if path.is_absolute() else root / path).resolve()
            if target.is_relative_to(root):
                return target, root
    raise LabelSetError(f"only labelled sets under {' or '.join(str(r) for r in roots)} can be read "
                        "from the server")


def load_server_path(raw: str, roots: Sequence[Path], *,
                     binary_map: Mapping[str, str] | None = None) -> list[LabelledItem]:
    """:func:`load_path` for a path a page visitor typed: only under ``roots`` (:func:`server_roots`),
    and a manifest's image paths must stay inside the set's folder."""
    target, _ = confined(raw, roots)
    folder = target if target.is_dir() else target.parent
    return load_path(target, binary_map=binary_map, confine=folder)


def demo_set(binary_map: Mapping[str, str] | None = None) -> list[LabelledItem]:
    """The benign demo set (``data/demo/manifest.csv``; see ``data/demo/LICENSES.md``)."""
    return load_manifest(DEMO_MANIFEST, binary_map=binary_map)


# ---------------------------------------------------------------- score tables (no images)

SYNTHETIC_SCORES = ROOT / "data" / "synthetic" / "scores.csv"


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
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LabelSetError(f"cannot read score table {path}: {exc.strerror or exc}") from exc
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


def synthetic_set(binary_map: Mapping[str, str] | None = None) -> list[tuple[LabelledItem, dict[str, float]]]:
    """The synthetic score table ``data/synthetic/scores.csv`` (fake scores, no images)."""
    return load_score_table(SYNTHETIC_SCORES, binary_map=binary_map)


# ---------------------------------------------------------------- ZIP archives


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The safe relative path of a member, None to skip it; LabelSetError for an unsafe one."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise LabelSetError(f"archive member {info.filename!r} is a symbolic link; links are not allowed")
    p = PurePosixPath(name)
    if name.startswith("/") or (p.parts and ":" in p.parts[0]):
        raise LabelSetError(f"archive member {info.filename!r} has an absolute path")
    if any(part == ".." for part in p.parts):
        raise LabelSetError(f"archive member {info.filename!r} tries to leave the archive folder ('..')")
    parts = [part for part in p.parts if part not in ("", ".")]
    if info.is_dir() or not parts or any(_skip(part) for part in parts):
        return None
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix not in IMAGE_SUFFIXES and suffix not in (".csv", ".json"):
        return None
    return PurePosixPath(*parts)


def extract_zip(
    data: bytes,
    cache_dir: str | Path,
    *,
    max_files: int = ZIP_MAX_FILES,
    max_total_bytes: int = ZIP_MAX_TOTAL_BYTES,
    max_file_bytes: int = ZIP_MAX_FILE_BYTES,
) -> Path:
    """Extract images and manifests of a ZIP into ``cache_dir/<sha256>/`` and return that folder.

    The whole archive is refused (:class:`LabelSetError`) if any member has an
    absolute path, a ``..`` component or is a link, or when the caps on file
    count, per-file and total uncompressed size are passed (sizes are counted
    while decompressing, not taken from the headers).  Other files are
    skipped.  Extraction goes to a temporary folder renamed at the end, so a
    folder that exists is complete; the same archive is extracted once.
    """
    digest = hashlib.sha256(data).hexdigest()
    cache = Path(cache_dir)
    target = cache / digest
    if target.is_dir():
        return target
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise LabelSetError(f"not a valid ZIP archive: {exc}") from exc
    with zf:
        named = [(info, _member_path(info)) for info in zf.infolist()]  # validates every name first
        members = [(info, rel) for info, rel in named if rel is not None]
        if len(members) > max_files:
            raise LabelSetError(f"the archive holds {len(members)} files; the limit is {max_files}")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}.", dir=cache))
        try:
            total = 0
            seen: set[str] = set()
            for info, rel in members:
                key = str(rel).lower()
                if key in seen:
                    raise LabelSetError(f"archive member {info.filename!r} appears twice")
                seen.add(key)
                out = tmp.joinpath(*rel.parts)
                if not out.resolve().is_relative_to(tmp.resolve()):  # belt and braces
                    raise LabelSetError(f"archive member {info.filename!r} leaves the archive folder")
                out.parent.mkdir(parents=True, exist_ok=True)
                size = 0
                try:
                    with zf.open(info) as src, open(out, "wb") as dst:
                        while chunk := src.read(1 << 16):
                            size += len(chunk)
                            total += len(chunk)
                            if size > max_file_bytes:
                                raise LabelSetError(f"archive member {info.filename!r} is larger than "
                                                    f"{max_file_bytes} bytes")
                            if total > max_total_bytes:
                                raise LabelSetError(f"the archive expands to more than {max_total_bytes} bytes")
                            dst.write(chunk)
                except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                    raise LabelSetError(f"cannot extract {info.filename!r}: {exc}") from exc
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():  # a concurrent extraction of the same archive won: use it
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _archive_root(folder: Path) -> Path:
    """Descend through single wrapping folders (``set.zip`` often holds ``set/…``)."""
    while find_manifest(folder) is None:
        entries = [p for p in folder.iterdir() if not _skip(p.name)]
        if len(entries) == 1 and entries[0].is_dir() and normalise_label(entries[0].name) not in LABELS:
            folder = entries[0]
        else:
            break
    return folder


def load_zip(
    data: bytes,
    cache_dir: str | Path,
    *,
    binary_map: Mapping[str, str] | None = None,
    max_files: int = ZIP_MAX_FILES,
    max_total_bytes: int = ZIP_MAX_TOTAL_BYTES,
    max_file_bytes: int = ZIP_MAX_FILE_BYTES,
) -> list[LabelledItem]:
    """Extract an uploaded ZIP safely (:func:`extract_zip`) and read it.

    If the archive (or its single top folder) holds ``manifest.csv`` /
    ``manifest.json`` / ``labels.csv`` / ``labels.json``, that is used and
    every path in it must stay inside the archive (URLs are allowed);
    otherwise the top folder must have one sub-folder per label.
    """
    folder = extract_zip(data, cache_dir, max_files=max_files, max_total_bytes=max_total_bytes,
                         max_file_bytes=max_file_bytes)
    root = _archive_root(folder)
    manifest = find_manifest(root)
    if manifest is not None:
        return load_manifest(manifest, binary_map=binary_map, confine=folder)
    return load_folder(root, binary_map=binary_map)


def zip_cache_folder(data_dir: str | Path) -> Path:
    """Where uploaded archives are extracted: ``<data_dir>/labelsets``."""
    return Path(data_dir) / ZIP_CACHE_FOLDER


def zip_cache_dir(settings: Settings) -> Path:
    """:func:`zip_cache_folder` of ``settings.data_dir``; kept until its callers pass the data folder."""
    return zip_cache_folder(settings.data_dir)
