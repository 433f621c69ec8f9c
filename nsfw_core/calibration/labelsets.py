"""Labelled image sets for calibrating the thresholds.

A labelled set is a list of :class:`LabelledItem` ``(source, label, binary)``:
``source`` is a local path or a URL, ``label`` is one of the five model classes
(``drawings``, ``hentai``, ``neutral``, ``porn``, ``sexy``) or directly one of
the binary labels ``adult`` / ``safe``, and ``binary`` is the truth used by the
calibration (``adult`` or ``safe``).

Five classes -> binary
----------------------
The labels, their aliases and the mapping live in :mod:`nsfw_core.base.labels` (re-exported
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
  manifest it contains; extracted archives share a disk quota
  (``NSFW_LABELSETS_QUOTA_BYTES``), the least recently used are evicted first;
- :func:`demo_set`, the benign demo set in ``data/demo``;
- :func:`synthetic_set`, made-up scores with labels (no images) in
  ``data/synthetic`` — the only adult side shipped with the project.

Server files
------------
On the server, labelled sets are read only under one root, ``NSFW_LABELSETS_DIR``
(:func:`server_roots`, :func:`load_server_set`): a path typed by a page visitor, the
paths in an uploaded manifest and every file found in a set's folder must resolve
inside it, symbolic links included; the check is lexical first, so a path outside
the root is refused without looking at the disk (the answer never tells whether it
exists).  The images of a set are read by :func:`item_loader`: URLs through the safe
fetcher, files only under the root, the demo set and the extracted uploads, each
component opened without following links, only regular files, with the byte cap on
the read itself.  Manifests are read the same way under :data:`MANIFEST_MAX_BYTES`.

Errors are :class:`LabelSetError` (an ``InputError``, HTTP 400) with a message
that names the offending rows or files, never their contents.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from nsfw_core.base.errors import InvalidURL, TooLarge
from nsfw_core.base.files import FileTooLarge, read_regular_file
from nsfw_core.base.labels import (
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
from nsfw_core.base.settings import ROOT, LabelSetConfig
from nsfw_core.images.fetch import is_url
from nsfw_core.inference.pipeline import IMAGE_SUFFIXES

__all__ = [
    # the label vocabulary, from nsfw_core.base.labels
    "ADULT", "ALIASES", "BINARY_LABELS", "CLASS_NAMES", "DEFAULT_BINARY_MAP", "LABELS", "SAFE",
    "LabelSetError", "LabelledItem", "make_binary_map", "normalise_label", "to_binary",
    # labelled sets
    "DEMO_DIR", "DEMO_MANIFEST", "MANIFEST_MAX_BYTES", "MANIFEST_NAMES", "MAX_ERRORS_LISTED", "SYNTHETIC_SCORES",
    "ZIP_CACHE_FOLDER", "ZIP_MAX_FILES", "ZIP_MAX_FILE_BYTES", "ZIP_MAX_TOTAL_BYTES", "ZIP_QUOTA_BYTES",
    "confined", "demo_set", "extract_zip", "find_manifest", "item_loader", "load_folder", "load_manifest",
    "load_path", "load_score_table", "load_server_path", "load_server_set", "load_zip", "parse_manifest",
    "read_confined", "readable_roots", "server_roots", "summary", "synthetic_set", "zip_cache_folder",
]

MANIFEST_NAMES = ("manifest.csv", "manifest.json", "labels.csv", "labels.json")
DEMO_DIR = ROOT / "data" / "demo"
DEMO_MANIFEST = DEMO_DIR / "manifest.csv"

# ZIP limits (the page passes the settings' byte cap as the per-file limit).
ZIP_MAX_FILES = 5000
ZIP_MAX_TOTAL_BYTES = 1 << 30  # 1 GiB uncompressed in all
ZIP_MAX_FILE_BYTES = 10 << 20  # per member, as NSFW_MAX_BYTES' default
ZIP_QUOTA_BYTES = 1 << 30  # all extracted archives together, as NSFW_LABELSETS_QUOTA_BYTES' default
ZIP_STALE_SECONDS = 3600  # an unfinished extraction this old was left by a dead process
MAX_ERRORS_LISTED = 10
ZIP_CACHE_FOLDER = "labelsets"  # under the data folder
MANIFEST_MAX_BYTES = 32 << 20  # a manifest or score table; 5000 rows take well under 1 MB


# ---------------------------------------------------------------- labels


def summary(items: Iterable[LabelledItem]) -> dict[str, int]:
    """{"images": n, "adult": n_adult, "safe": n_safe}."""
    items = list(items)
    n_adult = sum(1 for it in items if it.binary == ADULT)
    return {"images": len(items), "adult": n_adult, "safe": len(items) - n_adult}


def _expected() -> str:
    return ", ".join(LABELS)


# ---------------------------------------------------------------- manifests


def _within(raw: str | Path, root: Path) -> Path | None:
    """``raw`` (absolute, or relative to ``root``) resolved, if it lies inside ``root``; else None.

    The lexical check comes first, so a path outside ``root`` is refused without a look at the
    disk; then symbolic links (and ``..`` after them) are resolved and checked again.  ``root``
    is resolved here too (a root that is itself a link is fine).
    """
    real = root.resolve()
    path = Path(raw)
    if "\x00" in str(raw):
        return None
    if path.is_absolute():
        lexical = Path(os.path.normpath(path))
        if not (lexical.is_relative_to(real) or lexical.is_relative_to(os.path.normpath(root.absolute()))):
            return None
    else:
        lexical = Path(os.path.normpath(real / path))
        if not lexical.is_relative_to(real):
            return None
    resolved = lexical.resolve()
    return resolved if resolved.is_relative_to(real) else None


def _resolve_source(raw: str, base_dir: Path | None, confine: Path | None, where: str) -> str:
    """URL as given; a relative path joined to ``base_dir``; with ``confine``, a path (relative to it,
    or absolute) must resolve inside it, symbolic links included."""
    raw = raw.strip()
    if is_url(raw):
        return raw
    if confine is not None:
        resolved = None if raw.startswith("~") else _within(raw, confine)
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
                            f"Labels must be one of: {_expected()}")
    if not items:
        raise LabelSetError("the manifest lists no images")
    return items


def _read_small(path: Path, what: str, confine: Path | None = None) -> bytes:
    """A manifest's or score table's bytes: a regular file, at most :data:`MANIFEST_MAX_BYTES`; with
    ``confine``, only inside it (:func:`read_confined`'s walk). Errors never quote the contents."""
    try:
        if confine is None:
            return read_regular_file(path, MANIFEST_MAX_BYTES)
        resolved = _within(path, confine)
        if resolved is None:
            raise LabelSetError(f"{what} {path} leaves {confine}")
        return _read_beneath(confine.resolve(), resolved, MANIFEST_MAX_BYTES)
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
    data = _read_small(path, "manifest", Path(confine) if confine is not None else None)
    return parse_manifest(data, fmt, base_dir=path.resolve().parent, binary_map=binary_map, confine=confine,
                          where=where)


# ---------------------------------------------------------------- folders


def _skip(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def load_folder(path: str | Path, *, binary_map: Mapping[str, str] | None = None,
                confine: str | Path | None = None) -> list[LabelledItem]:
    """A folder with one sub-folder per label (images found recursively in each, sorted).

    Sub-folder names are labels (case-insensitive, ``drawing`` accepted);
    an unknown name is an error that lists it.  Hidden entries are ignored.
    With ``confine``, every entry that is used (the sub-folders, the images)
    must resolve inside that folder: a symbolic link out of it is an error
    naming the entry, and the folder it points to is never listed.
    """
    root = Path(path)
    if not root.is_dir():
        raise LabelSetError(f"{root} is not a folder")
    mapping = check_binary_map(binary_map)
    limit = Path(confine) if confine is not None else None
    outside: list[str] = []

    def inside(p: Path) -> bool:
        if limit is None or _within(p, limit) is not None:
            return True
        outside.append(str(p.relative_to(root)))
        return False

    subdirs = sorted(p for p in root.iterdir() if not _skip(p.name) and inside(p) and p.is_dir())
    unknown = [p.name for p in subdirs
               if normalise_label(p.name) not in mapping and normalise_label(p.name) not in BINARY_LABELS]
    if unknown:
        raise LabelSetError(f"{root}: sub-folders must be named after labels ({_expected()}); "
                            f"unknown: {', '.join(unknown)}")
    items: list[LabelledItem] = []
    for sub in subdirs:
        label = normalise_label(sub.name)
        binary = to_binary(label, mapping)
        for f in sorted(sub.rglob("*")):  # does not descend into linked folders
            rel = f.relative_to(sub)
            if any(_skip(part) for part in rel.parts) or f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not inside(f) or not f.is_file():
                continue
            items.append(LabelledItem(str(f.resolve()), label, binary))
    if outside:
        outside.sort()
        listed = ", ".join(outside[:MAX_ERRORS_LISTED])
        more = f" (and {len(outside) - MAX_ERRORS_LISTED} more)" if len(outside) > MAX_ERRORS_LISTED else ""
        raise LabelSetError(f"{root}: {len(outside)} entr{'y' if len(outside) == 1 else 'ies'} link out of "
                            f"{limit}: {listed}{more}")
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
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise LabelSetError(f"{path} does not exist") from exc
        raise LabelSetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if stat.S_ISREG(mode):
        return load_manifest(path, binary_map=binary_map, confine=confine)
    if not stat.S_ISDIR(mode):
        raise LabelSetError(f"{path} is neither a manifest file nor a folder")
    manifest = find_manifest(path)
    if manifest is not None:
        return load_manifest(manifest, binary_map=binary_map, confine=confine)
    return load_folder(path, binary_map=binary_map, confine=confine)


def server_roots(config: LabelSetConfig) -> tuple[Path, ...]:
    """The only folder the pages may read labelled sets from on the server: ``NSFW_LABELSETS_DIR``,
    resolved (``data/`` by default). Nothing else on the server's disk is read as a set; extracted
    uploads (``<data_dir>/labelsets``) are not server sets and are refused even when inside it."""
    return (Path(config.root).resolve(),)


def readable_roots(config: LabelSetConfig) -> tuple[Path, ...]:
    """Where :func:`item_loader` reads images: the server sets' root, the demo set, the extracted uploads."""
    roots: list[Path] = []
    for p in (Path(config.root), DEMO_DIR, Path(config.uploads_dir)):
        real = p.resolve()
        if not any(real.is_relative_to(r) for r in roots):
            roots = [r for r in roots if not r.is_relative_to(real)] + [real]
    return tuple(roots)


def confined(raw: str, roots: Sequence[Path], *, exclude: Sequence[Path] = ()) -> tuple[Path, Path]:
    """``raw`` (absolute, or relative to a root) resolved, and the root it lies in; LabelSetError if none.

    ``..`` is refused lexically (no look at the disk, so the answer says nothing about paths
    outside the roots), then symbolic links are resolved and must stay inside the root too.
    Paths inside ``exclude`` (the extracted uploads) are refused as well.
    """
    raw = raw.strip()
    if raw and not raw.startswith("~"):
        for root in roots:
            target = _within(raw, Path(root))
            if target is not None and not any(target.is_relative_to(Path(x).resolve()) for x in exclude):
                return target, Path(root).resolve()
    raise LabelSetError(f"only labelled sets under {' or '.join(str(r) for r in roots)} can be read "
                        "from the server")


def load_server_path(raw: str, roots: Sequence[Path], *, binary_map: Mapping[str, str] | None = None,
                     exclude: Sequence[Path] = ()) -> list[LabelledItem]:
    """:func:`load_path` for a path a page visitor typed: only under ``roots`` (:func:`server_roots`),
    and a manifest's image paths, like a folder's entries, must stay inside the set's folder."""
    target, _ = confined(raw, roots, exclude=exclude)
    folder = target if target.is_dir() else target.parent
    return load_path(target, binary_map=binary_map, confine=folder)


def load_server_set(raw: str, config: LabelSetConfig, *,
                    binary_map: Mapping[str, str] | None = None) -> list[LabelledItem]:
    """:func:`load_server_path` under ``NSFW_LABELSETS_DIR``, the extracted uploads excluded."""
    return load_server_path(raw, server_roots(config), binary_map=binary_map, exclude=(Path(config.uploads_dir),))


# ---------------------------------------------------------------- reading the images of a set


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_beneath(root: Path, target: Path, limit: int) -> bytes:
    """``target`` (resolved, inside the resolved ``root``) read by walking down from ``root`` one
    component at a time without following links, so a folder swapped for a link after the checks
    is refused (ELOOP/ENOTDIR) rather than followed out of the root."""
    parts = target.relative_to(root).parts
    if not parts:
        raise OSError(errno.EISDIR, "it is a folder")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return read_regular_file(parts[-1], limit, follow_symlinks=False, dir_fd=fd)
    finally:
        os.close(fd)


def read_confined(path: str | Path, roots: Sequence[Path], max_bytes: int) -> bytes:
    """The bytes of the image file ``path`` if it lies inside one of ``roots`` (links resolved):
    a regular file, at most ``max_bytes`` (:class:`~nsfw_core.base.errors.TooLarge` above; the read
    itself stops there). Anything else is :class:`~nsfw_core.base.errors.InvalidURL`, saying which path
    but not whether a path outside the roots exists."""
    raw = str(path)
    if Path(raw).is_absolute():
        for root in roots:
            target = _within(raw, Path(root))
            if target is None:
                continue
            try:
                return _read_beneath(Path(root).resolve(), target, max_bytes)
            except FileTooLarge as exc:
                raise TooLarge(f"{raw} is larger than the limit of {max_bytes} bytes", limit=max_bytes) from exc
            except OSError as exc:
                raise InvalidURL(f"cannot read {raw}: {exc.strerror or exc}") from exc
    raise InvalidURL(f"{raw[:300]!r} is neither a URL nor a file under the labelled-set folders; nothing else "
                     "is read")


def item_loader(config: LabelSetConfig, fetch: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """``loader(source)`` for the images of a labelled set on the pages: URLs through ``fetch`` (the
    context's safe fetcher), files only under :func:`readable_roots` (:func:`read_confined`)."""
    roots = readable_roots(config)

    def load(source: str) -> bytes:
        if is_url(source):
            return fetch(source)
        return read_confined(source, roots, config.max_bytes)

    return load


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
        text = _read_small(path, "score table").decode("utf-8-sig")
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


_DIGEST = re.compile(r"[0-9a-f]{64}")
_TMP_PREFIX = ".tmp-"  # .tmp-<declared bytes>-<digest[:12]>-<random>: an extraction in progress
_EVICT_PREFIX = ".evict-"  # an archive being deleted (renamed first, so it vanishes at once)


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """An exclusive lock on ``cache/.lock`` across processes (flock), held while room is made."""
    fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _tree_bytes(folder: str | Path) -> int:
    """Bytes of the files under ``folder``; entries that vanish meanwhile count nothing."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _remove(folder: str | Path) -> None:
    """Delete an archive's folder: renamed aside first (atomic: another process sees it whole or
    not at all), then removed; a folder another process already took is no error."""
    folder = Path(folder)
    aside = folder.parent / f"{_EVICT_PREFIX}{folder.name}-{os.urandom(4).hex()}"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _make_room(cache: Path, need: int, quota: int, keep: str) -> None:
    """Evict the least recently used extracted archives until ``need`` more bytes fit in ``quota``.

    Called under :func:`_cache_lock`.  Extractions in progress (by this or another process) count
    at their declared size and are never evicted, unless older than :data:`ZIP_STALE_SECONDS`
    (left by a process that died), which are removed like leftovers of an eviction.  Folders that
    are not archives (no SHA-256 name) are neither counted nor touched.
    """
    now = time.time()
    used = 0
    archives: list[tuple[float, int, str]] = []  # (last use, bytes, path)
    try:
        entries = list(os.scandir(cache))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if _DIGEST.fullmatch(entry.name):
                size = _tree_bytes(entry.path)
                archives.append((mtime, size, entry.path))
                used += size
            elif entry.name.startswith(_EVICT_PREFIX) or (entry.name.startswith(".")
                                                         and now - mtime > ZIP_STALE_SECONDS):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(_TMP_PREFIX):
                declared = entry.name[len(_TMP_PREFIX):].split("-", 1)[0]
                used += max(int(declared) if declared.isdigit() else 0, _tree_bytes(entry.path))
        except FileNotFoundError:
            continue
    for _, size, path in sorted(archives):
        if used + need <= quota:
            break
        if os.path.basename(path) == keep:
            continue
        _remove(path)
        used -= size
    if used + need > quota:
        raise LabelSetError(f"the archive expands to {need} bytes and only {max(quota - used, 0)} of the {quota} "
                            "bytes for extracted uploads (NSFW_LABELSETS_QUOTA_BYTES) can be made free: other "
                            "uploads are being extracted; try again in a moment")


def _touch(folder: Path) -> None:
    """Mark an extracted archive as just used (its modification time orders eviction)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(folder)


def extract_zip(
    data: bytes,
    cache_dir: str | Path,
    *,
    max_files: int = ZIP_MAX_FILES,
    max_total_bytes: int = ZIP_MAX_TOTAL_BYTES,
    max_file_bytes: int = ZIP_MAX_FILE_BYTES,
    quota_bytes: int = ZIP_QUOTA_BYTES,
) -> Path:
    """Extract images and manifests of a ZIP into ``cache_dir/<sha256>/`` and return that folder.

    The whole archive is refused (:class:`LabelSetError`) if any member has an
    absolute path, a ``..`` component or is a link, or when the caps on file
    count, per-file and total uncompressed size are passed.  Sizes are checked
    twice: the sizes the archive declares, before anything is written, and the
    bytes actually decompressed, which may not exceed them.  Other files are
    skipped.

    All extracted archives share ``quota_bytes`` (``NSFW_LABELSETS_QUOTA_BYTES``):
    before extracting, the least recently used are evicted until the declared
    size fits; an archive larger than the quota, or one that cannot fit while
    other extractions are in progress, is refused.  Extraction goes to a
    temporary folder renamed at the end, so a folder that exists is complete;
    the same archive is extracted once (a hit counts as a use).  Several
    processes may share ``cache_dir``: room is made under a file lock, and
    eviction renames a folder aside before deleting it.
    """
    digest = hashlib.sha256(data).hexdigest()
    cache = Path(cache_dir)
    target = cache / digest
    if target.is_dir():
        _touch(target)
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
        for info, _ in members:
            if info.file_size > max_file_bytes:
                raise LabelSetError(f"archive member {info.filename!r} is larger than {max_file_bytes} bytes")
        declared = sum(info.file_size for info, _ in members)
        if declared > max_total_bytes:
            raise LabelSetError(f"the archive expands to more than {max_total_bytes} bytes ({declared} declared)")
        if declared > quota_bytes:
            raise LabelSetError(f"the archive expands to {declared} bytes, more than the {quota_bytes} bytes all "
                                "extracted uploads may use (NSFW_LABELSETS_QUOTA_BYTES)")
        cache.mkdir(parents=True, exist_ok=True)
        with _cache_lock(cache):
            _make_room(cache, declared, quota_bytes, keep=digest)
            tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{declared}-{digest[:12]}-", dir=cache))
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
                            if size > info.file_size or total > declared:
                                raise LabelSetError(f"archive member {info.filename!r} expands to more than the "
                                                    f"{info.file_size} bytes it declares")
                            dst.write(chunk)
                except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                    raise LabelSetError(f"cannot extract {info.filename!r}: {exc}") from exc
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():  # a concurrent extraction of the same archive won: use it
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            _touch(target)
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
    quota_bytes: int = ZIP_QUOTA_BYTES,
) -> list[LabelledItem]:
    """Extract an uploaded ZIP safely (:func:`extract_zip`, under ``quota_bytes``) and read it.

    If the archive (or its single top folder) holds ``manifest.csv`` /
    ``manifest.json`` / ``labels.csv`` / ``labels.json``, that is used and
    every path in it must stay inside the archive (URLs are allowed);
    otherwise the top folder must have one sub-folder per label.
    """
    folder = extract_zip(data, cache_dir, max_files=max_files, max_total_bytes=max_total_bytes,
                         max_file_bytes=max_file_bytes, quota_bytes=quota_bytes)
    root = _archive_root(folder)
    manifest = find_manifest(root)
    if manifest is not None:
        return load_manifest(manifest, binary_map=binary_map, confine=folder, where="the archive")
    return load_folder(root, binary_map=binary_map, confine=folder)


def zip_cache_folder(data_dir: str | Path) -> Path:
    """Where uploaded archives are extracted: ``<data_dir>/labelsets``."""
    return Path(data_dir) / ZIP_CACHE_FOLDER
