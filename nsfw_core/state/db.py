"""Where the review queue lives: the SQLite and PostgreSQL backends and a small connection pool.

One table, ``review_items`` (:mod:`.migrations`), in either

- SQLite (stdlib ``sqlite3``): ``<data_dir>/review.sqlite`` when
  ``NSFW_DATABASE_URL`` is empty (or ``sqlite:///path``), WAL journal,
  busy timeout, ``synchronous=FULL`` and ``secure_delete``.  Opening a queue
  first checks the ``-wal`` header and runs ``PRAGMA quick_check``: a corrupt
  log or database is moved aside to ``*.corrupt-<UTC time>`` with an ERROR log
  line saying where (:meth:`_SQLite.recover`), never deleted; or
- PostgreSQL (psycopg 3) for a ``postgresql://`` URL.

Both run the same SQL; only the parameter style (``?`` vs ``%s``, converted in
:meth:`Backend.sql`), a few column types and ``FOR UPDATE SKIP LOCKED`` differ.
Connections come from a small pool (Streamlit runs every script run in a new
thread, so thread-local connections would pile up).  Every write is one
transaction (SQLite ``BEGIN IMMEDIATE``), so a process dying mid-write leaves
the previous state.  :func:`backend_for` picks the backend for a URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue as _queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import unquote, urlsplit

from nsfw_core.base.files import move_aside, wal_header_problem
from nsfw_core.state.errors import ReviewConfigError, ReviewError, ReviewUnavailable

# The name the queue has always logged under (one name for the whole package, as log filters expect).
log = logging.getLogger("nsfw_core.state.review")

DB_FILE = "review.sqlite"
# How often each process re-reads the shared state other replicas write (thresholds, remembered decisions,
# adapters, example sets): a change is in force on every replica within about this long.
REFRESH_INTERVAL = 0.5
_PG_LOCK_KEY = 0x6E736677_72657677 & 0x7FFFFFFFFFFFFFFF  # "nsfwrevw": advisory lock for migrations


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


class Tx:
    """One transaction's cursor: ``run`` converts the SQL and returns the rows (if any)."""

    def __init__(self, backend: "Backend", cursor: Any) -> None:
        self.backend = backend
        self.cursor = cursor
        self.rowcount = 0

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.cursor.execute(self.backend.sql(sql), tuple(params))
        self.rowcount = self.cursor.rowcount
        if self.cursor.description is None:
            return []
        return [tuple(r) for r in self.cursor.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.run(sql, params)
        return rows[0] if rows else None


class Backend:
    name = ""
    skip_locked = ""  # appended to the claim's inner SELECT
    for_update = ""  # appended to a locking SELECT
    types: dict[str, str] = {}
    errors: tuple[type[BaseException], ...] = ()

    def sql(self, text: str) -> str:
        return text

    def connect(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def begin(self, conn: Any, write: bool) -> contextlib.AbstractContextManager[Tx]:  # pragma: no cover
        raise NotImplementedError

    def usable(self, conn: Any) -> bool:
        return True

    def recover(self) -> None:
        """Before first use: deal with a database left corrupt (SQLite moves it aside)."""

    def lock_migrations(self, tx: Tx) -> None:
        pass

    def lock_name(self, tx: Tx, name: str) -> None:
        """Serialise the write transactions that take this lock on ``name`` until they end (SQLite: its one
        writer already does)."""

    def wrap(self, exc: BaseException) -> ReviewError:
        return ReviewUnavailable(f"review database error: {exc}")

    def describe(self) -> str:  # pragma: no cover - abstract
        """The database for the server log: its URL (password redacted) or file."""
        raise NotImplementedError

    def public_name(self) -> str:
        """The database for what anyone may read (/health warnings): its kind only, never its host, port,
        user, name or file, nor a driver's error."""
        return {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(self.name, "unknown")


class _SQLite(Backend):
    name = "sqlite"
    types = {"pk": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB", "float": "DOUBLE PRECISION"}
    errors = (sqlite3.Error,)

    def __init__(self, path: str | Path, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._recover_lock = threading.Lock()
        self._recovered = False

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
    def begin(self, conn: sqlite3.Connection, write: bool) -> Iterator[Tx]:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield Tx(self, cur)
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

        Once per backend: the thresholds history, the known images and the review queue share it and
        may start at the same moment; the first does the checks, the others wait for it (they used to
        each find the same corrupt file and move it aside twice).
        """
        with self._recover_lock:
            if not self._recovered:
                self._recover_now()
                self._recovered = True

    def _recover_now(self) -> None:
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


class _Postgres(Backend):
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
    def begin(self, conn: Any, write: bool) -> Iterator[Tx]:
        with conn.transaction():
            with conn.cursor() as cur:
                yield Tx(self, cur)

    def usable(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE

    def lock_migrations(self, tx: Tx) -> None:
        tx.run("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_KEY,))

    def lock_name(self, tx: Tx, name: str) -> None:
        key = int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True)
        tx.run("SELECT pg_advisory_xact_lock(?)", (key,))

    def describe(self) -> str:
        return f"PostgreSQL {redact_url(self.url)}"


class Pool:
    """A few idle connections, handed to one thread at a time."""

    def __init__(self, backend: Backend, max_idle: int = 4) -> None:
        self.backend = backend
        self._idle: _queue.LifoQueue[Any] = _queue.LifoQueue()
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
        except Exception:  # a connection we cannot inspect is dropped
            keep = False
        if keep:
            self._idle.put(conn)
        else:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        """One transaction on a pooled connection; the database's errors become :class:`ReviewUnavailable`
        (or :class:`ReviewConfigError`), never a driver's exception."""
        try:
            with self.connection() as conn, self.backend.begin(conn, write) as tx:
                yield tx
        except ReviewError:
            raise
        except self.backend.errors as exc:
            raise self.backend.wrap(exc) from exc

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except _queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()


def open_pool(url: str | None, data_dir: str | Path | None = None) -> Pool:
    """A connection pool on the database of ``NSFW_DATABASE_URL`` (empty: ``<data_dir>/review.sqlite``)."""
    return Pool(backend_for(url, data_dir))


def backend_for(url: str | None, data_dir: str | Path | None = None) -> Backend:
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
