"""The ``litert`` runtime: each model compiled once to a ``.tflite`` file and run by LiteRT (XNNPACK).

Compiling needs TensorFlow (:func:`nsfw_core.inference.tfgraph.build_function`, then
``tf.lite.TFLiteConverter``), so it runs in a child process
(``python -m nsfw_core.inference.litert --compile-one ...``): the serving process never
imports TensorFlow, which saves memory and start-up time (BENCHMARKS.md compares
the two runtimes).
The child checks the compiled network against the TensorFlow function on
random inputs (largest difference at most :data:`MAX_COMPILE_DIFF`) before it
writes the file, atomically, as ``<cache_dir>/<Name>-<key>.tflite``; the key
hashes the model's verified bytes and :data:`COMPILER`, so a changed model or
compiler never reuses an old file.  A cached file that LiteRT cannot load is
compiled again.  Where ``cache_dir`` cannot be written, the model is compiled
into a temporary folder on every start and loaded from memory.

Shipped compilations
--------------------
The repository ships each model compiled, ``model/compiled/<Name>.tflite.xz``, with
``model/compiled/manifest.json`` giving each file's cache key, the SHA-256 and size of the
decompressed ``.tflite`` and the difference the converter measured against TensorFlow.  When
the cache has no file for a model, :func:`load_forward` unpacks the shipped one if its key is
the one this exact model and compiler would get (so a changed model or compiler never uses a
stale file) and its SHA-256 matches; only otherwise does it compile, which needs TensorFlow
(``requirements-convert.txt``).  So the runtime install has no TensorFlow and a first start
compiles nothing.  ``python -m nsfw_core.inference.litert --ship`` (with TensorFlow) compiles, checks
and writes the shipped files.

Public surface: :func:`load_forward` (the loader that :mod:`nsfw_core.inference.model` uses
for this runtime), :class:`LiteRTForward`, :func:`compiled_path`, :func:`compile_ahead`,
and the command line ``python -m nsfw_core.inference.litert [NAME ...]``, which compiles
ahead of time (a deploy's build step) into ``NSFW_COMPILED_DIR``.  This module never
imports :mod:`nsfw_core.inference.model`: the command checks what it compiled itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import lzma
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nsfw_core.base.cpus import available_cpus
from nsfw_core.base.errors import ModelError
from nsfw_core.base.files import atomic_write
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.settings import MODEL_NAMES, load_settings
from nsfw_core.inference.modelfiles import check_name, dequantise, read_verified
from nsfw_core.inference.runtime import starting, warm_up
from nsfw_core.inference.tfgraph import build_function, configure_tensorflow

log = logging.getLogger(__name__)

# part of every cache key: change it when the builder or the conversion changes.  tflite-2: the embedding
# (the pooled features the head reads) is a second output of the compiled model.
COMPILER = "tflite-2"
MAX_COMPILE_DIFF = 1e-4  # largest |LiteRT - TensorFlow| probability accepted when compiling
MAX_EMBEDDING_DIFF = 1e-3  # largest |LiteRT - TensorFlow| embedding value, relative to the largest value
COMPILE_TIMEOUT_S = 600.0
MAX_LANES = 4  # each lane holds its own packed weights (BENCHMARKS.md: what a lane costs)
SHIPPED_DIR = "compiled"  # under the model folder
SHIPPED_MANIFEST = "manifest.json"
SHIPPED_FORMAT = "nsfw-compiled/1"
MAX_TFLITE_BYTES = 256 << 20  # a shipped file never decompresses to more (InceptionV3: 85 MiB)
MISSING_PACKAGE = ("the litert runtime needs the ai-edge-litert package (pinned in requirements.txt); "
                   "install it or set NSFW_RUNTIME=tensorflow")


def cache_key(doc: dict[str, Any], blob: bytes) -> str:
    h = hashlib.sha256(COMPILER.encode())
    h.update(json.dumps(doc, sort_keys=True).encode())
    h.update(blob)
    return h.hexdigest()[:16]


def compiled_path(cache_dir: str | Path, name: str, doc: dict[str, Any], blob: bytes) -> Path:
    """Where the compiled form of this exact model lives in ``cache_dir``."""
    return Path(cache_dir) / f"{name}-{cache_key(doc, blob)}.tflite"


class LiteRTForward:
    """(N, S, S, 3) float32 -> (N, classes) through LiteRT interpreters, one image per invoke.

    The compiled model has two outputs, told apart by their shapes: the probabilities (1, classes) and
    the embedding (1, D); :meth:`with_embeddings` gives both from the same invoke, ``__call__`` the
    probabilities.

    One interpreter runs a lone image on all ``threads`` (lowest latency).  With
    ``lanes``, a batch of several images is shared out among that many more
    interpreters ("lanes", ``threads`` split between them, one each on a 2-core
    machine) that run in parallel.  On a small machine whose cores also decode
    and serve HTTP, a lane never waits inside an operator for a partner thread
    that the scheduler took away, as one multi-threaded forward pass does: less
    CPU per request under load (BENCHMARKS.md, "Lanes"), for one more copy of the
    packed weights per lane.  Thread-safe: calls hold a lock (``invoke`` releases
    the GIL, so other threads keep decoding).  Batch-1 input shapes never reallocate.
    """

    runtime = "litert"
    batches = False  # one image per invoke: a batch costs no less per image than its images one by one
    embedding_size = 0  # D, read from the compiled model's outputs

    def __init__(self, *, path: Path | None = None, content: bytes | None = None, threads: int = 0,
                 input_size: int, lanes: int = 0) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelError(MISSING_PACKAGE) from exc
        self.threads = threads or available_cpus()
        self._size = input_size
        self._source = path
        self._kwargs = {"model_path": str(path)} if path is not None else {"model_content": content}
        self._interpreter_class = Interpreter
        self._wide = self._open(self.threads)
        lanes = min(lanes, self.threads, MAX_LANES)
        self.lane_threads = [self.threads // lanes + (i < self.threads % lanes) for i in range(lanes)] \
            if lanes > 1 else []
        self._lanes = [self._open(n) for n in self.lane_threads]
        self.lanes = len(self._lanes)
        self._pool = ThreadPoolExecutor(max_workers=self.lanes - 1, thread_name_prefix="litert-lane") \
            if self._lanes else None
        self._lock = threading.Lock()

    def _open(self, threads: int) -> tuple[Any, int, int, int]:
        try:
            interp = self._interpreter_class(num_threads=threads, **self._kwargs)
            inp = interp.get_input_details()[0]
            interp.resize_tensor_input(inp["index"], [1, self._size, self._size, 3])
            interp.allocate_tensors()
            outs = interp.get_output_details()
        except (ValueError, RuntimeError, IndexError) as exc:
            raise ModelError(f"LiteRT cannot load the compiled model {self._source or '(in memory)'}: {exc}") from exc
        shapes = [tuple(int(d) for d in o["shape"]) for o in outs]
        probs = [o for o, shape in zip(outs, shapes, strict=True) if shape == (1, len(CLASS_NAMES))]
        features = [o for o, shape in zip(outs, shapes, strict=True) if len(shape) == 2 and shape[0] == 1
                    and shape[1] > len(CLASS_NAMES)]
        if inp["dtype"] != np.float32 or len(outs) != 2 or len(probs) != 1 or len(features) != 1:
            raise ModelError(f"compiled model {self._source} has input {inp['dtype']} and output shapes {shapes}; "
                             f"expected probabilities (1, {len(CLASS_NAMES)}) and an embedding (1, D)")
        self.embedding_size = shapes[outs.index(features[0])][1]
        return interp, inp["index"], probs[0]["index"], features[0]["index"]

    @staticmethod
    def _run(lane: tuple[Any, int, int, int], batch: np.ndarray, out: tuple[np.ndarray, np.ndarray]) -> None:
        interp, i, o, e = lane
        probs, features = out
        for k in range(batch.shape[0]):
            interp.set_tensor(i, batch[k:k + 1])
            interp.invoke()
            probs[k] = interp.get_tensor(o)[0]
            features[k] = interp.get_tensor(e)[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.with_embeddings(batch)[0]

    def with_embeddings(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) float32 -> ((N, classes) probabilities, (N, D) embeddings), each image in one invoke."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        probs = np.empty((n, len(CLASS_NAMES)), dtype=np.float32)
        features = np.empty((n, self.embedding_size), dtype=np.float32)
        with self._lock:
            if n < 2 or self._pool is None:
                self._run(self._wide, batch, (probs, features))
                return probs, features
            # Contiguous shares, one per lane; the calling thread runs the first.
            bounds = np.linspace(0, n, min(n, self.lanes) + 1).astype(int)
            # Fewer images than lanes: the spare lanes get no share (zip stops at the shortest).
            shares = [(lane, slice(a, b)) for lane, a, b in zip(self._lanes, bounds[:-1], bounds[1:], strict=False)]
            futures = [self._pool.submit(self._run, lane, batch[part], (probs[part], features[part]))
                       for lane, part in shares[1:]]
            lane, part = shares[0]
            try:
                self._run(lane, batch[part], (probs[part], features[part]))
            finally:  # never release the lock while a lane still runs
                wait(futures)
            for future in futures:
                future.result()
        return probs, features


def _shipped_manifest(model_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((model_dir / SHIPPED_DIR / SHIPPED_MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", model_dir / SHIPPED_DIR / SHIPPED_MANIFEST, exc)
        return {}
    return doc if isinstance(doc, dict) and doc.get("format") == SHIPPED_FORMAT else {}


def shipped(name: str, model_dir: Path, key: str) -> bytes | None:
    """The shipped compiled model for cache key ``key``, decompressed and verified; None when there is none.

    A file made for another key (another model version or compiler) is not used; one whose bytes do not
    match the manifest is logged and not used either.
    """
    entry = _shipped_manifest(model_dir).get("models", {}).get(name)
    if not isinstance(entry, dict):
        return None
    if entry.get("key") != key:
        log.info("the shipped %s was compiled from other model files or by another compiler: not used", name)
        return None
    path = model_dir / SHIPPED_DIR / str(entry.get("file", ""))
    try:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        content = decompressor.decompress(path.read_bytes(), max_length=MAX_TFLITE_BYTES + 1)
    except (OSError, lzma.LZMAError) as exc:
        log.warning("cannot read the shipped %s (%s): not used", path, exc)
        return None
    if (not decompressor.eof or len(content) > MAX_TFLITE_BYTES
            or hashlib.sha256(content).hexdigest() != entry.get("sha256")):
        log.warning("the shipped %s does not match its manifest: not used", path)
        return None
    return content


def _unpack_or_compile(name: str, model_dir: Path, key: str, out: Path) -> None:
    content = shipped(name, model_dir, key)
    if content is None:
        _compile_in_child(name, model_dir, out)
        return
    atomic_write(out, content)
    out.chmod(0o644)
    log.info("unpacked the shipped %s compiled for LiteRT into %s", name, out.parent)


def load_forward(name: str, model_dir: Path, doc: dict[str, Any], blob: bytes, *, cache_dir: Path,
                 threads: int = 0, lanes: int = 0) -> LiteRTForward:
    """The compiled model's forward pass: from the cache, else the shipped file, else compiled (a child process)."""
    size = int(doc["input_size"])
    key = cache_key(doc, blob)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache_dir, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        content = shipped(name, model_dir, key)
        if content is not None:
            log.warning("cannot write %s: running the shipped %s from memory", cache_dir, name)
            return LiteRTForward(content=content, threads=threads, input_size=size, lanes=lanes)
        log.warning("cannot write %s: compiling %s for LiteRT into a temporary folder", cache_dir, name)
        with tempfile.TemporaryDirectory(prefix="nsfw-compile-") as tmp:
            out = Path(tmp) / f"{name}.tflite"
            _compile_in_child(name, model_dir, out)
            return LiteRTForward(content=out.read_bytes(), threads=threads, input_size=size, lanes=lanes)
    path = compiled_path(cache_dir, name, doc, blob)
    if not path.exists():
        _unpack_or_compile(name, model_dir, key, path)
        _remove_stale(path)
    try:
        return LiteRTForward(path=path, threads=threads, input_size=size, lanes=lanes)
    except ModelError as exc:
        if isinstance(exc.__cause__, ImportError):
            raise
        log.warning("%s; unpacking or compiling it again", exc)
        path.unlink(missing_ok=True)
        _unpack_or_compile(name, model_dir, key, path)
        return LiteRTForward(path=path, threads=threads, input_size=size, lanes=lanes)


