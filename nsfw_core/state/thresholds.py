"""The thresholds in force, as a versioned history in the one database (the review queue's).

Every save is a new row of ``thresholds_versions`` (:mod:`nsfw_core.state.migrations`, migration 3):
the values, the classes, the model, who saved them, when, and the labelled set and metrics they were
tuned on.  The highest version is in force.  A rollback is a new version copying an old one
(``rolled_back_from``); rows are never updated or deleted.

Replicas agree: :meth:`ThresholdHistory.current` answers from memory (a clock read and a comparison per
call, no database round trip) and, when the cached version is older than ``refresh_interval``
(0.5 s), starts one background refresh that reads the newest row in one statement.  So a version saved
by another process is in force everywhere within about ``refresh_interval`` plus one query, and no
request ever sees a half-written version (a row is read whole or not at all).

Failure: when the database cannot be reached (at start or later) the thresholds in force stay in force
(the defaults from the settings if none was ever read), with a warning in
:attr:`~nsfw_core.base.verdict.ActiveThresholds.warning` (``/health`` lists it), logged once per outage; the
next refresh that succeeds clears it.  Saving or rolling back while the database is down raises
:class:`ThresholdsUnavailable` (503 ``thresholds_unavailable``).

Existing installs: ``<data_dir>/thresholds.json``, when valid and the table is empty, is imported once as
version 1 (``saved_by`` "thresholds.json import"); the file is left in place and never written again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.refresher import Refresher
from nsfw_core.base.settings import Settings
from nsfw_core.base.verdict import (
    MAX_FILE_BYTES,
    THRESHOLDS_FILE,
    ActiveThresholds,
    Thresholds,
    parse_thresholds_file,
    read_small_regular_file,
)
from nsfw_core.state.db import REFRESH_INTERVAL, Backend, Pool, Tx, backend_for
from nsfw_core.state.errors import ReviewError
from nsfw_core.state.migrations import MIGRATIONS, THRESHOLDS_TABLE, migrate

log = logging.getLogger(__name__)
_QUOTED_PATH = re.compile(r"'/[^']*'|\"/[^\"]*\"")  # a symbolic link's target in a reason: not for /health

IMPORTED_BY = "thresholds.json import"
MAX_BY_LENGTH = 200
SOURCE = "database"
_COLUMNS = ("version", "adult", "safe", "adult_classes", "safe_classes", "model", "saved_by", "saved_at",
            "tuned_on", "note", "rolled_back_from")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {THRESHOLDS_TABLE}"


class ThresholdsError(NSFWError):
    """Base class of the thresholds history's errors."""

    status = 500
    code = "thresholds_error"


class ThresholdsUnavailable(ThresholdsError):
    """The database holding the thresholds cannot be reached; nothing was saved.  Retry later."""

    status = 503
    code = "thresholds_unavailable"


class ThresholdVersionNotFound(ThresholdsError):
    status = 404
    code = "not_found"


@dataclasses.dataclass(frozen=True)
class ThresholdVersion:
    """One row of the history."""

    version: int
    thresholds: Thresholds
    model: str
    saved_by: str
    saved_at: float  # seconds since the epoch
    tuned_on: dict[str, Any]
    note: str = ""
    rolled_back_from: int | None = None

    @property
    def saved_at_iso(self) -> str:
        return _dt.datetime.fromtimestamp(self.saved_at, _dt.timezone.utc).isoformat(timespec="seconds")

    def saved(self) -> dict[str, Any]:
        """The metadata as :attr:`ActiveThresholds.saved` carries it."""
        out: dict[str, Any] = {"version": self.version, "model": self.model, "saved_by": self.saved_by,
                               "saved_at": self.saved_at_iso, "tuned_on": self.tuned_on}
        if self.note:
            out["note"] = self.note
        if self.rolled_back_from is not None:
            out["rolled_back_from"] = self.rolled_back_from
        return out

    def active(self, warning: str | None = None) -> ActiveThresholds:
        return ActiveThresholds(self.thresholds, SOURCE, self.saved(), warning, self.version)


