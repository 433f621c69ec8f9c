"""The nsfw_model networks: loading, preprocessing and inference.

Loading reads and verifies the model's files (:mod:`nsfw_core.modelfiles`), then one
of two runtimes runs the network:

- ``litert`` (default): the network compiled once to a ``.tflite`` file and
  run by LiteRT with XNNPACK (:mod:`nsfw_core.litert`); TensorFlow is only
  imported by the compiler's child process.
- ``tensorflow``: the network as a traced ``tf.function`` in this process
  (:mod:`nsfw_core.tfgraph`), which the compiler also starts from.

Images are prepared as nsfwjs prepares them (:mod:`nsfw_core.preprocess`).

Public surface: :func:`get_model` (cached, one copy per process), :func:`load_for`
(the same, from the settings),
:func:`load_model` (uncached), :class:`Model` with ``preprocess`` /
``predict`` / ``classify``, and, re-exported from :mod:`nsfw_core.preprocess`,
:func:`resize_bilinear`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .cpus import available_cpus
from .errors import ModelError
from .modelfiles import check_name, dequantise, read_verified, version
from .preprocess import preprocess, resize_bilinear
from .settings import CLASS_NAMES, RUNTIMES, ROOT

__all__ = ["DEFAULT_MODEL", "DEFAULT_RUNTIME", "Model", "get_model", "load_for", "load_model", "resize_bilinear",
           "scores_dict"]

DEFAULT_MODEL = "MobileNetV2Mid"
DEFAULT_RUNTIME = "litert"
DEFAULT_CACHE_DIR = ROOT / "var" / "compiled"  # <NSFW_DATA_DIR>/compiled with the default data dir


# ---------------------------------------------------------------- the model


class Model:
    """One loaded network. Thread-safe: ``predict`` may be called from any thread.

    ``batches`` is True when one forward pass over N images costs less per image
    than N passes (the ``tensorflow`` runtime); the micro-batcher only waits for
    more images then.
    """

    classes: tuple[str, ...] = CLASS_NAMES

    def __init__(self, name: str, input_size: int, version: str, forward: Callable[[np.ndarray], np.ndarray],
                 *, runtime: str, batches: bool, threads: int = 0, lanes: int = 0, function: Any = None) -> None:
        self.name = name
        self.input_size = input_size
        self.version = version
        self.runtime = runtime
        self.batches = batches
        self.threads = threads
        self.lanes = lanes  # parallel interpreters for batches (litert only; 0: none)
        self.function = function  # the tf.function (tensorflow runtime only)
        self._forward = forward
        self.load_seconds = 0.0

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (S, S, 3) float32 in [0, 1], as nsfwjs prepares its input."""
        return preprocess(rgb, self.input_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 -> (N, 5) class probabilities."""
        if batch.ndim != 4 or batch.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"batch must be (N, {self.input_size}, {self.input_size}, 3), got {batch.shape}")
        if batch.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self._forward(batch)

    def classify(self, images: Sequence[np.ndarray]) -> list[dict[str, float]]:
        """Decoded RGB images -> one {class: probability} dict each."""
        if not images:
            return []
        batch = np.stack([self.preprocess(im) for im in images])
        return [scores_dict(row) for row in self.predict(batch)]

    def warm_up(self) -> None:
        """Run one inference so the first request does not pay for set-up; checks the output."""
        probs = self.predict(np.zeros((1, self.input_size, self.input_size, 3), dtype=np.float32))
        if probs.shape != (1, len(self.classes)) or not np.isfinite(probs).all() or abs(float(probs.sum()) - 1) > 1e-3:
            raise ModelError(f"model {self.name} failed its warm-up inference: {probs}")

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "input_size": self.input_size}


def scores_dict(row: Sequence[float] | np.ndarray) -> dict[str, float]:
    return {name: float(p) for name, p in zip(CLASS_NAMES, row, strict=True)}


def load_model(name: str = DEFAULT_MODEL, model_dir: str | Path = "model", *, runtime: str = DEFAULT_RUNTIME,
               threads: int = 0, cache_dir: str | Path | None = None, lanes: bool = False) -> Model:
    """Load, verify and warm up one model (uncached; use :func:`get_model` in the service).

    ``threads``: threads of one forward pass (0: :func:`~nsfw_core.cpus.available_cpus`, which
    counts a container's CPU quota). ``cache_dir``:
    where the ``litert`` runtime keeps compiled models (default ``var/compiled``). ``lanes``
    (``litert`` only): also run the images of a batch on parallel single-threaded
    interpreters (:class:`~nsfw_core.litert.LiteRTForward`): the model that serves the API
    under load, at the cost of one more copy of the packed weights per thread (up to 4).
    """
    check_name(name)
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    start = time.perf_counter()
    model_dir = Path(model_dir)
    doc, blob = read_verified(model_dir, name)
    model_version = version(doc, blob)
    size = int(doc["input_size"])
    try:
        if runtime == "litert":
            from .litert import MAX_LANES, load_forward

            forward = load_forward(name, model_dir, doc, blob, threads=threads, lanes=MAX_LANES if lanes else 0,
                                   cache_dir=Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR)
            model = Model(name, size, model_version, forward, runtime=runtime, batches=False, threads=forward.threads,
                          lanes=forward.lanes)
        else:
            from .tfgraph import build_function, tensorflow_forward

            threads = threads or available_cpus()
            fn = build_function(doc, dequantise(doc, blob), threads=threads)
            model = Model(name, size, model_version, tensorflow_forward(fn), runtime=runtime, batches=True,
                          threads=threads, function=fn)
        model.warm_up()
    except ModelError as exc:
        raise ModelError(f"model {name}: {exc}") from exc
    except Exception as exc:  # TensorFlow raises many types for a broken graph
        raise ModelError(f"model {name} failed to run: {exc}") from exc
    model.load_seconds = time.perf_counter() - start
    return model


_cache: dict[tuple, Model] = {}
_cache_lock = threading.Lock()


def get_model(name: str = DEFAULT_MODEL, model_dir: str | Path = "model", *, runtime: str = DEFAULT_RUNTIME,
              threads: int = 0, cache_dir: str | Path | None = None, lanes: bool = False) -> Model:
    """The process-wide copy of a model, loaded on first use (shared by the API and the UI)."""
    key = (name, str(Path(model_dir).resolve()), runtime, threads, lanes)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _cache[key] = load_model(name, model_dir, runtime=runtime, threads=threads,
                                             cache_dir=cache_dir, lanes=lanes)
        return model


def load_for(settings: Any, name: str | None = None) -> Model:
    """The process-wide copy of ``name`` (default: the configured model) with the settings' runtime.

    The configured model serves the API, so it gets parallel lanes; the others, which
    only the pages use, one interpreter each (InceptionV3 packs to about 190 MB).
    """
    name = name or settings.model
    return get_model(name, settings.model_dir, runtime=settings.runtime, threads=settings.model_threads,
                     cache_dir=settings.compiled_dir, lanes=name == settings.model)
