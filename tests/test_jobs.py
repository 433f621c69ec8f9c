"""Video jobs (issue 27, point 5): in the database, claimed once, resumed after a crash, signed webhooks.

The store on SQLite and PostgreSQL; the runner in-process; a real ``python app.py`` killed (SIGKILL) mid-job
and started again; two replicas on one PostgreSQL sharing jobs.  Videos are made by PyAV here.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest

from nsfw_core import ratelimit
from nsfw_core.http import contract
from nsfw_core.state import webhooks
from nsfw_core.state.db import open_pool
from nsfw_core.state.jobs import DONE, QUEUED, RUNNING, JobGone, JobStore, StoredFrame
from nsfw_core.state.migrations import OUTBOX_TABLE
from tests.helpers import videos
from tests.helpers.apiclient import make_settings, running
from tests.helpers.appserver import AppServer
from tests.helpers.paths import REFERENCE
from tests.helpers.servers import LocalServer, RouteHandler, image

pytestmark = pytest.mark.slow

SECRET = "job-webhook-secret-0123"
SCORES = {"drawings": 0.1, "hentai": 0.1, "neutral": 0.6, "porn": 0.1, "sexy": 0.1}
SAMPLING = {"fps": 1.0, "max_frames": 1800}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    pool = open_pool(url, tmp_path)
    clock = Clock()
    s = JobStore(pool, clock=clock, lease_s=30)
    s.clock_ = clock  # type: ignore[attr-defined]
    yield s
    pool.close()


def until(condition: Callable[[], Any], limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {limit} s")


# ---------------------------------------------------------------- the store


def test_replicas_never_claim_the_same_job(store):
    made = [store.create(f"https://example.com/{i}.mp4", client=None, client_ref=i, model="MobileNetV2Mid",
                         thresholds=None, sampling=SAMPLING, max_open=100).id for i in range(12)]
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def take(owner: str) -> None:
        while (job := store.claim(owner)) is not None:
            with lock:
                claimed.append((owner, job.id))

    threads = [threading.Thread(target=take, args=(f"instance-{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(j for _, j in claimed) == sorted(made)  # each job once
    assert all(store.get(j).attempts == 1 and store.get(j).status == RUNNING for j in made)


def test_clients_take_turns_instead_of_one_client_s_queue_going_first(store):
    """Before: jobs were claimed oldest first across clients, so a client that queued its 100 jobs (each up
    to NSFW_JOB_FETCH_TIMEOUT) held the worker for hours before anyone else's job started."""
    def make(client: str, n: int) -> list[str]:
        ids = []
        for i in range(n):
            store.clock_.now += 1
            ids.append(store.create(f"https://example.com/{client}/{i}.mp4", client=client, client_ref=None,
                                    model="MobileNetV2Mid", thresholds=None, sampling=SAMPLING, max_open=100).id)
        return ids

    busy = make("busy", 4)
    quiet = make("quiet", 2)
    late = make("late", 1)
    order = []
    while (job := store.claim("worker")) is not None:
        order.append(job.id)
        store.clock_.now += 1  # each job runs a while (within the 30 s lease: none is claimed twice)
    assert order == [busy[0], quiet[0], late[0], busy[1], quiet[1], busy[2], busy[3]]


def test_clients_take_turns_when_each_job_finishes_before_the_next_is_claimed(store):
    """One worker: each job ends (done or failed) before the next claim.  Before, finishing cleared the job's
    lease, so the client just served counted as never served and its next job went first again."""
    busy = []
    for i in range(3):
        store.clock_.now += 1
        busy.append(store.create(f"https://example.com/busy/{i}.mp4", client="busy", client_ref=None,
                                 model="MobileNetV2Mid", thresholds=None, sampling=SAMPLING, max_open=100).id)
    store.clock_.now += 1
    quiet = store.create("https://example.com/quiet/0.mp4", client="quiet", client_ref=None, model="MobileNetV2Mid",
                         thresholds=None, sampling=SAMPLING, max_open=100).id
    order = []
    while (job := store.claim("worker")) is not None:
        order.append(job.id)
        store.clock_.now += 5
        if len(order) % 2:
            store.finish(job, "worker", {"verdict": "safe"}, None)
        else:
            store.fail(job, "worker", {"code": "fetch_failed"}, None)
    assert order == [busy[0], quiet, busy[1], busy[2]]


