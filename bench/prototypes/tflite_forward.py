"""Prototype: the same MobileNetV2Mid forward pass through TensorFlow Lite (XNNPACK) instead of TF.

    .venv/bin/python bench/prototypes/tflite_forward.py

Converts the service's traced tf.function in-process (no file written) and
compares images/s, CPU ms per image and the largest difference in output
against ``Model.predict``. Not used by the service: see BENCHMARKS.md,
"Next lever". ``tf.lite.Interpreter`` warns that it is deprecated in favour
of the ``ai-edge-litert`` package, which a real switch should use.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nsfw_core.model import get_model  # noqa: E402

SECONDS = 3.0


def rate(fn, batch: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) over SECONDS of calls."""
    fn()
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < SECONDS:
        fn()
        n += batch
    return n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n


def main() -> None:
    model = get_model("MobileNetV2Mid", ROOT / "model")
    tf = model._tf
    blob = tf.lite.TFLiteConverter.from_concrete_functions([model._fn.get_concrete_function()], model._fn).convert()
    x8 = np.random.default_rng(0).random((8, 224, 224, 3), dtype=np.float32)
    for threads in (1, 2):
        for batch in (1, 8):
            interp = tf.lite.Interpreter(model_content=blob, num_threads=threads)
            inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
            interp.resize_tensor_input(inp, [batch, 224, 224, 3])
            interp.allocate_tensors()
            x = x8[:batch]

            def run(interp=interp, inp=inp, out=out, x=x):
                interp.set_tensor(inp, x)
                interp.invoke()
                return interp.get_tensor(out)

            diff = float(np.abs(run() - model.predict(x)).max())
            ips, ms = rate(run, batch)
            print(f"tflite threads={threads} batch={batch}: {ips:.1f} img/s, {ms:.1f} ms CPU/img, max diff {diff:.1e}")
    for batch in (1, 8):
        ips, ms = rate(lambda b=batch: model.predict(x8[:b]), batch)
        print(f"tf (service) batch={batch}: {ips:.1f} img/s, {ms:.1f} ms CPU/img")


if __name__ == "__main__":
    main()
