"""The nsfw_model networks: the :class:`Model` type and the choice of runtime.

Loading reads and verifies the model's files (:mod:`nsfw_core.inference.modelfiles`), then one
of two runtimes runs the network:

- ``litert`` (default): the network compiled once to a ``.tflite`` file and
  run by LiteRT with XNNPACK (:mod:`nsfw_core.inference.litert`); TensorFlow is only
  imported by the compiler's child process.
- ``tensorflow``: the network as a traced ``tf.function`` in this process
  (:mod:`nsfw_core.inference.tfgraph`), which the compiler also starts from.

Images are prepared as nsfwjs prepares them (:mod:`nsfw_core.images.preprocess`).

Public surface: :func:`load_model` (load, verify and warm up one model), :class:`Model` with
``preprocess`` / ``predict`` / ``predict_with_embeddings`` / ``classify``, :func:`scores_dict`, and, re-exported from
:mod:`nsfw_core.images.preprocess`, :func:`resize_bilinear`.  The process keeps each model once, in
its :class:`~nsfw_core.inference.registry.ModelRegistry` (the context's ``models``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nsfw_core.base.errors import ModelError
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.settings import RUNTIMES, load_settings
from nsfw_core.images.preprocess import preprocess, resize_bilinear
from nsfw_core.inference.litert import MAX_LANES, load_forward
from nsfw_core.inference.modelfiles import check_name, dequantise, read_verified, version
from nsfw_core.inference.runtime import Forward, starting, warm_up
from nsfw_core.inference.tfgraph import TensorFlowForward

__all__ = ["Model", "load_model", "resize_bilinear", "scores_dict"]


class Model:
    """One loaded network. Thread-safe: ``predict`` may be called from any thread.

    How it runs is its runtime's (``forward``): ``runtime``, ``threads``, ``lanes``, and
    ``batches``, True when one forward pass over N images costs less per image than N passes
    (the ``tensorflow`` runtime); the micro-batcher only waits for more images then.
    """

    classes: tuple[str, ...] = CLASS_NAMES

    def __init__(self, name: str, input_size: int, version: str, forward: Forward) -> None:
        self.name = name
        self.input_size = input_size
        self.version = version
        self._forward = forward
        self.load_seconds = 0.0
        self._embedding_size = 0  # known once asked (one inference of a blank image)

    @property
    def runtime(self) -> str:
        return self._forward.runtime

    @property
    def batches(self) -> bool:
        return self._forward.batches

    @property
    def threads(self) -> int:
        return self._forward.threads

    @property
    def lanes(self) -> int:
        return self._forward.lanes

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (S, S, 3) float32 in [0, 1], as nsfwjs prepares its input."""
        return preprocess(rgb, self.input_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 -> (N, 5) class probabilities."""
        return self.predict_with_embeddings(batch)[0]

    def predict_with_embeddings(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) float32 -> ((N, 5) class probabilities, (N, D) embeddings) from the same forward pass.

        The embedding is the pooled feature vector the model's classification head reads
        (:data:`embedding_size` values; :mod:`nsfw_core.inference.embeddings` says what reads it).
        """
        if batch.ndim != 4 or batch.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"batch must be (N, {self.input_size}, {self.input_size}, 3), got {batch.shape}")
        if batch.shape[0] == 0:
            return (np.zeros((0, len(self.classes)), dtype=np.float32),
                    np.zeros((0, self.embedding_size), dtype=np.float32))
        return self._forward.with_embeddings(batch)

    @property
    def embedding_size(self) -> int:
        """D, the length of one embedding (1792 for MobileNetV2Mid, 1280 MobileNetV2, 2048 InceptionV3)."""
        if not self._embedding_size:
            blank = np.zeros((1, self.input_size, self.input_size, 3), dtype=np.float32)
            self._embedding_size = int(self._forward.with_embeddings(blank)[1].shape[1])
        return self._embedding_size

    def classify(self, images: Sequence[np.ndarray]) -> list[dict[str, float]]:
        """Decoded RGB images -> one {class: probability} dict each."""
        if not images:
            return []
        batch = np.stack([self.preprocess(im) for im in images])
        return [scores_dict(row) for row in self.predict(batch)]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "input_size": self.input_size}


def scores_dict(row: Sequence[float] | np.ndarray) -> dict[str, float]:
    """One row of :meth:`Model.predict` as {class: probability}."""
    return {name: float(p) for name, p in zip(CLASS_NAMES, row, strict=True)}


def load_model(name: str, model_dir: str | Path, *, runtime: str | None = None, threads: int = 0,
               cache_dir: str | Path | None = None, lanes: bool = False) -> Model:
    """Load, verify and warm up one model (the service keeps it in its registry).

    ``runtime`` and ``cache_dir`` (where the ``litert`` runtime keeps compiled models) default
    to the settings table's defaults (``NSFW_RUNTIME``, ``NSFW_COMPILED_DIR``).
    ``threads``: threads of one forward pass (0: :func:`~nsfw_core.base.cpus.available_cpus`, which
    counts a container's CPU quota). ``lanes`` (``litert`` only): also run the images of a batch
    on parallel single-threaded interpreters (:class:`~nsfw_core.inference.litert.LiteRTForward`): the
    model that serves the API under load, at the cost of one more copy of the packed weights
    per thread (up to :data:`~nsfw_core.inference.litert.MAX_LANES`).
    """
    runtime, cache_dir = _table_defaults(runtime, cache_dir)
    check_name(name)
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    start = time.perf_counter()
    model_dir = Path(model_dir)
    doc, blob = read_verified(model_dir, name)
    model_version = version(doc, blob)
    size = int(doc["input_size"])
    forward: Forward
    with starting(name):
        if runtime == "litert":
            forward = load_forward(name, model_dir, doc, blob, threads=threads, lanes=MAX_LANES if lanes else 0,
                                   cache_dir=cache_dir)
        else:
            forward = TensorFlowForward(doc, dequantise(doc, blob), threads=threads)
        warm_up(name, forward, size)
    model = Model(name, size, model_version, forward)
    model.load_seconds = time.perf_counter() - start
    return model


def _table_defaults(runtime: str | None, cache_dir: str | Path | None) -> tuple[str, Path]:
    """``runtime`` and ``cache_dir``, the settings table's defaults where they are None."""
    if runtime is None or cache_dir is None:
        table = load_settings(environ={}).model_config
        runtime = table.runtime if runtime is None else runtime
        cache_dir = table.compiled_dir if cache_dir is None else cache_dir
    return runtime, Path(cache_dir)
