"""Issue 26 on real images: what the embedding output costs, what an adapter costs per request, how long training
takes, and how an adapter does against the base model on images it never saw.

Run with the project's venv (training needs requirements-adapters.txt)::

    python bench/adapters.py cpu --old-compiled DIR      # DIR: model/compiled of the commit before issue 26
    python bench/adapters.py api
    python bench/adapters.py policy --data-dir /tmp/bench26   # needs: apt-get install openclipart-png
                                                             #   gnome-backgrounds plasma-workspace-wallpapers

* ``cpu``: the default model's compiled file before issue 26 (one output) and after (two outputs: the
  probabilities and the embedding), each run by a single-threaded LiteRT interpreter on the same inputs,
  rounds interleaved; CPU seconds per image (``time.thread_time`` around set_tensor + invoke + get_tensor of
  every output), medians of the rounds.
* ``api``: the service in-process (Starlette's TestClient on the real app, the model's lanes as served):
  ``POST /v1/classify`` with a base64 JPEG.  Each round withdraws the adapter (one trained on generated
  images) and measures the base model, then publishes it and measures, in a random order, the adapter in
  force and ``"adapter": false``; the process's CPU seconds per request (``time.process_time``, every
  thread), medians of the rounds (``--per-round`` requests each).
* ``policy``: a policy the five classes cannot express, on real images: Debian's openclipart-png (8,100 clip
  art PNGs in category folders) and the gnome/plasma wallpapers (photographs), plus the repository's own
  images.  Block: clip art of *people* (the ``people`` folder); allow: everything else.  The images are split
  once into a training part (70 %) and a test part (30 %) by PDQ near-duplicate group, so no image of the test
  part, nor a near copy of one, is ever trained on.  The adapter is trained on the training part (its own
  held-out report, grouped 5-fold) and then measured on the test part against the base model.  Then the
  training time of 1,000 and 10,000 examples (the training images, and horizontally mirrored copies to reach
  10,000), and an example set's expected false-match rate against what it does on the test part.

Prints one JSON object and writes it to ``bench/results/adapters-<what>.json``.
"""

from __future__ import annotations

import argparse
import base64
import glob
import io
import json
import lzma
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLIPART = "/usr/share/openclipart/png"
WALLPAPERS = ("/usr/share/backgrounds", "/usr/share/wallpapers")


