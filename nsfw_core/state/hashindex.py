"""Near-duplicate lookup among many 256-bit hashes: multi-index hashing, exact for a distance.

A hash is cut into :data:`CHUNKS` = 16 chunks of 16 bits.  Two hashes within distance ``d`` differ in
at most ``d`` bits, so (pigeonhole) at least one of their 16 chunks differs in at most ``d // 16``
bits.  For each chunk, the index keeps the hashes sorted by that chunk's value (a bucket per value,
CSR style: ``offsets[chunk][value]`` to ``offsets[chunk][value + 1]``); a query probes, in each
chunk, its own value and every value within ``d // 16`` bits of it (1 + 16 = 17 probes per chunk at
``d`` = 31, 16 chunks), gathers those buckets' hashes as candidates and keeps those whose full
distance is ``<= d``.  Recall is exact (every hash within ``d`` is found: the tests compare with
:func:`brute_force`); only the candidates are compared in full, about ``272 * n / 65536`` of them for
uniformly random hashes (about 4,000 at a million).

Memory: ``n * 16`` 32-bit row numbers, the ``n * 32`` bytes of hashes and 4 MiB of offsets: about
100 MiB at a million hashes.  Building sorts each chunk once (numpy; about half a second at a million).
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

CHUNKS = 16
CHUNK_BITS = 16
VALUES = 1 << CHUNK_BITS


def as_rows(hashes: np.ndarray | list[bytes]) -> np.ndarray:
    """Hashes -> an (n, 32) uint8 array."""
    if isinstance(hashes, np.ndarray):
        rows = hashes
    else:
        rows = np.frombuffer(b"".join(hashes), np.uint8) if hashes else np.zeros(0, np.uint8)
    return np.ascontiguousarray(rows, dtype=np.uint8).reshape(-1, 32)


def distances(rows: np.ndarray, query: bytes) -> np.ndarray:
    """Hamming distance of ``query`` to each of ``rows`` ((n, 32) uint8), as int32."""
    q = np.frombuffer(query, np.uint64)
    words = rows.view(np.uint64).reshape(-1, 4)
    out: np.ndarray = np.bitwise_count(words ^ q).sum(axis=1, dtype=np.int32)
    return out


def brute_force(rows: np.ndarray, query: bytes, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row within ``max_distance`` of ``query`` by comparing all: (row numbers, distances)."""
    d = distances(rows, query)
    hit = np.flatnonzero(d <= max_distance)
    return hit, d[hit]


@lru_cache(maxsize=8)
def _masks(radius: int) -> np.ndarray:
    """Every 16-bit value with at most ``radius`` bits set (the probes around a chunk's value)."""
    out = [0]
    for r in range(1, min(radius, CHUNK_BITS) + 1):
        for bits in itertools.combinations(range(CHUNK_BITS), r):
            out.append(sum(1 << b for b in bits))
    return np.array(out, dtype=np.int64)


def _chunks(rows: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 -> (n, 16) chunk values (big-endian 16-bit words)."""
    return rows.view(">u2").reshape(-1, CHUNKS).astype(np.int64)


class HashIndex:
    """An immutable index over ``rows`` ((n, 32) uint8 hashes); :meth:`search` is exact within a distance."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = as_rows(rows)
        n = len(self.rows)
        self.size = n
        chunks = self.rows.view(">u2").reshape(-1, CHUNKS).astype(np.uint16)  # (n, 16): radix-sorted below
        # Row numbers sorted by each chunk's value, all chunks in one flat array (chunk c at c * n).
        self._ids = np.empty(CHUNKS * n, dtype=np.int32)
        self._offsets = np.empty((CHUNKS, VALUES + 1), dtype=np.int64)
        for c in range(CHUNKS):
            values = np.ascontiguousarray(chunks[:, c])
            order = np.argsort(values, kind="stable").astype(np.int32)  # a radix sort for 16-bit values
            self._ids[c * n:(c + 1) * n] = order
            counts = np.bincount(values, minlength=VALUES)
            self._offsets[c, 0] = c * n
            np.cumsum(counts, out=self._offsets[c, 1:])
            self._offsets[c, 1:] += c * n

    def __len__(self) -> int:
        return self.size

    def candidates(self, query: bytes, max_distance: int) -> np.ndarray:
        """Row numbers sharing a chunk within ``max_distance // 16`` bits with ``query`` (with repeats)."""
        if self.size == 0:
            return np.zeros(0, dtype=np.int32)
        q = _chunks(np.frombuffer(query, np.uint8).reshape(1, 32))[0]  # (16,)
        keys = q[:, None] ^ _masks(max_distance // CHUNKS)[None, :]  # (16, probes)
        rows = np.arange(CHUNKS)[:, None]
        starts = self._offsets[rows, keys].ravel()
        ends = self._offsets[rows, keys + 1].ravel()
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int32)
        # the concatenation of ids[starts[i]:ends[i]] without a Python loop
        shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        ids: np.ndarray = self._ids[np.arange(total) + shift]
        return ids

    def search(self, query: bytes, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """Every row within ``max_distance`` of ``query``: (row numbers, distances), each row once."""
        cand = self.candidates(query, max_distance)
        if len(cand) == 0:
            return cand, np.zeros(0, dtype=np.int32)
        d = distances(self.rows[cand], query)  # repeats compared twice: cheaper than sorting them away first
        hit, first = np.unique(cand[d <= max_distance], return_index=True)
        return hit, d[d <= max_distance][first]
