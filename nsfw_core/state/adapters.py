"""Adapters, versioned and shared like the thresholds: every training kept, one published adapter per model.

An adapter (:mod:`nsfw_core.calibration.adapters` trains one) is a small head over a model's embeddings
(:class:`~nsfw_core.inference.embeddings.AdapterHead`) whose probability replaces the summed adult classes
as the adult score, with thresholds chosen on its held-out scores.  Each training is a row of
``adapter_versions`` (:mod:`nsfw_core.state.migrations`, migration 10), never changed: its name and
version (1, 2, ... per name), the model and model version whose embeddings it reads, the head (numbers
as JSON: nothing is ever unpickled), the thresholds, the report comparing it with the base model on
held-out data, a hash of the data it was trained on, who trained it and when.

Which adapter is in force is an append-only log, ``adapter_publications``: the newest row of a model
names the adapter in force for it (or none: the base model).  Publishing adds a row, and is refused
(:class:`AdapterRefused`, 409, with the report's figures) when the version's report did not pass
(too few examples, or not better than the base model on held-out data).  A rollback adds a row naming
an earlier published adapter (by default the one published before the one in force) or the base model.

Replicas agree: :meth:`Adapters.current` answers from memory and, when its copy is older than
``refresh_interval`` (0.5 s), starts one background refresh that reads the log forward from the last id
it has; a new adapter in force is read (its head parsed and checked) in that refresh, never on a
request.  The server also refreshes every 0.5 s without waiting for a request (:meth:`Adapters.keep_fresh`),
so the first request after a quiet spell is not judged under an old copy.  So an adapter published
through one process is used by every other within about a second (the issue's bound is 2 s).  A
database that cannot be reached keeps what is in force, with a warning.
An adapter is applied only to the model version it was trained on (a changed model file makes it
stale: the base model judges, with a warning).

The embeddings of queued review items live here too (``review_embeddings``): the request that queues an
item stores its image's embedding, so a reviewed item can train an adapter without its image.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.refresher import Refresher
from nsfw_core.base.verdict import Thresholds
from nsfw_core.inference.embeddings import AdapterHead, decode_embedding, encode_embedding
from nsfw_core.state.db import REFRESH_INTERVAL, Pool, Tx
from nsfw_core.state.errors import ReviewError
from nsfw_core.state.migrations import (
    ADAPTER_PUBLICATIONS_TABLE,
    ADAPTER_VERSIONS_TABLE,
    MIGRATIONS,
    REVIEW_EMBEDDINGS_TABLE,
    TABLE,
    migrate,
)

log = logging.getLogger(__name__)

MAX_NAME = 64
MAX_BY = 200
PUBLISH, ROLLBACK, WITHDRAW = "publish", "rollback", "withdraw"
_VERSION_COLUMNS = ("name", "version", "model", "model_version", "head", "t_adult", "t_safe", "report",
                    "dataset_sha256", "examples", "publishable", "trained_by", "trained_at", "note")
_SELECT_VERSION = f"SELECT {', '.join(_VERSION_COLUMNS)} FROM {ADAPTER_VERSIONS_TABLE}"
_PUB_COLUMNS = ("id", "model", "name", "version", "action", "published_by", "published_at", "note")
_SELECT_PUB = f"SELECT {', '.join(_PUB_COLUMNS)} FROM {ADAPTER_PUBLICATIONS_TABLE}"


class AdapterError(NSFWError):
    status = 500
    code = "adapter_error"


class AdapterNotFound(AdapterError):
    status = 404
    code = "not_found"


class AdapterRefused(AdapterError):
    """Publishing refused: the adapter's report did not pass (its figures are in ``report``)."""

    status = 409
    code = "adapter_refused"


class AdaptersUnavailable(AdapterError):
    status = 503
    code = "adapters_unavailable"


class InvalidName(AdapterError):
    status = 400
    code = "invalid_name"


def check_name(name: Any) -> str:
    """An adapter's (or example set's) name: 1 to 64 ASCII letters, digits, ``-``, ``_`` or ``.``."""
    text = str(name if name is not None else "").strip()
    if not 0 < len(text) <= MAX_NAME or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in text):
        raise InvalidName(f"a name is 1 to {MAX_NAME} ASCII letters, digits, '-', '_' or '.'; got {text[:80]!r}")
    return text


def iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class AdapterVersion:
    """One trained adapter (a row of ``adapter_versions``)."""

    name: str
    version: int
    model: str
    model_version: str
    head: AdapterHead
    t_adult: float
    t_safe: float
    report: dict[str, Any]
    dataset_sha256: str
    examples: int
    publishable: bool
    trained_by: str
    trained_at: float
    note: str = ""

    @property
    def ref(self) -> dict[str, Any]:
        """``{"name", "version"}``: what a detail answer's ``adapter`` says."""
        return {"name": self.name, "version": self.version}

    def thresholds(self, base: Thresholds) -> Thresholds:
        """The thresholds this adapter judges with (its own values; the classes of ``base`` are not used)."""
        return dataclasses.replace(base, adult=self.t_adult, safe=self.t_safe)

    def score(self, embedding: np.ndarray, scores: Mapping[str, float]) -> float:
        """An image's adult score under this adapter."""
        return self.head.score(embedding, scores)

    def summary(self) -> dict[str, Any]:
        """What ``adapter list`` and the page show (the head's numbers left out)."""
        return {"name": self.name, "version": self.version, "model": self.model, "model_version": self.model_version,
                "thresholds": {"adult": self.t_adult, "safe": self.t_safe}, "examples": self.examples,
                "dataset_sha256": self.dataset_sha256, "publishable": self.publishable,
                "trained_by": self.trained_by, "trained_at": iso(self.trained_at), "note": self.note,
                "report": self.report}


@dataclasses.dataclass(frozen=True)
class Publication:
    """One row of the publication log: from then on, ``name``/``version`` is in force for ``model``."""

    id: int
    model: str
    name: str | None  # None: the base model
    version: int | None
    action: str
    published_by: str
    published_at: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "adapter": None if self.name is None else
                {"name": self.name, "version": self.version}, "action": self.action,
                "published_by": self.published_by, "published_at": iso(self.published_at), "note": self.note}


def _version_row(row: Sequence[Any]) -> AdapterVersion:
    v = dict(zip(_VERSION_COLUMNS, row, strict=True))
    return AdapterVersion(name=v["name"], version=int(v["version"]), model=v["model"],
                          model_version=v["model_version"], head=AdapterHead.from_json(v["head"]),
                          t_adult=float(v["t_adult"]), t_safe=float(v["t_safe"]), report=json.loads(v["report"]),
                          dataset_sha256=v["dataset_sha256"], examples=int(v["examples"]),
                          publishable=bool(v["publishable"]), trained_by=v["trained_by"],
                          trained_at=float(v["trained_at"]), note=v["note"] or "")


def _pub_row(row: Sequence[Any]) -> Publication:
    v = dict(zip(_PUB_COLUMNS, row, strict=True))
    return Publication(id=int(v["id"]), model=v["model"], name=v["name"],
                       version=None if v["version"] is None else int(v["version"]), action=v["action"],
                       published_by=v["published_by"], published_at=float(v["published_at"]), note=v["note"] or "")


