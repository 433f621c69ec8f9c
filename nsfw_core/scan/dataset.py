"""The scan dataset on a filesystem: a folder (or object-store prefix) of Parquet part files.

Layout::

    DATASET/_nsfw_scan.json                    what this folder is (format, created by, when)
    DATASET/part-<run>-<seq>.parquet           rows, :data:`~nsfw_core.scan.schema.SCHEMA`
    DATASET/_lock                              held by the one scan or reverdict writing (local folders)

Durability: a part file appears whole or not at all (written under a hidden name, then renamed; an
object store's PUT is atomic by itself), so a driver killed at any instant leaves only whole parts, and
the rows it had not written yet are scanned again by the next run.  Part names sort in the order they
were written (``<run>`` starts with the run's UTC start time), so the *latest* row of a source is the last
one in name order: :meth:`ScanDataset.view` keeps it (an image whose bytes changed, or an error retried,
has an older row that the view hides).  Rows are never edited in place; reverdict rewrites a part as a
whole new file under the same name.

Formats (:data:`~nsfw_core.scan.schema.FORMAT`): parts of an older format are read as this one types them
(:func:`~nsfw_core.scan.schema.upgrade`), and the first part this version writes into an older dataset raises
the format in ``_nsfw_scan.json`` first, so an older nsfw-scan refuses the dataset (``check``) rather than
misread the parts written now.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from nsfw_core.scan.keys import DoneSet, key
from nsfw_core.scan.schema import DEFAULT_DECODE, FINAL_ERRORS, FORMAT, SCHEMA, outdated, upgrade

META = "_nsfw_scan.json"
LOCK = "_lock"
PART_PREFIX = "part-"
ORDER = "_order"  # a column added by reads: the row's place in write order


class DatasetError(ValueError):
    """The path is not a scan dataset, or cannot be used as one (a usage error)."""


def new_run_id(now: _dt.datetime | None = None) -> str:
    """``20261207T101500Z-3f9a1c``: the start time (so names sort by run) and 24 random bits."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def _resolve(uri: str) -> tuple[Any, str, bool]:
    """(pyarrow filesystem, path on it, is local) for a local path or a URI (s3://bucket/prefix)."""
    if "://" not in uri[:16]:
        return pafs.LocalFileSystem(), os.path.abspath(uri), True
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{uri}: {exc}") from exc
    return filesystem, path.rstrip("/"), isinstance(filesystem, pafs.LocalFileSystem)


