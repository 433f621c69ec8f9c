"""The human review queue: images the model could not decide, waiting for a person.

An image whose verdict is in ``NSFW_REVIEW_VERDICTS`` (``unknown`` by default,
see :func:`should_queue`) is put in the queue with its sha256, its source (URL
or ``upload:<name>``), the model's five scores and the model's name; its bytes
are kept too when ``NSFW_REVIEW_STORE_UPLOADS`` is on.  Reviewers *claim* the
oldest pending item for a lease (``NSFW_REVIEW_LEASE_SECONDS``), then *decide*
a label (``adult``/``safe`` or one of the five classes), *skip* it (back to
the end of the queue) or let the lease run out (it is pending again).  The
reviewed items feed the calibration page (:meth:`ReviewQueue.reviewed_items`,
stored scores, no re-scoring) and a manifest CSV (:meth:`ReviewQueue.export_csv`).

Storage
-------
One table, ``review_items``, in either

- SQLite (stdlib ``sqlite3``): ``<data_dir>/review.sqlite`` when
  ``NSFW_DATABASE_URL`` is empty (or ``sqlite:///path``), WAL journal,
  busy timeout, ``synchronous=FULL`` and ``secure_delete``.  Opening a queue
  first checks the ``-wal`` header and runs ``PRAGMA quick_check``: a corrupt
  log or database is moved aside to ``*.corrupt-<UTC time>`` with an ERROR log
  line saying where (:meth:`_SQLite.recover`), never deleted; or
- PostgreSQL (psycopg 3) for a ``postgresql://`` URL.

Both run the same SQL; only the parameter style (``?`` vs ``%s``, converted in
:meth:`_Backend.sql`), a few column types and ``FOR UPDATE SKIP LOCKED`` differ.
Connections come from a small pool (Streamlit runs every script run in a new
thread, so thread-local connections would pile up).  Every write is one
transaction (SQLite ``BEGIN IMMEDIATE``), so a process dying mid-write leaves
the previous state.

Concurrency guarantees
----------------------
- :meth:`enqueue`: a partial unique index on ``sha256`` where the status is
  pending or claimed, with ``INSERT … ON CONFLICT DO NOTHING``, so an image is
  queued at most once while open, even from two processes at the same time; it
  may be queued again once decided.
- :meth:`claim`: ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)`` on
  PostgreSQL; on SQLite the same statement inside ``BEGIN IMMEDIATE`` (writers
  are serialised).  Two reviewers never get the same item.
- :meth:`decide` / :meth:`skip` / :meth:`release` only act on an item that is
  pending or claimed by that reviewer; otherwise :class:`ReviewConflict` (409).

Times are seconds since the epoch from the queue's clock (``time.time`` unless
one is injected), stored as double precision.

Schema migrations
-----------------
``review_schema_version`` records the applied versions; :data:`MIGRATIONS` is
the ordered list.  Opening a queue applies the missing ones in one transaction
(under an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two
processes starting together migrate once.  A database newer than this code is
refused (:class:`ReviewConfigError`) rather than written to.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import io
import json
import logging
import queue as _queue
import re
import sqlite3
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from .errors import BadRequest, NSFWError
from .files import move_aside, wal_header_problem
from .settings import CLASS_NAMES

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- constants

PENDING, CLAIMED, DECIDED, SKIPPED = "pending", "claimed", "decided", "skipped"
STATUSES = (PENDING, CLAIMED, DECIDED, SKIPPED)  # "skipped" is reserved; skip() puts items back to pending
BINARY_LABELS = ("adult", "safe")
LABELS = BINARY_LABELS + CLASS_NAMES
DB_FILE = "review.sqlite"
TABLE = "review_items"
VERSION_TABLE = "review_schema_version"
DEFAULT_LEASE_SECONDS = 300
DEFAULT_RETENTION_DAYS = 30
PURGE_INTERVAL = 3600.0  # purge_if_due() runs purge() at most this often per queue object
CSV_COLUMNS = ("path", "label", "sha256", "model", *CLASS_NAMES, "decided_at")
MAX_SOURCE_LENGTH = 4096
MAX_REVIEWER_LENGTH = 200
_PG_LOCK_KEY = 0x6E736677_72657677 & 0x7FFFFFFFFFFFFFFF  # "nsfwrevw": advisory lock for migrations
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

# ---------------------------------------------------------------- errors


class ReviewError(NSFWError):
    """Base class of the review queue's errors."""

    status = 500
    code = "review_error"


