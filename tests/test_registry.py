"""The model registry: one load per model whoever asks, LRU within the memory cap counted at what loading
measurably added, the default never unloaded, a load that does not hold up requests for other models; and
concurrent v1 requests switching models."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import threading
import time
from typing import Any

import pytest

from nsfw_core.inference.registry import MB, Batching, ModelRegistry, ModelUnavailable, estimate_bytes
from tests.helpers.apiclient import make_settings, running
from tests.helpers.paths import COMPILED_DIR, REFERENCE

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

SMILE = (REFERENCE / "smile.jpg").read_bytes()


class FakeModel:
    batches = False
    input_size = 224

    def __init__(self, name: str) -> None:
        self.name, self.version, self.load_seconds = name, "v", 0.0


class Loads(list[Any]):
    """A loader that takes 0.3 s in its thread and counts its loads by name, how many ran at once at most, and
    which have finished."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.running = self.most_at_once = 0
        self.finished: list[str] = []
        self.together = threading.Event()  # set once two loads run at once
        self.await_company: set[str] = set()  # loads that wait (up to 10 s) for another to run beside them

    def __call__(self, name, *args, **kwargs):
        with self.lock:
            self.append(name)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            if self.running >= 2:
                self.together.set()
        if name in self.await_company:  # on a loaded machine a thread may start late: wait, don't race
            self.together.wait(10)
        time.sleep(0.3)
        with self.lock:
            self.running -= 1
            self.finished.append(name)
        return FakeModel(name)


@pytest.fixture
def slow_loads():
    return Loads()


class FakeCtx:
    def __init__(self, tmp_path) -> None:
        settings = make_settings(tmp_path)
        self.model_config = settings.model_config
        self.serving = settings.serving_limits


def registry(ctx, cap, loads, measure=lambda: None) -> ModelRegistry:
    """A registry loading with ``loads``; without a measure every model counts at its estimate."""
    s = ctx.serving
    return ModelRegistry(ctx.model_config, Batching(s.max_batch, s.batch_wait_ms, s.queue_size), cap,
                         loader=loads, measure=measure)


def sizes(ctx) -> dict[str, int]:
    return {n: estimate_bytes(ctx.model_config.model_dir, n) for n in ("MobileNetV2Mid", "MobileNetV2", "InceptionV3")}


