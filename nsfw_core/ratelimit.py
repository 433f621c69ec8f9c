"""Rate limits per API key (``NSFW_RATE_LIMIT``): a token bucket per client, in this process.

``NSFW_RATE_LIMIT=20/s;burst=40``: each client (its API key; its address when no keys are
configured) gets a bucket of ``burst`` requests (default: the rate per second, at least 1) that
refills at ``20`` per second (``/s``, ``/m`` or ``/h``).  A request that finds the bucket empty
is answered 429 ``rate_limited`` with ``Retry-After`` (whole seconds until one request is
allowed).  Every v1 answer carries the IETF draft's headers (draft-ietf-httpapi-ratelimit-headers,
the ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` form): the burst, what is
left of it, and the seconds until the bucket is full again.

The buckets live in this process: with several replicas each one counts on its own, so a
client gets up to ``replicas x`` the limit.  Keys are stored as their SHA-256 digest, never in
clear; buckets idle long enough to be full again are forgotten (at most :data:`MAX_CLIENTS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from typing import Callable

from nsfw_core.base.errors import InputError
from nsfw_core.base.rates import Rate

MAX_CLIENTS = 100_000


class RateLimited(InputError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, headers: dict[str, str], **details: object) -> None:
        super().__init__(message, **details)
        self.http_headers = headers


@dataclasses.dataclass
class _Bucket:
    tokens: float
    at: float


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    reset_s: int  # until the bucket is full again
    retry_after_s: int  # until one request is allowed (0 when allowed)

    def headers(self, rate: Rate) -> dict[str, str]:
        out = {"RateLimit-Limit": str(rate.burst), "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(self.reset_s)}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


class RateLimiter:
    """Token buckets by client key; thread-safe; ``clock`` injectable for tests."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._buckets: dict[bytes, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, client: str, units: float = 1.0, slack: float = 0.0) -> Decision:
        """Take ``units`` (one request; an explanation counts its forward passes) from ``client``'s bucket.

        Allowed when the bucket holds them, or, for more units than the burst, when it is full: such a
        request runs and leaves the bucket in debt (the client then waits for the debt to be refilled).
        ``slack``: units the same request took already (its entry, counted by the guard): the bucket was
        full when it holds ``burst - slack``."""
        key = hashlib.sha256(client.encode("utf-8", "surrogatepass")).digest()
        now = self.clock()
        rate = self.rate
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_CLIENTS:
                    self._forget_full(now)
                bucket = self._buckets[key] = _Bucket(float(rate.burst), now)
            bucket.tokens = min(float(rate.burst), bucket.tokens + (now - bucket.at) * rate.per_second)
            bucket.at = now
            need = min(float(units), max(float(rate.burst) - float(slack), 0.0))
            allowed = bucket.tokens >= need
            if allowed:
                bucket.tokens -= float(units)
            tokens = bucket.tokens
        reset = math.ceil((rate.burst - tokens) / rate.per_second)
        retry = 0 if allowed else max(1, math.ceil((need - tokens) / rate.per_second))
        return Decision(allowed, max(int(tokens), 0), reset, retry)

    def _forget_full(self, now: float) -> None:
        rate = self.rate
        # full again (a bucket in debt takes longer: forgetting it early would forgive the debt)
        for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * rate.per_second >= rate.burst]:
            del self._buckets[key]
        while len(self._buckets) >= MAX_CLIENTS:  # all busy: forget the oldest
            del self._buckets[min(self._buckets, key=lambda k: self._buckets[k].at)]

    def check(self, client: str, units: float = 1.0, slack: float = 0.0) -> dict[str, str]:
        """The headers for an allowed request; :class:`RateLimited` (429) when the bucket is empty."""
        decision = self.take(client, units, slack)
        headers = decision.headers(self.rate)
        if not decision.allowed:
            raise RateLimited(f"rate limit exceeded ({self.rate}); retry in {decision.retry_after_s} s", headers,
                              retry_after=decision.retry_after_s)
        return headers
