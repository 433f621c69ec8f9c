"""Models on demand for API v1: any of the three models, loaded once, kept within a memory cap.

A v1 request may name a model (``"model": "InceptionV3"``).  The default model (``NSFW_MODEL``)
is the context's own, with its micro-batcher, and is never unloaded.  Another model is loaded
on its first request, in a thread (the event loop keeps serving), under a lock of its own: the
requests that arrive for it while it loads wait for that one load, and requests for other
models are not held up.  Each loaded model gets its own micro-batcher (:class:`~nsfw_core.classify.Lane`).

Memory: a model is counted at three times its compiled LiteRT file (:func:`estimate_bytes`: the
default MobileNetV2Mid 52 MB, MobileNetV2 31 MB, InceptionV3 268 MB), the default model too.  When loading one more
would pass ``NSFW_MODEL_MEMORY_MB``, the least recently used idle models are unloaded first (their
batchers drained and stopped); if that cannot make room (the others are serving requests, or the
model alone is larger than the cap), the request is answered 503 ``model_unavailable``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

from nsfw_core.base.errors import NSFWError
from nsfw_core.classify import Lane
from nsfw_core.inference.batcher import MicroBatcher
from nsfw_core.inference.model import load_model
from nsfw_core.inference.modelfiles import check_name

if TYPE_CHECKING:
    from nsfw_core.context import Context

log = logging.getLogger(__name__)

MB = 1024 * 1024


class ModelUnavailable(NSFWError):
    status = 503
    code = "model_unavailable"


LOADED_PER_COMPILED_BYTE = 3  # RSS a loaded model adds, per byte of its compiled .tflite (measured below)


def estimate_bytes(model_dir: str | Path, name: str) -> int:
    """What a loaded model is counted at: three times its compiled LiteRT file.

    Measured by the security test on the 2-core VM: loading InceptionV3 and MobileNetV2 beside the
    default model added about 350 MiB of RSS, while their float32 weights come to 111 MB (the earlier
    estimate): LiteRT keeps the flatbuffer, XNNPACK's packed copy of the weights and the activations.
    Their compiled files are 89 + 10 MB, hence the factor 3.
    """
    try:
        manifest = json.loads((Path(model_dir) / "compiled" / "manifest.json").read_text())
        return LOADED_PER_COMPILED_BYTE * int(manifest["models"][name]["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:  # no shipped compiled file: 12 times the uint8-quantised weights (4 for float32, 3 as above)
        return 12 * (Path(model_dir) / name / "weights.bin").stat().st_size
    except OSError:
        return 0


@dataclasses.dataclass
class _Loaded:
    lane: Lane
    size: int
    users: int = 0


class ModelCache:
    """The models loaded on demand besides the default one; used on the event loop only."""

    def __init__(self, ctx: Context, cap_bytes: int) -> None:
        self.ctx = ctx
        self.cap_bytes = cap_bytes
        self.default = ctx.model_config.name
        self._loaded: collections.OrderedDict[str, _Loaded] = collections.OrderedDict()  # LRU first
        self._locks: dict[str, asyncio.Lock] = {}
        self.loads = 0  # models loaded (tests and /metrics-style introspection)
        self.evictions = 0

    @property
    def loaded(self) -> list[str]:
        """Loaded models besides the default, least recently used first."""
        return list(self._loaded)

    def used_bytes(self) -> int:
        return self._size(self.default) + sum(e.size for e in self._loaded.values())

    def _size(self, name: str) -> int:
        return estimate_bytes(self.ctx.model_config.model_dir, name)

    @contextlib.asynccontextmanager
    async def lane(self, name: str | None) -> AsyncIterator[Lane | None]:
        """The lane of ``name`` for the block (None: the default model's, the context's batcher)."""
        if name is None or name == self.default:
            yield None
            return
        entry = await self._get(name)
        entry.users += 1
        try:
            yield entry.lane
        finally:
            entry.users -= 1

    async def _get(self, name: str) -> _Loaded:
        check_name(name)
        entry = self._loaded.get(name)
        if entry is not None:
            self._loaded.move_to_end(name)
            return entry
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:  # one load per model; other models' requests go on meanwhile
            entry = self._loaded.get(name)
            if entry is not None:
                self._loaded.move_to_end(name)
                return entry
            size = self._size(name)
            await self._make_room(name, size)
            cfg = self.ctx.model_config
            model = await asyncio.to_thread(load_model, name, cfg.model_dir, runtime=cfg.runtime,
                                            threads=cfg.threads, cache_dir=cfg.compiled_dir)
            s = self.ctx.serving
            batcher = MicroBatcher(model, max_batch=s.max_batch,
                                   max_wait_s=s.batch_wait_ms / 1000.0 if model.batches else 0.0,
                                   queue_size=s.queue_size, expecting=lambda: self.ctx.preparing)
            batcher.start()
            entry = self._loaded[name] = _Loaded(Lane(model, batcher), size)
            self.loads += 1
            log.info("model %s %s loaded on demand in %.1f s (%d MB of %d MB in use)", name, model.version,
                     model.load_seconds, self.used_bytes() // MB, self.cap_bytes // MB)
            return entry

    async def _make_room(self, name: str, size: int) -> None:
        """Unload idle models, least recently used first, until ``size`` more bytes fit under the cap."""
        if self._size(self.default) + size > self.cap_bytes:
            raise ModelUnavailable(f"model {name} does not fit in NSFW_MODEL_MEMORY_MB={self.cap_bytes // MB} "
                                   "beside the default model", model=name)
        while self.used_bytes() + size > self.cap_bytes:
            victim = next((n for n, e in self._loaded.items() if e.users == 0), None)
            if victim is None:
                raise ModelUnavailable(f"no room to load model {name}: the loaded models are all serving "
                                       "requests; retry later", model=name)
            await self.unload(victim)

    async def unload(self, name: str) -> None:
        entry = self._loaded.pop(name, None)
        if entry is None:
            return
        self.evictions += 1
        log.info("model %s unloaded (least recently used; NSFW_MODEL_MEMORY_MB=%d)", name, self.cap_bytes // MB)
        await entry.lane.batcher.stop()

    async def close(self) -> None:
        for name in list(self._loaded):
            await self.unload(name)
