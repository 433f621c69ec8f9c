"""Class scores (and embeddings) cached on disk, keyed by (sha256 of the image bytes, model key).

The calibration page scores the same labelled sets again and again (another
model, another session, after a restart); this cache makes that a matter of
reading and hashing the files.  Storage is one SQLite file
(``<data_dir>/score-cache.sqlite``, WAL journal, one table).

- The *model key* (:func:`model_key`) is the model's name and version (the
  version carries a hash of the weights) plus ``+draft`` when large JPEGs are
  decoded in draft mode, which changes the scores slightly.
- Thread-safe: one connection, used under a lock.
- :meth:`ScoreCache.embed_items` keeps, in a second table, what training an adapter needs of each image
  (:mod:`nsfw_core.calibration.adapters`): its scores, its embedding (float16) and its PDQ hash.
- A corrupt or unreadable file never stops the page: it is moved aside
  (``*.corrupt-<UTC time>``, :func:`files.move_aside`) and a fresh cache is started, with a warning
  (``warnings.warn`` and :attr:`ScoreCache.warning`); if even that fails the
  cache lives in memory for this process.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.files import move_aside
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.settings import DecodeLimits, Settings
from nsfw_core.inference import pipeline

CACHE_FILE = "score-cache.sqlite"
CHUNK = 64  # items read and hashed before the misses among them are classified

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    sha256    TEXT NOT NULL,
    model_key TEXT NOT NULL,
    scores    TEXT NOT NULL,
    created   REAL NOT NULL,
    PRIMARY KEY (sha256, model_key)
) WITHOUT ROWID
"""


_EMBEDDINGS_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    sha256    TEXT NOT NULL,
    model_key TEXT NOT NULL,
    scores    TEXT NOT NULL,
    embedding BLOB NOT NULL,
    phash     BLOB,
    created   REAL NOT NULL,
    PRIMARY KEY (sha256, model_key)
) WITHOUT ROWID
"""


@dataclasses.dataclass(frozen=True)
class Embedded:
    """One image as an adapter is trained on it: its sha256, the model's scores, its embedding and PDQ hash."""

    sha256: str
    scores: dict[str, float]
    embedding: np.ndarray  # (D,) float32
    phash: bytes | None


class ScoreCacheWarning(UserWarning):
    """The cache file was unusable and has been replaced."""


def model_key(model: Any, limits: DecodeLimits | Settings | None = None) -> str:
    """``name@version`` (+ ``+draft`` when JPEG draft decoding is on in ``limits``)."""
    key = f"{model.name}@{getattr(model, 'version', '?')}"
    if limits is not None and limits.jpeg_draft:
        key += "+draft"
    return key


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _valid_scores(scores: Any) -> bool:
    return (isinstance(scores, dict) and set(scores) == set(CLASS_NAMES)
            and all(isinstance(v, (int, float)) for v in scores.values()))


