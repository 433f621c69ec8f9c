"""Example sets: a few images of something to block (or allow) now, matched by embedding.

An admin gives a handful of example images and a verdict (``adult``: block, ``safe``: allow);
:func:`nsfw_core.calibration.adapters.build_example_set` embeds them, chooses the similarity threshold
against a background set and reports its expected false-match rate.  Stored here (``example_sets``,
:mod:`nsfw_core.state.migrations`, migration 10) as an append-only log like the known images: a row adds
a set (``op`` 'add': its name, verdict, model and model version, threshold, the examples' centred unit
vectors and the report) or removes one (``op`` 'remove', ``removes`` = its id).  A set added under a
name that is in force replaces it.

Each process keeps the live sets in memory (:class:`ExampleSets`) and refreshes them in the background
like the thresholds (0.5 s), so a set added through one process is used by the others within about a
second.  :meth:`ExampleSets.match` compares an image's embedding with the sets of its model (a few
hundred multiplications per example); a set made with another model version is not used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import ADULT
from nsfw_core.base.refresher import Refresher
from nsfw_core.inference.embeddings import ExampleMatch, ExampleSet, match_examples
from nsfw_core.state.adapters import AdapterNotFound, AdaptersUnavailable, check_name, iso
from nsfw_core.state.db import REFRESH_INTERVAL, Pool, Tx
from nsfw_core.state.errors import ReviewError
from nsfw_core.state.migrations import EXAMPLE_SETS_TABLE, MIGRATIONS, migrate

log = logging.getLogger(__name__)

ADD, REMOVE = "add", "remove"
_COLUMNS = ("id", "op", "name", "verdict", "model", "model_version", "threshold", "vectors", "report", "removes",
            "added_by", "added_at")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {EXAMPLE_SETS_TABLE}"


@dataclasses.dataclass(frozen=True)
class StoredSet:
    """A live example set: its vectors and what it was made from."""

    id: int
    model: str
    model_version: str
    examples: ExampleSet
    report: dict[str, Any]
    added_by: str
    added_at: float

    @property
    def name(self) -> str:
        return self.examples.name

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "verdict": self.examples.verdict,
                "action": "block" if self.examples.verdict == ADULT else "allow", "model": self.model,
                "model_version": self.model_version, "threshold": self.examples.threshold,
                "examples": int(self.examples.examples.shape[0]), "added_by": self.added_by,
                "added_at": iso(self.added_at), "report": self.report}


def _stored(row: Sequence[Any]) -> StoredSet:
    v = dict(zip(_COLUMNS, row, strict=True))
    vectors = ExampleSet.from_json(v["vectors"], name=v["name"], verdict=v["verdict"], threshold=float(v["threshold"]))
    return StoredSet(int(v["id"]), v["model"], v["model_version"], vectors, json.loads(v["report"] or "{}"),
                     v["added_by"], float(v["added_at"]))


class ExampleSets:
    """The live example sets of the one database, in memory; see the module docstring."""

    def __init__(self, pool: Pool, *, refresh_interval: float = REFRESH_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self.backend = pool.backend
        self.clock = clock
        self._refresh_lock = threading.Lock()
        self._prepared = False
        self._loaded = False
        self._last_id = 0
        self._sets: dict[int, StoredSet] = {}
        self._refresher = Refresher(self.refresh, float(refresh_interval), "nsfw-examples-refresh")
        self.warning: str | None = None

    def describe(self) -> str:
        return self.backend.describe()

    # ------------------------------------------------------------ matching (every request)

    def match(self, model: str, model_version: str, frames: np.ndarray | None) -> ExampleMatch | None:
        """The set deciding an image whose embeddings (one row, or one per frame) are ``frames``; from memory."""
        if not self._loaded:
            self.refresh()
        else:
            self._refresher.due()
        if frames is None:
            return None
        sets = [(s.id, s.examples) for s in self._sets.values()
                if s.model == model and s.model_version == model_version]
        return match_examples(sets, frames) if sets else None

    def live(self) -> list[StoredSet]:
        """The sets in force, oldest first."""
        self.match("", "", None)
        return sorted(self._sets.values(), key=lambda s: s.id)

    def refresh(self) -> None:
        """Read the log rows added since the last refresh. Never raises."""
        with self._refresh_lock:
            self._refresher.checked = time.monotonic()
            try:
                rows = self._run(lambda tx: tx.run(f"{_SELECT} WHERE id > ? ORDER BY id", (self._last_id,)),
                                 write=False)
                sets = dict(self._sets)
                for row in rows:
                    op, removes = row[1], row[9]
                    if op == REMOVE and removes is not None:
                        sets.pop(int(removes), None)
                    elif op == ADD:
                        try:
                            added = _stored(row)
                        except ValueError as exc:  # a row that is not a valid set judges nothing
                            log.error("example set row %s is unusable: %s", row[0], exc)
                        else:
                            sets[added.id] = added
                if rows:
                    self._sets, self._last_id = sets, int(rows[-1][0])
            except Exception as exc:  # never break prediction
                reason = exc.message if isinstance(exc, NSFWError) else f"{type(exc).__name__}: {exc}"
                if self.warning is None:
                    log.warning("example sets: database %s unreachable (%s); keeping the sets in memory",
                                self.describe(), reason[:300])
                self.warning = (f"the example sets database ({self.backend.public_name()}) is unreachable; the "
                                "sets in memory stay in force (details in the server log)")
            else:
                self.warning = None
            self._loaded = True

    # ------------------------------------------------------------ writing (admins)

    def _run(self, action: Callable[[Tx], Any], *, write: bool) -> Any:
        try:
            if not self._prepared:
                self.backend.recover()
                with self._pool.connection() as conn:
                    migrate(self.backend, conn, MIGRATIONS, self.clock)
                self._prepared = True
            with self._pool.transaction(write=write) as tx:
                if write:
                    self.backend.lock_migrations(tx)  # ids visible in order (readers go forward by id)
                return action(tx)
        except NSFWError as exc:
            if isinstance(exc, ReviewError):
                raise AdaptersUnavailable(f"the database is unavailable; nothing was changed: {exc.message}") from exc
            raise
        except self.backend.errors as exc:
            raise AdaptersUnavailable(f"the database is unavailable; nothing was changed: {exc}") from exc

    def _live_ids(self, tx: Tx, name: str) -> list[int]:
        return [int(r[0]) for r in tx.run(
            f"SELECT a.id FROM {EXAMPLE_SETS_TABLE} a WHERE a.op = '{ADD}' AND a.name = ? AND NOT EXISTS "
            f"(SELECT 1 FROM {EXAMPLE_SETS_TABLE} r WHERE r.op = '{REMOVE}' AND r.removes = a.id)", (name,))]

    def add(self, examples: ExampleSet, *, model: str, model_version: str, report: Mapping[str, Any],
            by: str) -> StoredSet:
        """Put ``examples`` in force (replacing a live set of the same name), here at once and everywhere within
        about a second."""
        name = check_name(examples.name)
        now = self.clock()

        def write(tx: Tx) -> int:
            for old in self._live_ids(tx, name):
                tx.run(f"INSERT INTO {EXAMPLE_SETS_TABLE} (op, name, removes, added_by, added_at) VALUES "
                       f"('{REMOVE}', ?, ?, ?, ?)", (name, old, by, now))
            row = tx.one(f"INSERT INTO {EXAMPLE_SETS_TABLE} (op, name, verdict, model, model_version, threshold, "
                         f"vectors, report, added_by, added_at) VALUES ('{ADD}', ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                         "RETURNING id",
                         (name, examples.verdict, model, model_version, float(examples.threshold), examples.to_json(),
                          json.dumps(dict(report), sort_keys=True, default=str), by, now))
            assert row is not None
            return int(row[0])

        set_id = self._run(write, write=True)
        self.refresh()
        return self._sets[int(set_id)]

    def remove(self, name: str, *, by: str) -> int:
        """Take the set ``name`` out of force; :class:`AdapterNotFound` when no such set is live."""
        name = check_name(name)
        now = self.clock()

        def write(tx: Tx) -> int:
            ids = self._live_ids(tx, name)
            if not ids:
                raise AdapterNotFound(f"there is no example set {name}")
            for old in ids:
                tx.run(f"INSERT INTO {EXAMPLE_SETS_TABLE} (op, name, removes, added_by, added_at) VALUES "
                       f"('{REMOVE}', ?, ?, ?, ?)", (name, old, by, now))
            return len(ids)

        removed: int = self._run(write, write=True)
        self.refresh()
        return removed

    def keep_fresh(self) -> None:
        """Refresh every 0.5 s in the background, requests or not (the server): a publication made elsewhere is
        in force here within about a second even for the first request after a quiet spell."""
        self._refresher.keep_fresh()

    def close(self) -> None:
        self._refresher.closed = True
