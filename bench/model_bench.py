"""(a) Model only: forward passes of the default model on preprocessed inputs, images/s per batch size.

Run with the project's venv (the harness does): ``python bench/model_bench.py IMAGE --batches 1,2,4 --seconds 2 --reps 3``.
The inputs are the real preprocessed test image (decode + nsfwjs resize done
once, outside the timing), replicated to the batch size. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--model", default="MobileNetV2Mid")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("NSFW_MODEL_THREADS", "0")))
    ap.add_argument("--runtime", default=os.environ.get("NSFW_RUNTIME", "litert"), choices=("litert", "tensorflow"))
    a = ap.parse_args()

    from nsfw_core.images.decode import decode
    from nsfw_core.inference.model import load_model

    t0 = time.perf_counter()
    model = load_model(a.model, Path(__file__).resolve().parent.parent / "model", runtime=a.runtime, threads=a.threads,
                      lanes=True)  # as the service loads it
    load_s = time.perf_counter() - t0
    rss_load = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    x1 = model.preprocess(decode(Path(a.image).read_bytes()))
    out: dict[str, dict[str, Any]] = {}
    for b in [int(s) for s in a.batches.split(",")]:
        batch = np.ascontiguousarray(np.broadcast_to(x1, (b, *x1.shape)), dtype=np.float32)
        model.predict(batch)  # first call at this shape
        rates, lat, cpu = [], [], []
        for _ in range(a.reps):
            c0 = time.process_time()
            n, start = 0, time.perf_counter()
            while True:
                s = time.perf_counter()
                model.predict(batch)
                lat.append(time.perf_counter() - s)
                n += b
                if time.perf_counter() - start >= a.seconds:
                    break
            rates.append(n / (time.perf_counter() - start))
            cpu.append((time.process_time() - c0) / n)
        out[str(b)] = {"images_per_s": round(statistics.median(rates), 2),
                       "reps": [round(r, 2) for r in rates],
                       "batch_ms_p50": round(statistics.median(lat) * 1000, 2),
                       "cpu_ms_per_image": round(statistics.median(cpu) * 1000, 2),
                       "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        print(f"batch {b}: {out[str(b)]}", file=sys.stderr, flush=True)
    best = max(out, key=lambda k: out[k]["images_per_s"])
    print(json.dumps({"model": model.name, "version": model.version, "load_s": round(load_s, 2),
                      "runtime": model.runtime, "threads": model.threads, "lanes": model.lanes, "batches": out, "batch1": out.get("1", {}).get("images_per_s"),
                      "best_batch": int(best), "best": out[best]["images_per_s"],
                      "best_cpu_ms_per_image": min(r["cpu_ms_per_image"] for r in out.values()),
                      "rss_after_load_mib": rss_load}))


if __name__ == "__main__":
    main()
