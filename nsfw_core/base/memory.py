"""Process-wide memory settings of the server.

:func:`limit_malloc_arenas` caps glibc's malloc arenas, as ``MALLOC_ARENA_MAX=2``
in the environment would, for every way of starting the server (``run.sh``,
``python app.py``, ``uvicorn app:app``, a container's own command).  With
glibc's default (8 per core) each busy thread gets an arena of its own, and
under load the server's RSS wanders and later requests cost more CPU for good
(figures in RELIABILITY.md and BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas unless ``MALLOC_ARENA_MAX`` is set; True if the cap was applied here.

    Call it early, before the process starts its threads. Without glibc
    (musl, macOS) it does nothing and returns False.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False  # glibc read it at start-up; the operator's value stands
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