def _remove_stale(current: Path) -> None:
    """Drop older compilations of the same model (other keys) from the cache folder."""
    name = current.name.rsplit("-", 1)[0]
    for old in current.parent.glob(f"{name}-*.tflite"):
        if old != current and old.name.rsplit("-", 1)[0] == name:
            old.unlink(missing_ok=True)


def _compile_in_child(name: str, model_dir: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "nsfw_core.inference.litert", "--compile-one", name, "--model-dir", str(model_dir),
           "--out", str(out)]
    # The child finds nsfw_core as the parent does: the project is an installed package, so from any
    # working directory (which the child inherits, with it the meaning of relative paths).
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    log.info("compiling %s for LiteRT, once (TensorFlow in a child process, a few seconds)...", name)
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"compiling {name} for LiteRT took longer than {COMPILE_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise ModelError(f"cannot start the LiteRT compiler: {exc}") from exc
    if done.returncode < 0:
        hint = " (out of memory? it needs about 1 GB: compile ahead with python -m nsfw_core.inference.litert)" \
            if done.returncode == -signal.SIGKILL else ""
        raise ModelError(f"compiling {name} for LiteRT failed: killed by signal {-done.returncode}{hint}")
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        if "No module named 'tensorflow'" in reason:
            reason = (f"no shipped compiled file matches this {name}, and compiling one needs TensorFlow: "
                      "pip install -r requirements-convert.txt")
        raise ModelError(f"compiling {name} for LiteRT failed: {reason}")


