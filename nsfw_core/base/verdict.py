"""The three-state rule (adult / unknown / safe) and the reading of an old install's thresholds file.

Rule: the *adult score* is the sum of the adult classes' probabilities (porn +
sexy by default); at or above ``adult`` it is "adult".  Otherwise the *safe
score* (neutral + drawings by default) at or above ``safe`` gives "safe".
Everything else is "unknown": a human reviews it.

The thresholds in force live in the database (:mod:`nsfw_core.state.thresholds`, since issue 15).
Older installs saved them in ``<data_dir>/thresholds.json``, which that history imports once:
:func:`read_small_regular_file` reads it (never blocking: a FIFO is refused before it is opened,
and opened non-blocking anyway) and :func:`parse_thresholds_file` checks it (not over
:data:`MAX_FILE_BYTES`, UTF-8, JSON, not nested too deep, thresholds that are numbers in [0, 1],
known and non-overlapping classes...).  The history also runs every save through
:func:`parse_thresholds_file`, so what it stores is what a file could hold.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Mapping

from nsfw_core.base.labels import ADULT as ADULT  # re-exported with VERDICTS: the rule's three answers
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.labels import SAFE as SAFE
from nsfw_core.base.labels import UNKNOWN as UNKNOWN
from nsfw_core.base.labels import VERDICTS as VERDICTS  # re-exported: callers import the verdicts from here too
from nsfw_core.base.settings import ThresholdConfig

THRESHOLDS_FILE = "thresholds.json"
# Sums of class probabilities carry float rounding (0.6 + 0.3 < 0.9 in binary):
# "at or above" compares with this much slack so a score that equals the
# threshold in decimal lands on the threshold's side.
EPSILON = 1e-9
MAX_FILE_BYTES = 64 * 1024  # a saved file is under 2 KiB; more than this is not one of ours


def _is_number(value: Any) -> bool:
    """A real int or float (not a bool), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    adult: float = 0.7
    safe: float = 0.9
    adult_classes: tuple[str, ...] = ("porn", "sexy")
    safe_classes: tuple[str, ...] = ("neutral", "drawings")

    def __post_init__(self) -> None:
        for name in ("adult", "safe"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} threshold must be a number in [0, 1], got {_short(value)}")
        for name in ("adult_classes", "safe_classes"):
            classes = getattr(self, name)
            if not classes or any(c not in CLASS_NAMES for c in classes):
                raise ValueError(f"{name} must be a non-empty subset of {CLASS_NAMES}, got {_short(classes)}")

    def adult_score(self, scores: Mapping[str, float]) -> float:
        return float(sum(scores[c] for c in self.adult_classes))

    def safe_score(self, scores: Mapping[str, float]) -> float:
        return float(sum(scores[c] for c in self.safe_classes))

    def decide(self, scores: Mapping[str, float]) -> str:
        return self.decide_scores(self.adult_score(scores), self.safe_score(scores))

    def decide_scores(self, adult_score: float, safe_score: float) -> str:
        """The rule on an adult and a safe score already made (an adapter's score and one minus it)."""
        if adult_score >= self.adult - EPSILON:
            return ADULT
        if safe_score >= self.safe - EPSILON:
            return SAFE
        return UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {"adult": self.adult, "safe": self.safe,
                "adult_classes": list(self.adult_classes), "safe_classes": list(self.safe_classes)}

    @classmethod
    def from_config(cls, config: ThresholdConfig) -> "Thresholds":
        """The default thresholds from the settings (NSFW_ADULT_THRESHOLD, ...)."""
        return cls(adult=config.adult_threshold, safe=config.safe_threshold,
                   adult_classes=tuple(config.adult_classes), safe_classes=tuple(config.safe_classes))


@dataclasses.dataclass(frozen=True)
class ActiveThresholds:
    """What is in force now, where it came from, and any warning (the database, an old file)."""

    thresholds: Thresholds
    source: str  # "defaults" or "database" (nsfw_core.state.thresholds)
    saved: dict[str, Any]  # metadata stored with them (model, date, who, tuning set summary)
    warning: str | None = None
    version: int | None = None  # the history's version in force (None: the defaults)


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters (values from a file may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_thresholds_file(data: bytes) -> tuple[Thresholds, dict[str, Any]]:
    """The thresholds and the metadata saved with them, from a file's bytes; ValueError says what is wrong.

    Valid: a UTF-8 JSON object whose ``"thresholds"`` object has ``adult`` and
    ``safe`` numbers in [0, 1] (ints or floats, not booleans) and, optionally,
    ``adult_classes`` / ``safe_classes``: non-empty lists of distinct known
    class names with no class on both sides.
    """
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("thresholds"), dict):
        raise ValueError('expected a JSON object with a "thresholds" object')
    raw = doc["thresholds"]
    for name in ("adult", "safe"):
        if name not in raw:
            raise ValueError(f'"thresholds" has no "{name}"')
        value = raw[name]
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"the {name} threshold must be a number in [0, 1], got {_short(value)}")
    classes: dict[str, tuple[str, ...]] = {}
    for name in ("adult_classes", "safe_classes"):
        value = raw.get(name, getattr(Thresholds, name))
        if isinstance(value, tuple):
            value = list(value)
        if (not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value)
                or any(c not in CLASS_NAMES for c in value) or len(set(value)) != len(value)):
            raise ValueError(f"{name} must be a non-empty list of distinct classes from "
                             f"{', '.join(CLASS_NAMES)}, got {_short(value)}")
        classes[name] = tuple(value)
    both = sorted(set(classes["adult_classes"]) & set(classes["safe_classes"]))
    if both:
        raise ValueError(f"{', '.join(both)} cannot count as both adult and safe")
    thresholds = Thresholds(adult=raw["adult"], safe=raw["safe"], **classes)
    return thresholds, {k: v for k, v in doc.items() if k != "thresholds"}


def read_small_regular_file(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``path``, which must be a regular file (following symlinks).

    Never blocks: a FIFO, socket or device is refused from ``stat`` before it is
    opened, and the open is non-blocking anyway (the file could be swapped for
    a FIFO in between; ``fstat`` checks again).  OSError says what is wrong.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise OSError(f"it is a symbolic link to {os.readlink(path)!r}, which does not exist") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"it is not a regular file ({_file_kind(st.st_mode)})")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("it is not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"