class ReviewConfigError(ReviewError):
    """``NSFW_DATABASE_URL`` is not usable, or the database schema is newer than this code."""

    status = 500
    code = "review_config"


class ReviewUnavailable(ReviewError):
    """The database cannot be reached or stays locked; retry later."""

    status = 503
    code = "review_unavailable"


class InvalidLabel(BadRequest):
    code = "invalid_label"


class ItemNotFound(ReviewError):
    status = 404
    code = "not_found"


class ReviewConflict(ReviewError):
    """The item is claimed by someone else, already decided, or not claimed by you."""

    status = 409
    code = "review_conflict"


# ---------------------------------------------------------------- items


@dataclasses.dataclass(frozen=True)
class Item:
    id: int
    sha256: str
    source: str
    scores: dict[str, float]
    model: str
    verdict: str
    created_at: float
    queued_at: float
    status: str
    claimed_by: str | None
    lease_until: float | None
    decision: str | None
    decided_by: str | None
    decided_at: float | None
    skips: int
    image: bytes | None = None  # only loaded by get(), claim() and undo()
    has_image: bool = False

    @property
    def is_url(self) -> bool:
        return _is_url(self.source)


@dataclasses.dataclass(frozen=True)
class ReviewedItem:
    """A decided item for calibration; ``source, label, binary`` like ``labelsets.LabelledItem``."""

    source: str
    label: str
    binary: str  # "adult" or "safe"
    sha256: str
    scores: dict[str, float]
    model: str
    decided_at: float
    decided_by: str
    id: int
    has_image: bool

    def labelled(self) -> Any:
        """The same as a ``labelsets.LabelledItem``."""
        from .labelsets import LabelledItem

        return LabelledItem(self.source, self.label, self.binary)


# ---------------------------------------------------------------- helpers


def _is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def normalise_label(raw: Any) -> str:
    label = str(raw if raw is not None else "").strip().lower()
    return {"drawing": "drawings", "nsfw": "adult", "sfw": "safe"}.get(label, label)


def check_label(raw: Any) -> str:
    label = normalise_label(raw)
    if label not in LABELS:
        raise InvalidLabel(f"unknown label {raw!r}; expected one of {', '.join(LABELS)}")
    return label


def _check_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    try:
        out = {c: float(scores[c]) for c in CLASS_NAMES}
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"scores must give a number for each of {', '.join(CLASS_NAMES)} ({exc})") from exc
    return out


def _check_reviewer(reviewer: Any) -> str:
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise BadRequest("a reviewer id is required")
    reviewer = reviewer.strip()
    if len(reviewer) > MAX_REVIEWER_LENGTH:
        raise BadRequest(f"reviewer id longer than {MAX_REVIEWER_LENGTH} characters")
    return reviewer