def compile_to(name: str, model_dir: Path, out: Path) -> float:
    """Build the TensorFlow function, convert it, check it, write ``out``; returns the largest difference.

    Runs in the child process: it imports TensorFlow.  Both outputs are checked: the probabilities
    against :data:`MAX_COMPILE_DIFF`, the embedding against :data:`MAX_EMBEDDING_DIFF` of its largest value.
    """
    return _compile_checked(name, model_dir, out)[0]


def _compile_checked(name: str, model_dir: Path, out: Path) -> tuple[float, float, int]:
    """:func:`compile_to`, also returning the embedding's relative difference and its size."""
    doc, blob = read_verified(model_dir, name)
    fn = build_function(doc, dequantise(doc, blob), embeddings=True)
    tf = configure_tensorflow()
    try:
        content = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn).convert()
    except Exception as exc:  # the converter raises ConverterError and others
        raise ModelError(f"TensorFlow Lite conversion of {name} failed: {exc}") from exc
    size = int(doc["input_size"])
    x = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    lite = LiteRTForward(content=content, threads=1, input_size=size)
    probs, features = lite.with_embeddings(x)
    want_probs, want_features = (t.numpy() for t in fn(x))
    diff = float(np.abs(probs - want_probs).max())
    if not diff <= MAX_COMPILE_DIFF:
        raise ModelError(f"compiled {name} differs from TensorFlow by {diff:.2e} (limit {MAX_COMPILE_DIFF:.0e})")
    scale = max(float(np.abs(want_features).max()), 1e-6)
    feature_diff = float(np.abs(features - want_features).max()) / scale
    if not feature_diff <= MAX_EMBEDDING_DIFF:
        raise ModelError(f"the compiled {name}'s embedding differs from TensorFlow's by {feature_diff:.2e} of its "
                         f"largest value (limit {MAX_EMBEDDING_DIFF:.0e})")
    atomic_write(out, content)
    out.chmod(0o644)  # a cache, not a secret: a build user and a run user may differ
    return diff, feature_diff, lite.embedding_size