def _save(what: str, doc: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"adapters-{what}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps(doc, indent=1, default=str))


# ---------------------------------------------------------------- cpu: the embedding output


def cpu(args: argparse.Namespace) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from nsfw_core.images.decode import decode
    from nsfw_core.images.preprocess import preprocess

    name = args.model
    new = lzma.decompress((ROOT / "model" / "compiled" / f"{name}.tflite.xz").read_bytes())
    old = lzma.decompress((Path(args.old_compiled) / f"{name}.tflite.xz").read_bytes())
    images = sorted((ROOT / "tests" / "fixtures" / "reference").glob("*.jpg")) + \
        sorted((ROOT / "data" / "demo").rglob("*.jpg"))
    inputs = [preprocess(decode(p.read_bytes()), 224)[None].astype(np.float32) for p in images]

    def interpreter(content: bytes) -> tuple[Any, ...]:
        interp = Interpreter(model_content=content, num_threads=1)
        interp.allocate_tensors()
        return interp, interp.get_input_details()[0]["index"], [o["index"] for o in interp.get_output_details()]

    newer = interpreter(new)
    probs_only = (newer[0], newer[1], [o for o in newer[2]
                                       if tuple(newer[0].get_tensor(o).shape) == (1, 5)] or newer[2][:1])
    sides = {"one output (before)": interpreter(old), "two outputs (probabilities + embedding)": newer,
             "two outputs, probabilities read only": probs_only}
    per_image: dict[str, list[float]] = {k: [] for k in sides}
    agree = []
    order = np.random.default_rng(26)
    for _ in range(args.rounds):  # the arms in a new random order each round (no arm always runs first)
        for label in order.permutation(list(sides)).tolist():
            interp, i, outs = sides[label]
            t0 = time.thread_time()
            for x in inputs:
                interp.set_tensor(i, x)
                interp.invoke()
                got = [interp.get_tensor(o) for o in outs]
            per_image[label].append((time.thread_time() - t0) / len(inputs))
            del got
    for x in inputs:
        rows = []
        for interp, i, outs in list(sides.values())[:2]:
            interp.set_tensor(i, x)
            interp.invoke()
            rows.append(next(interp.get_tensor(o) for o in outs if interp.get_tensor(o).shape == (1, 5)))
        agree.append(float(np.abs(rows[0] - rows[1]).max()))
    medians = {k: statistics.median(v) * 1000 for k, v in per_image.items()}
    before, after, _ = medians.values()
    spread = {k: [round(min(v) * 1000, 3), round(max(v) * 1000, 3)] for k, v in per_image.items()}
    _save("cpu", {"model": name, "images": len(inputs), "rounds": args.rounds, "threads": 1,
                  "cpu_ms_per_image_median": medians, "cpu_ms_per_image_min_max": spread,
                  "ratio_after_over_before": after / before,
                  "max_probability_difference": max(agree), "unit": "CPU ms per image (thread time)"})


# ---------------------------------------------------------------- api: an adapter in force, per request


def api(args: argparse.Namespace) -> None:
    from nsfw_core.calibration import adapters as training
    from nsfw_core.calibration.labelsets import load_manifest
    from nsfw_core.context import Context
    from nsfw_core.state.adapters import Adapters
    from nsfw_core.state.db import open_pool
    from tests.helpers.apiclient import make_settings, running
    from tests.helpers.policy import write_set

    tmp = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    settings = make_settings(tmp / "data", review_verdicts=())
    image = (ROOT / "tests" / "fixtures" / "reference" / "smile.jpg").read_bytes()
    payload = base64.b64encode(image).decode()
    ctx = Context(settings)
    model = ctx.models.get()
    results = ctx.score_cache.embed_items(model, load_manifest(write_set(tmp / "set", 40, 40)), ctx.decoder,
                                          ctx.load_bytes)
    examples, _ = training.examples_from_set(results)
    trained = training.train(examples, model=model.name, model_version=model.version,
                             base=ctx.thresholds.current().thresholds)
    ctx.close()

    def measure(client: Any, body: dict[str, Any], per_round: int) -> float:
        t0 = time.process_time()
        for _ in range(per_round):
            reply = client.post("/v1/classify", json=body)
            assert reply.status_code == 200, reply.text
        return (time.process_time() - t0) / per_round

    plain: dict[str, Any] = {"image": {"base64": payload}}
    base_body: dict[str, Any] = {"image": {"base64": payload}, "adapter": False}
    arms = ("no adapter published", "adapter in force", "adapter published, \"adapter\": false")
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    with running(settings) as client:
        for _ in range(20):  # warm
            client.post("/v1/classify", json=plain)
        store = Adapters(open_pool(None, tmp / "data"))
        saved = store.save(name="bench", model=model.name, model_version=model.version, head=trained.head,
                           t_adult=trained.t_adult, t_safe=trained.t_safe, report=trained.report,
                           dataset_sha256=trained.dataset_sha256, examples=len(examples),
                           publishable=trained.publishable, by="bench")
        for _ in range(args.rounds):  # each round: withdrawn, then published; the arms side by side
            store.withdraw(model.name, by="bench")
            time.sleep(1.5)
            assert "adapter" not in client.post("/v1/classify", json=plain).json()
            cpu[arms[0]].append(measure(client, plain, args.per_round))
            store.publish(saved.name, by="bench")
            time.sleep(1.5)
            assert client.post("/v1/classify", json=plain).json().get("adapter") == {"name": "bench", "version": 1}
            for label, body in sorted(((arms[1], plain), (arms[2], base_body)), key=lambda _: np.random.random()):
                cpu[label].append(measure(client, body, args.per_round))
    medians = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
    micro = _judge_micro(trained.head, model.embedding_size)
    _save("api", {"judge_us": micro, "request": "POST /v1/classify, base64 JPEG (tests/fixtures/reference/smile.jpg), one client, "
                             "in-process",
                  "rounds": args.rounds, "requests_per_round": args.per_round, "cpu_ms_per_request_median": medians,
                  "ratio_adapter_over_base": medians["adapter in force"] /
                  medians["adapter published, \"adapter\": false"],
                  "per_round_ratio_in_force_over_false": _spread(
                      [a / b for a, b in zip(cpu[arms[1]], cpu[arms[2]], strict=True)]),
                  "per_round_ratio_in_force_over_none": _spread(
                      [a / b for a, b in zip(cpu[arms[1]], cpu[arms[0]], strict=True)])})


def _spread(ratios: list[float]) -> dict[str, Any]:
    """Median, quartiles and a 95 % bootstrap interval of the median of per-round ratios."""
    rng = np.random.default_rng(0)
    boots = [float(np.median(rng.choice(ratios, len(ratios)))) for _ in range(2000)]
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"median": round(float(np.median(ratios)), 4), "quartiles": [round(float(q1), 4), round(float(q3), 4)],
            "median_interval_95": [round(float(np.percentile(boots, 2.5)), 4),
                                   round(float(np.percentile(boots, 97.5)), 4)]}


