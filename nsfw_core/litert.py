"""The ``litert`` runtime: each model compiled once to a ``.tflite`` file and run by LiteRT (XNNPACK).

Compiling needs TensorFlow (:func:`nsfw_core.tfgraph.build_function`, then
``tf.lite.TFLiteConverter``), so it runs in a child process
(``python -m nsfw_core.litert --compile-one ...``): the serving process never
imports TensorFlow, which saves about 570 MB of RSS and 3.5 s of start-up.
The child checks the compiled network against the TensorFlow function on
random inputs (largest difference at most :data:`MAX_COMPILE_DIFF`) before it
writes the file, atomically, as ``<cache_dir>/<Name>-<key>.tflite``; the key
hashes the model's verified bytes and :data:`COMPILER`, so a changed model or
compiler never reuses an old file.  A cached file that LiteRT cannot load is
compiled again.  Where ``cache_dir`` cannot be written, the model is compiled
into a temporary folder on every start and loaded from memory.

Public surface: :func:`load_forward` (the loader used by
:func:`nsfw_core.model.load_model`), :class:`LiteRTForward`, :func:`compiled_path`,
and the command line ``python -m nsfw_core.litert [NAME ...]``, which compiles
ahead of time (a deploy's build step) into ``NSFW_COMPILED_DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .cpus import available_cpus
from .errors import ModelError
from .files import atomic_write
from .settings import CLASS_NAMES, MODEL_NAMES, ROOT

log = logging.getLogger(__name__)

COMPILER = "tflite-1"  # part of every cache key: change it when the builder or the conversion changes
MAX_COMPILE_DIFF = 1e-4  # largest |LiteRT - TensorFlow| probability accepted when compiling
COMPILE_TIMEOUT_S = 600.0
MISSING_PACKAGE = ("the litert runtime needs the ai-edge-litert package (pinned in requirements.txt); "
                   "install it or set NSFW_RUNTIME=tensorflow")


def cache_key(doc: dict, blob: bytes) -> str:
    h = hashlib.sha256(COMPILER.encode())
    h.update(json.dumps(doc, sort_keys=True).encode())
    h.update(blob)
    return h.hexdigest()[:16]


def compiled_path(cache_dir: str | Path, name: str, doc: dict, blob: bytes) -> Path:
    """Where the compiled form of this exact model lives in ``cache_dir``."""
    return Path(cache_dir) / f"{name}-{cache_key(doc, blob)}.tflite"


class LiteRTForward:
    """(N, S, S, 3) float32 -> (N, classes) through one LiteRT interpreter, one image per invoke.

    Thread-safe: an interpreter may run one inference at a time, so calls hold a
    lock (``invoke`` releases the GIL, so other threads keep decoding).  Batch 1
    is used because XNNPACK gains nothing from larger batches on this network
    (BENCHMARKS.md) and a fixed input shape never reallocates.
    """

    def __init__(self, *, path: Path | None = None, content: bytes | None = None, threads: int = 0,
                 input_size: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelError(MISSING_PACKAGE) from exc
        self.threads = threads or available_cpus()
        try:
            if path is not None:
                self._interp = Interpreter(model_path=str(path), num_threads=self.threads)
            else:
                self._interp = Interpreter(model_content=content, num_threads=self.threads)
            inp = self._interp.get_input_details()[0]
            self._interp.resize_tensor_input(inp["index"], [1, input_size, input_size, 3])
            self._interp.allocate_tensors()
            out = self._interp.get_output_details()[0]
        except (ValueError, RuntimeError, IndexError) as exc:
            raise ModelError(f"LiteRT cannot load the compiled model {path or '(in memory)'}: {exc}") from exc
        if inp["dtype"] != np.float32 or tuple(out["shape"]) != (1, len(CLASS_NAMES)):
            raise ModelError(f"compiled model {path} has input {inp['dtype']} and output shape {out['shape']}")
        self._in, self._out = inp["index"], out["index"]
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        out = np.empty((batch.shape[0], len(CLASS_NAMES)), dtype=np.float32)
        with self._lock:
            for i in range(batch.shape[0]):
                self._interp.set_tensor(self._in, batch[i:i + 1])
                self._interp.invoke()
                out[i] = self._interp.get_tensor(self._out)[0]
        return out


def load_forward(name: str, model_dir: Path, doc: dict, blob: bytes, *, cache_dir: Path,
                 threads: int = 0) -> LiteRTForward:
    """The compiled model's forward pass, compiling it first (in a child process) when needed."""
    size = int(doc["input_size"])
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache_dir, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        log.warning("cannot write %s: compiling %s for LiteRT into a temporary folder", cache_dir, name)
        with tempfile.TemporaryDirectory(prefix="nsfw-compile-") as tmp:
            out = Path(tmp) / f"{name}.tflite"
            _compile_in_child(name, model_dir, out)
            return LiteRTForward(content=out.read_bytes(), threads=threads, input_size=size)
    path = compiled_path(cache_dir, name, doc, blob)
    if not path.exists():
        _compile_in_child(name, model_dir, path)
        _remove_stale(path)
    try:
        return LiteRTForward(path=path, threads=threads, input_size=size)
    except ModelError as exc:
        if isinstance(exc.__cause__, ImportError):
            raise
        log.warning("%s; compiling it again", exc)
        path.unlink(missing_ok=True)
        _compile_in_child(name, model_dir, path)
        return LiteRTForward(path=path, threads=threads, input_size=size)


