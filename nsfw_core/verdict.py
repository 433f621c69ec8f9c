"""The three-state rule (adult / unknown / safe) and the saved thresholds file.

Rule: the *adult score* is the sum of the adult classes' probabilities (porn +
sexy by default); at or above ``adult`` it is "adult".  Otherwise the *safe
score* (neutral + drawings by default) at or above ``safe`` gives "safe".
Everything else is "unknown": a human reviews it.

:class:`ThresholdStore` keeps the thresholds chosen on the calibration page in
a JSON file (written atomically) and re-reads it when it changes, so the API
and the UI follow a new calibration without a restart.  A missing file means
the defaults from the settings; a corrupt one means the defaults plus a
warning that the UI and ``/health`` show.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import threading
from pathlib import Path
from typing import Any, Mapping

from .files import atomic_write
from .settings import CLASS_NAMES

ADULT, UNKNOWN, SAFE = "adult", "unknown", "safe"
VERDICTS = (ADULT, UNKNOWN, SAFE)
THRESHOLDS_FILE = "thresholds.json"
# Sums of class probabilities carry float rounding (0.6 + 0.3 < 0.9 in binary):
# "at or above" compares with this much slack so a score that equals the
# threshold in decimal lands on the threshold's side.
EPSILON = 1e-9


@dataclasses.dataclass(frozen=True)
class Thresholds:
    adult: float = 0.7
    safe: float = 0.9
    adult_classes: tuple[str, ...] = ("porn", "sexy")
    safe_classes: tuple[str, ...] = ("neutral", "drawings")

    def __post_init__(self) -> None:
        for name in ("adult", "safe"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} threshold must be a number in [0, 1], got {value!r}")
        for name in ("adult_classes", "safe_classes"):
            classes = getattr(self, name)
            if not classes or any(c not in CLASS_NAMES for c in classes):
                raise ValueError(f"{name} must be a non-empty subset of {CLASS_NAMES}, got {classes!r}")

    def adult_score(self, scores: Mapping[str, float]) -> float:
        return float(sum(scores[c] for c in self.adult_classes))

    def safe_score(self, scores: Mapping[str, float]) -> float:
        return float(sum(scores[c] for c in self.safe_classes))

    def decide(self, scores: Mapping[str, float]) -> str:
        if self.adult_score(scores) >= self.adult - EPSILON:
            return ADULT
        if self.safe_score(scores) >= self.safe - EPSILON:
            return SAFE
        return UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {"adult": self.adult, "safe": self.safe,
                "adult_classes": list(self.adult_classes), "safe_classes": list(self.safe_classes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Thresholds":
        return cls(adult=data["adult"], safe=data["safe"],
                   adult_classes=tuple(data.get("adult_classes", cls.adult_classes)),
                   safe_classes=tuple(data.get("safe_classes", cls.safe_classes)))

    @classmethod
    def from_settings(cls, settings: Any) -> "Thresholds":
        return cls(adult=settings.adult_threshold, safe=settings.safe_threshold,
                   adult_classes=tuple(settings.adult_classes), safe_classes=tuple(settings.safe_classes))


@dataclasses.dataclass(frozen=True)
class ActiveThresholds:
    """What is in force now, where it came from, and any warning about the file."""

    thresholds: Thresholds
    source: str  # "defaults" or "file"
    saved: dict[str, Any]  # metadata stored with the file (model, date, tuning set summary)
    warning: str | None = None


class ThresholdStore:
    """The thresholds file shared by the API and the pages; safe to use from many threads."""

    def __init__(self, path: str | Path, defaults: Thresholds) -> None:
        self.path = Path(path)
        self.defaults = defaults
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._active = ActiveThresholds(defaults, "defaults", {})

    @classmethod
    def from_settings(cls, settings: Any) -> "ThresholdStore":
        return cls(Path(settings.data_dir) / THRESHOLDS_FILE, Thresholds.from_settings(settings))

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> ActiveThresholds:
        """The thresholds in force, re-reading the file only when it changed."""
        stamp = self._file_stamp()
        with self._lock:
            if stamp != self._stamp:
                self._active = self._read() if stamp is not None else ActiveThresholds(self.defaults, "defaults", {})
                self._stamp = stamp
            return self._active

    def _read(self) -> ActiveThresholds:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            thresholds = Thresholds.from_dict(data["thresholds"])
            saved = {k: v for k, v in data.items() if k != "thresholds"}
            return ActiveThresholds(thresholds, "file", saved)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            warning = f"thresholds file {self.path} is unreadable ({exc}); using the defaults"
            return ActiveThresholds(self.defaults, "defaults", {}, warning)

    def save(self, thresholds: Thresholds, *, model: str, tuned_on: Mapping[str, Any] | None = None) -> ActiveThresholds:
        doc = {
            "thresholds": thresholds.to_dict(),
            "model": model,
            "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tuned_on": dict(tuned_on or {}),
        }
        atomic_write(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        return self.current()
