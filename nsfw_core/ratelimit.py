"""What a request may cost its client: rate limits counted in cost units, and a share of the machine per key.

**Cost units.**  One unit is what a plain still photo costs: decoding up to :data:`FREE_WORK` pixel passes
and one forward pass of the default model.  An image costs :func:`image_cost`: its frames times the
model's relative cost (its CPU time per image over the default model's, ``nsfw_core.inference.registry``:
InceptionV3 about 9.4, MobileNetV2 about 0.53), plus one unit per :data:`WORK_PER_UNIT` pixel passes of
decoding beyond the first :data:`FREE_WORK`.  A request is charged one unit when it arrives (its
entry: a request that fails early, a wrong body, still costs one), then each image its cost once its
headers are read (frames and decoding work known, before any pixel is decoded), the entry unit counted
towards its first image.  So a photo costs 1 as before, a batch of 8 photos 8, a 16-frame GIF sent with
``model: InceptionV3`` about 150.  A video costs its sampled frames times the model's cost, plus its decoding
beyond what they include (:func:`video_decode_cost`: pixels, bitstream bytes and packets), charged once its
packets are indexed (a job: with each chunk, its share).

**Budgets** (:class:`Meter` charges every one of them; the first that refuses answers 429 ``rate_limited``
with ``Retry-After``, for the request or for one batch item):

* ``NSFW_RATE_LIMIT`` (:class:`RateLimiter`): a token bucket of cost units per client (its API key; its
  address without keys), ``RateLimit-*`` headers on every v1 answer.  The buckets live in the database
  when ``NSFW_DATABASE_URL`` is set (:mod:`nsfw_core.state.limits`), so replicas share them; in this
  process otherwise.
* The key's share of the machine (:class:`ShareLimiter`, ``NSFW_KEY_SHARE``, with API keys only): a
  bucket per key that refills at ``share x capacity`` units a second, ``capacity`` being what this
  machine measured at start-up (the default model's images per second on all its CPUs).  It is
  work-conserving: a key that is alone uses the whole machine; only while another key has been charged
  within :data:`ACTIVE_S` does a key's empty bucket refuse it.  Per process (the machine is).
* In flight (:class:`~nsfw_core.admission.Admission`): one key's cost in flight at most ``share x
  NSFW_MAX_IN_FLIGHT`` units, so one key cannot fill admission and have everyone else answered 503.

A charge larger than a bucket's burst is allowed when the bucket is full and leaves it in debt (the
request runs, and the next waits for the debt to be refilled); a bucket never refuses an amount it could
never hold.  Keys are stored as their SHA-256 digest, never in clear.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import math
import threading
import time
from typing import Callable, Iterator, Protocol

from nsfw_core.base.errors import InputError
from nsfw_core.base.rates import Rate

MAX_CLIENTS = 100_000
FREE_WORK = 2_000_000  # pixel passes of decoding included in an image's first unit (a 2-megapixel photo)
WORK_PER_UNIT = 1_000_000  # pixel passes that cost about one default-model forward pass of CPU (bench/model_cost.py)
# Video decoding (video_decode_cost): what a sampled frame's unit includes (as a photo's), and what one unit
# buys beyond it: one default-model forward pass of CPU (bench/model_cost.py; BENCHMARKS.md, "Cost units")
VIDEO_FREE_PIXELS = 2_000_000
VIDEO_FREE_BYTES = 100_000
VIDEO_PIXELS_PER_UNIT = 10_000_000  # ordinary footage: 12 M measured
VIDEO_BYTES_PER_UNIT = {"h264": 150_000, "hevc": 90_000, "vp8": 100_000, "vp9": 65_000, "av1": 65_000}
VIDEO_BYTES_DEFAULT = 65_000  # measured: H.264 (CAVLC) 300 K, HEVC 95 K, VP9 66 K; H.264 halved for CABAC
VIDEO_PACKETS_PER_UNIT = 140  # 64x64 frames at 1000 fps: 144 measured
ACTIVE_S = 1.0  # a key charged within this many seconds counts as using the machine (ShareLimiter)
SHARE_BURST_S = 1.0  # a key's share bucket holds this many seconds of its share


def image_cost(frames: int, model_cost: float, work: int) -> float:
    """Cost units of one image: ``frames`` forward passes of a model costing ``model_cost`` each, plus its
    decoding work (pixel passes) beyond :data:`FREE_WORK`, one unit per :data:`WORK_PER_UNIT`."""
    return max(1, frames) * model_cost + max(0, work - FREE_WORK) / WORK_PER_UNIT


def video_decode_cost(samples: int, decoded: int, pixels: int, decoded_bytes: int = 0, codec: str = "") -> float:
    """Cost units of decoding a video beyond what its sampled frames include (each sampled frame's unit includes
    its own decoding, as a photo's: :data:`VIDEO_FREE_PIXELS`, :data:`VIDEO_FREE_BYTES`, one packet).

    Decoding costs by the pixel reconstructed (``decoded`` frames of ``pixels`` each) or by the byte of bitstream
    entropy-decoded (``decoded_bytes``; noise or a high bitrate costs several times more a pixel, HEVC and VP9
    more a byte than H.264: :data:`VIDEO_BYTES_PER_UNIT` by ``codec``), whichever is more (the two overlap: the
    pixel rate was measured on ordinary footage, bytes included), plus a cost per packet (a 1000 fps video of
    tiny frames); the rates are bench/model_cost.py's, one unit a default-model forward pass of CPU.  So a high
    frame rate, long groups of pictures beside the sample interval (a single keyframe, a job's sparse samples),
    large frames or a dense bitstream are charged, not only the frames judged."""
    n = max(1, samples)
    by_pixel = max(0, decoded * pixels - n * VIDEO_FREE_PIXELS) / VIDEO_PIXELS_PER_UNIT
    by_byte = max(0, decoded_bytes - n * VIDEO_FREE_BYTES) / VIDEO_BYTES_PER_UNIT.get(codec, VIDEO_BYTES_DEFAULT)
    return max(by_pixel, by_byte) + max(0, decoded - n) / VIDEO_PACKETS_PER_UNIT


def digest(client: str) -> bytes:
    """How a client key is stored: its SHA-256 digest."""
    return hashlib.sha256(client.encode("utf-8", "surrogatepass")).digest()


KEY_ID_PREFIX = "key:"
BUDGET_PREFIX = "client:"


def client_budget(client_id: str) -> str:
    """The name a client's budgets go by (its rate-limit and share buckets, its cost in flight): ``client:`` and
    its database id (:func:`nsfw_core.http.guard.client_id`: a hash of its API key, else of its address), so
    that a video job, which keeps only that id, charges its frames to the same budgets as its client's
    requests."""
    return BUDGET_PREFIX + client_id


def key_id(api_key: str) -> str:
    """The name a key (a client's, a reviewer's, an admin's) goes by where the key itself must not appear (webhook
    events, recorded decisions, logs): ``key:`` and the first 16 hex digits of its SHA-256
    (``printf %s "$KEY" | sha256sum | cut -c1-16``)."""
    return KEY_ID_PREFIX + hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


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
    retry_after_s: int  # until the charge would be allowed (0 when allowed)

    def headers(self, rate: Rate) -> dict[str, str]:
        out = {"RateLimit-Limit": str(rate.burst), "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(self.reset_s)}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


def refill(tokens: float, at: float, now: float, rate: Rate) -> float:
    """A bucket's tokens at ``now``: what it held at ``at`` plus the refill, up to the burst."""
    return min(float(rate.burst), tokens + max(0.0, now - at) * rate.per_second)


def settle(tokens: float, units: float, slack: float, rate: Rate) -> tuple[bool, float, Decision]:
    """The rule every bucket store applies to a refilled bucket: a charge of ``units`` is allowed when the
    bucket holds ``min(units, burst) - slack`` (``slack``: what this request already paid at its entry),
    and may leave it in debt.  (allowed, tokens after, the decision with its headers' figures)."""
    need = min(units, float(rate.burst)) - slack
    allowed = tokens >= need - 1e-9
    if allowed:
        tokens -= units
    reset = math.ceil(max(0.0, rate.burst - tokens) / rate.per_second)
    retry = 0 if allowed else max(1, math.ceil((need - tokens) / rate.per_second))
    return allowed, tokens, Decision(allowed, max(0, int(tokens)), reset, retry)


class BucketStore(Protocol):
    """Where a limiter's buckets live: this process (:class:`MemoryBuckets`) or the database
    (:class:`nsfw_core.state.limits.DatabaseBuckets`, shared by replicas)."""

    shared: bool  # True when the store is the database (calls block: run them off the event loop)

    def take(self, key: bytes, units: float, slack: float, rate: Rate) -> Decision: ...


class MemoryBuckets:
    """Token buckets in this process, by key digest; thread-safe; ``clock`` injectable for tests."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[bytes, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: bytes, units: float, slack: float, rate: Rate) -> Decision:
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_CLIENTS:
                    self._forget_full(now, rate)
                bucket = self._buckets[key] = _Bucket(float(rate.burst), now)
            _, bucket.tokens, decision = settle(refill(bucket.tokens, bucket.at, now, rate), units, slack, rate)
            bucket.at = now
        return decision

    def _forget_full(self, now: float, rate: Rate) -> None:
        full_after = rate.burst / rate.per_second
        for key in [k for k, b in self._buckets.items()
                    if now - b.at >= full_after + max(0.0, -b.tokens) / rate.per_second]:
            del self._buckets[key]
        while len(self._buckets) >= MAX_CLIENTS:  # all busy: forget the oldest
            del self._buckets[min(self._buckets, key=lambda k: self._buckets[k].at)]


class RateLimiter:
    """Token buckets of cost units by client key (NSFW_RATE_LIMIT); see the module docstring."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic, *,
                 store: BucketStore | None = None, scope: str = "rate", what: str = "cost units") -> None:
        self.rate = rate
        self.store: BucketStore = store if store is not None else MemoryBuckets(clock)
        self.scope = scope  # keeps this limiter's buckets apart from another's in a shared store (the 429's limit)
        self.what = what

    @property
    def shared(self) -> bool:
        return self.store.shared

    def take(self, client: str, units: float = 1.0, slack: float = 0.0) -> Decision:
        """Charge ``units`` to ``client``'s bucket (if it holds them)."""
        return self.store.take(digest(f"{self.scope}:{client}"), units, slack, self.rate)

    def check(self, client: str, units: float = 1.0, slack: float = 0.0) -> dict[str, str]:
        """The headers for an allowed charge; :class:`RateLimited` (429) when the bucket cannot pay it."""
        decision = self.take(client, units, slack)
        headers = decision.headers(self.rate)
        if not decision.allowed:
            raise RateLimited(f"rate limit exceeded ({self.rate} {self.what}); retry in {decision.retry_after_s} s",
                              headers, retry_after=decision.retry_after_s, limit=self.scope)
        return headers


class ShareLimiter:
    """One key's share of the machine: ``share x capacity`` cost units a second, enforced only while another
    key is active (charged within :data:`ACTIVE_S`); in this process.  ``capacity`` (units a second) is
    set once the default model is loaded and measured (:meth:`set_capacity`); until then nothing is limited.
    """

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.clock = clock
        self.capacity: float | None = None
        self.rate: Rate | None = None
        self._buckets: dict[bytes, _Bucket] = {}
        self._seen: dict[bytes, float] = {}  # when each key was last charged (insertion order: oldest first)
        self._lock = threading.Lock()
        self.refused = 0

    def set_capacity(self, units_per_second: float) -> None:
        self.capacity = units_per_second
        per_second = max(self.share * units_per_second, 0.01)
        self.rate = Rate(per_second, max(1, math.ceil(per_second * SHARE_BURST_S)))

    def _other_active(self, key: bytes, now: float) -> bool:
        for other in reversed(self._seen):  # most recently charged first
            if now - self._seen[other] > ACTIVE_S:
                return False
            if other != key:
                return True
        return False

    def take(self, client: str, units: float, slack: float = 0.0) -> Decision | None:
        """Charge ``units``; the decision, or None while no capacity is known (or share is 1: no limit)."""
        rate = self.rate
        if rate is None or self.share >= 1.0:
            return None
        key = digest(client)
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_CLIENTS:
                    self._forget(now)
                bucket = self._buckets[key] = _Bucket(float(rate.burst), now)
            tokens = refill(bucket.tokens, bucket.at, now, rate)
            allowed, after, decision = settle(tokens, units, slack, rate)
            if not allowed and not self._other_active(key, now):  # alone: the machine is its to use
                allowed, after = True, max(0.0, tokens - units)
                decision = dataclasses.replace(decision, allowed=True, retry_after_s=0)
            if allowed:
                bucket.tokens, bucket.at = after, now
                self._seen.pop(key, None)
                self._seen[key] = now
            else:
                bucket.tokens, bucket.at = tokens, now
                self.refused += 1
        return decision

    def _forget(self, now: float) -> None:
        for key in [k for k, t in self._seen.items() if now - t > 3600.0]:
            self._seen.pop(key, None)
            self._buckets.pop(key, None)
        while len(self._buckets) >= MAX_CLIENTS:
            key = next(iter(self._seen), None) or next(iter(self._buckets))
            self._seen.pop(key, None)
            self._buckets.pop(key, None)


class Meter:
    """What one API request has cost so far; :meth:`charge` draws on its client's budgets.

    Made by the guard (:func:`nsfw_core.http.guard.guard`) once the client is known, and current for the
    rest of the request (:func:`current`, a context variable: batch items' tasks and the worker threads that
    read an image's headers see it).  ``entry``: the unit charged on arrival, counted towards the first image.
    """

    def __init__(self, client: str, key_id: str | None, limiter: RateLimiter | None,
                 share: ShareLimiter | None, entry: float = 1.0) -> None:
        self.client = client
        self.key_id = key_id  # the API key's id (key_id()), None without API keys
        self.limiter = limiter
        self.share = share
        self.credit = entry  # paid at entry, not yet spent on an image
        self.admitted = 0.0  # units its request holds in flight for its images (one each; the guard's admitted())
        self.charged = 0.0
        # NSFW_RATE_LIMIT's headers for the answer: updated in place by each charge, so the answer tells what
        # is left after the whole request (None without a rate limit)
        self.headers: dict[str, str] | None = {} if limiter is not None else None
        self._lock = threading.Lock()

    def enter(self) -> dict[str, str] | None:
        """Charge the entry unit (blocking when the buckets are in the database); the RateLimit headers (the
        same dict, updated by later charges)."""
        self._charge(self.credit, 0.0)
        return self.headers

    def charge(self, units: float) -> None:
        """Charge an image of ``units`` (its share of the entry credit first); 429 when a budget refuses.

        Blocking when the buckets are in the database: call it in a worker thread."""
        with self._lock:
            slack = min(self.credit, units)
            self.credit -= slack
        extra = units - slack
        if extra <= 1e-9:
            return
        try:
            self._charge(extra, slack)
        except RateLimited:
            with self._lock:
                self.credit += slack
            raise

    def charge_more(self, units: float) -> None:
        """Charge ``units`` of work the request does beyond its images (an explanation's occluded forward
        passes, ``POST /v1/explain``), with everything it paid so far as slack: a request whose whole cost is
        more than a burst runs from a full bucket and leaves it in debt, as one large image does.  429 when a
        budget refuses; blocking when the buckets are in the database."""
        if units <= 1e-9:
            return
        with self._lock:
            slack = self.charged
        self._charge(units, slack)

    def _charge(self, units: float, slack: float) -> dict[str, str] | None:
        headers = None
        if self.limiter is not None:
            headers = self.limiter.check(self.client, units, slack)
            if self.headers is not None:
                self.headers.update(headers)
        if self.share is not None:
            decision = self.share.take(self.client, units, slack)
            if decision is not None and not decision.allowed:
                retry = decision.retry_after_s
                raise RateLimited(f"this client's share of the machine is in use (NSFW_KEY_SHARE={self.share.share:g}"
                                  f" of {self.share.capacity or 0:.0f} cost units a second); retry in {retry} s",
                                  {**(headers or {}), "Retry-After": str(retry)}, retry_after=retry, limit="share")
        with self._lock:
            self.charged += units
        return headers


_current: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("nsfw_meter", default=None)


def current() -> Meter | None:
    """The meter of the request being served in this context (None outside the API: pages, CLI)."""
    return _current.get()


def bind(meter: Meter) -> None:
    """Make ``meter`` the current one for the rest of this request (:func:`request_scope`)."""
    _current.set(meter)


@contextlib.contextmanager
def request_scope() -> Iterator[None]:
    """One request's block (the API's dispatcher): no meter at its start, none left after it."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)
