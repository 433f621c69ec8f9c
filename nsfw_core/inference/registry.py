"""The process's one model registry: every model loaded once, whoever asks, within a memory cap.

The pages, the CLI, API v1's per-request models and the default model that serves ``/predict``
all get their models here (:class:`ModelRegistry`), so a model opened by a page and by a request
is held once.

* :meth:`ModelRegistry.get` (any thread): the model, loaded on first use.  Concurrent first
  requests for one model wait for that one load; loads of different models go on side by side.
* :meth:`ModelRegistry.lane` (the event loop): the model with its micro-batcher, for the API.
  The default model's lane is started with the server and never unloaded; another model's lane is
  started on its first request.

Memory: a model about to load is counted at :func:`estimate_bytes` (three times its compiled
file), then, once loaded, at what loading measurably added to the process's resident memory
(when no other load ran at the same time; the estimate otherwise), and never at less than its
compiled file (:func:`floor_bytes`: LiteRT holds the flatbuffer, and the warm-up has touched it all),
so memory that other threads freed during the load cannot make a model count as free.  When one more would pass
``NSFW_MODEL_MEMORY_MB``, the least recently used idle models are unloaded first (their batchers
drained and stopped); if that cannot make room (the others are serving requests, or the model
alone is larger than the cap beside the default), the request is answered 503 ``model_unavailable``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import json
import logging
import os
import threading
from pathlib import Path
from typing import AsyncIterator, Callable, NamedTuple, Protocol

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.settings import ModelConfig
from nsfw_core.inference.batcher import MicroBatcher
from nsfw_core.inference.model import Model, load_model
from nsfw_core.inference.modelfiles import check_name

log = logging.getLogger(__name__)

MB = 1024 * 1024
LOADED_PER_COMPILED_BYTE = 3  # RSS a loaded model adds, per byte of its compiled .tflite (estimate_bytes)
# CPU milliseconds one image takes through each model on litert, one thread (bench/model_cost.py, the 2-core VM,
# 2026-12-07, median of 4 runs): what a request naming the model costs relative to the default (ModelRegistry.cost)
CPU_MS_PER_IMAGE = {"MobileNetV2Mid": 16.4, "MobileNetV2": 8.7, "InceptionV3": 153.6}


class ModelUnavailable(NSFWError):
    status = 503
    code = "model_unavailable"


class Loader(Protocol):
    def __call__(self, name: str, model_dir: str | Path, *, runtime: str | None = ..., threads: int = ...,
                 cache_dir: str | Path | None = ..., lanes: bool = ...) -> Model: ...


@dataclasses.dataclass(frozen=True)
class Batching:
    """How a model's micro-batcher groups requests (NSFW_MAX_BATCH, NSFW_BATCH_WAIT_MS, NSFW_QUEUE_SIZE)."""

    max_batch: int
    batch_wait_ms: float
    queue_size: int


class Lane(NamedTuple):
    """A model and the micro-batcher that runs it for the API."""

    model: Model
    batcher: MicroBatcher


def estimate_bytes(model_dir: str | Path, name: str) -> int:
    """What a model is counted at before it is loaded: three times its compiled LiteRT file.

    Measured by the security test on the 2-core VM: loading InceptionV3 and MobileNetV2 beside the
    default model added about 350 MiB of RSS, while their float32 weights come to 111 MB: LiteRT keeps
    the flatbuffer, XNNPACK's packed copy of the weights and the activations.  Their compiled files are
    89 + 10 MB, hence the factor 3.  Once loaded, a model is counted at what loading really added.
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


def floor_bytes(model_dir: str | Path, name: str) -> int:
    """The least a loaded model is counted at: its compiled file (a third of :func:`estimate_bytes`)."""
    return estimate_bytes(model_dir, name) // LOADED_PER_COMPILED_BYTE


def rss_bytes() -> int | None:
    """This process's resident memory (Linux), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclasses.dataclass
class _Entry:
    model: Model
    size: int  # bytes counted against the cap
    measured: bool  # size is what loading added (else the estimate)
    lane: Lane | None = None
    users: int = 0  # API requests using the lane now