def test_a_client_keeps_its_newest_finished_jobs_and_no_one_else_s_are_touched(store):
    """Jobs that fail at once (an unreachable URL) cost a row each; before, a client could pile them up for
    NSFW_JOB_RETENTION_DAYS.  Now each client keeps its newest ``max_kept`` finished jobs."""
    store.max_kept = 3

    def run(client: str | None, n: int, *, fail: bool) -> list[str]:
        ids = []
        for i in range(n):
            store.clock_.now += 1
            made = store.create(f"https://example.com/{client}/{i}.mp4", client=client, client_ref=None,
                                model="MobileNetV2Mid", thresholds=None, sampling=SAMPLING, max_open=100)
            job = store.claim("worker")
            assert job is not None and job.id == made.id
            if fail:
                store.fail(job, "worker", {"code": "upstream_error"}, None)
            else:
                store.save_frames(job, "worker", [StoredFrame(0, 0, 0, SCORES, None)])
                store.finish(job, "worker", {"verdict": "safe"}, None)
            ids.append(job.id)
        return ids

    quiet = run("quiet", 2, fail=False)
    anonymous = run(None, 2, fail=True)
    noisy = run("noisy", 8, fail=True)
    running = store.create("https://example.com/noisy/running.mp4", client="noisy", client_ref=None,
                           model="MobileNetV2Mid", thresholds=None, sampling=SAMPLING, max_open=100)
    assert store.claim("worker").id == running.id
    noisy += run("noisy", 1, fail=False)
    assert [j for j in noisy if store.get(j) is not None] == noisy[-3:]
    assert store.get(running.id).status == RUNNING  # only finished jobs are counted and deleted
    assert all(store.get(j) is not None for j in quiet + anonymous)
    assert [f.position for f in store.frames(noisy[-1])] == [0] and store.frames(quiet[0])
    with store.pool.transaction(write=False) as tx:  # the deleted jobs' frames went with them
        assert tx.one("SELECT COUNT(*) FROM video_job_frames")[0] == 3


def test_the_service_holds_at_most_max_queued_jobs_of_all_clients_together(store):
    """The attack pass: without API keys every address is a client, each with 100 open jobs, so the queue (and
    what every claim scans) had no bound; 122k queued jobs made a claim take 57 ms on SQLite."""
    from nsfw_core.base.errors import Overloaded

    store.max_queued = 3
    made = [store.create(f"https://example.com/{i}.mp4", client=f"address-{i}", client_ref=None,
                         model="MobileNetV2Mid", thresholds=None, sampling=SAMPLING, max_open=100) for i in range(3)]
    with pytest.raises(Overloaded) as refused:
        store.create("https://example.com/3.mp4", client="address-3", client_ref=None, model="MobileNetV2Mid",
                     thresholds=None, sampling=SAMPLING, max_open=100)
    assert refused.value.status == 503 and refused.value.details["limit"] == 3
    job = store.claim("worker")
    assert job is not None and job.id in {m.id for m in made}  # running still counts
    with pytest.raises(Overloaded):
        store.create("https://example.com/3.mp4", client="address-3", client_ref=None, model="MobileNetV2Mid",
                     thresholds=None, sampling=SAMPLING, max_open=100)
    store.fail(job, "worker", {"code": "upstream_error"}, None)  # one ended: room for one more
    assert store.create("https://example.com/3.mp4", client="address-3", client_ref=None, model="MobileNetV2Mid",
                        thresholds=None, sampling=SAMPLING, max_open=100).status == QUEUED


def test_a_lost_lease_stores_nothing_and_the_next_instance_goes_on_from_the_stored_frames(store):
    job = store.create("https://example.com/a.mp4", client="key_1", client_ref=None, model="MobileNetV2Mid",
                       thresholds={"adult": 0.5}, sampling=SAMPLING, max_open=100)
    first = store.claim("a")
    assert first is not None and first.id == job.id and store.claim("b") is None
    first = store.start(first, "a", sha256="ab" * 32, info={"duration_ms": 9000}, total=9)
    store.save_frames(first, "a", [StoredFrame(i, i * 30, i * 1000, SCORES, None) for i in range(4)])
    store.clock_.now += 31  # "a" died: its lease ran out
    second = store.claim("b")
    assert second is not None and second.id == job.id and second.attempts == 2 and second.frames_done == 4
    with pytest.raises(JobGone):
        store.save_frames(first, "a", [StoredFrame(4, 120, 4000, SCORES, None)])
    store.save_frames(second, "b", [StoredFrame(i, i * 30, i * 1000, SCORES, None) for i in range(4, 9)])
    assert [f.position for f in store.frames(job.id)] == list(range(9))
    with pytest.raises(JobGone):
        store.finish(first, "a", {"verdict": "safe"}, None)
    store.finish(second, "b", {"verdict": "safe"}, {"id": "evt_1", "type": "job.completed"})
    done = store.get(job.id)
    assert done is not None and done.status == DONE and done.result == {"verdict": "safe"}
    assert done.thresholds == {"adult": 0.5} and done.client == "key_1"
    with store.pool.transaction(write=False) as tx:  # the event, written with the result
        rows = tx.run(f"SELECT event_id, item_id FROM {OUTBOX_TABLE}")
    assert rows == [("evt_1", 0)]


