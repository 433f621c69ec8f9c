"""The work of one actor: read, hash, skip what is done, decode under the service's limits, score.

:class:`ScanWorker` is a plain callable class: Ray Data creates one per actor (``map_batches(ScanWorker,
compute=ActorPoolStrategy(...))``), which loads the model once, in its constructor, and then calls it
with batch after batch of the listing (a ``pyarrow.Table``: source, kind, label).  Tests call it
directly, without Ray.

Per image: the bytes (under ``NSFW_MAX_BYTES``: :class:`~nsfw_core.scan.sources.Reader`), their sha256;
an image the dataset already holds for this model version is ``skipped`` here, before any decoding
(:mod:`nsfw_core.scan.keys`).  The rest decode through the service's own
:class:`~nsfw_core.inference.pipeline.Decoder` and :class:`~nsfw_core.base.settings.DecodeLimits`: headers
checked before anything is decoded (``image_too_large``, ``not_an_image``...), the pixel budget, and
expensive images in the isolated lane (a child process under ``NSFW_DECODE_TIMEOUT`` and an address-space
limit), so a decompression bomb or a truncated file is one ``error`` row and the actor goes on.  Then one
forward pass over the batch's inputs (an animation's sampled frames count one input each).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from nsfw_core.base.errors import ModelError, NSFWError
from nsfw_core.base.settings import DecodeLimits, FetchPolicy, ModelConfig
from nsfw_core.images.phash import join_hex, query_hash, stored_hashes
from nsfw_core.inference.model import Model, load_model
from nsfw_core.inference.pipeline import Decoder, FrameInputs
from nsfw_core.scan.keys import DoneSet
from nsfw_core.scan.schema import DEFAULT_DECODE, FAILED, FAST_DECODE, FILE, SCORED, SKIPPED, WORKER_SCHEMA
from nsfw_core.scan.sources import Reader

log = logging.getLogger(__name__)

IO_THREADS = 8  # reads in flight per actor for URLs and objects (local files are read one at a time)


class FastDecoder(Decoder):
    """``--fast-decode``: large JPEGs decoded by libjpeg at the smallest scale (1/2, 1/4, 1/8) whose shorter side
    still covers the model's input, instead of at least 4x it (the service's ``DRAFT_FACTOR``).  A 1 MP JPEG
    then decodes at 640x400 instead of 1280x800.  Every limit stays the service's.  Its verdicts are measured
    against the default's in BENCHMARKS.md (agreement, not speed alone); opt-in only."""

    def draft_size(self, model: Model) -> int | None:
        return model.input_size if self.limits.jpeg_draft else None


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Everything an actor needs, picklable: the narrow parts of the settings and the scan's options."""

    model_name: str
    model_version: str  # what the driver expects: every actor's model must be this one
    model: ModelConfig
    decode: DecodeLimits
    fetch: FetchPolicy
    threads: int = 1  # threads of one forward pass in this actor
    embeddings: bool = False
    review_hashes: bool = False  # also the hashes a review decision is remembered by (--queue)
    decode_mode: str = DEFAULT_DECODE  # or FAST_DECODE (--fast-decode)
    io_threads: int = IO_THREADS


