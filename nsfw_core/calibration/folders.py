"""Labelled sets laid out on disk: a folder with one sub-folder per label, or a folder holding a manifest.

:func:`load_folder` reads the first layout (images found recursively in each sub-folder, sorted;
hidden entries ignored), :func:`find_manifest` finds a manifest in a folder, and :func:`load_path`
picks by itself between a manifest file, a folder with a manifest and a folder of sub-folders.
With ``confine`` every entry used must resolve inside that folder, links included.
"""

from __future__ import annotations

import errno
import stat
from pathlib import Path
from typing import Mapping

from nsfw_core.base.labels import (
    BINARY_LABELS,
    LabelledItem,
    LabelSetError,
    check_binary_map,
    normalise_label,
    to_binary,
)
from nsfw_core.calibration.confined import within
from nsfw_core.calibration.manifests import MANIFEST_NAMES, MAX_ERRORS_LISTED, expected_labels, load_manifest
from nsfw_core.inference.pipeline import IMAGE_SUFFIXES


def is_hidden(name: str) -> bool:
    """A dot file or folder, or macOS's ``__MACOSX`` of a ZIP: never part of a set."""
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
        if limit is None or within(p, limit) is not None:
            return True
        outside.append(str(p.relative_to(root)))
        return False

    subdirs = sorted(p for p in root.iterdir() if not is_hidden(p.name) and inside(p) and p.is_dir())
    unknown = [p.name for p in subdirs
               if normalise_label(p.name) not in mapping and normalise_label(p.name) not in BINARY_LABELS]
    if unknown:
        raise LabelSetError(f"{root}: sub-folders must be named after labels ({expected_labels()}); "
                            f"unknown: {', '.join(unknown)}")
    items: list[LabelledItem] = []
    for sub in subdirs:
        label = normalise_label(sub.name)
        binary = to_binary(label, mapping)
        for f in sorted(sub.rglob("*")):  # does not descend into linked folders
            rel = f.relative_to(sub)
            if any(is_hidden(part) for part in rel.parts) or f.suffix.lower() not in IMAGE_SUFFIXES:
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
                            f"({expected_labels()}) holding {', '.join(IMAGE_SUFFIXES)} files")
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
