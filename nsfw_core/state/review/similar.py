"""Similar past decisions: the decided review items closest to an item, for the reviewer to compare with.

A *finder* ranks decided items by how close they are to an item; :func:`similar_decisions` asks each
finder it is given, keeps each decided item once (at its closest), and reads what the reviewer is shown:
the decision, who decided, when, whether its bytes are kept (for a blurred thumbnail).

:class:`PdqFinder` is the one finder today: the PDQ hashes the items keep (``review_items.phash``: the
image whole and cropped by 2 % and 4 %, :func:`nsfw_core.images.phash.stored_hashes`).  An item is compared by
its whole-image hash with every hash of every decided item, the closest of an item's hashes counting;
items within :data:`MAX_DISTANCE` bits are kept, closest first.  :data:`MAX_DISTANCE` is 64 of 256 bits:
copies of one image are within ``NSFW_MATCH_DISTANCE`` (31), unrelated images about 128 apart (PDQ's
bits are balanced; the spread is about 8 bits), so 64 keeps look-alikes and near-misses and no chance
neighbour.  Each process keeps the decided items' hashes in memory and reads only the decisions made
since its last look (a changed count, after an undo or a purge, reads them all again).

A finder by embedding (issue 26: an embedding per item from the model's forward pass) plugs in as another
:class:`Finder` with ``by = "embedding"``; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Protocol, Sequence

import numpy as np

from nsfw_core.images.phash import HASH_BYTES, split_hex
from nsfw_core.state.db import Pool
from nsfw_core.state.hashindex import distances
from nsfw_core.state.migrations import TABLE
from nsfw_core.state.review.items import DECIDED

MAX_DISTANCE = 64  # bits of 256: look-alikes and near-misses, never a chance neighbour (unrelated: ~128)
DEFAULT_COUNT = 4


@dataclasses.dataclass(frozen=True)
class Similar:
    """A decided item close to the one under review: what the reviewer is shown beside it."""

    item_id: int
    decision: str
    decided_by: str
    decided_at: float
    by: str  # "pdq" (or "embedding")
    distance: float  # PDQ: bits of 256
    has_image: bool
    sha256: str

    @property
    def same_image(self) -> bool:
        return self.by == "pdq" and self.distance == 0


class Finder(Protocol):
    by: str

    def nearest(self, item_id: int, count: int) -> list[tuple[int, float]]:
        """Decided items closest to ``item_id`` (never itself): (item id, distance), closest first."""
        ...


class PdqFinder:
    """Decided items by PDQ distance (see the module docstring); thread-safe, one per process and database."""

    by = "pdq"

    def __init__(self, pool: Pool, max_distance: int = MAX_DISTANCE) -> None:
        self.pool = pool
        self.max_distance = int(max_distance)
        self._lock = threading.Lock()
        self._ids = np.zeros(0, np.int64)  # the decided item each hash belongs to
        self._rows = np.zeros((0, HASH_BYTES), np.uint8)
        self._items = 0  # decided items with hashes held
        self._since: float | None = None  # the latest decided_at read

    def _refresh(self) -> None:
        """Read the decisions made since the last look; everything again when the count says something went."""
        with self.pool.transaction(write=False) as tx:
            row = tx.one(f"SELECT COUNT(*), MAX(decided_at) FROM {TABLE} WHERE status = '{DECIDED}' "
                         f"AND phash IS NOT NULL AND phash <> ''")
            count = int(row[0]) if row else 0
            latest = float(row[1]) if row and row[1] is not None else None
            if count == self._items and latest == self._since:
                return
            incremental = self._since is not None and count > self._items
            where = " AND decided_at > ?" if incremental else ""
            rows = tx.run(f"SELECT id, phash, decided_at FROM {TABLE} WHERE status = '{DECIDED}' "
                          f"AND phash IS NOT NULL AND phash <> ''{where}",
                          (self._since,) if incremental else ())
        if incremental and self._items + len(rows) != count:  # decided meanwhile with an older clock: all again
            self._since, self._items = None, 0
            self._ids, self._rows = np.zeros(0, np.int64), np.zeros((0, HASH_BYTES), np.uint8)
            self._refresh()
            return
        ids, hashes = [], []
        for item_id, text, _ in rows:
            for h in split_hex(text):
                if len(h) == HASH_BYTES:
                    ids.append(int(item_id))
                    hashes.append(h)
        new_rows = np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, HASH_BYTES)
        if incremental:
            self._ids = np.concatenate([self._ids, np.asarray(ids, np.int64)])
            self._rows = np.concatenate([self._rows, new_rows])
            self._items += len(rows)
        else:
            self._ids, self._rows, self._items = np.asarray(ids, np.int64), new_rows.copy(), len(rows)
        stamps = [float(r[2]) for r in rows if r[2] is not None]
        if stamps:
            self._since = max(stamps) if self._since is None else max(self._since, *stamps)

    def query_hash(self, item_id: int) -> bytes | None:
        """The item's whole-image hash (the first it keeps), or None (an animation, a flat image)."""
        with self.pool.transaction(write=False) as tx:
            row = tx.one(f"SELECT phash FROM {TABLE} WHERE id = ?", (int(item_id),))
        found = split_hex(row[0]) if row and row[0] else []
        return found[0] if found and len(found[0]) == HASH_BYTES else None

    def nearest(self, item_id: int, count: int) -> list[tuple[int, float]]:
        query = self.query_hash(item_id)
        if query is None:
            return []
        with self._lock:
            self._refresh()
            ids, rows = self._ids, self._rows
        if len(ids) == 0:
            return []
        d = distances(rows, query)
        order = np.lexsort((ids, d))  # by distance, then the older item
        out: list[tuple[int, float]] = []
        seen: set[int] = {int(item_id)}
        for k in order:
            if d[k] > self.max_distance or len(out) >= count:
                break
            other = int(ids[k])
            if other not in seen:
                seen.add(other)
                out.append((other, float(d[k])))
        return out


def similar_decisions(pool: Pool, item_id: int, finders: Sequence[Finder], count: int = DEFAULT_COUNT
                      ) -> list[Similar]:
    """The ``count`` decided items closest to ``item_id`` by any finder (each once, at its closest), closest
    first (PDQ's before an embedding's at equal rank), with what the reviewer is shown."""
    ranked: dict[int, tuple[int, int, str, float]] = {}  # item -> (rank, finder order, by, distance)
    for order, finder in enumerate(finders):
        for rank, (other, distance) in enumerate(finder.nearest(item_id, count)):
            key = (rank, order, finder.by, distance)
            if other not in ranked or key < ranked[other]:
                ranked[other] = key
    if not ranked:
        return []
    chosen = sorted(ranked, key=lambda i: ranked[i])[:count]
    marks = ", ".join("?" * len(chosen))
    with pool.transaction(write=False) as tx:
        rows = tx.run(f"SELECT id, decision, decided_by, decided_at, image IS NOT NULL, sha256 FROM {TABLE} "
                      f"WHERE id IN ({marks}) AND status = '{DECIDED}'", tuple(chosen))
    found = {int(r[0]): r for r in rows}
    out = []
    for other in chosen:
        r = found.get(other)
        if r is None:  # undone or purged since the finder read it
            continue
        _, _, by, distance = ranked[other]
        out.append(Similar(other, str(r[1] or ""), str(r[2] or ""), float(r[3] or 0.0), by, distance, bool(r[4]),
                           str(r[5])))
    return out