class ScanDataset:
    """One dataset; see the module docstring."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.path, self.local = _resolve(uri)
        self._lock_fd: int | None = None
        self._current = False  # _nsfw_scan.json says FORMAT (checked before the first part is written)
        self._meta_lock = threading.Lock()  # reverdict writes parts from several threads

    def _join(self, name: str) -> str:
        return f"{self.path}/{name}"

    # ------------------------------------------------------------ opening

    def exists(self) -> bool:
        return bool(self.fs.get_file_info(self._join(META)).type == pafs.FileType.File)

    def create_or_open(self, created_by: str) -> None:
        """Open the dataset, creating it when the folder is missing or empty; refuse any other folder."""
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            raise DatasetError(f"{self.uri} is a file, not a dataset folder")
        if self.exists():
            self.check()
            return
        if info.type == pafs.FileType.Directory:
            entries = self.fs.get_file_info(pafs.FileSelector(self.path))
            if entries:
                raise DatasetError(f"{self.uri} is not empty and not an nsfw-scan dataset (no {META}); "
                                   "give a new or empty folder")
        self.fs.create_dir(self.path, recursive=True)
        meta = {"format": FORMAT, "created_by": created_by,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self._write_bytes(META, (json.dumps(meta, indent=2) + "\n").encode())

    def check(self) -> dict[str, Any]:
        """The dataset's metadata; :class:`DatasetError` when the path is not a dataset this version can read."""
        try:
            with self.fs.open_input_stream(self._join(META)) as stream:
                meta = json.loads(stream.read(1 << 20))
        except FileNotFoundError:
            raise DatasetError(f"{self.uri} is not an nsfw-scan dataset (no {META})") from None
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DatasetError(f"{self.uri}: cannot read {META} ({exc})") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("format"), int):
            raise DatasetError(f"{self.uri}: {META} is not an nsfw-scan dataset's")
        if meta["format"] > FORMAT:
            raise DatasetError(f"{self.uri} was written by a newer nsfw-scan (format {meta['format']}; "
                               f"this one reads {FORMAT})")
        return meta

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the dataset's lock (local folders): one scan or reverdict writes at a time."""
        if not self.local:  # object stores have no locks: one writer is the operator's to ensure (docs/scan.md)
            yield
            return
        import fcntl

        fd = os.open(self._join(LOCK), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DatasetError(f"{self.uri} is in use by another nsfw-scan (its {LOCK} is held)") from None
            yield
        finally:
            os.close(fd)  # releases the lock; a killed process's lock is released by the kernel

    # ------------------------------------------------------------ writing

    def _write_bytes(self, name: str, data: bytes) -> None:
        final = self._join(name)
        if self.local:
            tmp = self._join(f".{name}.{secrets.token_hex(4)}.tmp")
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        else:
            with self.fs.open_output_stream(final) as out:  # an object appears whole when the upload completes
                out.write(data)

    def write_part(self, table: pa.Table, run_id: str, seq: int) -> str:
        """Write ``table`` (cast to :data:`SCHEMA`) as a new part; returns its name."""
        name = f"{PART_PREFIX}{run_id}-{seq:06d}.parquet"
        self._write_table(name, table)
        return name

    def _raise_format(self) -> None:
        """Before the first part is written: a dataset of an older format is marked :data:`FORMAT` (its other
        metadata kept), since the parts written now are this format's (an older reader would misread them)."""
        with self._meta_lock:
            if self._current:
                return
            meta = self.check() if self.exists() else None
            if meta is not None and meta["format"] < FORMAT:
                meta["format"] = FORMAT
                self._write_bytes(META, (json.dumps(meta, indent=2) + "\n").encode())
            self._current = True

    def _write_table(self, name: str, table: pa.Table) -> None:
        self._raise_format()
        sink = pa.BufferOutputStream()
        pq.write_table(table.select(SCHEMA.names).cast(SCHEMA), sink, compression="zstd")
        self._write_bytes(name, sink.getvalue().to_pybytes())

    def rewrite_part(self, name: str, table: pa.Table) -> None:
        """Replace part ``name`` with ``table`` (atomically, as a whole new file under the same name)."""
        self._write_table(name, table)

    # ------------------------------------------------------------ reading

    def parts(self) -> list[str]:
        """Part file names, in write order."""
        try:
            entries = self.fs.get_file_info(pafs.FileSelector(self.path))
        except FileNotFoundError:
            return []
        return sorted(e.base_name for e in entries
                      if e.type == pafs.FileType.File and e.base_name.startswith(PART_PREFIX)
                      and e.base_name.endswith(".parquet"))

    def read_part(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Part ``name`` (``columns`` only), its columns typed as this format types them, whichever wrote it."""
        table = pq.read_table(self._join(name), filesystem=self.fs, columns=list(columns) if columns else None)
        return upgrade(table)

    def outdated(self, name: str) -> bool:
        """Whether part ``name`` was written in an older format (from its footer; see :func:`schema.outdated`)."""
        return outdated(pq.read_schema(self._join(name), filesystem=self.fs))

    def row_counts(self, parts: Sequence[str]) -> list[int]:
        """Rows in each of ``parts`` (from their footers)."""
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda n: pq.read_metadata(self._join(n), filesystem=self.fs).num_rows, parts))

    def read(self, columns: Sequence[str] | None = None, parts: Sequence[str] | None = None) -> pa.Table:
        """Every row of ``parts`` (default all), in write order, with :data:`ORDER`; ``columns`` only."""
        names = self.parts() if parts is None else list(parts)
        wanted = None if columns is None else [c for c in SCHEMA.names if c in set(columns) | {"source"}]
        schema = SCHEMA if wanted is None else pa.schema([SCHEMA.field(c) for c in wanted])
        if not names:
            return schema.empty_table().append_column(ORDER, pa.array([], pa.int64()))
        with ThreadPoolExecutor(4) as pool:
            tables = list(pool.map(lambda n: self.read_part(n, wanted).cast(schema), names))
        table = pa.concat_tables(tables)
        return table.append_column(ORDER, pa.array(np.arange(table.num_rows, dtype=np.int64)))

    def view(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The latest row of each source (see the module docstring), in write order."""
        return latest(self.read(columns))

    def done(self, model: str, model_version: str, *, decode: str = DEFAULT_DECODE,
             retry_errors: bool = False) -> DoneSet:
        """The images a scan with this model version and decode mode skips (see :mod:`nsfw_core.scan.keys`)."""
        table = self.view(["source", "sha256", "model", "model_version", "decode", "error_code"])
        if not table.num_rows:
            return DoneSet()
        same = pc.and_(pc.and_(pc.equal(table["model"], model), pc.equal(table["model_version"], model_version)),
                       pc.equal(table["decode"], decode))
        errors = table["error_code"]
        ok = pc.is_null(errors)
        if not retry_errors:
            ok = pc.or_(ok, pc.is_in(errors, pa.array(sorted(FINAL_ERRORS))))
        keep = pc.and_(pc.and_(same, pc.fill_null(ok, False)), pc.is_valid(table["sha256"]))
        kept = table.filter(keep)
        return DoneSet(np.fromiter((key(s, h) for s, h in zip(kept["source"].to_pylist(),
                                                              kept["sha256"].to_pylist(), strict=True)),
                                   dtype=np.uint64, count=kept.num_rows))


def latest_mask(table: pa.Table) -> np.ndarray:
    """True for each row that is the last of its source in ``table``'s order."""
    if not table.num_rows:
        return np.zeros(0, dtype=bool)
    sources = table.column("source")
    if len(pc.unique(sources)) == table.num_rows:  # the usual case: no image scanned twice
        return np.ones(table.num_rows, dtype=bool)
    import pandas as pd  # a hash of the strings: about 0.3 s at a million rows, where pyarrow's group_by takes 5

    duplicated: np.ndarray = pd.Series(sources.to_numpy(zero_copy_only=False)).duplicated(keep="last").to_numpy()
    return ~duplicated


def latest(table: pa.Table) -> pa.Table:
    """The last row of each source, in ``table``'s order."""
    return table.filter(pa.array(latest_mask(table)))
