"""nsfw-scan (issue 28), side by side in one run on the same 1 MP JPEGs: the scan's images per second against
the model-only ceiling and against ``nsfw-classify --server``; reverdict on a million stored rows; memory per
actor; and the opt-in ``--fast-decode`` judged by how often its verdict agrees with the default's.

``.venv/bin/python bench/scan.py [--images 400] [--repeat 3] [--rows 1000000] [--known 1000] [--quick]``
``.venv/bin/python bench/scan.py --hostile [--images 48]``

Prints one JSON document (and writes ``bench/results/scan.json``, or ``scan_hostile.json``); BENCHMARKS.md has
the figures.

``--hostile`` (issue 28: "memory per worker stays within the settings" under hostile files) measures memory
only: a catalogue of ``--images`` benign 1 MP JPEGs and the hostile files of :func:`hostile_catalogue` (pixel
and decompression bombs, huge declared sizes in PNG, GIF, JPEG and TIFF headers, progressive JPEGs of many
scans, videos at and over the frame-size limit, a stream that outgrows its header), scanned once with the
benign images alone and once with everything, each by ``nsfw-scan DIR --out NEW`` (the defaults).  Per process
of the tree: peak RSS (VmHWM, the kernel's own peak, read every 0.1 s) and peak address space (VmPeak), split
into the actors, their isolated-lane children (``nsfw_core.images.sandbox``), the driver and the rest (Ray);
beside them what the settings allow (the pixel budget, the isolated lane's address-space headroom).

1. Images: ``--images`` distinct 1280x800 JPEGs (q90, ``bench/images.make_image``: photograph-like), made once
   into ``bench/results/scratch/scan-1mp-N``.
2. Each repetition, in this order, one after the other on the same machine:
   (a) model-only ceiling: the forward pass alone on preprocessed inputs, batches of 32, all threads, the
       service's lanes (BENCHMARKS.md's (a)), in its own process;
   (b) ``nsfw-scan DIR --out NEW`` (embedded Ray, the defaults: one single-threaded actor per CPU, batch 32):
       the steady state (images answered after the first answer / time from the first answer to the last)
       and the whole command (Ray's start included); CPU of the whole process tree per image; peak RSS of
       each actor process and of the driver;
   (c) the same with ``--fast-decode``;
   (d) ``nsfw-classify --server URL DIR`` (4 requests at a time, files sent as base64) against
       ``python app.py`` on 127.0.0.1, started once; the command's wall time.
   Then once: (e) the same scan again on its own dataset: every image read and hashed, none scored.
3. reverdict on ``--rows`` synthetic stored rows (200 parts): a new threshold (every part rewritten), the same
   again (nothing changes), a dry run, and with ``--known`` hash-list entries in force (sha256 and PDQ).
4. Agreement of ``--fast-decode`` with the default, per image set: the synthetic 1 MP JPEGs, Debian's
   openclipart drawings and GNOME backgrounds made into 1280x800 JPEGs (benign: label safe), and the
   repository's labelled demo set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench scripts import each other by name

from common import SCRATCH, Proc, cpu_seconds, free_port, machine_info, process_tree, rss_bytes, wait_ready

PY = str(ROOT / ".venv" / "bin" / "python")
COMPILED = str(ROOT / "var" / "compiled")
MIB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_images(n: int) -> Path:
    from images import make_image
    from PIL import Image

    folder = SCRATCH / f"scan-1mp-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"img{i:05d}.jpg"
        if not path.exists():
            img: Image.Image = make_image(1280, 800, seed=5000 + i)
            img.save(path.with_suffix(".tmp"), "JPEG", quality=90)
            path.with_suffix(".tmp").replace(path)
    return folder


def env(data_dir: Path, **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "RAY_"))}
    out.update(NSFW_DATA_DIR=str(data_dir), NSFW_COMPILED_DIR=COMPILED, PYTHONUNBUFFERED="1")
    out.update(extra)
    return out


def _status(pid: int) -> tuple[int, int, int]:
    """(VmHWM, VmPeak) in bytes and the parent's pid, from /proc/PID/status (zeros once the process is gone)."""
    out = {"VmHWM": 0, "VmPeak": 0, "PPid": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                number = int(value.split()[0])
                out[key] = number if key == "PPid" else number * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out["VmHWM"], out["VmPeak"], out["PPid"]


class Sampler(threading.Thread):
    """CPU seconds (max seen per pid) and peak RSS per pid of a process tree, every 0.1 s."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.cpu: dict[int, float] = {}
        self.rss: dict[int, int] = {}
        self.hwm: dict[int, int] = {}  # VmHWM: the kernel's peak RSS, so a spike between samples still counts
        self.vm_peak: dict[int, int] = {}  # VmPeak: the peak address space (what RLIMIT_AS bounds)
        self.parent: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in process_tree(self.root):
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), cpu_seconds(pid))
                self.rss[pid] = max(self.rss.get(pid, 0), rss_bytes(pid))
                hwm, peak, ppid = _status(pid)
                self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)
                self.vm_peak[pid] = max(self.vm_peak.get(pid, 0), peak)
                if ppid:
                    self.parent[pid] = ppid
                try:  # read every time: Ray renames a worker (ray::MapWorker...) once it becomes an actor
                    name = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")[:120]
                except OSError:
                    name = ""
                if name or pid not in self.names:  # an exited process (a zombie) reads empty: keep its name
                    self.names[pid] = name or "?"
            time.sleep(0.1)

    def stop(self) -> None:
        self.done.set()
        self.join()


# ---------------------------------------------------------------- (a) the model-only ceiling


def ceiling_child(seconds: float) -> dict[str, Any]:
    import numpy as np

    from nsfw_core.inference.model import load_model

    model = load_model("MobileNetV2Mid", ROOT / "model", threads=0, lanes=True, cache_dir=COMPILED)
    batch = np.random.default_rng(0).random((32, 224, 224, 3), dtype=np.float32)
    model.predict(batch)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        model.predict(batch)
        n += 32
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images_per_second": n / wall, "cpu_ms_per_image": cpu / n * 1000, "threads": model.threads,
            "lanes": model.lanes}


def ceiling(seconds: float) -> dict[str, Any]:
    done = subprocess.run([PY, __file__, "--ceiling-child", str(seconds)], env=env(Path(tempfile.gettempdir())),
                          capture_output=True, text=True, timeout=300)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- (b) (c) (e) the scan


def scan(folder: Path | list[str], out: Path, data_dir: Path, *extra: str, memory: bool = False) -> dict[str, Any]:
    sources = [str(folder)] if isinstance(folder, Path) else folder
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "nsfw_core.scan.cli", *sources, "--out", str(out), "--json", *extra],
                            cwd=ROOT, env=env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate(timeout=1200)
    wall = time.perf_counter() - t0
    sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"nsfw-scan failed ({proc.returncode}): {stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    actors = {pid: rss for pid, rss in sampler.rss.items() if "MapWorker" in sampler.names.get(pid, "")}
    processed = summary["scored"] + summary["skipped"] + summary["errors"]
    return {
        "steady_images_per_second": summary["steady_per_second"],
        "command_images_per_second": processed / wall,
        "wall_s": wall,
        "scored": summary["scored"], "skipped": summary["skipped"], "errors": summary["errors"],
        "actors": summary["actors"], "model_loads": summary["model_loads"],
        "processed": processed,
        "cpu_s_tree": sum(sampler.cpu.values()),
        "cpu_ms_per_image_tree": sum(sampler.cpu.values()) / max(1, processed) * 1000,
        "actor_peak_rss_mib": sorted(round(v / MIB, 1) for v in actors.values()),
        "driver_peak_rss_mib": round(sampler.rss.get(proc.pid, 0) / MIB, 1),
        "tree_processes": len(sampler.cpu),
        **({"memory": memory_by_role(sampler, proc.pid), "error_codes": summary.get("error_codes", {})}
           if memory else {}),
    }


def memory_by_role(sampler: Sampler, driver: int) -> dict[str, Any]:
    """Peak RSS (VmHWM) and peak address space (VmPeak) of each process, by role: the actors (Ray names them
    ``ray::MapWorker...``), their isolated-lane children (``-m nsfw_core.images.sandbox``; a child killed at its
    deadline is replaced, so an actor may have had several), the driver, and the rest (Ray's own processes)."""
    actors = {pid for pid, name in sampler.names.items() if "MapWorker" in name}
    roles: dict[str, list[dict[str, Any]]] = {"actors": [], "sandbox_children": [], "driver": [], "ray_and_other": []}
    for pid in sorted(sampler.rss):
        name = sampler.names.get(pid, "?")
        row = {"pid": pid, "peak_rss_mib": round(max(sampler.hwm.get(pid, 0), sampler.rss[pid]) / MIB, 1),
               "peak_address_space_mib": round(sampler.vm_peak.get(pid, 0) / MIB, 1),
               "command": name.replace("\0", " ").strip()[:80]}
        if pid in actors:
            roles["actors"].append(row)
        elif "nsfw_core.images.sandbox" in name:
            row["actor"] = sampler.parent.get(pid)
            roles["sandbox_children"].append(row)
        elif pid == driver:
            roles["driver"].append(row)
        else:
            roles["ray_and_other"].append(row)
    out: dict[str, Any] = {role: rows for role, rows in roles.items()}
    for role, rows in roles.items():
        out[f"{role}_max_peak_rss_mib"] = max((r["peak_rss_mib"] for r in rows), default=None)
    out["ray_and_other_sum_peak_rss_mib"] = round(sum(r["peak_rss_mib"] for r in roles["ray_and_other"]), 1)
    return out


# ---------------------------------------------------------------- (d) nsfw-classify --server


def classify_server(url: str, folder: Path, data_dir: Path, server_pid: int) -> dict[str, Any]:
    c0 = sum(cpu_seconds(p) for p in process_tree(server_pid))
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "nsfw_core", "--server", url, str(folder), "--format", "json"],
                            cwd=ROOT, env=env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate(timeout=1200)
    wall = time.perf_counter() - t0
    sampler.stop()
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or any("error" in r for r in rows):
        raise RuntimeError(f"nsfw-classify --server failed ({proc.returncode}): {stderr[-2000:]}")
    server_cpu = sum(cpu_seconds(p) for p in process_tree(server_pid)) - c0
    return {"images_per_second": len(rows) / wall, "wall_s": wall, "images": len(rows),
            "cpu_ms_per_image_server_and_client": (server_cpu + sum(sampler.cpu.values())) / len(rows) * 1000}


# ---------------------------------------------------------------- 3. reverdict on a million rows


def reverdict_child(rows: int, known: int) -> dict[str, Any]:
    import hashlib

    import numpy as np
    import pyarrow as pa

    from nsfw_core.base.verdict import Thresholds
    from nsfw_core.scan.dataset import ScanDataset, new_run_id
    from nsfw_core.scan.judge import judge
    from nsfw_core.scan.reverdict import reverdict
    from nsfw_core.scan.schema import SCHEMA
    from nsfw_core.state.db import open_pool
    from nsfw_core.state.known import KnownImages, ListEntry

    tmp = Path(tempfile.mkdtemp(prefix="scan-reverdict-"))
    try:
        rng = np.random.default_rng(1)
        t0 = time.perf_counter()
        ds = ScanDataset(str(tmp / "ds"))
        ds.create_or_open("bench")
        parts = 200
        per = rows // parts
        shas_all: list[str] = []
        pdq_all = rng.integers(0, 256, (rows, 32), dtype=np.uint8)
        run = new_run_id()
        now = dt.datetime.now(dt.timezone.utc)
        for k in range(parts):
            n = per
            scores = rng.dirichlet([0.3, 0.1, 1.0, 0.2, 0.2], n).astype(np.float32)
            shas = [hashlib.sha256(os.urandom(16)).hexdigest() for _ in range(n)]
            shas_all.extend(shas)
            cols: dict[str, Any] = {
                "source": pa.array([f"s3://catalogue/images/{k * per + i:09d}.jpg" for i in range(n)]),
                "kind": pa.array(["object"] * n), "size": pa.array(rng.integers(50_000, 500_000, n)),
                "sha256": pa.array(shas), "model": pa.array(["MobileNetV2Mid"] * n),
                "model_version": pa.array(["nsfwjs@4.4.0+fee38f0bcbad"] * n), "decode": pa.array(["default"] * n),
                "pdq": pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [None, pa.py_buffer(
                    pdq_all[k * per:(k + 1) * per].tobytes())]),
                "scanned_at": pa.array([now] * n, pa.timestamp("ms", tz="UTC")), "run_id": pa.array([run] * n),
            }
            for j, c in enumerate(("drawings", "hentai", "neutral", "porn", "sexy")):
                cols[c] = pa.array(scores[:, j])
            table = pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in SCHEMA}).cast(SCHEMA)
            for name, column in judge(table, Thresholds(), 1).items():
                table = table.set_column(table.schema.get_field_index(name), name, column)
            ds.write_part(table, run, k)
        build_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (tmp / "ds").glob("part-*"))
        out: dict[str, Any] = {"rows": per * parts, "parts": parts, "build_s": build_s, "dataset_mib": size / MIB}

        def timed(name: str, **kwargs: Any) -> None:
            t = time.perf_counter()
            report = reverdict(ds, **kwargs)
            out[name] = {"seconds": time.perf_counter() - t, "changed": report.changed,
                         "parts_rewritten": report.parts_rewritten}

        timed("new_thresholds", thresholds=Thresholds(adult=0.6, safe=0.8), version=2)
        timed("same_again", thresholds=Thresholds(adult=0.6, safe=0.8), version=2)
        timed("dry_run", thresholds=Thresholds(), version=1, dry_run=True)
        pool = open_pool(None, tmp)
        index = KnownImages(pool)
        picks = rng.choice(rows, known, replace=False)
        entries = [ListEntry(shas_all[i] if j % 2 == 0 else None, None if j % 2 == 0 else pdq_all[i].tobytes().hex(),
                             "deny") for j, i in enumerate(picks)]
        index.import_list(entries, by="bench")
        timed("with_known", thresholds=Thresholds(adult=0.6, safe=0.8), version=2, lookup=index.lookup_many)
        out["known_entries"] = known
        index.close()
        pool.close()
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- 4. agreement of --fast-decode


