"""A rate as settings spell it: ``20/s``, ``600/m;burst=50``, ``1000/h`` (NSFW_RATE_LIMIT)."""

from __future__ import annotations

import dataclasses
import math
import re

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
          "hour": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*(?:;\s*burst\s*=\s*(\d+)\s*)?$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Rate:
    """``per_second`` requests per second on average, ``burst`` at once."""

    per_second: float
    burst: int

    def __str__(self) -> str:
        return f"{self.per_second:g}/s;burst={self.burst}"


def parse_rate(raw: str) -> Rate | None:
    """``20/s``, ``600/m;burst=50``, ``1000/h``; empty: no limit. ValueError otherwise."""
    if not raw.strip():
        return None
    found = _RATE.match(raw)
    if found is None or found.group(2).lower() not in _UNITS:
        raise ValueError("must look like 20/s or 600/m;burst=50 (units s, m, h)")
    per_second = float(found.group(1)) / _UNITS[found.group(2).lower()]
    if not per_second > 0:
        raise ValueError("the rate must be positive")
    burst = int(found.group(3)) if found.group(3) else max(1, math.ceil(per_second))
    if burst < 1:
        raise ValueError("the burst must be at least 1")
    return Rate(per_second, burst)


__all__ = ["Rate", "parse_rate"]
