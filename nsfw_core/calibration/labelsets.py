"""Labelled image sets for calibrating the thresholds: the entry points the pages and the CLI use.

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

Sources, one module each (all re-exported here)
-----------------------------------------------
- :mod:`~nsfw_core.calibration.manifests`: a CSV or JSON manifest of (path or URL, label) —
  :func:`load_manifest`, :func:`parse_manifest`; relative paths are resolved against the manifest's
  folder; and :func:`load_score_table`, precomputed scores with labels (no images);
- :mod:`~nsfw_core.calibration.folders`: a folder with one sub-folder per label — :func:`load_folder`
  (:func:`load_path` picks manifest or folder by itself);
- :mod:`~nsfw_core.calibration.archives`: a ZIP archive uploaded in the browser — :func:`load_zip`: it
  is extracted safely (no absolute paths, no ``..``, no links, caps on file count and sizes) into a
  cache folder and then read as a folder or through the manifest it contains; extracted archives
  share a disk quota (``NSFW_LABELSETS_QUOTA_BYTES``), the least recently used are evicted first;
- :mod:`~nsfw_core.calibration.bundled`: :func:`demo_set`, the benign demo set in ``data/demo``, and
  :func:`synthetic_set`, made-up scores with labels (no images) in ``data/synthetic`` — the only
  adult side shipped with the project.

Server files
------------
On the server, labelled sets are read only under one root, ``NSFW_LABELSETS_DIR``
(:func:`server_roots`, :func:`load_server_set`, below): a path typed by a page visitor, the
paths in an uploaded manifest and every file found in a set's folder must resolve
inside it, symbolic links included; the check is lexical first, so a path outside
the root is refused without looking at the disk (the answer never tells whether it
exists) (:mod:`~nsfw_core.calibration.confined`).  The images of a set are read by
:func:`item_loader`: URLs through the safe fetcher, files only under the root, the demo set
and the extracted uploads, each component opened without following links, only regular
files, with the byte cap on the read itself.  Manifests are read the same way under
:data:`MANIFEST_MAX_BYTES`.

Errors are :class:`LabelSetError` (an ``InputError``, HTTP 400) with a message
that names the offending rows or files, never their contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

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
    make_binary_map,
    normalise_label,
    to_binary,
)
from nsfw_core.base.settings import LabelSetConfig
from nsfw_core.calibration.archives import (
    ZIP_CACHE_FOLDER,
    ZIP_MAX_FILE_BYTES,
    ZIP_MAX_FILES,
    ZIP_MAX_TOTAL_BYTES,
    ZIP_QUOTA_BYTES,
    extract_zip,
    load_zip,
    zip_cache_folder,
)
from nsfw_core.calibration.bundled import DEMO_DIR, DEMO_MANIFEST, SYNTHETIC_SCORES, demo_set, synthetic_set
from nsfw_core.calibration.confined import confined, read_confined
from nsfw_core.calibration.folders import find_manifest, load_folder, load_path
from nsfw_core.calibration.manifests import (
    MANIFEST_MAX_BYTES,
    MANIFEST_NAMES,
    MAX_ERRORS_LISTED,
    load_manifest,
    load_score_table,
    parse_manifest,
)
from nsfw_core.images.fetch import is_url

__all__ = [
    # the label vocabulary, from nsfw_core.base.labels
    "ADULT", "ALIASES", "BINARY_LABELS", "CLASS_NAMES", "DEFAULT_BINARY_MAP", "LABELS", "SAFE",
    "LabelSetError", "LabelledItem", "make_binary_map", "normalise_label", "to_binary",
    # labelled sets, from the modules of each source
    "DEMO_DIR", "DEMO_MANIFEST", "MANIFEST_MAX_BYTES", "MANIFEST_NAMES", "MAX_ERRORS_LISTED", "SYNTHETIC_SCORES",
    "ZIP_CACHE_FOLDER", "ZIP_MAX_FILES", "ZIP_MAX_FILE_BYTES", "ZIP_MAX_TOTAL_BYTES", "ZIP_QUOTA_BYTES",
    "confined", "demo_set", "extract_zip", "find_manifest", "item_loader", "load_folder", "load_manifest",
    "load_path", "load_score_table", "load_server_path", "load_server_set", "load_zip", "parse_manifest",
    "read_confined", "readable_roots", "server_roots", "summary", "synthetic_set", "zip_cache_folder",
]


def summary(items: Iterable[LabelledItem]) -> dict[str, int]:
    """{"images": n, "adult": n_adult, "safe": n_safe}."""
    items = list(items)
    n_adult = sum(1 for it in items if it.binary == ADULT)
    return {"images": len(items), "adult": n_adult, "safe": len(items) - n_adult}


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


def item_loader(config: LabelSetConfig, fetch: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """``loader(source)`` for the images of a labelled set on the pages: URLs through ``fetch`` (the
    context's safe fetcher), files only under :func:`readable_roots` (:func:`read_confined`)."""
    roots = readable_roots(config)

    def load(source: str) -> bytes:
        if is_url(source):
            return fetch(source)
        return read_confined(source, roots, config.max_bytes)

    return load
