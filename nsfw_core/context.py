"""The process context: the parts one process holds, built once, each handed only what it needs.

:class:`Context` is the composition root.  It builds each part from the narrow piece of the
settings that part takes, and wires them together:

* ``database``: the one connection pool (NSFW_DATABASE_URL, or SQLite under the data folder),
  shared by the thresholds history, the known images, the review queue and the webhooks' outbox;
* ``thresholds`` (:class:`~nsfw_core.state.thresholds.ThresholdHistory`), ``known``
  (:class:`~nsfw_core.state.known.KnownImages`), ``adapters`` (:class:`~nsfw_core.state.adapters.Adapters`,
  the adapter in force per model) and ``examples`` (:class:`~nsfw_core.state.examples.ExampleSets`): copies
  in memory, refreshed in the background;
* ``models`` (:class:`~nsfw_core.inference.registry.ModelRegistry`): every model of the process,
  loaded once whoever asks (pages, API v1, CLI), within NSFW_MODEL_MEMORY_MB;
* ``intake`` (:class:`~nsfw_core.intake.Intake`): fetching and decoding for the API, with the
  worker threads, the isolated decode lane and the admission counters;
* ``classifier`` (:class:`~nsfw_core.classify.Classifier`): the use case, built from the parts above;
* ``metrics``, ``access``, the request budgets (:mod:`nsfw_core.ratelimit`: ``limiter``, NSFW_RATE_LIMIT;
  ``wrong_keys``, NSFW_WRONG_KEY_LIMIT; ``share``, NSFW_KEY_SHARE of the capacity measured once the default
  model is loaded), their buckets and the failed sign-ins in the database when NSFW_DATABASE_URL is set
  (:mod:`nsfw_core.state.limits`: replicas share them), and the webhooks' delivery task;
* ``jobs`` (:class:`~nsfw_core.state.jobs.JobStore`) and, in the server, ``job_runner``
  (:class:`~nsfw_core.jobs.JobRunner`): long videos judged in the background (NSFW_JOB_WORKERS);
* ``audit`` (NSFW_AUDIT_RATE, NSFW_DOUBLE_REVIEW_RATE) and ``traffic`` (the API's verdicts and scores per day,
  flushed to the database by a background task), which :meth:`Context.evaluation` reads.

The server (``app.py``) creates it in the API's lifespan (:func:`nsfw_core.http.app.make_lifespan`)
and :func:`install`\\ s it; the Streamlit pages, running in the same process, reach it through
:func:`current` (``nsfw_ui.state.context``), so a threshold saved on a page is the one the API uses.
Outside the server (``streamlit run``, a notebook) :func:`current` creates it on first use; the CLI
builds its own (``Context(load_settings())``) and closes it when done.

Lifecycle in the server: :meth:`Context.start` loads the default model in the background and then
starts its batcher; until then ``ready`` is False and ``reason`` says why (still loading, or the
load error).  :meth:`Context.stop` drains and releases everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from nsfw_core import ratelimit
from nsfw_core.access import Access, AttemptLimiter
from nsfw_core.admission import Admission
from nsfw_core.base.cpus import available_cpus
from nsfw_core.base.platform import storage_warnings
from nsfw_core.base.settings import Settings, load_settings
from nsfw_core.classify import Classification, Classifier, ReviewIntake
from nsfw_core.images.fetch import ConnectionPool, fetch
from nsfw_core.inference.pipeline import Decoder, load_bytes
from nsfw_core.inference.registry import Batching, ModelRegistry
from nsfw_core.intake import Intake
from nsfw_core.metrics import Metrics, ServingState
from nsfw_core.ratelimit import MemoryBuckets, RateLimiter, ShareLimiter
from nsfw_core.state.adapters import Adapters
from nsfw_core.state.db import open_pool
from nsfw_core.state.examples import ExampleSets
from nsfw_core.state.jobs import Job, JobStore
from nsfw_core.state.known import KnownImages
from nsfw_core.state.limits import DatabaseBuckets, DatabaseFailures
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review.audit import AuditPolicy
from nsfw_core.state.thresholds import ThresholdHistory
from nsfw_core.state.traffic import FLUSH_INTERVAL, TrafficCounter

if TYPE_CHECKING:
    from nsfw_core.calibration.scorecache import ScoreCache
    from nsfw_core.inference.model import Model
    from nsfw_core.jobs import JobRunner
    from nsfw_core.state.sessions import SigninSessions
    from nsfw_core.state.webhooks import Deliverer

log = logging.getLogger(__name__)

MB = 1024 * 1024


class Context:
    """The parts of one process; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        serving = self.serving = settings.serving_limits
        self.fetch_policy = settings.fetch_policy
        self.review_config = settings.review_config
        self.model_config = settings.model_config
        shared = bool(settings.database_url.strip())  # replicas share limits through NSFW_DATABASE_URL
        self._lock = threading.Lock()
        self._review: ReviewQueue | None = None
        self._score_cache: ScoreCache | None = None
        self._signin_sessions: SigninSessions | None = None
        # One connection pool on the one database; opening it connects to nothing yet.
        self.database = open_pool(self.review_config.database_url or None, self.review_config.data_dir)
        self.access = Access(settings.access_config, limiter=AttemptLimiter(
            clock=time.time, store=DatabaseFailures(self.database, "signin")) if shared else None)
        self.thresholds = ThresholdHistory.from_settings(settings, pool=self.database)
        self.known = KnownImages(self.database, distance=settings.match_distance)
        self.adapters = Adapters(self.database)
        self.examples = ExampleSets(self.database)
        self.connections = ConnectionPool()
        self.decoder = Decoder(settings.decode_limits)
        # A client's share needs clients told apart: by API key. Without keys a client is its address, and behind
        # a proxy every client has the proxy's: one share for everyone would make one big image refuse them all.
        share = serving.key_share if serving.api_keys else 1.0
        self.admission = Admission(serving.max_in_flight, serving.max_body_bytes_in_flight, share=share)
        self.executor = ThreadPoolExecutor(serving.workers, thread_name_prefix="nsfw-worker")
        # Threads that wait for the isolated decode lane, one per decode process: an expensive image
        # waits there, never in a worker thread that cheap images need.
        self.isolated = ThreadPoolExecutor(settings.decode_processes, thread_name_prefix="nsfw-isolated")
        self.intake = Intake(self.decoder, self.fetch, self.admission, workers=self.executor,
                             isolated=self.isolated)
        self.metrics = Metrics(self._serving_state, lambda: self.review_queue.pending_stats(),
                               app_version=_app_version(), quality=self._quality_gauges)
        self.models = ModelRegistry(self.model_config,
                                    Batching(serving.max_batch, serving.batch_wait_ms, serving.queue_size),
                                    settings.model_memory_mb * MB, expecting=lambda: self.intake.preparing,
                                    on_batch=self.metrics.observe_batch)
        # issue 25: the audit sample and double review (NSFW_AUDIT_RATE, NSFW_DOUBLE_REVIEW_RATE), and the API's
        # verdicts and scores counted per day in the database (the evaluation's "per day", the score drift)
        self.audit = AuditPolicy(dict(self.review_config.audit_rates), self.review_config.double_review_rate)
        self.traffic = TrafficCounter(self.database, prepare=lambda: self.review_queue)
        self._quality: tuple[float, list[Any]] | None = None
        self.classifier = Classifier(self.intake, self.models, self.known, self.thresholds,
                                     ReviewIntake(self.review_config.verdicts, lambda: self.review_queue,
                                                  self.executor, self.review_config.quota, self.audit,
                                                  adapters=self.adapters),
                                     load=self.load_bytes, observe=self._observe, adapters=self.adapters,
                                     examples=self.examples)
        self.intake.model_cost = self.models.cost
        buckets = DatabaseBuckets(self.database) if shared else MemoryBuckets()
        self.limiter = RateLimiter(settings.rate_limit, store=buckets) if settings.rate_limit is not None else None
        # wrong keys of every role: the clients' (NSFW_API_KEYS), the metrics token, the reviewer API's keys
        keyed = bool(serving.api_keys or settings.metrics_token or settings.reviewer_keys.configured)
        self.wrong_keys = RateLimiter(settings.wrong_key_limit, store=buckets, scope="wrong_key", what="wrong keys") \
            if settings.wrong_key_limit is not None and keyed else None
        self.share = ShareLimiter(share)  # its capacity is measured once the default model is loaded
        self.webhooks: Deliverer | None = None
        self.jobs = JobStore(self.database, lease_s=settings.job_lease_seconds, max_kept=settings.job_max_kept,
                             max_queued=settings.job_max_queued)
        self.job_runner: JobRunner | None = None
        self._loader: asyncio.Task[None] | None = None
        self._webhooks_task: asyncio.Task[None] | None = None
        self._jobs_task: asyncio.Task[None] | None = None
        self._traffic_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._measuring = False  # True from start() until the capacity is measured (not ready meanwhile)

    # ------------------------------------------------------------ parts opened on first use

    @property
    def review_queue(self) -> ReviewQueue:
        """The review queue (SQLite under data_dir, or NSFW_DATABASE_URL), opened and migrated on first use."""
        with self._lock:
            if self._review is None:
                self._review = ReviewQueue.from_config(self.review_config, pool=self.database)
            return self._review

    @property
    def signin_sessions(self) -> SigninSessions:
        """The browser app's sign-in sessions (:mod:`nsfw_core.state.sessions`), in the one database."""
        from nsfw_core.state.sessions import SigninSessions  # only the browser app's sign-in needs it

        with self._lock:
            if self._signin_sessions is None:
                self._signin_sessions = SigninSessions(self.database, self.settings.session_config)
            return self._signin_sessions

    @property
    def score_cache(self) -> ScoreCache:
        """The on-disk cache of scores for labelled sets (``<data_dir>/score-cache.sqlite``); the pages' only."""
        from nsfw_core.calibration.scorecache import ScoreCache

        with self._lock:
            if self._score_cache is None:
                self._score_cache = ScoreCache.in_folder(self.settings.data_dir)
            return self._score_cache

    def fetch(self, url: str) -> bytes:
        """The bytes behind ``url``, through the SSRF-safe fetcher and this process's keep-alive pool."""
        return fetch(url, self.fetch_policy, pool=self.connections).content

    def fetch_job(self, url: str) -> bytes:
        """A job's video: through the SSRF-safe fetcher, under NSFW_JOB_MAX_BYTES and NSFW_JOB_FETCH_TIMEOUT."""
        return fetch(url, self.settings.job_fetch_policy, pool=self.connections).content

    def load_bytes(self, source: str) -> bytes:
        """A URL's bytes (:meth:`fetch`) or a local file's (the CLI and labelled sets), under the byte cap."""
        return load_bytes(source, self.fetch_policy, self.connections)

    def _observe(self, result: Classification, fetched: bool) -> None:
        self.metrics.observe_classification(result, fetched=fetched, source=result.verdict_source)
        self.traffic.observe(result.verdict, result.verdict_source, result.scores)

    def _job_meter(self, job: Job) -> ratelimit.Meter:
        """A video job's meter: the budgets of the client that made it (the same buckets as its requests',
        :func:`nsfw_core.ratelimit.client_budget`), nothing paid at entry (POST /v1/jobs paid its unit)."""
        return ratelimit.Meter(ratelimit.client_budget(job.client or ""), job.client_key, self.limiter, self.share,
                               entry=0.0)

    def _observe_job(self, result: Classification) -> None:
        """A video job's verdict, counted with the API's (metrics, the evaluation's traffic) but not timed."""
        self.metrics.observe_classification(result, fetched=True, source=result.verdict_source, timed=False)
        self.traffic.observe(result.verdict, result.verdict_source, result.scores)

    # ------------------------------------------------------------ the evaluation (issue 25)

    def evaluation(self, *, since: float | None = None, until: float | None = None,
                   now: float | None = None) -> dict[str, Any]:
        """How the automatic decisions fare in production (:func:`nsfw_core.calibration.production.evaluate`)."""
        from nsfw_core.calibration.production import evaluate

        return evaluate(self.review_queue, self.traffic, self.thresholds.current(), self.audit,
                        self.review_config.verdicts, since=since, until=until, now=now)

    def _quality_gauges(self) -> list[Any]:
        """/metrics' evaluation gauges over the last 7 days, computed at most once a minute per process."""
        from nsfw_core.calibration.production import DAY, gauges

        now = time.time()
        held = self._quality
        if held is None or now - held[0] >= 60.0:
            held = self._quality = (now, gauges(self.evaluation(since=now - 7 * DAY, until=now, now=now)))
        return held[1]

    async def _flush_traffic(self) -> None:
        """Every FLUSH_INTERVAL seconds, the traffic counted in memory into the database."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await asyncio.to_thread(self.traffic.flush)
            except Exception:  # logged by the counter once per outage; the counts wait in memory
                pass

    def _serving_state(self) -> ServingState:
        lane = self.models.default_lane()
        model = self.models.loaded_model()
        return ServingState(
            ready=self.ready, in_flight=self.admission.in_flight, in_flight_limit=self.admission.limit,
            preparing=self.intake.preparing, queue_depth=lane.batcher.waiting if lane is not None else 0,
            queue_limit=self.serving.queue_size, rejected_admission=self.admission.rejected,
            rejected_queue=lane.batcher.stats.rejected if lane is not None else 0, model=self.model_config.name,
            model_version=model.version if model is not None else "",
            runtime=model.runtime if model is not None else self.model_config.runtime)

    # ------------------------------------------------------------ lifecycle (the server)

    @property
    def ready(self) -> bool:
        """True once the default model is loaded and warmed up, the capacity measured, and its batcher runs."""
        return self.models.ready and not self._measuring and not self._stopping

    @property
    def reason(self) -> str:
        """Why the service is not ready ("" when it is)."""
        if self._stopping:
            return "the service is shutting down"
        if self.models.ready and self._measuring:
            return "measuring the machine's capacity"
        return self.models.reason

    def warnings(self) -> list[str]:
        """What an operator should know about this configuration (/health ``warnings``, the start-up log)."""
        known = self.known.warning  # its database unreachable
        policy = [w for w in (self.adapters.warning, self.examples.warning) if w]
        return (storage_warnings(os.environ, self.settings.database_url, self.settings.ephemeral_disk)
                + self.access.warnings() + ([known] if known else []) + policy)

    async def start(self) -> None:
        """Begin loading the model in the background, and start the webhooks' delivery; returns at once."""
        self._measuring = True
        self._loader = asyncio.get_running_loop().create_task(self._load(), name="nsfw-model-load")
        self._traffic_task = asyncio.get_running_loop().create_task(self._flush_traffic(), name="nsfw-traffic")
        await self._start_webhooks()
        self._start_jobs()

    def _start_jobs(self) -> None:
        """The video jobs' workers (NSFW_JOB_WORKERS), claiming jobs once the model is ready."""
        from nsfw_core.jobs import JobRunner

        webhooks = self.webhooks
        self.job_runner = JobRunner(self.jobs, self.classifier, self.fetch_job, workers=self.settings.job_workers,
                                    events=webhooks is not None,
                                    wake=None if webhooks is None else webhooks.wake.set,
                                    retention_days=self.settings.job_retention_days, ready=lambda: self.ready,
                                    observe=self._observe_job, meter=self._job_meter)
        if self.settings.job_workers > 0:
            self._jobs_task = asyncio.get_running_loop().create_task(self.job_runner.run(), name="nsfw-jobs")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        # The thresholds in force and the known images are read while the model loads (neither raises: a
        # database that is down leaves what is in memory, with a warning, until it is back).
        thresholds = loop.run_in_executor(None, self.thresholds.refresh)
        known = loop.run_in_executor(None, self.known.refresh)
        adapters = loop.run_in_executor(None, self.adapters.refresh)
        examples = loop.run_in_executor(None, self.examples.refresh)
        try:
            lane = await self.models.start()
        except Exception:
            self._measuring = False
            log.exception("%s; /health answers 503 and /predict 503 not_ready", self.models.reason)
            return
        try:  # before the first request: measured on an idle machine, and counted from the start
            capacity = await asyncio.to_thread(measure_capacity, lane.model, self.serving.max_batch)
            self.share.set_capacity(capacity)
            log.info("capacity: %.0f cost units a second (%d CPUs); one client's share (NSFW_KEY_SHARE=%g) is %.0f "
                     "while others are active", capacity, available_cpus(), self.share.share,
                     self.share.share * capacity)
        except Exception:  # never keep the server from serving: the share limit stays off
            log.exception("could not measure the capacity; NSFW_KEY_SHARE limits only what is in flight")
        finally:
            self._measuring = False
        for warning in self.warnings():
            log.warning("%s", warning)
        await asyncio.to_thread(self.decoder.sandbox.warm)
        await thresholds
        await known
        await adapters
        await examples
        self.adapters.keep_fresh()  # in force within a second of a publication, even after a quiet spell
        self.examples.keep_fresh()
        log.info("model %s %s ready in %.1f s", lane.model.name, lane.model.version, lane.model.load_seconds)

    async def _start_webhooks(self) -> None:
        """With NSFW_WEBHOOK_URL: the outbox hook on every decision, and the background delivery task."""
        url = self.settings.webhook_url
        if not url:
            return
        from nsfw_core.base.logs import url_for_log
        from nsfw_core.state.webhooks import Deliverer, hook_up

        def hooked() -> ReviewQueue:
            queue = self.review_queue
            hook_up(queue)
            return queue

        try:
            queue = await asyncio.to_thread(hooked)
        except Exception as exc:  # the database is down: no decisions can be made either
            log.error("webhooks are off: the review database is unavailable (%r)", exc)
            return
        self.webhooks = Deliverer(queue, url, self.settings.webhook_secret, self.fetch_policy,
                                  concurrency=self.settings.webhook_concurrency, observe=self.metrics.observe_webhook)
        self.metrics.watch_webhooks(self.webhooks.backlog)
        self._webhooks_task = asyncio.get_running_loop().create_task(self.webhooks.run(), name="nsfw-webhooks")
        log.info("webhooks: review decisions are POSTed to %s", url_for_log(url))

    async def stop(self) -> None:
        """Finish queued inferences, then release the threads, processes and connections."""
        self._stopping = True
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        if self._jobs_task is not None:
            self._jobs_task.cancel()
            try:
                await self._jobs_task
            except (asyncio.CancelledError, Exception):
                pass
            if self.job_runner is not None:
                await asyncio.to_thread(self.job_runner.release)
        for task in (self._webhooks_task, self._traffic_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        await self.models.stop()
        try:
            await asyncio.to_thread(self.traffic.flush)
        except Exception as exc:
            log.warning("traffic counts of the last seconds not saved: %r", exc)
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
        self.known.close()
        self.adapters.close()
        self.examples.close()
        self.metrics.close()
        self.thresholds.close()
        self.database.close()
        if cache is not None:
            cache.close()


def measure_capacity(model: Model, batch: int = 8, rounds: int = 3) -> float:
    """What this machine serves, in cost units a second: the CPUs this process may use over the CPU time one
    image takes through ``model`` (the default: one unit), the best of ``rounds`` batches."""
    x = np.zeros((batch, model.input_size, model.input_size, 3), np.float32)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        model.predict(x)
        best = min(best, (time.process_time() - t0) / batch)
    return available_cpus() / max(best, 1e-4)


def _app_version() -> str:
    from nsfw_core import __version__

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