def labelled_sets(n_clipart: int) -> dict[str, tuple[list[Path], str | None]]:
    from PIL import Image

    out: dict[str, tuple[list[Path], str | None]] = {}
    folder = SCRATCH / "scan-agreement"
    folder.mkdir(parents=True, exist_ok=True)
    clipart = sorted(Path("/usr/share/openclipart/png").rglob("*.png"))[:: 7][:n_clipart]
    backgrounds = sorted(p for p in Path("/usr/share/backgrounds/gnome").glob("*.webp"))
    for name, sources in (("openclipart", clipart), ("gnome-backgrounds", backgrounds)):
        made = []
        for i, src in enumerate(sources):
            dst = folder / f"{name}-{i:04d}.jpg"
            if not dst.exists():
                try:
                    img = Image.open(src)
                    img.load()
                except Exception:  # a file Pillow cannot read: skipped
                    continue
                rgba = img.convert("RGBA")
                canvas = Image.new("RGB", (1280, 800), (255, 255, 255))
                rgba.thumbnail((1280, 800))
                canvas.paste(rgba, ((1280 - rgba.width) // 2, (800 - rgba.height) // 2), rgba)
                canvas.save(dst, "JPEG", quality=90)
            made.append(dst)
        if made:
            out[name] = (made, "safe")
    return out


def agreement(folder: Path, n_clipart: int) -> dict[str, Any]:
    import dataclasses

    from nsfw_core.base.settings import load_settings
    from nsfw_core.base.verdict import Thresholds
    from nsfw_core.calibration.labelsets import load_manifest
    from nsfw_core.inference.modelfiles import read_verified, version
    from nsfw_core.scan.sources import list_sources, listing_tables
    from nsfw_core.scan.worker import ScanWorker, WorkerConfig

    settings = load_settings(environ={"NSFW_COMPILED_DIR": COMPILED})
    name = settings.model_config.name
    config = WorkerConfig(model_name=name, model_version=version(*read_verified(ROOT / "model", name)),
                          model=settings.model_config, decode=settings.decode_limits, fetch=settings.fetch_policy)
    workers = {"default": ScanWorker(config), "fast": ScanWorker(dataclasses.replace(config, decode_mode="fast"))}
    demo = load_manifest(ROOT / "data" / "demo" / "manifest.csv")
    sets: dict[str, tuple[list[Any], dict[str, str]]] = {
        "synthetic 1 MP JPEG": (sorted(folder.glob("*.jpg")), {}),
        "demo set (labelled, small)": ([Path(i.source) for i in demo], {i.source: i.binary for i in demo}),
    }
    for set_name, (paths, label) in labelled_sets(n_clipart).items():
        sets[f"{set_name} as 1280x800 JPEG"] = (paths, {str(p): label for p in paths if label})
    thresholds = Thresholds()
    out = {}
    for set_name, (paths, labels) in sets.items():
        verdicts: dict[str, dict[str, str]] = {}
        scores: dict[str, dict[str, list[float]]] = {}
        seconds = {}
        for mode, worker in workers.items():
            t = time.process_time()
            rows = [r for table in listing_tables(list_sources([str(p) for p in paths]), 32)
                    for r in worker(table).to_pylist()]
            seconds[mode] = (time.process_time() - t) / max(1, len(rows)) * 1000
            scores[mode] = {r["source"]: r["scores"] for r in rows if r["scores"]}
            verdicts[mode] = {s: thresholds.decide(dict(zip(("drawings", "hentai", "neutral", "porn", "sexy"), v,
                                                            strict=True))) for s, v in scores[mode].items()}
        common = sorted(set(verdicts["default"]) & set(verdicts["fast"]))
        same = sum(verdicts["default"][s] == verdicts["fast"][s] for s in common)
        diff = max((abs(a - b) for s in common for a, b in zip(scores["default"][s], scores["fast"][s], strict=True)),
                   default=0.0)
        row: dict[str, Any] = {"images": len(common), "same_verdict": same,
                               "agreement": same / len(common) if common else None, "max_abs_score_diff": diff,
                               "cpu_ms_per_image_default": seconds["default"], "cpu_ms_per_image_fast": seconds["fast"]}
        if labels:
            truth = {os.path.abspath(k): v for k, v in labels.items()}
            for mode in workers:
                judged = [s for s in common if s in truth]
                row[f"safe_label_judged_safe_{mode}"] = sum(verdicts[mode][s] == "safe" for s in judged
                                                             if truth[s] == "safe")
                row[f"correct_or_unknown_{mode}"] = sum(verdicts[mode][s] in (truth[s], "unknown") for s in judged)
                row["labelled"] = len(judged)
        out[set_name] = row
    for worker in workers.values():
        worker.close()
    return out


# ---------------------------------------------------------------- --hostile: memory under hostile files


def hostile_catalogue(folder: Path) -> dict[str, str]:
    """Hostile files (tests/helpers/hostile.py and videos.py build them) in ``folder``, each with what it is.

    Small files whose headers declare what the limits refuse (``image_too_large`` before anything is decoded),
    and, the ones that cost memory, files just under the limits: 49 MP PNGs and headers of 49 MP JPEGs and GIFs
    with almost no data behind them (the decoder still allocates the whole image; the isolated lane), a 16 MP
    RGB PNG (the most a decode in the actor itself may take: ``INLINE_WORK``), a 4096x2160 video (the frame
    limit, ``NSFW_MAX_VIDEO_PIXELS``), a stream whose frames outgrow its header.
    """
    from tests.helpers import hostile, videos

    house = (ROOT / "tests" / "fixtures" / "reference" / "house.jpg").read_bytes()
    files: dict[str, tuple[str, Any]] = {
        "bomb-64mp.png": ("8000x8000 grey PNG of zeros, 60 KB (over NSFW_MAX_PIXELS)", lambda: hostile.png(8000, 8000)),
        "grey-49mp.png": ("7000x7000 grey PNG of zeros (under the limit: decoded, isolated lane)",
                          lambda: hostile.png(7000, 7000)),
        "rgb-49mp.png": ("7000x7000 RGB PNG of zeros, 140 KB (under the limit: decoded, isolated lane)",
                         lambda: hostile.png(7000, 7000, colour_type=2)),
        "rgb-16mp.png": ("4000x4000 RGB PNG of zeros (the largest decode done in the actor itself)",
                         lambda: hostile.png(4000, 4000, colour_type=2)),
        "row-50m.png": ("50,000,000x1 grey PNG (extreme aspect ratio)", lambda: hostile.png(50_000_000, 1)),
        "declared-49mp.jpg": ("baseline JPEG header of 7000x7000, almost no data", lambda: hostile.jpeg(7000, 7000,
                                                                                                       full=False)),
        "declared-49mp-progressive.jpg": ("progressive JPEG header of 7000x7000, almost no data",
                                          lambda: hostile.jpeg(7000, 7000, progressive=True, full=False)),
        "declared-4gp.jpg": ("JPEG header of 65000x65000 (over the limit)", lambda: hostile.jpeg(65000, 65000,
                                                                                                full=False)),
        "scans-4096-90.jpg": ("4096x4096 progressive JPEG of 90 scans (under NSFW_MAX_JPEG_SCANS, slow)",
                              lambda: hostile.progressive_scans(4096, 90)),
        "scans-2048-20000.jpg": ("2048x2048 progressive JPEG of 20,000 scans (over the scan limit)",
                                 lambda: hostile.progressive_scans(2048, 20_000)),
        "declared-49mp.gif": ("GIF whose screen and frame declare 7000x7000, one pixel of data",
                              lambda: hostile.gif_any((7000, 7000), [(0, 0, 7000, 7000)], full=False)),
        "declared-4gp.gif": ("GIF declaring 65535x65535 (over the limit)",
                             lambda: hostile.gif_any((65535, 65535), [(0, 0, 65535, 65535)], full=False)),
        "frames-20000.gif": ("animated GIF of 20,000 1x1 frames", lambda: hostile.animated_gif(20_000)),
        "tile.tif": ("16x16 TIFF declaring one 46000x46000 tile", lambda: hostile.tiff()),
        "truncated.jpg": ("a third of a JPEG", lambda: house[: len(house) // 3]),
        "notes.jpg": ("text named .jpg", lambda: b"this is not an image\n" * 10),
        "empty.png": ("0 bytes", lambda: b""),
        "frames-4096x2160.mp4": ("H.264 video of 4096x2160 frames (NSFW_MAX_VIDEO_PIXELS exactly), 2 s at 5 fps",
                                 lambda: videos.make("mp4", "h264", seconds=2.0, fps=5, size=(4096, 2160))),
        "frames-4096x2304.mp4": ("H.264 video of 4096x2304 frames (over NSFW_MAX_VIDEO_PIXELS)",
                                 lambda: videos.make("mp4", "h264", seconds=0.4, fps=5, size=(4096, 2304))),
        "outgrowing.mkv": ("MKV declaring 64x48 frames that carries 1024x1024 ones", lambda: videos.outgrowing()),
    }
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for name, (what, build) in files.items():
        path = folder / name
        if not path.exists():
            path.with_suffix(".tmp").write_bytes(build())
            path.with_suffix(".tmp").replace(path)
        out[name] = f"{what}; {path.stat().st_size} bytes"
    return out


def bounds() -> dict[str, Any]:
    """What the settings allow, from the code (the defaults: the bench clears NSFW_* from the environment)."""
    from nsfw_core.base.settings import load_settings
    from nsfw_core.images import sandbox, structure, video

    settings = load_settings(environ={})
    pixels = settings.decode_pixel_budget
    child = subprocess.Popen([PY, "-m", "nsfw_core.images.sandbox"], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, env=env(Path(tempfile.gettempdir())))
    try:  # a fresh isolated-lane child, idle once its imports are done: its limit is this plus the headroom
        last, still = -1, 0
        for _ in range(100):
            time.sleep(0.1)
            size = int(Path(f"/proc/{child.pid}/statm").read_text().split()[0]) * resource.getpagesize()
            still, last = (still + 1 if size == last else 0), size
            if still >= 10:
                break
        idle_rss = rss_bytes(child.pid)
    finally:
        child.kill()
        child.wait()
    return {
        "NSFW_DECODE_PIXEL_BUDGET": pixels, "NSFW_MAX_PIXELS": settings.max_pixels,
        "NSFW_MAX_VIDEO_PIXELS": settings.max_video_pixels, "NSFW_DECODE_TIMEOUT": settings.decode_timeout,
        "NSFW_MAX_JPEG_SCANS": settings.max_jpeg_scans, "INLINE_WORK": structure.INLINE_WORK,
        "sandbox.BYTES_PER_COST_PIXEL": sandbox.BYTES_PER_COST_PIXEL, "sandbox.MIN_HEADROOM": sandbox.MIN_HEADROOM,
        "video.BYTES_PER_PIXEL": video.BYTES_PER_PIXEL,
        "image_child_idle_address_space_mib": round(last / MIB, 1), "image_child_idle_rss_mib": round(idle_rss / MIB, 1),
        # the isolated lane: RLIMIT_AS = the child's idle address space + this headroom, at the largest cost
        "image_child_headroom_max_mib": round(max(sandbox.MIN_HEADROOM, sandbox.BYTES_PER_COST_PIXEL
                                                  * min(settings.max_pixels, pixels)) / MIB, 1),
        "video_child_headroom_max_mib": round(max(sandbox.MIN_HEADROOM, video.BYTES_PER_PIXEL
                                                  * settings.max_video_pixels) / MIB, 1),
        # an actor decodes in its own thread only images of at most INLINE_WORK, one at a time; at the isolated
        # lane's own allowance per pixel that is
        "actor_inline_decode_max_mib": round(sandbox.BYTES_PER_COST_PIXEL * structure.INLINE_WORK / MIB, 1),
    }


def hostile_main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    result: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "args": vars(args), "bounds": bounds()}
    log(f"making {args.images} 1 MP JPEGs and the hostile files")
    benign = make_images(args.images)
    folder = SCRATCH / f"scan-hostile-{args.images}"
    result["hostile_files"] = hostile_catalogue(folder / "odd")
    photos = folder / "photos"
    photos.mkdir(exist_ok=True)
    for src in sorted(benign.glob("*.jpg"))[: args.images]:
        if not (photos / src.name).exists():
            shutil.copyfile(src, photos / src.name)
    work = Path(tempfile.mkdtemp(prefix="scan-hostile-"))
    runs: dict[str, list[dict[str, Any]]] = {"benign_only": [], "hostile": []}
    try:
        for rep in range(args.repeat):  # each scan into a new dataset: every image decoded again
            log(f"repetition {rep + 1}: nsfw-scan on the {args.images} benign images alone")
            runs["benign_only"].append(scan(photos, work / f"benign{rep}", work / "data", memory=True))
            log(f"repetition {rep + 1}: nsfw-scan on the {args.images} benign images and "
                f"{len(result['hostile_files'])} hostile files")
            runs["hostile"].append(scan(folder, work / f"hostile{rep}", work / "data", memory=True))
        import pyarrow.dataset as pads

        rows = pads.dataset(str(work / "hostile0"), format="parquet").to_table(
            columns=["source", "error_code", "error_message", "verdict"]).to_pylist()
        result["hostile_rows"] = {Path(r["source"]).name: {"error_code": r["error_code"], "verdict": r["verdict"],
                                                           "error_message": (r["error_message"] or "")[:160] or None}
                                  for r in rows if "/odd/" in r["source"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(runs)
    b = result["bounds"]

    def peak(cell: str, key: str) -> float:
        return max(float(run["memory"][key] or 0.0) for run in runs[cell])

    result["summary"] = {  # the largest over the repetitions
        "actor_peak_rss_mib_benign": peak("benign_only", "actors_max_peak_rss_mib"),
        "actor_peak_rss_mib_hostile": peak("hostile", "actors_max_peak_rss_mib"),
        "actor_growth_mib": round(peak("hostile", "actors_max_peak_rss_mib")
                                  - peak("benign_only", "actors_max_peak_rss_mib"), 1),
        "actor_inline_decode_max_mib": b["actor_inline_decode_max_mib"],
        "sandbox_child_peak_rss_mib": peak("hostile", "sandbox_children_max_peak_rss_mib"),
        "sandbox_child_peak_address_space_mib": max((r["peak_address_space_mib"] for run in runs["hostile"]
                                                     for r in run["memory"]["sandbox_children"]), default=None),
        "image_child_headroom_max_mib": b["image_child_headroom_max_mib"],
        "video_child_headroom_max_mib": b["video_child_headroom_max_mib"],
        "child_idle_address_space_mib": b["image_child_idle_address_space_mib"],
        "worker_peak_rss_mib_actor_plus_child": round(max(
            max((a["peak_rss_mib"] + sum(c["peak_rss_mib"] for c in run["memory"]["sandbox_children"]
                                         if c.get("actor") == a["pid"]) for a in run["memory"]["actors"]), default=0.0)
            for run in runs["hostile"]), 1),
        "driver_peak_rss_mib_benign": peak("benign_only", "driver_max_peak_rss_mib"),
        "driver_peak_rss_mib_hostile": peak("hostile", "driver_max_peak_rss_mib"),
        "ray_and_other_sum_peak_rss_mib_hostile": peak("hostile", "ray_and_other_sum_peak_rss_mib"),
    }
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_s"] = time.perf_counter() - started
    out = ROOT / "bench" / "results" / "scan_hostile.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


# ---------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--known", type=int, default=1000)
    parser.add_argument("--clipart", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few images, rows and repetitions")
    parser.add_argument("--hostile", action="store_true",
                        help="memory only: --images benign JPEGs (default 48) and the hostile files (scan_hostile.json)")
    parser.add_argument("--ceiling-child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--reverdict-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling_child:
        print(json.dumps(ceiling_child(args.ceiling_child)))
        return
    if args.reverdict_child:
        print(json.dumps(reverdict_child(*args.reverdict_child)))
        return
    if args.hostile:
        args.images = args.images or 48
        hostile_main(args)
        return
    args.images = args.images or 400
    if args.quick:
        args.images, args.repeat, args.rows, args.known, args.clipart = 64, 1, 20_000, 100, 20
    started = time.perf_counter()
    result: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "args": vars(args)}
    log(f"making {args.images} 1 MP JPEGs")
    folder = make_images(args.images)
    result["image"] = {"size": "1280x800", "quality": 90,
                       "mean_kib": statistics.mean(p.stat().st_size for p in folder.glob("*.jpg")) / 1024}
    work = Path(tempfile.mkdtemp(prefix="scan-bench-"))
    quarter = sorted(str(p) for p in folder.glob("*.jpg"))[: args.images // 4]
    port = free_port()
    server = Proc("scan-bench-server", [PY, "app.py"], env=env(work / "server", PORT=str(port), NSFW_HOST="127.0.0.1"))
    try:
        wait_ready(server, f"http://127.0.0.1:{port}/health")
        url = f"http://127.0.0.1:{port}"
        cells: dict[str, list[dict[str, Any]]] = {"ceiling": [], "scan": [], "scan_fast": [], "classify_server": []}
        for rep in range(args.repeat):
            log(f"repetition {rep + 1}: ceiling")
            cells["ceiling"].append(ceiling(3.0 if args.quick else 6.0))
            for name, extra in (("scan", ()), ("scan_fast", ("--fast-decode",))):
                log(f"repetition {rep + 1}: nsfw-scan {' '.join(extra)} on {len(quarter)} then {args.images} images")
                small = scan(quarter, work / f"{name}-small{rep}", work / "data", *extra)
                full = scan(folder, work / f"{name}{rep}", work / "data", *extra)
                # the marginal rate: what the extra images cost, Ray's start and the actors' model loads cancelled
                full["marginal_images_per_second"] = (full["processed"] - small["processed"]) / (
                    full["wall_s"] - small["wall_s"])
                full["marginal_cpu_ms_per_image"] = (full["cpu_s_tree"] - small["cpu_s_tree"]) / (
                    full["processed"] - small["processed"]) * 1000
                full["small"] = small
                cells[name].append(full)
            log(f"repetition {rep + 1}: nsfw-classify --server")
            cells["classify_server"].append(classify_server(url, folder, work / "data", server.pid))
        log("nsfw-scan again on an unchanged catalogue")
        result["rescan_unchanged"] = scan(folder, work / "scan0", work / "data")
        result["cells"] = cells
    finally:
        server.stop()
    log(f"reverdict on {args.rows} rows")
    done = subprocess.run([PY, __file__, "--reverdict-child", str(args.rows), str(args.known)], env=env(work),
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result["reverdict"] = json.loads(done.stdout.strip().splitlines()[-1])
    log("agreement of --fast-decode")
    result["agreement"] = agreement(folder, args.clipart)
    shutil.rmtree(work, ignore_errors=True)

    def med(cell: str, key: str) -> float:
        return float(statistics.median(c[key] for c in result["cells"][cell]))

    ceiling_ips = med("ceiling", "images_per_second")
    result["medians"] = {
        "ceiling_images_per_second": ceiling_ips,
        "scan_steady_images_per_second": med("scan", "steady_images_per_second"),
        "scan_marginal_images_per_second": med("scan", "marginal_images_per_second"),
        "scan_fast_marginal_images_per_second": med("scan_fast", "marginal_images_per_second"),
        "scan_marginal_cpu_ms_per_image": med("scan", "marginal_cpu_ms_per_image"),
        "ceiling_cpu_ms_per_image": med("ceiling", "cpu_ms_per_image"),
        "classify_server_cpu_ms_per_image": med("classify_server", "cpu_ms_per_image_server_and_client"),
        "scan_command_images_per_second": med("scan", "command_images_per_second"),
        "scan_fast_steady_images_per_second": med("scan_fast", "steady_images_per_second"),
        "classify_server_images_per_second": med("classify_server", "images_per_second"),
    }
    m = result["medians"]
    result["ratios"] = {
        "scan_steady_over_ceiling": m["scan_steady_images_per_second"] / ceiling_ips,
        "scan_marginal_over_ceiling": m["scan_marginal_images_per_second"] / ceiling_ips,
        "scan_fast_marginal_over_ceiling": m["scan_fast_marginal_images_per_second"] / ceiling_ips,
        "scan_marginal_over_classify_server": m["scan_marginal_images_per_second"]
        / m["classify_server_images_per_second"],
        "scan_command_over_ceiling": m["scan_command_images_per_second"] / ceiling_ips,
        "scan_fast_steady_over_ceiling": m["scan_fast_steady_images_per_second"] / ceiling_ips,
        "scan_steady_over_classify_server": m["scan_steady_images_per_second"]
        / m["classify_server_images_per_second"],
        "scan_command_over_classify_server": m["scan_command_images_per_second"]
        / m["classify_server_images_per_second"],
    }
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_s"] = time.perf_counter() - started
    out = ROOT / "bench" / "results" / ("scan-quick.json" if args.quick else "scan.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
