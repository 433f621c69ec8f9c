"""What an image costs, the figures behind the cost units (issue 29, point 5; nsfw_core/ratelimit.py):

    .venv/bin/python bench/model_cost.py [--repeat 15]

1. CPU milliseconds one image takes through each model on litert with one thread (``time.thread_time``
   around ``Model.predict`` of one (1, S, S, 3) input, median of ``--repeat`` after 3 warm-up passes):
   ``nsfw_core.inference.registry.CPU_MS_PER_IMAGE`` and the models' relative costs come from here.
2. CPU milliseconds of decoding (``time.process_time``, best of 3) per megapixel pass of the decoder's declared
   work (``Plan.cost.work``) for a 1 MP and a 16 MP noise JPEG and a 16-frame 4000x4000 GIF: what
   ``WORK_PER_UNIT`` (one unit per 1,000,000 pixel passes) stands for beside one default-model pass.

CPU time, not wall time: the figures hold on a machine that other jobs share.  Prints a Markdown table and
writes ``--out`` (bench/results/model_cost.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, ROOT, machine_info

sys.path.insert(0, str(ROOT))
from nsfw_core.images import decode as _decode
from nsfw_core.inference.model import load_model
from nsfw_core.inference.registry import CPU_MS_PER_IMAGE

COMPILED = ROOT / "var" / "compiled"
MODELS = ("MobileNetV2Mid", "MobileNetV2", "InceptionV3")


def model_ms(name: str, repeat: int) -> float:
    model = load_model(name, ROOT / "model", runtime="litert", threads=1, cache_dir=COMPILED)
    x = np.zeros((1, model.input_size, model.input_size, 3), np.float32)
    for _ in range(3):
        model.predict(x)
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        model.predict(x)
        times.append(time.thread_time() - t0)
    return 1000.0 * statistics.median(times)


def images() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for side in (1000, 4000):
        buf = io.BytesIO()
        Image.fromarray((rng.random((side, side, 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=85)
        out[f"JPEG {side}x{side} noise"] = buf.getvalue()
    frames = [Image.new("P", (4000, 4000), i) for i in range(16)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    out["GIF 4000x4000, 16 frames"] = buf.getvalue()
    return out


def decode_ms(data: bytes) -> tuple[float, int]:
    best = float("inf")
    work = 0
    for _ in range(3):
        t0 = time.process_time()
        plan = _decode.plan(data, max_pixels=100_000_000)
        if plan.timeline is not None:
            _decode.decode_frames(data, tuple(range(len(plan.timeline))), max_pixels=100_000_000)
        else:
            _decode.decode(data, max_pixels=100_000_000)
        best = min(best, time.process_time() - t0)
        work = plan.cost.work
    return 1000.0 * best, work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "model_cost.json")
    args = parser.parse_args()
    models = {name: round(model_ms(name, args.repeat), 2) for name in MODELS}
    default = models["MobileNetV2Mid"]
    decodes = {}
    for label, data in images().items():
        ms, work = decode_ms(data)
        decodes[label] = {"bytes": len(data), "work": work, "cpu_ms": round(ms, 1),
                          "cpu_ms_per_megapixel_pass": round(ms / (work / 1e6), 2)}
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "cpu_ms_per_image": models, "relative_cost": {k: round(v / default, 2) for k, v in models.items()},
              "in_the_code": CPU_MS_PER_IMAGE, "decode": decodes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| model | CPU ms per image (litert, 1 thread) | relative cost | in the code |")
    print("|---|---|---|---|")
    for name, ms in models.items():
        print(f"| {name} | {ms} | {ms / default:.2f} | {CPU_MS_PER_IMAGE[name]} |")
    print("\n| image | decoder work (pixel passes) | CPU ms | CPU ms per megapixel pass |")
    print("|---|---|---|---|")
    for label, d in decodes.items():
        print(f"| {label} | {d['work']:,} | {d['cpu_ms']} | {d['cpu_ms_per_megapixel_pass']} |")


if __name__ == "__main__":
    main()
