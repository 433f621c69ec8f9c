"""Known images: reviewers' decisions remembered, and the admins' allow/deny hash lists.

A later copy of a decided image (the same bytes, or a re-encoded, resized, lightly cropped or
watermarked copy: a PDQ hash within ``NSFW_MATCH_DISTANCE``, :mod:`nsfw_core.images.phash`) gets the human
verdict instead of the model's (``verdict_source`` "review"), and is not queued again; an image on a
hash list gets the list's (``verdict_source`` "list").  Both live in the one database
(``known_images``, :mod:`nsfw_core.state.remembered`), so every replica uses them.

Each process keeps them in memory (:class:`KnownImages`): a dict by sha256 and a multi-index over the
perceptual hashes (:class:`~nsfw_core.state.hashindex.HashIndex`, exact within the distance; hashes added
since it was built are compared in full, and the index is rebuilt once they are many).  Like the
thresholds (:mod:`nsfw_core.state.thresholds`), :meth:`KnownImages.lookup` answers from memory and, when
its copy is older than ``refresh_interval`` (0.5 s), starts one background refresh that reads the
log forward from the last id it has; so a decision made through one process is used by the others
within about a second.  A database that cannot be reached keeps what is in memory, with a warning.

When several entries match, a list entry wins over a remembered decision (lists are the admins'
policy), then the smaller distance (an exact sha256 match is distance 0), then the newer entry.

A video's entry (``media`` "video") holds one PDQ hash per sampled frame and matches only a video, as a
whole (:meth:`KnownImages.lookup_video`, :mod:`nsfw_core.state.vpdq`: 80 % of each side's frames within the
match distance); its frames never match a still image, nor a still image's hash a video.

Hash lists are CSV files with the header ``sha256,pdq,label,note``: each row gives a sha256 (64 hex
digits) or a PDQ hash (64 hex digits) or both, a label (``allow`` or ``deny``, or ``safe`` / ``adult``)
and an optional note.  An optional fifth column ``media`` says ``video`` for a video's entry: its ``pdq``
cell then holds its sampled frames' hashes separated by spaces (at most :data:`MAX_VIDEO_HASHES`).
:func:`parse_list` refuses a malformed file as a whole, naming the row.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import re
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from nsfw_core.base import spreadsheet
from nsfw_core.base.errors import BadRequest, NSFWError
from nsfw_core.base.refresher import Refresher
from nsfw_core.images.phash import HASH_BYTES, split_hex
from nsfw_core.inference.embeddings import decode_embedding
from nsfw_core.state import vpdq
from nsfw_core.state.db import REFRESH_INTERVAL, Pool
from nsfw_core.state.hashindex import HashIndex, as_rows, distances
from nsfw_core.state.migrations import KNOWN_TABLE, MIGRATIONS, migrate
from nsfw_core.state.remembered import (
    ADD,
    COLUMNS,
    LIST,
    REMOVE,
    REVIEW,
    SELECT,
    decided_embedding,
    live_entries,
    remove,
)

log = logging.getLogger(__name__)

READ_BATCH = 50_000  # log rows read per query
TAIL_MAX = 4096  # hashes compared in full before the index is rebuilt with them
LIST_COLUMNS = ("sha256", "pdq", "label", "note")
MEDIA_COLUMN = "media"  # optional: "image" (the default) or "video"
MAX_VIDEO_HASHES = 100_000  # frames' hashes in one video entry
LIST_LABELS = {"allow": "safe", "safe": "safe", "deny": "adult", "adult": "adult"}
MAX_LIST_BYTES = 256 * 1024 * 1024
MAX_NOTE = 500
EMBEDDINGS_CACHED = 1024  # decided images' embeddings kept in memory (7 KB each), the most recently matched
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ListError(BadRequest):
    """A hash list that cannot be imported (nothing was imported)."""

    code = "invalid_list"


class KnownUnavailable(NSFWError):
    status = 503
    code = "known_images_unavailable"


@dataclasses.dataclass(frozen=True)
class Match:
    """Why an image got a human verdict: the entry it matched and how closely."""

    kind: str  # "review" (a remembered decision) or "list"
    verdict: str  # "adult" or "safe"
    label: str  # the reviewer's label, or the list's (allow/deny/adult/safe)
    by: str  # "sha256", "pdq" or "vpdq" (a video's frames)
    distance: int  # bits of 256 (0 for sha256; a video: the median of its matched frames')
    entry_id: int
    review_id: int | None = None
    scores: dict[str, float] | None = None  # the model's scores of the decided image (None: a list entry)
    model: str = ""  # the model that gave them
    # issue 26: the decided image's embedding and the model version that made it; ``embedded``: the entry keeps
    # one (read from the database for a perceptual match only; None with ``embedded`` when it could not be read)
    model_version: str = ""
    embedded: bool = False
    embedding: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    share: float | None = None  # a video: the share of its sampled frames that matched the known video's

    def to_dict(self) -> dict[str, Any]:
        """What a client is told (issue 29: no oracle): the kind of entry, how it matched, its label; never the
        distance, a video's matched share, nor the ids of the entry and of the decided item (another client's)."""
        return {"source": self.kind, "by": self.by, "label": self.label}

    def for_reviewer(self) -> dict[str, Any]:
        """All of it but the scores, for the review page (a look-alike the model disagreed with)."""
        out: dict[str, Any] = {"source": self.kind, "by": self.by, "distance": self.distance, "label": self.label,
                               "verdict": self.verdict, "entry_id": self.entry_id, "review_id": self.review_id}
        if self.share is not None:
            out["share"] = self.share
        return out


@dataclasses.dataclass(frozen=True)
class Entry:
    id: int
    kind: str
    sha256: str | None
    hashes: tuple[bytes, ...]
    verdict: str
    label: str
    note: str
    review_id: int | None
    added_by: str
    added_at: float
    scores: dict[str, float] | None = None  # a remembered decision's: the decided image's scores
    model: str = ""
    audience: str = ""  # '' everyone; else the one client the decision protects
    model_version: str = ""  # the model version of the decided image's embedding (issue 26)
    embedded: bool = False  # the database keeps the decided image's embedding (KnownImages.decided_embedding)
    media: str = "image"  # "video": ``hashes`` are its sampled frames', matched as a whole

    def match(self, by: str, distance: int) -> Match:
        return Match(self.kind, self.verdict, self.label, by, distance, self.id, self.review_id, self.scores,
                     self.model, self.model_version, self.embedded)


def _scores(text: Any) -> dict[str, float] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
        return {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError, AttributeError):
        return None


@dataclasses.dataclass(frozen=True)
class ListEntry:
    """One row of a hash list."""

    sha256: str | None
    pdq: str | None  # a video's: its frames' hashes, comma-separated (as the database keeps them)
    label: str
    note: str = ""
    media: str = "image"

    @property
    def verdict(self) -> str:
        return LIST_LABELS[self.label]


def parse_list(text: str | bytes, max_bytes: int = MAX_LIST_BYTES) -> list[ListEntry]:
    """A hash-list CSV -> its entries; :class:`ListError` naming the first bad row (nothing is kept)."""
    if isinstance(text, bytes):
        if len(text) > max_bytes:
            raise ListError(f"the list is larger than {max_bytes} bytes")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ListError(f"the list is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    rows = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(rows)]
    except StopIteration:
        raise ListError("the list is empty: expected a header row sha256,pdq,label,note") from None
    missing = [c for c in ("label",) if c not in header]
    if missing or not ({"sha256", "pdq"} & set(header)):
        raise ListError(f"row 1: the header must name the columns sha256,pdq,label,note (got {','.join(header)!r})")
    where = {c: header.index(c) for c in (*LIST_COLUMNS, MEDIA_COLUMN) if c in header}
    out: list[ListEntry] = []
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise ListError(f"row {number}: {len(row)} fields, the header names {len(header)}")

        def cell(name: str, row: list[str] = row) -> str:
            i = where.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        sha, pdq, label = cell("sha256").lower(), cell("pdq").lower(), cell("label").lower()
        note = spreadsheet.unescape(cell("note"))
        media = cell(MEDIA_COLUMN).lower() or "image"
        if media not in ("image", "video"):
            raise ListError(f"row {number}: media {media[:40]!r} is not image or video")
        if not sha and not pdq:
            raise ListError(f"row {number}: neither a sha256 nor a PDQ hash")
        frames = pdq.split() if media == "video" else [pdq] if pdq else []
        if len(frames) > MAX_VIDEO_HASHES:
            raise ListError(f"row {number}: more than {MAX_VIDEO_HASHES} frame hashes")
        for name, value in (("sha256", sha), *(("PDQ hash", f) for f in frames)):
            if value and not _HEX64.match(value):
                raise ListError(f"row {number}: {value[:80]!r} is not a {name} (64 hex digits)")
        pdq = ",".join(dict.fromkeys(frames))
        if label not in LIST_LABELS:
            raise ListError(f"row {number}: label {label[:40]!r} is not one of allow, deny, safe, adult")
        if len(note) > MAX_NOTE:
            raise ListError(f"row {number}: the note is longer than {MAX_NOTE} characters")
        out.append(ListEntry(sha or None, pdq or None, label, note, media))
    return out


def format_list(entries: Iterable[ListEntry]) -> str:
    """Entries as a hash-list CSV (what :func:`parse_list` reads)."""
    entries = list(entries)
    videos = any(e.media == "video" for e in entries)  # the media column only when a video needs it
    buf = io.StringIO()
    writer = spreadsheet.writer(buf, lineterminator="\n")  # a note like =HYPERLINK(...) written as text
    writer.writerow((*LIST_COLUMNS, MEDIA_COLUMN) if videos else LIST_COLUMNS)
    for e in entries:
        pdq = (e.pdq or "").replace(",", " ") if e.media == "video" else e.pdq or ""
        writer.writerow([e.sha256 or "", pdq, e.label, e.note, e.media] if videos else
                        [e.sha256 or "", pdq, e.label, e.note])
    return buf.getvalue()


@dataclasses.dataclass
class _State:
    """What one process knows; replaced field by field by the refresh thread (readers take references)."""

    entries: dict[int, Entry]
    by_sha: dict[str, list[int]]
    index: tuple[HashIndex, np.ndarray]  # the index and the entry id of each of its rows (swapped together)
    tail: tuple[np.ndarray, np.ndarray]  # (k, 32) hashes added since the index was built, and their entry ids
    last_id: int = 0
    videos: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # video entry -> its frames' rows
    video_index: tuple[HashIndex, np.ndarray] | None = None  # every video frame and its entry (None: to build)


def _no_hashes() -> tuple[np.ndarray, np.ndarray]:
    return as_rows([]), np.zeros(0, np.int64)


def _empty_state() -> _State:
    return _State({}, {}, (HashIndex(as_rows([])), np.zeros(0, np.int64)), _no_hashes())


class KnownImages:
    """The known images of one process, read from the database's log and refreshed in the background."""

    def __init__(self, pool: Pool, *, distance: int = 31, refresh_interval: float = REFRESH_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self.backend = pool.backend
        self.distance = int(distance)
        self.refresh_interval = float(refresh_interval)
        self.clock = clock
        self._state = _empty_state()
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._prepared = False
        self._loaded = False
        self._refresher = Refresher(self.refresh, self.refresh_interval, "nsfw-known-refresh")
        self.warning: str | None = None
        self._embeddings: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._embedding_lock = threading.Lock()

    def describe(self) -> str:
        return self.backend.describe()

    def __len__(self) -> int:
        return len(self._state.entries)

    @property
    def hashes(self) -> int:
        """Perceptual hashes held (index and tail)."""
        s = self._state
        return len(s.index[0]) + len(s.tail[0])

    # ------------------------------------------------------------ lookup (every request)

    def lookup(self, sha256: str, phash: bytes | None, client: str | None = None) -> Match | None:
        """The best match for an image (its sha256 and query hash, None for none), or None. Never raises.

        ``client``: who asks (a hash of its API key); a decision on an item that a client's own thresholds
        queued protects only that client, so other clients (and ``None``) never match it.
        """
        self._maybe_refresh()
        s = self._state
        entries = s.entries

        def visible(i: int) -> bool:
            entry = entries.get(i)
            return entry is not None and (not entry.audience or entry.audience == client)

        found: list[tuple[Entry, str, int]] = [(entries[i], "sha256", 0) for i in s.by_sha.get(sha256, ())
                                               if visible(i)]
        if phash is not None and len(phash) == HASH_BYTES:
            (index, owner), (tail, tail_owner) = s.index, s.tail
            rows, dists = index.search(phash, self.distance)
            hits = list(zip(owner[rows].tolist(), dists.tolist(), strict=True))
            if len(tail):
                d = distances(tail, phash)
                near = np.flatnonzero(d <= self.distance)
                hits.extend(zip(tail_owner[near].tolist(), d[near].tolist(), strict=True))
            found.extend((entries[i], "pdq", int(dist)) for i, dist in hits if visible(i))
        if not found:
            return None
        entry, by, dist = min(found, key=lambda f: (f[0].kind != LIST, f[2], -f[0].id))
        return self._with_embedding(entry.match(by, dist))

    def entry(self, entry_id: int) -> Entry | None:
        """The live entry ``entry_id`` as this process knows it (None once removed, or not read yet): what the
        reviewer API names of a refused look-alike's match (its hash).  Never raises."""
        self._maybe_refresh()
        return self._state.entries.get(int(entry_id))

    def lookup_many(self, sha256s: Sequence[str | None], phashes: Sequence[bytes | None],
                    client: str | None = None) -> list[Match | None]:
        """:meth:`lookup` for many images at once (``nsfw-scan``'s stored rows), with the same answers.

        One lookup probes the index of known hashes (a fixed cost, about 0.1 ms); for a batch larger than the
        known hashes it is cheaper to index the batch's hashes once and search them for each known hash
        (BENCHMARKS.md, issue 28).  Never raises.
        """
        self._maybe_refresh()
        s = self._state
        entries = s.entries

        def visible(i: int) -> bool:  # as in lookup: a decision for one client's audience only matches it
            entry = entries.get(i)
            return entry is not None and (not entry.audience or entry.audience == client)

        found: dict[int, list[tuple[Entry, str, int]]] = {}
        for i, sha in enumerate(sha256s):
            for e in s.by_sha.get(sha or "", ()):
                if visible(e):
                    found.setdefault(i, []).append((entries[e], "sha256", 0))
        (index, owner), (tail, tail_owner) = s.index, s.tail
        known_rows = np.concatenate([index.rows, tail])
        known_owner = np.concatenate([owner, tail_owner])
        queries = [i for i, p in enumerate(phashes) if p is not None and len(p) == HASH_BYTES]
        if queries and len(known_rows):
            if len(known_rows) < len(queries):
                batch = HashIndex(as_rows([phashes[i] for i in queries]))  # type: ignore[misc]
                for row, entry_id in zip(known_rows, known_owner.tolist(), strict=True):
                    if not visible(entry_id):
                        continue
                    hit, hit_dist = batch.search(row.tobytes(), self.distance)
                    for q, d in zip(hit.tolist(), hit_dist.tolist(), strict=True):
                        found.setdefault(queries[q], []).append((entries[entry_id], "pdq", int(d)))
            else:
                for i in queries:
                    query = phashes[i]
                    assert query is not None
                    rows, dists = index.search(query, self.distance)
                    hits = list(zip(owner[rows].tolist(), dists.tolist(), strict=True))
                    if len(tail):
                        d = distances(tail, query)
                        near = np.flatnonzero(d <= self.distance)
                        hits.extend(zip(tail_owner[near].tolist(), d[near].tolist(), strict=True))
                    found.setdefault(i, []).extend((entries[e], "pdq", int(h)) for e, h in hits if visible(e))
        out: list[Match | None] = [None] * len(sha256s)
        for i, matches in found.items():
            if matches:
                entry, by, bits = min(matches, key=lambda f: (f[0].kind != LIST, f[2], -f[0].id))
                out[i] = self._with_embedding(entry.match(by, bits))
        return out

    def _with_embedding(self, match: Match) -> Match:
        """A perceptual match of a decision that keeps its image's embedding, with the embedding (read from the
        database once, then from a small cache): a look-alike must be near it (:func:`nsfw_core.classify.judge`).
        When it cannot be read the match says so (``embedded`` without an embedding), and judging fails closed."""
        if match.by == "sha256" or not match.embedded:
            return match
        with self._embedding_lock:
            cached = self._embeddings.get(match.entry_id)
            if cached is not None:
                self._embeddings.move_to_end(match.entry_id)
        if cached is None:
            try:
                with self._connection() as conn, self.backend.begin(conn, write=False) as tx:
                    text, _version = decided_embedding(tx, match.entry_id)
            except Exception as exc:  # never break prediction: the look-alike then goes to the model's verdict
                log.warning("known images: the embedding of entry %s could not be read (%r)", match.entry_id, exc)
                return match
            cached = decode_embedding(text)
            if cached is None:
                return match
            with self._embedding_lock:
                self._embeddings[match.entry_id] = cached
                while len(self._embeddings) > EMBEDDINGS_CACHED:
                    self._embeddings.popitem(last=False)
        return dataclasses.replace(match, embedding=cached)
    def lookup_video(self, sha256: str, hashes: Sequence[bytes | None], client: str | None = None) -> Match | None:
        """The best match for a video: an entry with its sha256, or a known video most of whose frames and most
        of this one's match (``hashes``: the sampled frames' PDQ hashes, in order; None for a frame too flat to
        hash).  ``client`` as in :meth:`lookup`: a decision made for one client's own thresholds matches only
        it.  The match carries the decided video's scores (its worst frame's) and model: whether the model sees
        the copy alike is :func:`nsfw_core.classify.judge`'s rule.  Never raises."""
        self._maybe_refresh()
        s = self._state

        def visible(entry: Entry | None) -> bool:
            return entry is not None and (not entry.audience or entry.audience == client)

        exact = [s.entries[i] for i in s.by_sha.get(sha256, ()) if visible(s.entries.get(i))]
        if exact:
            entry = min(exact, key=lambda e: (e.kind != LIST, -e.id))
            return Match(entry.kind, entry.verdict, entry.label, "sha256", 0, entry.id, entry.review_id,
                         entry.scores, entry.model)
        query = [h for h in hashes if h is not None and len(h) == HASH_BYTES]
        if not query or not s.videos:
            return None
        index, owner = self._video_index(s)
        candidates: set[int] = set()
        for h in dict.fromkeys(query):
            rows, _ = index.search(h, self.distance)
            candidates.update(owner[rows].tolist())
        rows_q = vpdq.as_words(query)
        best: tuple[tuple[bool, float, int], Match] | None = None
        for entry_id in candidates:
            candidate = s.entries.get(entry_id)
            known = s.videos.get(entry_id)
            if candidate is None or known is None or not visible(candidate):
                continue
            entry = candidate
            found = vpdq.compare(rows_q, known, self.distance)
            if not found.match:
                continue
            key = (entry.kind != LIST, -found.query_share, -entry.id)
            if best is None or key < best[0]:
                best = (key, Match(entry.kind, entry.verdict, entry.label, "vpdq", found.distance, entry.id,
                                   entry.review_id, entry.scores, entry.model, share=round(found.query_share, 4)))
        return None if best is None else best[1]

    def _video_index(self, s: _State) -> tuple[HashIndex, np.ndarray]:
        built = s.video_index
        if built is None:
            rows = [r for r in s.videos.values()]
            owners = [np.full(len(r), i, np.int64) for i, r in s.videos.items()]
            words = np.concatenate(rows) if rows else np.zeros((0, 4), np.uint64)
            built = (HashIndex(as_rows([w.tobytes() for w in words])),
                     np.concatenate(owners) if owners else np.zeros(0, np.int64))
            s.video_index = built
        return built

    def _maybe_refresh(self) -> None:
        if not self._loaded:
            self.refresh()
            return
        self._refresher.due()

    # ------------------------------------------------------------ reading the log

    def refresh(self) -> None:
        """Read the log rows added since the last refresh (migrating first, once). Never raises."""
        with self._refresh_lock:
            self._refresher.checked = time.monotonic()
            try:
                if not self._prepared:
                    self.backend.recover()
                while True:
                    with self._pool.connection() as conn:
                        if not self._prepared:
                            migrate(self.backend, conn, MIGRATIONS, self.clock)
                            self._prepared = True
                        with self.backend.begin(conn, write=False) as tx:
                            rows = tx.run(f"{SELECT} WHERE id > ? ORDER BY id LIMIT {READ_BATCH}",
                                          (self._state.last_id,))
                    self._apply(rows)
                    if len(rows) < READ_BATCH:
                        break
                if len(self._state.tail[0]) > TAIL_MAX:
                    self._rebuild()
            except Exception as exc:  # never break prediction
                reason = exc.message if isinstance(exc, NSFWError) else f"{type(exc).__name__}: {exc}"
                if self.warning is None:
                    log.warning("known images: database %s unreachable (%s); keeping the %d entries in memory",
                                self.describe(), reason[:300], len(self))
                # /health is public: the database's kind only (the log above has its address and the error)
                self.warning = (f"the known images database ({self.backend.public_name()}) is unreachable; the "
                                f"entries in memory stay in force (details in the server log)")
            else:
                if self.warning is not None:
                    log.warning("known images: database %s reachable again", self.describe())
                self.warning = None
            self._loaded = True

    def _apply(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        s = self._state
        new_hashes: list[bytes] = []
        new_owner: list[int] = []
        for row in rows:
            v = dict(zip(COLUMNS, row, strict=True))
            entry_id = int(v["id"])
            if v["op"] == ADD:
                entry = Entry(entry_id, v["kind"], v["sha256"] or None, tuple(split_hex(v["hashes"])), v["verdict"],
                              v["label"], v["note"] or "", None if v["review_id"] is None else int(v["review_id"]),
                              v["added_by"], float(v["added_at"]), _scores(v["scores"]), v["model"] or "",
                              v["audience"] or "", v["model_version"] or "", bool(v["embedded"]),
                              v.get("media") or "image")
                s.entries[entry_id] = entry
                if entry.sha256:
                    s.by_sha.setdefault(entry.sha256, []).append(entry_id)
                if entry.media == "video":  # matched as a whole, never frame by frame against still images
                    s.videos[entry_id] = vpdq.as_words(list(entry.hashes))
                    s.video_index = None
                    continue
                for h in entry.hashes:
                    new_hashes.append(h)
                    new_owner.append(entry_id)
            elif v["op"] == REMOVE and v["removes"] is not None:
                gone = s.entries.pop(int(v["removes"]), None)
                if gone is not None and s.videos.pop(gone.id, None) is not None:
                    s.video_index = None
                if gone is not None and gone.sha256:
                    ids = [i for i in s.by_sha.get(gone.sha256, []) if i != gone.id]
                    if ids:
                        s.by_sha[gone.sha256] = ids
                    else:
                        s.by_sha.pop(gone.sha256, None)
            s.last_id = entry_id
        if new_hashes:
            tail, tail_owner = s.tail
            s.tail = (np.concatenate([tail, as_rows(new_hashes)]),
                      np.concatenate([tail_owner, np.array(new_owner, np.int64)]))

    def _rebuild(self) -> None:
        """Index every hash of a live entry (removed entries' hashes are dropped here)."""
        s = self._state
        (index, owner), (tail, tail_owner) = s.index, s.tail
        rows = np.concatenate([index.rows, tail])
        owners = np.concatenate([owner, tail_owner])
        live = np.isin(owners, np.fromiter(s.entries.keys(), np.int64, len(s.entries)))
        rows, owners = rows[live], owners[live]
        # a lookup meanwhile sees the old index and tail together, or the new index and an empty tail
        self._state = dataclasses.replace(s, index=(HashIndex(rows), owners), tail=_no_hashes())

    # ------------------------------------------------------------ hash lists (the lists page)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection on the database, recovered and migrated first (once)."""
        if not self._prepared:
            self.backend.recover()
        with self._pool.connection() as conn:
            if not self._prepared:
                migrate(self.backend, conn, MIGRATIONS, self.clock)
                self._prepared = True
            yield conn

    def _write(self, action: Callable[[Any], Any]) -> Any:
        try:
            with self._connection() as conn:
                with self.backend.begin(conn, write=True) as tx:
                    self.backend.lock_migrations(tx)  # ids visible in order (review.remembered)
                    result = action(tx)
        except NSFWError:
            raise
        except self.backend.errors as exc:
            raise KnownUnavailable(f"the database {self.describe()} is unavailable; nothing was changed: "
                                   f"{exc}") from exc
        self.refresh()  # in force in this process at once
        return result

    def import_list(self, entries: Sequence[ListEntry], *, by: str, replace: bool = False) -> dict[str, int]:
        """Add hash-list entries (an entry with the same hashes as a listed one replaces it); with ``replace``
        the current list is removed first.  One transaction.  Returns ``{"added", "removed"}``."""
        now = self.clock()

        def run(tx: Any) -> dict[str, int]:
            current = tx.run(f"SELECT a.id, a.sha256, a.hashes FROM {KNOWN_TABLE} a WHERE a.op = '{ADD}' AND "
                             f"a.kind = '{LIST}' AND NOT EXISTS (SELECT 1 FROM {KNOWN_TABLE} r WHERE "
                             f"r.op = '{REMOVE}' AND r.removes = a.id)")
            keys = {(e.sha256 or None, e.pdq or "") for e in entries}
            doomed = [int(i) for i, sha, hashes in current if replace or ((sha or None), hashes or "") in keys]
            for entry_id in doomed:
                remove(tx, entry_id, LIST, by, now)
            tx.cursor.executemany(self.backend.sql(
                f"INSERT INTO {KNOWN_TABLE} (op, kind, sha256, hashes, verdict, label, note, added_by, added_at, "
                f"media) VALUES ('{ADD}', '{LIST}', ?, ?, ?, ?, ?, ?, ?, ?)"),
                [(e.sha256, e.pdq or "", e.verdict, e.label, e.note, by, now, e.media) for e in entries])
            return {"added": len(entries), "removed": len(doomed)}

        counts: dict[str, int] = self._write(run)
        return counts

    def list_entries(self) -> list[ListEntry]:
        """The hash list as it stands (oldest entry first), from the database."""
        try:
            with self._connection() as conn, self.backend.begin(conn, write=False) as tx:
                ids = [int(r[0]) for r in live_entries(tx, f"a.kind = '{LIST}'")]
                rows = tx.run(f"{SELECT} WHERE op = '{ADD}' AND kind = '{LIST}' ORDER BY id")
        except NSFWError:
            raise
        except self.backend.errors as exc:
            raise KnownUnavailable(f"the database {self.describe()} is unavailable: {exc}") from exc
        wanted = set(ids)
        out = []
        for row in rows:
            v = dict(zip(COLUMNS, row, strict=True))
            if int(v["id"]) in wanted:
                out.append(ListEntry(v["sha256"] or None, v["hashes"] or None, v["label"], v["note"] or "",
                                     v["media"] or "image"))
        return out

    def export_list(self) -> str:
        return format_list(self.list_entries())

    def clear_list(self, *, by: str) -> int:
        """Remove every hash-list entry; returns how many."""
        return int(self.import_list([], by=by, replace=True)["removed"])

    def counts(self) -> dict[str, int]:
        """Entries in memory by kind, and perceptual hashes held."""
        out = {REVIEW: 0, LIST: 0}
        for e in list(self._state.entries.values()):
            out[e.kind] = out.get(e.kind, 0) + 1
        out["hashes"] = self.hashes
        return out

    def close(self) -> None:
        self._refresher.closed = True


def item_hashes(ctx: Any, queue: Any, item_id: int, data: bytes | None = None) -> str | None:
    """The perceptual hashes to remember a review item's decision by, for an item that has none (queued
    before this version, or by a caller without them): from ``data`` (the bytes the reviewer was shown) or
    the stored bytes, and only when they are the item's own (their sha256 is the item's); its URL is never
    fetched again here (what it serves now may be another image: issue 29, finding 1).  None when it has
    hashes already or when its image cannot be had (the decision is then remembered by sha256 only).
    Never raises.
    """
    from nsfw_core.images import phash  # the context's decoder and model make the same model input as a request's

    try:
        if queue.phash(item_id) is not None:
            return None
        item = queue.get(item_id)
        if item is None:
            return None
        if data is None:
            data = item.image
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != item.sha256:
            return None  # not the bytes that were classified: do not remember them under this decision
        x = ctx.decoder.prepare(ctx.models.get(), data)
        return phash.join_hex(phash.stored_hashes(x)) if isinstance(x, np.ndarray) else None
    except Exception as exc:  # a decode error: sha256 only
        log.info("review item %s: no perceptual hash (%s); its decision is remembered by sha256", item_id, exc)
        return None