def test_a_stopping_server_puts_its_jobs_back_and_other_bytes_start_again(store):
    job = store.create("https://example.com/a.mp4", client=None, client_ref=None, model="MobileNetV2Mid",
                       thresholds=None, sampling=SAMPLING, max_open=100)
    taken = store.claim("a")
    assert taken is not None
    taken = store.start(taken, "a", sha256="ab" * 32, info={}, total=5)
    store.save_frames(taken, "a", [StoredFrame(0, 0, 0, SCORES)])
    assert store.release("a") == 1 and store.get(job.id).status == QUEUED
    again = store.claim("b")
    assert again is not None and again.frames_done == 1
    again = store.start(again, "b", sha256="cd" * 32, info={}, total=5)  # the URL serves another video now
    assert again.frames_done == 0 and store.frames(job.id) == []


def test_a_client_has_a_bounded_number_of_open_jobs_and_a_video_that_crashes_instances_fails(store):
    from nsfw_core.state.jobs import MAX_ATTEMPTS, TooManyJobs

    for i in range(3):
        store.create(f"https://example.com/{i}.mp4", client="key_x", client_ref=None, model="MobileNetV2Mid",
                     thresholds=None, sampling=SAMPLING, max_open=3)
    with pytest.raises(TooManyJobs):
        store.create("https://example.com/4.mp4", client="key_x", client_ref=None, model="MobileNetV2Mid",
                     thresholds=None, sampling=SAMPLING, max_open=3)
    store.clock_.now += 1  # made after key_x's: key_x's oldest job is claimed first
    store.create("https://example.com/5.mp4", client="key_y", client_ref=None, model="MobileNetV2Mid",
                 thresholds=None, sampling=SAMPLING, max_open=3)  # another client's count
    first = store.claim("a")
    assert first is not None and first.client == "key_x"
    for n in range(4 * MAX_ATTEMPTS):  # every lease runs out (crashes): jobs are claimed again, clients in turn
        now = store.get(first.id)
        if now is None or now.status == "failed":
            break
        store.clock_.now += 31
        claimed = store.claim(f"b{n}")
        assert claimed is not None and (claimed.id != first.id or claimed.attempts <= MAX_ATTEMPTS)
    failed = store.get(first.id)  # the first job failed instead of being claimed a sixth time
    assert failed is not None and failed.status == "failed" and failed.error["code"] == "job_failed"


def test_a_client_id_retried_with_another_model_or_thresholds_is_a_conflict_not_the_first_job(store):
    """A retry (same client id and URL) answers the job the first POST made; the same id and URL with another
    model or thresholds is not a retry: before, it silently answered that first job, judged with what the
    first POST asked for."""
    from nsfw_core.state.jobs import JobConflict

    url = "https://example.com/a.mp4"
    first, made = store.create_once(url, client="key_x", client_ref="post-42", model="MobileNetV2Mid",
                                    thresholds={"safe": 0.5}, sampling=SAMPLING, max_open=3)
    again, made_again = store.create_once(url, client="key_x", client_ref="post-42", model="MobileNetV2Mid",
                                          thresholds={"safe": 0.5}, sampling=SAMPLING, max_open=3)
    assert made and not made_again and again.id == first.id
    for model, thresholds in (("InceptionV3", {"safe": 0.5}), ("MobileNetV2Mid", None),
                              ("MobileNetV2Mid", {"safe": 0.6})):
        with pytest.raises(JobConflict) as refused:
            store.create_once(url, client="key_x", client_ref="post-42", model=model, thresholds=thresholds,
                              sampling=SAMPLING, max_open=3)
        assert refused.value.status == 409 and refused.value.code == "job_conflict"
        assert refused.value.details["job_id"] == first.id
    with pytest.raises(JobConflict):  # the same request asking for the base model is another job too
        store.create_once(url, client="key_x", client_ref="post-42", model="MobileNetV2Mid",
                          thresholds={"safe": 0.5}, sampling=SAMPLING, max_open=3, adapter=False)
    other, made_other = store.create_once(url, client="key_y", client_ref="post-42", model="InceptionV3",
                                          thresholds=None, sampling=SAMPLING, max_open=3)
    assert made_other and other.id != first.id  # another client's ids are its own


