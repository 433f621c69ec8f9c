"""ZIP archives uploaded in the browser: extracted safely under a shared disk quota, then read as a set.

:func:`extract_zip` refuses a whole archive with an absolute path, a ``..`` component or a link, and
checks the caps on file count, per-file and total size twice (as declared, before anything is
written, and as decompressed).  Extracted archives share a quota (``NSFW_LABELSETS_QUOTA_BYTES``):
the least recently used are evicted first, under a file lock shared by processes.  :func:`load_zip`
then reads the archive through the manifest it holds or as a folder of sub-folders per label.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping

from nsfw_core.base.labels import LABELS, LabelledItem, LabelSetError, normalise_label
from nsfw_core.calibration.folders import find_manifest, is_hidden, load_folder
from nsfw_core.calibration.manifests import load_manifest
from nsfw_core.inference.pipeline import IMAGE_SUFFIXES

# ZIP limits (the page passes the settings' byte cap as the per-file limit).
ZIP_MAX_FILES = 5000
ZIP_MAX_TOTAL_BYTES = 1 << 30  # 1 GiB uncompressed in all
ZIP_MAX_FILE_BYTES = 10 << 20  # per member, as NSFW_MAX_BYTES' default
ZIP_QUOTA_BYTES = 1 << 30  # all extracted archives together, as NSFW_LABELSETS_QUOTA_BYTES' default
ZIP_STALE_SECONDS = 3600  # an unfinished extraction this old was left by a dead process
ZIP_CACHE_FOLDER = "labelsets"  # under the data folder


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
    if info.is_dir() or not parts or any(is_hidden(part) for part in parts):
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
        entries = [p for p in folder.iterdir() if not is_hidden(p.name)]
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
