"""The driver's side of a scan: the workers' answers -> judged rows -> the review queue -> part files.

The driver consumes whatever the engine yields (:mod:`nsfw_core.scan.engine`: Ray Data's streaming
output; tests feed :class:`~nsfw_core.scan.worker.ScanWorker` answers directly), in any order:

1. judges the scored rows under the thresholds read once at the start (:mod:`nsfw_core.scan.judge`), known
   images included: the verdict every row gets is the one the service would give;
2. with ``--queue``, queues what :mod:`nsfw_core.scan.queueing` picks, before the rows are written (so a
   written row's ``review_id`` is always true);
3. buffers the rows and writes a part file every ``flush_rows`` rows or ``flush_seconds`` seconds, and once
   at the end or on Ctrl-C (:class:`~nsfw_core.scan.dataset.ScanDataset`: a part appears whole or not at all).

Skipped images (already in the dataset) are counted and written nowhere.  A driver killed outright loses
the rows it had not written yet: the next run finds them missing and scans them again.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.verdict import Thresholds
from nsfw_core.scan.dataset import ScanDataset
from nsfw_core.scan.judge import Lookup, judge
from nsfw_core.scan.queueing import Queuer
from nsfw_core.scan.schema import DEFAULT_DECODE, SCHEMA, SKIPPED
from nsfw_core.scan.summary import Summary


def to_rows(answers: pa.Table, model: str, model_version: str, run_id: str,
            scanned_at: _dt.datetime, decode: str = DEFAULT_DECODE) -> pa.Table:
    """The workers' answers (not skipped) as :data:`~nsfw_core.scan.schema.SCHEMA` rows, before judging."""
    n = answers.num_rows
    scores = answers["scores"]
    columns: dict[str, Any] = {
        "source": answers["source"], "kind": answers["kind"], "label": answers["label"],
        "size": answers["size"], "sha256": answers["sha256"],
        "model": pa.array([model] * n, pa.string()), "model_version": pa.array([model_version] * n, pa.string()),
        "decode": pa.array([decode] * n, pa.string()),
    }
    for j, c in enumerate(CLASS_NAMES):
        columns[c] = pc.list_element(scores, j) if n else pa.array([], pa.float32())
    columns.update({"frames": answers["frames"], "pdq": answers["pdq"], "embedding": answers["embedding"],
                    "error_code": answers["error_code"], "error_message": answers["error_message"],
                    "scanned_at": pa.array([scanned_at] * n, pa.timestamp("ms", tz="UTC")),
                    "run_id": pa.array([run_id] * n, pa.string())})
    out = {}
    for field in SCHEMA:
        value = columns.get(field.name)
        out[field.name] = pa.nulls(n, field.type) if value is None else value
    return pa.table(out).cast(SCHEMA)


class Driver:
    """Judges, queues and writes; one per scan run."""

    def __init__(self, dataset: ScanDataset, *, model: str, model_version: str, run_id: str,
                 thresholds: Thresholds, thresholds_version: int | None, lookup: Lookup | None = None,
                 queuer: Queuer | None = None, summary: Summary | None = None, flush_rows: int = 5000,
                 flush_seconds: float = 30.0, progress: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, decode: str = DEFAULT_DECODE) -> None:
        self.dataset = dataset
        self.decode = decode
        self.model = model
        self.model_version = model_version
        self.run_id = run_id
        self.thresholds = thresholds
        self.thresholds_version = thresholds_version
        self.lookup = lookup
        self.queuer = queuer
        self.summary = summary or Summary()
        self.flush_rows = max(1, flush_rows)
        self.flush_seconds = flush_seconds
        self.progress = progress
        self.clock = clock
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._seq = 0
        self._last_flush = clock()
        self._first: float | None = None
        self._last: float | None = None

    def consume(self, answers: Iterable[pa.Table]) -> Summary:
        """Take every answer, then write what is left; Ctrl-C writes what it has, then re-raises."""
        try:
            for batch in answers:
                self.add(batch)
        finally:
            self.flush()
            if self._first is not None and self._last is not None:
                self.summary.scan_seconds = self._last - self._first
        return self.summary

    def add(self, answers: pa.Table) -> None:
        now = self.clock()
        self._first = now if self._first is None else self._first
        self._last = now
        self.summary.add_worker_rows(answers)
        fresh = answers.filter(pc.not_equal(answers["status"], SKIPPED))
        if fresh.num_rows:
            rows = to_rows(fresh, self.model, self.model_version, self.run_id,
                           _dt.datetime.now(_dt.timezone.utc), self.decode)
            judged = judge(rows, self.thresholds, self.thresholds_version, self.lookup)
            for name, column in judged.items():
                rows = rows.set_column(rows.schema.get_field_index(name), name, column)
            if self.queuer is not None:
                ids = self.queuer.enqueue(rows, fresh["review_hashes"].to_pylist())
                rows = rows.set_column(rows.schema.get_field_index("review_id"), "review_id", ids)
                self.summary.queued, self.summary.queue_failed = self.queuer.queued, self.queuer.failed
            self._buffer.append(rows)
            self._buffered += rows.num_rows
        if self.progress is not None:
            self.progress(answers.num_rows)
        if self._buffered >= self.flush_rows or (self._buffered and now - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        self._last_flush = self.clock()
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self.dataset.write_part(table, self.run_id, self._seq)
        self._seq += 1
        self._buffer, self._buffered = [], 0
        self.summary.rows_written += table.num_rows
        self.summary.parts_written += 1
        self.summary.add_written(table)
