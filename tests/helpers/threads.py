"""Calls that must not block: run them in a thread and fail the test instead of hanging it."""

from __future__ import annotations

import threading
from typing import Any, Callable


def within_seconds(fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> Any:
    """``fn(*args)`` in a thread; its result or exception, or a failed assertion when it blocks."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]
