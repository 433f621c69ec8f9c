"""Video jobs, run in the background: a long video judged over its whole length, resumable, once.

:class:`JobRunner` is a task of the server's event loop (started by the context, like the webhooks'
delivery) with ``NSFW_JOB_WORKERS`` workers.  Each worker claims a job from the database
(:class:`~nsfw_core.state.jobs.JobStore`: one instance at a time, under a lease it renews every few seconds),
fetches its video through the SSRF-safe fetcher (``NSFW_JOB_MAX_BYTES``, ``NSFW_JOB_FETCH_TIMEOUT``), decodes it
in the isolated lane (:meth:`~nsfw_core.inference.pipeline.Decoder.video`: each sampled frame within
``NSFW_VIDEO_TIMEOUT``), judges its frames in chunks through the model's micro-batcher (each chunk's frames
admitted in flight like a request's; a busy server makes the job wait, never fails it) and stores them with the
progress.  Each chunk is charged to the budgets of the client that made the job (:mod:`nsfw_core.ratelimit`:
its frames times the model's cost, against NSFW_RATE_LIMIT and the key's share, the same buckets as its
requests'), before it is judged; a budget that refuses makes the job wait for it, never fails it.  A job
taken over after a crash (its lease ran out) skips the frames stored: the same sample instants (the job's
seed), the same frames, decoded from the keyframe before the first one left.

Each frame is stored with its embedding from the same forward pass (float16).  When every frame is judged the
video gets its verdict as a request's would (:meth:`nsfw_core.classify.Classifier.verdict`: a known video's
human verdict first, then an example set, then the adapter in force for the job's model, named in the result's
``adapter``, unless the job asked for the base model, else the model; the worst frame, the timeline's
segments), goes to review when its verdict says so, and the job's result is stored with its ``job.completed``
event (webhooks on) in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable

import numpy as np

from nsfw_core import ratelimit
from nsfw_core.base.errors import NSFWError, Overloaded
from nsfw_core.classify import Classification, Classifier, FrameScore, ModelInfo, Timings
from nsfw_core.images.phash import query_hash
from nsfw_core.inference.model import scores_dict
from nsfw_core.inference.pipeline import FrameInputs, VideoInfo
from nsfw_core.state.jobs import DONE, FAILED, Job, JobGone, JobStore, StoredFrame, event_for
from nsfw_core.state.review.items import iso

log = logging.getLogger(__name__)

CHUNK = 16  # frames judged and stored together
POLL_S = 1.0  # how often an idle worker looks for a job
BUSY_WAIT_S = 0.5  # how long a job waits when the server has no room in flight for its chunk
PURGE_EVERY_S = 3600.0


def _hashes(chunk: FrameInputs) -> list[bytes | None]:
    return [query_hash(x) for x in chunk.inputs]


def job_view(job: Job) -> dict[str, Any]:
    """A job as ``GET /v1/jobs/{id}`` shows it (the contract's ``Job``)."""
    out: dict[str, Any] = {"id": job.id, "status": job.status, "url": job.url, "model": job.model,
                           "client_id": job.client_ref, "created_at": iso(job.created_at),
                           "started_at": iso(job.started_at) or None, "finished_at": iso(job.finished_at) or None,
                           "progress": {"frames_done": job.frames_done, "frames_total": job.frames_total}}
    if job.status == DONE and job.result is not None:
        out["result"] = job.result
    if job.status == FAILED and job.error is not None:
        out["error"] = job.error
    return out


def owner_name() -> str:
    """This instance's name on the jobs it holds (host, process, and a random part: a restarted process is new)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    """``workers`` jobs at once from ``store``, judged by ``classifier``'s parts; see the module docstring.

    ``fetch`` brings a job's video (the job fetch policy); ``events``: write each job's ``job.completed`` webhook
    event (NSFW_WEBHOOK_URL is set); ``wake`` nudges the webhooks' delivery after a job ends; ``observe`` counts
    each job's verdict with the API's; ``meter`` gives a job the budgets of the client that made it.
    """

    def __init__(self, store: JobStore, classifier: Classifier, fetch: Callable[[str], bytes], *, workers: int,
                 events: bool = False, wake: Callable[[], None] | None = None, retention_days: int = 0,
                 ready: Callable[[], bool] = lambda: True,
                 observe: Callable[[Classification], None] = lambda result: None,
                 meter: Callable[[Job], ratelimit.Meter | None] = lambda job: None) -> None:
        self.store = store
        self.classifier = classifier
        self.fetch = fetch
        self.workers = workers
        self.events = events
        self.wake = wake
        self.retention_days = retention_days
        self.ready = ready
        self.observe = observe  # each finished job's verdict (metrics, the evaluation's traffic counts)
        self.meter = meter  # a job's client's budgets (its frames are charged as they are judged)
        self.owner = owner_name()
        self.poke = asyncio.Event()
        self.finished = 0
        self.failed = 0
        self._purged = 0.0

    async def run(self) -> None:
        """The background task: ``workers`` loops, each claiming and running one job at a time."""
        if self.workers <= 0:
            return
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _worker(self) -> None:
        while True:
            job: Job | None = None
            try:
                if not self.ready():  # the model loads: no job is claimed before it can be judged
                    await asyncio.sleep(POLL_S / 4)
                    continue
                job = await asyncio.to_thread(self.store.claim, self.owner)
                if job is not None:
                    await self.run_job(job)
                    continue
                await self._maybe_purge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database down: try again later (an unfinished job's lease runs out)
                log.warning("video job %s: %r", job.id if job else "claim", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.poke.wait(), POLL_S)
            self.poke.clear()

    def release(self) -> int:
        """Put this instance's running jobs back in the queue (the server stops); how many.  Never raises."""
        try:
            return self.store.release(self.owner)
        except Exception as exc:  # the database down: their leases run out instead
            log.warning("video jobs: could not release this instance's jobs (%r)", exc)
            return 0

    async def _maybe_purge(self) -> None:
        if self.retention_days and time.monotonic() - self._purged > PURGE_EVERY_S:
            self._purged = time.monotonic()
            await asyncio.to_thread(self.store.purge, self.retention_days)

    async def run_job(self, job: Job) -> None:
        """Run one claimed job to its end (done or failed), or until another instance holds it."""
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(job), name=f"nsfw-job-lease-{job.id}")
        work = asyncio.get_running_loop().create_task(self._judge(job), name=f"nsfw-job-{job.id}")
        try:
            done, _ = await asyncio.wait({heartbeat, work}, return_when=asyncio.FIRST_COMPLETED)
            if heartbeat in done and not work.done():
                log.warning("video job %s: taken over by another instance; this one stops", job.id)
        finally:
            for task in (heartbeat, work):
                task.cancel()
            outcomes = await asyncio.gather(heartbeat, work, return_exceptions=True)
        failure = outcomes[1]
        if isinstance(failure, Exception) and not isinstance(failure, JobGone):
            raise failure  # the database down, say: the worker logs it, the lease runs out, the job is resumed

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.store.lease_s / 3)
            await asyncio.to_thread(self.store.renew, job, self.owner)  # JobGone ends the job here

    async def _judge(self, job: Job) -> None:
        started = time.perf_counter()
        meter = self.meter(job)
        if meter is not None:  # this task's: its chunks are charged to it, its review item names the key's id
            ratelimit.bind(meter)
        try:
            classification = await self._classify(job, started)
        except JobGone:
            raise
        except NSFWError as exc:
            self.failed += 1
            log.info("video job %s failed: %s %s", job.id, exc.code, exc.message)
            await self._end(job, None, exc.to_dict())
            return
        self.finished += 1
        log.info("video job %s done by %s: %s, %d frames", job.id, self.owner, classification.verdict,
                 len(classification.frames or ()))
        await self._end(job, classification, None)

    async def _classify(self, job: Job, started: float) -> Classification:
        t0 = time.perf_counter()
        data = await asyncio.to_thread(self.fetch, job.url)
        fetch_s = time.perf_counter() - t0
        sha = hashlib.sha256(data).hexdigest()
        skip = job.frames_done if job.sha256 in (None, sha) else 0
        if job.attempts > 1:
            log.info("video job %s resumed (attempt %d) after %d judged frames%s", job.id, job.attempts, skip,
                     "" if job.sha256 in (None, sha) else "; the URL serves other bytes now: from the start")
        decoder = self.classifier.intake.decoder
        decode_s = inference_s = 0.0
        async with self.classifier.lane(job.model) as lane:
            t0 = time.perf_counter()
            with decoder.video(lane.model, data, synchronous=False, seed=job.seed, skip=skip,
                               fps=float(job.sampling["fps"]), max_frames=int(job.sampling["max_frames"])) as decode:
                info = await asyncio.to_thread(decode.start)
                job = await asyncio.to_thread(self.store.start, job, self.owner, sha256=sha,
                                              info={**info.to_dict(), "keyframes": info.keyframes,
                                                    "decoded": info.decoded, "decoded_bytes": info.decoded_bytes},
                                              total=skip + len(info.samples))
                position = job.frames_done
                # the decoding beyond what the sampled frames include, charged a share with each chunk
                decoding = ratelimit.video_decode_cost(len(info.samples), info.decoded, info.width * info.height,
                                                       info.decoded_bytes, info.codec)
                per_frame = decoding / max(1, len(info.samples))
                while True:
                    chunk = await asyncio.to_thread(decode.take, CHUNK)
                    decode_s += time.perf_counter() - t0
                    if not len(chunk):
                        break
                    t1 = time.perf_counter()
                    rows = await self._score(lane, chunk, per_frame * len(chunk))
                    hashes = await asyncio.to_thread(_hashes, chunk)
                    inference_s += time.perf_counter() - t1
                    stored = [StoredFrame(position + i, ref.index, ref.time_ms, scores_dict(row.probs),
                                          None if h is None else h.hex(), row.embedding)
                              for i, (ref, row, h) in enumerate(zip(chunk.refs, rows, hashes, strict=True))]
                    await asyncio.to_thread(self.store.save_frames, job, self.owner, stored)
                    position += len(stored)
                    t0 = time.perf_counter()
            frames = await asyncio.to_thread(self.store.frames, job.id)
            model = ModelInfo(lane.model.name, lane.model.version)
        return await self._verdict(job, data, sha, frames, model, info,
                                   Timings.of(fetch_s, decode_s, inference_s, time.perf_counter() - started))

    async def _score(self, lane: Any, chunk: FrameInputs, decoding: float = 0.0) -> list[Any]:
        """The chunk's forward passes (each frame's probabilities and embedding): its frames times the model's cost,
        and ``decoding`` (its share of the video's decoding beyond them), charged to the job's client first, then
        its forward passes admitted in flight (waiting while a budget refuses or the server is full: a job waits,
        it is never refused)."""
        admission = self.classifier.intake.admission
        meter = ratelimit.current()
        units = ratelimit.image_cost(len(chunk), self.classifier.models.cost(lane.model.name), 0)
        charged = meter is None
        while True:
            try:
                if not charged:
                    assert meter is not None
                    await asyncio.to_thread(meter.charge, units + decoding)  # blocking when the buckets are shared
                    charged = True
                with admission.admit(units, meter.client if meter is not None else None):
                    return list(await asyncio.gather(*(lane.batcher.infer(x) for x in chunk.inputs)))
            except ratelimit.RateLimited as exc:
                wait = exc.details.get("retry_after")
                await asyncio.sleep(max(BUSY_WAIT_S, float(wait) if isinstance(wait, (int, float)) else 0.0))
            except Overloaded:
                await asyncio.sleep(BUSY_WAIT_S)

    async def _verdict(self, job: Job, data: bytes, sha: str, stored: list[StoredFrame], model: ModelInfo,
                       info: VideoInfo, timings: Timings) -> Classification:
        from nsfw_core.base.errors import UndecodableImage
        from nsfw_core.images.phash import split_hex

        if not stored:
            raise UndecodableImage("no frame of the video could be decoded")
        frames = [FrameScore(f.index, f.time_ms, f.scores, f.embedding) for f in stored]
        # each frame's embedding, kept with it (float16): the adapter in force judges the job as it judges a
        # request's video (unless the job asked for the base model), an example set may decide it; a frame stored
        # without one (before migration 12) leaves the whole job to the base model
        embeddings = np.stack([f.embedding for f in stored]) if all(  # type: ignore[misc]
            f.embedding is not None for f in stored) else None
        override = None
        if job.thresholds:  # the job's own values over the ones it is judged with (the adapter's, as a request's)
            active = self.classifier.thresholds.current().thresholds
            adapter = self.classifier.adapter_for(model, job.adapter) if embeddings is not None else None
            base = adapter.thresholds(active) if adapter is not None else active
            override = dataclasses.replace(base, adult=float(job.thresholds.get("adult", base.adult)),
                                           safe=float(job.thresholds.get("safe", base.safe)))
        hashes = [split_hex(f.phash)[0] if f.phash else None for f in stored]
        client = job.client or ""
        # the decisions this client may use (everyone's, and those made for its own thresholds), as a request's
        match = await asyncio.to_thread(self.classifier.known_video, sha, hashes, client)
        duration = VideoInfo(info.container, info.codec, info.width, info.height,
                             int((job.info or {}).get("duration_ms", info.duration_ms)), info.frames, info.keyframes,
                             info.decoded)
        result, private = self.classifier.verdict(frames[0].scores, override, model, timings, sha, frames=frames,
                                                  match=match, video=duration, embeddings=embeddings,
                                                  use_adapter=job.adapter)
        self.observe(result)  # counted with the API's verdicts (the audit sample below estimates their precision)
        # a review or audit item keeps the video that was judged (``data``: the reviewer sees those bytes, never
        # the URL fetched again), with the client's review id, its quota and audience, as a request's
        return await self.classifier.review.submit(result, job.url, data, None, client=client, private=private,
                                                   frame_hashes=hashes)

    async def _end(self, job: Job, result: Classification | None, error: dict[str, Any] | None) -> None:
        body = None
        if result is not None:
            body = result.to_dict()
            body["thresholds"]["overridden"] = bool(job.thresholds)
        ended = dataclasses.replace(job, status=DONE if result is not None else FAILED, result=body, error=error,
                                    finished_at=time.time())
        event = event_for(job_view(ended), job.client_key) if self.events else None
        if result is not None:
            assert body is not None
            await asyncio.to_thread(self.store.finish, job, self.owner, body, event)
        else:
            await asyncio.to_thread(self.store.fail, job, self.owner, error or {}, event)
        if event is not None and self.wake is not None:
            self.wake()

