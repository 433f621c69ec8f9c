"""Known images (issue 17): lookup time at 10k/100k/1M hashes, the per-request cost of hashing, and the
PDQ distances of edited copies and of unrelated images.  Prints one JSON document (``--out`` writes it too).

``python bench/known_images.py [--sizes 10000,100000,1000000] [--queries 2000] [--out FILE]``

1. Lookup: ``HashIndex.search`` (the multi-index, exact within 31) over ``n`` uniformly random 256-bit hashes;
   half the queries are stored hashes with 0-31 random bits flipped (a match exists), half random (none);
   p50/p99 per query, build time, candidates compared, and a numpy brute-force scan for comparison.
   Then ``KnownImages.lookup`` itself (the dict by sha256, the index and the tail) at the largest size.
2. Per-request cost: for each image in the repository, the CPU time (``time.process_time``, one thread)
   of what a still-image request does in its worker and the batcher (decode + preprocess + the model's
   forward pass at batch 1) against what this feature adds (``phash.query_hash`` + ``KnownImages.lookup``
   on an index of 1,000 decisions); the median ratio is the share it adds.
3. Distances: each repository image against its JPEG q70 / 50 % / 2 % crop / watermarked copy (stored with
   the 2 % and 4 % crops, as a decision is), every unrelated pair, and our hash (the model input)
   against canonical PDQ of the full decoded image.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from nsfw_core.images import phash
from nsfw_core.state.hashindex import HashIndex, brute_force

MAX_DISTANCE = 31


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _queries(rows: np.ndarray, count: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for i in range(count):
        if i % 2:
            out.append(rng.integers(0, 256, 32, dtype=np.uint8).tobytes())
            continue
        bits = np.unpackbits(rows[rng.integers(len(rows))])
        bits[rng.choice(256, int(rng.integers(0, MAX_DISTANCE + 1)), replace=False)] ^= 1
        out.append(np.packbits(bits).tobytes())
    return out


def lookup(sizes: list[int], queries: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(17)
    results = []
    for n in sizes:
        rows = rng.integers(0, 256, (n, 32), dtype=np.uint8)
        t0 = time.perf_counter()
        index = HashIndex(rows)
        build_s = time.perf_counter() - t0
        qs = _queries(rows, queries, rng)
        for q in qs[:50]:  # warm up
            index.search(q, MAX_DISTANCE)
        times, cands, found = [], [], 0
        for q in qs:
            t = time.perf_counter()
            hit, _ = index.search(q, MAX_DISTANCE)
            times.append(time.perf_counter() - t)
            found += bool(len(hit))
            cands.append(len(index.candidates(q, MAX_DISTANCE)))
        brute = []
        for q in qs[:50]:
            t = time.perf_counter()
            brute_force(rows, q, MAX_DISTANCE)
            brute.append(time.perf_counter() - t)
        results.append({"hashes": n, "build_s": round(build_s, 3), "p50_ms": round(_pct(times, 50) * 1e3, 3),
                        "p99_ms": round(_pct(times, 99) * 1e3, 3), "mean_candidates": round(statistics.mean(cands)),
                        "queries": len(qs), "queries_with_a_match": found,
                        "brute_force_p50_ms": round(_pct(brute, 50) * 1e3, 3)})
        print(json.dumps(results[-1]), file=sys.stderr)
    return results


def _known_with(entries: int, rng: np.random.Generator, folder: str):
    """A KnownImages on a SQLite file holding ``entries`` remembered decisions (3 hashes each)."""
    from nsfw_core.state.db import open_pool
    from nsfw_core.state.known import KnownImages
    from nsfw_core.state.migrations import KNOWN_TABLE, MIGRATIONS, migrate

    pool = open_pool(None, folder)
    with pool.connection() as conn:
        migrate(pool.backend, conn, MIGRATIONS)
        with pool.backend.begin(conn, write=True) as tx:
            tx.cursor.executemany(
                f"INSERT INTO {KNOWN_TABLE} (op, kind, sha256, hashes, verdict, label, review_id, added_by, added_at) "
                "VALUES ('add', 'review', ?, ?, 'safe', 'safe', ?, 'bench', 0)",
                [(f"{i:064x}", phash.join_hex([rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(3)]),
                  i) for i in range(entries)])
    known = KnownImages(pool, distance=MAX_DISTANCE)
    t0 = time.perf_counter()
    known.refresh()
    return known, pool, time.perf_counter() - t0


def known_lookup(entries: int, queries: int) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as folder:
        known, pool, load_s = _known_with(entries, rng, folder)
        rows = known._state.index[0].rows
        qs = _queries(rows, queries, rng)
        times = []
        for i, q in enumerate(qs):
            t = time.perf_counter()
            known.lookup(f"{i:064x}", q)
            times.append(time.perf_counter() - t)
        pool.close()
    return {"decisions": entries, "hashes": entries * 3, "load_s": round(load_s, 2),
            "p50_ms": round(_pct(times, 50) * 1e3, 3), "p99_ms": round(_pct(times, 99) * 1e3, 3)}


def _repository_images() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.lower().endswith((".jpg", ".jpeg", ".png", ".gif", ".webp"))]


def per_request(reps: int) -> dict[str, Any]:
    from nsfw_core.base.settings import load_settings
    from nsfw_core.context import Context

    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory() as folder:
        known, pool, _ = _known_with(1000, rng, folder)
        ctx = Context(load_settings(environ={"NSFW_DATA_DIR": folder, "NSFW_MODEL_THREADS": "1"}))
        model = ctx.models.get()
        rows: list[dict[str, Any]] = []
        for path in _repository_images():
            data = path.read_bytes()
            x = ctx.decoder.prepare(model, data)
            if not isinstance(x, np.ndarray):
                continue
            model.predict(x[np.newaxis])
            t = time.process_time()
            for _ in range(reps):
                y = ctx.decoder.prepare(model, data)
                model.predict(y[np.newaxis])  # type: ignore[index]
            base = (time.process_time() - t) / reps
            t = time.process_time()
            for i in range(reps):
                known.lookup(f"{i:064x}", phash.query_hash(x))
            added = (time.process_time() - t) / reps
            rows.append({"image": str(path.relative_to(ROOT)), "request_cpu_ms": round(base * 1e3, 2),
                         "added_cpu_ms": round(added * 1e3, 3), "share": round(added / base, 4)})
        ctx.close()
        pool.close()
    shares = [float(r["share"]) for r in rows]
    return {"images": len(rows), "median_share": round(statistics.median(shares), 4),
            "max_share": round(max(shares), 4),
            "median_added_cpu_ms": round(statistics.median(float(r["added_cpu_ms"]) for r in rows), 3),
            "median_request_cpu_ms": round(statistics.median(float(r["request_cpu_ms"]) for r in rows), 2),
            "rows": rows}


def distances() -> dict[str, Any]:

    from nsfw_core.images.decode import decode
    from nsfw_core.images.preprocess import preprocess
    from tests.helpers.edits import edited_copies

    def model_input(data: bytes) -> np.ndarray:
        return preprocess(decode(data, draft_size=896), 224)

    worst: dict[str, int] = {}
    stored: dict[Path, list[bytes]] = {}
    queried: dict[Path, bytes | None] = {}
    canonical: list[int] = []
    for path in _repository_images():
        data = path.read_bytes()
        x = model_input(data)
        stored[path] = phash.stored_hashes(x)
        queried[path] = phash.query_hash(x)
        full, _ = phash.pdq(decode(data))
        ours = queried[path]
        if ours is not None:
            canonical.append(phash.distance(full, ours))
        for name, copy in edited_copies(data).items():
            q = phash.query_hash(model_input(copy))
            if q is not None and stored[path]:
                worst[name] = max(worst.get(name, 0), min(phash.distance(s, q) for s in stored[path]))
    unrelated = [min(phash.distance(s, q) for s in stored[a])
                 for a, b in itertools.permutations(stored, 2)
                 if (q := queried[b]) is not None and stored[a]
                 and a.name.removeprefix("nsfwjs_") != b.name.removeprefix("nsfwjs_")]
    return {"images": len(stored), "worst_copy_distance": worst, "min_unrelated_distance": min(unrelated),
            "canonical_pdq_vs_model_input": {"median": statistics.median(canonical), "max": max(canonical)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
                      f"Python {platform.python_version()}, numpy {np.__version__}".strip(),
           "distance": MAX_DISTANCE, "lookup": lookup(sizes, args.queries),
           "known_lookup": known_lookup(max(sizes) // 3, args.queries),
           "per_request": per_request(args.reps), "distances": distances()}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
