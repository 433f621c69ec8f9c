"""A/B of two versions of the code, side by side in one run:

    .venv/bin/python bench/ab_code.py --baseline REV [--rounds 4] [--concurrency 64] [--seconds 20] [--image jpeg_1mp]

The baseline is ``REV`` checked out with ``git worktree add --detach`` into a
temporary folder (removed at the end, also on error or Ctrl-C); the new side is
this checkout's working tree as it is (uncommitted changes included).  Both run
``app.py`` with this checkout's ``.venv`` Python (cwd = their own tree, so each
imports its own ``nsfw_core``), the same default settings, a fresh private
``NSFW_DATA_DIR`` each, and the same compiled model (``NSFW_COMPILED_DIR`` =
this checkout's ``var/compiled``, filled once beforehand), so no start compiles.

Servers start alternately, baseline, new, baseline, new ... (``--rounds`` of
each), one load cell per start, as ``bench/ab.py`` runs them: ``--warm`` seconds
of warm-up, then ``--seconds`` of closed-loop keep-alive POST /predict?url= at
``--concurrency`` against the loopback image server (a unique ``?n=`` per request).
Alternating spreads the machine's drift over both sides; read the medians of
req/s and of server CPU ms per request and their ratios new/baseline (also the
median of the per-round ratios).  Writes ``--out`` (bench/results/ab_code.json).
Every round takes about ``--warm`` + ``--seconds`` + the server's start (~10 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import images as imagegen
import report
import run_all
import worktree as wt
from common import BENCH, ROOT, log, machine_info, median

SIDES = ("baseline", "new")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, metavar="REV",
                    help="git revision of the baseline (commit, tag, branch, HEAD~1 ...); the new side is this "
                         "checkout's working tree")
    ap.add_argument("--rounds", type=int, default=4, help="server starts per side, alternated (default 4)")
    ap.add_argument("--concurrency", "--conc", type=int, default=64, help="connections in flight (default 64)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per round (default 20)")
    ap.add_argument("--warm", type=float, default=3.0, help="warm-up seconds per round, not measured (default 3)")
    ap.add_argument("--drain", type=float, default=30.0,
                    help="seconds the requests in flight at the end may take to finish (default 30)")
    ap.add_argument("--image", default=report.KEY_IMAGE, choices=list(imagegen.SPECS),
                    help=f"image served to both sides (default {report.KEY_IMAGE})")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra server setting for both sides (repeatable)")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "ab_code.json",
                    help="where the JSON summary goes (default bench/results/ab_code.json)")
    a = ap.parse_args()
    if a.rounds < 1 or a.seconds <= 0 or a.concurrency < 1:
        ap.error("--rounds, --seconds and --concurrency must be positive")
    env = dict(s.split("=", 1) for s in a.env)
    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info()
    new_rev = wt.describe_checkout(ROOT)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    with wt.sigterm_as_interrupt(), wt.worktree(a.baseline) as (base_tree, base_sha), \
            tempfile.TemporaryDirectory(prefix="nsfw-ab-code-") as tmp:
        trees = {"baseline": base_tree, "new": ROOT}
        sources = {s: wt.imported_from(t) for s, t in trees.items()}
        log(f"baseline {a.baseline} = {base_sha[:10]} imports {sources['baseline']}; "
            f"new {new_rev} imports {sources['new']}")
        if sources["baseline"] == sources["new"]:
            raise SystemExit("both sides import the same nsfw_core: check the worktree")
        for side, tree in trees.items():
            wt.prepare(tree, f"ab-code-{side}")
        with run_all.image_server() as (facts, img_port, others):
            path_fn = run_all.predict_path(img_port, facts[a.image]["file"])
            for i in range(a.rounds):
                for side in SIDES:
                    server_env = {"NSFW_ALLOW_PRIVATE_HOSTS": f"127.0.0.1:{img_port}", **env}
                    proc, port, sampler, startup = wt.start_server(
                        f"ab-code-{side}", trees[side], Path(tmp) / f"{side}-{i}", server_env)
                    try:
                        r = run_all.run_cell(port, path_fn, a.concurrency, a.seconds, a.warm, sampler, others,
                                             a.drain)
                    finally:
                        run_all.stop(proc, sampler)
                    row = {"round": i + 1, "rps": r["rps"], "cpu_ms": r.get("server_cpu_ms_per_req"),
                           "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "ok": r["ok"], "errors": r["errors"],
                           "error_kinds": r["error_kinds"], "peak_rss_mib": r["peak_rss_mib"],
                           "startup_s": round(startup, 1), "server_cores": r["cpu"]["server_cores"],
                           "other_jobs_cores": r["cpu"]["other_jobs_cores"]}
                    rows[side].append(row)
                    log(f"round {i + 1}/{a.rounds} {side:8s}: {row['rps']} req/s, {row['cpu_ms']} CPU ms/req, "
                        f"p50 {row['p50_ms']} p99 {row['p99_ms']} ms, errors {row['errors']}, "
                        f"rss {row['peak_rss_mib']} MiB, other jobs {row['other_jobs_cores']} cores")

    med = {s: {k: median(x[k] for x in rows[s] if x[k] is not None)
               for k in ("rps", "cpu_ms", "p50_ms", "p99_ms", "peak_rss_mib", "other_jobs_cores")}
           for s in SIDES}
    pairs = list(zip(rows["baseline"], rows["new"], strict=False))
    out = {
        "date_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/ab_code.py", *sys.argv[1:]]),
        "machine": machine,
        "baseline": {"rev": a.baseline, "commit": base_sha, "imports": sources["baseline"]},
        "new": {"rev": new_rev, "imports": sources["new"]},
        "settings": env or "defaults",
        "image": a.image, "concurrency": a.concurrency, "seconds": a.seconds, "warm_s": a.warm,
        "rounds": a.rounds, "order": "baseline, new, baseline, new ...",
        "median": med,
        "ratio_new_over_baseline": {
            "rps": ratio(med["new"]["rps"], med["baseline"]["rps"]),
            "cpu_ms": ratio(med["new"]["cpu_ms"], med["baseline"]["cpu_ms"]),
            "p50_ms": ratio(med["new"]["p50_ms"], med["baseline"]["p50_ms"]),
        },
        "per_round_ratio_new_over_baseline": {
            "rps": [ratio(n["rps"], b["rps"]) for b, n in pairs],
            "cpu_ms": [ratio(n["cpu_ms"], b["cpu_ms"]) for b, n in pairs],
        },
        "rows": rows,
        "loadavg_at_end": machine_info()["loadavg_at_start"],
    }
    per = out["per_round_ratio_new_over_baseline"]
    out["median_of_per_round_ratios"] = {k: median(x for x in v if x is not None) for k, v in per.items()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")

    print()
    print(f"A/B of code, {a.image} c{a.concurrency}, {a.seconds:g} s x {a.rounds} rounds per side, "
          f"{out['date_utc']}, {machine.get('cpu_model')} ({machine.get('cores')} cores)")
    print(f"baseline = {a.baseline} ({base_sha[:10]}), new = {new_rev}")
    print()
    print("| round | baseline req/s | new req/s | new/base | baseline CPU ms/req | new CPU ms/req | new/base |")
    print("|---|---|---|---|---|---|---|")
    for b, n in pairs:
        print(f"| {b['round']} | {b['rps']} | {n['rps']} | {ratio(n['rps'], b['rps'])} | {b['cpu_ms']} | "
              f"{n['cpu_ms']} | {ratio(n['cpu_ms'], b['cpu_ms'])} |")
    rr = out["ratio_new_over_baseline"]
    print(f"| **median** | {med['baseline']['rps']} | {med['new']['rps']} | **{rr['rps']}** | "
          f"{med['baseline']['cpu_ms']} | {med['new']['cpu_ms']} | **{rr['cpu_ms']}** |")
    print()
    print(f"median of per-round ratios: req/s {out['median_of_per_round_ratios']['rps']}, "
          f"CPU ms/req {out['median_of_per_round_ratios']['cpu_ms']}; p50 ms baseline {med['baseline']['p50_ms']}, "
          f"new {med['new']['p50_ms']}; errors baseline {sum(x['errors'] for x in rows['baseline'])}, "
          f"new {sum(x['errors'] for x in rows['new'])}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