def _judge_micro(head: Any, dim: int) -> dict[str, float]:
    """Microseconds per call of judge() without and with an adapter (its head's dot product and sigmoid)."""
    from nsfw_core.base.verdict import Thresholds
    from nsfw_core.classify import ModelInfo, Timings, judge
    from nsfw_core.state.adapters import AdapterVersion

    scores = {"drawings": 0.5, "hentai": 0.0, "neutral": 0.48, "porn": 0.01, "sexy": 0.01}
    embedding = np.random.default_rng(0).random(dim).astype(np.float32)
    adapter = AdapterVersion("bench", 1, "m", "v", head, 0.7, 0.9, {}, "", 0, True, "bench", 0.0)
    info, timings, t = ModelInfo("m", "v"), Timings.of(0, 0, 0, 0), Thresholds()
    out = {}
    arms: tuple[tuple[str, dict[str, Any]], ...] = (("base", {}), ("adapter", {"embedding": embedding,
                                                                               "adapter": adapter}))
    for label, kwargs in arms:
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(2000):
                judge(scores, t, info, timings, "0" * 64, **kwargs)
            runs.append((time.perf_counter() - t0) / 2000 * 1e6)
        out[label] = round(statistics.median(runs), 2)
    return out


# ---------------------------------------------------------------- policy: real images


def _real_images() -> list[tuple[str, int]]:
    clip = sorted(glob.glob(f"{CLIPART}/**/*.png", recursive=True))
    if not clip:
        raise SystemExit("no clip art: apt-get install -y openclipart-png gnome-backgrounds plasma-workspace-wallpapers")
    walls = sorted(p for root in WALLPAPERS for p in glob.glob(f"{root}/**/*", recursive=True)
                   if p.lower().endswith((".jpg", ".jpeg", ".png")))
    own = [str(p) for p in sorted((ROOT / "data" / "demo").rglob("*.jpg"))] + \
        [str(p) for p in sorted((ROOT / "tests" / "fixtures" / "reference").glob("*.jpg"))]
    return [(p, 1 if p.startswith(f"{CLIPART}/people/") else 0) for p in clip] + [(p, 0) for p in walls + own]