def redact_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def iso(ts: float | None) -> str:
    """UTC ISO 8601 with seconds (empty for None)."""
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def image_suffix(data: bytes) -> str:
    """A file suffix for stored image bytes, from their magic number."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:2] == b"BM":
        return ".bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return ".jpg"


def should_queue(verdict: str, settings: Any) -> bool:
    """True when an image with this verdict goes to human review (``NSFW_REVIEW_VERDICTS``)."""
    return verdict in settings.review_verdicts


# ---------------------------------------------------------------- backends


class _Tx:
    """One transaction's cursor: ``run`` converts the SQL and returns the rows (if any)."""

    def __init__(self, backend: "_Backend", cursor: Any) -> None:
        self.backend = backend
        self.cursor = cursor
        self.rowcount = 0

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        self.cursor.execute(self.backend.sql(sql), tuple(params))
        self.rowcount = self.cursor.rowcount
        if self.cursor.description is None:
            return []
        return [tuple(r) for r in self.cursor.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.run(sql, params)
        return rows[0] if rows else None


class _Backend:
    name = ""
    skip_locked = ""  # appended to the claim's inner SELECT
    for_update = ""  # appended to a locking SELECT
    types: dict[str, str] = {}
    errors: tuple[type[BaseException], ...] = ()

    def sql(self, text: str) -> str:
        return text

    def connect(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def begin(self, conn: Any, write: bool) -> contextlib.AbstractContextManager:  # pragma: no cover
        raise NotImplementedError

    def usable(self, conn: Any) -> bool:
        return True

    def recover(self) -> None:
        """Before first use: deal with a database left corrupt (SQLite moves it aside)."""

    def lock_migrations(self, tx: _Tx) -> None:
        pass

    def wrap(self, exc: BaseException) -> ReviewError:
        return ReviewUnavailable(f"review database error: {exc}")

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class _SQLite(_Backend):
    name = "sqlite"
    types = {"pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB", "float": "DOUBLE PRECISION"}
    errors = (sqlite3.Error,)

    def __init__(self, path: str | Path, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout

    def connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise ReviewUnavailable(f"cannot open the review database {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")  # purged images are overwritten, not left in free pages
        except sqlite3.Error as exc:
            conn.close()
            raise ReviewUnavailable(f"cannot open the review database {self.path}: {exc}") from exc
        return conn

    def _wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL mode. While another connection converts a new file, SQLite answers
        'database is locked' at once, without its busy handler: retry until busy_timeout."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextlib.contextmanager
    def begin(self, conn: sqlite3.Connection, write: bool) -> Iterator[_Tx]:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _Tx(self, cur)
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        cur.execute("COMMIT")

    def usable(self, conn: sqlite3.Connection) -> bool:
        return not conn.in_transaction

    def describe(self) -> str:
        return f"SQLite {self.path}"

    # ------------------------------------------------------------ corruption

    def recover(self) -> None:
        """A corrupt ``-wal`` or database is moved aside (``*.corrupt-<UTC time>``), logged at ERROR.

        1. The ``-wal`` header is checked *before* SQLite opens the database:
           SQLite would take a WAL with a bad header for an empty one and delete
           it, transactions and all, when the connection closes.  A bad one is
           moved aside with its ``-shm``; the database itself is then checked
           and, if sound, used as it was before those transactions.
        2. ``PRAGMA quick_check`` on the database; if it reports corruption (or
           the file is not a database), the database and its ``-wal``/``-shm``
           are moved aside and a fresh one is started.

        "Locked" or I/O errors are not corruption: they raise
        :class:`ReviewUnavailable` and nothing is moved.  Neither is a moving
        failure: the files stay where they are and the queue is unavailable.
        """
        problem = wal_header_problem(f"{self.path}-wal")
        if problem is not None:
            time.sleep(0.05)  # a header being written by another process at this very moment?
            problem = wal_header_problem(f"{self.path}-wal")
        if problem is not None:
            moved = self._move_aside(("-wal", "-shm"))
            log.error("review database %s: its write-ahead log was corrupt (%s) and SQLite would have deleted it; "
                      "moved it aside to %s; the transactions in it are not in the queue", self.path, problem,
                      ", ".join(str(new) for _, new in moved))
        problem = self._integrity_problem()
        if problem is not None:
            moved = self._move_aside(("", "-wal", "-shm"))
            log.error("review database %s is corrupt (%s): moved it aside to %s and started a new, empty one",
                      self.path, problem, ", ".join(str(new) for _, new in moved))

    def _move_aside(self, suffixes: tuple[str, ...]) -> list[tuple[Path, Path]]:
        try:
            return move_aside(self.path, suffixes)
        except OSError as exc:
            raise ReviewUnavailable(f"the review database {self.path} is corrupt and cannot be moved aside: "
                                    f"{exc}") from exc

    def _integrity_problem(self) -> str | None:
        """What ``PRAGMA quick_check`` says is wrong with the database (None: sound, or no file yet)."""
        if not self.path.exists():
            return None
        try:
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise ReviewUnavailable(f"cannot open the review database {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                return str(exc)
            raise ReviewUnavailable(f"cannot check the review database {self.path}: {exc}") from exc
        finally:
            conn.close()
        if rows == [("ok",)]:
            return None
        return "; ".join(str(r[0]) for r in rows)[:500] or "quick_check answered nothing"


def _is_corruption(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (not BUSY, LOCKED, IOERR, CANTOPEN...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


class _Postgres(_Backend):
    name = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    types = {"pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "blob": "BYTEA",
             "float": "DOUBLE PRECISION"}

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ReviewConfigError("NSFW_DATABASE_URL is a PostgreSQL URL but psycopg is not installed "
                                    "(pip install 'psycopg[binary]')") from exc
        self._psycopg = psycopg
        self.url = url
        self.connect_timeout = connect_timeout
        self.errors = (psycopg.Error,)

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=True,
                                         connect_timeout=max(1, int(self.connect_timeout)))
        except self._psycopg.Error as exc:
            message = str(exc).replace(self.url, redact_url(self.url))
            raise ReviewUnavailable(f"cannot connect to the review database {redact_url(self.url)}: "
                                    f"{message}") from None

    @contextlib.contextmanager
    def begin(self, conn: Any, write: bool) -> Iterator[_Tx]:
        with conn.transaction():
            with conn.cursor() as cur:
                yield _Tx(self, cur)

    def usable(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE

    def lock_migrations(self, tx: _Tx) -> None:
        tx.run("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_KEY,))

    def describe(self) -> str:
        return f"PostgreSQL {redact_url(self.url)}"


class _Pool:
    """A few idle connections, handed to one thread at a time."""

    def __init__(self, backend: _Backend, max_idle: int = 4) -> None:
        self.backend = backend
        self._idle: _queue.LifoQueue = _queue.LifoQueue()
        self._max_idle = max_idle
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        if self._closed:
            raise ReviewError("the review queue is closed")
        try:
            conn = self._idle.get_nowait()
        except _queue.Empty:
            conn = self.backend.connect()
        ok = False
        try:
            yield conn
            ok = True
        finally:
            self._put_back(conn, ok)

    def _put_back(self, conn: Any, ok: bool) -> None:
        keep = False
        try:
            keep = not self._closed and self.backend.usable(conn) and self._idle.qsize() < self._max_idle
        except Exception:  # noqa: BLE001 - a connection we cannot inspect is dropped
            keep = False
        if keep:
            self._idle.put(conn)
        else:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except _queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()


def backend_for(url: str | None, data_dir: str | Path | None = None) -> _Backend:
    """The backend for ``NSFW_DATABASE_URL`` (empty: ``<data_dir>/review.sqlite``)."""
    url = (url or "").strip()
    if not url:
        if data_dir is None:
            raise ReviewConfigError("no database URL and no data folder for the review queue")
        return _SQLite(Path(data_dir) / DB_FILE)
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        return _Postgres(url)
    if scheme == "sqlite":
        # sqlite:///absolute/path, or sqlite:relative/path (under data_dir)
        rest = unquote(url[len("sqlite:"):])
        rest = rest[2:] if rest.startswith("//") else rest
        rest = "/" + rest.lstrip("/") if rest.startswith("/") else rest
        if not rest.strip("/"):
            raise ReviewConfigError(f"NSFW_DATABASE_URL={redact_url(url)!r} names no file")
        path = Path(rest)
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir) / path
        return _SQLite(path)
    raise ReviewConfigError(f"NSFW_DATABASE_URL={redact_url(url)!r}: use a postgresql:// URL, "
                            "sqlite:///path, or leave it empty for <data_dir>/review.sqlite")


# ---------------------------------------------------------------- migrations


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]  # {pk}, {blob}, {float} are replaced by the backend's types


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "review items, one open item per image, queue order", (
        f"""CREATE TABLE {TABLE} (
            id {{pk}},
            sha256 TEXT NOT NULL,
            source TEXT NOT NULL,
            scores TEXT NOT NULL,
            model TEXT NOT NULL,
            verdict TEXT NOT NULL,
            created_at {{float}} NOT NULL,
            queued_at {{float}} NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'claimed', 'decided', 'skipped')),
            claimed_by TEXT,
            lease_until {{float}},
            decision TEXT,
            decided_by TEXT,
            decided_at {{float}},
            skips INTEGER NOT NULL DEFAULT 0,
            image {{blob}}
        )""",
        # At most one open (pending or claimed) item per image: enqueue's ON CONFLICT target.
        f"CREATE UNIQUE INDEX {TABLE}_open_sha256 ON {TABLE} (sha256) WHERE status IN ('pending', 'claimed')",
        f"CREATE INDEX {TABLE}_queue ON {TABLE} (status, queued_at, id)",
    )),
    Migration(2, "indexes for undo and retention", (
        f"CREATE INDEX {TABLE}_decided ON {TABLE} (decided_by, decided_at)",
        f"CREATE INDEX {TABLE}_created ON {TABLE} (created_at)",
    )),
)
LATEST_VERSION = MIGRATIONS[-1].version


def migrate(backend: _Backend, conn: Any, migrations: Sequence[Migration] = MIGRATIONS,
            clock: Callable[[], float] = time.time) -> list[int]:
    """Apply the missing migrations in one transaction; returns the versions applied."""
    known = max((m.version for m in migrations), default=0)
    with backend.begin(conn, write=True) as tx:
        backend.lock_migrations(tx)
        tx.run(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, "
               f"description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        current = tx.one(f"SELECT MAX(version) FROM {VERSION_TABLE}")
        current_version = (current[0] if current and current[0] is not None else 0)
        if current_version > known:
            raise ReviewConfigError(f"the review database ({backend.describe()}) has schema version "
                                    f"{current_version}, newer than this code's {known}; upgrade the app")
        applied = []
        for m in sorted(migrations, key=lambda m: m.version):
            if m.version <= current_version:
                continue
            for statement in m.statements:
                tx.run(statement.format(**backend.types))
            tx.run(f"INSERT INTO {VERSION_TABLE} (version, description, applied_at) VALUES (?, ?, ?)",
                   (m.version, m.description, clock()))
            applied.append(m.version)
    return applied


# ---------------------------------------------------------------- the queue

_COLUMNS = ("id", "sha256", "source", "scores", "model", "verdict", "created_at", "queued_at", "status",
            "claimed_by", "lease_until", "decision", "decided_by", "decided_at", "skips")
_SELECT = ", ".join(_COLUMNS)
_SELECT_META = _SELECT + ", image IS NOT NULL"
_SELECT_FULL = _SELECT_META + ", image"
_OPEN = f"(status = '{PENDING}' OR (status = '{CLAIMED}' AND lease_until < ?))"


def _item(row: Sequence[Any]) -> Item:
    values = dict(zip(_COLUMNS, row))
    values["scores"] = json.loads(values["scores"])
    values["id"] = int(values["id"])
    has_image = bool(row[len(_COLUMNS)]) if len(row) > len(_COLUMNS) else False
    image = row[len(_COLUMNS) + 1] if len(row) > len(_COLUMNS) + 1 else None
    return Item(**values, image=bytes(image) if image is not None else None, has_image=has_image)


class ReviewQueue:
    """The review queue over SQLite or PostgreSQL; one object may be shared by threads.

    ``ReviewQueue(url, data_dir=...)`` or :meth:`from_settings`.  Opening it
    creates and migrates the schema.  ``clock`` (seconds since the epoch) is
    injectable for tests.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        data_dir: str | Path | None = None,
        store_uploads: bool = False,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.backend = backend_for(url, data_dir)
        self.store_uploads = bool(store_uploads)
        self.lease_seconds = float(lease_seconds)
        self.retention_days = float(retention_days)
        self.clock = clock
        self._pool = _Pool(self.backend)
        self._last_purge = 0.0
        self.backend.recover()
        with self._connection() as conn:
            try:
                migrate(self.backend, conn, migrations, clock)
            except self.backend.errors as exc:
                raise ReviewUnavailable(f"cannot prepare the review database ({self.backend.describe()}): "
                                        f"{exc}") from exc

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> "ReviewQueue":
        """From the service settings (``NSFW_DATABASE_URL``, ``NSFW_REVIEW_*``, ``NSFW_DATA_DIR``)."""
        kwargs: dict[str, Any] = {
            "data_dir": settings.data_dir,
            "store_uploads": settings.review_store_uploads,
            "lease_seconds": settings.review_lease_seconds,
            "retention_days": settings.review_retention_days,
        }
        kwargs.update(overrides)
        return cls(settings.database_url or None, **kwargs)

    def __repr__(self) -> str:
        return f"ReviewQueue({self.backend.describe()})"

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "ReviewQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        with self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[_Tx]:
        """One transaction; database errors become :class:`ReviewUnavailable`."""
        try:
            with self._pool.connection() as conn, self.backend.begin(conn, write) as tx:
                yield tx
        except ReviewError:
            raise
        except self.backend.errors as exc:
            raise self.backend.wrap(exc) from exc

    def _now(self) -> float:
        return float(self.clock())

    def _lease(self, lease_seconds: float | None) -> float:
        lease = self.lease_seconds if lease_seconds is None else float(lease_seconds)
        if not lease > 0:
            raise BadRequest("the lease must be positive")
        return lease

    # ------------------------------------------------------------ writes

    def enqueue(self, sha256: str, source: str, scores: Mapping[str, float], model: str, verdict: str,
                image_bytes: bytes | None = None) -> int:
        """Queue an image for review; the id of the open item for this sha256 if there is one already.

        The bytes are stored only when the queue stores uploads (``store_uploads``).
        """
        sha256 = str(sha256).lower()
        if not _SHA_RE.match(sha256):
            raise BadRequest(f"not a sha256 hex digest: {sha256[:80]!r}")
        source = str(source)[:MAX_SOURCE_LENGTH]
        scores_json = json.dumps(_check_scores(scores), sort_keys=True)
        image = bytes(image_bytes) if (self.store_uploads and image_bytes) else None
        now = self._now()
        for _ in range(5):
            with self._tx() as tx:
                row = tx.one(
                    f"INSERT INTO {TABLE} (sha256, source, scores, model, verdict, created_at, queued_at, "
                    f"status, skips, image) VALUES (?, ?, ?, ?, ?, ?, ?, '{PENDING}', 0, ?) "
                    f"ON CONFLICT (sha256) WHERE status IN ('{PENDING}', '{CLAIMED}') DO NOTHING RETURNING id",
                    (sha256, source, scores_json, str(model), str(verdict), now, now, image))
                if row is not None:
                    return int(row[0])
                row = tx.one(f"SELECT id FROM {TABLE} WHERE sha256 = ? AND status IN ('{PENDING}', '{CLAIMED}')",
                             (sha256,))
                if row is not None:
                    return int(row[0])
            # (PostgreSQL only) the open item was decided between the two statements: insert again.
        raise ReviewUnavailable("could not enqueue the item (concurrent changes); retry")

    def claim(self, reviewer: str, lease_seconds: float | None = None, *,
              exclude: Iterable[int] = ()) -> Item | None:
        """Claim the oldest pending (or lease-expired) item for ``reviewer``; None when none is left.

        ``exclude``: ids this reviewer does not want now (e.g. the ones they skipped).
        """
        reviewer = _check_reviewer(reviewer)
        now = self._now()
        until = now + self._lease(lease_seconds)
        excluded = sorted({int(i) for i in exclude})
        not_in = f" AND id NOT IN ({', '.join('?' * len(excluded))})" if excluded else ""
        with self._tx() as tx:
            row = tx.one(
                f"UPDATE {TABLE} SET status = '{CLAIMED}', claimed_by = ?, lease_until = ? "
                f"WHERE id = (SELECT id FROM {TABLE} WHERE {_OPEN}{not_in} ORDER BY queued_at, id LIMIT 1"
                f"{self.backend.skip_locked}) AND {_OPEN} RETURNING {_SELECT_FULL}",
                (reviewer, until, now, *excluded, now))
        return _item(row) if row is not None else None

    def _conflict(self, tx: _Tx, item_id: int, reviewer: str, action: str) -> ReviewError:
        row = tx.one(f"SELECT status, claimed_by, decided_by FROM {TABLE} WHERE id = ?", (item_id,))
        if row is None:
            return ItemNotFound(f"review item {item_id} does not exist (purged?)", item_id=item_id)
        status, claimed_by, decided_by = row
        if status == DECIDED:
            who = "you" if decided_by == reviewer else decided_by
            return ReviewConflict(f"cannot {action} item {item_id}: already decided by {who}", item_id=item_id)
        if status == CLAIMED and claimed_by != reviewer:
            return ReviewConflict(f"cannot {action} item {item_id}: claimed by another reviewer",
                                  item_id=item_id)
        return ReviewConflict(f"cannot {action} item {item_id} ({status})", item_id=item_id)

    def decide(self, item_id: int, reviewer: str, label: str) -> Item:
        """Record ``label`` for an item claimed by ``reviewer`` (or pending and unclaimed)."""
        reviewer = _check_reviewer(reviewer)
        label = check_label(label)
        item_id = int(item_id)
        with self._tx() as tx:
            row = tx.one(
                f"UPDATE {TABLE} SET status = '{DECIDED}', decision = ?, decided_by = ?, decided_at = ?, "
                f"claimed_by = NULL, lease_until = NULL "
                f"WHERE id = ? AND (status = '{PENDING}' OR (status = '{CLAIMED}' AND claimed_by = ?)) "
                f"RETURNING {_SELECT_META}",
                (label, reviewer, self._now(), item_id, reviewer))
            if row is None:
                raise self._conflict(tx, item_id, reviewer, "decide")
        return _item(row)

    def skip(self, item_id: int, reviewer: str) -> Item:
        """Give the item back: pending again, at the end of the queue."""
        return self._reopen(item_id, reviewer, to_end=True)

    def release(self, item_id: int, reviewer: str) -> Item:
        """Give the item back: pending again, keeping its place in the queue."""
        return self._reopen(item_id, reviewer, to_end=False)

    def _reopen(self, item_id: int, reviewer: str, *, to_end: bool) -> Item:
        reviewer = _check_reviewer(reviewer)
        item_id = int(item_id)
        extra = ", queued_at = ?, skips = skips + 1" if to_end else ""
        params: tuple[Any, ...] = (self._now(),) if to_end else ()
        with self._tx() as tx:
            row = tx.one(
                f"UPDATE {TABLE} SET status = '{PENDING}', claimed_by = NULL, lease_until = NULL{extra} "
                f"WHERE id = ? AND (status = '{PENDING}' OR (status = '{CLAIMED}' AND claimed_by = ?)) "
                f"RETURNING {_SELECT_META}",
                (*params, item_id, reviewer))
            if row is None:
                raise self._conflict(tx, item_id, reviewer, "skip" if to_end else "release")
        return _item(row)

    def undo(self, reviewer: str, *, reclaim: bool = False, lease_seconds: float | None = None) -> Item | None:
        """Revert ``reviewer``'s latest decision; None when there is none.

        The item is pending again (at its old place), or with ``reclaim`` claimed
        by ``reviewer`` with a fresh lease, so it comes straight back to them.  If
        the same image was queued again meanwhile, that newer open copy is
        dropped (the reverted item takes its place); if someone holds a live
        claim on it, :class:`ReviewConflict`.
        """
        reviewer = _check_reviewer(reviewer)
        now = self._now()
        until = now + self._lease(lease_seconds) if reclaim else None
        lock = self.backend.for_update
        with self._tx() as tx:
            row = tx.one(f"SELECT id, sha256 FROM {TABLE} WHERE decided_by = ? AND status = '{DECIDED}' "
                         f"ORDER BY decided_at DESC, id DESC LIMIT 1{lock}", (reviewer,))
            if row is None:
                return None
            item_id, sha = int(row[0]), row[1]
            for dup_id, status, claimed_by, lease_until in tx.run(
                    f"SELECT id, status, claimed_by, lease_until FROM {TABLE} "
                    f"WHERE sha256 = ? AND status IN ('{PENDING}', '{CLAIMED}'){lock}", (sha,)):
                if status == CLAIMED and claimed_by != reviewer and lease_until is not None and lease_until >= now:
                    raise ReviewConflict(f"cannot undo item {item_id}: the same image (item {dup_id}) "
                                         "is being reviewed by another reviewer", item_id=item_id)
                tx.run(f"DELETE FROM {TABLE} WHERE id = ?", (dup_id,))
            row = tx.one(
                f"UPDATE {TABLE} SET status = ?, claimed_by = ?, lease_until = ?, decision = NULL, "
                f"decided_by = NULL, decided_at = NULL WHERE id = ? AND status = '{DECIDED}' "
                f"RETURNING {_SELECT_FULL}",
                (CLAIMED if reclaim else PENDING, reviewer if reclaim else None, until, item_id))
        return _item(row) if row is not None else None

    def purge(self, older_than_days: float | None = None) -> int:
        """Delete items (and their images) created more than ``older_than_days`` ago; returns how many.

        Defaults to the queue's retention; 0 or less keeps everything.  Items
        under a live claim are kept until the claim ends.
        """
        days = self.retention_days if older_than_days is None else float(older_than_days)
        if not days > 0:
            return 0
        now = self._now()
        cutoff = now - days * 86400.0
        with self._tx() as tx:
            tx.run(f"DELETE FROM {TABLE} WHERE created_at < ? "
                   f"AND NOT (status = '{CLAIMED}' AND lease_until >= ?)", (cutoff, now))
            deleted = max(tx.rowcount, 0)
        self._last_purge = time.monotonic()
        return deleted

    def purge_if_due(self, interval: float = PURGE_INTERVAL) -> int:
        """:meth:`purge` at most once per ``interval`` seconds (per queue object)."""
        if self._last_purge and time.monotonic() - self._last_purge < interval:
            return 0
        return self.purge()

    # ------------------------------------------------------------ reads

    def get(self, item_id: int) -> Item | None:
        """The item with its image bytes, or None."""
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT {_SELECT_FULL} FROM {TABLE} WHERE id = ?", (int(item_id),))
        return _item(row) if row is not None else None

    def image(self, item_id: int) -> bytes | None:
        with self._tx(write=False) as tx:
            row = tx.one(f"SELECT image FROM {TABLE} WHERE id = ?", (int(item_id),))
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def counts(self) -> dict[str, int]:
        """``{"pending", "claimed", "decided", "total"}``; a claim whose lease ran out counts as pending."""
        now = self._now()
        with self._tx(write=False) as tx:
            rows = tx.run(
                f"SELECT CASE WHEN status = '{CLAIMED}' AND lease_until < ? THEN '{PENDING}' ELSE status END, "
                f"COUNT(*) FROM {TABLE} GROUP BY 1", (now,))
        out = {PENDING: 0, CLAIMED: 0, DECIDED: 0}
        for status, n in rows:
            out[status] = out.get(status, 0) + int(n)
        out["total"] = sum(int(n) for _, n in rows)
        return out

    def items(self, status: str | None = None, limit: int = 1000) -> list[Item]:
        """Items (without image bytes), oldest first; all statuses or one."""
        where = " WHERE status = ?" if status else ""
        params: tuple[Any, ...] = (status,) if status else ()
        with self._tx(write=False) as tx:
            rows = tx.run(f"SELECT {_SELECT_META} FROM {TABLE}{where} ORDER BY created_at, id LIMIT ?",
                          (*params, int(limit)))
        return [_item(r) for r in rows]

    def _decided_rows(self) -> list[Item]:
        with self._tx(write=False) as tx:
            rows = tx.run(f"SELECT {_SELECT_META} FROM {TABLE} WHERE status = '{DECIDED}' "
                          f"ORDER BY decided_at, id")
        return [_item(r) for r in rows]

    def reviewed_items(self, binary_map: Mapping[str, str] | None = None) -> list[ReviewedItem]:
        """Decided items, oldest decision first, with their stored scores and model (no re-scoring).

        ``binary`` follows ``labelsets.DEFAULT_BINARY_MAP`` unless ``binary_map`` is given.
        """
        from .labelsets import to_binary

        return [ReviewedItem(source=it.source, label=it.decision or "", binary=to_binary(it.decision or "", binary_map),
                             sha256=it.sha256, scores=it.scores, model=it.model, decided_at=it.decided_at or 0.0,
                             decided_by=it.decided_by or "", id=it.id, has_image=it.has_image)
                for it in self._decided_rows()]

    @staticmethod
    def _csv(items: Iterable[Item], paths: Mapping[int, str]) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for it in items:
            writer.writerow([paths.get(it.id, it.source), it.decision, it.sha256, it.model,
                             *(repr(float(it.scores[c])) for c in CLASS_NAMES), iso(it.decided_at)])
        return buf.getvalue()

    def export_csv(self, image_paths: Mapping[int, str] | None = None) -> str:
        """The decided items as a labelled-set manifest (``path,label,sha256,model,<5 scores>,decided_at``).

        ``path`` is the source URL, ``upload:<name>`` for an upload (not loadable
        by itself), or ``image_paths[item id]`` when given (see :meth:`export_zip`).
        Oldest decision first; ``decided_at`` in UTC ISO 8601.
        """
        return self._csv(self._decided_rows(), image_paths or {})

    def export_zip(self) -> tuple[bytes, dict[str, int]]:
        """A ZIP for the calibration page's archive upload: ``manifest.csv`` + ``images/<sha256>.<ext>``.

        Items with stored bytes point at their file in the archive, URL items
        without bytes keep their URL, and uploads without stored bytes are left
        out.  Returns the archive and ``{"items", "images", "left_out"}``.
        """
        buf = io.BytesIO()
        paths: dict[int, str] = {}
        kept: list[Item] = []
        left_out = 0
        written: set[str] = set()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for it in self._decided_rows():
                data = self.image(it.id) if it.has_image else None
                if data:
                    name = f"images/{it.sha256}{image_suffix(data)}"
                    if name not in written:
                        zf.writestr(name, data)
                        written.add(name)
                    paths[it.id] = name
                    kept.append(it)
                elif it.is_url:
                    kept.append(it)
                else:
                    left_out += 1
            zf.writestr("manifest.csv", self._csv(kept, paths))
        return buf.getvalue(), {"items": len(kept), "images": len(written), "left_out": left_out}
