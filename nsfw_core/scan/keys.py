"""Resume keys: which images the dataset already holds for this model version.

An image is done when the dataset's latest row for its source has the same sha256 and was scored by the
same model name and version (or failed with an error the same bytes give again,
:data:`~nsfw_core.scan.schema.FINAL_ERRORS`).  The key is 64 bits of BLAKE2b over (source, sha256): a
sorted ``uint64`` array holds a million keys in 8 MB, shared by every actor on a node through Ray's object
store, and looked up with a binary search.  (Two different images colliding on 64 bits: about 3e-8 at a
million images.)  Workers hash the bytes they read and skip a done image before decoding it: a second scan
of an unchanged catalogue reads and hashes every image and scores none.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def key(source: str, sha256: str) -> int:
    """The resume key of one image: 64 bits of BLAKE2b over its source and sha256."""
    digest = hashlib.blake2b(f"{source}\0{sha256}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class DoneSet:
    """A sorted array of resume keys; ``(source, sha256) in done``."""

    def __init__(self, keys: np.ndarray | Iterable[int] = ()) -> None:
        array = keys if isinstance(keys, np.ndarray) else np.fromiter(keys, dtype=np.uint64)
        self.keys = np.unique(array.astype(np.uint64, copy=False))  # sorted, no repeats

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> "DoneSet":
        return cls(np.fromiter((key(s, h) for s, h in pairs), dtype=np.uint64))

    def __len__(self) -> int:
        return int(self.keys.size)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        if not self.keys.size:
            return False
        k = np.uint64(key(*pair))
        i = int(np.searchsorted(self.keys, k))
        return i < self.keys.size and self.keys[i] == k