def test_a_job_s_frames_keep_their_embeddings_in_float16_and_its_choice_of_the_base_model(store):
    """Issue 26 point 4 for jobs: each judged frame keeps its embedding (float16, 2 bytes a value: 3,584 bytes a
    frame of the default model's 1,792), read back as the same float16 numbers; a frame without one reads None;
    a job made with ``adapter=False`` says so.  A 10-minute video sampled at 1 frame a second keeps 600 of them:
    2.1 MB in all (NSFW_MAX_VIDEO_FRAMES' default 1,800: 6.5 MB)."""
    import numpy as np

    from nsfw_core.state.migrations import JOB_FRAMES_TABLE

    rng = np.random.default_rng(26)
    job = store.create("https://example.com/ten-minutes.mp4", client=None, client_ref=None, model="MobileNetV2Mid",
                       thresholds=None, sampling=SAMPLING, max_open=100)
    store.clock_.now += 1  # claimed after the first
    base = store.create("https://example.com/b.mp4", client=None, client_ref=None, model="MobileNetV2Mid",
                        thresholds=None, sampling=SAMPLING, max_open=100, adapter=False)
    assert job.adapter is True and base.adapter is False and store.get(base.id).adapter is False
    taken = store.claim("a")
    assert taken is not None and taken.id == job.id
    taken = store.start(taken, "a", sha256="ab" * 32, info={"duration_ms": 600_000}, total=600)
    vectors = (rng.random((600, 1792), dtype=np.float32) * 6.0).astype(np.float32)  # ReLU6 features
    for start in range(0, 600, 16):
        store.save_frames(taken, "a", [StoredFrame(i, i * 30, i * 1000, SCORES, None, vectors[i])
                                       for i in range(start, min(start + 16, 600))])
    frames = store.frames(job.id)
    assert len(frames) == 600 and all(f.embedding is not None and f.embedding.dtype == np.float16 for f in frames)
    np.testing.assert_array_equal(np.stack([f.embedding for f in frames]), vectors.astype(np.float16))
    with store.pool.transaction(write=False) as tx:
        sizes = tx.run(f"SELECT MIN(LENGTH(embedding)), MAX(LENGTH(embedding)), SUM(LENGTH(embedding)) "
                       f"FROM {JOB_FRAMES_TABLE} WHERE job_id = ?", (job.id,))
    assert tuple(int(v) for v in sizes[0]) == (3584, 3584, 600 * 3584)  # 2.15 MB for ten minutes
    other = store.claim("a")
    assert other is not None and other.id == base.id and other.adapter is False
    other = store.start(other, "a", sha256="cd" * 32, info={}, total=1)
    store.save_frames(other, "a", [StoredFrame(0, 0, 0, SCORES)])  # a model that gives no embedding
    assert [f.embedding for f in store.frames(base.id)] == [None]


