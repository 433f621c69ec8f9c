"""What survives restarts of the servers and of the database itself (issue 15), with real processes.

- both ``python app.py`` replicas on one PostgreSQL stopped (SIGTERM) and started again: the thresholds
  history, every review item (pending, claimed, skipped, decided, with its decision, who decided it and
  the stored upload) are unchanged, the same version is in force from the first answer, an image still
  pending is not queued twice, and a new image gets the next id;
- the same with the SQLite default (one process, the data folder kept);
- the database stopped (``pg_ctl stop -m fast``) and started again while requests flow (a PostgreSQL
  of this test's own, so the shared test server is left alone): no 5xx; while it is down an image whose
  verdict is "unknown" gets 200 with ``review_error`` and no ``review_id``, and ``/health`` warns; the
  thresholds in force never change; once it is back queueing works again within seconds (the same ids:
  the queue itself survived) and the warning clears.

Every image is judged under a saved version that no reference image reaches (adult 0.999, safe 1.0),
so every verdict is "unknown" and goes to review (``NSFW_REVIEW_VERDICTS=unknown``); uploads are
stored with their items (``NSFW_REVIEW_STORE_UPLOADS=true``).  Reviewers act through
:class:`ReviewQueue` on the same database, as the review page's server does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest
from PIL import Image

from nsfw_core.base.verdict import Thresholds
from nsfw_core.classify import REVIEW_UNAVAILABLE
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.thresholds import ThresholdHistory
from tests.helpers.appserver import AppServer
from tests.helpers.paths import REFERENCE_IMAGES, ROOT, START_POSTGRES

pytestmark = pytest.mark.slow  # every test here starts servers

MODEL = "MobileNetV2Mid"
T1 = Thresholds(0.61, 0.81)
ALL_UNKNOWN = Thresholds(0.999, 1.0)  # no reference image reaches either: every verdict is "unknown"
REVIEW_ENV = {"NSFW_REVIEW_VERDICTS": "unknown", "NSFW_REVIEW_STORE_UPLOADS": "true"}


def _variants() -> list[bytes]:
    """Different pictures (not re-encodings of one another: a copy of a decided image would get the
    reviewer's verdict, nsfw_core.state.known), each a JPEG of its own: the reference and the demo photos."""
    out = []
    for path in [*REFERENCE_IMAGES, *sorted((ROOT / "data" / "demo" / "photos").glob("skimage_*.jpg"))]:
        with Image.open(path) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    assert len({hashlib.sha256(b).hexdigest() for b in out}) == len(out) >= 8
    return out


IMAGES = _variants()


def in_force(server: AppServer) -> tuple[int | None, float, float]:
    t = server.health().json()["thresholds"]
    return t["version"], t["adult"], t["safe"]


def predict(server: AppServer, image: bytes) -> dict[str, Any]:
    reply = server.request("POST", "/predict?detail=1", body=image, headers={"Content-Type": "image/jpeg"})
    assert reply.status == 200, reply
    body: dict[str, Any] = reply.json()
    return body


def queued(server: AppServer, image: bytes, version: int) -> str:
    """POST ``image``; it must be judged "unknown" under ``version`` and queued: its review id (a string,
    issue 29; :meth:`ReviewQueue.ticket` gives the item)."""
    body = predict(server, image)
    assert body["verdict"] == "unknown" and body["thresholds"]["version"] == version, body
    assert body["sha256"] == hashlib.sha256(image).hexdigest()
    assert is_review_id(body["review_id"]) and "review_error" not in body, body
    return str(body["review_id"])


def is_review_id(value: object) -> bool:
    return isinstance(value, str) and value.startswith("rv_") and len(value) == 25


def item_of(q: ReviewQueue, review_id: str) -> int:
    found = q.ticket(review_id)
    assert found is not None, review_id
    return found[0]


def metric(server: AppServer, name: str) -> float:
    reply = server.request("GET", "/metrics")
    assert reply.status == 200, reply
    found = re.search(rf"^{name} (\S+)$", reply.body.decode(), re.M)
    assert found, reply.body.decode()[:2000]
    return float(found.group(1))


def until(condition: Callable[[], Any], limit: float, what: str) -> float:
    """Seconds until ``condition()`` is true (fails past ``limit``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, f"not within {limit} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


# ---------------------------------------------------------------- both replicas (or the one) restarted


def _everything_survives_a_restart(url: str | None, data_dir: Path, start: Callable[[], list[AppServer]]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    writer = ThresholdHistory(url, data_dir=data_dir, defaults=Thresholds())
    servers: list[AppServer] = []

    def started() -> list[AppServer]:
        new = start()
        servers.extend(new)
        return new

    try:
        writer.save(T1, model=MODEL, by="alice", tuned_on={"images": 3})
        writer.save(ALL_UNKNOWN, model=MODEL, by="bob", tuned_on={"images": 5}, note="everything to review")
        replicas = started()
        for s in replicas:
            assert in_force(s) == (2, 0.999, 1.0)

        # Seven images queued through the replicas in turn (the eighth is kept for after the restart).
        tickets = [queued(replicas[n % len(replicas)], image, 2) for n, image in enumerate(IMAGES[:7])]
        with ReviewQueue(url, data_dir=data_dir) as q:
            ids = [item_of(q, t) for t in tickets]
        assert ids == list(range(1, 8)), ids

        with ReviewQueue(url, data_dir=data_dir) as q:
            # A reviewer's work: one claimed and decided, one decided straight from pending, one skipped,
            # one claimed and still held; the rest pending.
            claimed = q.claim("rita", 3600)
            assert claimed is not None and claimed.id == ids[0]
            q.decide(claimed.id, "rita", "safe")
            q.decide(ids[1], "sam", "porn")
            skipped = q.claim("sam", 3600)
            assert skipped is not None and skipped.id == ids[2]
            q.skip(skipped.id, "sam")
            held = q.claim("tina", 3600)
            assert held is not None and held.id == ids[3]
            counts, items = q.counts(), q.items()
            uploads = {i: q.image(i) for i in ids}
        assert counts == {"pending": 4, "claimed": 1, "decided": 2, "total": 7}, counts
        by_id = {it.id: it for it in items}
        assert [(by_id[i].status, by_id[i].decision, by_id[i].decided_by, by_id[i].claimed_by, by_id[i].skips)
                for i in ids[:4]] == [("decided", "safe", "rita", None, 0), ("decided", "porn", "sam", None, 0),
                                      ("pending", None, None, None, 1), ("claimed", None, None, "tina", 0)]
        assert all(it.source == "upload" and it.has_image and it.verdict == "unknown" for it in items)
        assert uploads == dict(zip(ids, IMAGES[:7], strict=True))
        history = writer.history()
        assert [(v.version, v.thresholds, v.saved_by) for v in history] == [(2, ALL_UNKNOWN, "bob"), (1, T1, "alice")]
        writer.close()

        # Every replica stopped, then started again.
        for s in replicas:
            assert s.stop() == -15  # uvicorn re-raises the SIGTERM it caught (tests/test_server.py)
        replicas = started()
        for s in replicas:  # the same version from the first answer, and the queue as each replica sees it
            assert in_force(s) == (2, 0.999, 1.0)
            assert metric(s, "nsfw_review_queue_pending") == 4

        writer = ThresholdHistory(url, data_dir=data_dir, defaults=Thresholds())
        assert writer.history() == history  # every version, with who saved it, when, and what on
        with ReviewQueue(url, data_dir=data_dir) as q:
            assert q.counts() == counts
            assert q.items() == items  # status, decision, decided_by, claims and leases, skips, times
            assert {i: q.image(i) for i in ids} == uploads

            # A new image gets the next id; an image still pending is not queued twice.
            assert item_of(q, queued(replicas[-1], IMAGES[7], 2)) == ids[-1] + 1
            assert item_of(q, queued(replicas[0], IMAGES[4], 2)) == ids[4]
            # The claim held before the restart is still tina's: she decides it, nobody else can.
            claimed = q.claim("rita", 3600)
            assert claimed is not None and claimed.id == ids[4]  # the oldest pending, not tina's item
            assert q.decide(ids[3], "tina", "neutral").decided_by == "tina"
            assert q.counts() == {"pending": 4, "claimed": 1, "decided": 3, "total": 8}
        for s in servers:
            assert "Traceback" not in s.log.read_text(errors="replace"), s.log
    finally:
        for s in servers:
            s.stop()
        writer.close()


def test_both_replicas_restarted_keep_history_queue_and_decisions(postgres_url, tmp_path: Path) -> None:
    def start() -> list[AppServer]:
        a = AppServer(tmp_path / "a", NSFW_DATABASE_URL=postgres_url, **REVIEW_ENV)
        b = AppServer(tmp_path / "b", NSFW_DATABASE_URL=postgres_url, **REVIEW_ENV)
        return [a.wait(), b.wait()]

    _everything_survives_a_restart(postgres_url, tmp_path / "reviewer", start)


def test_one_server_on_the_sqlite_default_restarted_keeps_history_queue_and_decisions(tmp_path: Path) -> None:
    # NSFW_DATABASE_URL unset (AppServer drops every NSFW_* variable): <data dir>/review.sqlite, kept.
    def start() -> list[AppServer]:
        return [AppServer(tmp_path / "s", **REVIEW_ENV).wait()]

    _everything_survives_a_restart(None, tmp_path / "s" / "data", start)


# ---------------------------------------------------------------- the database stopped and started again


class Cluster:
    """A PostgreSQL of this test's own (scripts/start-postgres.sh), to stop and start for real."""

    def __init__(self, folder: Path, url: str) -> None:
        self.folder, self.url = folder, url
        self.port = urlsplit(url).port
        self.bindir = (folder / "bindir").read_text().strip()

    def _pg_ctl(self, *args: str) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        proc = subprocess.run([*as_user, f"{self.bindir}/pg_ctl", "-D", str(self.folder / "data"), *args],
                              capture_output=True, text=True, timeout=90)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "-t", "60", "stop")

    def start(self) -> None:
        # The options scripts/start-postgres.sh started it with (pg_ctl start does not keep them).
        self._pg_ctl("-l", str(self.folder / "server.log"), "-w", "-t", "60", "start", "-o",
                     f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off "
                     "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")


