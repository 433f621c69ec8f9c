"""The review queue itself: enqueue, claim, decide, skip, release, undo, purge, and the reads.

Concurrency guarantees
----------------------
- :meth:`ReviewQueue.enqueue`: a partial unique index on ``sha256`` where the status is
  pending or claimed, with ``INSERT … ON CONFLICT DO NOTHING``, so an image is
  queued at most once while open, even from two processes at the same time; it
  may be queued again once decided.
- :meth:`ReviewQueue.claim`: ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)`` on
  PostgreSQL; on SQLite the same statement inside ``BEGIN IMMEDIATE`` (writers
  are serialised).  Two reviewers never get the same item.
- :meth:`~ReviewQueue.decide` / :meth:`~ReviewQueue.skip` / :meth:`~ReviewQueue.release` only act on an
  item that is pending or claimed by that reviewer; otherwise :class:`ReviewConflict` (409).

Times are seconds since the epoch from the queue's clock (``time.time`` unless
one is injected), stored as double precision.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from nsfw_core.base.errors import BadRequest, NSFWError
from nsfw_core.base.labels import check_label, to_binary
from nsfw_core.base.settings import ReviewConfig, Settings
from nsfw_core.images.fetch import is_url
from nsfw_core.state.db import Pool, Tx, backend_for
from nsfw_core.state.errors import ItemNotFound, ReviewConflict, ReviewError, ReviewUnavailable, TooManyClaims
from nsfw_core.state.migrations import MIGRATIONS, OUTBOX_TABLE, TABLE, TICKETS_TABLE, VOTES_TABLE, Migration, migrate
from nsfw_core.state.remembered import forget_decision, remember_decision
from nsfw_core.state.review import audit as audit
from nsfw_core.state.review import export as export
from nsfw_core.state.review.items import (
    CLAIMED,
    DECIDED,
    MAX_SOURCE_LENGTH,
    PENDING,
    Item,
    ReviewedItem,
    check_reviewer,
    check_scores,
)

DEFAULT_LEASE_SECONDS = 300
DEFAULT_RETENTION_DAYS = 30
PURGE_INTERVAL = 3600.0  # purge_if_due() runs purge() at most this often per queue object
QUOTA_WINDOW_S = 3600.0  # NSFW_REVIEW_QUOTA counts the items a client added in this window
TICKET_PREFIX = "rv_"
TICKET_RE = re.compile(r"^rv_[A-Za-z0-9_-]{22}$")  # rv_ + 128 random bits, URL-safe base64
TICKETS_VERSION = 7  # the schema version that has clients, audiences and tickets
KEY_ID_VERSION = 8  # the schema version that has the API key id of an item's creator (client_key)
DECIDING_MS_VERSION = 14  # the schema version that keeps a video item's deciding frame's time (deciding_ms)
AUDIT_VERSION = 9  # the schema version that has audit items, double-review votes and traffic counts
MEDIA = ("image", "video")  # what an item holds (migration 11: videos, issue 27)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class QuotaSpent(NSFWError):
    """The client added as many items as NSFW_REVIEW_QUOTA allows in the last hour: this one is not queued."""

    status = 429
    code = "review_quota"


def new_ticket() -> str:
    """An unguessable review id (128 random bits)."""
    return TICKET_PREFIX + secrets.token_urlsafe(16)


def _check_kind(kind: str, probability: float, reviews: int) -> None:
    if kind not in audit.KINDS or not 0 < float(probability) <= 1 or int(reviews) not in (1, 2):
        raise BadRequest(f"kind {kind!r}, probability {probability!r}, reviews {reviews!r}: not an item's")


def should_queue(verdict: str, config: ReviewConfig) -> bool:
    """True when an image with this verdict goes to human review (``NSFW_REVIEW_VERDICTS``)."""
    return verdict in config.verdicts


_COLUMNS = ("id", "sha256", "source", "scores", "model", "verdict", "created_at", "queued_at", "status",
            "claimed_by", "lease_until", "decision", "decided_by", "decided_at", "skips", "client", "audience",
            "matched", "public_id",  # migration 7 (issue 29)
            "kind", "probability", "reviews_needed", "escalated")  # migration 9 (issue 25: audit, double review)
_SELECT = ", ".join(_COLUMNS)
_SELECT_META = _SELECT + ", image IS NOT NULL"
_SELECT_FULL = _SELECT_META + ", image"
_OPEN = f"(status = '{PENDING}' OR (status = '{CLAIMED}' AND lease_until < ?))"


def _item(row: Sequence[Any]) -> Item:
    values = dict(zip(_COLUMNS, row, strict=False))  # the image columns, if any, follow
    values["scores"] = json.loads(values["scores"])
    values["id"] = int(values["id"])
    values["probability"], values["escalated"] = float(values["probability"]), bool(values["escalated"])
    has_image = bool(row[len(_COLUMNS)]) if len(row) > len(_COLUMNS) else False
    image = row[len(_COLUMNS) + 1] if len(row) > len(_COLUMNS) + 1 else None
    return Item(**values, image=bytes(image) if image is not None else None, has_image=has_image)


class ReviewQueue:
    """The review queue over SQLite or PostgreSQL; one object may be shared by threads.

    ``ReviewQueue(url, data_dir=...)`` or :meth:`from_config`.  Opening it
    creates and migrates the schema.  ``clock`` (seconds since the epoch) is
    injectable for tests.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        data_dir: str | Path | None = None,
        store_uploads: bool = False,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[Migration] = MIGRATIONS,
        pool: Pool | None = None,
    ) -> None:
        # ``pool``: a pool the caller owns and shares (the process context's one pool on the database);
        # without it the queue opens and closes its own.
        self._own_pool = pool is None
        self.backend = backend_for(url, data_dir) if pool is None else pool.backend
        self.store_uploads = bool(store_uploads)
        self.lease_seconds = float(lease_seconds)
        self.retention_days = float(retention_days)
        self.clock = clock
        self._pool = Pool(self.backend) if pool is None else pool
        self._last_purge = 0.0
        self.schema = max((m.version for m in migrations), default=0)  # an older schema: only enqueue() works
        # Called inside decide()'s transaction with (tx, decided item): the webhooks' outbox (nsfw_core.state.webhooks)
        self.decision_hooks: list[Callable[[Tx, Item], None]] = []
        # Called inside undo()'s transaction with (tx, the item as it is now, the item as it was decided)
        self.undo_hooks: list[Callable[[Tx, Item, Item], None]] = []
        self.backend.recover()
        with self._connection() as conn:
            try:
                migrate(self.backend, conn, migrations, clock)
            except self.backend.errors as exc:
                raise ReviewUnavailable(f"cannot prepare the review database ({self.backend.describe()}): "
                                        f"{exc}") from exc

    @classmethod
    def from_config(cls, config: ReviewConfig, **overrides: Any) -> "ReviewQueue":
        """From the review part of the settings (``NSFW_DATABASE_URL``, ``NSFW_REVIEW_*``, ``NSFW_DATA_DIR``)."""
        kwargs: dict[str, Any] = {
            "data_dir": config.data_dir,
            "store_uploads": config.store_uploads,
            "lease_seconds": config.lease_seconds,
            "retention_days": config.retention_days,
        }
        kwargs.update(overrides)
        return cls(config.database_url or None, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "ReviewQueue":
        """:meth:`from_config` with ``settings.review_config``; kept until its callers pass the config."""
        return cls.from_config(settings.review_config, **overrides)

    def __repr__(self) -> str:
        return f"ReviewQueue({self.backend.describe()})"

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def close(self) -> None:
        if self._own_pool:
            self._pool.close()

    def __enter__(self) -> "ReviewQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        with self._pool.connection() as conn:
            yield conn

    def _tx(self, write: bool = True) -> contextlib.AbstractContextManager[Tx]:
        """One transaction; database errors become :class:`ReviewUnavailable`."""
        return self._pool.transaction(write)

    @property
    def pool(self) -> Pool:
        """The connection pool of the one database (the webhooks' outbox shares it)."""
        return self._pool

    def _now(self) -> float:
        return float(self.clock())

    def _lease(self, lease_seconds: float | None) -> float:
        lease = self.lease_seconds if lease_seconds is None else float(lease_seconds)
        if not lease > 0:
            raise BadRequest("the lease must be positive")
        return lease

    # ------------------------------------------------------------ writes

    def enqueue(self, sha256: str, source: str, scores: Mapping[str, float], model: str, verdict: str,
                image_bytes: bytes | None = None, phash: str | None = None, *, kind: str = audit.REVIEW,
                probability: float = 1.0, reviews: int = 1, media: str = "image", deciding_ms: int | None = None
                ) -> int:
        """Queue an image for review; the id of the open item for this sha256 if there is one already.

        The bytes are kept when the queue stores uploads (``store_uploads``), always for a URL (the reviewer
        sees the bytes that were classified, never the URL fetched again) and always for an audit item
        (reviewed blind: there are no scores to decide from).  ``phash``: the image's perceptual hashes (hex,
        comma-separated, :func:`nsfw_core.images.phash.join_hex`), remembered with its decision.  ``kind``
        ``audit``: a sampled automatic verdict, ``probability`` the rate that chose it; ``reviews`` 2: two
        reviewers decide it independently (:mod:`.audit`).  ``media`` "video": a video, its hashes one per
        sampled frame (matched as a whole, :mod:`nsfw_core.state.vpdq`), its bytes kept by the same rules.
        """
        if self.schema >= TICKETS_VERSION:
            return self.enqueue_for("", sha256, source, scores, model, verdict, image_bytes=image_bytes,
                                    phash=phash, kind=kind, probability=probability, reviews=reviews,
                                    media=media, deciding_ms=deciding_ms)[0]
        _check_kind(kind, probability, reviews)
        if media != "image":
            raise ReviewUnavailable(f"a video needs the review database at schema version 11 (this queue: "
                                    f"{self.schema})")
        sha256, source, scores_json, image = self._checked(sha256, source, scores, image_bytes, kind)
        now = self._now()
        # the phash column only when there are hashes: a queue on a schema before version 4 still works
        extra: tuple[str, ...] = (phash,) if phash else ()
        extra_column, extra_value = (", phash", ", ?") if phash else ("", "")
        for _ in range(5):
            with self._tx() as tx:
                row = tx.one(
                    f"INSERT INTO {TABLE} (sha256, source, scores, model, verdict, created_at, queued_at, "
                    f"status, skips, image{extra_column}) VALUES (?, ?, ?, ?, ?, ?, ?, '{PENDING}', 0, ?"
                    f"{extra_value}) ON CONFLICT (sha256) WHERE status IN ('{PENDING}', '{CLAIMED}') DO NOTHING "
                    f"RETURNING id",
                    (sha256, source, scores_json, str(model), str(verdict), now, now, image, *extra))
                if row is not None:
                    return int(row[0])
                row = tx.one(f"SELECT id FROM {TABLE} WHERE sha256 = ? AND status IN ('{PENDING}', '{CLAIMED}')",
                             (sha256,))
                if row is not None:
                    return int(row[0])
            # (PostgreSQL only) the open item was decided between the two statements: insert again.
        raise ReviewUnavailable("could not enqueue the item (concurrent changes); retry")

    def _checked(self, sha256: str, source: str, scores: Mapping[str, float], image_bytes: bytes | None,
                 kind: str = audit.REVIEW) -> tuple[str, str, str, bytes | None]:
        sha256 = str(sha256).lower()
        if not _SHA_RE.match(sha256):
            raise BadRequest(f"not a sha256 hex digest: {sha256[:80]!r}")
        source = str(source)[:MAX_SOURCE_LENGTH]
        scores_json = json.dumps(check_scores(scores), sort_keys=True)
        keep = image_bytes and (self.store_uploads or is_url(source) or kind == audit.AUDIT)
        return sha256, source, scores_json, (bytes(image_bytes) if keep and image_bytes else None)

    def enqueue_for(self, client: str, sha256: str, source: str, scores: Mapping[str, float], model: str,
                    verdict: str, *, image_bytes: bytes | None = None, phash: str | None = None, audience: str = "",
                    matched: str | None = None, quota: int = 0, kind: str = audit.REVIEW, probability: float = 1.0,
                    reviews: int = 1, media: str = "image", key_id: str | None = None,
                    deciding_ms: int | None = None) -> tuple[int, str]:
        """Queue an image for ``client`` (an API key's hash): ``(item id, the client's review id)``.

        The review id (:func:`new_ticket`) is unguessable and bound to this client: :meth:`ticket` finds the
        item again only for it.  An image already open for the same ``audience`` is not queued twice: the
        client joins that item (with a review id of its own; joining costs no quota).  ``audience``: '' (the
        decision protects every client) or ``client`` (the client's own thresholds queued it: the decision
        protects only it).  ``quota``: the most items ``client`` may add per hour (0: no limit); beyond it
        :class:`QuotaSpent` and nothing is queued.  ``matched``: the look-alike the model disagreed with (JSON),
        shown to the reviewer.  Bytes are kept as :meth:`enqueue` says.

        ``kind`` ``audit`` (issue 25, :mod:`.audit`): a sample the server drew, asked for by no client, so it is
        queued for the server (``client`` ''; the requester gets no review id), counts against no quota, and
        its decision protects every client (``audience`` ''); it shows no look-alike (reviewed blind).
        ``probability``: the rate that chose it; ``reviews`` 2: two reviewers decide it independently.
        ``media`` "video": a video (issue 27; ``phash`` holds one hash per sampled frame); ``deciding_ms``: when
        its deciding frame is shown (kept for a video only: its evidence is computed on that frame).
        ``key_id``: the id of the API key whose request queued it (:func:`nsfw_core.ratelimit.key_id`), which its
        webhook events carry as ``client_key_id`` (the creator's, like the event's review id); none for an
        audit item (the server's).
        """
        _check_kind(kind, probability, reviews)
        if media not in MEDIA:
            raise BadRequest(f"media {str(media)[:40]!r} is not one of {', '.join(MEDIA)}")
        sha256, source, scores_json, image = self._checked(sha256, source, scores, image_bytes, kind)
        client, audience = str(client), str(audience)
        if kind == audit.AUDIT:
            client, audience, quota, matched, key_id = "", "", 0, None, None
        # migration 8's, 9's and 11's columns only when they say something: a queue on an older schema still works
        optional = {"client_key": str(key_id) if key_id and self.schema >= KEY_ID_VERSION else None,
                    "kind": None if kind == audit.REVIEW else kind,
                    "probability": None if probability == 1 else float(probability),
                    "reviews_needed": None if reviews == 1 else int(reviews),
                    "media": None if media == "image" else media,  # migration 11's, only for a video
                    "deciding_ms": int(deciding_ms) if media == "video" and deciding_ms is not None
                    and int(deciding_ms) >= 0 and self.schema >= DECIDING_MS_VERSION else None}
        given = {k: v for k, v in optional.items() if v is not None}
        extra: tuple[Any, ...] = tuple(given.values())
        extra_column, extra_value = "".join(f", {k}" for k in given), ", ?" * len(given)
        open_ = f"status IN ('{PENDING}', '{CLAIMED}')"
        for _ in range(5):
            now = self._now()
            with self._tx() as tx:
                row = tx.one(f"SELECT id FROM {TABLE} WHERE sha256 = ? AND audience = ? AND {open_}",
                             (sha256, audience))
                ticket = new_ticket()
                if row is None:
                    if quota > 0:
                        added = tx.one(f"SELECT COUNT(*) FROM {TABLE} WHERE client = ? AND created_at > ?",
                                       (client, now - QUOTA_WINDOW_S))
                        if added is not None and int(added[0]) >= quota:
                            raise QuotaSpent(f"this API key added {int(added[0])} items to the review queue in "
                                             f"the last hour, its quota (NSFW_REVIEW_QUOTA={quota}); this image "
                                             "was not queued", limit=quota)
                    row = tx.one(
                        f"INSERT INTO {TABLE} (sha256, source, scores, model, verdict, created_at, queued_at, "
                        f"status, skips, image, phash, client, audience, matched, public_id{extra_column}) VALUES "
                        f"(?, ?, ?, ?, ?, ?, ?, '{PENDING}', 0, ?, ?, ?, ?, ?, ?{extra_value}) "
                        f"ON CONFLICT (sha256, audience) WHERE {open_} DO NOTHING RETURNING id",
                        (sha256, source, scores_json, str(model), str(verdict), now, now, image, phash or None,
                         client, audience, matched, ticket, *extra))
                    if row is None:
                        continue  # another request queued it meanwhile: join that item
                item_id = int(row[0])
                held = tx.one(f"SELECT ticket FROM {TICKETS_TABLE} WHERE item_id = ? AND client = ?",
                              (item_id, client))
                if held is not None:
                    return item_id, str(held[0])
                tx.run(f"INSERT INTO {TICKETS_TABLE} (ticket, item_id, client, created_at) VALUES (?, ?, ?, ?)",
                       (ticket, item_id, client, now))
                return item_id, ticket
        raise ReviewUnavailable("could not enqueue the item (concurrent changes); retry")

    def ticket(self, ticket: str) -> tuple[int, str] | None:
        """The item a review id names and the client it was given to, or None (unknown, malformed, purged)."""
        if not isinstance(ticket, str) or not TICKET_RE.match(ticket):
            return None
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT item_id, client FROM {TICKETS_TABLE} WHERE ticket = ?", (ticket,))
        return None if row is None else (int(row[0]), str(row[1]))

    def public_id(self, item_id: int) -> str:
        """The item's public review id (the one its creator got, the webhooks' and the reviewer API's); an item
        without one (queued before issue 29) gets one now, bound to no client (GET /v1/reviews answers it to
        no API key).  :class:`ItemNotFound` when the item is gone."""
        item_id = int(item_id)
        for _ in range(5):
            with self._tx() as tx:
                row = tx.one(f"SELECT public_id FROM {TABLE} WHERE id = ?", (item_id,))
                if row is None:
                    raise ItemNotFound(f"review item {item_id} does not exist (purged?)", item_id=item_id)
                if row[0]:
                    return str(row[0])
                ticket = new_ticket()
                if tx.one(f"UPDATE {TABLE} SET public_id = ? WHERE id = ? AND public_id IS NULL RETURNING id",
                          (ticket, item_id)) is not None:
                    tx.run(f"INSERT INTO {TICKETS_TABLE} (ticket, item_id, client, created_at) VALUES (?, ?, '', ?)",
                           (ticket, item_id, self._now()))
                    return ticket
            # another process gave it one meanwhile: read it
        raise ReviewUnavailable("could not give the item a review id (concurrent changes); retry")

    def claim(self, reviewer: str, lease_seconds: float | None = None, *,
              exclude: Iterable[int] = (), admin: bool = False, max_held: int | None = None) -> Item | None:
        """Claim the oldest pending (or lease-expired) item for ``reviewer``; None when none is left.

        ``exclude``: ids this reviewer does not want now (e.g. the ones they skipped).  Never an item the
        reviewer has voted on (double review); items two reviewers disagreed on only for an ``admin``, first.
        ``max_held``: :class:`TooManyClaims` when ``reviewer`` holds that many claimed items already, counted
        and claimed in one transaction under a lock on the reviewer's name (concurrent claims of one key, on
        any replica, cannot overshoot it).
        """
        reviewer = check_reviewer(reviewer)
        now = self._now()
        until = now + self._lease(lease_seconds)
        excluded = sorted({int(i) for i in exclude})
        not_in = f" AND id NOT IN ({', '.join('?' * len(excluded))})" if excluded else ""
        with self._tx() as tx:
            if max_held is not None:
                self.backend.lock_name(tx, "review-claims:" + reviewer)
                row = tx.one(f"SELECT COUNT(*) FROM {TABLE} WHERE status = '{CLAIMED}' AND claimed_by = ? "
                             "AND lease_until >= ?", (reviewer, now))
                held = int(row[0]) if row is not None else 0
                if held >= max_held:
                    raise TooManyClaims(f"this key holds {held} claimed items, the most at once is {max_held} "
                                        "(NSFW_REVIEW_MAX_HELD): decide one, or wait for a lease to run out "
                                        "(NSFW_REVIEW_LEASE_SECONDS)", held=held, limit=max_held)
            row = tx.one(
                f"UPDATE {TABLE} SET status = '{CLAIMED}', claimed_by = ?, lease_until = ? "
                f"WHERE id = (SELECT id FROM {TABLE} WHERE {_OPEN}{not_in}{audit.claimable(admin)} "
                f"ORDER BY {audit.claim_order(admin)} LIMIT 1{self.backend.skip_locked}) AND {_OPEN} "
                f"RETURNING {_SELECT_FULL}",
                (reviewer, until, now, *excluded, reviewer, now))
        return _item(row) if row is not None else None

    def _conflict(self, tx: Tx, item_id: int, reviewer: str, action: str) -> ReviewError:
        """Why ``action`` failed, naming the item by its review id (``rv_...``): the queue's own number, which
        counts the queue's items, is never in an answer (an item queued before review ids: its number)."""
        row = tx.one(f"SELECT status, claimed_by, decided_by, public_id FROM {TABLE} WHERE id = ?", (item_id,))
        if row is None:
            return ItemNotFound("that review item does not exist (purged?)")
        status, claimed_by, decided_by, public_id = row
        name = str(public_id) if public_id else str(item_id)
        if status == DECIDED:
            who = "you" if decided_by == reviewer else decided_by
            return ReviewConflict(f"cannot {action} item {name}: already decided by {who}", review_id=name)
        if status == CLAIMED and claimed_by != reviewer:
            return ReviewConflict(f"cannot {action} item {name}: claimed by another reviewer", review_id=name)
        return ReviewConflict(f"cannot {action} item {name} ({status})", review_id=name)

    def decide(self, item_id: int, reviewer: str, label: str, *, phash: str | None = None,
               seen: str | None = None, admin: bool = False) -> Item:
        """Record ``label`` for an item claimed by ``reviewer`` (or pending and unclaimed).

        ``seen``: the sha256 of the bytes the reviewer was shown.  Only when it is the item's own (the bytes
        that were classified) is the decision remembered, in the same transaction (:mod:`.remembered`): later
        copies of the image get it.  A decision made without seeing the image (an upload whose bytes were not
        kept, a URL that now serves other bytes) is recorded, and remembered for nothing.  ``phash``
        replaces the perceptual hashes the item kept from its request.  An item under double review takes
        the label as this reviewer's vote (:func:`.audit.vote`): the returned item is ``decided`` only once
        the votes agree (remembered by the same rule, for the reviewer whose vote decides it); an escalated
        one only an ``admin`` decides.
        """
        reviewer = check_reviewer(reviewer)
        label = check_label(label)
        item_id = int(item_id)
        with self._tx() as tx:
            now = self._now()
            locked = audit.lock(tx, self.backend, item_id)
            if locked is not None and (locked[0] > 1 or locked[1]):
                return self._vote(tx, item_id, reviewer, label, now, phash, seen, locked, admin)
            row = tx.one(
                f"UPDATE {TABLE} SET status = '{DECIDED}', decision = ?, decided_by = ?, decided_at = ?, "
                f"claimed_by = NULL, lease_until = NULL "
                f"WHERE id = ? AND (status = '{PENDING}' OR (status = '{CLAIMED}' AND claimed_by = ?)) "
                f"RETURNING {_SELECT_META}",
                (label, reviewer, now, item_id, reviewer))
            if row is None:
                raise self._conflict(tx, item_id, reviewer, "decide")
            item = _item(row)
            if seen is not None and seen == item.sha256:
                remember_decision(self.backend, tx, item_id, label, reviewer, now, phash)
            for hook in self.decision_hooks:
                hook(tx, item)
        return item

    def _vote(self, tx: Tx, item_id: int, reviewer: str, label: str, now: float, phash: str | None,
              seen: str | None, locked: tuple[int, bool, str, str | None], admin: bool) -> Item:
        """:meth:`decide` for an item under double review (its row locked)."""
        needed, escalated, status, claimed_by = locked
        if not (status == PENDING or (status == CLAIMED and claimed_by == reviewer)):
            raise self._conflict(tx, item_id, reviewer, "decide")
        outcome = audit.vote(tx, item_id, reviewer, label, now, needed=needed, escalated=escalated, admin=admin)
        if outcome.final is None:
            audit.reopen(tx, item_id, escalated=outcome.escalated or None)
            row = tx.one(f"SELECT {_SELECT_META} FROM {TABLE} WHERE id = ?", (item_id,))
            assert row is not None
            return _item(row)
        row = tx.one(
            f"UPDATE {TABLE} SET status = '{DECIDED}', decision = ?, decided_by = ?, decided_at = ?, "
            f"claimed_by = NULL, lease_until = NULL WHERE id = ? RETURNING {_SELECT_META}",
            (outcome.final, reviewer, now, item_id))
        assert row is not None
        item = _item(row)
        if seen is not None and seen == item.sha256:
            remember_decision(self.backend, tx, item_id, outcome.final, reviewer, now, phash)
        for hook in self.decision_hooks:
            hook(tx, item)
        return item

    def votes(self, item_id: int) -> list[audit.Vote]:
        """The double-review votes given on an item (for an admin deciding a disagreement), oldest first."""
        with self._tx(write=False) as tx:
            return audit.votes(tx, int(item_id))

    def phash(self, item_id: int) -> str | None:
        """The perceptual hashes the item kept from the request that queued it (None: none)."""
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT phash FROM {TABLE} WHERE id = ?", (int(item_id),))
        return row[0] if row is not None and row[0] else None

    def skip(self, item_id: int, reviewer: str) -> Item:
        """Give the item back: pending again, at the end of the queue."""
        return self._reopen(item_id, reviewer, to_end=True)

    def release(self, item_id: int, reviewer: str) -> Item:
        """Give the item back: pending again, keeping its place in the queue."""
        return self._reopen(item_id, reviewer, to_end=False)

    def _reopen(self, item_id: int, reviewer: str, *, to_end: bool) -> Item:
        reviewer = check_reviewer(reviewer)
        item_id = int(item_id)
        extra = ", queued_at = ?, skips = skips + 1" if to_end else ""
        params: tuple[Any, ...] = (self._now(),) if to_end else ()
        with self._tx() as tx:
            row = tx.one(
                f"UPDATE {TABLE} SET status = '{PENDING}', claimed_by = NULL, lease_until = NULL{extra} "
                f"WHERE id = ? AND (status = '{PENDING}' OR (status = '{CLAIMED}' AND claimed_by = ?)) "
                f"RETURNING {_SELECT_META}",
                (*params, item_id, reviewer))
            if row is None:
                raise self._conflict(tx, item_id, reviewer, "skip" if to_end else "release")
        return _item(row)

    def undo(self, reviewer: str, *, reclaim: bool = False, lease_seconds: float | None = None) -> Item | None:
        """Revert ``reviewer``'s latest decision; None when there is none.

        The item is pending again (at its old place), or with ``reclaim`` claimed
        by ``reviewer`` with a fresh lease, so it comes straight back to them.  If
        the same image was queued again meanwhile, that newer open copy is
        dropped (the reverted item takes its place); if someone holds a live
        claim on it, :class:`ReviewConflict`.  A vote under double review is
        undone the same way (:func:`.audit.undo_vote`): the other reviewer's vote
        stays, so the item needs one more.
        """
        reviewer = check_reviewer(reviewer)
        now = self._now()
        until = now + self._lease(lease_seconds) if reclaim else None
        lock = self.backend.for_update
        with self._tx() as tx:
            row = tx.one(f"SELECT {_SELECT_META} FROM {TABLE} WHERE decided_by = ? AND status = '{DECIDED}' "
                         f"AND NOT EXISTS (SELECT 1 FROM {VOTES_TABLE} v WHERE v.item_id = {TABLE}.id "
                         f"AND v.reviewer = ?) ORDER BY decided_at DESC, id DESC LIMIT 1{lock}", (reviewer, reviewer))
            was = _item(row) if row is not None else None  # as it was decided (the review.undone event says)
            voted = audit.latest_vote(tx, reviewer)
            if voted is not None and (was is None or voted[1] >= float(was.decided_at or 0.0)):
                return self._undo_vote(tx, voted[0], reviewer, now, reclaim, until)
            if was is None:
                return None
            item_id, sha = was.id, was.sha256
            self._drop_open_copies(tx, sha, item_id, reviewer, now)
            row = tx.one(
                f"UPDATE {TABLE} SET status = ?, claimed_by = ?, lease_until = ?, decision = NULL, "
                f"decided_by = NULL, decided_at = NULL WHERE id = ? AND status = '{DECIDED}' "
                f"RETURNING {_SELECT_FULL}",
                (CLAIMED if reclaim else PENDING, reviewer if reclaim else None, until, item_id))
            if row is not None:
                forget_decision(self.backend, tx, item_id, reviewer, now)
                for hook in self.undo_hooks:
                    hook(tx, _item(row), was)
        return _item(row) if row is not None else None

    def _drop_open_copies(self, tx: Tx, sha: str, item_id: int, reviewer: str, now: float) -> None:
        """Before a decided item reopens: delete the open copy of its image queued meanwhile for the same
        audience (one open item per image and audience); :class:`ReviewConflict` when another reviewer holds
        it.  The clients that joined the copy follow the reverted item (one review id each)."""
        audience = tx.one(f"SELECT audience FROM {TABLE} WHERE id = ?", (item_id,))
        for dup_id, status, claimed_by, lease_until in tx.run(
                f"SELECT id, status, claimed_by, lease_until FROM {TABLE} "
                f"WHERE sha256 = ? AND audience = ? AND status IN ('{PENDING}', '{CLAIMED}'){self.backend.for_update}",
                (sha, audience[0] if audience else "")):
            if status == CLAIMED and claimed_by != reviewer and lease_until is not None and lease_until >= now:
                raise ReviewConflict(f"cannot undo item {item_id}: the same image (item {dup_id}) "
                                     "is being reviewed by another reviewer", item_id=item_id)
            tx.run(f"DELETE FROM {TABLE} WHERE id = ?", (dup_id,))
            audit.forget_votes(tx, [int(dup_id)])
            tx.run(f"DELETE FROM {TICKETS_TABLE} WHERE item_id = ? AND client IN "
                   f"(SELECT client FROM {TICKETS_TABLE} WHERE item_id = ?)", (dup_id, item_id))
            tx.run(f"UPDATE {TICKETS_TABLE} SET item_id = ? WHERE item_id = ?", (item_id, dup_id))

    def _undo_vote(self, tx: Tx, item_id: int, reviewer: str, now: float, reclaim: bool,
                   until: float | None) -> Item | None:
        """:meth:`undo` of a double-review vote: the vote removed, the item open again (claimed with ``reclaim``)."""
        row = tx.one(f"SELECT {_SELECT_META} FROM {TABLE} WHERE id = ?{self.backend.for_update}", (item_id,))
        if row is None:  # purged since: nothing to give back
            audit.forget_votes(tx, [item_id])
            return None
        was = _item(row)
        status, escalated, claimed_by, lease_until, sha = (was.status, was.escalated, was.claimed_by,
                                                           was.lease_until, was.sha256)
        audit.undo_vote(tx, item_id, reviewer, now, status=status, escalated=escalated, claimed_by=claimed_by,
                        lease_until=lease_until)
        if status == DECIDED:
            self._drop_open_copies(tx, sha, item_id, reviewer, now)
            forget_decision(self.backend, tx, item_id, reviewer, now)
        row = tx.one(
            f"UPDATE {TABLE} SET status = ?, claimed_by = ?, lease_until = ?, decision = NULL, decided_by = NULL, "
            f"decided_at = NULL, escalated = 0 WHERE id = ? RETURNING {_SELECT_FULL}",
            (CLAIMED if reclaim else PENDING, reviewer if reclaim else None, until, item_id))
        if row is not None and status == DECIDED:  # a decision the webhooks told is taken back: they tell that too
            for hook in self.undo_hooks:
                hook(tx, _item(row), was)
        return _item(row) if row is not None else None

    def purge(self, older_than_days: float | None = None) -> int:
        """Delete items (and their images) created more than ``older_than_days`` ago; returns how many.

        Defaults to the queue's retention; 0 or less keeps everything.  Items
        under a live claim are kept until the claim ends.  The webhooks' outbox rows (delivered or not)
        created before the same cutoff go too: they hold the images' sha256 and the reviewers' names.
        """
        days = self.retention_days if older_than_days is None else float(older_than_days)
        if not days > 0:
            return 0
        now = self._now()
        cutoff = now - days * 86400.0
        with self._tx() as tx:
            tx.run(f"DELETE FROM {TABLE} WHERE created_at < ? "
                   f"AND NOT (status = '{CLAIMED}' AND lease_until >= ?)", (cutoff, now))
            deleted = max(tx.rowcount, 0)
            if deleted and self.schema >= TICKETS_VERSION:  # their review ids go with them
                tx.run(f"DELETE FROM {TICKETS_TABLE} WHERE NOT EXISTS "
                       f"(SELECT 1 FROM {TABLE} i WHERE i.id = {TICKETS_TABLE}.item_id)")
            if deleted and self.schema >= AUDIT_VERSION:  # and their double-review votes
                audit.purge_votes(tx)
            tx.run(f"DELETE FROM {OUTBOX_TABLE} WHERE created_at < ?", (cutoff,))
        self._last_purge = time.monotonic()
        return deleted

    def purge_if_due(self, interval: float = PURGE_INTERVAL) -> int:
        """:meth:`purge` at most once per ``interval`` seconds (per queue object)."""
        if self._last_purge and time.monotonic() - self._last_purge < interval:
            return 0
        return self.purge()

    # ------------------------------------------------------------ reads

    def get(self, item_id: int) -> Item | None:
        """The item with its image bytes, or None."""
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT {_SELECT_FULL} FROM {TABLE} WHERE id = ?", (int(item_id),))
        return _item(row) if row is not None else None

    def image(self, item_id: int) -> bytes | None:
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT image FROM {TABLE} WHERE id = ?", (int(item_id),))
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def counts(self) -> dict[str, int]:
        """``{"pending", "claimed", "decided", "total"}``; a claim whose lease ran out counts as pending."""
        now = self._now()
        with self._tx(write=False) as tx:
            rows = tx.run(
                f"SELECT CASE WHEN status = '{CLAIMED}' AND lease_until < ? THEN '{PENDING}' ELSE status END, "
                f"COUNT(*) FROM {TABLE} GROUP BY 1", (now,))
        out = {PENDING: 0, CLAIMED: 0, DECIDED: 0}
        for status, n in rows:
            out[status] = out.get(status, 0) + int(n)
        out["total"] = sum(int(n) for _, n in rows)
        return out

    def pending_stats(self) -> tuple[int, float | None]:
        """(items waiting for a reviewer, when the oldest of them was created or None): /metrics' one query.

        Waiting is what :meth:`counts` calls pending: pending, or claimed with the lease run out.
        """
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT COUNT(*), MIN(created_at) FROM {TABLE} WHERE {_OPEN}", (self._now(),))
        if row is None:
            return 0, None
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    def items(self, status: str | None = None, limit: int = 1000) -> list[Item]:
        """Items (without image bytes), oldest first; all statuses or one."""
        where = " WHERE status = ?" if status else ""
        params: tuple[Any, ...] = (status,) if status else ()
        with self._tx(write=False) as tx:
            rows = tx.run(f"SELECT {_SELECT_META} FROM {TABLE}{where} ORDER BY created_at, id LIMIT ?",
                          (*params, int(limit)))
        return [_item(r) for r in rows]

    def _decided_rows(self) -> list[Item]:
        with self._tx(write=False) as tx:
            rows = tx.run(f"SELECT {_SELECT_META} FROM {TABLE} WHERE status = '{DECIDED}' "
                          f"ORDER BY decided_at, id")
        return [_item(r) for r in rows]

    def reviewed_items(self, binary_map: Mapping[str, str] | None = None) -> list[ReviewedItem]:
        """Decided items, oldest decision first, with their stored scores and model (no re-scoring), their
        kind and the probability that queued them (an audit item stands for ``1 / probability`` images).

        ``binary`` follows ``labelsets.DEFAULT_BINARY_MAP`` unless ``binary_map`` is given.
        """
        return [ReviewedItem(source=it.source, label=it.decision or "", binary=to_binary(it.decision or "", binary_map),
                             sha256=it.sha256, scores=it.scores, model=it.model, decided_at=it.decided_at or 0.0,
                             decided_by=it.decided_by or "", id=it.id, has_image=it.has_image, kind=it.kind,
                             probability=it.probability, verdict=it.verdict)
                for it in self._decided_rows()]

    def export_csv(self, image_paths: Mapping[int, str] | None = None) -> str:
        """The decided items as a labelled-set manifest (``path,label,sha256,model,<5 scores>,decided_at``).

        ``path`` is the source URL, ``upload:<name>`` for an upload (not loadable
        by itself), or ``image_paths[item id]`` when given (see :meth:`export_zip`).
        Oldest decision first; ``decided_at`` in UTC ISO 8601.
        """
        return export.manifest_csv(self._decided_rows(), image_paths or {})

    def export_zip(self) -> tuple[bytes, dict[str, int]]:
        """A ZIP for the calibration page's archive upload: ``manifest.csv`` + ``images/<sha256>.<ext>``.

        Items with stored bytes point at their file in the archive, URL items
        without bytes keep their URL, and uploads without stored bytes are left
        out.  Returns the archive and ``{"items", "images", "left_out"}``.
        """
        return export.manifest_zip(self._decided_rows(), self.image)
