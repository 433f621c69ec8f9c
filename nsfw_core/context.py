"""The process context: everything one process holds, created once, shared by every front end.

One :class:`Context` per process holds the settings, the models, the thresholds in force,
the review queue and its database pool, the score cache, the fetcher's keep-alive
connections, the decoder (pixel budget and isolated lane), the worker threads, the
micro-batcher and the admission counters.  Nothing else in the process builds a second one
of any of these.

* The server (``app.py``) creates it in the API's lifespan (:func:`nsfw_core.api.make_lifespan`)
  and :func:`install`\\ s it; the Streamlit pages, running in the same process, reach it
  through :func:`current` (``nsfw_ui.state.context``), so a threshold saved on a page is the
  one the API uses, and both queue into one review database through one pool.
* Outside the server (``streamlit run``, a notebook) :func:`current` creates it on first use
  from the environment.
* The CLI builds its own (``Context(load_settings())``) and closes it when done.

Lifecycle in the server: :meth:`Context.start` loads the model in a background thread and
then starts the batcher; until then ``ready`` is False and ``reason`` says why (still
loading, or the load error).  :meth:`Context.stop` drains and releases everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .admission import Admission
from .batcher import MicroBatcher
from .errors import NotReady, NSFWError
from .fetch import ConnectionPool, fetch
from .known import KnownImages
from .metrics import Metrics
from .model import Model, load
from .pipeline import Decoder, load_bytes
from .access import Access
from .platform import storage_warnings
from .review import ReviewQueue
from .review.store import open_pool
from .settings import Settings, load_settings
from .thresholds import ThresholdHistory

if TYPE_CHECKING:
    from .scorecache import ScoreCache
    from .signin_sessions import SigninSessions

log = logging.getLogger(__name__)


class Context:
    """Settings, models, thresholds, review queue, pools, budgets and threads of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serving = settings.serving_limits
        self.fetch_policy = settings.fetch_policy
        self.review_config = settings.review_config
        self.model_config = settings.model_config
        self.access = Access(settings.access_config)
        # One connection pool on the one database (NSFW_DATABASE_URL), shared by the thresholds history
        # (read from memory per request) and the review queue. Opening it connects to nothing yet.
        self.database = open_pool(self.review_config.database_url or None, self.review_config.data_dir)
        self.thresholds = ThresholdHistory.from_settings(settings, pool=self.database)
        self.decoder = Decoder(settings.decode_limits)
        self.connections = ConnectionPool()
        self.admission = Admission(self.serving.max_in_flight, self.serving.max_body_bytes_in_flight)
        self.executor = ThreadPoolExecutor(self.serving.workers, thread_name_prefix="nsfw-worker")
        # Threads that wait for the isolated decode lane, one per decode process: an expensive image
        # waits there, never in a worker thread that cheap images need.
        self.isolated = ThreadPoolExecutor(settings.decode_processes, thread_name_prefix="nsfw-isolated")
        self.batcher: MicroBatcher | None = None
        self.reason = "the model is loading"
        self.preparing = 0  # images being fetched or decoded (they will reach the batcher soon)
        self.isolated_pending = 0  # expensive images decoding or waiting in the isolated lane
        self._loader: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._review: ReviewQueue | None = None
        self._score_cache: ScoreCache | None = None
        self._known: KnownImages | None = None
        self._signin_sessions: SigninSessions | None = None
        self._models: dict[str, Model] = {}
        self.metrics = Metrics(self, app_version=_app_version())  # this process's registry: GET /metrics

    # ------------------------------------------------------------ resources

    def model(self, name: str | None = None) -> Model:
        """The model ``name`` (default NSFW_MODEL), loaded on first use. Raises ModelError.

        Loaded models are immutable and cached process-wide by :mod:`nsfw_core.model`, so
        contexts that tests create side by side share their weights.
        """
        key = name or self.model_config.name
        model = self._models.get(key)
        if model is None:  # a dict lookup per call: the request path asks for the model several times
            model = self._models[key] = load(self.model_config, name)
        return model

    def loaded_model(self) -> Model | None:
        """The default model if it is loaded, without loading it (/metrics' build info)."""
        return self._models.get(self.model_config.name)

    @property
    def review_queue(self) -> ReviewQueue:
        """The review queue (SQLite under data_dir, or NSFW_DATABASE_URL), opened and migrated on first use."""
        with self._lock:
            if self._review is None:
                self._review = ReviewQueue.from_config(self.review_config, pool=self.database)
            return self._review

    @property
    def known(self) -> KnownImages:
        """Remembered decisions and hash lists (:mod:`nsfw_core.known`), read from the one database on first use
        and refreshed in the background; every request looks its image up here."""
        known = self._known
        if known is None:
            with self._lock:
                if self._known is None:
                    self._known = KnownImages(self.database, distance=self.settings.match_distance)
                known = self._known
        return known

    @property
    def signin_sessions(self) -> SigninSessions:
        """The browser app's sign-in sessions (:mod:`nsfw_core.signin_sessions`), in the one database."""
        from .signin_sessions import SigninSessions  # only the browser app's sign-in needs it

        with self._lock:
            if self._signin_sessions is None:
                self._signin_sessions = SigninSessions(self.database, self.settings.session_config)
            return self._signin_sessions

    @property
    def score_cache(self) -> ScoreCache:
        """The on-disk cache of scores for labelled sets (``<data_dir>/score-cache.sqlite``)."""
        from .scorecache import ScoreCache  # scorecache -> pipeline -> model; only the pages need it

        with self._lock:
            if self._score_cache is None:
                self._score_cache = ScoreCache.in_folder(self.settings.data_dir)
            return self._score_cache

    def queues(self, verdict: str) -> bool:
        """True when an image with this verdict goes to human review (``NSFW_REVIEW_VERDICTS``)."""
        return verdict in self.review_config.verdicts

    def fetch(self, url: str) -> bytes:
        """The bytes behind ``url``, through the SSRF-safe fetcher and this process's keep-alive pool."""
        return fetch(url, self.fetch_policy, pool=self.connections).content

    def load_bytes(self, source: str) -> bytes:
        """A URL's bytes (:meth:`fetch`) or a local file's (the CLI and labelled sets), under the byte cap."""
        return load_bytes(source, self.fetch_policy, self.connections)

    # ------------------------------------------------------------ lifecycle (the server)

    @property
    def ready(self) -> bool:
        """True once the model is loaded and warmed up and the batcher runs."""
        return self.batcher is not None and self.batcher.running

    def warnings(self) -> list[str]:
        """What an operator should know about this configuration (/health ``warnings``, the start-up log)."""
        known = self._known.warning if self._known is not None else None  # its database unreachable
        return (storage_warnings(os.environ, self.settings.database_url, self.settings.ephemeral_disk)
                + self.access.warnings() + ([known] if known else []))

    def require_ready(self) -> MicroBatcher:
        if self.batcher is None or not self.batcher.running:
            raise NotReady(f"the service is not ready: {self.reason}")
        return self.batcher

    async def start(self) -> None:
        """Begin loading the model in the background; returns at once."""
        self._loader = asyncio.get_running_loop().create_task(self._load(), name="nsfw-model-load")

    async def _load(self) -> None:
        started = time.perf_counter()
        # The thresholds in force are read while the model loads (never raises: a database that is down
        # leaves the defaults, with a warning, until it is back).
        thresholds = asyncio.get_running_loop().run_in_executor(None, self.thresholds.refresh)
        # so are the known images (remembered decisions, hash lists: seconds at a million; never raises)
        known = asyncio.get_running_loop().run_in_executor(None, self.known.refresh)
        try:
            model = await asyncio.to_thread(self.model)
        except NSFWError as exc:
            self.reason = f"model failed to load: {exc.message}"
            log.error("%s; /health answers 503 and /predict 503 not_ready", self.reason)
            return
        except Exception as exc:  # TensorFlow may raise anything; keep serving /health
            self.reason = f"model failed to load: {exc!r}"
            log.exception("model failed to load; /health answers 503")
            return
        for warning in self.warnings():
            log.warning("%s", warning)
        s = self.serving
        wait_s = s.batch_wait_ms / 1000.0 if model.batches else 0.0  # litert: a lone image uses all threads
        self.batcher = MicroBatcher(model, max_batch=s.max_batch, max_wait_s=wait_s,
                                    queue_size=s.queue_size, expecting=lambda: self.preparing,
                                    on_batch=self.metrics.observe_batch)
        self.batcher.start()
        await asyncio.to_thread(self.decoder.sandbox.warm)
        await thresholds
        await known
        self.reason = ""
        log.info("model %s %s ready in %.1f s", model.name, model.version, time.perf_counter() - started)

    async def stop(self) -> None:
        """Finish queued inferences, then release the threads, processes and connections."""
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        if self.batcher is not None:
            await self.batcher.stop()
        self.reason = "the service is shutting down"
        self.close()

    def close(self) -> None:
        """Release threads, decode processes, keep-alive connections and database pools."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.isolated.shutdown(wait=False, cancel_futures=True)
        self.decoder.close()
        self.connections.clear()
        with self._lock:
            review, self._review = self._review, None
            cache, self._score_cache = self._score_cache, None
        if review is not None:
            review.close()
        if self._known is not None:
            self._known.close()
        self.metrics.close()
        self.thresholds.close()
        self.database.close()
        if cache is not None and hasattr(cache, "close"):
            cache.close()


def _app_version() -> str:
    from . import __version__

    return __version__


_current: Context | None = None
_current_lock = threading.Lock()


def current(settings: Settings | None = None) -> Context:
    """The process's context: the one the server installed, else one created now (from
    ``settings`` or the environment) and kept for the rest of the process."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Context(settings if settings is not None else load_settings())
        return _current


def install(context: Context | None) -> Context | None:
    """Make ``context`` the process's one (the API's lifespan); returns the one it replaces."""
    global _current
    with _current_lock:
        previous, _current = _current, context
        return previous