def test_concurrent_first_requests_wait_for_one_load(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    cache = registry(ctx, 1024 * MB, slow_loads)

    async def use(name):
        async with cache.lane(name) as lane:
            return lane.model

    async def main():
        models = await asyncio.gather(*(use("MobileNetV2") for _ in range(8)))
        await cache.close()
        return models

    models = asyncio.run(main())
    assert slow_loads == ["MobileNetV2"]
    assert len({id(m) for m in models}) == 1


def test_loading_one_model_does_not_block_another_or_the_loop(tmp_path, slow_loads):
    """Structural, not timed: the two loads overlap in their threads, the default model's lane is handed out
    while they are still loading, and the event loop keeps ticking meanwhile."""
    ctx = FakeCtx(tmp_path)
    cache = registry(ctx, 1024 * MB, slow_loads)
    slow_loads.await_company = {"MobileNetV2", "InceptionV3"}  # one after the other, each waits 10 s in vain

    async def main():
        await cache.start()  # the server starts the default model's lane first
        ticks = 0
        others_done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not others_done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        async def default():
            async with cache.lane(None) as lane:  # the default model: no wait for the other loads
                return lane, list(slow_loads.finished)

        async def other(name):
            async with cache.lane(name):
                return name

        async def others():
            try:
                return await asyncio.gather(other("MobileNetV2"), other("InceptionV3"))
            finally:
                others_done.set()

        (lane, finished_then), _, _ = await asyncio.gather(default(), others(), ticker())
        await cache.close()
        return lane, finished_then, ticks

    lane, finished_then, ticks = asyncio.run(main())
    assert lane.model.name == "MobileNetV2Mid" and finished_then == ["MobileNetV2Mid"]
    assert slow_loads.most_at_once == 2  # loaded side by side, not one after the other
    assert ticks > 5  # the event loop kept running through 0.3 s of loading (a blocked loop ticks once or twice)
    assert sorted(slow_loads) == ["InceptionV3", "MobileNetV2", "MobileNetV2Mid"]


def test_lru_eviction_within_the_cap_and_the_default_stays(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    size = sizes(ctx)
    cap = size["MobileNetV2Mid"] + max(size["MobileNetV2"], size["InceptionV3"]) + 1  # room for one more
    cache = registry(ctx, cap, slow_loads)

    async def use(name):
        async with cache.lane(name):
            pass

    async def main():
        await use("MobileNetV2")
        await use("MobileNetV2")  # loaded once
        assert cache.loaded == ["MobileNetV2"]
        await use("InceptionV3")  # no room for both: the least recently used goes
        assert cache.loaded == ["InceptionV3"] and cache.evictions == 1
        await use("MobileNetV2Mid")  # the default: loaded once, never evicted
        assert cache.loaded == ["InceptionV3"]
        assert cache.used_bytes() <= cap
        await cache.close()

    asyncio.run(main())
    assert slow_loads == ["MobileNetV2", "InceptionV3", "MobileNetV2Mid"]


def test_no_room_is_503_model_unavailable(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    size = sizes(ctx)
    tight = registry(ctx, size["MobileNetV2Mid"] + size["MobileNetV2"] + 1, slow_loads)

    async def main():
        with pytest.raises(ModelUnavailable) as caught:  # larger than the cap beside the default
            async with tight.lane("InceptionV3"):
                pass
        assert (caught.value.status, caught.value.code) == (503, "model_unavailable")
        room_for_one = registry(ctx, size["MobileNetV2Mid"] + size["InceptionV3"] + 1, slow_loads)
        async with room_for_one.lane("MobileNetV2"):  # busy: cannot be evicted
            with pytest.raises(ModelUnavailable):
                async with room_for_one.lane("InceptionV3"):
                    pass
        async with room_for_one.lane("InceptionV3"):  # idle now: evicted
            pass
        assert room_for_one.loaded == ["InceptionV3"]
        await room_for_one.close()

    asyncio.run(main())


def test_a_loaded_model_counts_what_loading_added_not_the_estimate(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    size = sizes(ctx)
    rss = iter([100 * MB, 140 * MB, 140 * MB, 150 * MB])  # the default adds 40 MB, MobileNetV2 10 MB

    cache = registry(ctx, 1024 * MB, slow_loads, measure=lambda: next(rss))
    cache.get()
    cache.get("MobileNetV2")
    assert cache.sizes() == {"MobileNetV2Mid": (40 * MB, True), "MobileNetV2": (10 * MB, True)}
    assert cache.used_bytes() == 50 * MB != size["MobileNetV2Mid"] + size["MobileNetV2"]


def test_the_pages_and_the_api_share_one_copy(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    cache = registry(ctx, 1024 * MB, slow_loads)

    async def main():
        page_copy = await asyncio.to_thread(cache.get, "InceptionV3")  # a page opened it first
        async with cache.lane("InceptionV3") as lane:
            assert lane.model is page_copy
        await cache.close()

    asyncio.run(main())
    assert slow_loads == ["InceptionV3"]


def test_model_switching_under_concurrent_load(tmp_path):
    """Real models: requests for the three models at once, each answered by the model it named."""
    settings = make_settings(tmp_path, compiled_dir=COMPILED_DIR, model_memory_mb=512)
    body = {"image": {"base64": base64.b64encode(SMILE).decode()}}
    names = ["MobileNetV2Mid", "MobileNetV2", "InceptionV3"] * 4
    with running(settings) as c:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda n: c.post("/v1/classify", json={**body, "model": n}), names))
        assert [a.status_code for a in answers] == [200] * len(names)
        got = [a.json()["model"]["name"] for a in answers]
        assert got == names
        by_model: dict[str, set[tuple[tuple[str, float], ...]]] = {}
        for name, a in zip(names, answers, strict=True):
            by_model.setdefault(name, set()).add(tuple(sorted(a.json()["scores"].items())))
        assert all(len(v) == 1 for v in by_model.values())  # the same answer every time per model
        assert len({next(iter(v)) for v in by_model.values()}) == 3  # and three different models


def test_a_real_load_counts_what_it_added_and_never_less_than_its_file(tmp_path):
    """Real models, real RSS.  A clean load counts what it measurably added; a load during which other memory
    was freed (another request's buffers) used to count at that difference, down to 0 bytes, so the model
    took no room in NSFW_MODEL_MEMORY_MB; it now counts at least its compiled file."""
    import gc

    import numpy as np

    from nsfw_core.inference.model import load_model
    from nsfw_core.inference.registry import floor_bytes

    settings = make_settings(tmp_path, compiled_dir=COMPILED_DIR)
    s = settings.serving_limits
    ballast: list[np.ndarray] = []

    def freeing_meanwhile(*args, **kwargs):
        model = load_model(*args, **kwargs)
        ballast.clear()  # 200 MB freed while the model loaded
        gc.collect()
        return model

    cache = ModelRegistry(settings.model_config, Batching(s.max_batch, s.batch_wait_ms, s.queue_size), 1024 * MB,
                          loader=freeing_meanwhile)
    cache.get()  # the default model: a clean load
    size, measured = cache.sizes()["MobileNetV2Mid"]
    assert measured and size >= floor_bytes(settings.model_dir, "MobileNetV2Mid")
    ballast.append(np.ones(200 * MB // 8))
    cache.get("MobileNetV2")
    size, measured = cache.sizes()["MobileNetV2"]
    floor = floor_bytes(settings.model_dir, "MobileNetV2")
    assert floor > 10 * 10**6 and measured and size >= floor  # was max(after - before, 0): 0 here
    assert cache.used_bytes() == sum(n for n, _ in cache.sizes().values())
