"""What issue 25 adds to each classification and to the database: the traffic counter and the evaluation.

Side by side in one process (medians of ``--repeats`` runs):

- ``TrafficCounter.observe`` per classification (a verdict and five scores into a dictionary under a
  lock), against ``Metrics.observe_classification`` (what every classification already paid: the
  Prometheus counters and histograms);
- ``TrafficCounter.flush`` of 1,000 classifications (one day's ~56 keys upserted in one transaction) on
  SQLite in a temporary folder: what the background task does every 5 s;
- ``evaluate`` over a database with ``--items`` decided items (a third audits) and 28 days of traffic
  counts: what ``GET /v1/evaluation`` and the Evaluate page cost.

Writes ``bench/results/traffic_overhead.json``.  ``python bench/traffic_overhead.py [--repeats 7]``
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nsfw_core.base.verdict import ActiveThresholds, Thresholds
from nsfw_core.calibration.production import evaluate
from nsfw_core.classify import Classification, ModelInfo, Timings
from nsfw_core.metrics import Metrics
from nsfw_core.state.db import open_pool
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review.audit import AuditPolicy
from nsfw_core.state.traffic import TrafficCounter

RESULTS = Path(__file__).resolve().parent / "results"
SCORES = {"drawings": 0.01, "hentai": 0.02, "neutral": 0.9, "porn": 0.03, "sexy": 0.04}


def days_ago(now: float, days: int) -> float:
    """The clock of a counter ``days`` before ``now``."""
    return now - days * 86400.0


def per_call(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=6_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nsfw-traffic-bench."))
    pool = open_pool(None, folder)
    queue = ReviewQueue(None, data_dir=folder, pool=pool)
    counter = TrafficCounter(pool, prepare=lambda: queue)
    metrics = Metrics()
    result = Classification(scores=SCORES, verdict="safe", adult_score=0.07, safe_score=0.91, thresholds=Thresholds(),
                            model=ModelInfo("MobileNetV2Mid", "x"), timings=Timings(1, 2, 3, 6), sha256="0" * 64)

    observe = [per_call(lambda: counter.observe("safe", "model", SCORES), args.calls) for _ in range(args.repeats)]
    prom = [per_call(lambda: metrics.observe_classification(result, fetched=False), args.calls)
            for _ in range(args.repeats)]
    counter.flush()
    flushes = []
    for _ in range(args.repeats * 3):
        for _ in range(1000):
            counter.observe("safe", "model", SCORES)
        started = time.perf_counter()
        counter.flush()
        flushes.append(time.perf_counter() - started)

    now = time.time()
    for day in range(28):  # 28 days of traffic: 2,000 classifications a day
        day_counter = TrafficCounter(pool, prepare=lambda: queue, clock=functools.partial(days_ago, now, day))
        for verdict, n in (("adult", 200), ("unknown", 100), ("safe", 1700)):
            for _ in range(n):
                day_counter.observe(verdict, "model", SCORES)
        day_counter.flush()
    for i in range(args.items):
        kind = "audit" if i % 3 == 0 else "review"
        verdict = ("adult" if i % 2 else "safe") if kind == "audit" else "unknown"
        item = queue.enqueue(hashlib.sha256(str(i).encode()).hexdigest(), "upload", SCORES, "m", verdict,
                             kind=kind, probability=0.01 if kind == "audit" else 1.0)
        queue.decide(item, "r", "neutral" if i % 7 else "porn")
    active = ActiveThresholds(Thresholds(), "defaults", {})
    policy = AuditPolicy({"adult": 0.01, "safe": 0.01})
    evaluations = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        report = evaluate(queue, counter, active, policy, ("unknown",), now=time.time())
        evaluations.append(time.perf_counter() - started)
    assert report["automatic"]["adult"]["audited"] + report["automatic"]["safe"]["audited"] == args.items // 3
    metrics.close()
    queue.close()
    pool.close()

    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "observe_us": round(statistics.median(observe) * 1e6, 3),
        "metrics_observe_us": round(statistics.median(prom) * 1e6, 3),
        "observe_over_metrics": round(statistics.median(observe) / statistics.median(prom), 3),
        "flush_1000_ms": round(statistics.median(flushes) * 1e3, 2),
        "evaluate_ms": round(statistics.median(evaluations) * 1e3, 1),
        "evaluate_items": args.items, "evaluate_days": 28, "repeats": args.repeats,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "traffic_overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
