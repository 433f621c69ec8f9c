"""The issue's cost attack, before and after, side by side (issue 29, point 5):

    .venv/bin/python bench/cost_share.py --baseline REV [--seconds 60] [--sides before,after,after-share]

One client (key A, the attacker) sends ``POST /v1/classify/batch`` with 8 copies of a 16-frame GIF of a few
hundred bytes and ``model: InceptionV3`` (what costs 1.94 CPU s an image before), one batch every
``--attack-every`` seconds (8.3 s: 0.12 requests a second, far under the rate limit), each in its own thread;
meanwhile another client (key B) sends a 107 KB JPEG (``glasses.jpg``) once a second (``--other-every``; one
at a time, the next as soon as the answer comes when slower), and records each answer's status and latency.  Sides, each a fresh ``python app.py`` on loopback with the three
keys and a private data folder:

* ``before``: ``REV`` checked out with ``git worktree add --detach`` (removed at the end), NSFW_RATE_LIMIT
  ``--rate`` (5/s);
* ``after``: this checkout's tree, the same settings;
* ``after-share``: this checkout without NSFW_RATE_LIMIT: only the share of the machine (NSFW_KEY_SHARE 0.5,
  the default) stands between the attacker and the other client.

Before the window InceptionV3 is loaded by one request from a third key (so no side measures a model
load).  Reported per side: the other client's requests, its 503 and 429 answers, p50 / p90 of its 200
answers; the attacker's batches and how their items were answered (200, or the error code); the server
tree's CPU (cores) and peak RSS; the load average.  Prints a Markdown table and writes ``--out``
(bench/results/cost_share.json).  About (start ~20 s + ``--seconds`` + the slowest answer in flight) per side.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worktree as wt
from common import BENCH, ROOT, log, machine_info, percentile

sys.path.insert(0, str(ROOT))
from tests.helpers.paths import REFERENCE

KEY_A = "attacker-key-0123456789abcdef"
KEY_B = "other-client-key-0123456789ab"
KEY_WARM = "warm-up-key-0123456789abcdef"
VICTIM_IMAGE = REFERENCE / "glasses.jpg"


def gif(frames: int = 16, side: int = 64) -> bytes:
    from PIL import Image

    images = [Image.new("RGB", (side, side), (15 * i, 255 - 15 * i, (40 * i) % 256)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()


def post(port: int, path: str, body: bytes, key: str, timeout: float) -> tuple[int, bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                       "Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        data = response.read()
        return response.status, data, time.perf_counter() - t0
    except (OSError, http.client.HTTPException):
        return 0, b"", time.perf_counter() - t0
    finally:
        conn.close()


def run_side(name: str, tree: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix=f"nsfw-cost-{name}-"))
    proc, port, sampler, ready_s = wt.start_server(name, tree, data, env={
        "NSFW_API_KEYS": f"{KEY_A},{KEY_B},{KEY_WARM}", **env})
    try:
        animation = base64.b64encode(gif()).decode()
        batch = json.dumps({"model": "InceptionV3", "items": [{"image": {"base64": animation}}] * 8}).encode()
        victim = json.dumps({"image": {"base64": base64.b64encode(VICTIM_IMAGE.read_bytes()).decode()}}).encode()
        warm = json.dumps({"model": "InceptionV3", "image": {"base64": animation}}).encode()
        status, body, took = post(port, "/v1/classify", warm, KEY_WARM, 300)
        log(f"{name}: ready in {ready_s:.1f} s; InceptionV3 warm-up {status} in {took:.1f} s")
        for _ in range(3):
            post(port, "/v1/classify", victim, KEY_B, 60)
        time.sleep(2.0)
        stop = threading.Event()
        victim_answers: list[tuple[int, float, str]] = []
        attacker_items: collections.Counter[str] = collections.Counter()
        attacker_batches: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def attack_once() -> None:
            status, body, took = post(port, "/v1/classify/batch", batch, KEY_A, args.timeout)
            with lock:
                attacker_batches[str(status)] += 1
                if status == 200:
                    for item in json.loads(body)["results"]:
                        error = item.get("error")
                        attacker_items["200" if error is None else f"{error['code']} {error.get('limit', '')}".strip()] += 1
                elif status:
                    attacker_items[f"request {json.loads(body).get('code', status)}"] += 8

        def attacker() -> None:
            threads = []
            while not stop.is_set():
                t = threading.Thread(target=attack_once, daemon=True)
                t.start()
                threads.append(t)
                stop.wait(args.attack_every)
            for t in threads:
                t.join(args.timeout + 5)

        def other_client() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                status, body, took = post(port, "/v1/classify", victim, KEY_B, args.timeout)
                stop.wait(max(0.0, args.other_every - (time.perf_counter() - started)))
                code = json.loads(body).get("code", "") if status not in (0, 200) and body else ""
                with lock:
                    victim_answers.append((status, took, code))

        cpu0, wall0 = sampler.cpu(), time.perf_counter()
        sampler.reset_cell()
        load0 = os.getloadavg()[0]
        threads = [threading.Thread(target=attacker), threading.Thread(target=other_client)]
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(args.timeout + 30)
        wall = time.perf_counter() - wall0
        cpu = sampler.cpu() - cpu0
        ok = sorted(t for s, t, _ in victim_answers if s == 200)
        statuses = collections.Counter(s for s, _, _ in victim_answers)
        n = len(victim_answers)
        result = {
            "side": name, "tree": wt.describe_checkout(tree), "env": env, "seconds": round(wall, 1),
            "other_client": {"requests": n, "ok": len(ok), "503": statuses.get(503, 0), "429": statuses.get(429, 0),
                             "share_503": round(statuses.get(503, 0) / n, 3) if n else None,
                             "p50_ms": round(1000 * (percentile(ok, 50) or 0), 1),
                             "p90_ms": round(1000 * (percentile(ok, 90) or 0), 1),
                             "statuses": dict(statuses)},
            "attacker": {"batches": dict(attacker_batches), "items": dict(attacker_items)},
            "server_cores": round(cpu / wall, 2), "peak_rss_mib": round(sampler.cell_peak / 2**20),
            "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
        }
        log(f"{name}: {json.dumps(result)}")
        return result
    finally:
        sampler.stop()
        proc.stop()


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| | " + " | ".join(r["side"] for r in results) + " |", "|---|" + "---|" * len(results)]

    def line(label: str, fn: Any) -> None:
        rows.append(f"| {label} | " + " | ".join(str(fn(r)) for r in results) + " |")

    line("tree", lambda r: r["tree"])
    line("NSFW_RATE_LIMIT", lambda r: r["env"].get("NSFW_RATE_LIMIT", "(none)"))
    line("other client: requests", lambda r: r["other_client"]["requests"])
    line("other client: 503 (share)", lambda r: f"{r['other_client']['503']} ({r['other_client']['share_503']})")
    line("other client: 429", lambda r: r["other_client"]["429"])
    line("other client: p50 / p90 ms of 200s",
         lambda r: f"{r['other_client']['p50_ms']} / {r['other_client']['p90_ms']}")
    line("attacker: batches (status: n)", lambda r: _counts(r["attacker"]["batches"]))
    line("attacker: items", lambda r: _counts(r["attacker"]["items"]))
    line("server CPU (cores)", lambda r: r["server_cores"])
    line("server tree peak RSS MiB", lambda r: r["peak_rss_mib"])
    line("load average (start, end)", lambda r: r["loadavg"])
    return "\n".join(rows)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="revision for the 'before' side")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each side's window")
    parser.add_argument("--attack-every", type=float, default=8.3, help="seconds between the attacker's batches")
    parser.add_argument("--other-every", type=float, default=1.0,
                        help="seconds between the other client's requests (one at a time: later when slower)")
    parser.add_argument("--rate", default="5/s", help="NSFW_RATE_LIMIT of the before and after sides")
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout of one request")
    parser.add_argument("--sides", default="before,after,after-share")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "cost_share.json")
    args = parser.parse_args()
    sides = args.sides.split(",")
    results: list[dict[str, Any]] = []
    info = {"machine": machine_info(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "args": {k: str(v) for k, v in vars(args).items()}}
    with wt.sigterm_as_interrupt():
        if "before" in sides:
            with wt.worktree(args.baseline) as (tree, sha):
                results.append(run_side("before", tree, {"NSFW_RATE_LIMIT": args.rate}, args))
        if "after" in sides:
            results.append(run_side("after", ROOT, {"NSFW_RATE_LIMIT": args.rate}, args))
        if "after-share" in sides:
            results.append(run_side("after-share", ROOT, {}, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "results": results}, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