def test_migration_12_is_applied_to_a_database_main_migrated_to_13_and_older_frames_read_without_embeddings(
        request, tmp_path):
    """Migration 12 (this change) reaches main after 13 (issue 30): a database at 1-11 and 13 gets 12 when a job
    store opens it.  A job stored before (its frames without embeddings) reads as asking for the adapter, its
    frames' embeddings None (the base model judges it: classify.Classifier.verdict); new frames keep theirs."""
    import numpy as np

    from nsfw_core.state.migrations import MIGRATIONS, VERSION_TABLE, migrate

    for kind in ("sqlite", "postgresql"):
        url = request.getfixturevalue("postgres_url") if kind == "postgresql" else None
        pool = open_pool(url, tmp_path / kind)
        try:
            with pool.connection() as conn:
                assert 12 not in migrate(pool.backend, conn, tuple(m for m in MIGRATIONS if m.version != 12))
            with pool.transaction() as tx:  # a job main's code stored: no adapter column, no embeddings
                tx.run("INSERT INTO video_jobs (id, url, client, client_ref, model, sampling, seed, status, "
                       "frames_done, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       ("job_" + "1" * 32, "https://example.com/old.mp4", None, "null", "MobileNetV2Mid",
                        json.dumps(SAMPLING), 5, QUEUED, 1, 1_800_000_000.0))
                tx.run("INSERT INTO video_job_frames (job_id, position, frame_index, time_ms, scores, phash) "
                       "VALUES (?, ?, ?, ?, ?, ?)", ("job_" + "1" * 32, 0, 0, 0, json.dumps(SCORES), None))
                versions = [int(r[0]) for r in tx.run(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")]
            assert 13 in versions and 12 not in versions, kind
            jobs = JobStore(pool, clock=Clock())
            old = jobs.get("job_" + "1" * 32)  # opening the store applied 12
            with pool.transaction(write=False) as tx:
                versions = [int(r[0]) for r in tx.run(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")]
            assert versions == sorted(m.version for m in MIGRATIONS), kind
            assert old is not None and old.adapter is True and [f.embedding for f in jobs.frames(old.id)] == [None]
            taken = jobs.claim("a")
            assert taken is not None and taken.id == old.id
            jobs.save_frames(taken, "a", [StoredFrame(1, 30, 1000, SCORES, None, np.ones(1792, np.float32))])
            assert [f.embedding is None for f in jobs.frames(old.id)] == [True, False], kind
        finally:
            pool.close()


# ---------------------------------------------------------------- the runner, in-process


class Receiver:
    def __init__(self, server: LocalServer) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.url = server.route("/hook", self.respond)

    def respond(self, handler: RouteHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        self.got.append(({k.lower(): v for k, v in handler.headers.items()}, body))
        handler.start(200, [("Content-Length", "0")])


def test_a_job_is_judged_over_the_whole_video_and_its_webhook_is_signed(tmp_path: Path, local_server):
    data = videos.make("webm", "vp9", seconds=75, fps=2, size=(96, 72), hold=5.0)
    url = local_server.route("/long.webm", image(data, "video/webm"))
    receiver = Receiver(local_server)
    settings = make_settings(tmp_path, allow_private_hosts=("*",), webhook_url=receiver.url, webhook_secret=SECRET,
                             api_keys=("client-key-0123456789",))
    auth = {"Authorization": "Bearer client-key-0123456789"}
    with running(settings) as client:
        sync = client.post("/predict", content=data, headers=auth)
        made = client.post("/v1/jobs", json={"video": {"url": url}, "id": 7, "thresholds": {"safe": 0.5}},
                           headers=auth)
        assert made.status_code == 202, made.text
        job = msgspec.json.decode(made.content, type=contract.Job)
        assert made.headers["location"] == f"/v1/jobs/{job.id}" and job.status == "queued" and job.client_id == 7
        retried = client.post("/v1/jobs", json={"video": {"url": url}, "id": 7, "thresholds": {"safe": 0.5}},
                              headers=auth)
        assert retried.status_code == 200 and retried.json()["id"] == job.id  # a retry: no second job
        conflict = client.post("/v1/jobs", json={"video": {"url": url}, "id": 7, "thresholds": {"safe": 0.6}},
                               headers=auth)  # not a retry: other thresholds
        assert conflict.status_code == 409 and conflict.json()["code"] == "job_conflict", conflict.text
        done = until(lambda: (j := client.get(f"/v1/jobs/{job.id}", headers=auth).json())["status"] in
                     ("done", "failed") and j, 120, "the job ends")
        assert client.get(f"/v1/jobs/{job.id}").status_code == 401
        assert client.get("/v1/jobs/job_" + "0" * 32, headers=auth).status_code == 404
        until(lambda: receiver.got, 30, "the webhook")
    assert sync.status_code == 413 and sync.json()["code"] == "video_too_long"  # 75 s: a job's
    answer = msgspec.json.decode(json.dumps(done).encode(), type=contract.Job)  # the contract's shape
    assert answer.status == "done" and answer.result is not msgspec.UNSET
    result = done["result"]
    assert done["progress"] == {"frames_done": 75, "frames_total": 75} and len(result["frames"]) == 75
    assert result["video"]["duration_ms"] == 75000 and result["segments"][-1]["end_ms"] == 75000
    assert result["thresholds"]["safe"] == 0.5 and result["thresholds"]["overridden"] is True
    times = [f["time_ms"] for f in result["frames"]]
    assert [t // 1000 for t in times] == list(range(75))  # one frame in each second, the whole length
    headers, body = receiver.got[0]
    assert webhooks.verify(SECRET, body, headers["nsfw-signature"])
    event = msgspec.json.decode(body, type=contract.JobEvent)
    assert event.type == "job.completed" and event.job.id == job.id and event.job.status == "done"
    assert event.client_key_id == ratelimit.key_id("client-key-0123456789") \
        and "client-key" not in body.decode()  # whose job it is, as the review events name it, never the key
    assert headers["nsfw-event-id"] == event.id
    assert "frames" not in json.loads(body)["job"]["result"] and json.loads(body)["job"]["result"]["segments"]


def test_a_job_that_cannot_fetch_its_video_fails_with_the_typed_error(tmp_path: Path, local_server):
    clip = videos.make("webm", "vp8", seconds=2, fps=5, size=(64, 48))
    big = local_server.route("/big.webm", image(clip, "video/webm"))
    settings = make_settings(tmp_path, allow_private_hosts=("*",), job_max_bytes=len(clip) - 1)
    with running(settings) as client:
        made = client.post("/v1/jobs", json={"video": {"url": local_server.url("/missing.mp4")}})
        over = client.post("/v1/jobs", json={"video": {"url": big}})
        job_id = made.json()["id"]
        done = until(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] == "failed" and j, 60,
                     "the job fails")
        too_big = until(lambda: (j := client.get(f"/v1/jobs/{over.json()['id']}").json())["status"] == "failed"
                        and j, 60, "the job over NSFW_JOB_MAX_BYTES fails")
        photo = local_server.route("/photo.mp4", image((REFERENCE / "house.jpg").read_bytes(), "video/mp4"))
        still = client.post("/v1/jobs", json={"video": {"url": photo}}).json()["id"]
        not_video = until(lambda: (j := client.get(f"/v1/jobs/{still}").json())["status"] == "failed" and j, 60,
                          "the job of a JPEG fails")
        bodies: tuple[dict[str, Any], ...] = (
            {"video": {"url": "ftp://example.com/a.mp4"}}, {"video": {}}, {"video": {"url": "http://x"}, "x": 1})
        bad = [client.post("/v1/jobs", json=body) for body in bodies]
        wrong = client.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"})
    assert done["error"]["code"] == "upstream_error" and "result" not in done
    assert too_big["error"]["code"] == "too_large"
    # a JPEG is not a video: 415's code, as a request's non-image bytes (undecodable_image before: the smoke pass)
    assert not_video["error"]["code"] == "not_an_image" and "not a video" in not_video["error"]["message"]
    assert [r.status_code for r in bad] == [400, 400, 400] and bad[0].json()["code"] == "invalid_url"
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_json"


def test_a_job_reads_model_and_adapter_from_the_query_as_every_v1_route_does(tmp_path: Path):
    """Before, POST /v1/jobs never read its query: ?model=<not a model> was accepted and ?adapter=false with a
    JSON body was ignored (the job was judged by the adapter), unlike /v1/classify and /v1/classify/batch."""
    url = "https://example.com/a.mp4"
    with running(make_settings(tmp_path, job_workers=0)) as client:
        bogus = client.post("/v1/jobs?model=NotAModel", json={"video": {"url": url}})
        both = client.post("/v1/jobs?model=MobileNetV2", json={"video": {"url": url}, "model": "MobileNetV2Mid"})
        contradiction = client.post("/v1/jobs?adapter=false", json={"video": {"url": url}, "adapter": True})
        not_a_flag = client.post("/v1/jobs?adapter=maybe", json={"video": {"url": url}})
        twice = [client.post(f"/v1/jobs?{q}", json={"video": {"url": url}})
                 for q in ("model=nope&model=MobileNetV2Mid", "adapter=true&adapter=false")]
        classify_twice = client.post("/v1/classify?model=nope&model=MobileNetV2Mid", json={"image": {"url": url}})
        base = client.post("/v1/jobs?adapter=false&model=MobileNetV2", json={"video": {"url": url}, "id": "a"})
        again = client.post("/v1/jobs?model=MobileNetV2", json={"video": {"url": url}, "id": "a", "adapter": False})
        other = client.post("/v1/jobs", json={"video": {"url": url}, "id": "a", "model": "MobileNetV2"})
    assert [r.status_code for r in (bogus, both, contradiction, not_a_flag)] == [400, 400, 400, 400]
    assert [r.json().get("field") for r in (bogus, both, contradiction)] == ["model", "model", "adapter"], \
        [r.json() for r in (bogus, both, contradiction)]
    # a choice given twice (the attack pass: only the last value was checked, so ?model=nope&model=... passed)
    assert [(r.status_code, r.json()["field"]) for r in (*twice, classify_twice)] == [
        (400, "model"), (400, "adapter"), (400, "model")]
    assert base.status_code == 202 and base.json()["model"] == "MobileNetV2"
    assert again.status_code == 200 and again.json()["id"] == base.json()["id"]  # the same job: a retry
    assert other.status_code == 409 and other.json()["code"] == "job_conflict"  # the adapter's choice differs


def test_a_job_is_its_client_s_and_its_video_goes_to_review_with_its_bytes_and_that_client_s_review_id(
        tmp_path: Path, local_server):
    """A job is read by its client only, as a review id is (issue 29): another key, or without keys another
    address, gets 404 even with the id.  A job whose video the model leaves unknown queues it as a request
    would: the item keeps the video that was judged (the reviewer sees those bytes) and one PDQ hash a sampled
    frame, the job's result carries the client's rv_ review id, which that key reads and no other; a job's
    automatic verdict is sampled for audit like a request's, invisibly (no review id, nothing of the item)."""
    import nsfw_core.context
    from nsfw_core.state.review.queue import TICKET_RE

    data = videos.make("mp4", "h264", seconds=6, fps=5, size=(96, 72), hold=2.0)
    url = local_server.route("/clip.mp4", image(data, "video/mp4"))
    other = videos.make("webm", "vp8", seconds=3, fps=5, size=(64, 48))  # another video (an open item each)
    other_url = local_server.route("/other.webm", image(other, "video/webm"))
    key_a, key_b = "client-key-a-0123456789", "client-key-b-0123456789"
    as_a, as_b = ({"Authorization": f"Bearer {k}"} for k in (key_a, key_b))
    settings = make_settings(tmp_path, allow_private_hosts=("*",), api_keys=(key_a, key_b),
                             adult_threshold=0.99999, safe_threshold=0.99999,  # unknown: queued for review
                             audit_rate=(("adult", 1.0), ("safe", 1.0)))
    with running(settings) as client:
        made = client.post("/v1/jobs", json={"video": {"url": url}}, headers=as_a).json()
        audited = client.post("/v1/jobs", json={"video": {"url": other_url}, "thresholds": {"safe": 0.0}},
                              headers=as_a).json()  # its own thresholds: automatic safe, sampled for audit
        done = until(lambda: (j := client.get(f"/v1/jobs/{made['id']}", headers=as_a).json())["status"] in
                     ("done", "failed") and j, 120, "the job ends")
        sampled = until(lambda: (j := client.get(f"/v1/jobs/{audited['id']}", headers=as_a).json())["status"] in
                        ("done", "failed") and j, 120, "the second job ends")
        other_key = client.get(f"/v1/jobs/{made['id']}", headers=as_b)
        review_id = done["result"]["review_id"]
        mine = client.get(f"/v1/reviews/{review_id}", headers=as_a)
        theirs = client.get(f"/v1/reviews/{review_id}", headers=as_b)
        queue = nsfw_core.context.current().review_queue
        found = queue.ticket(review_id)
        assert found is not None
        item = queue.get(found[0])
        hashes = queue.phash(found[0])
        items = queue.items()
        audit = [i for i in items if i.kind == "audit"]
        audit_bytes = [queue.image(i.id) for i in audit]
    assert done["status"] == "done" and done["result"]["verdict"] == "unknown", done
    assert other_key.status_code == 404 and other_key.json()["code"] == "not_found"
    assert TICKET_RE.match(review_id) and mine.status_code == 200 and mine.json()["status"] == "pending"
    assert theirs.status_code == 404
    assert item is not None and item.image == data and item.source == url  # the bytes judged, not the URL again
    assert hashes is not None and len(hashes.split(",")) >= 4  # one PDQ hash a sampled frame (6 s at 1 a second)
    assert sampled["status"] == "done" and sampled["result"]["verdict"] == "safe"
    assert "review_id" not in sampled["result"] and "review_error" not in sampled["result"]
    assert len(audit) == 1 and audit[0].sha256 == sampled["result"]["sha256"] and audit[0].client == ""
    assert audit_bytes == [other]  # an audit item keeps the video too


def test_a_job_s_frames_are_charged_to_its_key_s_budget_as_they_are_judged(tmp_path: Path, local_server):
    """Issue 29's cost units for jobs: POST /v1/jobs costs its entry unit, and each judged frame one more (the
    default model's cost) in the same bucket as the key's requests."""
    import nsfw_core.context
    from nsfw_core.base.rates import parse_rate

    data = videos.make("webm", "vp8", seconds=6, fps=5, size=(64, 48))
    url = local_server.route("/clip.webm", image(data, "video/webm"))
    key = "client-key-0123456789"
    auth = {"Authorization": f"Bearer {key}"}
    settings = make_settings(tmp_path, allow_private_hosts=("*",), api_keys=(key,),
                             rate_limit=parse_rate("1/h;burst=100"))
    with running(settings) as client:
        made = client.post("/v1/jobs", json={"video": {"url": url}}, headers=auth)
        store = nsfw_core.context.current().jobs
        done = until(lambda: (j := store.get(made.json()["id"])) is not None and j.status in ("done", "failed")
                     and j, 120, "the job ends")
        after = client.get(f"/v1/jobs/{done.id}", headers=auth)
    assert made.headers["ratelimit-remaining"] == "99"
    assert done.status == "done" and done.frames_total is not None and done.frames_total >= 5
    # and its decoding beyond the frames judged (ratelimit.video_decode_cost, the plan the job recorded)
    info = done.info or {}
    decoding = ratelimit.video_decode_cost(done.frames_total, int(info["decoded"]), 64 * 48,
                                           int(info["decoded_bytes"]), "vp8")
    assert 0 < decoding < 1  # 30 tiny frames fed for 6 judged: about 24 packets' worth
    assert after.headers["ratelimit-remaining"] == str(int(100 - 2 - done.frames_total - decoding))


def test_without_keys_a_job_is_read_from_its_own_address_only(tmp_path: Path, local_server):
    from starlette.testclient import TestClient

    clip = videos.make("webm", "vp8", seconds=2, fps=5, size=(64, 48))
    url = local_server.route("/clip.webm", image(clip, "video/webm"))
    with running(make_settings(tmp_path, allow_private_hosts=("*",))) as client:
        job_id = client.post("/v1/jobs", json={"video": {"url": url}}).json()["id"]
        elsewhere = TestClient(client.app, client=("203.0.113.7", 40000))  # another client address
        assert elsewhere.get(f"/v1/jobs/{job_id}").status_code == 404
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200


# ---------------------------------------------------------------- real servers


def _job(server: AppServer, job_id: str) -> dict[str, Any]:
    reply = server.request("GET", f"/v1/jobs/{job_id}")
    assert reply.status == 200, reply
    body: dict[str, Any] = reply.json()
    return body


def test_a_server_killed_mid_job_resumes_it_from_the_frames_it_judged(tmp_path: Path, local_server):
    data = videos.make("mp4", "h264", seconds=120, fps=4, size=(128, 96), hold=4.0)
    url = local_server.route("/long.mp4", image(data, "video/mp4"))
    env = {"NSFW_ALLOW_PRIVATE_HOSTS": "*", "NSFW_VIDEO_FPS": "2", "NSFW_JOB_LEASE_SECONDS": "3"}
    first = AppServer(tmp_path / "one", **env).wait()
    try:
        made = first.post_json("/v1/jobs", json.dumps({"video": {"url": url}}))
        assert made.status == 202, made
        job_id = made.json()["id"]
        progress = until(lambda: (d := _job(first, job_id)["progress"]["frames_done"]) >= 32 and d, 240,
                         "some frames judged")
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
    assert progress < 240
    second = AppServer(tmp_path / "one", **env).wait()  # the same data folder: the same SQLite database
    try:
        done = until(lambda: (j := _job(second, job_id))["status"] in ("done", "failed") and j, 300, "the job ends")
        log = second.log.read_text(errors="replace")
    finally:
        second.stop()
    assert done["status"] == "done" and done["progress"] == {"frames_done": 240, "frames_total": 240}
    resumed = [line for line in log.splitlines() if f"video job {job_id} resumed (attempt 2) after" in line]
    assert resumed, log[-3000:]
    kept = int(resumed[0].split(" after ")[1].split()[0])
    assert kept >= progress  # the frames judged before the kill were kept, not judged again
    assert [f["time_ms"] // 500 for f in done["result"]["frames"]] == list(range(240))


def test_two_replicas_on_postgresql_share_jobs_and_do_each_once(tmp_path: Path, local_server, postgres_url):
    clips = [videos.make("webm", "vp8", seconds=20 + 5 * i, fps=2, size=(64, 48), hold=2.0) for i in range(4)]
    urls = [local_server.route(f"/v{i}.webm", image(c, "video/webm")) for i, c in enumerate(clips)]
    env = {"NSFW_ALLOW_PRIVATE_HOSTS": "*", "NSFW_DATABASE_URL": postgres_url, "NSFW_VIDEO_FPS": "2"}
    servers = [AppServer(tmp_path / name, **env) for name in ("a", "b")]
    try:
        for s in servers:
            s.wait()
        ids = [servers[i % 2].post_json("/v1/jobs", json.dumps({"video": {"url": u}})).json()["id"]
               for i, u in enumerate(urls)]
        finished = until(lambda: all(_job(servers[0], j)["status"] == "done" for j in ids), 300, "all jobs done")
        assert finished
        jobs = [_job(servers[1], j) for j in ids]  # either replica reads every job
        logs = [s.log.read_text(errors="replace") for s in servers]
    finally:
        for s in servers:
            s.stop()
    for i, (job_id, job) in enumerate(zip(ids, jobs, strict=True)):
        assert job["progress"]["frames_done"] == job["progress"]["frames_total"] == 2 * (20 + 5 * i)
        runs = sum(log.count(f"video job {job_id} done by") for log in logs)
        assert runs == 1, (job_id, runs)  # judged by one replica, once
