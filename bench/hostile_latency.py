"""Latency of a small PNG while hostile uploads are in flight, before and after (issue 13, item 4):

    .venv/bin/python bench/hostile_latency.py --baseline REV [--seconds 30] [--classes tiff_tile,png_2m_x1,...]

For each class of hostile input (built by ``tests/helpers/hostile.py``; ``none`` is
the baseline without hostile load) and each side -- *before*: ``REV`` checked out
with ``git worktree add --detach`` into a temporary folder (removed at the end);
*after*: this checkout's working tree as it is -- the script:

1. starts ``app.py`` with this checkout's ``.venv`` Python (cwd = the side's tree),
   on loopback only, with a fresh temporary ``NSFW_DATA_DIR``, the shared compiled
   model (``NSFW_COMPILED_DIR`` = this checkout's ``var/compiled``) and
   ``NSFW_MAX_BYTES`` large enough for the files; otherwise the defaults (``--env``
   adds settings to both sides);
2. warms it up with ``--warm-requests`` small PNGs, then samples the server's
   process tree (children included) for a second: its idle RSS;
3. keeps ``--inflight`` (4) uploads of the class in flight for ``--seconds``
   (POST /predict, the bytes as the body, ``Content-Type: application/octet-stream``;
   when one answers the next is sent), while a separate client sends a 64x48 PNG
   the same way, one at a time, and records each answer's latency;
4. lets the uploads still in flight finish (each request has a ``--timeout``
   client timeout), samples the peak RSS of the tree, and stops the server.

Reported per class and side: p50/p99/max of the small PNG over all its requests
(one that got no answer counts with the time waited, up to ``--timeout``; the JSON
also has them over the 200 answers alone) and what it got, the hostile uploads'
answers (status and error code, counts) and answer times, and the server tree's
peak RSS over its idle RSS.  A memory guard
(``--rss-guard-mib``) kills a server whose tree grows past it, and says so, so the
*before* side cannot take the machine down; every loop is bounded in time and
count.  Prints a Markdown table and writes ``--out`` (bench/results/hostile_latency.json)
after every class.  Takes about (start ~10 s + ``--seconds`` + the slowest answer
in flight at the end) per class and side: ~15 min for the defaults.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import io
import json
import socket
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worktree as wt
from common import BENCH, ROOT, log, machine_info, percentile

sys.path.insert(0, str(ROOT))
from tests.helpers import hostile

MIB = 2**20

# name -> (what it is, builder).  Builders run once per run of the script.
CLASSES: dict[str, tuple[str, Callable[[], bytes] | None]] = {
    "none": ("no hostile load (the small PNG alone)", None),
    "tiff_tile": ("16x16 deflate TIFF declaring one 46000x46000 tile (libtiff allocates the tile)",
                  lambda: hostile.tiff(compression=8, data=zlib.compress(b"\0" * 256))),
    "png_2m_x1": ("PNG of 2,000,000x1 pixels (extreme aspect ratio)", lambda: hostile.png(2_000_000, 1)),
    "png_50m_x1": ("PNG of 50,000,000x1 pixels (extreme aspect ratio, at the pixel limit)",
                   lambda: hostile.png(50_000_000, 1)),
    "jpeg_20k_scans": ("2048x2048 progressive JPEG of 20,000 (empty) scans",
                       lambda: hostile.progressive_scans(2048, 20_000)),
    "jpeg_4096_90_scans": ("4096x4096 progressive JPEG of 90 scans (under the scan cap, slow to decode)",
                           lambda: hostile.progressive_scans(4096, 90)),
    "gif_200k_frames": ("animated GIF of 200,000 1x1 frames", lambda: hostile.animated_gif(200_000)),
}
DEFAULT_CLASSES = ["none", "tiff_tile", "png_2m_x1", "png_50m_x1", "jpeg_20k_scans", "jpeg_4096_90_scans"]
MAX_PER_CLIENT = 100_000  # requests one client thread may send in a run (a bound besides time)


def small_png() -> bytes:
    """A 64x48 RGB PNG with a gradient (decodes in well under a millisecond)."""
    from PIL import Image
    img = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class Client:
    """One keep-alive connection to the server that POSTs image bytes and times the answers."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[str, float]:
        """(outcome, seconds): outcome is '200', '413 image_too_large', ... or the exception's name."""
        t0 = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.request("POST", "/predict", body=body,
                              headers={"Content-Type": "application/octet-stream", "Accept": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
            if resp.getheader("connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return (f"timeout after {self.timeout:g} s" if isinstance(exc, (socket.timeout, TimeoutError))
                    else type(exc).__name__), time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        if resp.status == 200:
            return "200", elapsed
        try:
            code = json.loads(data).get("code", "")
        except (ValueError, AttributeError):
            code = ""
        return f"{resp.status} {code}".strip(), elapsed

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def counts(outcomes: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in outcomes:
        out[o] = out.get(o, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def measure(cls: str, side: str, tree: Path, body: bytes | None, small: bytes, a: argparse.Namespace,
            env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """One server start: idle RSS, then the small PNG's latency under ``a.inflight`` uploads of ``body``."""
    server_env = {"NSFW_MAX_BYTES": str(max(10 * MIB, 2 * len(body or b""))), **env}
    proc, port, sampler, startup = wt.start_server(f"hostile-{side}", tree, tmp / f"{cls}-{side}", server_env)
    res: dict[str, Any] = {"class": cls, "side": side, "startup_s": round(startup, 1),
                           "hostile_bytes": len(body) if body else 0, "aborted": None}
    stop = threading.Event()
    try:
        warm = Client(port, a.timeout)
        warm_out = [warm.post(small)[0] for _ in range(a.warm_requests)]
        warm.close()
        if any(o != "200" for o in warm_out):
            res["warm_up_answers"] = counts(warm_out)
        time.sleep(0.5)
        sampler.reset_cell()
        time.sleep(1.0)
        sampler.sample()
        idle = sampler.cell_peak
        res["idle_rss_mib"] = round(idle / MIB, 1)
        sampler.reset_cell()

        def guard() -> None:  # the memory guard: the machine must survive the 'before' side
            while not stop.is_set():
                if sampler.cell_peak > a.rss_guard_mib * MIB:
                    res["aborted"] = (f"server tree RSS {sampler.cell_peak / MIB:.0f} MiB passed the guard "
                                      f"({a.rss_guard_mib} MiB): killed")
                    log(f"    {res['aborted']}")
                    wt.kill_now(proc)
                    return
                if not proc.alive():
                    res["aborted"] = res["aborted"] or f"server exited ({proc.p.returncode}) during the run"
                    return
                stop.wait(0.05)

        hostile_rows: list[tuple[str, float, float]] = []  # (outcome, seconds, sent at relative to t0)
        lock = threading.Lock()
        t0 = time.perf_counter()
        end = t0 + a.lead + a.seconds

        def upload_loop() -> None:
            assert body is not None  # started only with a hostile body
            c = Client(port, a.timeout)
            try:
                for _ in range(MAX_PER_CLIENT):
                    if stop.is_set() or time.perf_counter() >= end or res["aborted"]:
                        break
                    sent = time.perf_counter() - t0
                    outcome, secs = c.post(body)
                    with lock:
                        hostile_rows.append((outcome, secs, sent))
                    if not outcome[:1].isdigit():  # no answer: do not spin on a dead or stuck server
                        time.sleep(0.2)
            finally:
                c.close()

        threading.Thread(target=guard, daemon=True).start()
        uploaders = [threading.Thread(target=upload_loop, daemon=True) for _ in range(a.inflight if body else 0)]
        for t in uploaders:
            t.start()
        time.sleep(a.lead)  # the uploads are in flight before the small PNG is measured
        lat: list[float] = []  # 200 answers
        lat_all: list[float] = []  # every attempt: a timeout counts with its time (a lower bound)
        small_out: list[str] = []
        c = Client(port, a.timeout)
        for _ in range(MAX_PER_CLIENT):
            if time.perf_counter() >= end or res["aborted"]:
                break
            outcome, secs = c.post(small)
            small_out.append(outcome)
            lat_all.append(secs)
            if outcome == "200":
                lat.append(secs)
            elif not outcome[:1].isdigit():
                time.sleep(0.2)
        c.close()
        t_small_end = time.perf_counter()
        # the uploads in flight now may finish (each within the client timeout)
        for t in uploaders:
            t.join(max(0.1, end + a.timeout + 5 - time.perf_counter()))
        res["uploads_still_running"] = sum(t.is_alive() for t in uploaders)
        res["drain_s"] = round(time.perf_counter() - t_small_end, 1)
        sampler.sample()
        stop.set()
        lat.sort()
        lat_all.sort()
        # p50/p99/max over every attempt (an answer that never came counts with the time waited for it);
        # ok_*: over the 200 answers only
        res["small_png"] = {"answers": counts(small_out), "n": len(lat_all), "n_ok": len(lat),
                            "p50_ms": ms(percentile(lat_all, 50)), "p99_ms": ms(percentile(lat_all, 99)),
                            "max_ms": ms(lat_all[-1] if lat_all else None),
                            "ok_p50_ms": ms(percentile(lat, 50)), "ok_p99_ms": ms(percentile(lat, 99)),
                            "ok_mean_ms": ms(sum(lat) / len(lat) if lat else None)}
        if body:
            answer_s = sorted(s for _, s, _ in hostile_rows)
            answer_p50 = percentile(answer_s, 50)  # None when there is none
            res["hostile"] = {"sent": len(hostile_rows), "answers": counts([o for o, _, _ in hostile_rows]),
                              "answer_s_min": round(answer_s[0], 2) if answer_s else None,
                              "answer_s_p50": round(answer_p50, 2) if answer_p50 is not None else None,
                              "answer_s_max": round(answer_s[-1], 2) if answer_s else None}
        res["peak_rss_mib"] = round(sampler.cell_peak / MIB, 1)
        res["peak_over_idle_mib"] = round((sampler.cell_peak - idle) / MIB, 1)
        res["processes_max"] = sampler.procs
        res["server_alive_at_end"] = proc.alive()
        if not proc.alive():
            res["server_log_tail"] = proc.tail(1500)
    finally:
        stop.set()
        sampler.stop()
        proc.stop()
    return res


def fmt_answers(d: dict[str, int] | None) -> str:
    return ", ".join(f"{k}: {v}" for k, v in (d or {}).items()) or "-"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| class | side | small PNG p50 ms | p99 ms | max ms | small PNG answers | hostile answers "
             "| hostile answer s (min / p50 / max) | peak RSS over idle MiB | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, h = r.get("small_png", {}), r.get("hostile")
        times = f"{h['answer_s_min']} / {h['answer_s_p50']} / {h['answer_s_max']}" if h else "-"
        bad = s.get("n", 0) - s.get("n_ok", 0)
        notes = "; ".join(x for x in (r.get("aborted"), r.get("error"),
                                      f"{bad} of {s['n']} small PNGs not answered 200 (their wait counts)"
                                      if bad else None,
                                      f"{r['uploads_still_running']} uploads unanswered at the end"
                                      if r.get("uploads_still_running") else None) if x)
        lines.append(f"| {r['class']} | {r['side']} | {s.get('p50_ms')} | {s.get('p99_ms')} | {s.get('max_ms')} | "
                     f"{fmt_answers(s.get('answers'))} | {fmt_answers(h['answers']) if h else '-'} | {times} | "
                     f"{r.get('peak_over_idle_mib')} | {notes} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", metavar="REV",
                    help="git revision of the 'before' side (commit, tag, branch, HEAD~1 ...); "
                         "required unless --sides after")
    ap.add_argument("--sides", default="before,after",
                    help="which sides to run, in this order per class: before, after or both (default before,after)")
    ap.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                    help=f"comma-separated classes (default {','.join(DEFAULT_CLASSES)}); any of: "
                         + "; ".join(f"{k}: {v[0]}" for k, v in CLASSES.items()))
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="seconds the small PNG is measured under load, per class and side (default 30)")
    ap.add_argument("--inflight", type=int, default=4, help="hostile uploads kept in flight (default 4)")
    ap.add_argument("--lead", type=float, default=0.5,
                    help="seconds the uploads run before the small PNG is measured (default 0.5)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="client timeout of every request, seconds (default 120)")
    ap.add_argument("--warm-requests", type=int, default=20, help="small PNGs sent before measuring (default 20)")
    ap.add_argument("--rss-guard-mib", type=int, default=None,
                    help="kill a server whose process tree passes this RSS (default 75%% of MemAvailable now)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra server setting for both sides (repeatable)")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "hostile_latency.json",
                    help="where the JSON goes, rewritten after every class "
                         "(default bench/results/hostile_latency.json)")
    a = ap.parse_args()
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    classes = [c.strip() for c in a.classes.split(",") if c.strip()]
    if not sides or any(s not in ("before", "after") for s in sides):
        ap.error("--sides takes before, after or both")
    if unknown := [c for c in classes if c not in CLASSES]:
        ap.error(f"unknown classes {unknown}; known: {', '.join(CLASSES)}")
    if "before" in sides and not a.baseline:
        ap.error("--baseline REV is required for the 'before' side")
    if a.seconds <= 0 or a.inflight < 1 or a.timeout <= 0:
        ap.error("--seconds, --inflight and --timeout must be positive")
    if a.rss_guard_mib is None:
        avail = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                     if ln.startswith("MemAvailable:"))
        a.rss_guard_mib = int(avail * 0.75 / 1024)
    env = dict(s.split("=", 1) for s in a.env)
    started = dt.datetime.now(dt.timezone.utc)
    small = small_png()
    bodies = {c: (make() if (make := CLASSES[c][1]) else None) for c in classes}
    out: dict[str, Any] = {
        "date_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/hostile_latency.py", *sys.argv[1:]]),
        "machine": machine_info(), "after": {"rev": wt.describe_checkout(ROOT)},
        "settings": {"defaults": True, **env, "NSFW_MAX_BYTES": "max(10 MiB, 2 x the hostile file)"},
        "method": {"seconds": a.seconds, "inflight": a.inflight, "lead_s": a.lead, "client_timeout_s": a.timeout,
                   "warm_requests": a.warm_requests, "rss_guard_mib": a.rss_guard_mib,
                   "small_png_bytes": len(small), "small_png": "64x48 RGB PNG, sent one at a time",
                   "rss": "sum over the server's process tree (children included), sampled every 100 ms; "
                          "idle = peak over 1 s after the warm-up"},
        "classes": {c: {"what": CLASSES[c][0], "bytes": len(b) if b else 0} for c, b in bodies.items()},
        "rows": [],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with wt.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="nsfw-hostile-") as tmp_s:
        tmp = Path(tmp_s)
        with (wt.worktree(a.baseline) if "before" in sides else _no_tree()) as (base_tree, base_sha):
            trees = {"after": ROOT} if base_tree is None else {"before": base_tree, "after": ROOT}
            if base_sha and base_tree is not None:
                out["before"] = {"rev": a.baseline, "commit": base_sha, "imports": wt.imported_from(base_tree)}
            out["after"]["imports"] = wt.imported_from(ROOT)
            for s in sides:
                wt.prepare(trees[s], f"hostile-{s}")
            for cls in classes:
                for side in sides:
                    hostile_body = bodies[cls]
                    log(f"{cls} / {side}: {CLASSES[cls][0]}"
                        + (f", {len(hostile_body)} bytes, {a.inflight} in flight" if hostile_body else "")
                        + f", {a.seconds:g} s")
                    try:
                        r = measure(cls, side, trees[side], bodies[cls], small, a, env, tmp)
                    except (RuntimeError, OSError) as exc:  # a side that cannot start is recorded, not fatal
                        r = {"class": cls, "side": side, "error": f"{type(exc).__name__}: {str(exc)[:800]}"}
                    out["rows"].append(r)
                    s, h = r.get("small_png", {}), r.get("hostile")
                    log(f"    small PNG p50 {s.get('p50_ms')} p99 {s.get('p99_ms')} max {s.get('max_ms')} ms "
                        f"({s.get('n_ok')} ok: {fmt_answers(s.get('answers'))}); hostile: "
                        f"{fmt_answers(h['answers']) if h else '-'}, answer s max {h['answer_s_max'] if h else '-'}; "
                        f"peak RSS over idle {r.get('peak_over_idle_mib')} MiB (idle {r.get('idle_rss_mib')})"
                        + (f"; {r['aborted']}" if r.get("aborted") else "")
                        + (f"; {r['error']}" if r.get("error") else ""))
                a.out.write_text(json.dumps(out, indent=1) + "\n")
    out["loadavg_at_end"] = machine_info()["loadavg_at_start"]
    out["table_markdown"] = table(out["rows"])
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print()
    print(f"Small PNG (64x48) latency with {a.inflight} hostile uploads in flight, {a.seconds:g} s per class and side, "
          f"{out['date_utc']}, {out['machine'].get('cpu_model')} ({out['machine'].get('cores')} cores)")
    print(f"before = {a.baseline} ({(base_sha or '')[:10]}), after = {out['after']['rev']}" if base_sha
          else f"after = {out['after']['rev']}")
    print()
    print(out["table_markdown"])
    print()
    print(f"wrote {a.out}")


class _no_tree:
    def __enter__(self) -> tuple[None, None]:
        return None, None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
