"""The nsfw_model networks: loading, preprocessing and inference.

``model/<Name>/model.json`` holds a TF.js topology and a table of
uint8-quantised weights stored in ``weights.bin`` (see
``tools/convert_nsfwjs.py``).  Loading checks every file against the sha256 in
``model/manifest.json`` and dequantises (``q * scale + min``); then one of two
runtimes runs the network:

- ``litert`` (default): the network compiled once to a ``.tflite`` file and
  run by LiteRT with XNNPACK (:mod:`nsfw_core.litert`); TensorFlow is only
  imported by the compiler's child process.
- ``tensorflow``: the network as a traced ``tf.function`` in this process
  (:mod:`nsfw_core.tfgraph`), which the compiler also starts from.

Public surface: :func:`get_model` (cached, one copy per process), :func:`load_for`
(the same, from the settings),
:func:`load_model` (uncached), :class:`Model` with ``preprocess`` /
``predict`` / ``classify``, and :func:`resize_bilinear`, the nsfwjs
preprocessing (``align_corners=True`` bilinear).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .cpus import available_cpus
from .errors import ModelError
from .settings import CLASS_NAMES, MODEL_NAMES, ROOT, RUNTIMES

DEFAULT_MODEL = "MobileNetV2Mid"
FORMAT = "nsfw-core-model/1"
DEFAULT_RUNTIME = "litert"
DEFAULT_CACHE_DIR = ROOT / "var" / "compiled"  # <NSFW_DATA_DIR>/compiled with the default data dir

# ---------------------------------------------------------------- preprocessing


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, C) array to (size, size, C) float32, bilinear, align_corners=True.

    The same sampling as ``tf.image.resizeBilinear(img, [size, size], true)`` in
    TF.js (and TF's legacy ``align_corners``): output pixel i reads input
    coordinate ``i * (in - 1) / (size - 1)``.  Only the four neighbours of each
    output pixel are gathered and converted to float, so the cost (about 1 ms)
    does not grow with the input's size.
    """
    h, w = image.shape[:2]
    ys, y0, y1 = _axis(h, size)
    xs, x0, x1 = _axis(w, size)
    # Take the sampled rows first (cache-friendly) unless the image is both wider than tall and
    # wider than _WIDE; then the sampled columns.  Either way the intermediate holds at most
    # size x max(min(H, W), _WIDE) pixels, whatever the aspect ratio (rows first on a
    # 2,000,000x1 image took 2.6 GB).
    if w <= h or w <= _WIDE:
        near, far = np.take(image, y0, axis=0), np.take(image, y1, axis=0)  # (size, w, C)
        top_left, top_right = np.take(near, x0, axis=1), np.take(near, x1, axis=1)
        left, right = np.take(far, x0, axis=1), np.take(far, x1, axis=1)
    else:
        near, far = np.take(image, x0, axis=1), np.take(image, x1, axis=1)  # (h, size, C)
        top_left, top_right = np.take(near, y0, axis=0), np.take(far, y0, axis=0)
        left, right = np.take(near, y1, axis=0), np.take(far, y1, axis=0)
    top_left, top_right = top_left.astype(np.float32), top_right.astype(np.float32)
    left, right = left.astype(np.float32), right.astype(np.float32)
    wy = ys[:, None, None]
    left -= top_left  # left = top_left + (bottom_left - top_left) * wy, in place
    left *= wy
    left += top_left
    right -= top_right
    right *= wy
    right += top_right
    right -= left  # out = left + (right - left) * wx
    right *= xs[None, :, None]
    right += left
    return right


_WIDE = 8192


def _axis(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = (n - 1) / (size - 1) if size > 1 else 0.0
    coord = np.arange(size, dtype=np.float64) * scale
    lo = np.floor(coord).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    return (coord - lo).astype(np.float32), lo, hi


# ---------------------------------------------------------------- loading


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(model_dir: Path, name: str) -> tuple[dict, bytes]:
    manifest_path = model_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"]
    except FileNotFoundError as exc:
        raise ModelError(f"model manifest not found: {manifest_path}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model manifest unreadable: {manifest_path}: {exc}") from exc
    for rel in (f"{name}/model.json", f"{name}/weights.bin"):
        path = model_dir / rel
        if rel not in expected:
            raise ModelError(f"{rel} is not listed in {manifest_path}")
        try:
            digest = _sha256(path)
        except OSError as exc:
            raise ModelError(f"model file missing or unreadable: {path}: {exc.strerror or exc}") from exc
        if digest != expected[rel]:
            raise ModelError(f"model file corrupt (sha256 mismatch): {path}")
    try:
        doc = json.loads((model_dir / name / "model.json").read_text())
        blob = (model_dir / name / "weights.bin").read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model {name}: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise ModelError(f"{name}/model.json has format {doc.get('format')!r}, expected {FORMAT!r}")
    return doc, blob


def dequantise(doc: dict, blob: bytes) -> dict[str, np.ndarray]:
    raw = np.frombuffer(blob, dtype=np.uint8)
    weights: dict[str, np.ndarray] = {}
    for w in doc["weights"]:
        shape = tuple(w["shape"])
        n = int(np.prod(shape)) if shape else 1
        q = raw[w["offset"]:w["offset"] + n]
        if q.size != n:
            raise ModelError(f"weights.bin too short for {w['name']}")
        weights[w["name"]] = (q.astype(np.float32) * np.float32(w["scale"]) + np.float32(w["min"])).reshape(shape)
    return weights


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
        out = resize_bilinear(rgb, self.input_size)
        out *= np.float32(1.0 / 255.0)
        return out

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


def scores_dict(row: Sequence[float]) -> dict[str, float]:
    return {name: float(p) for name, p in zip(CLASS_NAMES, row)}


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
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    start = time.perf_counter()
    model_dir = Path(model_dir)
    doc, blob = read_verified(model_dir, name)
    version = f"{doc['source'].split()[0]}+{hashlib.sha256(blob).hexdigest()[:12]}"
    size = int(doc["input_size"])
    try:
        if runtime == "litert":
            from .litert import MAX_LANES, load_forward

            forward = load_forward(name, model_dir, doc, blob, threads=threads, lanes=MAX_LANES if lanes else 0,
                                   cache_dir=Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR)
            model = Model(name, size, version, forward, runtime=runtime, batches=False, threads=forward.threads,
                          lanes=forward.lanes)
        else:
            from .tfgraph import build_function, tensorflow_forward

            threads = threads or available_cpus()
            fn = build_function(doc, dequantise(doc, blob), threads=threads)
            model = Model(name, size, version, tensorflow_forward(fn), runtime=runtime, batches=True,
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