def policy(args: argparse.Namespace) -> None:
    from nsfw_core.base.labels import LabelledItem
    from nsfw_core.base.settings import load_settings
    from nsfw_core.calibration import adapters as training
    from nsfw_core.context import Context

    data_dir = Path(args.data_dir)
    ctx = Context(load_settings(environ={"NSFW_DATA_DIR": str(data_dir), "NSFW_MAX_BYTES": str(64 << 20),
                                         "NSFW_MAX_PIXELS": str(80_000_000)}))
    model = ctx.models.get()
    pairs = _real_images()
    items = [LabelledItem(p, "adult" if y else "safe", "adult" if y else "safe") for p, y in pairs]
    t0 = time.perf_counter()
    done = [0]

    def progress(n: int, total: int) -> None:
        if n - done[0] >= 500 or n == total:
            done[0] = n
            print(f"[{time.strftime('%H:%M:%S')}] embedded {n} of {total}", file=sys.stderr, flush=True)

    results = ctx.score_cache.embed_items(model, items, ctx.decoder, ctx.load_bytes, progress)
    embed_s = time.perf_counter() - t0
    examples, failed = training.examples_from_set(results)
    base = ctx.thresholds.current().thresholds
    # one split, by near-duplicate group: 70 % to train on, 30 % never seen
    groups = training.near_duplicate_groups(examples, ctx.settings.match_distance)
    rng = np.random.default_rng(26)
    test_groups = set(rng.permutation(int(groups.max()) + 1)[: int(0.3 * (groups.max() + 1))].tolist())
    train = [e for e, g in zip(examples, groups, strict=True) if g not in test_groups]
    test = [e for e, g in zip(examples, groups, strict=True) if g in test_groups]
    t0 = time.perf_counter()
    trained = training.train(train, model=model.name, model_version=model.version, base=base,
                             distance=ctx.settings.match_distance)
    train_s = time.perf_counter() - t0
    y = np.array([e.truth for e in test])
    w = np.ones(len(y))
    emb = np.stack([e.embedding for e in test])
    probs = np.array([[e.scores[c] for c in ("drawings", "hentai", "neutral", "porn", "sexy")] for e in test])
    adapter = trained.head.score_many(emb, probs)
    base_adult = np.array([base.adult_score(e.scores) for e in test])
    base_safe = np.array([base.safe_score(e.scores) for e in test])
    test_groups_arr = training.near_duplicate_groups(test, ctx.settings.match_distance)
    intervals = training._bootstrap_auc(y, base_adult, adapter, w, test_groups_arr, 0)
    unseen = {
        "images": len(test), "blocked (people)": int(y.sum()), "allowed": int(len(y) - y.sum()),
        "auc": {"base": training._auc(y, base_adult, w), "adapter": training._auc(y, adapter, w),
                "base_interval_95": intervals["base"], "adapter_interval_95": intervals["adapter"],
                "difference_interval_95": intervals["difference"]},
        "precision_at_recall_0.9": {"base": training.precision_at_recall(y, base_adult, w, 0.9),
                                    "adapter": training.precision_at_recall(y, adapter, w, 0.9)},
        "at_the_adapter_thresholds": training._confusion(adapter, 1 - adapter, y, trained.t_adult, trained.t_safe),
        "base_at_the_thresholds_in_force": training._confusion(base_adult, base_safe, y, base.adult, base.safe),
    }
    report = trained.report
    held = report["held_out"]
    doc: dict[str, Any] = {
        "images": len(pairs), "embedded": len(examples), "failed": len(failed),
        "failed_codes": sorted({f["code"] for f in failed}), "embedding_s": round(embed_s, 1),
        "policy": "block clip art of people (openclipart-png's people folder); allow all other clip art, the "
                  "wallpapers and the repository's images",
        "train": {"images": len(train), "blocked": int(sum(e.truth for e in train)), "seconds": round(train_s, 2),
                  "report_summary": training.summary(report),
                  "held_out_auc": {"base": held["base"]["auc"], "adapter": held["adapter"]["auc"]},
                  "held_out_review_share": {k: held[k]["at_target_precisions"]["review_share"]
                                            for k in ("base", "adapter")},
                  "thresholds": report["thresholds"], "publishable": trained.publishable},
        "test_never_seen": unseen,
    }
    # training time at 1,000 and 10,000 examples
    mirrored = _mirrored(ctx, model, [e for e in train], 10_000 - len(examples) + 200)
    pool = examples + mirrored
    timing = {}
    for n in (1000, 10_000):
        chosen = [pool[i] for i in np.random.default_rng(n).choice(len(pool), n, replace=False)]
        t0 = time.perf_counter()
        result = training.train(chosen, model=model.name, model_version=model.version, base=base,
                                distance=ctx.settings.match_distance)
        timing[str(n)] = {"seconds": round(time.perf_counter() - t0, 2), "timings": result.report["timings"],
                          "adult": result.report["n_adult"], "groups": result.report["groups"]}
    doc["training_time"] = timing
    doc["training_time_note"] = (f"{len(mirrored)} of the pool are horizontally mirrored copies of training images "
                                 "(PDQ sees a mirrored copy as another image); every example is 1792 embedding "
                                 "values + 5 probabilities; the time is train(): grouping, 5 folds, the final fit, "
                                 "the bootstrap intervals")
    # an example set: 5 people images to block, chosen against 300 allowed training images; what it does on test
    people = [e for e in train if e.truth == 1][:5]
    background = [e for e in train if e.truth == 0]
    background = [background[i] for i in np.random.default_rng(5).choice(len(background), 300, replace=False)]
    built, set_report = training.build_example_set("people", "adult", np.stack([e.embedding for e in people]),
                                                   np.stack([e.embedding for e in background]))
    sims = built.similarity(emb)
    doc["example_set"] = {"report": set_report,
                          "test_false_matches": {"matched": int((sims[y == 0] >= built.threshold).sum()),
                                                 "of": int((y == 0).sum())},
                          "test_people_matched": {"matched": int((sims[y == 1] >= built.threshold).sum()),
                                                  "of": int(y.sum())}}
    ctx.close()
    _save("policy", doc)


def _mirrored(ctx: Any, model: Any, examples: Any, n: int) -> list[Any]:
    from PIL import Image, ImageOps

    from nsfw_core.base.labels import LabelledItem
    from nsfw_core.calibration import adapters as training

    chosen = examples[:n]
    blobs: dict[str, bytes] = {}
    items = []
    for k, e in enumerate(chosen):
        try:
            im = Image.open(e.source)
            im.load()
        except Exception:
            continue
        out = io.BytesIO()
        ImageOps.mirror(im.convert("RGBA") if im.mode in ("P", "LA", "RGBA") else im.convert("RGB")).save(out, "PNG")
        key = f"mirror:{k}"
        blobs[key] = out.getvalue()
        label = "adult" if e.truth else "safe"
        items.append(LabelledItem(key, label, label))
    results = ctx.score_cache.embed_items(model, items, ctx.decoder, blobs.__getitem__)
    got, _ = training.examples_from_set(results)
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--old-compiled", required=True)
    c.add_argument("--model", default="MobileNetV2Mid")
    c.add_argument("--rounds", type=int, default=15)
    a = sub.add_parser("api")
    a.add_argument("--rounds", type=int, default=15)
    a.add_argument("--per-round", type=int, default=20)
    p = sub.add_parser("policy")
    p.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "bench-adapters"))
    args = ap.parse_args()
    {"cpu": cpu, "api": api, "policy": policy}[args.what](args)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
