"""Webhooks: each review decision, and each undo, POSTed to ``NSFW_WEBHOOK_URL``, signed, retried, never lost.

Events: ``review.decided`` when a reviewer decides an item (under double review: when the votes agree or an
admin decides), ``review.undone`` when the decision is taken back (the item is open again: a receiver that
acted on "safe" must stop trusting it; ``undone`` says what was taken back).  ``review`` names the item by
its creator's review id (``rv_...``).  Each carries ``client_key_id``, the id of the API key whose request
queued the image (:func:`nsfw_core.ratelimit.key_id`, the creator's; null without API keys), so a receiver
serving several clients knows whose image it is.  An audit item's events are blind like the item: no model
verdict (:func:`review_dict`) and no ``client_key_id`` (the server's sample is no client's).

Outbox: when a decision (an undo) is recorded (:meth:`~nsfw_core.state.review.ReviewQueue.decide`,
:meth:`~nsfw_core.state.review.ReviewQueue.undo`), the event is written to the ``webhook_outbox`` table
*in the same transaction* (a hook), so a decision without its event, or an event without its decision,
cannot exist.  A background task (:class:`Deliverer`, started with the API) runs
``NSFW_WEBHOOK_CONCURRENCY`` deliveries at once: each takes a due row, POSTs it and records
``delivered_at``; events never tried go before retries, so a receiver that fails (or hangs until the
deadline) on an old event holds one delivery, not the newer events.  One item's events are delivered in
the order they happened: its ``review.undone`` is not sent before its ``review.decided`` was delivered
(or given up after ``MAX_ATTEMPTS``), so a receiver never ends on a decision that was taken back.  A failure (connection
error, timeout, a status other than 2xx) schedules that event's next attempt with exponential backoff
(:func:`backoff`: 1 s, 2 s, 4 s ... capped at 10 minutes, with jitter).  Rows survive restarts: a
server that stops between the decision and the delivery delivers on its next start; they are deleted,
delivered or not, with the review items they are about (``NSFW_REVIEW_RETENTION_DAYS``).  Delivery is at
least once: a receiver may see an event twice (a crash after its 2xx and before ``delivered_at`` was
written) and must use the event ``id`` as its idempotency key (also in the ``NSFW-Event-Id`` header).
With several replicas each takes rows under a short claim (the next attempt time moves forward before
the POST; ``SKIP LOCKED`` on PostgreSQL).  ``/metrics`` has the deliveries, failures, the lag from the
decision to the delivery, and the backlog.

Delivery goes through the SSRF-safe fetcher's address checks (:mod:`nsfw_core.images.fetch`): the host's
addresses must be public unless listed in ``NSFW_ALLOW_PRIVATE_HOSTS``, and the socket is opened to
the checked address.  Redirects are not followed (a 3xx is a failure).

Signature (like Stripe's): header ``NSFW-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 with ``NSFW_WEBHOOK_SECRET`` over ``f"{t}.".encode() + body``.  A receiver recomputes it
over the raw body, compares in constant time, and refuses a ``t`` too far from its clock (replays);
see :func:`verify`.  Without a secret the header is not sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import logging
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Mapping

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.settings import FetchPolicy
from nsfw_core.images import fetch as _fetch
from nsfw_core.state.migrations import OUTBOX_TABLE, TABLE
from nsfw_core.state.review.items import Item, iso

if TYPE_CHECKING:
    from nsfw_core.state.db import Tx
    from nsfw_core.state.review import ReviewQueue

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "NSFW-Signature"
EVENT_HEADER = "NSFW-Event-Id"
EVENT_TYPE = "review.decided"
UNDONE_TYPE = "review.undone"
TOLERANCE_S = 300  # how far a receiver should accept t from its clock
BASE_DELAY_S = 1.0
MAX_DELAY_S = 600.0
MAX_ATTEMPTS = 20  # then the row stays undelivered (last_error says why); about 2 hours of tries
CLAIM_S = 60.0  # a row taken for delivery is not taken again for this long (another replica, a crash)
POLL_S = 1.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``NSFW-Signature`` header value for ``body``: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = TOLERANCE_S,
           now: float | None = None) -> bool:
    """What a receiver does: True when ``header`` signs ``body`` with ``secret`` and ``t`` is recent."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))


