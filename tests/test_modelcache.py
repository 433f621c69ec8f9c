"""Models on demand: one load per model, LRU within the memory cap, the default never unloaded, a load
that does not hold up requests for other models; and concurrent v1 requests switching models."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import threading
import time

import pytest

from nsfw_core.inference import registry as modelcache
from nsfw_core.inference.registry import MB, ModelCache, ModelUnavailable, estimate_bytes
from tests.helpers.apiclient import make_settings, running
from tests.helpers.paths import COMPILED_DIR, REFERENCE

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

SMILE = (REFERENCE / "smile.jpg").read_bytes()


class FakeModel:
    batches = False
    input_size = 224

    def __init__(self, name: str) -> None:
        self.name, self.version, self.load_seconds = name, "v", 0.0


class FakeCtx:
    def __init__(self, tmp_path) -> None:
        settings = make_settings(tmp_path)
        self.model_config = settings.model_config
        self.serving = settings.serving_limits
        self.preparing = 0


@pytest.fixture
def slow_loads(monkeypatch):
    """load_model replaced: each load takes 0.3 s in its thread, and is counted by name."""
    loads: list[str] = []
    lock = threading.Lock()

    def load_model(name, *args, **kwargs):
        with lock:
            loads.append(name)
        time.sleep(0.3)
        return FakeModel(name)

    monkeypatch.setattr(modelcache, "load_model", load_model)
    return loads


def sizes(ctx) -> dict[str, int]:
    return {n: estimate_bytes(ctx.model_config.model_dir, n) for n in ("MobileNetV2Mid", "MobileNetV2", "InceptionV3")}


def test_concurrent_first_requests_wait_for_one_load(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    cache = ModelCache(ctx, 1024 * MB)

    async def use(name):
        async with cache.lane(name) as lane:
            return lane.model if lane is not None else None

    async def main():
        models = await asyncio.gather(*(use("MobileNetV2") for _ in range(8)))
        await cache.close()
        return models

    models = asyncio.run(main())
    assert slow_loads == ["MobileNetV2"]
    assert len({id(m) for m in models}) == 1


def test_loading_one_model_does_not_block_another_or_the_loop(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    cache = ModelCache(ctx, 1024 * MB)

    async def main():
        t0 = time.perf_counter()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while time.perf_counter() - t0 < 0.35:
                ticks += 1
                await asyncio.sleep(0.01)

        async def default():
            async with cache.lane(None) as lane:  # the default model: no wait at all
                return lane, time.perf_counter() - t0

        async def other(name):
            async with cache.lane(name):
                return time.perf_counter() - t0

        (lane, default_s), a, b, _ = await asyncio.gather(default(), other("MobileNetV2"), other("InceptionV3"),
                                                         ticker())
        await cache.close()
        return lane, default_s, a, b, ticks

    lane, default_s, a, b, ticks = asyncio.run(main())
    assert lane is None and default_s < 0.1
    assert a < 0.55 and b < 0.55  # loaded side by side, not one after the other (0.6 s)
    assert ticks > 10  # the event loop kept running
    assert sorted(slow_loads) == ["InceptionV3", "MobileNetV2"]


def test_lru_eviction_within_the_cap_and_the_default_stays(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    size = sizes(ctx)
    cap = size["MobileNetV2Mid"] + max(size["MobileNetV2"], size["InceptionV3"]) + 1  # room for one more
    cache = ModelCache(ctx, cap)

    async def use(name):
        async with cache.lane(name):
            pass

    async def main():
        await use("MobileNetV2")
        await use("MobileNetV2")  # loaded once
        assert cache.loaded == ["MobileNetV2"]
        await use("InceptionV3")  # no room for both: the least recently used goes
        assert cache.loaded == ["InceptionV3"] and cache.evictions == 1
        await use("MobileNetV2Mid")  # the default: never loaded here, never evicted
        assert cache.used_bytes() <= cap
        await cache.close()

    asyncio.run(main())
    assert slow_loads == ["MobileNetV2", "InceptionV3"]


def test_no_room_is_503_model_unavailable(tmp_path, slow_loads):
    ctx = FakeCtx(tmp_path)
    size = sizes(ctx)
    tight = ModelCache(ctx, size["MobileNetV2Mid"] + size["MobileNetV2"] + 1)

    async def main():
        with pytest.raises(ModelUnavailable) as caught:  # larger than the cap beside the default
            async with tight.lane("InceptionV3"):
                pass
        assert (caught.value.status, caught.value.code) == (503, "model_unavailable")
        room_for_one = ModelCache(ctx, size["MobileNetV2Mid"] + size["InceptionV3"] + 1)
        async with room_for_one.lane("MobileNetV2"):  # busy: cannot be evicted
            with pytest.raises(ModelUnavailable):
                async with room_for_one.lane("InceptionV3"):
                    pass
        async with room_for_one.lane("InceptionV3"):  # idle now: evicted
            pass
        assert room_for_one.loaded == ["InceptionV3"]
        await room_for_one.close()

    asyncio.run(main())


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
        by_model = {}
        for name, a in zip(names, answers, strict=True):
            by_model.setdefault(name, set()).add(tuple(sorted(a.json()["scores"].items())))
        assert all(len(v) == 1 for v in by_model.values())  # the same answer every time per model
        assert len({next(iter(v)) for v in by_model.values()}) == 3  # and three different models
