"""The per-process state shared by the HTTP API and the Streamlit pages.

One :class:`Service` per process holds the settings, the model (through the
cached :func:`~nsfw_core.model.get_model`), the thresholds store, the
micro-batcher and the worker threads that fetch, decode and preprocess.
:func:`get_service` returns it; the pages use ``get_service().model`` and
``get_service().thresholds`` so they share the API's copy.

Lifecycle (driven by the API's lifespan): :meth:`Service.start` loads the model
in a background thread and then starts the batcher; until then ``ready`` is
False and ``reason`` says why (still loading, or the load error).  Outside the
API (``streamlit run``) the ``model`` property loads the model on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, NamedTuple

import numpy as np

from .batcher import MicroBatcher
from .errors import NotReady, NSFWError, Overloaded
from .decode import Plan
from .fetch import fetch
from .model import Model, load_for, scores_dict
from .pipeline import plan_for, prepare_inline, prepare_isolated, sandbox
from .review import ReviewQueue, should_queue
from .settings import load_settings
from .verdict import ThresholdStore

log = logging.getLogger(__name__)

UPLOAD_SOURCE = "upload"  # the review item's source for images sent in the request body
ISOLATED_QUEUE = 4  # expensive images admitted per decode process (decoding or waiting); 503 beyond


class _Isolate(NamedTuple):
    """An expensive image, read and checked by a worker, to be decoded in the isolated lane."""

    plan: Plan
    data: bytes


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


class Service:
    """Settings, model, thresholds, batcher and worker threads of one process."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.thresholds = ThresholdStore.from_settings(settings)
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="nsfw-worker")
        # Threads that wait for the isolated decode lane, one per decode process: an expensive image
        # waits there, never in a worker thread that cheap images need.
        self.isolated = ThreadPoolExecutor(settings.decode_processes, thread_name_prefix="nsfw-isolated")
        self.batcher: MicroBatcher | None = None
        self.reason = "the model is loading"
        self._model: Model | None = None
        self._loader: asyncio.Task | None = None
        self._review: ReviewQueue | None = None
        self._review_lock = threading.Lock()
        self.in_flight = 0  # images admitted by the API and not answered yet
        self.preparing = 0  # images being fetched or decoded (they will reach the batcher soon)
        self.rejected = 0  # requests refused by admit() or by the isolated lane's queue
        self.isolated_pending = 0  # expensive images decoding or waiting in the isolated lane

    # ------------------------------------------------------------ lifecycle

    @property
    def model(self) -> Model:
        """The loaded model; loads it now (blocking) if nothing has yet. Raises ModelError."""
        if self._model is None:
            self._model = load_for(self.settings)
        return self._model

    @property
    def ready(self) -> bool:
        """True once the model is loaded and warmed up and the batcher runs."""
        return self.batcher is not None and self.batcher.running

    async def start(self) -> None:
        """Begin loading the model in the background; returns at once."""
        self._loader = asyncio.get_running_loop().create_task(self._load(), name="nsfw-model-load")

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(lambda: self.model)
        except NSFWError as exc:
            self.reason = f"model failed to load: {exc.message}"
            log.error("%s; /health answers 503 and /predict 503 not_ready", self.reason)
            return
        except Exception as exc:  # noqa: BLE001 - TensorFlow may raise anything; keep serving /health
            self.reason = f"model failed to load: {exc!r}"
            log.exception("model failed to load; /health answers 503")
            return
        s = self.settings
        wait_s = s.batch_wait_ms / 1000.0 if model.batches else 0.0  # litert: a lone image uses all threads
        self.batcher = MicroBatcher(model, max_batch=s.max_batch, max_wait_s=wait_s,
                                    queue_size=s.queue_size, expecting=lambda: self.preparing)
        self.batcher.start()
        await asyncio.to_thread(sandbox(s).warm)
        self.reason = ""
        log.info("model %s %s ready in %.1f s", model.name, model.version, time.perf_counter() - started)

    async def stop(self) -> None:
        """Finish queued inferences, then release the threads (graceful shutdown)."""
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        if self.batcher is not None:
            await self.batcher.stop()
        self.reason = "the service is shutting down"
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.isolated.shutdown(wait=False, cancel_futures=True)
        sandbox(self.settings).close()
        if self._review is not None:
            self._review.close()

    # ------------------------------------------------------------ classification

    async def classify_url(self, url: str) -> dict[str, Any]:
        """Fetch ``url`` safely, then classify it; see :meth:`classify_bytes` for the result."""
        batcher = self.require_ready()
        started = time.perf_counter()
        fetch_s, x, sha, decode_s = await self._preparing(self._fetch_and_prepare, url)
        result = await self._finish(batcher, x, sha, fetch_s, decode_s, started)
        return await self._maybe_queue(result, url, None)

    async def classify_bytes(self, data: bytes) -> dict[str, Any]:
        """Classify image bytes: scores, verdict, thresholds, model, timings (ms) and sha256."""
        batcher = self.require_ready()
        started = time.perf_counter()
        x, sha, decode_s = await self._preparing(self._prepare, data)
        result = await self._finish(batcher, x, sha, 0.0, decode_s, started)
        return await self._maybe_queue(result, UPLOAD_SOURCE, data)

    @property
    def review_queue(self) -> ReviewQueue:
        """The review queue (SQLite under data_dir, or NSFW_DATABASE_URL), opened on first use."""
        with self._review_lock:
            if self._review is None:
                self._review = ReviewQueue.from_settings(self.settings)
            return self._review

    async def _maybe_queue(self, result: dict[str, Any], source: str, data: bytes | None) -> dict[str, Any]:
        """Queue the image for human review when its verdict says so; adds ``review_id``.

        A queue failure (database down) does not fail the prediction: the
        result carries ``review_error`` instead and the failure is logged.
        """
        if not should_queue(result["verdict"], self.settings):
            return result

        def enqueue() -> int:
            queue = self.review_queue
            queue.purge_if_due()
            return queue.enqueue(result["sha256"], source, result["scores"], result["model"]["name"],
                                 result["verdict"], image_bytes=data)

        try:
            result["review_id"] = await asyncio.get_running_loop().run_in_executor(self.executor, enqueue)
        except Exception as exc:  # noqa: BLE001 - any database error; the verdict still stands
            log.error("could not queue %s for review: %r", result["sha256"], exc)
            result["review_id"] = None
            result["review_error"] = "the review queue is unavailable; see the server log"
        return result

    @contextlib.contextmanager
    def admit(self, images: int) -> Iterator[None]:
        """Count ``images`` as in flight (fetch, decode, inference) or refuse with Overloaded.

        Called on the event loop only, so a plain counter is enough.  The
        micro-batcher's queue bounds inference; this bounds everything before
        it (slow upstreams, uploads held in memory).
        """
        limit = self.settings.max_in_flight
        images = min(images, limit)  # a batch larger than the limit still runs, alone
        if self.in_flight + images > limit:
            self.rejected += 1
            raise Overloaded(f"too many images in flight ({self.in_flight} of {limit}); retry later")
        self.in_flight += images
        try:
            yield
        finally:
            self.in_flight -= images

    def require_ready(self) -> MicroBatcher:
        if self.batcher is None or not self.batcher.running:
            raise NotReady(f"the service is not ready: {self.reason}")
        return self.batcher

    async def _preparing(self, fn: Any, *args: Any) -> Any:
        """Run a fetch/decode step in a worker, counted in ``preparing`` for the batcher.

        A cheap image is decoded in the worker; an expensive one (the step hands back
        an :class:`_Isolate`) then waits for the isolated lane on a
        thread of its own, leaving the workers to cheap images.
        """
        self.preparing += 1
        try:
            loop = asyncio.get_running_loop()
            *head, x, sha, decode_s = await loop.run_in_executor(self.executor, fn, *args)
            if isinstance(x, _Isolate):
                x, isolated_s = await self._isolated_decode(x)
                decode_s += isolated_s
            return (*head, x, sha, decode_s)
        finally:
            self.preparing -= 1

    async def _isolated_decode(self, pending: _Isolate) -> tuple[np.ndarray, float]:
        """Decode in the isolated lane; 503 overloaded when its queue would be longer than
        ISOLATED_QUEUE per decode process (so each answer comes within a few deadlines)."""
        limit = ISOLATED_QUEUE * self.settings.decode_processes
        if self.isolated_pending >= limit:
            self.rejected += 1
            raise Overloaded(f"too many expensive images being decoded ({self.isolated_pending} of {limit}); "
                             "retry later")
        self.isolated_pending += 1
        try:
            t0 = time.perf_counter()
            x = await asyncio.get_running_loop().run_in_executor(
                self.isolated, prepare_isolated, self.model, pending.data, pending.plan, self.settings)
            return x, time.perf_counter() - t0
        finally:
            self.isolated_pending -= 1

    def _prepare(self, data: bytes) -> tuple[np.ndarray | _Isolate, str, float]:
        """Worker thread: read the headers (limits), decode a cheap image and preprocess it; hash the bytes."""
        t0 = time.perf_counter()
        plan = plan_for(self.model, data, self.settings)
        sha = hashlib.sha256(data).hexdigest()
        if not plan.cost.inline:
            return _Isolate(plan, data), sha, time.perf_counter() - t0
        x = prepare_inline(self.model, data, plan, self.settings)
        return x, sha, time.perf_counter() - t0

    def _fetch_and_prepare(self, url: str) -> tuple[float, np.ndarray | _Isolate, str, float]:
        """Worker thread: fetch (SSRF-safe, capped) then prepare."""
        t0 = time.perf_counter()
        content = fetch(url, self.settings).content
        return (time.perf_counter() - t0, *self._prepare(content))

    async def _finish(self, batcher: MicroBatcher, x: np.ndarray, sha: str,
                      fetch_s: float, decode_s: float, started: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        row = await batcher.predict(x)
        inference_s = time.perf_counter() - t0
        scores = scores_dict(row)
        thresholds = self.thresholds.current().thresholds
        return {
            "scores": scores,
            "verdict": thresholds.decide(scores),
            "adult_score": thresholds.adult_score(scores),
            "safe_score": thresholds.safe_score(scores),
            "thresholds": thresholds.to_dict(),
            "model": {"name": self.model.name, "version": self.model.version},
            "timings": {"fetch_ms": _ms(fetch_s), "decode_ms": _ms(decode_s),
                        "inference_ms": _ms(inference_s), "total_ms": _ms(time.perf_counter() - started)},
            "sha256": sha,
        }


_instance: Service | None = None
_instance_lock = threading.Lock()


def get_service(settings: Any = None) -> Service:
    """The process-wide Service, created on first use (from ``settings`` or the environment)."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Service(settings if settings is not None else load_settings())
        return _instance


def install(service: Service | None) -> Service | None:
    """Make ``service`` the process-wide one (the API's lifespan); returns the one it replaces."""
    global _instance
    with _instance_lock:
        previous, _instance = _instance, service
        return previous