def backoff(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before attempt ``attempts + 1``: 1, 2, 4 ... up to 10 minutes, +-20 % jitter."""
    delay = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** max(0, attempts - 1))
    return float(delay * (0.8 + 0.4 * rand()))


def review_dict(item: Item) -> dict[str, Any]:
    """An item as API v1 shows it (the contract's ``Review``); an audit item blind: without the model's verdict.

    ``decided_by`` is here for the webhook events (the operator's); an API answer shows it only to reviewer and
    admin keys (:mod:`nsfw_core.http.reviews`), never to a client key (:mod:`nsfw_core.http.v1`).
    """
    # the review id the item's creator was given (unguessable; issue 29), the queue's number before that
    out: dict[str, Any] = {"id": item.public_id or str(item.id),
                           "status": "pending" if item.status == "skipped" else item.status,
                           "sha256": item.sha256, "created_at": iso(item.created_at)}
    if item.blind:
        out["kind"] = item.kind
    else:
        out["verdict"] = item.verdict
    if item.status == "decided":
        out.update(label=item.decision, decided_by=item.decided_by, decided_at=iso(item.decided_at))
    return out


def event_for(item: Item, client: str | None = None, *, kind: str = EVENT_TYPE,
              undone: Item | None = None) -> dict[str, Any]:
    """The event about ``item`` (``undone``: the decision an undo took back)."""
    event: dict[str, Any] = {"id": f"evt_{uuid.uuid4().hex}", "type": kind, "created_at": iso(time.time()),
                             "client_key_id": client, "review": review_dict(item)}
    if undone is not None:
        event["undone"] = {"label": undone.decision, "decided_by": undone.decided_by,
                           "decided_at": iso(undone.decided_at)}
    return event


def _client(tx: Tx, item: Item) -> str | None:
    """The creator's API key id (``client_key``, migration 8); None without keys and for an audit item (the
    server's sample: as blind in its events as to its reviewers)."""
    if item.blind:
        return None
    row = tx.one(f"SELECT client_key FROM {TABLE} WHERE id = ?", (item.id,))
    return str(row[0]) if row is not None and row[0] else None


def _write(tx: Tx, item_id: int, event: dict[str, Any]) -> None:
    now = time.time()
    tx.run(f"INSERT INTO {OUTBOX_TABLE} (event_id, item_id, payload, created_at, attempts, next_attempt_at) "
           "VALUES (?, ?, ?, ?, 0, ?)", (event["id"], item_id, json.dumps(event, separators=(",", ":")), now, now))


def outbox_hook(tx: Tx, item: Item) -> None:
    """The decision hook: the ``review.decided`` event into the outbox, in the decision's transaction."""
    _write(tx, item.id, event_for(item, _client(tx, item)))


def undo_hook(tx: Tx, item: Item, was: Item) -> None:
    """The undo hook: the ``review.undone`` event into the outbox, in the undo's transaction."""
    _write(tx, item.id, event_for(item, _client(tx, item), kind=UNDONE_TYPE, undone=was))


def hook_up(queue: ReviewQueue) -> None:
    """Write the events of ``queue``'s decisions and undos to the outbox (once)."""
    if outbox_hook not in queue.decision_hooks:
        queue.decision_hooks.append(outbox_hook)
    if undo_hook not in queue.undo_hooks:
        queue.undo_hooks.append(undo_hook)


class DeliveryFailed(NSFWError):
    status = 502
    code = "webhook_failed"


def post(url: str, body: bytes, headers: Mapping[str, str], policy: FetchPolicy,
         resolver: _fetch.Resolver | None = None) -> int:
    """POST ``body`` to ``url`` through the fetcher's address checks (pinned address, one deadline,
    no redirects); the status.  Raises the fetcher's errors (ForbiddenAddress, Upstream*)."""
    deadline = _fetch._Deadline(policy.timeout)
    target = _fetch._parse(url, policy)
    allow = _fetch._AllowList.parse(policy.allow_private_hosts)
    addresses = _fetch._checked_addresses(target, resolver or _fetch.system_resolver, allow, deadline)
    cls = _fetch._PinnedHTTPSConnection if target.parts.scheme == "https" else _fetch._PinnedHTTPConnection
    conn = cls(target.host, target.port, addresses, policy.connect_timeout, deadline)
    try:
        conn.request("POST", target.request_path, body=body,
                     headers={"User-Agent": _fetch.DEFAULT_USER_AGENT, "Content-Type": "application/json",
                              "Connection": "close", **headers})
        response = conn.getresponse()
        response.read(64 * 1024)
        return response.status
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _fetch._as_upstream_error(exc) from exc
    finally:
        conn.close()


class Deliverer:
    """Takes due outbox rows and POSTs them; ``run()`` is the background task (``concurrency`` deliveries at
    once), ``deliver_one()`` / ``deliver_due()`` one delivery / a pass.  ``observe(delivered, lag_s)`` is told
    each attempt's outcome and, once delivered, the seconds since the event was written (the metrics)."""

    def __init__(self, queue: ReviewQueue, url: str, secret: str, policy: FetchPolicy, *,
                 clock: Callable[[], float] = time.time, resolver: _fetch.Resolver | None = None,
                 concurrency: int = 4, observe: Callable[[bool, float | None], None] | None = None) -> None:
        self.queue = queue
        self.url = url
        self.secret = secret
        self.policy = policy
        self.clock = clock
        self.resolver = resolver
        self.concurrency = max(1, int(concurrency))
        self.observe = observe
        self.wake = asyncio.Event()
        self.delivered = 0
        self.failures = 0
        self._counts = threading.Lock()

    def _take(self) -> tuple[int, str, str, int, float] | None:
        """Claim a due row (its next attempt moved CLAIM_S ahead): events never tried first, then the oldest
        retry, but never an item's event while an earlier one of the same item is still to be delivered (in
        flight or waiting for its retry); None when none is due."""
        now = self.clock()
        skip = self.queue.backend.skip_locked
        with self.queue.pool.transaction() as tx:
            row = tx.one(
                f"UPDATE {OUTBOX_TABLE} SET next_attempt_at = ?, attempts = attempts + 1 WHERE id = "
                f"(SELECT o.id FROM {OUTBOX_TABLE} o WHERE o.delivered_at IS NULL AND o.next_attempt_at <= ? "
                f"AND o.attempts < ? AND NOT EXISTS (SELECT 1 FROM {OUTBOX_TABLE} e WHERE e.item_id = o.item_id "
                "AND e.id < o.id AND e.delivered_at IS NULL AND e.attempts < ?) "
                f"ORDER BY o.attempts, o.id LIMIT 1{skip}) AND delivered_at IS NULL "
                "RETURNING id, event_id, payload, attempts, created_at",
                (now + CLAIM_S, now, MAX_ATTEMPTS, MAX_ATTEMPTS))
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]), int(row[3]), float(row[4]))

    def _record(self, row_id: int, attempts: int, error: str | None) -> None:
        now = self.clock()
        with self.queue.pool.transaction() as tx:
            if error is None:
                tx.run(f"UPDATE {OUTBOX_TABLE} SET delivered_at = ?, last_error = NULL WHERE id = ?", (now, row_id))
            else:
                tx.run(f"UPDATE {OUTBOX_TABLE} SET next_attempt_at = ?, last_error = ? WHERE id = ?",
                       (now + backoff(attempts), error[:500], row_id))

    def deliver_one(self) -> bool:
        """Deliver (or fail) one due row; False when none was due.  Runs in a thread."""
        taken = self._take()
        if taken is None:
            return False
        row_id, event_id, payload, attempts, created_at = taken
        body = payload.encode()
        headers = {EVENT_HEADER: event_id}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body, int(self.clock()))
        error: str | None
        try:
            status = post(self.url, body, headers, self.policy, self.resolver)
            error = None if 200 <= status < 300 else f"the receiver answered {status}"
        except NSFWError as exc:
            error = f"{exc.code}: {exc.message}"
        self._record(row_id, attempts, error)
        with self._counts:
            if error is None:
                self.delivered += 1
            else:
                self.failures += 1
        if self.observe is not None:
            self.observe(error is None, max(0.0, self.clock() - created_at) if error is None else None)
        if error is None:
            log.info("webhook %s delivered (attempt %d)", event_id, attempts)
        else:
            log.warning("webhook %s attempt %d failed: %s", event_id, attempts, error)
        return True

    def deliver_due(self, limit: int = 100) -> int:
        """Deliver up to ``limit`` due rows, one after the other; how many were tried."""
        n = 0
        while n < limit and self.deliver_one():
            n += 1
        return n

    async def run(self) -> None:
        """The background task: ``concurrency`` deliveries at once, each taking the next due row, and waiting
        (for a wake-up or POLL_S seconds) when none is due."""
        executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="nsfw-webhook")
        try:
            await asyncio.gather(*(self._worker(executor) for _ in range(self.concurrency)))
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _worker(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if await loop.run_in_executor(executor, self.deliver_one):
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database down: try again later
                log.warning("webhook delivery failed: %r", exc)
            try:
                await asyncio.wait_for(self.wake.wait(), POLL_S)
            except TimeoutError:
                pass
            self.wake.clear()

    def backlog(self) -> tuple[int, float | None]:
        """(events not delivered and still to be tried, when the oldest of them was written or None)."""
        with self.queue.pool.transaction(write=False) as tx:
            row = tx.one(f"SELECT COUNT(*), MIN(created_at) FROM {OUTBOX_TABLE} "
                         "WHERE delivered_at IS NULL AND attempts < ?", (MAX_ATTEMPTS,))
        if row is None:
            return 0, None
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    def pending(self) -> list[dict[str, Any]]:
        """The outbox rows not delivered yet (tests, operators)."""
        with self.queue.pool.transaction(write=False) as tx:
            rows = tx.run(f"SELECT event_id, item_id, attempts, last_error FROM {OUTBOX_TABLE} "
                          "WHERE delivered_at IS NULL ORDER BY id")
        return [{"event_id": r[0], "item_id": r[1], "attempts": r[2], "last_error": r[3]} for r in rows]
