"""nsfw-scan on Ray, the whole command in its own process: hostile files, interruptions (Ctrl-C, a killed
actor, a killed driver) and resumption, an object store (a local S3 server), the review queue and reverdict.

Each run starts an embedded Ray (seconds); the catalogues are the repository's images and a few hostile
files (tests/helpers/scanfiles.py).  tests/test_scan.py covers the parts without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest

from nsfw_core.base.verdict import Thresholds
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review.queue import TICKET_RE
from nsfw_core.state.thresholds import ThresholdHistory
from tests.helpers.paths import COMPILED_DIR, ROOT
from tests.helpers.s3server import s3_server
from tests.helpers.scanfiles import BENIGN, catalogue

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RUN_S = 240


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "RAY_", "AWS_"))}
    env.update(NSFW_DATA_DIR=str(data_dir), NSFW_COMPILED_DIR=COMPILED_DIR, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nsfw_core.scan.cli", *args, "--actors", "1", "--num-cpus", "2",
            "--object-store-memory", "100M", "--json"]


def _scan(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(_command(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_S)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    return done.returncode, (json.loads(lines[-1]) if lines else {}), done.stderr[-4000:]


def _rows(dataset: Path | str, filesystem: Any = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pads.dataset(str(dataset), format="parquet", filesystem=filesystem).to_table().to_pylist()
    return rows


def _parts(dataset: Path) -> list[Path]:
    return sorted(dataset.glob("part-*.parquet"))


def _session_processes(sid: int, needle: str) -> list[int]:
    """Processes of session ``sid`` whose command line holds ``needle`` (Ray names its actors' processes)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            session = int(stat.rsplit(")", 1)[1].split()[3])
            if session == sid and needle in (proc / "cmdline").read_bytes().decode(errors="replace"):
                out.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _wait_for(condition: Any, what: str, timeout: float = 120.0, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the scan exited first ({proc.returncode}): {proc.stderr.read()[-3000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def _kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL whatever the scan left in its session (Ray's processes die with their driver; this makes sure)."""
    for pid in _session_processes(proc.pid, ""):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_hostile_files_cost_one_row_each_and_a_second_scan_scores_nothing(tmp_path):
    expected = catalogue(tmp_path / "cat")
    env = _env(tmp_path / "data")
    code, first, err = _scan(env, str(tmp_path / "cat"), "--out", str(tmp_path / "ds"), "--batch-size", "4")
    assert code == 0, err
    rows = _rows(tmp_path / "ds")
    assert {r["source"]: r["error_code"] for r in rows} == expected  # one row per image, errors by code
    assert len(rows) == len(expected) == first["listed"] == first["rows_written"]
    assert first["scored"] == sum(code is None for code in expected.values()) and first["skipped"] == 0
    assert first["error_codes"] == {"image_too_large": 3, "not_an_image": 2, "undecodable_image": 1}
    assert first["actors"] == 1 and first["model_loads"] == 1  # the model loaded once, not per batch
    assert all(r["verdict"] in ("safe", "unknown", "adult") for r in rows if r["error_code"] is None)
    assert all(r["verdict"] is None and r["porn"] is None for r in rows if r["error_code"] is not None)
    assert {r["model_version"] for r in rows} == {first["model_version"]}
    # an unchanged catalogue: every image read and hashed again, none scored, nothing written
    code, second, err = _scan(env, str(tmp_path / "cat"), "--out", str(tmp_path / "ds"), "--batch-size", "4")
    assert code == 0, err
    assert second["scored"] == 0 and second["model_rows"] == 0 and second["rows_written"] == 0
    assert second["skipped"] == second["done_before"] == len(expected)
    assert len(_rows(tmp_path / "ds")) == len(expected)


def test_ctrl_c_a_killed_actor_and_a_killed_driver_resume_to_each_image_exactly_once(tmp_path):
    expected = catalogue(tmp_path / "cat", copies=4)
    env = _env(tmp_path / "data")
    ds = tmp_path / "ds"
    args = _command(str(tmp_path / "cat"), "--out", str(ds), "--batch-size", "2", "--flush-rows", "2")

    # 1. Ctrl-C (SIGINT to the whole process group, as a terminal sends it) once the first rows are written
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for(lambda: _parts(ds), "a first part", proc=proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-3000:]
        interrupted = json.loads(out.strip().splitlines()[-1])
        assert interrupted["interrupted"] and interrupted["rows_written"] == len(_rows(ds)) < len(expected)
    finally:
        _kill_session(proc)

    # 2. a killed actor (Ray restarts it and retries its batch), then a killed driver (SIGKILL, nothing flushed)
    before = len(_parts(ds))
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for(lambda: len(_parts(ds)) > before, "a part of the second run", proc=proc)
        actors = _session_processes(proc.pid, "MapWorker")
        assert len(actors) == 1, actors
        os.kill(actors[0], signal.SIGKILL)
        after_actor = len(_parts(ds))
        _wait_for(lambda: len(_parts(ds)) > after_actor, "a part after the actor's restart", proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        _kill_session(proc)
    partial = _rows(ds)
    assert len(partial) < len(expected), "the second run finished before it was killed: nothing was tested"
    assert len({r["source"] for r in partial}) == len(partial)  # no image twice, even after the killed actor

    # 3. the rest
    code, last, err = _scan(env, str(tmp_path / "cat"), "--out", str(ds), "--batch-size", "2", "--flush-rows", "2")
    assert code == 0, err
    rows = _rows(ds)
    assert sorted(r["source"] for r in rows) == sorted(expected)  # each image exactly once
    assert {r["source"]: r["error_code"] for r in rows} == expected
    assert last["skipped"] == len(partial) and last["scored"] + last["errors"] == len(expected) - len(partial)


def test_an_object_store_catalogue_through_a_local_s3_server(tmp_path):
    with s3_server() as (s3_env, admin):
        admin.create_dir("catalogue")
        names = [f"{i}-{path.name}" for i, path in enumerate(BENIGN[:6])]
        for name, path in zip(names, BENIGN[:6], strict=True):
            with admin.open_output_stream(f"catalogue/imgs/{name}") as out:
                out.write(path.read_bytes())
        with admin.open_output_stream("catalogue/imgs/sub/notes.jpg") as out:
            out.write(b"not an image")
        with admin.open_output_stream("catalogue/imgs/readme.txt") as out:  # not an image suffix: not listed
            out.write(b"hello")
        env = _env(tmp_path / "data", **s3_env)
        # the catalogue and the dataset both in the object store
        code, first, err = _scan(env, "s3://catalogue/imgs", "--out", "s3://catalogue/scans/run1")
        assert code == 0, err
        rows = _rows("catalogue/scans/run1", admin)
        assert sorted(r["source"] for r in rows) == sorted(
            [f"s3://catalogue/imgs/{name}" for name in names] + ["s3://catalogue/imgs/sub/notes.jpg"])
        assert {r["kind"] for r in rows} == {"object"}
        assert [r["error_code"] for r in rows if r["source"].endswith("notes.jpg")] == ["not_an_image"]
        assert first["scored"] == 6
        code, second, err = _scan(env, "s3://catalogue/imgs", "--out", "s3://catalogue/scans/run1")
        assert code == 0, err
        assert second["scored"] == 0 and second["skipped"] == 7


def test_queue_the_unknowns_once_then_reverdict_a_new_threshold_version(tmp_path):
    data = tmp_path / "data"
    env = _env(data)
    history = ThresholdHistory(None, data_dir=data, defaults=Thresholds())
    # strict: only the most certain images are safe, the others unknown
    history.save(Thresholds(adult=0.7, safe=0.995), model="MobileNetV2Mid", by="test")
    history.close()
    code, first, err = _scan(env, str(ROOT / "data" / "demo"), str(ROOT / "tests" / "fixtures" / "reference"),
                             "--out", str(tmp_path / "ds"), "--queue")
    assert code == 0, err
    rows = _rows(tmp_path / "ds")
    unknown = [r for r in rows if r["verdict"] == "unknown"]
    assert first["thresholds_version"] == 1 and {r["thresholds_version"] for r in rows} == {1}
    assert 0 < len(unknown) < len(rows) and first["queued"] == len(unknown)
    assert all(r["review_id"] is not None for r in unknown)
    queue = ReviewQueue(None, data_dir=data)
    try:
        assert queue.counts()["pending"] == len(unknown)
        # the public review id, the webhooks' and the reviewer API's (the queue's row number is 404 there)
        assert all(TICKET_RE.match(r["review_id"]) for r in unknown)
        found = queue.ticket(unknown[0]["review_id"])
        assert found is not None and queue.public_id(found[0]) == unknown[0]["review_id"]
        item = queue.get(found[0])
        assert item is not None and item.sha256 == unknown[0]["sha256"] and item.verdict == "unknown"
        assert item.source == unknown[0]["source"] and queue.phash(item.id)  # decisions remembered by PDQ too
    finally:
        queue.close()
    # a looser version: reverdict re-judges the stored scores, no model, and says what changed
    history = ThresholdHistory(None, data_dir=data, defaults=Thresholds())
    history.save(Thresholds(adult=0.7, safe=0.9), model="MobileNetV2Mid", by="test")
    history.close()
    changes = tmp_path / "changes.csv"
    done = subprocess.run([sys.executable, "-m", "nsfw_core.scan.cli", "reverdict", str(tmp_path / "ds"), "--json",
                           "--changes", str(changes)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["thresholds_version"] == 2 and report["changed"] > 0
    assert {(t["old"], t["new"]) for t in report["transitions"]} >= {("unknown", "safe")}
    assert len(changes.read_text().splitlines()) == report["changed"] + 1
    after = _rows(tmp_path / "ds")
    assert {r["thresholds_version"] for r in after} == {2}
    assert sum(r["verdict"] == "unknown" for r in after) == len(unknown) - report["changed"]
    # queueing again changes nothing: each image at most once
    code, again, err = _scan(env, str(ROOT / "data" / "demo"), str(ROOT / "tests" / "fixtures" / "reference"),
                             "--out", str(tmp_path / "ds"), "--queue")
    assert code == 0 and again["queued"] == 0 and again["scored"] == 0, err
    queue = ReviewQueue(None, data_dir=data)
    try:
        assert queue.counts()["total"] == len(unknown)
    finally:
        queue.close()


def test_embeddings_are_stored_and_reverdict_applies_an_adapter_to_them(tmp_path):
    """Issue 26 on Ray: --embeddings stores each still image's embedding; reverdict --adapter judges those rows with
    an adapter of the database, from the stored embeddings, as the scan's judge (checked against the service's
    own) does; a dataset without embeddings is refused."""
    import numpy as np

    from nsfw_core.base.labels import CLASS_NAMES
    from nsfw_core.inference.embeddings import AdapterHead
    from nsfw_core.scan.judge import judge
    from nsfw_core.state.adapters import Adapters
    from nsfw_core.state.db import open_pool

    data = tmp_path / "data"
    env = _env(data)
    catalogue_dir = ROOT / "data" / "demo"
    code, first, err = _scan(env, str(catalogue_dir), "--out", str(tmp_path / "plain"))
    assert code == 0, err
    code, first, err = _scan(env, str(catalogue_dir), "--out", str(tmp_path / "ds"), "--embeddings")
    assert code == 0, err
    rows = _rows(tmp_path / "ds")
    stills = [r for r in rows if r["error_code"] is None and r["frames"] is None]
    assert len(stills) == len(rows) >= 18
    assert all(len(r["embedding"]) == 1792 and min(r["embedding"]) >= 0 for r in stills)  # pooled ReLU6 features
    assert all(r["embedding"] is None for r in _rows(tmp_path / "plain"))  # only with --embeddings
    rng = np.random.default_rng(26)
    weights = np.concatenate([rng.normal(0, 0.05, 1792), np.zeros(len(CLASS_NAMES))])
    pool = open_pool(None, data)
    store = Adapters(pool)
    try:
        adapter = store.save(name="demo", model=first["model"], model_version=first["model_version"],
                             head=AdapterHead(1792, weights, 0.0), t_adult=0.6, t_safe=0.45, report={},
                             dataset_sha256="0" * 64, examples=40, publishable=True, by="test")
    finally:
        store.close()
        pool.close()
    command = [sys.executable, "-m", "nsfw_core.scan.cli", "reverdict"]
    refused = subprocess.run([*command, str(tmp_path / "plain"), "--adapter", "demo"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "keeps no embeddings" in refused.stderr
    done = subprocess.run([*command, str(tmp_path / "ds"), "--adapter", "demo@1", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["adapter"]["name"] == "demo" and report["by_adapter"] == len(stills)
    after = _rows(tmp_path / "ds")
    assert all(json.loads(r["thresholds"])["adapter"] == {"name": "demo", "version": 1} for r in after)
    assert all(r["thresholds_version"] is None for r in after)
    import pyarrow as pa

    from nsfw_core.scan.schema import SCHEMA

    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    expected = judge(table, Thresholds(), None, adapter=adapter)
    by_source = {r["source"]: (r["verdict"], r["adult_score"]) for r in after}
    for source, verdict, adult in zip(table["source"].to_pylist(), expected["verdict"].to_pylist(),
                                      expected["adult_score"].to_pylist(), strict=True):
        assert by_source[source][0] == verdict and abs(by_source[source][1] - adult) < 1e-9, source