def ship(name: str, model_dir: Path) -> dict[str, Any]:
    """Compile ``name`` (TensorFlow), check it, and write it xz-compressed into ``model_dir/compiled``.

    Returns the manifest entry, which is also written into the manifest (atomically, the other entries
    kept).  An unchanged compilation leaves the shipped file as it is.
    """
    check_name(name)
    doc, blob = read_verified(model_dir, name)
    folder = model_dir / SHIPPED_DIR
    folder.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nsfw-ship-") as tmp:
        out = Path(tmp) / f"{name}.tflite"
        diff, feature_diff, dim = _compile_checked(name, model_dir, out)
        content = out.read_bytes()
    import tensorflow as tf  # compile_to imported it already

    key = cache_key(doc, blob)
    entry = {"key": key, "file": f"{name}.tflite.xz", "sha256": hashlib.sha256(content).hexdigest(),
             "bytes": len(content), "max_diff_vs_tensorflow": diff, "compiler": COMPILER,
             "tensorflow": tf.__version__, "embedding_size": dim,
             "max_embedding_diff_vs_tensorflow": feature_diff}
    manifest = _shipped_manifest(model_dir) or {"format": SHIPPED_FORMAT, "models": {}}
    old = manifest["models"].get(name, {})
    if old.get("sha256") != entry["sha256"] or shipped(name, model_dir, key) is None:
        atomic_write(folder / entry["file"], lzma.compress(content, format=lzma.FORMAT_XZ, preset=9))
        (folder / entry["file"]).chmod(0o644)  # committed to the repository: readable by every user
    else:
        entry = {**entry, "max_diff_vs_tensorflow": old.get("max_diff_vs_tensorflow", diff),
                 "max_embedding_diff_vs_tensorflow": old.get("max_embedding_diff_vs_tensorflow", feature_diff)}
    manifest["models"][name] = entry
    manifest["models"] = dict(sorted(manifest["models"].items()))
    atomic_write(folder / SHIPPED_MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    (folder / SHIPPED_MANIFEST).chmod(0o644)
    return entry


def compile_ahead(name: str, model_dir: Path, cache_dir: Path) -> float:
    """Compile ``name`` into ``cache_dir`` unless it is there, then load and warm it up; returns the seconds taken.

    What the service's first start would do for this model on one interpreter, ahead of time.
    """
    check_name(name)
    start = time.perf_counter()
    doc, blob = read_verified(model_dir, name)
    with starting(name):
        forward = load_forward(name, model_dir, doc, blob, cache_dir=cache_dir)
        warm_up(name, forward, int(doc["input_size"]))
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nsfw_core.inference.litert",
                                     description="Compile models for the LiteRT runtime ahead of time.")
    parser.add_argument("names", nargs="*",
                        help=f"models to compile (default: NSFW_MODEL); any of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--all", action="store_true", help="compile all three models (the pages can switch models)")
    parser.add_argument("--ship", action="store_true",
                        help="compile (TensorFlow), check and write the shipped files into <NSFW_MODEL_DIR>/compiled")
    parser.add_argument("--compile-one", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.compile_one:  # the child process of _compile_in_child
            compile_to(args.compile_one, Path(args.model_dir), Path(args.out))
            return 0
        config = load_settings().model_config
        names = MODEL_NAMES if args.all else args.names or [config.name]
        if args.ship:
            for name in MODEL_NAMES if args.all or not args.names else args.names:
                entry = ship(name, Path(config.model_dir))
                print(f"{name}: shipped {entry['file']} ({entry['bytes']} bytes unpacked, "
                      f"max difference from TensorFlow {entry['max_diff_vs_tensorflow']:.1e})")
            return 0
        for name in names:
            seconds = compile_ahead(name, Path(config.model_dir), Path(config.compiled_dir))
            print(f"{name}: ready for LiteRT in {seconds:.1f} s")
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
