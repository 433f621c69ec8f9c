"""Sources: what the command line names -> the list of images to scan, and one image's bytes.

* a local folder: walked (symbolic links to folders are not followed), image suffixes only, sorted;
  a local file: itself, whatever its name;
* a manifest (``--manifest``, ``.csv`` or ``.json`` of ``path,label`` as ``nsfw-classify`` reads them,
  :func:`nsfw_core.calibration.labelsets.load_manifest`): its rows, their label kept;
* a URL list (``--urls FILE``: one URL a line, ``#`` comments) or a URL on the command line: fetched
  by the service's SSRF-safe fetcher (:func:`nsfw_core.images.fetch.fetch`), under the same policy;
* an object store by URI (``s3://bucket/prefix``, ``gs://...``): listed and read through pyarrow's
  filesystems (the ones Ray Data uses), credentials and endpoint from the usual environment
  (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...); a prefix is listed recursively, image suffixes only.

Listing reads no image.  Every read stops at ``NSFW_MAX_BYTES`` (:class:`Reader`): a larger file is a
``too_large`` row, not a worker holding gigabytes.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa

from nsfw_core.base.errors import InvalidURL, NSFWError, TooLarge, UpstreamError
from nsfw_core.base.settings import FetchPolicy
from nsfw_core.calibration.labelsets import load_manifest
from nsfw_core.images.fetch import ConnectionPool, fetch, is_url
from nsfw_core.inference.pipeline import IMAGE_SUFFIXES, read_file
from nsfw_core.scan.schema import FILE, LISTING_SCHEMA, OBJECT, URL

# URI schemes read through pyarrow.fs (never through the HTTP fetcher).
OBJECT_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")
MAX_URL_LIST_BYTES = 256 * 1024 * 1024


class SourceError(ValueError):
    """A source that cannot be listed at all (a missing folder, a bucket that is not there): a usage error."""


@dataclass(frozen=True)
class Listed:
    source: str
    kind: str
    label: str | None = None


def object_scheme(source: str) -> str | None:
    """``s3`` for ``s3://bucket/key`` (one of :data:`OBJECT_SCHEMES`), else None."""
    head, sep, _ = source.partition("://")
    return head.lower() if sep and head.lower() in OBJECT_SCHEMES else None


