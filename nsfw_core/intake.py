"""Images in, for the API: fetch and decode in worker threads, expensive images in the isolated lane.

:class:`Intake` owns what bringing an image in costs the process: the worker threads, the
threads that wait for the isolated decode lane, and its own counters (images being prepared,
expensive images pending), which the micro-batcher and ``/metrics`` read.  It is handed
exactly what it needs: the decoder (limits, pixel budget, isolated lane), a fetch function
(the SSRF-safe fetcher with the process's keep-alive pool), the admission counters and its
two thread pools.  The forward pass and the verdict are :mod:`nsfw_core.classify`'s.

* A cheap still image is read, checked, decoded and preprocessed in one worker step.
* An expensive image (its declared cost says so) is checked in a worker, then waits for
  the isolated lane on a thread of its own, leaving the workers to cheap images; at most
  :data:`ISOLATED_QUEUE` per decode process wait there, more get 503 ``overloaded``.
* What an image costs (:func:`nsfw_core.ratelimit.image_cost`: its frames times the model's relative
  cost, plus its decoding work) is known once its headers are read: it is charged then to the
  request's client (:func:`nsfw_core.ratelimit.current`: its rate limit and its share of the machine,
  429 when a budget refuses), and an image whose forward passes cost more than the one unit its
  request was admitted with (an animation, an expensive model) takes the rest of its place in flight
  before a pixel is decoded, so a busy server refuses it before decoding, not after.  (Decoding work
  is not counted in flight: the isolated lane and the pixel budget bound it.)
* A video (:func:`~nsfw_core.images.sniff.sniff_video`) goes to the isolated lane whole: its container is
  read there first (413 for a video longer than NSFW_MAX_VIDEO_SECONDS, before any frame is decoded), then
  it is charged its sampled frames times the model's cost (:func:`nsfw_core.ratelimit.image_cost`; 429
  when a budget refuses) and those frames take their places in flight, then they are decoded.  (Its
  decoding work is not charged: the isolated lane, the per-frame deadline and NSFW_MAX_VIDEO_SECONDS
  bound it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from concurrent.futures import Executor
from typing import Any, Callable, Generic, NamedTuple, TypeVar

import numpy as np

from nsfw_core import ratelimit
from nsfw_core.admission import Admission
from nsfw_core.base import requestid
from nsfw_core.images.decode import Plan
from nsfw_core.images.sniff import sniff_video
from nsfw_core.inference.model import Model
from nsfw_core.inference.pipeline import Decoder, FrameInputs

ISOLATED_QUEUE = 4  # expensive images admitted per decode process (decoding or waiting); 503 beyond

R = TypeVar("R")
Input = np.ndarray | FrameInputs
After = Callable[[Input, str], R]


class Prepared(NamedTuple, Generic[R]):
    """An image ready for the forward pass: its model input(s), sha256, what ``after`` gave, the time
    fetching and decoding took, and its bytes (a fetched URL's are kept until the answer, at most
    NSFW_MAX_BYTES, a video's NSFW_MAX_VIDEO_BYTES: the review queue stores what was classified)."""

    x: Input
    sha256: str
    found: R
    fetch_s: float
    decode_s: float
    data: bytes


class _Isolate(NamedTuple):
    """An expensive image, read and checked by a worker, to be decoded in the isolated lane."""

    plan: Plan
    data: bytes


class _Admit(NamedTuple):
    """An image whose forward passes cost more than one unit (an animation, an expensive model), read and
    checked by a worker: the rest of that cost is admitted in flight before it is decoded."""

    plan: Plan
    data: bytes
    extra: float  # cost units beyond the one its request was admitted with
    frames: int  # frames to classify (1 for a still image)


class _Video(NamedTuple):
    """A video: decoded (container read, frames sampled) in the isolated lane."""

    data: bytes


class _Ready(NamedTuple):
    x: Input
    found: Any


class Intake:
    """Fetching and decoding for the API, on its own threads and counters; see the module docstring."""

    def __init__(self, decoder: Decoder, fetch: Callable[[str], bytes], admission: Admission, *,
                 workers: Executor, isolated: Executor, isolated_queue: int = ISOLATED_QUEUE,
                 model_cost: Callable[[str], float] = lambda name: 1.0) -> None:
        self.decoder = decoder
        self._fetch = fetch
        self.admission = admission
        self.workers = workers
        self.isolated = isolated
        self.isolated_limit = isolated_queue * decoder.limits.processes
        self.model_cost = model_cost  # an image through this model, relative to the default (the registry's cost)
        self.preparing = 0  # images being fetched or decoded (they will reach the batcher soon)
        self.isolated_pending = 0  # expensive images decoding or waiting in the isolated lane

    async def url(self, url: str, model: Model, held: contextlib.ExitStack, after: After[R], *,
                  placed: bool = False) -> Prepared[R]:
        """Fetch ``url`` (SSRF-safe, capped) and prepare it for ``model``; ``after(x, sha256)`` runs in the
        worker once the input is ready (the known-image lookup).  An animation's frames stay admitted in
        flight until ``held`` closes.  ``placed``: the request holds the image's whole place in flight already
        (``POST /v1/explain`` admits all its forward passes at the model's cost before its body is read), so an
        expensive model's or an animation's extra units are not admitted again; the image is charged all the
        same."""
        return await self._preparing(held, self._fetch_and_prepare, url, model, after, placed)

    async def data(self, data: bytes, model: Model, held: contextlib.ExitStack, after: After[R], *,
                   placed: bool = False) -> Prepared[R]:
        """Prepare image bytes for ``model``; see :meth:`url`."""
        return await self._preparing(held, self._prepare_timed, data, model, after, placed)

    async def _preparing(self, held: contextlib.ExitStack, fn: Callable[..., Any], source: Any, model: Model,
                         after: After[R], placed: bool = False) -> Prepared[R]:
        self.preparing += 1
        try:
            loop = asyncio.get_running_loop()
            fetch_s, step, sha, decode_s, data = await loop.run_in_executor(
                self.workers, requestid.in_context(fn, source, model, after))
            if isinstance(step, _Admit):
                meter = ratelimit.current()
                # its first unit came with its request: alone when the client holds nothing but its request's
                if not placed:
                    held.enter_context(self.admission.admit(step.extra, meter.client if meter is not None else None,
                                                            base=meter.admitted if meter is not None else 1.0,
                                                            frames=step.frames))
                if step.plan.cost.inline:
                    t0 = time.perf_counter()
                    step = await loop.run_in_executor(self.workers, requestid.in_context(
                        self._decode_inline, step, model, sha, after))
                    decode_s += time.perf_counter() - t0
                else:
                    step = _Isolate(step.plan, step.data)
            if isinstance(step, _Video):
                x, isolated_s = await self._video(step, model, held, placed)
                t0 = time.perf_counter()
                step = await loop.run_in_executor(self.workers, requestid.in_context(_ready, x, sha, after))
                decode_s += isolated_s + time.perf_counter() - t0
            if isinstance(step, _Isolate):
                x, isolated_s = await self._isolated_decode(step, model)
                t0 = time.perf_counter()
                step = await loop.run_in_executor(self.workers, requestid.in_context(_ready, x, sha, after))
                decode_s += isolated_s + time.perf_counter() - t0
            assert isinstance(step, _Ready)
            return Prepared(step.x, sha, step.found, fetch_s, decode_s, data)
        finally:
            self.preparing -= 1

    async def _isolated_decode(self, pending: _Isolate, model: Model) -> tuple[Input, float]:
        """Decode in the isolated lane; 503 overloaded when its queue would pass ``isolated_limit``."""
        if self.isolated_pending >= self.isolated_limit:
            raise self.admission.refuse(f"too many expensive images being decoded ({self.isolated_pending} of "
                                        f"{self.isolated_limit}); retry later")
        self.isolated_pending += 1
        try:
            t0 = time.perf_counter()
            x = await asyncio.get_running_loop().run_in_executor(
                self.isolated, requestid.in_context(self.decoder.prepare_isolated, model, pending.data, pending.plan))
            return x, time.perf_counter() - t0
        finally:
            self.isolated_pending -= 1

    async def _video(self, pending: _Video, model: Model, held: contextlib.ExitStack, placed: bool = False
                     ) -> tuple[Input, float]:
        """Decode a video in the isolated lane; once its container is read, it is charged its sampled frames
        times the model's cost and the decoding beyond them (:func:`~nsfw_core.ratelimit.video_decode_cost`),
        and its frames are admitted in flight (the first unit came with its request)."""
        if self.isolated_pending >= self.isolated_limit:
            raise self.admission.refuse(f"too many expensive images being decoded ({self.isolated_pending} of "
                                        f"{self.isolated_limit}); retry later")
        self.isolated_pending += 1
        loop = asyncio.get_running_loop()
        try:
            t0 = time.perf_counter()
            with self.decoder.video(model, pending.data) as decode:
                info = await loop.run_in_executor(self.isolated, requestid.in_context(decode.start))
                frames = max(1, len(info.samples))
                units = ratelimit.image_cost(frames, self.model_cost(model.name), 0)
                decoding = ratelimit.video_decode_cost(frames, info.decoded, info.width * info.height,
                                                       info.decoded_bytes, info.codec)
                meter = ratelimit.current()
                if meter is not None:  # 429 before a frame is decoded (blocking when the buckets are shared)
                    await loop.run_in_executor(self.workers, requestid.in_context(meter.charge, units + decoding))
                if not placed:
                    held.enter_context(self.admission.admit(units - 1.0, meter.client if meter is not None else None,
                                                            base=meter.admitted if meter is not None else 1.0,
                                                            frames=frames))
                x = await loop.run_in_executor(self.isolated, requestid.in_context(decode.take))
            return x, time.perf_counter() - t0
        finally:
            self.isolated_pending -= 1

    def _fetch_and_prepare(self, url: str, model: Model, after: After[R]
                           ) -> tuple[float, _Ready | _Isolate | _Admit | _Video, str, float, bytes]:
        """Worker thread: fetch, then prepare."""
        t0 = time.perf_counter()
        content = self._fetch(url)
        fetch_s = time.perf_counter() - t0
        _, step, sha, decode_s, _ = self._prepare_timed(content, model, after)
        return fetch_s, step, sha, decode_s, content

    def _prepare_timed(self, data: bytes, model: Model, after: After[R]
                       ) -> tuple[float, _Ready | _Isolate | _Admit | _Video, str, float, bytes]:
        """Worker thread: read the headers (limits), charge the image's cost, decode a cheap still image and
        preprocess it; hash the bytes.  A video is only recognised here (:meth:`_video` charges it)."""
        t0 = time.perf_counter()
        if sniff_video(data) is not None:
            return 0.0, _Video(data), hashlib.sha256(data).hexdigest(), time.perf_counter() - t0, data
        plan = self.decoder.plan(model, data)
        refs = self.decoder.sampled(plan)
        # the budgets over time count it all; in flight, its forward passes (decoding is bounded by the
        # isolated lane and the pixel budget)
        inference = ratelimit.image_cost(len(refs) if refs is not None else 1, self.model_cost(model.name), 0)
        meter = ratelimit.current()
        if meter is not None:
            meter.charge(inference + ratelimit.image_cost(0, 0.0, plan.cost.work))  # 429 before a pixel is decoded
        sha = hashlib.sha256(data).hexdigest()
        step: _Ready | _Isolate | _Admit | _Video
        if refs is not None or inference > 1.0 + 1e-9:
            step = _Admit(plan, data, inference - 1.0, len(refs) if refs is not None else 1)
        elif not plan.cost.inline:
            step = _Isolate(plan, data)
        else:
            step = _ready(self.decoder.prepare_inline(model, data, plan), sha, after)
        return 0.0, step, sha, time.perf_counter() - t0, data

    def _decode_inline(self, pending: _Admit, model: Model, sha: str, after: After[R]) -> _Ready:
        """Worker thread: decode and preprocess a cheap image (an animation's sampled frames) once admitted."""
        return _ready(self.decoder.prepare_inline(model, pending.data, pending.plan), sha, after)


def _ready(x: Input, sha: str, after: After[Any]) -> _Ready:
    return _Ready(x, after(x, sha))
