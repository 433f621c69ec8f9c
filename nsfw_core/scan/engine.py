"""Ray: connecting (embedded on this machine, or a cluster) and the streaming pipeline the driver consumes.

The one module of the project that imports Ray (a test checks that nothing outside ``nsfw_core/scan``
does, and that the server never loads it).

Pipeline: the listing (source, kind, label; no bytes) becomes a Ray dataset of small blocks
(``from_arrow``), then ``map_batches`` on a pool of actors (:class:`ActorPoolStrategy`), each one a
:class:`~nsfw_core.scan.worker.ScanWorker` holding one model, loaded once in its constructor.  The
driver iterates the output as it streams (``iter_batches``): rows are judged and written while the scan
runs, and the memory the pipeline holds is bounded by Ray Data's backpressure, not by the catalogue.

Why not ``read_binary_files`` or ``read_images``: ``read_images`` decodes with Pillow outside the
service's limits (a decompression bomb would take the worker down, which is what this scan must not
allow), and ``read_binary_files`` reads whole files with no byte cap, and cannot fetch through the
SSRF-safe fetcher.  The workers read instead, through :class:`~nsfw_core.scan.sources.Reader`, under
``NSFW_MAX_BYTES``, from local paths, URLs and the same pyarrow filesystems (s3://, gs://) Ray Data uses.

Fault tolerance is Ray Data's: an actor that dies (killed, out of memory) is restarted and its batch
retried on it (Ray Data's defaults for actor pools, ``max_restarts=-1`` and ``max_task_retries=-1``); a
block whose task raises is given up on after ``max_failed_blocks`` (its images are not written and the
next run scans them again) rather than stopping the scan.  Hostile images do neither: they are error rows
(:mod:`nsfw_core.scan.worker`).
"""

from __future__ import annotations

import logging
from typing import Any, Generator, Sequence

import numpy as np
import pyarrow as pa
import ray
import ray.data

from nsfw_core.scan.worker import ScanWorker, WorkerConfig

log = logging.getLogger(__name__)

EMBEDDED_OBJECT_STORE = 256 * 1024 * 1024  # the listing and the answers are small: no need for Ray's 30 % of RAM


def connect(address: str | None = None, *, num_cpus: int | None = None, object_store_memory: int | None = None,
            verbose: bool = False) -> str:
    """Start an embedded Ray on this machine (no address) or join a cluster; returns what it joined."""
    if ray.is_initialized():
        return "already connected"
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    quiet: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.WARNING,
                             "log_to_driver": verbose}
    if address:
        if num_cpus is not None or object_store_memory is not None:
            raise ValueError("--num-cpus and --object-store-memory are for an embedded Ray; a cluster has its own "
                             "(ray start --num-cpus ... --object-store-memory ...)")
        ray.init(address=address, **quiet)
        return address
    # address="local": always a new embedded instance, never a cluster that happens to run on this machine
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             object_store_memory=object_store_memory or EMBEDDED_OBJECT_STORE, **quiet)
    return "embedded"


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def cluster_cpus() -> int:
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return int(resources.get("CPU", 1))


class RayScanWorker(ScanWorker):
    """:class:`ScanWorker` whose set of done images arrives as an object reference (one copy per node)."""

    def __init__(self, config: WorkerConfig, done: list[Any]) -> None:
        # [ObjectRef]: a reference inside a list is passed as is (not resolved by Ray), and fetched here
        super().__init__(config, ray.get(done[0]))


def answers(listing: Sequence[pa.Table], config: WorkerConfig, done: np.ndarray, *, actors: int,
            batch_size: int, cpus_per_actor: float = 1.0, memory_per_actor: int | None = None,
            max_failed_blocks: int = 10) -> Generator[pa.Table, None, None]:
    """The workers' answers (:data:`~nsfw_core.scan.schema.WORKER_SCHEMA` tables), as they come."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI shows its own bar
    context.max_errored_blocks = max_failed_blocks
    context.verbose_stats_logs = False
    context.print_on_execution_start = False
    done_ref = ray.put(np.ascontiguousarray(done, dtype=np.uint64))  # held here for the whole run
    dataset = ray.data.from_arrow(list(listing))
    scored = dataset.map_batches(
        RayScanWorker,
        fn_constructor_kwargs={"config": config, "done": [done_ref]},
        batch_size=batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        memory=memory_per_actor,
    )
    yield from scored.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    del done_ref