def kind_of(source: str) -> str:
    if object_scheme(source):
        return OBJECT
    return URL if is_url(source) else FILE


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def walk_folder(folder: str | Path) -> Iterator[str]:
    """Image files under ``folder``, sorted, hidden entries skipped; links to folders are not followed."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _is_image_name(name):
                yield os.path.join(root, name)


def _filesystem(uri: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        return filesystem, str(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise SourceError(f"{uri}: {exc}") from exc


def list_objects(uri: str) -> Iterator[str]:
    """The image objects under an object-store URI (itself when it names one object), as full URIs, sorted."""
    from pyarrow import fs as pafs

    scheme = object_scheme(uri)
    assert scheme is not None
    filesystem, path = _filesystem(uri)
    try:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.File:
            yield f"{scheme}://{path}"
            return
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"{uri}: no such object or prefix")
        infos = filesystem.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True))
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{uri}: cannot list it ({exc})") from exc
    for entry in sorted(infos, key=lambda i: i.path):
        if entry.type == pafs.FileType.File and _is_image_name(entry.base_name):
            yield f"{scheme}://{entry.path}"


def read_url_list(path: str | Path) -> list[str]:
    """A URL list: one URL a line; blank lines and ``#`` comments skipped."""
    path = Path(path)
    try:
        data = read_file(path, MAX_URL_LIST_BYTES)
    except NSFWError as exc:
        raise SourceError(f"--urls {path}: {exc.message}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"--urls {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def list_sources(inputs: Sequence[str], *, manifests: Sequence[str] = (), url_lists: Sequence[str] = ()
                 ) -> Iterator[Listed]:
    """Every image the inputs name, in order, each source once (the first time it is named wins).

    Local paths are made absolute (not resolving links): the same file is the same source from any folder,
    and on every node of a cluster that mounts it at the same place.
    """
    seen: set[str] = set()

    def once(items: Iterable[Listed]) -> Iterator[Listed]:
        for item in items:
            if item.source not in seen:
                seen.add(item.source)
                yield item

    for raw in inputs:
        kind = kind_of(raw)
        if kind == OBJECT:
            yield from once(Listed(uri, OBJECT) for uri in list_objects(raw))
        elif kind == URL:
            yield from once([Listed(raw, URL)])
        else:
            try:
                mode = os.stat(raw).st_mode
            except OSError as exc:
                raise SourceError(f"{raw}: {exc.strerror or exc}") from None
            if stat.S_ISDIR(mode):
                yield from once(Listed(p, FILE) for p in walk_folder(os.path.abspath(raw)))
            else:
                yield from once([Listed(os.path.abspath(raw), FILE)])
    for manifest in manifests:
        try:
            rows = load_manifest(manifest)
        except NSFWError as exc:
            raise SourceError(f"--manifest {manifest}: {exc.message}") from exc
        yield from once(Listed(item.source if kind_of(item.source) != FILE else os.path.abspath(item.source),
                               kind_of(item.source), item.label) for item in rows)
    for url_list in url_lists:
        # every line is fetched (or read from its object store), never read as a local path: a line that is
        # not a URL is an invalid_url row
        yield from once(Listed(u, OBJECT if object_scheme(u) else URL) for u in read_url_list(url_list))


def listing_tables(items: Iterable[Listed], rows_per_table: int) -> Iterator[pa.Table]:
    """The listing in tables of ``rows_per_table`` rows (one Ray block each: a failed block costs few images)."""
    chunk: list[Listed] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= rows_per_table:
            yield _table(chunk)
            chunk = []
    if chunk:
        yield _table(chunk)


def _table(chunk: list[Listed]) -> pa.Table:
    return pa.table({"source": [i.source for i in chunk], "kind": [i.kind for i in chunk],
                     "label": [i.label for i in chunk]}, schema=LISTING_SCHEMA)


class Reader:
    """Reads one image's bytes by kind, never more than the byte cap; thread-safe.

    Files through :func:`nsfw_core.inference.pipeline.read_file` (regular files only), URLs through the
    SSRF-safe fetcher with keep-alive connections, objects through one pyarrow filesystem per bucket.
    """

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self.connections = ConnectionPool()
        self._filesystems: dict[str, Any] = {}
        self._lock = threading.Lock()

    def read(self, source: str, kind: str) -> bytes:
        if kind == FILE:
            return read_file(source, self.policy.max_bytes)
        if kind == URL:
            if object_scheme(source):
                raise InvalidURL(f"{source}: an object-store URI is read as an object, not fetched")
            return fetch(source, self.policy, pool=self.connections).content
        if kind == OBJECT:
            return self._read_object(source)
        raise InvalidURL(f"unknown source kind {kind!r}")

    def _object_fs(self, source: str) -> tuple[Any, str]:
        scheme, _, rest = source.partition("://")
        bucket = rest.split("/", 1)[0]
        key = f"{scheme}://{bucket}"
        with self._lock:
            filesystem = self._filesystems.get(key)
        if filesystem is None:
            try:
                filesystem, _ = _filesystem(source)
            except SourceError as exc:
                raise UpstreamError(str(exc)) from exc
            with self._lock:
                self._filesystems[key] = filesystem
        return filesystem, rest

    def _read_object(self, source: str) -> bytes:
        filesystem, path = self._object_fs(source)
        limit = self.policy.max_bytes
        try:
            with filesystem.open_input_stream(path) as stream:
                data = stream.read(limit + 1)
        except FileNotFoundError as exc:
            raise InvalidURL(f"{source}: no such object") from exc
        except (pa.ArrowException, OSError) as exc:
            raise UpstreamError(f"cannot read {source}: {exc}") from exc
        if len(data) > limit:
            raise TooLarge(f"{source} is larger than the limit of {limit} bytes", limit=limit)
        return bytes(data)

    def close(self) -> None:
        self.connections.clear()
