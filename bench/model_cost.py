"""What an image costs, the figures behind the cost units (issue 29, point 5; nsfw_core/ratelimit.py):

    .venv/bin/python bench/model_cost.py [--repeat 15]

1. CPU milliseconds one image takes through each model on litert with one thread (``time.thread_time``
   around ``Model.predict`` of one (1, S, S, 3) input, median of ``--repeat`` after 3 warm-up passes):
   ``nsfw_core.inference.registry.CPU_MS_PER_IMAGE`` and the models' relative costs come from here.
2. CPU milliseconds of decoding (``time.process_time``, best of 3) per megapixel pass of the decoder's declared
   work (``Plan.cost.work``) for a 1 MP and a 16 MP noise JPEG and a 16-frame 4000x4000 GIF: what
   ``WORK_PER_UNIT`` (one unit per 1,000,000 pixel passes) stands for beside one default-model pass.
3. CPU milliseconds of decoding a video (``time.process_time`` of this process, its decoder threads included,
   best of 3; ``nsfw_core.images.video.frames`` as the isolated lane runs it, sampled at 1 frame a second)
   per megapixel, per megabyte and per packet of what is fed to the decoder, for ordinary footage (H.264 at
   720p and 1080p, 30 fps; x264's keyframe interval and a single keyframe), noise at a high bitrate (H.264,
   HEVC, VP9 at 1080p) and 64x64 frames at 1000 fps: what ``VIDEO_PIXELS_PER_UNIT``, ``VIDEO_BYTES_PER_UNIT``
   and ``VIDEO_PACKETS_PER_UNIT`` stand for beside one default-model pass, and what each video is charged
   against the CPU it took (``units_of_cpu``: its CPU ms over one default-model pass).

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
from nsfw_core.ratelimit import (
    VIDEO_BYTES_DEFAULT,
    VIDEO_BYTES_PER_UNIT,
    VIDEO_PACKETS_PER_UNIT,
    VIDEO_PIXELS_PER_UNIT,
    video_decode_cost,
)

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


def videos() -> dict[str, tuple[bytes, str]]:
    """Ordinary footage (the shipped images panning: cost by the pixel), noise at a high bitrate in three codecs
    (cost by the byte of bitstream) and tiny frames at 1000 fps (cost by the packet)."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import videos as made

    one_keyframe = {"preset": "ultrafast", "g": "100000", "keyint_min": "100000", "sc_threshold": "0"}
    rng = np.random.default_rng(1)
    still = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)

    def noise(n: int, size: tuple[int, int]) -> list[np.ndarray]:
        w, h = size
        return [np.roll(still[:h, :w], 7 * i, axis=1) for i in range(n)]

    out = {}
    for height, width in ((720, 1280), (1080, 1920)):
        out[f"H.264 {height}p 30 fps, 20 s"] = (made.make("mp4", seconds=20, fps=30, size=(width, height)), "mp4")
    out["H.264 720p 30 fps, 20 s, one keyframe"] = (made.make("mp4", seconds=20, fps=30, size=(1280, 720),
                                                               options=one_keyframe), "mp4")
    out["H.264 1080p noise, 2 s at 32 fps"] = (made.make("mp4", frames=noise(64, (1920, 1080)), fps=32,
                                                         size=(1920, 1080), options={"g": "32"}), "mp4")
    out["HEVC 1080p noise, 2 s at 32 fps"] = (made.make(
        "mp4", "hevc", frames=noise(64, (1920, 1080)), fps=32, size=(1920, 1080),
        options={"x265-params": "log-level=none:keyint=32"}), "mp4")
    out["VP9 1080p noise, 2 s at 32 fps"] = (made.make("webm", "vp9", frames=noise(64, (1920, 1080)), fps=32,
                                                       size=(1920, 1080), options={"g": "32"}), "webm")
    out["H.264 64x64 at 1000 fps, 10 s, one keyframe"] = (made.make(
        "mp4", frames=noise(10000, (64, 64)), fps=1000, size=(64, 64), options=one_keyframe), "mp4")
    return out


def video_decode_ms(data: bytes, container: str) -> tuple[float, int, int, int, int, str]:
    """Best CPU ms of 3 decodes; the frames fed to the decoder, their bytes, the frames sampled, pixels a frame,
    the codec."""
    from nsfw_core.images import video

    best, decoded, size, samples, pixels, codec = float("inf"), 0, 0, 0, 0, ""
    for _ in range(3):
        t0 = time.process_time()
        items = video.frames(data, container, max_pixels=10**8, fps=1.0, max_frames=1800, seed=1,
                             each=lambda rgb: None)
        found, chosen = next(items)
        assert isinstance(found, video.Declared) and isinstance(chosen, video.Plan)
        for _ in items:
            pass
        best = min(best, time.process_time() - t0)
        decoded, size, samples = chosen.decoded, chosen.decoded_bytes, len(chosen.samples)
        pixels, codec = found.width * found.height, found.codec
    return 1000.0 * best, decoded, size, samples, pixels, codec


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
    video_decodes = {}
    for label, (data, container) in videos().items():
        ms, decoded, size, samples, pixels, codec = video_decode_ms(data, container)
        charged = samples + video_decode_cost(samples, decoded, pixels, size, codec)
        video_decodes[label] = {"bytes": len(data), "frames_decoded": decoded, "bytes_decoded": size,
                                "frames_sampled": samples, "pixels_a_frame": pixels, "cpu_ms": round(ms, 1),
                                "cpu_ms_per_megapixel_decoded": round(ms / (decoded * pixels / 1e6), 3),
                                "cpu_ms_per_megabyte_decoded": round(ms / (size / 1e6), 2),
                                "cpu_ms_per_packet": round(ms / decoded, 4),
                                "units_charged": round(charged, 1), "units_of_cpu": round(ms / default, 1)}
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "cpu_ms_per_image": models, "relative_cost": {k: round(v / default, 2) for k, v in models.items()},
              "in_the_code": CPU_MS_PER_IMAGE, "decode": decodes, "video_decode": video_decodes,
              "video_rates_in_the_code": {"pixels_per_unit": VIDEO_PIXELS_PER_UNIT,
                                          "bytes_per_unit_default": VIDEO_BYTES_DEFAULT,
                                          "bytes_per_unit": VIDEO_BYTES_PER_UNIT,
                                          "packets_per_unit": VIDEO_PACKETS_PER_UNIT}}
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
    print("\n| video | frames decoded / sampled | MB decoded | CPU ms | per MP | per MB | per packet | "
          "units of CPU | units charged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, v in video_decodes.items():
        print(f"| {label} | {v['frames_decoded']} / {v['frames_sampled']} | {v['bytes_decoded'] / 1e6:.1f} | "
              f"{v['cpu_ms']} | {v['cpu_ms_per_megapixel_decoded']} | {v['cpu_ms_per_megabyte_decoded']} | "
              f"{v['cpu_ms_per_packet']} | {v['units_of_cpu']} | {v['units_charged']} |")


if __name__ == "__main__":
    main()
