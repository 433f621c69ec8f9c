"""A/B of service settings: ``.venv/bin/python bench/ab.py NSFW_WORKERS=2 [--rounds 4] [--conc 64]``.

Starts ``python app.py`` alternately with the defaults (A) and with the given
settings (B), ``--rounds`` times each (A B A B ...), and runs one load cell per
start (JPEG 1 MP, POST /predict?url= from loopback, like ``run_all.py``'s (b)).
Alternating spreads the machine's drift over both sides; the medians of req/s
and of server CPU ms per request, and their ratios B/A, are what to read.
Writes a JSON summary to ``--out`` (the lever grid in ``run_all.py`` runs each setting once,
which on a noisy 2-core machine cannot separate differences under ~10 %).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import images as imagegen
import report
import run_all
from common import BENCH, log, machine_info, median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="+", help="B's settings as NAME=VALUE (A: the defaults)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--image", default=report.KEY_IMAGE, choices=list(imagegen.SPECS))
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "ab.json", help="where the summary goes")
    a = ap.parse_args()
    b_env = dict(s.split("=", 1) for s in a.settings)
    rows: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    with run_all.image_server() as (facts, img_port, others):
        for i in range(a.rounds):
            for side, env in (("A", {}), ("B", b_env)):
                proc, port, sampler, _ = run_all.start_service(f"ab-{side}", img_port, env)
                try:
                    r = run_all.run_cell(port, run_all.predict_path(img_port, facts[a.image]["file"]), a.conc,
                                         a.seconds, 1.5, sampler, others, 30.0)
                finally:
                    run_all.stop(proc, sampler)
                row = {"rps": r["rps"], "p50_ms": r["p50_ms"], "cpu_ms": r.get("server_cpu_ms_per_req"),
                       "rss": r["peak_rss_mib"], "errors": r["errors"],
                       "other_jobs_cores": r["cpu"]["other_jobs_cores"]}
                rows[side].append(row)
                log(f"round {i + 1} {side}: {row}")
    summary = {side: {"rps": median(x["rps"] for x in rs), "p50_ms": median(x["p50_ms"] for x in rs),
                      "cpu_ms": median(x["cpu_ms"] for x in rs),
                      "peak_rss_mib": max(x["rss"] for x in rs)} for side, rs in rows.items()}
    out = {"machine": machine_info().get("cpu_model"), "B": b_env, "image": a.image, "conc": a.conc,
           "rounds": a.rounds, "median": summary, "rows": rows,
           "ratio_rps_B_over_A": round(summary["B"]["rps"] / summary["A"]["rps"], 3),
           "ratio_cpu_ms_B_over_A": round(summary["B"]["cpu_ms"] / summary["A"]["cpu_ms"], 3)}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    log(f"median A {summary['A']}, B {summary['B']}; B/A req/s {out['ratio_rps_B_over_A']}, "
        f"CPU ms/req {out['ratio_cpu_ms_B_over_A']} (wrote {a.out})")


if __name__ == "__main__":
    main()
