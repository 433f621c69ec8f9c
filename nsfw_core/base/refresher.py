"""A copy in memory kept fresh from the database without making a request wait.

The thresholds history (:mod:`nsfw_core.state.thresholds`) and the known images (:mod:`nsfw_core.state.known`)
answer every request from memory.  Each holds a :class:`Refresher`: a request calls :meth:`due`,
which costs a clock read and, when the copy is older than ``interval`` seconds, starts one
background thread that calls the owner's ``refresh`` (never two at once, none once closed).
:meth:`Refresher.keep_fresh` also refreshes every ``interval`` without waiting for a request, so that
the first request after a quiet spell is not judged under a copy older than that (the adapters).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class Refresher:
    """Starts ``refresh`` in a background thread at most every ``interval`` seconds."""

    def __init__(self, refresh: Callable[[], Any], interval: float, thread_name: str) -> None:
        self._refresh = refresh
        self.interval = float(interval)
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._running = False
        self.checked = float("-inf")  # monotonic time of the last refresh's start (the owner's refresh sets it)
        self.closed = False
        self._ticker: threading.Thread | None = None

    def due(self) -> None:
        """Start a background refresh when the copy is older than ``interval``; returns at once."""
        now = time.monotonic()
        if now - self.checked < self.interval or self._running or self.closed:
            return
        with self._lock:
            if self._running:
                return
            self._running = True
            self.checked = now
        threading.Thread(target=self._run, name=self._thread_name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._refresh()
        finally:
            self._running = False

    def keep_fresh(self) -> None:
        """Refresh every ``interval`` seconds in one background thread until closed (idempotent)."""
        with self._lock:
            if self._ticker is not None or self.closed:
                return
            self._ticker = threading.Thread(target=self._tick, name=f"{self._thread_name}-tick", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self.closed:
            time.sleep(self.interval)
            if not self.closed and time.monotonic() - self.checked >= self.interval:
                self._refresh()