class ScoreCache:
    """Persistent (sha256, model key) -> {class: probability}."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.warning: str | None = None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        with self._lock:
            self._open()

    @classmethod
    def in_folder(cls, data_dir: str | Path) -> "ScoreCache":
        """The cache file of a data folder: ``<data_dir>/score-cache.sqlite``."""
        return cls(Path(data_dir) / CACHE_FILE)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ScoreCache":
        """:meth:`in_folder` of ``settings.data_dir``; kept until its callers pass the data folder."""
        return cls.in_folder(settings.data_dir)

    # ------------------------------------------------------------ connection

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(target, timeout=10.0, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.execute(_EMBEDDINGS_SCHEMA)
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row}")
            conn.execute("SELECT sha256, model_key, scores FROM scores LIMIT 1").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect(str(self.path))
            return
        except (sqlite3.Error, OSError) as exc:
            first = exc
        # Corrupt or not a database: move it aside and start afresh.
        moved = self._move_aside()
        try:
            self._conn = self._connect(str(self.path))
            self._warn(f"score cache {self.path} was unusable ({first}); started a new one"
                       + (f" (old file kept as {moved.name})" if moved else ""))
        except (sqlite3.Error, OSError) as exc:
            self._conn = self._connect(":memory:")
            self._warn(f"score cache {self.path} is unusable ({exc}); scores are cached in memory only")

    def _move_aside(self) -> Path | None:
        """The file and its -wal/-shm to ``*.corrupt-<UTC time>`` (deleted only if they cannot be moved)."""
        moved = None
        when = _dt.datetime.now(_dt.timezone.utc)
        for suffix in ("", "-wal", "-shm"):
            try:
                pairs = move_aside(self.path, (suffix,), when)
            except OSError:
                try:
                    Path(str(self.path) + suffix).unlink()
                except OSError:
                    pass
                continue
            if suffix == "" and pairs:
                moved = pairs[0][1]
        return moved

    def _warn(self, message: str) -> None:
        self.warning = message
        warnings.warn(message, ScoreCacheWarning, stacklevel=3)

    def _reset_after(self, exc: Exception) -> None:
        """A query failed on a file that went bad while open: start again (lock held)."""
        try:
            if self._conn is not None:
                self._conn.close()
        except sqlite3.Error:
            pass
        self._conn = None
        self._warn(f"score cache {self.path} failed ({exc}); starting a new one")
        self._move_aside()
        try:
            self._conn = self._connect(str(self.path))
        except (sqlite3.Error, OSError):
            self._conn = self._connect(":memory:")

    def _db(self) -> sqlite3.Connection:
        """The open connection (lock held); using a closed cache is a programming error."""
        if self._conn is None:
            raise RuntimeError(f"score cache {self.path} is closed")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------ get / put

    def get(self, sha: str, model_key: str) -> dict[str, float] | None:
        return self.get_many([sha], model_key).get(sha)

    def get_many(self, shas: Iterable[str], model_key: str) -> dict[str, dict[str, float]]:
        shas = list(dict.fromkeys(shas))
        out: dict[str, dict[str, float]] = {}
        if not shas:
            return out
        with self._lock:
            for start in range(0, len(shas), 500):
                chunk = shas[start:start + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT sha256, scores FROM scores WHERE model_key = ? AND sha256 IN ({marks})"
                try:
                    rows = self._db().execute(sql, [model_key, *chunk]).fetchall()
                except sqlite3.Error as exc:
                    self._reset_after(exc)
                    return {}
                for sha, text in rows:
                    try:
                        scores = json.loads(text)
                    except ValueError:
                        continue
                    if _valid_scores(scores):
                        out[sha] = {c: float(scores[c]) for c in CLASS_NAMES}
        return out

    def put(self, sha: str, model_key: str, scores: Mapping[str, float]) -> None:
        self.put_many([(sha, scores)], model_key)

    def put_many(self, entries: Iterable[tuple[str, Mapping[str, float]]], model_key: str) -> None:
        rows = []
        now = time.time()
        for sha, scores in entries:
            scores = {c: float(scores[c]) for c in CLASS_NAMES}
            rows.append((sha, model_key, json.dumps(scores, sort_keys=True), now))
        if not rows:
            return
        self._write_many("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            try:
                return int(self._db().execute("SELECT COUNT(*) FROM scores").fetchone()[0])
            except sqlite3.Error:
                return 0

    # ------------------------------------------------------------ scoring

    def score_items(
        self,
        model: Any,
        items: Sequence[Any],
        decoder: pipeline.Decoder,
        loader: Callable[[str], bytes],
        progress: Callable[[int, int], None] | None = None,
        *,
        batch_size: int = 16,
    ) -> list[tuple[Any, dict[str, float] | None, NSFWError | None]]:
        """Scores for each item (anything with ``.source``), in order: ``(item, scores, None)``
        or ``(item, None, error)``.

        Bytes are read with ``loader`` (the process context's ``load_bytes``: the
        byte cap for files, the safe fetcher for URLs) and hashed; cache hits are
        used as they are; the misses (each distinct image once) go through
        ``pipeline.score_sources`` with ``decoder`` in batches and are stored.
        The cache key is :func:`model_key` under the decoder's limits.
        ``progress(done, total)`` is called after each chunk.
        """
        key = model_key(model, decoder.limits)
        total = len(items)
        out: list[tuple[Any, dict[str, float] | None, NSFWError | None]] = []
        done = 0
        for start in range(0, total, CHUNK):
            chunk = items[start:start + CHUNK]
            read: list[tuple[Any, str, NSFWError | None]] = []  # (item, digest or "" after an error, error)
            blobs: dict[str, bytes] = {}
            for item in chunk:
                try:
                    data = loader(item.source)
                except NSFWError as exc:
                    read.append((item, "", exc))
                    continue
                digest = sha256(data)
                blobs.setdefault(digest, data)
                read.append((item, digest, None))
            cached = self.get_many(blobs, key)
            misses = [d for d in blobs if d not in cached]
            fresh: dict[str, pipeline.Scored] = {}
            if misses:
                # The "sources" are the digests; the loader hands back the bytes already read.
                results = pipeline.score_sources(model, misses, decoder, blobs.__getitem__, batch_size=batch_size)
                fresh = {r.source: r for r in results}
                self.put_many([(r.source, r.scores) for r in results if r.scores is not None], key)
            for item, digest, error in read:
                if error is not None:
                    out.append((item, None, error))
                elif digest in cached:
                    out.append((item, cached[digest], None))
                else:
                    scored = fresh[digest]
                    if scored.scores is not None:
                        out.append((item, dict(scored.scores), None))
                    else:
                        out.append((item, None, scored.error))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        return out

    # ------------------------------------------------------------ embeddings (training adapters)

    def _get_embedded(self, shas: Sequence[str], key: str) -> dict[str, Embedded]:
        out: dict[str, Embedded] = {}
        with self._lock:
            for start in range(0, len(shas), 500):
                chunk = list(shas[start:start + 500])
                marks = ",".join("?" * len(chunk))
                try:
                    rows = self._db().execute(f"SELECT sha256, scores, embedding, phash FROM embeddings WHERE "
                                              f"model_key = ? AND sha256 IN ({marks})", [key, *chunk]).fetchall()
                except sqlite3.Error as exc:
                    self._reset_after(exc)
                    return {}
                for sha, text, blob, ph in rows:
                    try:
                        scores = json.loads(text)
                        vector = np.frombuffer(blob, dtype="<f2").astype(np.float32)
                    except (ValueError, TypeError):
                        continue
                    if _valid_scores(scores) and vector.size and np.isfinite(vector).all():
                        out[sha] = Embedded(sha, {c: float(scores[c]) for c in CLASS_NAMES}, vector,
                                            bytes(ph) if ph else None)
        return out

    def _put_embedded(self, entries: Sequence[Embedded], key: str) -> None:
        now = time.time()
        rows = [(e.sha256, key, json.dumps({c: float(e.scores[c]) for c in CLASS_NAMES}, sort_keys=True),
                 np.asarray(e.embedding, dtype="<f2").tobytes(), e.phash, now) for e in entries]
        if not rows:
            return
        self._write_many("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", rows)

    def _write_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """``sql`` for each row in one transaction; a database error drops the cache's connection (a cache:
        nothing is lost but recomputation)."""
        with self._lock:
            conn = self._db()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                self._reset_after(exc)

    def embed_items(
        self,
        model: Any,
        items: Sequence[Any],
        decoder: pipeline.Decoder,
        loader: Callable[[str], bytes],
        progress: Callable[[int, int], None] | None = None,
        *,
        batch_size: int = 16,
    ) -> list[tuple[Any, Embedded | None, NSFWError | None]]:
        """Each item's :class:`Embedded` (scores, embedding, PDQ hash), in order, or the error that stopped it;
        as :meth:`score_items` does (bytes read with ``loader`` and hashed, hits used as they are, misses
        through the pipeline in batches and stored).  An animation gives its worst frame's embedding and no hash.
        """
        key = model_key(model, decoder.limits)
        total = len(items)
        out: list[tuple[Any, Embedded | None, NSFWError | None]] = []
        done = 0
        for start in range(0, total, CHUNK):
            chunk = items[start:start + CHUNK]
            read: list[tuple[Any, str, NSFWError | None]] = []
            blobs: dict[str, bytes] = {}
            for item in chunk:
                try:
                    data = loader(item.source)
                except NSFWError as exc:
                    read.append((item, "", exc))
                    continue
                digest = sha256(data)
                blobs.setdefault(digest, data)
                read.append((item, digest, None))
            cached = self._get_embedded(list(blobs), key)
            misses = [d for d in blobs if d not in cached]
            errors: dict[str, NSFWError | None] = {}
            if misses:
                results = pipeline.score_sources(model, misses, decoder, blobs.__getitem__, batch_size=batch_size,
                                                 perceptual=True, embeddings=True)
                # as stored (float16), so an image trains the same whether it was cached or not
                fresh = [Embedded(r.source, dict(r.scores), np.asarray(r.embedding, dtype="<f2").astype(np.float32),
                                  r.phash)
                         for r in results if r.scores is not None and r.embedding is not None]
                self._put_embedded(fresh, key)
                cached.update({e.sha256: e for e in fresh})
                errors = {r.source: r.error for r in results if r.scores is None}
            for item, digest, error in read:
                if error is not None:
                    out.append((item, None, error))
                elif digest in cached:
                    out.append((item, cached[digest], None))
                else:
                    out.append((item, None, errors.get(digest)))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        return out