class ScanWorker:
    """One actor's model, decoder and reader; ``worker(batch)`` -> one :data:`WORKER_SCHEMA` row per image."""

    loads = 0  # models loaded in this process (a test checks: once per actor, not per batch)

    def __init__(self, config: WorkerConfig, done: np.ndarray | None = None) -> None:
        self.config = config
        self.model = load_model(config.model_name, config.model.model_dir, runtime=config.model.runtime,
                                threads=config.threads, cache_dir=config.model.compiled_dir)
        type(self).loads += 1
        if self.model.version != config.model_version:
            raise ModelError(f"this worker's {config.model_name} is version {self.model.version}, the scan's "
                             f"{config.model_version}: every node must have the same model files")
        # One image decodes at a time in an actor, so one isolated-lane process is enough.
        limits = dataclasses.replace(config.decode, processes=1)
        self.decoder = FastDecoder(limits) if config.decode_mode == FAST_DECODE else Decoder(limits)
        self.reader = Reader(config.fetch)
        self.done = DoneSet(done if done is not None else np.zeros(0, np.uint64))
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._io: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ reading

    def _reads(self, sources: list[str], kinds: list[str]) -> Iterator[tuple[bytes | NSFWError, float]]:
        """Each image's bytes (or the error reading it) and the seconds it took, in order.  Local files are
        read one at a time; URLs and objects up to ``io_threads`` ahead (bounding the bytes held)."""

        def timed(source: str, kind: str) -> tuple[bytes | NSFWError, float]:
            t0 = time.perf_counter()
            try:
                data: bytes | NSFWError = self.reader.read(source, kind)
            except NSFWError as exc:
                data = exc
            return data, time.perf_counter() - t0

        if all(k == FILE for k in kinds) or self.config.io_threads <= 1:
            for source, kind in zip(sources, kinds, strict=True):
                yield timed(source, kind)
            return
        if self._io is None:
            self._io = ThreadPoolExecutor(self.config.io_threads, thread_name_prefix="nsfw-scan-read")
        window: collections.deque[Future[tuple[bytes | NSFWError, float]]] = collections.deque()
        pending = iter(zip(sources, kinds, strict=True))
        for source, kind in pending:
            window.append(self._io.submit(timed, source, kind))
            if len(window) >= self.config.io_threads:
                break
        while window:
            yield window.popleft().result()
            nxt = next(pending, None)
            if nxt is not None:
                window.append(self._io.submit(timed, *nxt))

    # ------------------------------------------------------------ one batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = batch.column("source").to_pylist()
        kinds = batch.column("kind").to_pylist()
        labels = batch.column("label").to_pylist() if "label" in batch.column_names else [None] * len(sources)
        rows: list[dict[str, Any]] = []
        inputs: list[np.ndarray] = []  # each (k, S, S, 3)
        owners: list[int] = []  # the row each input block belongs to
        for i, (data, read_s) in enumerate(self._reads(sources, kinds)):
            row: dict[str, Any] = {"source": sources[i], "kind": kinds[i], "label": labels[i], "model_rows": 0,
                                   "read_ms": read_s * 1000.0, "worker": self.name, "model_loads": type(self).loads}
            rows.append(row)
            if isinstance(data, NSFWError):
                self._failed(row, data)
                continue
            row["size"] = len(data)
            row["sha256"] = hashlib.sha256(data).hexdigest()
            if (sources[i], row["sha256"]) in self.done:
                row["status"] = SKIPPED
                continue
            t0 = time.perf_counter()
            try:
                x = self.decoder.prepare(self.model, data)
                if isinstance(x, FrameInputs):
                    block = x.inputs
                    row["frames"] = [{"index": r.index, "time_ms": r.time_ms} for r in x.refs]
                else:
                    block = x[np.newaxis]
                    row["pdq"] = query_hash(x)
                    if self.config.review_hashes:
                        row["review_hashes"] = join_hex(stored_hashes(x)) or None
            except NSFWError as exc:
                self._failed(row, exc)
                continue
            except Exception as exc:  # a decoder bug on an odd file: one row, not the scan
                log.exception("unexpected error decoding %s", sources[i])
                self._failed(row, NSFWError(f"unexpected {type(exc).__name__} while decoding"))
                continue
            finally:
                row["decode_ms"] = (time.perf_counter() - t0) * 1000.0
            row["status"] = SCORED
            row["model_rows"] = len(block)
            inputs.append(block)
            owners.append(i)
        if inputs:
            self._predict(rows, inputs, owners)
        return pa.Table.from_pylist(rows, schema=WORKER_SCHEMA)

    def _predict(self, rows: list[dict[str, Any]], inputs: list[np.ndarray], owners: list[int]) -> None:
        batch = np.concatenate(inputs)
        features: np.ndarray | None = None
        if self.config.embeddings:
            # --embeddings: the features the model's head reads, from the same forward pass (issue 26)
            probs, features = self.model.predict_with_embeddings(batch)
        else:
            probs = self.model.predict(batch)
        start = 0
        for i, block in zip(owners, inputs, strict=True):
            part = probs[start:start + len(block)]
            row = rows[i]
            if "frames" in row:
                for frame, scores in zip(row["frames"], part, strict=True):
                    frame["scores"] = [float(s) for s in scores]
            else:
                row["scores"] = [float(s) for s in part[0]]
                if features is not None:
                    row["embedding"] = [float(v) for v in features[start]]
            start += len(block)

    @staticmethod
    def _failed(row: dict[str, Any], exc: NSFWError) -> None:
        row["status"] = FAILED
        row["error_code"] = exc.code
        row["error_message"] = exc.message[:500]

    def close(self) -> None:
        self.decoder.close()
        self.reader.close()
        if self._io is not None:
            self._io.shutdown(wait=False)