def _remove_stale(current: Path) -> None:
    """Drop older compilations of the same model (other keys) from the cache folder."""
    name = current.name.rsplit("-", 1)[0]
    for old in current.parent.glob(f"{name}-*.tflite"):
        if old != current and old.name.rsplit("-", 1)[0] == name:
            old.unlink(missing_ok=True)


def _compile_in_child(name: str, model_dir: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "nsfw_core.litert", "--compile-one", name, "--model-dir", str(model_dir),
           "--out", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    log.info("compiling %s for LiteRT, once (TensorFlow in a child process, a few seconds)...", name)
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"compiling {name} for LiteRT took longer than {COMPILE_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise ModelError(f"cannot start the LiteRT compiler: {exc}") from exc
    if done.returncode < 0:
        hint = " (out of memory? it needs about 1 GB: compile ahead with python -m nsfw_core.litert)" \
            if done.returncode == -signal.SIGKILL else ""
        raise ModelError(f"compiling {name} for LiteRT failed: killed by signal {-done.returncode}{hint}")
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise ModelError(f"compiling {name} for LiteRT failed: {reason}")


def compile_to(name: str, model_dir: Path, out: Path) -> float:
    """Build the TensorFlow function, convert it, check it, write ``out``; returns the largest difference.

    Runs in the child process: it imports TensorFlow.
    """
    from .model import dequantise, read_verified
    from .tfgraph import build_function, configure_tensorflow

    doc, blob = read_verified(model_dir, name)
    fn = build_function(doc, dequantise(doc, blob))
    tf = configure_tensorflow()
    try:
        content = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn).convert()
    except Exception as exc:  # the converter raises ConverterError and others
        raise ModelError(f"TensorFlow Lite conversion of {name} failed: {exc}") from exc
    size = int(doc["input_size"])
    x = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    diff = float(np.abs(LiteRTForward(content=content, threads=1, input_size=size)(x) - fn(x).numpy()).max())
    if not diff <= MAX_COMPILE_DIFF:
        raise ModelError(f"compiled {name} differs from TensorFlow by {diff:.2e} (limit {MAX_COMPILE_DIFF:.0e})")
    atomic_write(out, content)
    out.chmod(0o644)  # a cache, not a secret: a build user and a run user may differ
    return diff


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nsfw_core.litert",
                                     description="Compile models for the LiteRT runtime ahead of time.")
    parser.add_argument("names", nargs="*", help=f"models to compile (default: NSFW_MODEL); any of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--all", action="store_true", help="compile all three models (the pages can switch models)")
    parser.add_argument("--compile-one", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.compile_one:  # the child process of _compile_in_child
            compile_to(args.compile_one, Path(args.model_dir), Path(args.out))
            return 0
        from .model import load_model
        from .settings import load_settings

        settings = load_settings()
        for name in MODEL_NAMES if args.all else args.names or [settings.model]:
            model = load_model(name, settings.model_dir, runtime="litert",
                               cache_dir=settings.compiled_dir)
            print(f"{name}: ready for LiteRT in {model.load_seconds:.1f} s")
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