class ModelRegistry:
    """Every model of the process, loaded once; see the module docstring."""

    def __init__(self, config: ModelConfig, batching: Batching, cap_bytes: int, *,
                 expecting: Callable[[], int] = lambda: 1, on_batch: Callable[[int], None] | None = None,
                 loader: Loader = load_model, measure: Callable[[], int | None] = rss_bytes) -> None:
        self.config = config
        self.batching = batching
        self.cap_bytes = cap_bytes
        self.default = config.name
        self._expecting = expecting
        self._on_batch = on_batch
        self._loader = loader
        self._measure = measure
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # _entries and the counters
        self._load_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._lane_locks: dict[str, asyncio.Lock] = {}
        self._loading = 0  # loads running now (a load measured beside another is not trusted)
        self._overlapped: set[str] = set()
        self.loads = 0
        self.evictions = 0
        self.reason = "the model is loading"  # why the default lane is not serving ("" once it is)

    # ------------------------------------------------------------ any thread

    def get(self, name: str | None = None) -> Model:
        """The model ``name`` (default NSFW_MODEL), loaded on first use. Raises ModelError, ModelUnavailable."""
        return self._entry(name or self.default).model

    def loaded_model(self, name: str | None = None) -> Model | None:
        """The model if it is loaded, without loading it (``/metrics``' build info)."""
        with self._lock:
            entry = self._entries.get(name or self.default)
            return entry.model if entry is not None else None

    @property
    def loaded(self) -> list[str]:
        """Loaded models besides the default, least recently used first."""
        with self._lock:
            return [n for n in self._entries if n != self.default]

    def used_bytes(self) -> int:
        """What the loaded models count against the cap (the default's estimate until it is loaded)."""
        with self._lock:
            default = self._entries.get(self.default)
            return (default.size if default is not None else self.estimate(self.default)) + \
                sum(e.size for n, e in self._entries.items() if n != self.default)

    def sizes(self) -> dict[str, tuple[int, bool]]:
        """Each loaded model's counted bytes and whether they were measured (True) or estimated."""
        with self._lock:
            return {n: (e.size, e.measured) for n, e in self._entries.items()}

    def estimate(self, name: str) -> int:
        return estimate_bytes(self.config.model_dir, name)

    def cost(self, name: str | None) -> float:
        """What one image through model ``name`` costs relative to the default model (its CPU time per image
        over the default's, :data:`CPU_MS_PER_IMAGE`); 1 for the default or a model not in the table."""
        name = name or self.default
        mine, default = CPU_MS_PER_IMAGE.get(name), CPU_MS_PER_IMAGE.get(self.default)
        return mine / default if mine and default else 1.0

    def _entry(self, name: str) -> _Entry:
        check_name(name)
        with self._lock:
            entry = self._touch(name)
        if entry is not None:
            return entry
        with self._load_locks[name]:  # one load per model; other models load meanwhile
            with self._lock:
                entry = self._touch(name)
                if entry is not None:
                    return entry
                self._make_room_now(name, self.estimate(name))
                self._loading += 1
                if self._loading > 1:
                    self._overlapped.update(n for n in self._load_locks if self._load_locks[n].locked())
            try:
                entry = self._load(name)
            finally:
                with self._lock:
                    self._loading -= 1
            return entry

    def _touch(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is not None:
            self._entries.move_to_end(name)
        return entry

    def _load(self, name: str) -> _Entry:
        gc.collect()  # what evictions freed is gone before the measurement starts
        before = self._measure()
        cfg = self.config
        model = self._loader(name, cfg.model_dir, runtime=cfg.runtime, threads=cfg.threads,
                             cache_dir=cfg.compiled_dir, lanes=name == self.default)
        after = self._measure()
        with self._lock:
            clean = name not in self._overlapped and before is not None and after is not None
            self._overlapped.discard(name)
            if clean and before is not None and after is not None:
                size = max(after - before, floor_bytes(cfg.model_dir, name))
            else:
                size = self.estimate(name)
            entry = self._entries[name] = _Entry(model, size, clean)
            self.loads += 1
        log.info("model %s %s loaded in %.1f s, %s %d MB (%d MB of NSFW_MODEL_MEMORY_MB=%d in use)", name,
                 model.version, model.load_seconds, "adding" if clean else "counted at", size // MB,
                 self.used_bytes() // MB, self.cap_bytes // MB)
        return entry

    def _make_room_now(self, name: str, size: int) -> None:
        """Under ``_lock``: drop idle models without a lane, least recently used first, until ``size`` fits
        (models with a lane are unloaded by :meth:`lane`, which can stop their batchers)."""
        if name == self.default:
            return
        default = self._entries.get(self.default)
        default_size = default.size if default is not None else self.estimate(self.default)
        if default_size + size > self.cap_bytes:
            raise ModelUnavailable(f"model {name} does not fit in NSFW_MODEL_MEMORY_MB={self.cap_bytes // MB} "
                                   "beside the default model", model=name)
        while self._used_locked() + size > self.cap_bytes:
            victim = next((n for n, e in self._entries.items()
                           if n != self.default and e.users == 0 and e.lane is None), None)
            if victim is None:
                raise ModelUnavailable(f"no room to load model {name}: the loaded models are all in use; "
                                       "retry later", model=name)
            self._entries.pop(victim)
            self.evictions += 1
            log.info("model %s unloaded (least recently used; NSFW_MODEL_MEMORY_MB=%d)", victim, self.cap_bytes // MB)

    def _used_locked(self) -> int:
        default = self._entries.get(self.default)
        return (default.size if default is not None else self.estimate(self.default)) + \
            sum(e.size for n, e in self._entries.items() if n != self.default)

    # ------------------------------------------------------------ the event loop

    async def start(self) -> Lane:
        """Load the default model (in a thread) and start its micro-batcher; on failure ``reason`` says why."""
        try:
            async with self.lane(None) as lane:
                self.reason = ""
                return lane
        except NSFWError as exc:
            self.reason = f"model failed to load: {exc.message}"
            raise
        except Exception as exc:  # a runtime may raise anything
            self.reason = f"model failed to load: {exc!r}"
            raise

    @property
    def ready(self) -> bool:
        """True once the default model's lane runs."""
        lane = self.default_lane()
        return lane is not None and lane.batcher.running

    def default_lane(self) -> Lane | None:
        """The default model's lane once started (None before)."""
        with self._lock:
            entry = self._entries.get(self.default)
            return entry.lane if entry is not None else None

    @contextlib.asynccontextmanager
    async def lane(self, name: str | None) -> AsyncIterator[Lane]:
        """The lane of ``name`` (None: the default model's) for the block; loaded and started on first use."""
        name = name or self.default
        entry = await self._lane_entry(name)
        entry.users += 1
        try:
            assert entry.lane is not None
            yield entry.lane
        finally:
            entry.users -= 1

    async def _lane_entry(self, name: str) -> _Entry:
        check_name(name)
        with self._lock:
            entry = self._touch(name)
        if entry is not None and entry.lane is not None:
            return entry
        lock = self._lane_locks.setdefault(name, asyncio.Lock())
        async with lock:
            with self._lock:
                entry = self._touch(name)
            if entry is None:
                await self._make_room(name, self.estimate(name))
                entry = await asyncio.to_thread(self._entry, name)
            if entry.lane is None:
                b = self.batching
                model = entry.model
                batcher = MicroBatcher(model, max_batch=b.max_batch,
                                       max_wait_s=b.batch_wait_ms / 1000.0 if model.batches else 0.0,
                                       queue_size=b.queue_size, expecting=self._expecting,
                                       on_batch=self._on_batch if name == self.default else None)
                batcher.start()
                entry.lane = Lane(model, batcher)
            if name != self.default:
                await self._make_room(None, 0)  # measured larger than estimated: back under the cap
            return entry

    async def _make_room(self, name: str | None, size: int) -> None:
        """Unload idle models (batchers stopped), least recently used first, until ``size`` more bytes fit."""
        if name == self.default:
            return
        if name is not None:
            with self._lock:
                default = self._entries.get(self.default)
                default_size = default.size if default is not None else self.estimate(self.default)
            if default_size + size > self.cap_bytes:
                raise ModelUnavailable(f"model {name} does not fit in NSFW_MODEL_MEMORY_MB={self.cap_bytes // MB} "
                                       "beside the default model", model=name)
        while True:
            with self._lock:
                if self._used_locked() + size <= self.cap_bytes:
                    return
                victim = next((n for n, e in self._entries.items()
                               if n != self.default and n != name and e.users == 0), None)
            if victim is None:
                if name is None:
                    return  # the model just loaded is in use; the next load makes room
                raise ModelUnavailable(f"no room to load model {name}: the loaded models are all serving "
                                       "requests; retry later", model=name)
            await self.unload(victim)

    async def unload(self, name: str) -> None:
        """Forget ``name`` (never the default) and stop its batcher."""
        if name == self.default:
            return
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is None:
                return
            self.evictions += 1
        log.info("model %s unloaded (least recently used; NSFW_MODEL_MEMORY_MB=%d)", name, self.cap_bytes // MB)
        if entry.lane is not None:
            await entry.lane.batcher.stop()

    async def stop(self) -> None:
        """Drain and stop every batcher (the models stay loaded for the pages until the process ends)."""
        self.reason = "the service is shutting down"
        with self._lock:
            lanes = [(n, e.lane) for n, e in self._entries.items() if e.lane is not None]
            for _, e in self._entries.items():
                e.lane = None
        for _, lane in lanes:
            assert lane is not None
            await lane.batcher.stop()

    async def close(self) -> None:
        """Stop every batcher and forget every model."""
        await self.stop()
        with self._lock:
            self._entries.clear()
