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

:class:`EmbeddingFinder` finds them by embedding (issue 26: the features the model's head reads, kept per queued
item in ``review_embeddings`` from the forward pass that scored it): one minus the cosine of the item's embedding
and a decided item's (:func:`~nsfw_core.inference.embeddings.embedding_distance`), only between embeddings of the
same model *and* model version (another model's vectors are never compared).  Items within
:data:`MAX_EMBEDDING_DISTANCE` are kept, closest first.  Each process holds, per model version, the unit rows
(float32) of the :data:`MAX_EMBEDDINGS_HELD` most recently decided items with an embedding and reads them forward
like the PDQ finder; older decisions are still found by PDQ.  What it costs: ``bench/similar.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Protocol, Sequence

import numpy as np

from nsfw_core.images.phash import HASH_BYTES, split_hex
from nsfw_core.inference.embeddings import decode_embedding
from nsfw_core.state.db import Pool
from nsfw_core.state.hashindex import distances
from nsfw_core.state.migrations import REVIEW_EMBEDDINGS_TABLE, TABLE
from nsfw_core.state.review.items import DECIDED

MAX_DISTANCE = 64  # bits of 256: look-alikes and near-misses, never a chance neighbour (unrelated: ~128)
DEFAULT_COUNT = 4
# One minus the cosine of two embeddings of the same model version.  Below the look-alike rule's bound
# (nsfw_core.classify.MATCH_EMBEDDING_DISTANCE, 0.3), which decides with the scores and PDQ as well: alone, 0.3 let
# 4 of 153 pairs of unrelated demo images through (bench/similar.py, MobileNetV2Mid; the nearest unrelated pair at
# 0.265), while edited copies of a decided image (JPEG q70, resized 50 %, cropped 2 %, watermarked) lay within 0.213
# of it (bench/lookalikes.py, 88 copies; 0.165 in bench/similar.py's 54).  0.24 keeps every copy and no chance pair.
MAX_EMBEDDING_DISTANCE = 0.24
# The decided items whose embeddings a process holds per model version (the most recently decided): 10,000 x 1792
# float32 values is 68 MB, and one look scans them in milliseconds (bench/similar.py, BENCHMARKS.md).
MAX_EMBEDDINGS_HELD = 10_000


@dataclasses.dataclass(frozen=True)
class Similar:
    """A decided item close to the one under review: what the reviewer is shown beside it."""

    item_id: int
    decision: str
    decided_by: str
    decided_at: float
    by: str  # "pdq" or "embedding"
    distance: float  # PDQ: bits of 256; embedding: one minus the cosine (0 to 1)
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


class EmbeddingFinder:
    """Decided items by the cosine distance of their embeddings to the item's, of the same model and model version
    only (see the module docstring); thread-safe, one per process and database."""

    by = "embedding"

    def __init__(self, pool: Pool, max_distance: float = MAX_EMBEDDING_DISTANCE,
                 held: int = MAX_EMBEDDINGS_HELD) -> None:
        self.pool = pool
        self.max_distance = float(max_distance)
        self.held = int(held)
        self._lock = threading.Lock()
        # per (model, model version): the decided items' ids and their unit embeddings (float32 rows), oldest first
        self._held: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._count = 0  # decided items (in the database, at the last look)
        self._since: float | None = None

    _COLUMNS = "r.id, r.decided_at, e.model, e.model_version, e.embedding"
    _JOIN = (f"FROM {TABLE} r JOIN {REVIEW_EMBEDDINGS_TABLE} e ON e.item_id = r.id AND e.model = r.model "
             f"WHERE r.status = '{DECIDED}'")

    def _refresh(self) -> None:
        """Read the decisions made since the last look (all again, the newest :attr:`held` of each model version,
        when the count says something went: an undo, a purge).  Whether anything changed is read from the
        decided items alone (their index on (status, decided_at)): the embeddings are read only for new ones."""
        with self.pool.transaction(write=False) as tx:
            row = tx.one(f"SELECT COUNT(*), MAX(decided_at) FROM {TABLE} WHERE status = '{DECIDED}'")
            count = int(row[0]) if row else 0
            latest = float(row[1]) if row and row[1] is not None else None
            if count == self._count and latest == self._since:
                return
            incremental = self._since is not None and count > self._count
            rows: list[tuple[Any, ...]]
            if incremental:  # every decision since, with its embedding where it has one
                rows = tx.run(f"SELECT {self._COLUMNS} FROM {TABLE} r LEFT JOIN {REVIEW_EMBEDDINGS_TABLE} e "
                              f"ON e.item_id = r.id AND e.model = r.model WHERE r.status = '{DECIDED}' "
                              f"AND r.decided_at > ? ORDER BY r.decided_at, r.id", (self._since,))
            else:
                rows = []
                for model, version in tx.run(f"SELECT DISTINCT e.model, e.model_version {self._JOIN}"):
                    rows.extend(reversed(tx.run(f"SELECT {self._COLUMNS} {self._JOIN} AND e.model = ? "
                                                f"AND e.model_version = ? ORDER BY r.decided_at DESC, r.id DESC "
                                                f"LIMIT ?", (model, version, self.held))))
        if incremental and self._count + len(rows) != count:  # decided meanwhile with an older clock: all again
            self._count, self._since, self._held = 0, None, {}
            self._refresh()
            return
        added: dict[tuple[str, str], tuple[list[int], list[np.ndarray]]] = {}
        for item_id, _, model, version, text in rows:
            v = decode_embedding(text) if text else None
            norm = float(np.linalg.norm(v)) if v is not None else 0.0
            if v is None or not norm > 0:
                continue
            ids, vectors = added.setdefault((str(model), str(version)), ([], []))
            ids.append(int(item_id))
            vectors.append(v / norm)
        held = self._held if incremental else {}
        for key, (ids, vectors) in added.items():
            old_ids, old_rows = held.get(key, (np.zeros(0, np.int64), np.zeros((0, vectors[0].shape[0]), np.float32)))
            if any(v.shape != (old_rows.shape[1],) for v in vectors):
                continue  # a model version whose size changed: not comparable, left out
            new_rows = np.concatenate([old_rows, np.stack(vectors).astype(np.float32)])[-self.held:]
            held[key] = (np.concatenate([old_ids, np.asarray(ids, np.int64)])[-self.held:], new_rows)
        self._held, self._count, self._since = held, count, latest

    def held_bytes(self) -> int:
        """The memory the held embeddings take."""
        with self._lock:
            return sum(rows.nbytes + ids.nbytes for ids, rows in self._held.values())

    def query(self, item_id: int) -> tuple[tuple[str, str], np.ndarray] | None:
        """The item's kept embedding with its (model, model version), as a unit vector; None when it has none."""
        with self.pool.transaction(write=False) as tx:
            row = tx.one(f"SELECT e.model, e.model_version, e.embedding FROM {REVIEW_EMBEDDINGS_TABLE} e "
                         f"JOIN {TABLE} r ON r.id = e.item_id AND r.model = e.model WHERE e.item_id = ?",
                         (int(item_id),))
        v = decode_embedding(row[2] or "") if row else None
        norm = float(np.linalg.norm(v)) if v is not None else 0.0
        if row is None or v is None or not norm > 0:
            return None
        return (str(row[0]), str(row[1])), (v / norm).astype(np.float32)

    def nearest(self, item_id: int, count: int) -> list[tuple[int, float]]:
        query = self.query(item_id)
        if query is None:
            return []
        model, q = query
        with self._lock:
            self._refresh()
            ids, rows = self._held.get(model, (np.zeros(0, np.int64), np.zeros((0, q.shape[0]), np.float32)))
        if len(ids) == 0 or rows.shape[1] != q.shape[0]:
            return []
        d = np.clip(1.0 - rows @ q, 0.0, 1.0)
        order = np.lexsort((ids, d))  # by distance, then the older item
        out: list[tuple[int, float]] = []
        for k in order:
            if d[k] > self.max_distance or len(out) >= count:
                break
            if int(ids[k]) != int(item_id):
                out.append((int(ids[k]), round(float(d[k]), 4)))
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
