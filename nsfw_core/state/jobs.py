"""Video jobs in the database: created by ``POST /v1/jobs``, run by one instance at a time, resumable.

A job is a row of ``video_jobs`` (migration 11): the video's URL, who asked (``client``: a hash of the API
key, else of the peer address, as review items keep it, so that only they read it and the review id it may
get; ``client_key``: the key's id its webhook event names), the model and thresholds, the sampling fixed
when it was created (frames a second, most frames, and the seed of the sample instants: the same frames
again after a restart), whether it asked for the base model (``adapter``, migration 12), its status (queued,
running, done, failed), its progress and, once finished, its result or error.

Claiming (:meth:`JobStore.claim`): an instance takes the oldest queued job, or a running one whose lease
ran out (its instance died), in one statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas never
take the same row; SQLite serialises writers), and holds it under a lease it renews
(:meth:`JobStore.renew`) while it works.  Each judged frame is stored (``video_job_frames``) with its
embedding (migration 12: float16, 3,584 bytes a frame of the default model; the adapter in force and the
example sets read them when the job is judged, as a request's video's) and the progress, under the lease
(:meth:`JobStore.save_frames`): an instance that lost its lease stores nothing more, and the instance that
took the job over goes on from the frames already stored.  Finishing writes
the result and, with webhooks on, the ``job.completed`` event into the webhook outbox in the same
transaction (:mod:`nsfw_core.state.webhooks` delivers it, signed like the review events).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import time
import uuid
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from nsfw_core.base.errors import NSFWError, Overloaded
from nsfw_core.inference.embeddings import embedding_bytes, embedding_from_bytes
from nsfw_core.state.db import Pool, Tx
from nsfw_core.state.migrations import JOB_FRAMES_TABLE, JOBS_TABLE, MIGRATIONS, OUTBOX_TABLE, migrate
from nsfw_core.state.review.items import iso

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
STATUSES = (QUEUED, RUNNING, DONE, FAILED)
LEASE_S = 30.0  # a running job whose instance has not renewed its lease for this long is taken over
MAX_KEPT = 1000  # a client's finished jobs kept (the newest), NSFW_JOB_MAX_KEPT's default
MAX_QUEUED = 10_000  # jobs queued or running on the service, NSFW_JOB_MAX_QUEUED's default
MAX_ATTEMPTS = 5  # claims of one job (each crash of an instance running it is one); then it fails
EVENT_TYPE = "job.completed"
JOB_ID_PREFIX = "job_"
_COLUMNS = ("id", "url", "client", "client_key", "client_ref", "model", "thresholds", "sampling", "seed", "status",
            "sha256", "info", "frames_total", "frames_done", "result", "error", "attempts", "lease_owner",
            "lease_until", "created_at", "started_at", "finished_at", "adapter")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {JOBS_TABLE}"


class JobGone(NSFWError):
    """The job was taken over by another instance (its lease ran out) or deleted: stop working on it."""

    status = 409
    code = "job_gone"


@dataclasses.dataclass(frozen=True)
class Job:
    """One row of ``video_jobs``."""

    id: str
    url: str
    client: str | None  # who asked: nsfw_core.http.guard.client_id (the API key's hash, else the address's)
    client_key: str | None  # the API key's id for the webhook event (ratelimit.key_id), None without keys
    client_ref: Any  # the client's own id for the job (echoed back)
    model: str
    thresholds: dict[str, float] | None
    sampling: dict[str, Any]  # {"fps", "max_frames"} as when the job was created
    seed: int
    status: str
    sha256: str | None
    info: dict[str, Any] | None
    frames_total: int | None
    frames_done: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    lease_owner: str | None
    lease_until: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    adapter: bool = True  # False: the job asked for the base model ("adapter": false), not the adapter in force

    @classmethod
    def of(cls, row: Sequence[Any]) -> Job:
        v = dict(zip(_COLUMNS, row, strict=True))
        for name in ("thresholds", "sampling", "info", "result", "error", "client_ref"):
            v[name] = json.loads(v[name]) if v[name] is not None else None
        for name in ("lease_until", "created_at", "started_at", "finished_at"):
            v[name] = float(v[name]) if v[name] is not None else None
        v["seed"], v["frames_done"], v["attempts"] = int(v["seed"]), int(v["frames_done"]), int(v["attempts"])
        v["frames_total"] = int(v["frames_total"]) if v["frames_total"] is not None else None
        v["adapter"] = bool(v["adapter"]) if v["adapter"] is not None else True
        return cls(**v)


@dataclasses.dataclass(frozen=True)
class StoredFrame:
    """A judged frame of a job: its place among the sampled frames, its index and time, scores and PDQ hash, and
    its embedding from the forward pass that scored it (float16 as stored, :func:`embedding_bytes`; None for a
    frame stored before migration 12, or by a model that gives none)."""

    position: int
    index: int
    time_ms: int
    scores: dict[str, float]
    phash: str | None = None  # hex, None when PDQ's quality was too low
    embedding: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)


def new_id() -> str:
    """An unguessable job id (128 random bits); only the client that made the job reads it (its key, or without
    keys its address, as review ids: :func:`nsfw_core.http.jobs.get`)."""
    return JOB_ID_PREFIX + secrets.token_hex(16)


class JobStore:
    """The jobs of the one database (see the module docstring)."""

    def __init__(self, pool: Pool, *, clock: Callable[[], float] = time.time, lease_s: float = LEASE_S,
                 max_kept: int = MAX_KEPT, max_queued: int = MAX_QUEUED) -> None:
        self.pool = pool
        self.backend = pool.backend
        self.clock = clock
        self.lease_s = lease_s
        self.max_kept = max_kept  # finished jobs kept per client (NSFW_JOB_MAX_KEPT)
        self.max_queued = max_queued  # jobs queued or running, all clients (NSFW_JOB_MAX_QUEUED)
        self._migrated = False

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[Tx]:
        if not self._migrated:
            self.backend.recover()
            with self.pool.connection() as conn:
                migrate(self.backend, conn, MIGRATIONS, self.clock)
            self._migrated = True
        with self.pool.transaction(write) as tx:
            yield tx

    # ------------------------------------------------------------ the API's side

    def create(self, url: str, *, client: str | None, client_ref: Any, model: str,
               thresholds: dict[str, float] | None, sampling: dict[str, Any], max_open: int,
               client_key: str | None = None, adapter: bool = True) -> Job:
        """A queued job; :class:`TooManyJobs` when ``client`` has ``max_open`` queued or running already."""
        return self.create_once(url, client=client, client_ref=client_ref, model=model, thresholds=thresholds,
                                sampling=sampling, max_open=max_open, client_key=client_key, adapter=adapter)[0]

    def create_once(self, url: str, *, client: str | None, client_ref: Any, model: str,
                    thresholds: dict[str, float] | None, sampling: dict[str, Any], max_open: int,
                    client_key: str | None = None, adapter: bool = True) -> tuple[Job, bool]:
        """(the job, True) for a new one; (the job, False) when ``client`` created one with the same
        ``client_ref`` (not None) and URL before: a retried POST makes no second job.  :class:`JobConflict` when
        that job was made with another model, thresholds or adapter choice (not a retry: the first job would
        answer what the first POST asked for).  ``adapter``: False judges the job with the base model even when
        an adapter is in force."""
        now = self.clock()
        job_id = new_id()
        who, whose = _client_is(client)
        with self._tx() as tx:
            same = None
            if client_ref is not None:
                same = tx.one(f"SELECT id, model, thresholds, adapter FROM {JOBS_TABLE} WHERE {who} "
                              "AND client_ref = ? AND url = ? ORDER BY created_at DESC LIMIT 1",
                              (*whose, json.dumps(client_ref), url))
            if same is not None:
                job_id, created = str(same[0]), False
                if (same[1] != model or (json.loads(same[2]) if same[2] is not None else None) != thresholds
                        or bool(same[3]) != adapter):
                    raise JobConflict(f"the id {json.dumps(client_ref)[:80]} was used with this URL for job {job_id}, "
                                      "with another model, thresholds or adapter choice; send another id for "
                                      "another job",
                                      job_id=job_id)
            else:
                row = tx.one(f"SELECT COUNT(*) FROM {JOBS_TABLE} WHERE {who} AND status IN (?, ?)",
                             (*whose, QUEUED, RUNNING))
                if row is not None and int(row[0]) >= max_open:
                    raise TooManyJobs(f"{row[0]} of your jobs are queued or running, the most at once is {max_open}; "
                                      "wait for one to finish", limit=max_open)
                row = tx.one(f"SELECT COUNT(*) FROM {JOBS_TABLE} WHERE status IN (?, ?)", (QUEUED, RUNNING))
                if row is not None and int(row[0]) >= self.max_queued:  # every client's together
                    raise Overloaded(f"the service has {row[0]} video jobs queued or running, the most at once is "
                                     f"{self.max_queued} (NSFW_JOB_MAX_QUEUED); retry later", limit=self.max_queued)
                tx.run(f"INSERT INTO {JOBS_TABLE} (id, url, client, client_key, client_ref, model, thresholds, "
                       "sampling, seed, status, created_at, adapter) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (job_id, url, client, client_key, json.dumps(client_ref), model,
                        None if thresholds is None else json.dumps(thresholds), json.dumps(sampling),
                        secrets.randbits(62), QUEUED, now, 1 if adapter else 0))
                created = True
        found = self.get(job_id)
        assert found is not None
        return found, created

    def get(self, job_id: str) -> Job | None:
        with self._tx(write=False) as tx:
            row = tx.one(f"{_SELECT} WHERE id = ?", (job_id,))
        return Job.of(row) if row is not None else None

    def frames(self, job_id: str) -> list[StoredFrame]:
        """The job's judged frames, in order, each with its embedding (float16; None where none was kept)."""
        with self._tx(write=False) as tx:
            rows = tx.run(f"SELECT position, frame_index, time_ms, scores, phash, embedding FROM {JOB_FRAMES_TABLE} "
                          "WHERE job_id = ? ORDER BY position", (job_id,))
        return [StoredFrame(int(p), int(i), int(t), json.loads(s), h, embedding_from_bytes(e))
                for p, i, t, s, h, e in rows]

    # ------------------------------------------------------------ the runner's side

    def claim(self, owner: str) -> Job | None:
        """Take a queued job, or a running one whose lease ran out, under a lease for ``owner``: the oldest job of
        the client served longest ago (whose latest lease, taken, renewed or ended by the job's end or release,
        ended earliest; never served first), so one client's hundred queued jobs take turns with everyone
        else's instead of going first, and a client whose job is running waits for the others (the index of
        migration 15 keeps that a lookup).

        A job claimed :data:`MAX_ATTEMPTS` times already fails instead (each claim after the first is a crash of
        the instance that ran it, or a video that crashed it), and the next one is claimed."""
        while True:
            job = self._claim_one(owner)
            if job is None or job.attempts <= MAX_ATTEMPTS:
                return job
            self.fail(job, owner, {"code": "job_failed", "message": f"the job stopped its instance {MAX_ATTEMPTS} "
                                   "times (a crash while decoding or judging); it is not tried again"}, event=None)

    def _claim_one(self, owner: str) -> Job | None:
        now = self.clock()
        skip = self.backend.skip_locked

        def due(t: str) -> str:
            return f"({t}status = '{QUEUED}' OR ({t}status = '{RUNNING}' AND {t}lease_until < ?))"

        # the client served longest ago first (the end of its latest lease: a claim or a renewal; 0: never),
        # then its oldest job
        last_start = f"COALESCE((SELECT MAX(s.lease_until) FROM {JOBS_TABLE} s WHERE s.client = j.client), 0)"
        with self._tx() as tx:
            row = tx.one(
                f"UPDATE {JOBS_TABLE} SET status = '{RUNNING}', lease_owner = ?, lease_until = ?, "
                f"attempts = attempts + 1, started_at = COALESCE(started_at, ?) WHERE id = "
                f"(SELECT j.id FROM {JOBS_TABLE} j WHERE {due('j.')} ORDER BY {last_start}, j.created_at, j.id "
                f"LIMIT 1{skip}) AND {due('')} RETURNING {', '.join(_COLUMNS)}",
                (owner, now + self.lease_s, now, now, now))
        return None if row is None else Job.of(row)

    def renew(self, job: Job, owner: str) -> None:
        """Extend the lease; :class:`JobGone` when another instance holds the job now."""
        with self._tx() as tx:
            self._renew(tx, job.id, owner)

    def _renew(self, tx: Tx, job_id: str, owner: str) -> None:
        row = tx.one(f"UPDATE {JOBS_TABLE} SET lease_until = ? WHERE id = ? AND lease_owner = ? AND status = ? "
                     "RETURNING id", (self.clock() + self.lease_s, job_id, owner, RUNNING))
        if row is None:
            raise JobGone(f"job {job_id} is no longer this instance's")

    def start(self, job: Job, owner: str, *, sha256: str, info: dict[str, Any], total: int) -> Job:
        """Record the video's sha256, what its container declares and how many frames it has to judge.

        A job resumed on other bytes (the URL now serves another video) starts again from no frame."""
        with self._tx() as tx:
            self._renew(tx, job.id, owner)
            if job.sha256 is not None and job.sha256 != sha256:
                tx.run(f"DELETE FROM {JOB_FRAMES_TABLE} WHERE job_id = ?", (job.id,))
                tx.run(f"UPDATE {JOBS_TABLE} SET frames_done = 0 WHERE id = ?", (job.id,))
            tx.run(f"UPDATE {JOBS_TABLE} SET sha256 = ?, info = ?, frames_total = ? WHERE id = ?",
                   (sha256, json.dumps(info), total, job.id))
            row = tx.one(f"{_SELECT} WHERE id = ?", (job.id,))
        assert row is not None
        return Job.of(row)

    def save_frames(self, job: Job, owner: str, frames: Sequence[StoredFrame]) -> None:
        """Store judged frames and the progress, under the lease (:class:`JobGone` when it was lost)."""
        if not frames:
            return
        with self._tx() as tx:
            self._renew(tx, job.id, owner)
            tx.cursor.executemany(self.backend.sql(
                f"INSERT INTO {JOB_FRAMES_TABLE} (job_id, position, frame_index, time_ms, scores, phash, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, position) DO NOTHING"),
                [(job.id, f.position, f.index, f.time_ms, json.dumps(f.scores), f.phash,
                  None if f.embedding is None else embedding_bytes(f.embedding)) for f in frames])
            tx.run(f"UPDATE {JOBS_TABLE} SET frames_done = (SELECT COUNT(*) FROM {JOB_FRAMES_TABLE} WHERE job_id = ?) "
                   "WHERE id = ?", (job.id, job.id))

    def finish(self, job: Job, owner: str, result: dict[str, Any], event: dict[str, Any] | None) -> None:
        """The job is done: its result, and the ``job.completed`` event into the outbox (when given)."""
        self._end(job, owner, DONE, "result", result, event)

    def fail(self, job: Job, owner: str, error: dict[str, Any], event: dict[str, Any] | None) -> None:
        """The job failed (a typed error: the URL could not be fetched, the video could not be decoded...)."""
        self._end(job, owner, FAILED, "error", error, event)

    def _end(self, job: Job, owner: str, status: str, column: str, body: dict[str, Any],
             event: dict[str, Any] | None) -> None:
        now = self.clock()
        with self._tx() as tx:
            # lease_until keeps when the client was last served (the claim's order), never NULL once claimed
            row = tx.one(f"UPDATE {JOBS_TABLE} SET status = ?, {column} = ?, finished_at = ?, lease_owner = NULL, "
                         f"lease_until = ? WHERE id = ? AND lease_owner = ? AND status = ? RETURNING id",
                         (status, json.dumps(body), now, now, job.id, owner, RUNNING))
            if row is None:
                raise JobGone(f"job {job.id} is no longer this instance's")
            self._keep_newest(tx, job.client)
            if event is not None:
                tx.run(f"INSERT INTO {OUTBOX_TABLE} (event_id, item_id, payload, created_at, attempts, "
                       "next_attempt_at) VALUES (?, 0, ?, ?, 0, ?)",
                       (event["id"], json.dumps(event, separators=(",", ":")), now, now))

    def _keep_newest(self, tx: Tx, client: str | None) -> None:
        """Delete ``client``'s finished jobs (and their frames) older than its newest :attr:`max_kept`: jobs
        that fail at once (an unreachable URL) are cheap to make, and would otherwise pile up for
        NSFW_JOB_RETENTION_DAYS.  The client's finished jobs are found through its indexes (at most
        :attr:`max_kept` + 1 of them, sorted)."""
        is_client, who = _client_is(client)
        finished = f"{is_client} AND status IN ('{DONE}', '{FAILED}')"
        edge = tx.one(f"SELECT finished_at, id FROM {JOBS_TABLE} WHERE {finished} "
                      "ORDER BY finished_at DESC, id DESC LIMIT 1 OFFSET ?", (*who, self.max_kept))
        if edge is None:
            return
        older = f"{finished} AND (finished_at < ? OR (finished_at = ? AND id <= ?))"
        args = (*who, edge[0], edge[0], edge[1])
        tx.run(f"DELETE FROM {JOB_FRAMES_TABLE} WHERE job_id IN (SELECT id FROM {JOBS_TABLE} WHERE {older})", args)
        tx.run(f"DELETE FROM {JOBS_TABLE} WHERE {older}", args)

    def release(self, owner: str) -> int:
        """Put the jobs ``owner`` runs back in the queue (a server stopping): another instance, or this one
        started again, goes on from their stored frames at once rather than after the lease; how many."""
        with self._tx() as tx:
            rows = tx.run(f"UPDATE {JOBS_TABLE} SET status = ?, lease_owner = NULL, lease_until = ? "
                          "WHERE lease_owner = ? AND status = ? RETURNING id", (QUEUED, self.clock(), owner, RUNNING))
        return len(rows)

    def purge(self, retention_days: int) -> int:
        """Delete finished jobs (and their frames) older than ``retention_days`` (0: keep them); how many."""
        if retention_days <= 0:
            return 0
        cutoff = self.clock() - retention_days * 86400
        with self._tx() as tx:
            tx.run(f"DELETE FROM {JOB_FRAMES_TABLE} WHERE job_id IN (SELECT id FROM {JOBS_TABLE} WHERE status IN "
                   "(?, ?) AND finished_at < ?)", (DONE, FAILED, cutoff))
            rows = tx.run(f"DELETE FROM {JOBS_TABLE} WHERE status IN (?, ?) AND finished_at < ? RETURNING id",
                          (DONE, FAILED, cutoff))
        return len(rows)