@pytest.fixture
def own_postgres():
    if os.environ.get("NSFW_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("NSFW_TEST_SKIP_POSTGRES=1: PostgreSQL cases skipped")
    folder = Path(tempfile.mkdtemp(prefix="nsfw-pg-restart."))  # under /tmp: the postgres user must reach it
    try:
        proc = subprocess.run([str(START_POSTGRES), "start", str(folder)], capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0 or not proc.stdout.strip():
            pytest.fail(f"PostgreSQL could not be started (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n"
                        "Set NSFW_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL cases.", pytrace=False)
        yield Cluster(folder, proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([str(START_POSTGRES), "stop", str(folder)], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgres
def test_the_database_stopped_and_started_while_requests_flow(own_postgres: Cluster, tmp_path: Path) -> None:
    writer = ThresholdHistory(own_postgres.url, data_dir=tmp_path / "writer", defaults=Thresholds())
    writer.save(ALL_UNKNOWN, model=MODEL, by="alice")
    writer.close()
    expected = {**ALL_UNKNOWN.to_dict(), "version": 1}
    server = AppServer(tmp_path / "s", NSFW_DATABASE_URL=own_postgres.url, **REVIEW_ENV)
    # (started, ended, status, body or error) of every /predict answer, in order
    answers: list[tuple[float, float, int, Any]] = []
    stop = threading.Event()

    def flow() -> None:
        n = 0
        while not stop.is_set():
            image = IMAGES[n % 3]
            n += 1
            t0 = time.monotonic()
            try:
                reply = server.request("POST", "/predict?detail=1", body=image,
                                       headers={"Content-Type": "image/jpeg"})
            except Exception as exc:  # recorded: fails the test below
                answers.append((t0, time.monotonic(), 0, repr(exc)))
                continue
            body = reply.json() if reply.status == 200 else reply.body[:300]
            answers.append((t0, time.monotonic(), reply.status, body))

    def queued_since(t: float) -> list[dict[str, Any]]:
        return [b for t0, _, s, b in list(answers) if t0 >= t and s == 200 and is_review_id(b["review_id"])]

    flowing = threading.Thread(target=flow, daemon=True)
    try:
        server.wait()
        assert in_force(server) == (1, 0.999, 1.0)
        assert server.health().json()["warnings"] == []
        flowing.start()
        until(lambda: len(queued_since(0)) >= 3, 20, "three images queued before the database stops")

        stopping = time.monotonic()
        own_postgres.stop()
        down = time.monotonic()
        until(lambda: "the thresholds database (PostgreSQL) is unreachable; keeping version 1 in force (details "
                      "in the server log)" in server.health().json()["warnings"], 5, "a /health warning")
        health = server.health().json()
        assert (health["thresholds"]["version"], health["thresholds"]["adult"], health["thresholds"]["safe"]) == \
            (1, 0.999, 1.0), health
        until(lambda: sum(1 for t0, _, _, _ in list(answers) if t0 >= down) >= 5 and time.monotonic() - down > 1.5,
              20, "answers while the database is down")

        starting = time.monotonic()
        own_postgres.start()
        up = time.monotonic()
        recovered = until(lambda: queued_since(up), 10, "an image queued after the database came back")
        cleared = until(lambda: server.health().json()["warnings"] == [], 5, "the /health warning cleared")
        print(f"queueing again {recovered * 1000:.0f} ms and /health clear {(recovered + cleared) * 1000:.0f} ms "
              f"after the database was back")
        back = time.monotonic()
        until(lambda: sum(1 for t0, _, _, _ in list(answers) if t0 >= back) >= 5, 20, "answers after recovery")
        stop.set()
        flowing.join(30)
        assert not flowing.is_alive()

        assert {s for _, _, s, _ in answers} == {200}, [a for a in answers if a[2] != 200][:5]
        bodies = [b for _, _, _, b in answers]
        assert all(b["verdict"] == "unknown" and b["thresholds"] == expected for b in bodies)  # never changed
        before = [b for t0, t1, _, b in answers if t1 < stopping]
        during = [b for t0, t1, _, b in answers if t0 >= down and t1 < starting]
        after = [b for t0, _, _, b in answers if t0 >= back]
        assert before and all(is_review_id(b["review_id"]) and "review_error" not in b for b in before)
        assert len(during) >= 5
        for b in during:  # answered, judged, not queued
            assert b["review_id"] is None and b["review_error"] == REVIEW_UNAVAILABLE, b
        assert after and all(is_review_id(b["review_id"]) and "review_error" not in b for b in after), after
        # The queue itself survived the restart: each image still has its one pending item.
        ids = {b["sha256"]: b["review_id"] for b in before}
        assert len(ids) == 3 and all(ids[b["sha256"]] == b["review_id"] for b in after)
        with ReviewQueue(own_postgres.url, data_dir=tmp_path / "reviewer") as q:
            assert q.counts() == {"pending": 3, "claimed": 0, "decided": 0, "total": 3}
        outage = [(round(t0 - down, 2), b.get("review_error")) for t0, _, _, b in answers if down <= t0 < up]
        print(f"{len(answers)} /predict answers, all 200; {len(outage)} while the database was down or starting")
        assert "Traceback" not in server.log.read_text(errors="replace")
    finally:
        stop.set()
        with contextlib.suppress(RuntimeError):
            flowing.join(30)
        server.stop()
