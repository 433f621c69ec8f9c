"""Prometheus metrics of one process (``GET /metrics``), in a registry the context owns.

Each :class:`~nsfw_core.context.Context` holds one :class:`Metrics` with its own
``CollectorRegistry`` (not prometheus_client's global one), so apps that tests create
side by side count separately and nothing leaks from one to the next.  It is handed two
functions, not the context: ``state`` (a :class:`ServingState` snapshot, read when scraped)
and ``review`` (the review queue's pending count and oldest item).

Counted as requests are served (cheap: a lock and an addition per sample):

* ``nsfw_http_requests_total{route, status}`` and ``nsfw_http_request_duration_seconds{route}``:
  every API request, ``route`` the path template (``/predict``, ``/predict/batch``, ...);
* ``nsfw_errors_total{code}``: every error answered, a whole request's or a batch item's;
* ``nsfw_stage_duration_seconds{stage}``: per classified image, ``fetch`` (URLs only),
  ``decode``, ``inference`` (queue wait and forward pass) and ``total``;
* ``nsfw_verdicts_total{verdict, source}``: ``source`` is the answer's ``verdict_source``: ``model``,
  or ``review`` / ``list`` for a known image (a remembered decision, a hash list, :mod:`nsfw_core.state.known`),
  ``examples`` for an image like an example set's (:mod:`nsfw_core.state.examples`);
  the share of ``unknown`` among ``source="model"`` is the model's, which the human verdicts must not
  flatter;
* ``nsfw_score{class}``: a histogram per class of the model's scores (drift);
* ``nsfw_batch_size``: images per forward pass;
* ``nsfw_webhook_deliveries_total{result}`` (``delivered`` / ``failed``: each attempt) and
  ``nsfw_webhook_delivery_lag_seconds``: from the decision (or undo) to its event's delivery;
* ``nsfw_rate_limited_total{limit}``: requests and batch items refused 429 by a budget
  (``rate``: NSFW_RATE_LIMIT, ``share``: NSFW_KEY_SHARE, ``in_flight``, ``wrong_key``).

Read when scraped, from the ``state`` snapshot (:class:`_StateCollector`):
``nsfw_ready``, ``nsfw_in_flight_images`` and its limit, ``nsfw_preparing_images``,
``nsfw_inference_queue_depth`` and its limit, ``nsfw_overloaded_total{where}``, the review
queue (``nsfw_review_queue_up``, ``nsfw_review_queue_pending``,
``nsfw_review_queue_oldest_pending_age_seconds``: one indexed query, bounded by
:data:`REVIEW_PROBE_TIMEOUT`, so a database that is down or slow gives ``up 0`` and never a
failed or slow scrape), with webhooks the outbox's backlog (``nsfw_webhook_backlog``,
``nsfw_webhook_oldest_undelivered_age_seconds``: the lag the next delivery will have, probed the same
way), ``nsfw_build_info{model, version, runtime, app_version}``, and the
``process_*`` metrics; and, when the context hands ``quality``, the evaluation's gauges (issue 25):
``nsfw_automatic_precision{verdict}`` and its ``_lower`` bound, ``nsfw_audited_items{verdict}``,
``nsfw_wrong_automatic_per_day{verdict}``, ``nsfw_score_psi{class}`` and ``nsfw_score_drift_images{class}``
(the last 7 days, from the database: the same on every replica), with ``nsfw_evaluation_up``.
``docs/operations.md`` has the PromQL and alert examples.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from nsfw_core.base.labels import CLASS_NAMES, VERDICTS

if TYPE_CHECKING:
    from nsfw_core.classify import Classification

T = TypeVar("T")
STAGES = ("fetch", "decode", "inference", "total")
SOURCES = ("model",)  # who gave the verdict; "review" and "list" when those exist
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 10800.0)
LIMITS = ("rate", "share", "in_flight", "wrong_key")
REVIEW_PROBE_TIMEOUT = 0.5  # seconds a scrape waits for the review database
QUALITY_PROBE_TIMEOUT = 2.0  # seconds a scrape waits for the evaluation (computed at most once a minute)
Gauge = tuple[str, str, dict[str, str], float]  # name, help, labels, value
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclasses.dataclass(frozen=True)
class ServingState:
    """What the scrape reads of the serving process at that moment."""

    ready: bool
    in_flight: float  # cost units (nsfw_core.ratelimit)
    in_flight_limit: int
    preparing: int
    queue_depth: int
    queue_limit: int
    rejected_admission: int
    rejected_queue: int
    model: str
    model_version: str
    runtime: str


class Metrics:
    """The process's metrics; see the module docstring.  ``state`` and ``review`` feed the scrape-time gauges."""

    def __init__(self, state: Callable[[], ServingState] | None = None,
                 review: Callable[[], tuple[int, float | None]] | None = None, *, app_version: str = "",
                 quality: Callable[[], list[Gauge]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("nsfw_http_requests", "API requests answered, by route template and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("nsfw_http_request_duration_seconds",
                                         "API request latency, by route template", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("nsfw_errors", "Errors answered, by code: whole requests and batch items",
                              ["code"], registry=r)
        self.stage_seconds = Histogram("nsfw_stage_duration_seconds",
                                       "Per classified image: fetch (URLs), decode, inference (queue and forward "
                                       "pass) and total", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.verdicts = Counter("nsfw_verdicts", "Verdicts given, by verdict and by who gave it (model, review, list)",
                                ["verdict", "source"], registry=r)
        self.scores = Histogram("nsfw_score", "The model's score per class, per classified image (drift)",
                                ["class"], buckets=SCORE_BUCKETS, registry=r)
        self.batch_size = Histogram("nsfw_batch_size", "Images per forward pass of the micro-batcher",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.webhook_deliveries = Counter("nsfw_webhook_deliveries", "Webhook delivery attempts, by result",
                                          ["result"], registry=r)
        self.webhook_lag = Histogram("nsfw_webhook_delivery_lag_seconds",
                                     "Seconds from a decision (or undo) to its webhook event's delivery",
                                     buckets=LAG_BUCKETS, registry=r)
        self.rate_limited = Counter("nsfw_rate_limited", "Requests and batch items refused 429 rate_limited, by "
                                    "budget (rate, share, in_flight, wrong_key)", ["limit"], registry=r)
        for result in ("delivered", "failed"):
            self.webhook_deliveries.labels(result)
        for limit in LIMITS:
            self.rate_limited.labels(limit)
        # Children resolved once: the hot path does no label lookups, and every series exists from the start.
        self._stage = {s: self.stage_seconds.labels(s) for s in STAGES}
        self._score = {c: self.scores.labels(c) for c in CLASS_NAMES}
        self._verdict = {(v, s): self.verdicts.labels(v, s) for v in VERDICTS for s in SOURCES}
        self._state = _StateCollector(state, review, app_version) if state is not None and review is not None else None
        if self._state is not None:
            r.register(self._state)
        self._quality = _QualityCollector(quality) if quality is not None else None
        if self._quality is not None:
            r.register(self._quality)
        ProcessCollector(registry=r)

    # ------------------------------------------------------------ counted as it happens

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_error(self, code: str, limit: str | None = None) -> None:
        """An error answered (a request's or a batch item's); ``limit``: which budget refused a 429."""
        self.errors.labels(code).inc()
        if code == "rate_limited":
            self.rate_limited.labels(limit if limit in LIMITS else "rate").inc()

    def observe_classification(self, result: Classification, *, fetched: bool, source: str = "model",
                               timed: bool = True) -> None:
        """Count a verdict and its scores; ``timed``: and its stages' times (not a video job's: its minutes are
        no request's latency)."""
        t = result.timings
        if timed:
            if fetched:
                self._stage["fetch"].observe(t.fetch_ms / 1000.0)
            self._stage["decode"].observe(t.decode_ms / 1000.0)
            self._stage["inference"].observe(t.inference_ms / 1000.0)
            self._stage["total"].observe(t.total_ms / 1000.0)
        child = self._verdict.get((result.verdict, source))
        (child or self.verdicts.labels(result.verdict, source)).inc()
        for name, score in result.scores.items():
            hist = self._score.get(name)
            if hist is not None:
                hist.observe(score)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def observe_webhook(self, delivered: bool, lag_s: float | None) -> None:
        """One delivery attempt (from a delivery thread); ``lag_s`` once delivered."""
        self.webhook_deliveries.labels("delivered" if delivered else "failed").inc()
        if lag_s is not None:
            self.webhook_lag.observe(lag_s)

    def watch_webhooks(self, backlog: Callable[[], tuple[int, float | None]]) -> None:
        """Report the webhooks' outbox backlog at each scrape (once the deliveries start)."""
        if self._state is not None:
            self._state.webhooks = ReviewProbe(backlog)

    # ------------------------------------------------------------ the scrape

    def close(self) -> None:
        if self._state is not None:
            self._state.review.close()
            if self._state.webhooks is not None:
                self._state.webhooks.close()
        if self._quality is not None:
            self._quality.probe.close()

    def exposition(self) -> bytes:
        """The text format of everything (call it off the event loop: the review probe may wait)."""
        return generate_latest(self.registry)


class Probe(Generic[T]):
    """A query run at most once at a time on its own thread, waited for at most ``timeout`` seconds: a
    database that hangs leaves the scrape without its figures, never hanging or failing it."""

    def __init__(self, query: Callable[[], T], timeout: float, name: str) -> None:
        self.query = query
        self.timeout = timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: concurrent.futures.Future[T] | None = None
        self._lock = threading.Lock()

    def result(self) -> T | None:
        """The query's answer, or None when it failed or did not answer in time."""
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = self._executor.submit(self.query)
            future = self._pending
        try:
            return future.result(timeout=self.timeout)
        except Exception:  # down, slow, misconfigured: the scrape still answers
            return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ReviewProbe:
    """The review queue's depth and oldest pending item, read at most one query at a time and waited
    for at most ``timeout`` seconds: a database that hangs makes the scrape report ``up 0``, not hang."""

    def __init__(self, query: Callable[[], tuple[int, float | None]], timeout: float = REVIEW_PROBE_TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        self.query = query
        self.timeout = timeout
        self.clock = clock
        self._probe: Probe[tuple[int, float | None]] = Probe(query, timeout, "nsfw-metrics-review")

    def read(self) -> tuple[int, float | None] | None:
        """(pending items, age in seconds of the oldest or None), or None when the database did not answer."""
        found = self._probe.result()
        if found is None:
            return None
        count, oldest = found
        return count, (max(0.0, self.clock() - oldest) if oldest is not None else None)

    def close(self) -> None:
        self._probe.close()


class _StateCollector(Collector):
    """Gauges and counters read from the serving state when scraped."""

    def __init__(self, state: Callable[[], ServingState], review: Callable[[], tuple[int, float | None]],
                 app_version: str) -> None:
        self.state = state
        self.app_version = app_version
        self.review = ReviewProbe(review)
        self.webhooks: ReviewProbe | None = None

    def describe(self) -> Iterable[Any]:
        return []  # unchecked: the names are only known when collected

    def collect(self) -> Iterable[Any]:
        s = self.state()
        yield _gauge("nsfw_ready", "1 once the model is loaded and warm (what /health says)", float(s.ready))
        yield _gauge("nsfw_in_flight_images", "Work admitted and not answered yet, in cost units (a photo on the "
                     "default model is 1)", s.in_flight)
        yield _gauge("nsfw_in_flight_limit", "NSFW_MAX_IN_FLIGHT (cost units)", s.in_flight_limit)
        yield _gauge("nsfw_preparing_images", "Images being fetched or decoded", s.preparing)
        yield _gauge("nsfw_inference_queue_depth", "Images waiting for a forward pass", s.queue_depth)
        yield _gauge("nsfw_inference_queue_limit", "NSFW_QUEUE_SIZE", s.queue_limit)
        overloaded = CounterMetricFamily("nsfw_overloaded", "Requests refused with 503 overloaded, by where",
                                         labels=["where"])
        overloaded.add_metric(["admission"], s.rejected_admission)
        overloaded.add_metric(["inference_queue"], s.rejected_queue)
        yield overloaded
        yield from self._review()
        yield from self._webhooks()
        info = InfoMetricFamily("nsfw_build", "The model, its version and runtime, and the app's version")
        info.add_metric([], {"model": s.model, "version": s.model_version, "runtime": s.runtime,
                             "app_version": self.app_version})
        yield info

    def _review(self) -> Iterable[Any]:
        read = self.review.read()
        yield _gauge("nsfw_review_queue_up", "1 when the review database answered this scrape", float(read is not None))
        if read is None:
            return
        count, age = read
        yield _gauge("nsfw_review_queue_pending", "Review items waiting for a reviewer (expired claims included)",
                     count)
        yield _gauge("nsfw_review_queue_oldest_pending_age_seconds",
                     "Seconds since the oldest waiting review item was created (0 when none waits)", age or 0.0)

    def _webhooks(self) -> Iterable[Any]:
        read = self.webhooks.read() if self.webhooks is not None else None
        if read is None:
            return
        count, age = read
        yield _gauge("nsfw_webhook_backlog", "Webhook events not delivered yet (and still to be tried)", count)
        yield _gauge("nsfw_webhook_oldest_undelivered_age_seconds",
                     "Seconds since the oldest undelivered webhook event was written (0 when none waits)", age or 0.0)


class _QualityCollector(Collector):
    """The evaluation's gauges (issue 25): the estimated precision of the automatic verdicts, the expected wrong
    decisions per day and the score drift (PSI) per class, over the last 7 days, read through a
    :class:`Probe` (the context caches the evaluation for a minute); ``nsfw_evaluation_up`` says whether
    this scrape got them."""

    def __init__(self, quality: Callable[[], list[Gauge]]) -> None:
        self.probe: Probe[list[Gauge]] = Probe(quality, QUALITY_PROBE_TIMEOUT, "nsfw-metrics-quality")

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        gauges = self.probe.result()
        yield _gauge("nsfw_evaluation_up", "1 when this scrape got the evaluation's gauges", float(gauges is not None))
        families: dict[str, GaugeMetricFamily] = {}
        for name, help, labels, value in gauges or []:
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, help, labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


def _gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help, value=value)
