"""Does scraping /metrics slow predictions?  The same upload load with and without a scraper.

Starts ``python app.py`` (the project's venv) on a free loopback port, then alternates phases of
``--phase`` seconds: ``off`` (only the load) and ``on`` (the load, and a scraper that GETs /metrics
every ``--interval`` seconds, like Prometheus at a short interval), ``--rounds`` times each, off
first, so that drift on a shared machine hits both conditions alike.  The load is ``-c`` closed-loop
keep-alive clients POSTing a generated 1 MP JPEG to /predict (the image in the body: no fetch, so the
image server's noise is out of the picture).

Prints, and writes to ``bench/results/scrape_overhead.json``: per condition the median and p99
latency and the throughput (all phases pooled), the on/off ratios (pooled, and paired: each "on"
phase against the "off" phase before it, median over the rounds), the scrapes' own median duration
and size, and the server's CPU time per scrape measured without load (300 scrapes back to back).  ``python bench/scrape_overhead.py [-c 8] [--phase 10] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from common import PROJECT_PY, ROOT, Proc, cpu_seconds, free_port, machine_info, percentile, wait_ready
from images import make_image

RESULTS = Path(__file__).resolve().parent / "results"


def jpeg_1mp() -> bytes:
    out = io.BytesIO()
    make_image(1280, 800, seed=7).save(out, "JPEG", quality=88)
    return out.getvalue()


def client(port: int, body: bytes, stop: threading.Event, latencies: list[float], errors: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "image/jpeg"}
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            errors.append(0)
            continue
        if response.status == 200:
            latencies.append(time.perf_counter() - t0)
        else:
            errors.append(response.status)
    conn.close()


def scraper(port: int, interval: float, stop: threading.Event, durations: list[float], sizes: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.wait(interval):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, response.status
        durations.append(time.perf_counter() - t0)
        sizes.append(len(body))
    conn.close()


def phase(port: int, body: bytes, concurrency: int, seconds: float, scrape_every: float | None) -> dict[str, Any]:
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[int] = []
    durations: list[float] = []
    sizes: list[int] = []
    threads = [threading.Thread(target=client, args=(port, body, stop, latencies, errors)) for _ in range(concurrency)]
    if scrape_every is not None:
        threads.append(threading.Thread(target=scraper, args=(port, scrape_every, stop, durations, sizes)))
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": len(errors), "seconds": time.perf_counter() - started,
            "scrape_durations": durations, "scrape_sizes": sizes}


def cpu_per_scrape(port: int, pid: int, n: int) -> dict[str, Any]:
    """The server's CPU time per scrape, without load: n scrapes back to back, less the CPU the idle
    server used over the same wall time (robust to other jobs on the machine, unlike latencies)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for _ in range(n):
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        response.read()
    cpu1, wall = cpu_seconds(pid), time.perf_counter() - t0
    conn.close()
    time.sleep(wall)  # the idle baseline: background threads (thresholds refresh, ...)
    idle = cpu_seconds(pid) - cpu1
    per = (cpu1 - cpu0 - idle) / n
    return {"scrapes": n, "wall_s": round(wall, 2), "server_cpu_ms_per_scrape": round(per * 1000, 2),
            "share_of_one_core_at_1s_interval": round(per, 4)}


def summary(phases: list[dict[str, Any]]) -> dict[str, Any]:
    lat = sorted(x for p in phases for x in p["latencies"])
    seconds = sum(p["seconds"] for p in phases)
    p99 = percentile(lat, 99)
    if p99 is None:
        raise statistics.StatisticsError("no request was answered in any phase")
    return {"requests": len(lat), "errors": sum(p["errors"] for p in phases),
            "median_ms": round(statistics.median(lat) * 1000, 2), "p99_ms": round(p99 * 1000, 2),
            "req_per_s": round(len(lat) / seconds, 2),
            "per_phase_median_ms": [round(statistics.median(p["latencies"]) * 1000, 2) for p in phases]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--phase", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="phases per condition")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    args = parser.parse_args()

    port = free_port()
    data_dir = RESULTS / "scratch" / "scrape-data"
    env = {"PORT": str(port), "NSFW_HOST": "127.0.0.1", "NSFW_DATA_DIR": str(data_dir)}
    server = Proc("scrape-overhead-server", [str(PROJECT_PY), "app.py"], env=env)
    body = jpeg_1mp()
    try:
        wait_ready(server, f"http://127.0.0.1:{port}/health")
        phase(port, body, args.concurrency, 3.0, None)  # warm-up
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for condition in ("off", "on"):
                runs[condition].append(phase(port, body, args.concurrency, args.phase,
                                             args.interval if condition == "on" else None))
        idle_cost = cpu_per_scrape(port, server.pid, 300)
    finally:
        server.stop()
    off, on = summary(runs["off"]), summary(runs["on"])
    scrapes = sorted(x for p in runs["on"] for x in p["scrape_durations"])
    sizes = [x for p in runs["on"] for x in p["scrape_sizes"]]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git.strip(), "machine": machine_info(),
        "method": {"concurrency": args.concurrency, "phase_s": args.phase, "rounds": args.rounds,
                   "scrape_interval_s": args.interval, "image": f"generated JPEG 1280x800, {len(body)} bytes"},
        "off": off, "on": on,
        "ratio_median_on_off": round(on["median_ms"] / off["median_ms"], 3),
        "ratio_p99_on_off": round(on["p99_ms"] / off["p99_ms"], 3),
        "ratio_throughput_on_off": round(on["req_per_s"] / off["req_per_s"], 3),
        # each "on" phase against the "off" phase just before it, then the median over the rounds: drift
        # from other jobs on the machine moves both phases of a pair alike
        "paired_ratio_median_on_off": round(statistics.median(
            statistics.median(b["latencies"]) / statistics.median(a["latencies"])
            for a, b in zip(runs["off"], runs["on"], strict=True)), 3),
        "idle_cost": idle_cost,
        "scrapes": {"count": len(scrapes), "median_ms": round(statistics.median(scrapes) * 1000, 2) if scrapes else None,
                    "max_ms": round(max(scrapes) * 1000, 2) if scrapes else None,
                    "bytes": max(sizes) if sizes else None},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scrape_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
