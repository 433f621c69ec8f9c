"""The evidence heat-maps a review item keeps (``review_items.evidence``, migration 13): read, written, missing.

The maps are computed from the item's own bytes (:mod:`nsfw_core.inference.explain`) when a reviewer
first claims the item, or ahead of that in the background, and kept as JSON with the item, so every
replica and every later claim shows them without computing them again.  A video's are of its deciding frame,
whose time the item keeps (``deciding_ms``, migration 14: :func:`deciding_ms`).  They are the model's, so an
item shown *blind* (an audit item: no verdict, no scores) never shows them either; the pages decide that.
Deleting an item (retention) deletes its evidence with it.
"""

from __future__ import annotations

import json
from typing import Any

from nsfw_core.state.db import Pool
from nsfw_core.state.migrations import TABLE
from nsfw_core.state.review.audit import AUDIT
from nsfw_core.state.review.items import CLAIMED, PENDING

MAX_STORED = 64 * 1024  # characters of JSON an item keeps at most (an 8 x 8 explanation is about 3 KB)


def load(pool: Pool, item_id: int) -> dict[str, Any] | None:
    """The item's stored evidence (JSON as a dict), or None when it has none (or it is not readable)."""
    with pool.transaction(write=False) as tx:
        row = tx.one(f"SELECT evidence FROM {TABLE} WHERE id = ?", (int(item_id),))
    if row is None or not row[0]:
        return None
    try:
        doc = json.loads(row[0])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def save(pool: Pool, item_id: int, doc: dict[str, Any], *, sha256: str) -> bool:
    """Keep ``doc`` with the item (if it still exists and is still the image ``sha256``); False when not kept."""
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_STORED:
        return False
    with pool.transaction() as tx:
        row = tx.one(f"UPDATE {TABLE} SET evidence = ? WHERE id = ? AND sha256 = ? RETURNING id",
                     (text, int(item_id), str(sha256)))
    return row is not None


def missing(pool: Pool, limit: int, *, exclude: tuple[int, ...] = ()) -> list[int]:
    """Open items (pending or claimed) with stored bytes and no evidence yet, oldest in the queue first:
    what the background computes ahead of reviewers.  Never an audit item (shown blind, issue 25), nor a video
    that does not keep its deciding frame's time (queued before migration 14: its frames would all be decoded
    and scored again to find it; that waits for a reviewer to claim it)."""
    not_in = f" AND id NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
    with pool.transaction(write=False) as tx:
        rows = tx.run(f"SELECT id FROM {TABLE} WHERE status IN ('{PENDING}', '{CLAIMED}') AND evidence IS NULL "
                      f"AND image IS NOT NULL AND kind <> '{AUDIT}' "
                      f"AND (media = 'image' OR (media = 'video' AND deciding_ms IS NOT NULL)){not_in} "
                      f"ORDER BY queued_at, id LIMIT ?",
                      (*[int(i) for i in exclude], int(limit)))
    return [int(r[0]) for r in rows]


def deciding_ms(pool: Pool, item_id: int) -> int | None:
    """When a video item's deciding frame is shown (ms), as its request judged it; None for anything else."""
    with pool.transaction(write=False) as tx:
        row = tx.one(f"SELECT deciding_ms FROM {TABLE} WHERE id = ? AND media = 'video'", (int(item_id),))
    return int(row[0]) if row is not None and row[0] is not None else None


def keep_hashes(pool: Pool, item_id: int, sha256: str, hashes: str) -> bool:
    """Give an item that has no perceptual hashes the ones of its own bytes (``hashes``: hex, comma-separated,
    :func:`nsfw_core.images.phash.join_hex` of :func:`~nsfw_core.images.phash.stored_hashes`), so similar past
    decisions can be found for it; its decision is then remembered by them, as it would have been by the ones
    computed when it is decided.  False when it has some already (or is not the image ``sha256``)."""
    if not hashes:
        return False
    with pool.transaction() as tx:
        row = tx.one(f"UPDATE {TABLE} SET phash = ? WHERE id = ? AND sha256 = ? AND (phash IS NULL OR phash = '') "
                     f"RETURNING id", (hashes, int(item_id), str(sha256)))
    return row is not None
