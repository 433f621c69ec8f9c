"""Single-request latency before and after a burst, on one server.

    .venv/bin/python bench/burst_latency.py [NAME=VALUE ...] [--seconds 6]

Starts ``python app.py`` (with the given environment), then runs four cells on
it: c1 JPEG 1 MP, c64 JPEG 0.3 MP (the burst), c1 JPEG 1 MP twice. A server
whose c1 latency or CPU per request stays higher after the burst keeps some
state from it (it found glibc's malloc arenas; see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_all
from common import log

CELLS = (("before", "jpeg_1mp", 1), ("burst", "jpeg_0.3mp", 64), ("after", "jpeg_1mp", 1), ("after again", "jpeg_1mp", 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("env", nargs="*", help="server environment as NAME=VALUE")
    ap.add_argument("--seconds", type=float, default=6.0)
    a = ap.parse_args()
    env = dict(s.split("=", 1) for s in a.env)
    rows = []
    with run_all.image_server() as (facts, img_port, others):
        proc, port, sampler, _ = run_all.start_service("burst", img_port, env)
        try:
            for label, image, conc in CELLS:
                r = run_all.run_cell(port, run_all.predict_path(img_port, facts[image]["file"]), conc, a.seconds,
                                     1.0, sampler, others, 30.0)
                rows.append({"cell": label, "image": image, "conc": conc, "rps": r["rps"], "p50_ms": r["p50_ms"],
                             "p99_ms": r["p99_ms"], "cpu_ms": r.get("server_cpu_ms_per_req"),
                             "rss_mib": r["peak_rss_mib"]})
                log(f"{label}: {rows[-1]}")
        finally:
            run_all.stop(proc, sampler)
    print(json.dumps({"env": env, "cells": rows}, indent=1))


if __name__ == "__main__":
    main()