class Adapters:
    """The adapters of the one database, and the one in force per model, kept in memory; see the module docstring.

    Constructing it touches no database; the first :meth:`current` (or :meth:`refresh`) connects and migrates.
    """

    def __init__(self, pool: Pool, *, refresh_interval: float = REFRESH_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self.backend = pool.backend
        self.refresh_interval = float(refresh_interval)
        self.clock = clock
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._prepared = False
        self._loaded = False
        self._last_id = 0
        self._latest: dict[str, Publication] = {}  # model -> its newest publication row
        self._in_force: dict[str, AdapterVersion] = {}  # model -> the adapter in force (absent: the base model)
        self._stale: set[tuple[str, int, str]] = set()  # (name, version, model version) warned about
        self._refresher = Refresher(self.refresh, self.refresh_interval, "nsfw-adapters-refresh")
        self.warning: str | None = None

    def describe(self) -> str:
        return self.backend.describe()

    # ------------------------------------------------------------ reading (every request)

    def current(self, model: str, model_version: str | None = None) -> AdapterVersion | None:
        """The adapter in force for ``model`` (None: the base model); from memory.  Never raises.

        With ``model_version``, an adapter trained on another version of the model is not returned (logged once).
        """
        if not self._loaded:
            self.refresh()
        else:
            self._refresher.due()
        adapter = self._in_force.get(model)
        if adapter is None or model_version is None or adapter.model_version == model_version:
            return adapter
        key = (adapter.name, adapter.version, model_version)
        if key not in self._stale:
            self._stale.add(key)
            log.warning("adapter %s v%d was trained on %s %s, not on the loaded %s: the base model judges until an "
                        "adapter for this version is published", adapter.name, adapter.version, model,
                        adapter.model_version, model_version)
        return None

    def in_force(self) -> dict[str, AdapterVersion]:
        """Every model's adapter in force (the models judged by the base model are absent)."""
        self.current("")
        return dict(self._in_force)

    def refresh(self) -> None:
        """Read the publications added since the last refresh (migrating first, once). Never raises."""
        with self._refresh_lock:
            self._refresher.checked = time.monotonic()
            try:
                with self._tx(write=False) as tx:
                    rows = [_pub_row(r) for r in tx.run(f"{_SELECT_PUB} WHERE id > ? ORDER BY id", (self._last_id,))]
                    latest = dict(self._latest)
                    for pub in rows:
                        latest[pub.model] = pub
                    in_force = dict(self._in_force)
                    for model in {p.model for p in rows}:
                        pub = latest[model]
                        if pub.name is None or pub.version is None:
                            in_force.pop(model, None)
                            continue
                        held = in_force.get(model)
                        if held is None or (held.name, held.version) != (pub.name, pub.version):
                            row = tx.one(f"{_SELECT_VERSION} WHERE name = ? AND version = ?", (pub.name, pub.version))
                            if row is None:
                                raise AdapterNotFound(f"the published adapter {pub.name} v{pub.version} is missing")
                            in_force[model] = _version_row(row)
                for model, adapter in in_force.items():
                    if self._in_force.get(model) is not adapter:
                        log.info("adapter %s v%d in force for %s", adapter.name, adapter.version, model)
                for model in set(self._in_force) - set(in_force):
                    log.info("no adapter in force for %s: the base model judges", model)
                with self._lock:
                    self._latest, self._in_force = latest, in_force
                    if rows:
                        self._last_id = rows[-1].id
            except Exception as exc:  # never break prediction
                reason = exc.message if isinstance(exc, NSFWError) else f"{type(exc).__name__}: {exc}"
                if self.warning is None:
                    log.warning("adapters: database %s unreachable (%s); keeping the adapters in force",
                                self.describe(), reason[:300])
                self.warning = (f"the adapters database ({self.backend.public_name()}) is unreachable; the adapters "
                                "in force stay in force (details in the server log)")
            else:
                if self.warning is not None:
                    log.warning("adapters: database %s reachable again", self.describe())
                self.warning = None
            self._loaded = True

    # ------------------------------------------------------------ the database

    def _tx(self, *, write: bool) -> Any:
        """A transaction, the database recovered and migrated first (once)."""
        if not self._prepared:
            self.backend.recover()
            with self._pool.connection() as conn:
                migrate(self.backend, conn, MIGRATIONS, self.clock)
            self._prepared = True
        return self._pool.transaction(write=write)

    def _run(self, action: Callable[[Tx], Any], *, write: bool) -> Any:
        try:
            with self._tx(write=write) as tx:
                if write:
                    self.backend.lock_migrations(tx)  # publications numbered in the order they commit
                return action(tx)
        except AdapterError:
            raise
        except ReviewError as exc:  # the pool's conversion of the database's errors
            raise AdaptersUnavailable(f"the adapters database is unavailable; nothing was changed: {exc.message}") \
                from exc
        except self.backend.errors as exc:  # migrating
            raise AdaptersUnavailable(f"the adapters database is unavailable; nothing was changed: {exc}") from exc

    # ------------------------------------------------------------ writing (the CLI, the calibrate page)

    def save(self, *, name: str, model: str, model_version: str, head: AdapterHead, t_adult: float, t_safe: float,
             report: Mapping[str, Any], dataset_sha256: str, examples: int, publishable: bool, by: str,
             note: str = "") -> AdapterVersion:
        """Store a trained adapter as the next version of ``name`` (not published)."""
        name = check_name(name)
        Thresholds(adult=t_adult, safe=t_safe)  # ValueError for thresholds outside [0, 1]

        def insert(tx: Tx) -> AdapterVersion:
            row = tx.one(f"SELECT MAX(version) FROM {ADAPTER_VERSIONS_TABLE} WHERE name = ?", (name,))
            version = int(row[0]) + 1 if row and row[0] is not None else 1
            tx.run(f"INSERT INTO {ADAPTER_VERSIONS_TABLE} ({', '.join(_VERSION_COLUMNS)}) VALUES "
                   f"({', '.join('?' * len(_VERSION_COLUMNS))})",
                   (name, version, model, model_version, head.to_json(), float(t_adult), float(t_safe),
                    json.dumps(dict(report), sort_keys=True, default=str), dataset_sha256, int(examples),
                    1 if publishable else 0, by[:MAX_BY], self.clock(), note))
            found = tx.one(f"{_SELECT_VERSION} WHERE name = ? AND version = ?", (name, version))
            assert found is not None
            return _version_row(found)

        saved: AdapterVersion = self._run(insert, write=True)
        return saved

    def get(self, name: str, version: int | None = None) -> AdapterVersion:
        """Version ``version`` of ``name`` (default: its newest); :class:`AdapterNotFound` when there is none."""
        name = check_name(name)

        def read(tx: Tx) -> AdapterVersion:
            if version is None:
                row = tx.one(f"{_SELECT_VERSION} WHERE name = ? ORDER BY version DESC LIMIT 1", (name,))
            else:
                row = tx.one(f"{_SELECT_VERSION} WHERE name = ? AND version = ?", (name, int(version)))
            if row is None:
                which = f"{name} v{version}" if version is not None else name
                raise AdapterNotFound(f"there is no adapter {which}")
            return _version_row(row)

        found: AdapterVersion = self._run(read, write=False)
        return found

    def versions(self, name: str | None = None, limit: int = 100) -> list[AdapterVersion]:
        """The newest ``limit`` trained adapters (of ``name``), newest first."""
        where, params = ("WHERE name = ? ", (check_name(name),)) if name is not None else ("", ())
        rows = self._run(lambda tx: tx.run(f"{_SELECT_VERSION} {where}ORDER BY trained_at DESC, version DESC LIMIT ?",
                                           (*params, int(limit))), write=False)
        return [_version_row(r) for r in rows]

    def publications(self, model: str | None = None, limit: int = 100) -> list[Publication]:
        """The newest ``limit`` rows of the publication log (of ``model``), newest first."""
        where, params = ("WHERE model = ? ", (model,)) if model is not None else ("", ())
        rows = self._run(lambda tx: tx.run(f"{_SELECT_PUB} {where}ORDER BY id DESC LIMIT ?", (*params, int(limit))),
                         write=False)
        return [_pub_row(r) for r in rows]

    def _append(self, tx: Tx, model: str, name: str | None, version: int | None, action: str, by: str,
                note: str) -> None:
        tx.run(f"INSERT INTO {ADAPTER_PUBLICATIONS_TABLE} (model, name, version, action, published_by, published_at, "
               "note) VALUES (?, ?, ?, ?, ?, ?, ?)", (model, name, version, action, by[:MAX_BY], self.clock(), note))

    def publish(self, name: str, version: int | None = None, *, by: str, note: str = "") -> AdapterVersion:
        """Put ``name`` (version ``version``, default its newest) in force for its model, here at once and on every
        replica within about a second.  :class:`AdapterRefused` when its report did not pass."""
        adapter = self.get(name, version)
        if not adapter.publishable:
            gate = adapter.report.get("gate", {})
            reasons = "; ".join(gate.get("reasons", [])) or "its report did not pass"
            raise AdapterRefused(f"adapter {adapter.name} v{adapter.version} is not published: {reasons}",
                                 report=_figures(adapter.report))
        self._run(lambda tx: self._append(tx, adapter.model, adapter.name, adapter.version, PUBLISH, by, note),
                  write=True)
        self.refresh()
        return adapter

    def withdraw(self, model: str, *, by: str, note: str = "") -> None:
        """The base model judges ``model`` again (no adapter in force)."""
        self._run(lambda tx: self._append(tx, model, None, None, WITHDRAW, by, note), write=True)
        self.refresh()

    def rollback(self, model: str, *, by: str, to: tuple[str, int] | None = None,
                 base: bool = False) -> AdapterVersion | None:
        """Put an earlier adapter back in force for ``model``: ``to`` (name, version), which must have been
        published for it before; ``base``: none (the base model); by default the adapter published before the one
        in force (the base model when there was none).  Returns the adapter now in force (None: the base model)."""

        def choose(tx: Tx) -> tuple[str, int] | None:
            log_rows = [_pub_row(r) for r in tx.run(f"{_SELECT_PUB} WHERE model = ? ORDER BY id", (model,))]
            if not log_rows:
                raise AdapterNotFound(f"no adapter was ever published for {model}: nothing to roll back")
            published = [(p.name, p.version) for p in log_rows if p.action == PUBLISH and p.name is not None]
            if base:
                return None
            if to is not None:
                if (to[0], to[1]) not in published:
                    raise AdapterNotFound(f"adapter {to[0]} v{to[1]} was never published for {model}")
                return to
            current = log_rows[-1]
            if current.name is None or current.version is None:
                raise AdapterNotFound(f"no adapter is in force for {model}; name the one to put back")
            here = (current.name, current.version)
            # the latest publish of the adapter in force, then the publish before it that names another adapter
            last = max(i for i, p in enumerate(published) if p == here) if here in published else len(published)
            earlier = [p for p in published[:last] if p != here]
            if not earlier:
                return None
            name, version = earlier[-1]
            assert name is not None and version is not None
            return name, version

        def write(tx: Tx) -> tuple[str, int] | None:
            target = choose(tx)
            if target is None:
                self._append(tx, model, None, None, ROLLBACK, by, "rollback to the base model")
            else:
                self._append(tx, model, target[0], target[1], ROLLBACK, by, f"rollback to {target[0]} v{target[1]}")
            return target

        target = self._run(write, write=True)
        self.refresh()
        return None if target is None else self.get(target[0], target[1])

    # ------------------------------------------------------------ the embeddings of queued items

    def save_item_embedding(self, item_id: int, model: str, model_version: str, embedding: np.ndarray) -> None:
        """Keep the embedding of review item ``item_id`` (the first one given wins)."""
        text = encode_embedding(embedding)
        self._run(lambda tx: tx.run(
            f"INSERT INTO {REVIEW_EMBEDDINGS_TABLE} (item_id, model, model_version, embedding, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (item_id) DO NOTHING",
            (int(item_id), model, model_version, text, self.clock())), write=True)

    def item_embedding(self, item_id: int) -> tuple[str, str, np.ndarray] | None:
        """Review item ``item_id``'s kept embedding with the model and model version that made it (None: none
        kept); e.g. a remembered decision's (``Match.review_id``), to compare with a request's embedding."""
        row = self._run(lambda tx: tx.one(f"SELECT model, model_version, embedding FROM {REVIEW_EMBEDDINGS_TABLE} "
                                          "WHERE item_id = ?", (int(item_id),)), write=False)
        vector = None if row is None else decode_embedding(row[2])
        return None if row is None or vector is None else (row[0], row[1], vector)

    def item_embeddings(self, model: str, model_version: str) -> dict[int, tuple[np.ndarray, bytes | None]]:
        """The embeddings of the review items still in the queue, queued by ``model`` at ``model_version``, each
        with the item's PDQ hash (the whole image's, None when it has none): ``{item id: (embedding, hash)}``."""

        def read(tx: Tx) -> list[tuple[Any, ...]]:
            tx.run(f"DELETE FROM {REVIEW_EMBEDDINGS_TABLE} WHERE item_id NOT IN (SELECT id FROM {TABLE})")
            return tx.run(f"SELECT e.item_id, e.embedding, r.phash FROM {REVIEW_EMBEDDINGS_TABLE} e JOIN {TABLE} r "
                          "ON r.id = e.item_id WHERE e.model = ? AND e.model_version = ?", (model, model_version))

        out: dict[int, tuple[np.ndarray, bytes | None]] = {}
        for item_id, text, hashes in self._run(read, write=True):
            vector = decode_embedding(text)
            if vector is None:
                continue
            first = (hashes or "").split(",")[0]
            try:
                ph = bytes.fromhex(first) if len(first) == 64 else None
            except ValueError:
                ph = None
            out[int(item_id)] = (vector, ph)
        return out

    def keep_fresh(self) -> None:
        """Refresh every 0.5 s in the background, requests or not (the server): a publication made elsewhere is
        in force here within about a second even for the first request after a quiet spell."""
        self._refresher.keep_fresh()

    def close(self) -> None:
        self._refresher.closed = True


def _figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report's headline figures, for a refusal."""
    keys = ("n", "n_adult", "n_safe", "auc", "precision_at_recall", "review_share", "gate")
    return {k: report[k] for k in keys if k in report}
