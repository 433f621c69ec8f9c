"""The three-state rule (adult / unknown / safe) and the saved thresholds file.

Since issue 15 the thresholds in force live in the database (:mod:`nsfw_core.state.thresholds`); the
file below is what older installs saved, imported once into that history.  :class:`ThresholdStore`
and :func:`parse_thresholds_file` remain for that import and for reading such files.

Rule: the *adult score* is the sum of the adult classes' probabilities (porn +
sexy by default); at or above ``adult`` it is "adult".  Otherwise the *safe
score* (neutral + drawings by default) at or above ``safe`` gives "safe".
Everything else is "unknown": a human reviews it.

:class:`ThresholdStore` keeps the thresholds chosen on the calibration page in
a JSON file (written atomically) and re-reads it when it changes, so the API
and the UI follow a new calibration without a restart.  A missing file means
the defaults from the settings.  Anything else that is not a valid file (see
:func:`parse_thresholds_file`: not a regular file, over :data:`MAX_FILE_BYTES`,
not UTF-8, not JSON, nested too deep, a threshold that is not a number in
[0, 1], unknown or overlapping classes...) is rejected: the last good
thresholds read from the file stay in force (the defaults if there were none),
with a warning that the UI and ``/health`` show, logged once per change of the
file.  Reading never blocks (a FIFO is refused before it is opened, and opened
non-blocking anyway) and never raises.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import stat
import threading
from pathlib import Path
from typing import Any, Mapping

from nsfw_core.base.files import atomic_write
from nsfw_core.base.labels import ADULT, CLASS_NAMES, SAFE, UNKNOWN
from nsfw_core.base.labels import VERDICTS as VERDICTS  # re-exported: callers import the verdicts from here too
from nsfw_core.base.settings import Settings, ThresholdConfig

THRESHOLDS_FILE = "thresholds.json"
# Sums of class probabilities carry float rounding (0.6 + 0.3 < 0.9 in binary):
# "at or above" compares with this much slack so a score that equals the
# threshold in decimal lands on the threshold's side.
EPSILON = 1e-9
MAX_FILE_BYTES = 64 * 1024  # a saved file is under 2 KiB; more than this is not one of ours

log = logging.getLogger(__name__)


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
    def from_dict(cls, data: Mapping[str, Any]) -> "Thresholds":
        return cls(adult=data["adult"], safe=data["safe"],
                   adult_classes=tuple(data.get("adult_classes", cls.adult_classes)),
                   safe_classes=tuple(data.get("safe_classes", cls.safe_classes)))

    @classmethod
    def from_config(cls, config: ThresholdConfig) -> "Thresholds":
        """The default thresholds from the settings (NSFW_ADULT_THRESHOLD, ...)."""
        return cls(adult=config.adult_threshold, safe=config.safe_threshold,
                   adult_classes=tuple(config.adult_classes), safe_classes=tuple(config.safe_classes))


@dataclasses.dataclass(frozen=True)
class ActiveThresholds:
    """What is in force now, where it came from, and any warning about the file."""

    thresholds: Thresholds
    source: str  # "defaults", "database" (nsfw_core.state.thresholds) or "file" (ThresholdStore)
    saved: dict[str, Any]  # metadata stored with them (model, date, who, tuning set summary)
    warning: str | None = None
    version: int | None = None  # the history's version in force (None: the defaults, or a file)


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


class ThresholdStore:
    """The thresholds file shared by the API and the pages; safe to use from many threads."""

    def __init__(self, path: str | Path, defaults: Thresholds) -> None:
        self.path = Path(path)
        self.defaults = defaults
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._active = ActiveThresholds(defaults, "defaults", {})
        self._good: ActiveThresholds | None = None  # the last valid file read, kept when it turns bad

    @classmethod
    def from_config(cls, config: ThresholdConfig) -> "ThresholdStore":
        return cls(Path(config.data_dir) / THRESHOLDS_FILE, Thresholds.from_config(config))

    @classmethod
    def from_settings(cls, settings: Settings) -> "ThresholdStore":
        """Shorthand for ``from_config(settings.threshold_config)`` (tests, scripts)."""
        return cls.from_config(settings.threshold_config)

    def _file_stamp(self) -> tuple[Any, ...] | None:
        """What identifies this version of the file (None: there is no file, not even a dangling link)."""
        try:
            st = os.stat(self.path)
        except OSError:
            try:
                st = os.lstat(self.path)  # a dangling symlink is a file to warn about, not a missing one
            except OSError:
                return None
            return ("link", st.st_dev, st.st_ino, st.st_mtime_ns)
        return (st.st_dev, st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def current(self) -> ActiveThresholds:
        """The thresholds in force, re-reading the file only when it changed."""
        stamp = self._file_stamp()
        with self._lock:
            if stamp != self._stamp:
                if stamp is None:  # no file: the defaults, and they are what a bad file falls back to from now on
                    self._good = None
                    self._active = ActiveThresholds(self.defaults, "defaults", {})
                else:
                    self._active = self._read()
                self._stamp = stamp
            return self._active

    def _read(self) -> ActiveThresholds:
        """Read and check the file (lock held); never raises.  Logs once per change of the file."""
        try:
            thresholds, saved = parse_thresholds_file(read_small_regular_file(self.path, MAX_FILE_BYTES))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            kept = self._good
            if kept is not None:
                warning = (f"thresholds file {self.path} is unreadable ({reason}); keeping the last good "
                           f"thresholds read from it")
                active = dataclasses.replace(kept, warning=warning)
            else:
                warning = f"thresholds file {self.path} is unreadable ({reason}); using the defaults"
                active = ActiveThresholds(self.defaults, "defaults", {}, warning)
            log.warning("%s", warning)
            return active
        except Exception as exc:  # a thresholds file must never break prediction
            warning = f"thresholds file {self.path} could not be read ({type(exc).__name__}); using the defaults"
            log.exception("%s", warning)
            return ActiveThresholds(self.defaults, "defaults", {}, warning)
        self._good = ActiveThresholds(thresholds, "file", saved)
        if self._stamp is not None and self._active.warning:
            log.warning("thresholds file %s is valid again: adult %g, safe %g", self.path,
                        thresholds.adult, thresholds.safe)
        return self._good

    def save(self, thresholds: Thresholds, *, model: str,
             tuned_on: Mapping[str, Any] | None = None) -> ActiveThresholds:
        """Write ``thresholds`` atomically; ValueError (and nothing written) if the file would not be valid."""
        doc = {
            "thresholds": thresholds.to_dict(),
            "model": model,
            "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tuned_on": dict(tuned_on or {}),
        }
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        parse_thresholds_file(data)  # overlapping classes, say: refused here rather than ignored when read
        atomic_write(self.path, data)
        return self.current()
