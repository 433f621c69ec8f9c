"""Items a review grid's reviewer set aside for one-by-one review (``review_items.one_by_one``, migration 13).

The review grid (``pages/review_grid.py``) decides the obvious items of a page in one action; the ones its
reviewer ticks as exceptions go back to their place in the queue for the one-by-one Review page, marked
here so that no grid, this reviewer's or another's, shows them again.  The Review page claims them as any
other item; deciding, skipping or undoing leaves the mark as it is.
"""

from __future__ import annotations

from typing import Collection

from nsfw_core.state.db import Pool
from nsfw_core.state.migrations import TABLE
from nsfw_core.state.review.items import CLAIMED, PENDING

MAX_LISTED = 5000  # open items set aside that a grid keeps out of its claims (the oldest first beyond that)


def set_aside(pool: Pool, item_ids: Collection[int]) -> None:
    """Mark ``item_ids`` for one-by-one review."""
    ids = sorted({int(i) for i in item_ids})
    if not ids:
        return
    with pool.transaction() as tx:
        tx.run(f"UPDATE {TABLE} SET one_by_one = 1 WHERE id IN ({', '.join('?' * len(ids))})", tuple(ids))


def set_aside_ids(pool: Pool, limit: int = MAX_LISTED) -> set[int]:
    """The open (pending or claimed) items set aside for one-by-one review, oldest in the queue first."""
    with pool.transaction(write=False) as tx:
        rows = tx.run(f"SELECT id FROM {TABLE} WHERE one_by_one = 1 AND status IN ('{PENDING}', '{CLAIMED}') "
                      f"ORDER BY queued_at, id LIMIT ?", (int(limit),))
    return {int(r[0]) for r in rows}
