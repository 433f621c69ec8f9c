"""An asyncio micro-batcher: many concurrent requests, few forward passes.

Each request enqueues one preprocessed input with :meth:`MicroBatcher.predict`
and awaits its row of probabilities (:meth:`MicroBatcher.infer`: with the image's embedding from the
same forward pass, when the model gives embeddings).  One background task takes the first
waiting input, gathers more for at most ``max_wait_s`` (or until it holds
``max_batch``), stacks them and runs ``model.predict`` in a single dedicated
thread, so forward passes never overlap and never block the event loop.

The queue is bounded: when ``queue_size`` inputs are already waiting,
:meth:`predict` raises :class:`Overloaded` at once (the API answers 503 with
``Retry-After``).  :meth:`stop` refuses new work, lets everything already
queued finish, then ends the task (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np

from nsfw_core.base import requestid
from nsfw_core.base.errors import ModelError, NotReady, NSFWError, Overloaded

log = logging.getLogger(__name__)


class BatchModel(Protocol):
    input_size: int

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class Inference(NamedTuple):
    """One input's forward pass: its (5,) probabilities and its (D,) embedding (None: the model gives none)."""

    probs: np.ndarray
    embedding: np.ndarray | None


@dataclasses.dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future[Inference]
    request_id: str | None = None  # for the log, should the forward pass fail


_STOP: Any = object()  # queued by stop(): everything before it is served first


@dataclasses.dataclass
class BatchStats:
    """Counters since start, for /health."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    rejected: int = 0  # predict() calls refused because the queue was full
    busy_seconds: float = 0.0  # time spent in forward passes

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_size": round(self.items / self.batches, 3) if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "rejected": self.rejected,
            "busy_seconds": round(self.busy_seconds, 3),
        }


class MicroBatcher:
    """Collects single inputs into batches for one model; see the module docstring."""

    def __init__(self, model: BatchModel, *, max_batch: int, max_wait_s: float, queue_size: int,
                 expecting: Callable[[], int] = lambda: 1, on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_s >= 0")
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        # How many inputs may still arrive soon (being fetched or decoded). When
        # none may, waiting max_wait_s for company would only add latency.
        self.expecting = expecting
        self.on_batch = on_batch  # told each forward pass's size (the metrics)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting = 0  # inputs queued and not yet taken into a batch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nsfw-inference")
        self._task: asyncio.Task[None] | None = None
        self._accepting = False

    @property
    def running(self) -> bool:
        """True while the batcher accepts work."""
        return self._accepting

    @property
    def waiting(self) -> int:
        """Inputs queued and not yet in a forward pass."""
        return self._waiting

    def start(self) -> None:
        """Start the background task (call from the event loop that will submit work)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="nsfw-batcher")
            self._accepting = True

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, end the task and the inference thread."""
        self._accepting = False
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def predict(self, x: np.ndarray) -> np.ndarray:
        """One (S, S, 3) float32 input -> its (5,) probabilities, computed in some batch."""
        return (await self.infer(x)).probs

    async def infer(self, x: np.ndarray) -> Inference:
        """One (S, S, 3) float32 input -> its probabilities and embedding, computed in some batch."""
        if not self._accepting:
            raise NotReady("the inference queue is not running")
        if self._waiting >= self.queue_size:
            self.stats.rejected += 1
            raise Overloaded(f"{self._waiting} images are waiting for inference; retry later",
                             queue_size=self.queue_size)
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(x, future, requestid.current()))
        self._waiting += 1
        result: Inference = await future
        return result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._queue.empty() and self.expecting() == 0:
                    break
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._waiting -= len(batch)
            await self._run_batch([i for i in batch if not i.future.done()])

    async def _next(self, timeout: float) -> Any:
        """The next queued entry, or None when none arrives within ``timeout`` seconds."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _run_batch(self, batch: list[_Item]) -> None:
        """One forward pass in the inference thread; resolve every still-waiting future."""
        if not batch:  # every caller gave up (cancelled): skip the pass
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            probs, features = await loop.run_in_executor(self._executor, self._forward, [i.x for i in batch])
        except Exception as exc:
            error = exc if isinstance(exc, NSFWError) else ModelError(f"inference failed: {exc}")
            if not isinstance(exc, NSFWError):
                log.error("forward pass of %d images failed (requests %s)", len(batch),
                          ", ".join(sorted({i.request_id or "-" for i in batch})), exc_info=exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.busy_seconds += time.perf_counter() - started
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for k, item in enumerate(batch[:len(probs)]):
            if not item.future.done():
                item.future.set_result(Inference(probs[k], None if features is None else features[k]))

    def _forward(self, xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Runs in the inference thread: stack and predict (with the embeddings when the model gives them)."""
        batch = np.stack(xs)
        # a model that gives embeddings (nsfw_core.inference.model.Model) gives them from the same pass
        both: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = getattr(
            self.model, "predict_with_embeddings", None)
        if both is not None:
            return both(batch)
        return self.model.predict(batch), None
