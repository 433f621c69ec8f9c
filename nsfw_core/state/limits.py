"""Limits that replicas share through the database: rate limits' token buckets and failed sign-ins.

With ``NSFW_DATABASE_URL`` set, every replica reads and writes the same rows, so a client gets its rate
limit (NSFW_RATE_LIMIT, NSFW_WRONG_KEY_LIMIT) once, not once per replica, and the failed sign-ins with
a secret are counted across replicas (:class:`~nsfw_core.access.AttemptLimiter`):

* :class:`DatabaseBuckets` (a :class:`~nsfw_core.ratelimit.BucketStore`): one row per bucket
  (``limit_buckets``: the key's SHA-256 digest, never the key), read and written in one transaction
  (the upsert locks the row on PostgreSQL; SQLite serialises writers), with the rule of
  :func:`~nsfw_core.ratelimit.settle`.  Rows that would be full again are deleted now and then.
* :class:`DatabaseFailures`: one row per failed sign-in (``limit_failures``), by scope; rows older than
  the window are deleted as new ones arrive.

Times are the wall clock (``time.time``), as the replicas' clocks agree to well under a second.  A database
that cannot be reached does not stop the service: each store falls back to counting in this process (as
without a database) and logs it, at most once a minute, until the database answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.rates import Rate
from nsfw_core.ratelimit import Decision, MemoryBuckets, refill, settle
from nsfw_core.state.db import Pool
from nsfw_core.state.migrations import BUCKETS_TABLE, FAILURES_TABLE, MIGRATIONS, migrate

log = logging.getLogger(__name__)

PURGE_EVERY_S = 300.0  # full buckets and old failures deleted at most this often per process
WARN_EVERY_S = 60.0


class _Shared:
    """The database part both stores share: migrate once, fall back (and say so) when it is down."""

    def __init__(self, pool: Pool, clock: Callable[[], float]) -> None:
        self.pool = pool
        self.clock = clock
        self._prepared = False
        self._lock = threading.Lock()
        self._warned = 0.0
        self._last_purge = 0.0
        self.fallbacks = 0  # operations counted in this process because the database did not answer

    def prepare(self) -> None:
        if self._prepared:
            return
        with self._lock:
            if not self._prepared:
                with self.pool.connection() as conn:
                    migrate(self.pool.backend, conn, MIGRATIONS)
                self._prepared = True

    def down(self, what: str, exc: Exception) -> None:
        self.fallbacks += 1
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_S:
            self._warned = now
            log.warning("%s: the database did not answer (%s); counting in this process until it does "
                        "(each replica on its own meanwhile)", what, getattr(exc, "message", exc))

    def purge_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_S:
            return False
        self._last_purge = now
        return True


class DatabaseBuckets:
    """Token buckets in the database, shared by replicas; see the module docstring."""

    shared = True

    def __init__(self, pool: Pool, clock: Callable[[], float] = time.time) -> None:
        self._db = _Shared(pool, clock)
        self._fallback = MemoryBuckets(clock)

    @property
    def fallbacks(self) -> int:
        return self._db.fallbacks

    def take(self, key: bytes, units: float, slack: float, rate: Rate) -> Decision:
        try:
            self._db.prepare()
            return self._take(key.hex(), units, slack, rate)
        except (NSFWError, OSError) as exc:
            self._db.down("rate limits", exc)
            return self._fallback.take(key, units, slack, rate)

    def _take(self, bucket: str, units: float, slack: float, rate: Rate) -> Decision:
        now = self._db.clock()
        with self._db.pool.transaction() as tx:
            row = tx.one(f"INSERT INTO {BUCKETS_TABLE} (bucket, tokens, updated_at, full_at) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (bucket) DO UPDATE SET bucket = excluded.bucket RETURNING tokens, updated_at",
                         (bucket, float(rate.burst), now, now))
            assert row is not None
            _, after, decision = settle(refill(float(row[0]), float(row[1]), now, rate), units, slack, rate)
            full_at = now + max(0.0, rate.burst - after) / rate.per_second
            tx.run(f"UPDATE {BUCKETS_TABLE} SET tokens = ?, updated_at = ?, full_at = ? WHERE bucket = ?",
                   (after, now, full_at, bucket))
            if self._db.purge_due():
                tx.run(f"DELETE FROM {BUCKETS_TABLE} WHERE full_at < ?", (now,))
        return decision


class DatabaseFailures:
    """Failed attempts of one ``scope`` (e.g. sign-in with a secret) in the database, shared by replicas: what
    :class:`~nsfw_core.access.AttemptLimiter` counts in its window."""

    def __init__(self, pool: Pool, scope: str, *, keep_s: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = _Shared(pool, clock)
        self.scope = scope
        self.keep_s = keep_s
        self._fallback: list[float] = []
        self._lock = threading.Lock()

    def add(self, at: float) -> None:
        """Record a failure at ``at`` (wall-clock seconds)."""
        try:
            self._db.prepare()
            with self._db.pool.transaction() as tx:
                tx.run(f"INSERT INTO {FAILURES_TABLE} (scope, failed_at) VALUES (?, ?)", (self.scope, at))
                if self._db.purge_due():
                    tx.run(f"DELETE FROM {FAILURES_TABLE} WHERE failed_at < ?", (at - self.keep_s,))
        except (NSFWError, OSError) as exc:
            self._db.down("sign-in failures", exc)
            with self._lock:
                self._fallback.append(at)

    def since(self, after: float, limit: int) -> list[float]:
        """The times of the (at most ``limit``) most recent failures after ``after``, oldest first."""
        with self._lock:
            self._fallback = [t for t in self._fallback if t > after]
            local = list(self._fallback)
        try:
            self._db.prepare()
            with self._db.pool.transaction(write=False) as tx:
                rows = tx.run(f"SELECT failed_at FROM {FAILURES_TABLE} WHERE scope = ? AND failed_at > ? "
                              "ORDER BY failed_at DESC LIMIT ?", (self.scope, after, int(limit)))
            found = [float(r[0]) for r in rows]
        except (NSFWError, OSError) as exc:
            self._db.down("sign-in failures", exc)
            found = []
        return sorted(found + local)[-limit:] if limit > 0 else []
