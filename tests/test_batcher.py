"""The micro-batcher's logic, with a tiny fake model (the real one is covered by test_api)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from nsfw_core.base.errors import ModelError, NotReady, Overloaded
from nsfw_core.inference.batcher import MicroBatcher


class FakeModel:
    """input_size 2; row for an input filled with k is [k, 2k, 3k, 4k, 5k]; records every call."""

    input_size = 2

    def __init__(self, delay: float = 0.0, fail_first: bool = False) -> None:
        self.delay = delay
        self.fail_first = fail_first
        self.batch_sizes: list[int] = []
        self.seen: list[float] = []  # the k of every input that reached a forward pass
        self.threads: set[str] = set()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(self.delay)
            if self.fail_first and not self.batch_sizes:
                self.batch_sizes.append(0)
                raise RuntimeError("boom")
            self.batch_sizes.append(batch.shape[0])
            self.seen.extend(batch[:, 0, 0, 0].tolist())
            return batch[:, 0, 0, :1] * np.arange(1, 6, dtype=np.float32)
        finally:
            with self._lock:
                self.active -= 1


def x(k: float) -> np.ndarray:
    return np.full((2, 2, 3), k, dtype=np.float32)


def row(k: float) -> list[float]:
    return [k * i for i in range(1, 6)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_concurrent_submissions_are_batched_and_routed_to_their_callers():
    model = FakeModel(delay=0.01)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_batch=8, max_wait_s=0.05, queue_size=100)
        batcher.start()
        results = await asyncio.gather(*(batcher.predict(x(k)) for k in range(40)))
        await batcher.stop()
        assert batcher.stats.to_dict()["items"] == 40
        assert batcher.stats.batches == len(model.batch_sizes)
        return results

    results = run(main())
    for k, got in enumerate(results):
        assert got.tolist() == row(k)
    assert sum(model.batch_sizes) == 40
    assert max(model.batch_sizes) == 8
    assert len(model.batch_sizes) <= 6  # 40 items in batches of at most 8: 5 passes, one spare


def test_single_item_waits_at_most_max_wait():
    model = FakeModel()

    async def main() -> float:
        batcher = MicroBatcher(model, max_batch=32, max_wait_s=0.05, queue_size=10)
        batcher.start()
        started = time.perf_counter()
        got = await batcher.predict(x(3))
        elapsed = time.perf_counter() - started
        await batcher.stop()
        assert got.tolist() == row(3)
        return elapsed

    assert run(main()) < 0.5
    assert model.batch_sizes == [1]


def test_forward_passes_never_overlap_and_never_block_the_loop():
    model = FakeModel(delay=0.05)

    async def main() -> int:
        batcher = MicroBatcher(model, max_batch=2, max_wait_s=0.0, queue_size=100)
        batcher.start()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        await asyncio.gather(*(batcher.predict(x(k)) for k in range(10)))
        tick_task.cancel()
        await batcher.stop()
        return ticks

    ticks = run(main())
    assert model.max_active == 1
    assert len(model.threads) == 1 and threading.main_thread().name not in model.threads
    assert ticks > 20  # ~0.25 s of forward passes; the loop kept running meanwhile


def test_full_queue_raises_overloaded_at_once():
    model = FakeModel(delay=0.3)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch=1, max_wait_s=0.0, queue_size=2)
        batcher.start()
        first = asyncio.create_task(batcher.predict(x(1)))
        await asyncio.sleep(0.05)  # taken into a forward pass: no longer waiting
        queued = [asyncio.create_task(batcher.predict(x(k))) for k in (2, 3)]
        await asyncio.sleep(0)
        assert batcher.waiting == 2
        started = time.perf_counter()
        with pytest.raises(Overloaded) as info:
            await batcher.predict(x(4))
        assert time.perf_counter() - started < 0.05
        assert info.value.status == 503 and info.value.details["queue_size"] == 2
        assert batcher.stats.rejected == 1
        results = await asyncio.gather(first, *queued)
        assert [r.tolist() for r in results] == [row(1), row(2), row(3)]
        await batcher.stop()

    run(main())


def test_stop_drains_the_queue_then_refuses_work():
    model = FakeModel(delay=0.02)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch=3, max_wait_s=0.01, queue_size=100)
        batcher.start()
        tasks = [asyncio.create_task(batcher.predict(x(k))) for k in range(10)]
        await asyncio.sleep(0)  # all enqueued
        await batcher.stop()
        assert all(t.done() for t in tasks)
        assert [t.result().tolist() for t in tasks] == [row(k) for k in range(10)]
        assert not batcher.running
        with pytest.raises(NotReady):
            await batcher.predict(x(1))

    run(main())
    assert sum(model.batch_sizes) == 10


def test_cancelled_waiters_do_not_break_the_loop():
    model = FakeModel(delay=0.1)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch=4, max_wait_s=0.0, queue_size=100)
        batcher.start()
        in_pass = asyncio.create_task(batcher.predict(x(1)))
        await asyncio.sleep(0.02)  # its forward pass is running
        queued = asyncio.create_task(batcher.predict(x(2)))
        await asyncio.sleep(0)
        in_pass.cancel()
        queued.cancel()
        later = await batcher.predict(x(5))
        assert later.tolist() == row(5)
        await batcher.stop()
        assert in_pass.cancelled() and queued.cancelled()

    run(main())
    assert model.seen == [1.0, 5.0]  # the cancelled, still queued input never reached the model


def test_a_failing_forward_pass_fails_its_callers_only():
    model = FakeModel(fail_first=True)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch=4, max_wait_s=0.01, queue_size=100)
        batcher.start()
        with pytest.raises(ModelError, match="inference failed: boom"):
            await batcher.predict(x(1))
        assert (await batcher.predict(x(2))).tolist() == row(2)
        await batcher.stop()

    run(main())


def test_a_lone_input_does_not_wait_when_nothing_else_is_coming():
    async def main() -> tuple[float, float]:
        timings = []
        for expecting in (0, 1):
            def expected(n: int = expecting) -> int:
                return n

            batcher = MicroBatcher(FakeModel(), max_batch=8, max_wait_s=0.5, queue_size=8, expecting=expected)
            batcher.start()
            started = time.perf_counter()
            assert (await batcher.predict(x(2.0))).tolist() == row(2.0)
            timings.append(time.perf_counter() - started)
            await batcher.stop()
        return timings[0], timings[1]

    alone, waited = run(main())
    assert alone < 0.2  # dispatched at once
    assert waited >= 0.45  # another image was on its way: waited max_wait_s for it
