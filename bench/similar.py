"""Similar past decisions by embedding (issue 30, point 3): what a look costs at 10,000 decided items, and how far
apart the default model puts copies and unrelated images.

    .venv/bin/python bench/similar.py --out bench/results/similar.json [--items 10000] [--reps 21]

**Cost**: a SQLite queue with ``--items`` decided items, each with a PDQ hash and a 1792-value embedding
(MobileNetV2Mid's size, float16 as ``review_embeddings`` keeps them), and one open item to look from.  For each
finder (:class:`~nsfw_core.state.review.similar.PdqFinder`, :class:`~nsfw_core.state.review.similar.EmbeddingFinder`),
side by side in one run: the first look of a process (reads every decided item), a look with nothing new (the
page's usual case: one COUNT/MAX query and the scan), and a look after one new decision (read forward); medians
over ``--reps`` looks, wall time, and the memory the embedding finder holds.

**Distances** (the real default model): the demo photos and drawings (18), each against its own edited copies
(JPEG q70, resized to 50 %, cropped 2 %) and against every other demo image (153 unrelated pairs): the
distance :data:`~nsfw_core.state.review.similar.MAX_EMBEDDING_DISTANCE` must separate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsfw_core.inference.embeddings import embedding_distance, encode_embedding
from nsfw_core.state.migrations import REVIEW_EMBEDDINGS_TABLE, TABLE
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review.similar import (
    MAX_EMBEDDING_DISTANCE,
    EmbeddingFinder,
    PdqFinder,
)

DEMO = ROOT / "data" / "demo"
DIM = 1792
SCORES = json.dumps({"drawings": 0.1, "hentai": 0.1, "neutral": 0.4, "porn": 0.2, "sexy": 0.2})


def _ms(fn: Callable[[], Any], reps: int) -> float:
    walls = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        walls.append((time.perf_counter() - t) * 1000.0)
    return round(statistics.median(walls), 3)


def cost(items: int, reps: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        queue = ReviewQueue(data_dir=folder, store_uploads=True)
        with queue.pool.transaction() as tx:
            for i in range(items):
                sha = hashlib.sha256(str(i).encode()).hexdigest()
                row = tx.one(f"INSERT INTO {TABLE} (sha256, source, scores, model, verdict, created_at, queued_at, "
                             "status, skips, phash, decision, decided_by, decided_at, audience) VALUES "
                             "(?, ?, ?, 'MobileNetV2Mid', 'unknown', ?, ?, 'decided', 0, ?, 'safe', 'bench', ?, '') "
                             "RETURNING id", (sha, f"upload:{i}", SCORES, 1e9 + i, 1e9 + i,
                                              rng.bytes(32).hex(), 1e9 + i))
                assert row is not None
                tx.run(f"INSERT INTO {REVIEW_EMBEDDINGS_TABLE} (item_id, model, model_version, embedding, created_at) "
                       "VALUES (?, 'MobileNetV2Mid', 'v1', ?, ?)",
                       (int(row[0]), encode_embedding(rng.uniform(0, 6, DIM)), 1e9 + i))
        looking_sha = hashlib.sha256(b"looking").hexdigest()
        looking = queue.enqueue(looking_sha, "upload:looking", json.loads(SCORES), "MobileNetV2Mid", "unknown",
                                phash=rng.bytes(32).hex())
        with queue.pool.transaction() as tx:
            tx.run(f"INSERT INTO {REVIEW_EMBEDDINGS_TABLE} (item_id, model, model_version, embedding, created_at) "
                   "VALUES (?, 'MobileNetV2Mid', 'v1', ?, 0)", (looking, encode_embedding(rng.uniform(0, 6, DIM))))
        out: dict[str, Any] = {"decided_items": items}
        for name, make in (("pdq", lambda: PdqFinder(queue.pool)), ("embedding", lambda: EmbeddingFinder(queue.pool))):
            firsts = []
            for _ in range(3):
                finder = make()
                t = time.perf_counter()
                finder.nearest(looking, 4)
                firsts.append((time.perf_counter() - t) * 1000.0)
            warm = _ms(lambda: finder.nearest(looking, 4), reps)  # noqa: B023
            after = []
            for k in range(max(3, reps // 3)):
                extra = queue.enqueue(hashlib.sha256(f"{name}{k}".encode()).hexdigest(), f"upload:{name}{k}",
                                      json.loads(SCORES), "MobileNetV2Mid", "unknown", phash=rng.bytes(32).hex())
                with queue.pool.transaction() as tx:
                    tx.run(f"INSERT INTO {REVIEW_EMBEDDINGS_TABLE} (item_id, model, model_version, embedding, "
                           "created_at) VALUES (?, 'MobileNetV2Mid', 'v1', ?, 0)",
                           (extra, encode_embedding(rng.uniform(0, 6, DIM))))
                queue.decide(extra, "bench", "safe")
                t = time.perf_counter()
                finder.nearest(looking, 4)
                after.append((time.perf_counter() - t) * 1000.0)
            out[name] = {"first_look_ms": round(statistics.median(firsts), 1), "look_ms": warm,
                         "look_after_one_decision_ms": round(statistics.median(after), 3)}
            if isinstance(finder, EmbeddingFinder):
                out[name]["held_mb"] = round(finder.held_bytes() / 2**20, 1)
        queue.close()
    return out


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def distances() -> dict[str, Any]:
    from nsfw_core.base.settings import load_settings
    from nsfw_core.context import Context

    with tempfile.TemporaryDirectory() as folder:
        ctx = Context(load_settings(environ={"NSFW_DATA_DIR": folder, "NSFW_MODEL_THREADS": "2",
                                            "NSFW_COMPILED_DIR": str(ROOT / "var" / "compiled")}))
        model = ctx.models.get()

        def embed(data: bytes) -> np.ndarray:
            x = ctx.decoder.prepare(model, data)
            assert isinstance(x, np.ndarray)
            out: np.ndarray = model.predict_with_embeddings(x[np.newaxis])[1][0]
            return out

        paths = sorted((DEMO / "photos").glob("*.jpg")) + sorted((DEMO / "drawings").glob("*.jpg"))
        base = {p.name: embed(p.read_bytes()) for p in paths}
        copies: dict[str, list[float]] = {"jpeg_q70": [], "resized_50": [], "cropped_2": []}
        for p in paths:
            img = Image.open(p).convert("RGB")
            w, h = img.size
            edits = {"jpeg_q70": _jpeg(img, 70), "resized_50": _jpeg(img.resize((w // 2, h // 2))),
                     "cropped_2": _jpeg(img.crop((w // 50, h // 50, w - w // 50, h - h // 50)))}
            for kind, data in edits.items():
                copies[kind].append(embedding_distance(base[p.name], embed(data)))
        unrelated = sorted(embedding_distance(base[a.name], base[b.name]) for a, b in itertools.combinations(paths, 2))
        ctx.close()
    return {"model": model.name, "images": len(paths),
            "copies_max": {k: round(max(v), 3) for k, v in copies.items()},
            "copies_median": {k: round(statistics.median(v), 3) for k, v in copies.items()},
            "unrelated_pairs": len(unrelated), "unrelated_min": round(unrelated[0], 3),
            "unrelated_p05": round(unrelated[len(unrelated) // 20], 3),
            "unrelated_median": round(statistics.median(unrelated), 3),
            "unrelated_within_bound": sum(1 for d in unrelated if d <= MAX_EMBEDDING_DISTANCE),
            "unrelated_within_0.3": sum(1 for d in unrelated if d <= 0.3),
            "copies_within_bound": sum(1 for v in copies.values() for d in v if d <= MAX_EMBEDDING_DISTANCE),
            "copies": sum(len(v) for v in copies.values()), "bound": MAX_EMBEDDING_DISTANCE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--skip-distances", action="store_true")
    args = ap.parse_args()
    doc: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()} "
                           f"{platform.python_version()}", "cost": cost(args.items, args.reps)}
    if not args.skip_distances:
        doc["distances"] = distances()
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