def _client_is(client: str | None) -> tuple[str, tuple[Any, ...]]:
    """The condition and arguments that select ``client``'s jobs through the (client, ...) indexes (never
    ``COALESCE(client, '')``, which no index serves: it scans every job)."""
    return ("client IS NULL", ()) if client is None else ("client = ?", (client,))


class TooManyJobs(NSFWError):
    status = 429
    code = "too_many_jobs"


class JobConflict(NSFWError):
    """A client id and URL sent again with another model or thresholds than the job they made."""

    status = 409
    code = "job_conflict"


def event_for(job: dict[str, Any], client: str | None = None) -> dict[str, Any]:
    """The ``job.completed`` event: the job as ``GET /v1/jobs/{id}`` shows it, without the per-frame scores
    (the timeline's segments are there; the frames are one GET away); ``client_key_id``: the API key that
    made it (:func:`nsfw_core.ratelimit.key_id`: ``key:`` and 16 hex digits of its SHA-256; None without keys), as
    the review events say."""
    body = dict(job)
    if isinstance(body.get("result"), dict):
        body["result"] = {k: v for k, v in body["result"].items() if k != "frames"}
    return {"id": f"evt_{uuid.uuid4().hex}", "type": EVENT_TYPE, "created_at": iso(time.time()),
            "client_key_id": client, "job": body}
