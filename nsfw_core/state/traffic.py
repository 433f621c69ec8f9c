"""The API's traffic, counted per UTC day in the database: how many verdicts of each kind, and the scores.

``traffic_counts`` (:mod:`nsfw_core.state.migrations`, version 9) holds one row per (day, name) with a
count, shared by every replica on the database (``/metrics`` counts per process and forgets on restart):

- ``decisions:<verdict>:<source>``: verdicts the API answered (``source`` ``model`` for the model's own,
  ``review`` / ``list`` for a known image), so "wrong automatic decisions per day" has its "per day";
- ``score:<class>:<bin>``: every API-classified image's score of each class in :data:`SCORE_BINS` equal
  bins over 0…1, the production histograms the score drift (PSI) compares with the labelled set the
  thresholds in force were tuned on.

:meth:`TrafficCounter.observe` (every classification, on the hot path) only adds to a dictionary in
memory; :meth:`TrafficCounter.flush` (the context's background task, every :data:`FLUSH_INTERVAL` seconds
and at shutdown) adds the sums to the table in one transaction (``INSERT ... ON CONFLICT DO UPDATE``, rows
in a fixed order so replicas never deadlock).  A process killed between flushes loses at most that many
seconds of counts; a database that is down keeps them in memory until it is back.
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import threading
import time
from typing import Any, Callable, Mapping

from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.state.db import Pool
from nsfw_core.state.migrations import TRAFFIC_TABLE

log = logging.getLogger(__name__)

SCORE_BINS = 10  # equal bins over [0, 1]
FLUSH_INTERVAL = 5.0  # seconds between flushes of one process
MAX_PENDING_KEYS = 100_000  # counts kept in memory while the database is down (about 40 days of keys)
DECISIONS, SCORE = "decisions", "score"
_score_names: dict[tuple[str, int], str] = {}  # ("porn", 3) -> "score:porn:3", filled below


def day_of(ts: float) -> str:
    """The UTC day of a time, ``YYYY-MM-DD``."""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).date().isoformat()


def score_bin(score: float, bins: int = SCORE_BINS) -> int:
    """The bin of a score in [0, 1] (1.0 in the last one; out-of-range scores clipped)."""
    return min(max(int(float(score) * bins), 0), bins - 1)


# the key of each in-range bin, made once (observe() runs for every classification); a score of 1.0 (bin 10) or
# out of range goes through score_bin instead
_score_names.update({(name, b): f"{SCORE}:{name}:{b}" for name in CLASS_NAMES for b in range(SCORE_BINS)})


class TrafficCounter:
    """Counts of the API's verdicts and scores, summed in memory and flushed to the database.

    ``prepare`` is called before the first database access (the context opens the review queue there,
    which migrates the schema).  ``clock`` gives seconds since the epoch (the day a count falls in).
    """

    def __init__(self, pool: Pool, prepare: Callable[[], Any] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.prepare = prepare
        self.clock = clock
        self._pending: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._down = False
        self._day, self._day_start = "", -1e18  # the UTC day observe() counts under, and when it began

    def observe(self, verdict: str, source: str, scores: Mapping[str, float]) -> None:
        """Count one classification (its verdict, who gave it, its scores) under today's date."""
        now = self.clock()
        day = self._day if self._day_start <= now < self._day_start + 86400.0 else self._new_day(now)
        names = _score_names
        with self._lock:
            pending = self._pending
            pending[(day, f"{DECISIONS}:{verdict}:{source}")] += 1
            for name, value in scores.items():
                b = int(value * SCORE_BINS)
                pending[(day, names.get((name, b)) or f"{SCORE}:{name}:{score_bin(value)}")] += 1

    def _new_day(self, now: float) -> str:
        self._day_start = now - now % 86400.0
        self._day = day_of(now)
        return self._day

    @property
    def pending(self) -> int:
        """Classifications counted in memory and not yet in the database."""
        with self._lock:
            return sum(n for (_, name), n in self._pending.items() if name.startswith(DECISIONS + ":"))

    def flush(self) -> int:
        """Add what was counted since the last flush to the table; the rows written.  Raises on a database
        error, keeping the counts for the next flush (up to :data:`MAX_PENDING_KEYS` keys)."""
        with self._flush_lock:
            with self._lock:
                taken, self._pending = self._pending, collections.Counter()
            if not taken:
                return 0
            try:
                self.prepare()
                with self.pool.transaction() as tx:
                    for (day, name), count in sorted(taken.items()):
                        tx.run(f"INSERT INTO {TRAFFIC_TABLE} (day, name, count) VALUES (?, ?, ?) "
                               f"ON CONFLICT (day, name) DO UPDATE SET count = {TRAFFIC_TABLE}.count + excluded.count",
                               (day, name, int(count)))
            except Exception as exc:
                with self._lock:
                    taken.update(self._pending)
                    self._pending = taken if len(taken) <= MAX_PENDING_KEYS else collections.Counter()
                if not self._down:
                    self._down = True
                    log.warning("traffic counts not saved (%r); kept in memory until the database is back", exc)
                raise
            if self._down:
                self._down = False
                log.info("traffic counts saved again")
            return len(taken)

    def read(self, since: float | None = None, until: float | None = None) -> dict[str, dict[str, int]]:
        """``{day: {name: count}}`` for the UTC days from ``since``'s to ``until``'s (both included; None:
        no bound), from the database (what this process has not flushed yet is not in it)."""
        self.prepare()
        where, params = [], []
        if since is not None:
            where.append("day >= ?")
            params.append(day_of(since))
        if until is not None:
            where.append("day <= ?")
            params.append(day_of(until))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self.pool.transaction(write=False) as tx:
            rows = tx.run(f"SELECT day, name, count FROM {TRAFFIC_TABLE}{clause} ORDER BY day, name", params)
        out: dict[str, dict[str, int]] = {}
        for day, name, count in rows:
            out.setdefault(str(day), {})[str(name)] = int(count)
        return out


def decisions(counts: Mapping[str, int], verdict: str, source: str = "model") -> int:
    """One day's count of ``verdict`` given by ``source`` (from :meth:`TrafficCounter.read`'s inner dict)."""
    return int(counts.get(f"{DECISIONS}:{verdict}:{source}", 0))


def histogram(counts: Mapping[str, int], name: str, bins: int = SCORE_BINS) -> list[int]:
    """One day's histogram of the class ``name``'s scores."""
    return [int(counts.get(f"{SCORE}:{name}:{b}", 0)) for b in range(bins)]
