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
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from nsfw_core.base.errors import BadRequest
from nsfw_core.base.labels import check_label, to_binary
from nsfw_core.base.settings import ReviewConfig, Settings
from nsfw_core.state.db import Pool, Tx, backend_for
from nsfw_core.state.errors import ItemNotFound, ReviewConflict, ReviewError, ReviewUnavailable
from nsfw_core.state.migrations import MIGRATIONS, OUTBOX_TABLE, TABLE, Migration, migrate
from nsfw_core.state.remembered import forget_decision, remember_decision
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
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def should_queue(verdict: str, config: ReviewConfig) -> bool:
    """True when an image with this verdict goes to human review (``NSFW_REVIEW_VERDICTS``)."""
    return verdict in config.verdicts


_COLUMNS = ("id", "sha256", "source", "scores", "model", "verdict", "created_at", "queued_at", "status",
            "claimed_by", "lease_until", "decision", "decided_by", "decided_at", "skips")
_SELECT = ", ".join(_COLUMNS)
_SELECT_META = _SELECT + ", image IS NOT NULL"
_SELECT_FULL = _SELECT_META + ", image"
_OPEN = f"(status = '{PENDING}' OR (status = '{CLAIMED}' AND lease_until < ?))"


def _item(row: Sequence[Any]) -> Item:
    values = dict(zip(_COLUMNS, row, strict=False))  # the image columns, if any, follow
    values["scores"] = json.loads(values["scores"])
    values["id"] = int(values["id"])
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
                image_bytes: bytes | None = None, phash: str | None = None, client: str | None = None) -> int:
        """Queue an image for review; the id of the open item for this sha256 if there is one already.

        The bytes are stored only when the queue stores uploads (``store_uploads``).  ``phash``: the
        image's perceptual hashes (hex, comma-separated, :func:`nsfw_core.images.phash.join_hex`), remembered with
        its decision.  ``client``: the API key id of the client whose request queued it (its webhook events
        carry it).
        """
        sha256 = str(sha256).lower()
        if not _SHA_RE.match(sha256):
            raise BadRequest(f"not a sha256 hex digest: {sha256[:80]!r}")
        source = str(source)[:MAX_SOURCE_LENGTH]
        scores_json = json.dumps(check_scores(scores), sort_keys=True)
        image = bytes(image_bytes) if (self.store_uploads and image_bytes) else None
        now = self._now()
        # the phash and client columns only when given: a queue on a schema before version 4 (8) still works
        given = [(column, value) for column, value in (("phash", phash), ("client", client)) if value]
        extra: tuple[str, ...] = tuple(str(value) for _, value in given)
        extra_column = "".join(f", {column}" for column, _ in given)
        extra_value = ", ?" * len(given)
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

    def claim(self, reviewer: str, lease_seconds: float | None = None, *,
              exclude: Iterable[int] = ()) -> Item | None:
        """Claim the oldest pending (or lease-expired) item for ``reviewer``; None when none is left.

        ``exclude``: ids this reviewer does not want now (e.g. the ones they skipped).
        """
        reviewer = check_reviewer(reviewer)
        now = self._now()
        until = now + self._lease(lease_seconds)
        excluded = sorted({int(i) for i in exclude})
        not_in = f" AND id NOT IN ({', '.join('?' * len(excluded))})" if excluded else ""
        with self._tx() as tx:
            row = tx.one(
                f"UPDATE {TABLE} SET status = '{CLAIMED}', claimed_by = ?, lease_until = ? "
                f"WHERE id = (SELECT id FROM {TABLE} WHERE {_OPEN}{not_in} ORDER BY queued_at, id LIMIT 1"
                f"{self.backend.skip_locked}) AND {_OPEN} RETURNING {_SELECT_FULL}",
                (reviewer, until, now, *excluded, now))
        return _item(row) if row is not None else None

    def _conflict(self, tx: Tx, item_id: int, reviewer: str, action: str) -> ReviewError:
        row = tx.one(f"SELECT status, claimed_by, decided_by FROM {TABLE} WHERE id = ?", (item_id,))
        if row is None:
            return ItemNotFound(f"review item {item_id} does not exist (purged?)", item_id=item_id)
        status, claimed_by, decided_by = row
        if status == DECIDED:
            who = "you" if decided_by == reviewer else decided_by
            return ReviewConflict(f"cannot {action} item {item_id}: already decided by {who}", item_id=item_id)
        if status == CLAIMED and claimed_by != reviewer:
            return ReviewConflict(f"cannot {action} item {item_id}: claimed by another reviewer",
                                  item_id=item_id)
        return ReviewConflict(f"cannot {action} item {item_id} ({status})", item_id=item_id)

    def decide(self, item_id: int, reviewer: str, label: str, *, phash: str | None = None) -> Item:
        """Record ``label`` for an item claimed by ``reviewer`` (or pending and unclaimed).

        In the same transaction the decision is remembered (:mod:`.remembered`): later copies of the image
        get it.  ``phash`` replaces the perceptual hashes the item kept from its request.
        """
        reviewer = check_reviewer(reviewer)
        label = check_label(label)
        item_id = int(item_id)
        with self._tx() as tx:
            now = self._now()
            row = tx.one(
                f"UPDATE {TABLE} SET status = '{DECIDED}', decision = ?, decided_by = ?, decided_at = ?, "
                f"claimed_by = NULL, lease_until = NULL "
                f"WHERE id = ? AND (status = '{PENDING}' OR (status = '{CLAIMED}' AND claimed_by = ?)) "
                f"RETURNING {_SELECT_META}",
                (label, reviewer, now, item_id, reviewer))
            if row is None:
                raise self._conflict(tx, item_id, reviewer, "decide")
            remember_decision(self.backend, tx, item_id, label, reviewer, now, phash)
            item = _item(row)
            for hook in self.decision_hooks:
                hook(tx, item)
        return item

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
        claim on it, :class:`ReviewConflict`.
        """
        reviewer = check_reviewer(reviewer)
        now = self._now()
        until = now + self._lease(lease_seconds) if reclaim else None
        lock = self.backend.for_update
        with self._tx() as tx:
            row = tx.one(f"SELECT {_SELECT_META} FROM {TABLE} WHERE decided_by = ? AND status = '{DECIDED}' "
                         f"ORDER BY decided_at DESC, id DESC LIMIT 1{lock}", (reviewer,))
            if row is None:
                return None
            was = _item(row)
            item_id, sha = was.id, was.sha256
            for dup_id, status, claimed_by, lease_until in tx.run(
                    f"SELECT id, status, claimed_by, lease_until FROM {TABLE} "
                    f"WHERE sha256 = ? AND status IN ('{PENDING}', '{CLAIMED}'){lock}", (sha,)):
                if status == CLAIMED and claimed_by != reviewer and lease_until is not None and lease_until >= now:
                    raise ReviewConflict(f"cannot undo item {item_id}: the same image (item {dup_id}) "
                                         "is being reviewed by another reviewer", item_id=item_id)
                tx.run(f"DELETE FROM {TABLE} WHERE id = ?", (dup_id,))
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
        """Decided items, oldest decision first, with their stored scores and model (no re-scoring).

        ``binary`` follows ``labelsets.DEFAULT_BINARY_MAP`` unless ``binary_map`` is given.
        """
        return [ReviewedItem(source=it.source, label=it.decision or "", binary=to_binary(it.decision or "", binary_map),
                             sha256=it.sha256, scores=it.scores, model=it.model, decided_at=it.decided_at or 0.0,
                             decided_by=it.decided_by or "", id=it.id, has_image=it.has_image)
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
