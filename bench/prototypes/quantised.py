"""Would a quantised MobileNetV2Mid keep the fidelity bound?  Measured, not used by the service.

Run with the project's venv: ``python bench/prototypes/quantised.py [--seconds 2]``.
Converts the same TensorFlow function the ``litert`` runtime compiles three ways
(float32 as served; dynamic-range int8 weights; full int8 with the demo images
as the calibration set), then, on LiteRT/XNNPACK:

- fidelity: the largest |probability - nsfwjs 4.4.0| over the four reference
  images (the core's fidelity test allows 0.01), and the largest difference
  from float32 over the labelled demo images, with top-class agreement;
- speed: images/s and CPU ms per image at batch 1, one interpreter with 1 and
  with 2 threads, and two single-threaded interpreters in parallel (lanes),
  in interleaved rounds, medians.

Prints one JSON line. Needs TensorFlow (the converter), so it runs a few seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from nsfw_core.inference.model import load_model  # noqa: E402
from nsfw_core.inference.modelfiles import dequantise, read_verified  # noqa: E402
from nsfw_core.inference.pipeline import prepare  # noqa: E402
from nsfw_core.base.settings import CLASS_NAMES, load_settings  # noqa: E402
from nsfw_core.inference.tfgraph import build_function, configure_tensorflow  # noqa: E402

NAME = "MobileNetV2Mid"
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
NSFWJS = {"Drawing": "drawings", "Hentai": "hentai", "Neutral": "neutral", "Porn": "porn", "Sexy": "sexy"}


def convert(kind: str, calibration: np.ndarray) -> bytes:
    doc, blob = read_verified(ROOT / "model", NAME)
    fn = build_function(doc, dequantise(doc, blob))
    tf = configure_tensorflow()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if kind != "float32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "int8":
        conv.representative_dataset = lambda: ([x[None]] for x in calibration)
    return conv.convert()


def interpreter(content: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=threads)
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    it.resize_tensor_input(i, [1, 224, 224, 3])
    it.allocate_tensors()
    return it, i, o


def run(lane, xs: np.ndarray) -> np.ndarray:
    it, i, o = lane
    rows = []
    for x in xs:
        it.set_tensor(i, x[None])
        it.invoke()
        rows.append(it.get_tensor(o)[0].copy())
    return np.array(rows)


def rate(lanes, x: np.ndarray, seconds: float) -> tuple[float, float]:
    """(images/s, CPU ms per image) with every lane invoking in its own thread for ``seconds``."""
    stop = time.perf_counter() + seconds
    counts = [0] * len(lanes)

    def work(k: int) -> None:
        while time.perf_counter() < stop:
            run(lanes[k], x)
            counts[k] += 1

    c0, t0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(lanes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = sum(counts)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    settings = load_settings(environ={})
    model = load_model(NAME, ROOT / "model")
    refs = sorted(REFERENCE.glob("*.jpg"))
    expected = json.loads((REFERENCE / "nsfwjs-4.4.0-outputs.json").read_text())[NAME]
    x_ref = np.stack([prepare(model, p.read_bytes(), settings) for p in refs])
    demo = sorted((ROOT / "data" / "demo").rglob("*.jpg")) + sorted((ROOT / "data" / "demo").rglob("*.png"))
    x_demo = np.stack([prepare(model, p.read_bytes(), settings) for p in demo])
    kinds = {k: convert(k, x_demo) for k in ("float32", "dynamic-int8", "int8")}
    base = run(interpreter(kinds["float32"], 2), x_demo)
    out: dict[str, dict] = {}
    for kind, content in kinds.items():
        lane = interpreter(content, 2)
        got = run(lane, x_ref)
        worst = max(abs(float(row[j]) - expected[p.name][k]) for p, row in zip(refs, got)
                    for k, cls in NSFWJS.items() for j in [CLASS_NAMES.index(cls)])
        demo_rows = run(lane, x_demo)
        out[kind] = {"bytes": len(content), "max_diff_vs_nsfwjs": round(worst, 5),
                     "within_fidelity_bound_0.01": worst <= 0.01,
                     "max_diff_vs_float32_demo": round(float(np.abs(demo_rows - base).max()), 5),
                     "top_class_agreement_demo": float((demo_rows.argmax(1) == base.argmax(1)).mean()),
                     "speed": {}}
    setups = {"1 interpreter, 1 thread": (1, 1), "1 interpreter, 2 threads": (1, 2), "2 lanes of 1 thread": (2, 1)}
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(a.rounds):  # interleaved, so drift spreads over all cells
        for kind, content in kinds.items():
            for label, (count, threads) in setups.items():
                lanes = [interpreter(content, threads) for _ in range(count)]
                run(lanes[0], x_demo[:1])
                samples.setdefault((kind, label), []).append(rate(lanes, x_demo[:1], a.seconds))
    for (kind, label), rows in samples.items():
        out[kind]["speed"][label] = {"images_per_s": round(statistics.median(r for r, _ in rows), 1),
                                     "cpu_ms_per_image": round(statistics.median(c for _, c in rows), 2)}
    print(json.dumps({"model": NAME, "demo_images": len(demo), "results": out}))


if __name__ == "__main__":
    main()
