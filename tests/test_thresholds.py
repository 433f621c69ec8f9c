"""The thresholds history (nsfw_core.state.thresholds) on SQLite and a real PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from nsfw_core.base.verdict import Thresholds
from nsfw_core.state.review import MIGRATIONS, VERSION_TABLE, ReviewQueue
from nsfw_core.state.thresholds import IMPORTED_BY, ThresholdHistory, ThresholdsUnavailable, ThresholdVersionNotFound
from tests.helpers.tcpproxy import TcpProxy

DEFAULTS = Thresholds(0.7, 0.9)
T1 = Thresholds(0.6, 0.8)
T2 = Thresholds(0.55, 0.85, ("porn",), ("neutral",))
SHA = "a" * 64
SCORES = {"drawings": 0.1, "hentai": 0.1, "neutral": 0.4, "porn": 0.2, "sexy": 0.2}


class Db:
    def __init__(self, name: str, url: str | None, data_dir: Path) -> None:
        self.name, self.url, self.data_dir = name, url, data_dir
        self.opened: list[ThresholdHistory] = []

    def open(self, **kwargs) -> ThresholdHistory:
        h = ThresholdHistory(self.url, data_dir=self.data_dir, defaults=DEFAULTS, **kwargs)
        self.opened.append(h)
        return h

    def schema_versions(self) -> list[int]:
        q = ReviewQueue(self.url, data_dir=self.data_dir, migrations=MIGRATIONS)
        try:
            with q._connection() as conn, q.backend.begin(conn, write=False) as tx:
                return [int(r[0]) for r in tx.run(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")]
        finally:
            q.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    d = Db(request.param, url, tmp_path / "data")
    yield d
    for h in d.opened:
        h.close()


def test_empty_database_gives_the_defaults_then_saved_versions(db):
    h = db.open()
    active = h.current()
    assert (active.thresholds, active.source, active.version, active.warning) == (DEFAULTS, "defaults", None, None)
    saved = h.save(T1, model="MobileNetV2Mid", tuned_on={"images": 18, "metrics": {"review_share": 0.25}},
                   by="alice")
    assert (saved.thresholds, saved.source, saved.version, saved.warning) == (T1, "database", 1, None)
    assert h.current().version == 1
    assert h.save(T2, model="MobileNetV2Mid", by="bob").version == 2
    assert h.current().thresholds == T2
    [v2, v1] = h.history()
    assert (v1.version, v1.thresholds, v1.model, v1.saved_by, v1.tuned_on) == \
        (1, T1, "MobileNetV2Mid", "alice", {"images": 18, "metrics": {"review_share": 0.25}})
    assert (v2.version, v2.thresholds, v2.saved_by, v2.tuned_on, v2.rolled_back_from) == (2, T2, "bob", {}, None)
    assert abs(v1.saved_at - time.time()) < 60
    assert h.current().saved["saved_by"] == "bob" and h.current().saved["version"] == 2


def test_rollback_is_a_new_version_copying_an_old_one(db):
    h = db.open()
    h.save(T1, model="m1", tuned_on={"images": 5}, by="alice")
    h.save(T2, model="m2", by="bob")
    active = h.rollback(1, by="carol")
    assert (active.version, active.thresholds) == (3, T1)
    v3 = h.history(limit=1)[0]
    assert (v3.version, v3.thresholds, v3.model, v3.saved_by, v3.tuned_on, v3.rolled_back_from, v3.note) == \
        (3, T1, "m1", "carol", {"images": 5}, 1, "rollback to version 1")
    assert [v.version for v in h.history()] == [3, 2, 1]
    with pytest.raises(ThresholdVersionNotFound) as info:
        h.rollback(42, by="carol")
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert [v.version for v in h.history()] == [3, 2, 1]


def test_invalid_thresholds_are_refused_and_nothing_is_saved(db):
    h = db.open()
    with pytest.raises(ValueError, match="both adult and safe"):
        h.save(Thresholds(0.6, 0.8, ("porn", "sexy"), ("sexy", "neutral")), model="m")
    assert h.history() == [] and h.current().version is None


def test_a_version_saved_elsewhere_is_in_force_here_within_two_seconds(db):
    a, b = db.open(), db.open()
    assert b.current().version is None
    a.save(T1, model="m", by="alice")
    started = time.monotonic()
    while b.current().version != 1:
        assert time.monotonic() - started < 2.0, "not in force within 2 s"
        time.sleep(0.01)
    delay = time.monotonic() - started
    assert b.current().thresholds == T1
    print(f"{db.name}: propagation {delay * 1000:.0f} ms")


def test_current_costs_no_database_round_trip(db):
    h = db.open()
    h.save(T1, model="m")
    h.current()
    n = 100_000
    started = time.perf_counter()
    for _ in range(n):
        h.current()
    per_call = (time.perf_counter() - started) / n
    print(f"{db.name}: current() {per_call * 1e9:.0f} ns per call")
    assert per_call < 20e-6  # a query is ~50 µs or more; this is a clock read and a comparison


def test_restart_keeps_the_history(db):
    h = db.open()
    h.save(T1, model="m", by="alice")
    h.save(T2, model="m", by="bob")
    h.close()
    again = db.open()
    assert (again.current().version, again.current().thresholds) == (2, T2)
    assert [v.saved_by for v in again.history()] == ["bob", "alice"]


def test_thresholds_json_is_imported_once_and_left_alone(db):
    db.data_dir.mkdir(parents=True)
    path = db.data_dir / "thresholds.json"
    doc = {"thresholds": T1.to_dict(), "model": "MobileNetV2Mid", "saved_at": "2026-01-02T03:04:05+00:00",
           "tuned_on": {"images": 7}}
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    h = db.open()
    active = h.current()
    assert (active.version, active.thresholds, active.source) == (1, T1, "database")
    [v1] = h.history()
    assert (v1.saved_by, v1.model, v1.tuned_on) == (IMPORTED_BY, "MobileNetV2Mid", {"images": 7})
    h.save(T2, model="m")
    assert path.read_bytes() == before  # never written
    again = db.open()  # another process starting: no second import
    assert [v.version for v in again.history()] == [2, 1]
    assert again.current().thresholds == T2


def test_an_invalid_thresholds_json_is_not_imported(db):
    db.data_dir.mkdir(parents=True)
    (db.data_dir / "thresholds.json").write_text('{"thresholds": 7}')
    h = db.open()
    assert (h.current().version, h.current().thresholds) == (None, DEFAULTS)
    assert h.current().warning == ("the thresholds file (thresholds.json in the data folder) is unreadable "
                                   '(expected a JSON object with a "thresholds" object), so unusable: not '
                                   "imported; the defaults are in force until thresholds are saved")
    assert h.history() == []
    assert h.save(T1, model="m").warning is None  # saved thresholds are in force: the file no longer matters


def test_migrates_from_todays_schema_keeping_the_queue(db):
    old = ReviewQueue(db.url, data_dir=db.data_dir, migrations=MIGRATIONS[:2])  # the schema at HEAD before
    item = old.enqueue(SHA, "https://example.com/a.jpg", SCORES, "m", "unknown")
    old.close()
    h = db.open()
    assert h.save(T1, model="m").version == 1
    assert db.schema_versions() == [m.version for m in MIGRATIONS]
    q = ReviewQueue(db.url, data_dir=db.data_dir)
    try:
        assert [i.id for i in q.items()] == [item]
    finally:
        q.close()


def test_two_processes_starting_at_once_migrate_once(db):
    stores = [db.open() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def start(h: ThresholdHistory) -> None:
        try:
            barrier.wait()
            assert h.refresh().warning is None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(h,)) for h in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert db.schema_versions() == [m.version for m in MIGRATIONS]


def test_unreachable_at_start_keeps_the_defaults_with_a_warning_and_saving_is_a_503(tmp_path):
    h = ThresholdHistory("postgresql://u:secret@127.0.0.1:1/x?connect_timeout=2", data_dir=tmp_path,
                         defaults=DEFAULTS)
    try:
        active = h.current()
        assert (active.thresholds, active.source, active.version) == (DEFAULTS, "defaults", None)
        assert active.warning == ("the thresholds database (PostgreSQL) is unreachable; using the defaults "
                                  "(details in the server log)")
        with pytest.raises(ThresholdsUnavailable) as info:
            h.save(T1, model="m")
        assert (info.value.status, info.value.code) == (503, "thresholds_unavailable")
        with pytest.raises(ThresholdsUnavailable):
            h.history()
    finally:
        h.close()


def test_postgres_going_down_keeps_the_version_in_force_and_recovers(postgres_url, tmp_path):
    proxy, url = TcpProxy.for_url(postgres_url)
    writer = ThresholdHistory(postgres_url, data_dir=tmp_path, defaults=DEFAULTS)
    h = ThresholdHistory(url, data_dir=tmp_path, defaults=DEFAULTS, refresh_interval=0.1)
    try:
        writer.save(T1, model="m")
        assert h.current().version == 1
        proxy.down()
        deadline = time.monotonic() + 5
        while h.current().warning is None:
            assert time.monotonic() < deadline, "no warning while the database is down"
            time.sleep(0.02)
        active = h.current()
        assert (active.version, active.thresholds, active.source) == (1, T1, "database")
        assert active.warning is not None and "keeping version 1 in force" in active.warning
        with pytest.raises(ThresholdsUnavailable):
            h.save(T2, model="m")
        writer.save(T2, model="m")  # saved while this process cannot see the database
        for _ in range(20):
            assert (h.current().version, h.current().thresholds) == (1, T1)
            time.sleep(0.02)
        proxy.up()
        deadline = time.monotonic() + 5
        while h.current().version != 2 or h.current().warning is not None:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.02)
        assert h.current().thresholds == T2
    finally:
        h.close()
        writer.close()
        proxy.close()
