"""Videos compared by their frames' PDQ hashes, as Meta's vPDQ does.

A video is a bag of PDQ hashes, one per sampled frame (low-quality frames left out, repeated hashes
counted once).  Two videos match when at least :data:`SHARE` of the query's frames have a hash within the
match distance (``NSFW_MATCH_DISTANCE``, PDQ's 31 by default) among the known video's frames, and at least
:data:`SHARE` of the known video's frames have one among the query's (vPDQ's query and compared match
percentages, both at 80 %): a copy re-encoded, resized or cut a little matches; a video that only borrows a
few of a known video's frames does not, nor does a still image.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SHARE = 0.8  # of each side's frames that must find a match in the other's (vPDQ's 80 %)
_CHUNK = 256  # query frames compared at once (bounds the distance matrix's memory)


def as_words(hashes: list[bytes]) -> np.ndarray:
    """Hashes (32 bytes each), unique, as (n, 4) uint64 rows."""
    unique = list(dict.fromkeys(h for h in hashes if len(h) == 32))
    if not unique:
        return np.zeros((0, 4), np.uint64)
    return np.frombuffer(b"".join(unique), dtype=np.uint64).reshape(-1, 4)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """How two videos' frames match: the share of each side's frames with a match in the other's."""

    query_share: float
    known_share: float
    matched: np.ndarray  # per query frame (in the order given), whether it has a match
    distance: int  # the median distance of the query's matched frames to their nearest known frame

    @property
    def match(self) -> bool:
        return self.query_share >= SHARE and self.known_share >= SHARE


def compare(query: np.ndarray, known: np.ndarray, distance: int) -> Comparison:
    """vPDQ's comparison of ``query`` and ``known`` ((n, 4) uint64 rows each) at ``distance`` bits."""
    if not len(query) or not len(known):
        return Comparison(0.0, 0.0, np.zeros(len(query), bool), 256)
    nearest_q = np.empty(len(query), np.int64)
    nearest_k = np.full(len(known), 257, np.int64)
    for start in range(0, len(query), _CHUNK):
        block = query[start:start + _CHUNK]
        d = np.bitwise_count(block[:, None, :] ^ known[None, :, :]).sum(axis=2, dtype=np.int64)
        nearest_q[start:start + len(block)] = d.min(axis=1)
        np.minimum(nearest_k, d.min(axis=0), out=nearest_k)
    matched = nearest_q <= distance
    close = nearest_q[matched]
    return Comparison(float(matched.mean()), float((nearest_k <= distance).mean()), matched,
                      int(np.median(close)) if len(close) else 256)