def _row(row: Sequence[Any]) -> ThresholdVersion:
    v = dict(zip(_COLUMNS, row, strict=True))
    thresholds = Thresholds(adult=float(v["adult"]), safe=float(v["safe"]),
                            adult_classes=tuple(json.loads(v["adult_classes"])),
                            safe_classes=tuple(json.loads(v["safe_classes"])))
    return ThresholdVersion(version=int(v["version"]), thresholds=thresholds, model=v["model"],
                            saved_by=v["saved_by"], saved_at=float(v["saved_at"]), tuned_on=json.loads(v["tuned_on"]),
                            note=v["note"] or "",
                            rolled_back_from=None if v["rolled_back_from"] is None else int(v["rolled_back_from"]))


class ThresholdHistory:
    """The thresholds history over SQLite or PostgreSQL; one object per process, shared by threads.

    Constructing it touches no database; the first :meth:`current` (or :meth:`refresh`) connects,
    migrates, imports ``thresholds.json`` if due and reads the version in force.
    """

    def __init__(self, url: str | None, *, data_dir: str | Path, defaults: Thresholds,
                 refresh_interval: float = REFRESH_INTERVAL, clock: Callable[[], float] = time.time,
                 pool: Pool | None = None) -> None:
        # ``pool``: the process context's one pool on the database, shared with the review queue.
        self._own_pool = pool is None
        self.backend: Backend = backend_for(url, data_dir) if pool is None else pool.backend
        self.data_dir = Path(data_dir)
        self.file = self.data_dir / THRESHOLDS_FILE
        self.defaults = defaults
        self.refresh_interval = float(refresh_interval)
        self.clock = clock
        self._pool = Pool(self.backend) if pool is None else pool
        self._lock = threading.Lock()  # guards the fields below
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self._prepared = False
        self._loaded = False  # a refresh has completed (successfully or not)
        self._refresher = Refresher(self.refresh, self.refresh_interval, "nsfw-thresholds-refresh")
        self._version: ThresholdVersion | None = None
        self._active = ActiveThresholds(defaults, "defaults", {})
        self._down_since: float | None = None
        self._file_warning: str | None = None  # an invalid thresholds.json, while nothing is saved

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "ThresholdHistory":
        """On ``NSFW_DATABASE_URL`` (empty: ``<data_dir>/review.sqlite``) with the settings' defaults."""
        return cls(settings.review_config.database_url or None, data_dir=settings.data_dir,
                   defaults=Thresholds.from_config(settings.threshold_config), **kwargs)

    def describe(self) -> str:
        return self.backend.describe()

    # ------------------------------------------------------------ reading (every request)

    def current(self) -> ActiveThresholds:
        """The thresholds in force: from memory; a stale copy starts one background refresh.

        The very first call of a process reads the database before answering (so the first
        request is judged under the saved version, not the defaults).  Never raises.
        """
        if not self._loaded:
            self.refresh()
            return self._active
        self._refresher.due()
        return self._active

    def refresh(self) -> ActiveThresholds:
        """Read the version in force now (connecting, migrating and importing first if not done yet).

        Never raises: an unreachable database keeps what is in force, with a warning.
        """
        with self._refresh_lock:
            self._refresher.checked = time.monotonic()
            try:
                if not self._prepared:
                    self.backend.recover()  # SQLite: a corrupt database or log is moved aside first
                with self._pool.connection() as conn:
                    if not self._prepared:
                        self._prepare(conn)
                    with self.backend.begin(conn, write=False) as tx:
                        row = tx.one(f"{_SELECT} ORDER BY version DESC LIMIT 1")
                latest = _row(row) if row is not None else None
            except Exception as exc:  # never break prediction
                self._failed(exc)
            else:
                self._succeeded(latest)
            self._loaded = True
            return self._active

    def _succeeded(self, latest: ThresholdVersion | None) -> None:
        with self._lock:
            if self._down_since is not None:
                log.warning("thresholds database %s is reachable again; version %s in force", self.describe(),
                            latest.version if latest else "none (defaults)")
                self._down_since = None
            if latest is None:
                self._version = None
                self._active = ActiveThresholds(self.defaults, "defaults", {}, self._file_warning)
            elif self._version is None or latest.version >= self._version.version:
                if self._version is not None and latest.version != self._version.version:
                    log.info("thresholds version %d in force (adult %g, safe %g, saved by %s)", latest.version,
                             latest.thresholds.adult, latest.thresholds.safe, latest.saved_by or "?")
                self._version, self._active = latest, latest.active()

    def _failed(self, exc: BaseException) -> None:
        reason = exc.message if isinstance(exc, NSFWError) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            kept = (f"keeping version {self._version.version} in force" if self._version is not None
                    else "using the defaults")
            # /health is public: the database's kind only; its address and the driver's error go to the log
            warning = (f"the thresholds database ({self.backend.public_name()}) is unreachable; {kept} "
                       f"(details in the server log)")
            if self._down_since is None:
                self._down_since = time.time()
                log.warning("thresholds database %s is unreachable (%s); %s; retrying every %g s", self.describe(),
                            reason[:300], kept, self.refresh_interval)
            self._active = dataclasses.replace(self._active, warning=warning)

    def _prepare(self, conn: Any) -> None:
        """Migrate the schema and import ``thresholds.json`` if due (once per process)."""
        try:
            migrate(self.backend, conn, MIGRATIONS, self.clock)
        except self.backend.errors as exc:
            raise ThresholdsUnavailable(f"cannot prepare the database ({self.describe()}): {exc}") from exc
        self._import_file(conn)
        self._prepared = True

    def _import_file(self, conn: Any) -> None:
        if not os.path.lexists(self.file):  # a dangling symlink is a file to warn about, not a missing one
            return
        try:
            thresholds, saved = parse_thresholds_file(read_small_regular_file(self.file, MAX_FILE_BYTES))
        except (OSError, ValueError) as exc:
            if self._count(conn) == 0:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                # /health is public: the file's name, not its path (the log has it); what is wrong with it stays
                self._file_warning = (f"the thresholds file ({os.path.basename(self.file)} in the data folder) is "
                                      f"unreadable ({_QUOTED_PATH.sub('<path>', reason)}), so unusable: not "
                                      "imported; the defaults are in force "
                                      "until thresholds are saved")
                log.warning("thresholds file %s is unreadable (%s), so unusable: not imported; the defaults are in "
                            "force until thresholds are saved", self.file, reason)
            return
        raw_tuned, raw_model = saved.get("tuned_on"), saved.get("model")
        tuned_on: dict[str, Any] = raw_tuned if isinstance(raw_tuned, dict) else {}
        model: str = raw_model if isinstance(raw_model, str) else ""
        with self.backend.begin(conn, write=True) as tx:
            self.backend.lock_migrations(tx)  # two processes importing at once: one wins
            if tx.one(f"SELECT COUNT(*) FROM {THRESHOLDS_TABLE}") != (0,):
                return
            version = self._insert(tx, thresholds, model=model, by=IMPORTED_BY, tuned_on=tuned_on,
                                   note=f"imported from {self.file}"
                                        + (f" (saved {saved['saved_at']})" if saved.get("saved_at") else ""))
        log.info("thresholds file %s imported as version %d; it is no longer read or written", self.file, version)

    def _count(self, conn: Any) -> int:
        with self.backend.begin(conn, write=False) as tx:
            row = tx.one(f"SELECT COUNT(*) FROM {THRESHOLDS_TABLE}")
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ writing (the calibrate page)

    def _insert(self, tx: Tx, thresholds: Thresholds, *, model: str, by: str, tuned_on: Mapping[str, Any],
                note: str = "", rolled_back_from: int | None = None) -> int:
        row = tx.one(
            f"INSERT INTO {THRESHOLDS_TABLE} (adult, safe, adult_classes, safe_classes, model, saved_by, saved_at, "
            "tuned_on, note, rolled_back_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING version",
            (float(thresholds.adult), float(thresholds.safe), json.dumps(list(thresholds.adult_classes)),
             json.dumps(list(thresholds.safe_classes)), model, by[:MAX_BY_LENGTH], self.clock(),
             json.dumps(dict(tuned_on), sort_keys=True, default=str), note, rolled_back_from))
        assert row is not None
        return int(row[0])

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Tx]:
        """One transaction on a pooled connection, the database prepared (recovered, migrated) first."""
        if not self._prepared:
            self.backend.recover()
        with self._pool.connection() as conn:
            if not self._prepared:
                self._prepare(conn)
            with self.backend.begin(conn, write=write) as tx:
                yield tx

    def _write(self, action: Callable[[Tx], int]) -> ActiveThresholds:
        try:
            with self._transaction(write=True) as tx:
                self.backend.lock_migrations(tx)  # versions are numbered in the order they commit
                version = action(tx)
                row = tx.one(f"{_SELECT} WHERE version = ?", (version,))
        except (ThresholdsError, ReviewError):
            raise
        except self.backend.errors as exc:
            raise ThresholdsUnavailable(f"the thresholds database {self.describe()} is unavailable; nothing "
                                        f"was saved: {exc}") from exc
        assert row is not None
        self._succeeded(_row(row))  # in force in this process at once
        self._loaded = True
        return self._active

    def save(self, thresholds: Thresholds, *, model: str, tuned_on: Mapping[str, Any] | None = None,
             by: str = "", note: str = "") -> ActiveThresholds:
        """Save ``thresholds`` as a new version, in force at once here and within ~1 s everywhere.

        ValueError (nothing saved) if they would not be valid (a class on both sides, say);
        :class:`ThresholdsUnavailable` if the database cannot be reached.
        """
        doc = {"thresholds": thresholds.to_dict()}
        parse_thresholds_file(json.dumps(doc).encode())  # the same checks as a file: overlapping classes...
        try:
            return self._write(lambda tx: self._insert(tx, thresholds, model=model, by=by,
                                                       tuned_on=dict(tuned_on or {}), note=note))
        except ReviewError as exc:  # ReviewUnavailable from connecting
            raise ThresholdsUnavailable(f"the thresholds database is unavailable; nothing was saved: "
                                        f"{exc.message}") from exc

    def rollback(self, version: int, *, by: str = "") -> ActiveThresholds:
        """A new version with the values of ``version`` (which must exist)."""

        def copy(tx: Tx) -> int:
            row = tx.one(f"{_SELECT} WHERE version = ?", (int(version),))
            if row is None:
                raise ThresholdVersionNotFound(f"there is no thresholds version {version}")
            old = _row(row)
            return self._insert(tx, old.thresholds, model=old.model, by=by, tuned_on=old.tuned_on,
                                note=f"rollback to version {old.version}", rolled_back_from=old.version)

        try:
            return self._write(copy)
        except ReviewError as exc:
            raise ThresholdsUnavailable(f"the thresholds database is unavailable; nothing was saved: "
                                        f"{exc.message}") from exc

    def history(self, limit: int = 100) -> list[ThresholdVersion]:
        """The newest ``limit`` versions, newest first.  :class:`ThresholdsUnavailable` if the database is down."""
        try:
            with self._transaction(write=False) as tx:
                rows = tx.run(f"{_SELECT} ORDER BY version DESC LIMIT ?", (int(limit),))
        except ThresholdsError:
            raise
        except ReviewError as exc:
            raise ThresholdsUnavailable(f"the thresholds database is unavailable: {exc.message}") from exc
        except self.backend.errors as exc:
            raise ThresholdsUnavailable(f"the thresholds database {self.describe()} is unavailable: {exc}") from exc
        return [_row(r) for r in rows]

    def close(self) -> None:
        self._refresher.closed = True
        if self._own_pool:
            self._pool.close()
