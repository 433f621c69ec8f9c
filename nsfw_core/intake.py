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
* An animation first takes its sampled frames' places in flight (each frame is an image),
  so a busy server refuses it before decoding, not after.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from concurrent.futures import Executor
from typing import Any, Callable, Generic, NamedTuple, TypeVar

import numpy as np

from nsfw_core.admission import Admission
from nsfw_core.base import requestid
from nsfw_core.images.decode import Plan
from nsfw_core.inference.model import Model
from nsfw_core.inference.pipeline import Decoder, FrameInputs

ISOLATED_QUEUE = 4  # expensive images admitted per decode process (decoding or waiting); 503 beyond

R = TypeVar("R")
Input = np.ndarray | FrameInputs
After = Callable[[Input, str], R]


class Prepared(NamedTuple, Generic[R]):
    """An image ready for the forward pass: its model input(s), sha256, what ``after`` gave, the time
    fetching and decoding took, and its bytes (a fetched URL's are kept until the answer, at most
    NSFW_MAX_BYTES: the review queue stores what was classified)."""

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


class _Animated(NamedTuple):
    """An animation, read and checked by a worker: its frames are admitted before they are decoded."""

    plan: Plan
    data: bytes
    frames: int  # frames to classify (at most NSFW_MAX_FRAMES)


class _Ready(NamedTuple):
    x: Input
    found: Any


class Intake:
    """Fetching and decoding for the API, on its own threads and counters; see the module docstring."""

    def __init__(self, decoder: Decoder, fetch: Callable[[str], bytes], admission: Admission, *,
                 workers: Executor, isolated: Executor, isolated_queue: int = ISOLATED_QUEUE) -> None:
        self.decoder = decoder
        self._fetch = fetch
        self.admission = admission
        self.workers = workers
        self.isolated = isolated
        self.isolated_limit = isolated_queue * decoder.limits.processes
        self.preparing = 0  # images being fetched or decoded (they will reach the batcher soon)
        self.isolated_pending = 0  # expensive images decoding or waiting in the isolated lane

    async def url(self, url: str, model: Model, held: contextlib.ExitStack, after: After[R]) -> Prepared[R]:
        """Fetch ``url`` (SSRF-safe, capped) and prepare it for ``model``; ``after(x, sha256)`` runs in the
        worker once the input is ready (the known-image lookup).  An animation's frames stay admitted in
        flight until ``held`` closes."""
        return await self._preparing(held, self._fetch_and_prepare, url, model, after)

    async def data(self, data: bytes, model: Model, held: contextlib.ExitStack, after: After[R]) -> Prepared[R]:
        """Prepare image bytes for ``model``; see :meth:`url`."""
        return await self._preparing(held, self._prepare_timed, data, model, after)

    async def _preparing(self, held: contextlib.ExitStack, fn: Callable[..., Any], source: Any, model: Model,
                         after: After[R]) -> Prepared[R]:
        self.preparing += 1
        try:
            loop = asyncio.get_running_loop()
            fetch_s, step, sha, decode_s, data = await loop.run_in_executor(
                self.workers, requestid.in_context(fn, source, model, after))
            if isinstance(step, _Animated):
                held.enter_context(self.admission.admit(step.frames - 1))
                if step.plan.cost.inline:
                    t0 = time.perf_counter()
                    step = await loop.run_in_executor(self.workers, requestid.in_context(
                        self._decode_inline, step, model, sha, after))
                    decode_s += time.perf_counter() - t0
                else:
                    step = _Isolate(step.plan, step.data)
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

    def _fetch_and_prepare(self, url: str, model: Model, after: After[R]
                           ) -> tuple[float, _Ready | _Isolate | _Animated, str, float, bytes]:
        """Worker thread: fetch, then prepare."""
        t0 = time.perf_counter()
        content = self._fetch(url)
        fetch_s = time.perf_counter() - t0
        _, step, sha, decode_s, _ = self._prepare_timed(content, model, after)
        return fetch_s, step, sha, decode_s, content

    def _prepare_timed(self, data: bytes, model: Model, after: After[R]
                       ) -> tuple[float, _Ready | _Isolate | _Animated, str, float, bytes]:
        """Worker thread: read the headers (limits), decode a cheap still image and preprocess it; hash the bytes."""
        t0 = time.perf_counter()
        plan = self.decoder.plan(model, data)
        sha = hashlib.sha256(data).hexdigest()
        refs = self.decoder.sampled(plan)
        step: _Ready | _Isolate | _Animated
        if refs is not None:
            step = _Animated(plan, data, len(refs))
        elif not plan.cost.inline:
            step = _Isolate(plan, data)
        else:
            step = _ready(self.decoder.prepare_inline(model, data, plan), sha, after)
        return 0.0, step, sha, time.perf_counter() - t0, data

    def _decode_inline(self, pending: _Animated, model: Model, sha: str, after: After[R]) -> _Ready:
        """Worker thread: decode and preprocess a cheap animation's sampled frames."""
        return _ready(self.decoder.prepare_inline(model, pending.data, pending.plan), sha, after)


def _ready(x: Input, sha: str, after: After[Any]) -> _Ready:
    return _Ready(x, after(x, sha))
