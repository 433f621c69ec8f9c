"""Videos (issue 27): judged frames per second of a 720p H.264 video against still images per second, a
10-minute 720p video at 1 frame a second through a job, and the peak memory while four videos decode.

Everything side by side in one run of one process (the same context, model and decode lane), on videos made
here from the shipped images (tests/helpers/videos.py: x264 "veryfast", 30 frames a second, its default
250-frame keyframe interval with scene cuts, B-frames), nothing downloaded:

* ``base``: 60 s of 1280x720; ``long``: the same packets ten times over (10 minutes; remuxed, so decoding
  it costs what decoding a 10-minute video costs, without 10 minutes of encoding here);
* ``stills``: one 1280x720 JPEG (quality 90) per second of ``base``: the same pictures as still images.

Measured (medians of ``--rounds``):

* still images per second through ``Classifier.sources`` (decode, preprocessing, inference: the CLI's path);
* the 60 s video through the same path: frames judged per second (60 of them), and the decode alone;
* the 10-minute video as a job (POST /v1/jobs in-process, the video served by a local HTTP server): seconds
  from the POST to ``done``, and the job's own decode/inference split;
* four synchronous requests of the 60 s video at once (NSFW_DECODE_PROCESSES=4, NSFW_MAX_IN_FLIGHT=512: their
  240 frames in flight): the peak resident memory of this process and its decode children over what they held
  before.

Run: ``.venv/bin/python bench/video.py`` (about 5 minutes on the 2-core VM); results to
``bench/results/video.json``; BENCHMARKS.md has them.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench's helpers, as the other scripts import them
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: the test videos' maker

from common import SCRATCH, log
from PIL import Image

from tests.helpers import videos
from tests.helpers.rss import PeakRSS

RESULTS = Path(__file__).resolve().parent / "results" / "video.json"
SIZE = (1280, 720)


def make_base(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes()
    log("encoding 60 s of 1280x720 H.264 (x264 veryfast, 30 fps)...")
    t0 = time.perf_counter()
    data = videos.make("mp4", "h264", seconds=60, fps=30, size=SIZE, hold=5.0, options={"preset": "veryfast"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    log(f"  {len(data) / 1e6:.1f} MB in {time.perf_counter() - t0:.0f} s")
    return data


def repeat(data: bytes, times: int) -> bytes:
    """The video's packets ``times`` over, timestamps shifted: a longer video without encoding one."""
    import av

    src: Any = av.open(io.BytesIO(data))
    stream: Any = src.streams.video[0]
    packets: list[Any] = [p for p in src.demux(stream) if p.size]
    step = round(1 / (stream.average_rate * stream.time_base))  # one frame, in the stream's units
    span = max(p.pts for p in packets) - min(p.pts for p in packets) + step
    buf = io.BytesIO()
    out: Any = av.open(buf, "w", format="mp4")
    copy = out.add_stream_from_template(stream)
    for k in range(times):
        for p in packets:
            if k:
                p.pts += span
                p.dts += span
            p.stream = copy
            out.mux(p)
    out.close()
    src.close()
    return buf.getvalue()


def stills(data: bytes) -> list[bytes]:
    import av

    out: list[bytes] = []
    box: Any = av.open(io.BytesIO(data))
    with box:
        for frame in box.decode(video=0):
            if frame.time is not None and frame.time >= len(out):
                buf = io.BytesIO()
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(buf, "JPEG", quality=90)
                out.append(buf.getvalue())
    return out


def serve(folder: Path) -> tuple[str, Any]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from nsfw_core.base.settings import load_settings
    from nsfw_core.http import app as api

    base = make_base(SCRATCH / "video-720p-60s.mp4")
    long = repeat(base, 10)
    pictures = stills(base)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "long.mp4").write_bytes(long)
    (tmp / "base.mp4").write_bytes(base)
    for i, jpeg in enumerate(pictures):
        (tmp / f"still-{i:02d}.jpg").write_bytes(jpeg)
    url, server = serve(tmp)
    settings = load_settings(environ={}, data_dir=str(tmp / "data"), allow_private_hosts=("*",), decode_processes=4,
                             max_in_flight=512,
                             compiled_dir=os.environ.get("NSFW_COMPILED_DIR", ""))
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "base_bytes": len(base), "long_bytes": len(long),
                               "stills": len(pictures), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load_average_before": os.getloadavg()}
    with TestClient(Starlette(routes=api.routes, lifespan=api.make_lifespan(settings))) as client:
        while client.get("/health").status_code != 200:
            time.sleep(0.1)
        import nsfw_core.context

        ctx = nsfw_core.context.current()
        model = ctx.models.get()
        still_paths = [str(tmp / f"still-{i:02d}.jpg") for i in range(len(pictures))]
        rows: dict[str, list[float]] = {"stills_per_s": [], "video_frames_per_s": [], "video_decode_frames_per_s": []}
        for r in range(args.rounds):
            t0 = time.perf_counter()
            done = ctx.classifier.sources(still_paths, batch_size=ctx.serving.max_batch)
            assert all(o.ok for o in done)
            rows["stills_per_s"].append(len(still_paths) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            [outcome] = ctx.classifier.sources([str(tmp / "base.mp4")])
            assert outcome.ok and outcome.classification is not None
            judged = len(outcome.classification.frames or ())
            rows["video_frames_per_s"].append(judged / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            with ctx.decoder.video(model, base) as decode:
                decode.start()
                got = decode.take()
            rows["video_decode_frames_per_s"].append(len(got) / (time.perf_counter() - t0))
            log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()))
        for key, values in rows.items():
            results[key] = {"median": statistics.median(values), "rounds": values}
        results["video_frames_judged"] = judged
        results["ratio_video_frames_to_stills"] = (results["video_frames_per_s"]["median"]
                                                  / results["stills_per_s"]["median"])

        log("the 10-minute video as a job...")
        t0 = time.perf_counter()
        made = client.post("/v1/jobs", json={"video": {"url": f"{url}/long.mp4"}})
        job_id = made.json()["id"]
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        assert job["status"] == "done", job
        results["job_10min"] = {"seconds": elapsed, "frames": job["progress"]["frames_done"],
                                "timings": job["result"]["timings"], "video": job["result"]["video"]}
        log(f"  {elapsed:.1f} s for {job['progress']['frames_done']} frames ({job['result']['timings']})")

        log("four videos at once...")
        ctx.decoder.sandbox.close()
        with PeakRSS(os.getpid(), interval=0.02) as peak:
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: client.post("/predict", content=base).status_code, range(4)))
        assert answers == [200] * 4, answers
        results["four_videos"] = {"baseline_mib": peak.baseline / 2**20, "peak_mib": peak.peak / 2**20,
                                  "over_baseline_mib": peak.over_baseline / 2**20}
        log(f"  peak {peak.peak / 2**20:.0f} MiB, {peak.over_baseline / 2**20:.0f} MiB over the baseline")
    server.shutdown()
    results["load_average_after"] = os.getloadavg()  # other jobs on the machine skew every figure above
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
