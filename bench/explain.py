"""Evidence heat-maps (issue 30): what one explanation costs, and where its evidence lands, method against method.

    .venv/bin/python bench/explain.py --out bench/results/explain.json [--reps 7] [--skip-quality]

**Cost** (the default model, MobileNetV2Mid on litert with its lanes, as the server runs it): wall time and
CPU time of this process per explanation of a 224 x 224 input, medians over ``--reps`` runs of each of the
reference images, for the grids 6, 8 (the default) and 10 (37, 65 and 101 forward passes): on the model
directly (the pages' path: ``model.predict`` eight inputs at a time) and through a micro-batcher as the API
runs it (``explain_on``: chunks of 8, two ahead), and, for scale, one classification's forward pass.
Also ``POST /v1/explain`` in-process (Starlette's TestClient, decoding included).  The machine is shared:
CPU time per explanation is the steadier figure; wall time on an idle machine is about CPU time / 2 (both
cores busy).

**Quality**: the demo drawings (9) pasted twice each, at random places and sizes, on a white, a grey and
a photographic background (54 images); for each method the share of the drawings map's positive evidence
that lies over the drawing (the drawing covers 6-16 % of the image), how often it is more than half, and
how often the strongest cell is on the drawing.  Methods: occlusion filled with the median colour, a blurred
copy (sigma 16 px) or mid grey, one cell at a time (65 passes) or 2 x 2 windows sliding by one cell (82
passes); all in log-odds, and the median fill scored in probabilities for comparison.

**Saturation**: the landscape drawing next to a photograph (tests/test_explain.py's image): its scores, the
most a hidden cell of the drawing moves the drawings probability, the largest log-odds evidence there.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsfw_core.inference import explain
from nsfw_core.inference.batcher import MicroBatcher
from nsfw_core.inference.model import Model, load_model

DEMO = ROOT / "data" / "demo"
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
S = 224


def _cpu() -> float:
    return time.process_time()


def _timed(fn: Callable[[], Any], reps: int) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), _cpu()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(_cpu() - c)
    return {"wall_s": round(statistics.median(walls), 4), "cpu_s": round(statistics.median(cpus), 4),
            "wall_s_min": round(min(walls), 4)}


def inputs(model: Model) -> dict[str, np.ndarray]:
    return {p.name: model.preprocess(np.asarray(Image.open(p).convert("RGB"))) for p in sorted(REFERENCE.glob("*.jpg"))}


def cost(model: Model, reps: int) -> dict[str, Any]:
    xs = inputs(model)
    out: dict[str, Any] = {"images": sorted(xs), "reps_per_image": reps}
    one = next(iter(xs.values()))
    out["forward_pass"] = _timed(lambda: model.predict(one[None]), reps * 4)
    for grid in (6, 8, 10):
        def run(x: np.ndarray, g: int = grid) -> Callable[[], Any]:
            return lambda: explain.explain(model, x, grid=g)

        direct = [_timed(run(x), reps) for x in xs.values()]

        async def served(x: np.ndarray, grid: int = grid) -> dict[str, float]:
            batcher = MicroBatcher(model, max_batch=8, max_wait_s=0.0, queue_size=512)
            batcher.start()
            try:
                walls, cpus = [], []
                for _ in range(reps):
                    w, c = time.perf_counter(), _cpu()
                    await explain.explain_on(batcher.predict, x, name=model.name, version=model.version, grid=grid)
                    walls.append(time.perf_counter() - w)
                    cpus.append(_cpu() - c)
                return {"wall_s": round(statistics.median(walls), 4), "cpu_s": round(statistics.median(cpus), 4),
                        "wall_s_min": round(min(walls), 4)}
            finally:
                await batcher.stop()

        batched = [asyncio.run(served(x)) for x in xs.values()]
        out[f"grid_{grid}"] = {
            "passes": explain.passes(grid),
            "direct": {k: round(statistics.median(d[k] for d in direct), 4) for k in ("wall_s", "cpu_s", "wall_s_min")},
            "batcher": {k: round(statistics.median(d[k] for d in batched), 4) for k in ("wall_s", "cpu_s", "wall_s_min")},
        }
        print(grid, out[f"grid_{grid}"], file=sys.stderr, flush=True)
    return out


def api_cost(reps: int) -> dict[str, Any]:
    """``POST /v1/explain`` in-process: the whole request (body, decode, 65 passes through the batcher, JSON)."""
    import tempfile
    import warnings

    from starlette.applications import Starlette

    from nsfw_core.base.settings import load_settings
    from nsfw_core.http import app as api

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    body = (REFERENCE / "house.jpg").read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(environ={}, data_dir=folder)
        with TestClient(Starlette(routes=api.routes, lifespan=api.make_lifespan(settings))) as client:
            deadline = time.monotonic() + 120
            while client.get("/health").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            client.post("/v1/explain", content=body)  # warm
            timed = _timed(lambda: client.post("/v1/explain", content=body).raise_for_status(), reps * 2)
            classify = _timed(lambda: client.post("/v1/classify", content=body).raise_for_status(), reps * 2)
    return {"image": "house.jpg", "explain": timed, "classify": classify}


# ---------------------------------------------------------------- quality


def _cells(at: tuple[int, int], size: int) -> np.ndarray:
    x0, y0, x1, y1 = (v / 56 for v in (at[0], at[1], at[0] + size, at[1] + size))
    return np.array([[max(0.0, min(i + 1, y1) - max(i, y0)) * max(0.0, min(j + 1, x1) - max(j, x0))
                      for j in range(8)] for i in range(8)])


def composites(model: Model) -> list[tuple[str, np.ndarray, np.ndarray]]:
    drawings = {p.stem: Image.open(p).convert("RGB") for p in sorted((DEMO / "drawings").glob("*.jpg"))}
    photo = Image.open(DEMO / "photos" / "skimage_coffee.jpg").convert("RGB").crop((150, 0, 450, 200))
    backgrounds = {"white": Image.new("RGB", (448, 448), (255, 255, 255)),
                   "grey": Image.new("RGB", (448, 448), (128, 128, 128)), "photo": photo.resize((448, 448))}
    rng = np.random.default_rng(2)
    out = []
    for name, drawing in drawings.items():
        for bg_name, bg in backgrounds.items():
            for _ in range(2):
                size = int(448 * rng.choice([0.3, 0.4]))
                at = (int(rng.integers(0, 448 - size)), int(rng.integers(0, 448 - size)))
                canvas = bg.copy()
                canvas.paste(drawing.resize((size, size)), at)
                out.append((f"{name}/{bg_name}", model.preprocess(np.asarray(canvas)), _cells(at, size)))
    return out


def _blurred(x: np.ndarray, sigma: float = 16.0) -> np.ndarray:
    radius = int(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="valid"), 0, padded)
    out: np.ndarray = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="valid"), 1, rows)
    return out.astype(np.float32)


def quality(model: Model) -> dict[str, Any]:
    cases = composites(model)
    fills: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "median": explain.reference, "blur": _blurred, "grey": lambda x: np.full(3, 0.5, np.float32)}
    out: dict[str, Any] = {"images": len(cases), "drawing_share_of_image": round(
        float(np.mean([c[2].sum() / 64 for c in cases])), 3)}
    for fill_name, fill in fills.items():
        for window in (1, 2):
            p = explain.plan(S, 8, window=window)
            masses, points, prob_masses = [], [], []
            for _, x, region in cases:
                probs = np.concatenate([model.predict(b) for b in explain.variants(x, p, fill=fill(x))])
                heat = explain.attribute(probs, p)[0]
                masses.append(explain.mass_within(heat, region))
                i, j = np.unravel_index(int(np.argmax(heat)), heat.shape)
                points.append(region[i, j] > 0.5)
                if fill_name == "median" and window == 1:
                    effect = probs[0, 0] - probs[1:, 0]
                    prob_heat = np.einsum("k,krs->rs", effect, p.cover) / p.cover.sum(axis=0)
                    prob_masses.append(explain.mass_within(prob_heat, region))
            key = f"{fill_name}_w{window}"
            out[key] = {"passes": p.passes, "mass_mean": round(float(np.mean(masses)), 3),
                        "mass_median": round(float(np.median(masses)), 3),
                        "over_half": round(float(np.mean(np.array(masses) > 0.5)), 3),
                        "strongest_on_drawing": round(float(np.mean(points)), 3)}
            if prob_masses:
                out["median_w1_in_probabilities"] = {"mass_mean": round(float(np.mean(prob_masses)), 3),
                                                     "over_half": round(float(np.mean(np.array(prob_masses) > 0.5)),
                                                                        3)}
            print(key, out[key], file=sys.stderr, flush=True)
    return out


def saturation(model: Model) -> dict[str, Any]:
    drawing = Image.open(DEMO / "drawings" / "pillow_landscape.jpg").convert("RGB").resize((112, 112))
    canvas = Image.open(DEMO / "photos" / "skimage_coffee.jpg").convert("RGB").crop((150, 0, 450, 200)).resize(
        (448, 448))
    canvas.paste(drawing, (326, 10))
    x = model.preprocess(np.asarray(canvas))
    region = _cells((326, 10), 112)
    e = explain.explain(model, x)
    probs = np.concatenate([model.predict(b) for b in explain.variants(x, explain.plan(S, 8))])
    moved = np.abs(probs[1:, 0] - probs[0, 0]).reshape(8, 8)
    heat = e.heatmaps["drawings"]
    return {"drawings": round(e.scores["drawings"], 6), "neutral": round(e.scores["neutral"], 6),
            "most_a_drawing_cell_moves_the_probability": float(f"{moved[region > 0.5].max():.2e}"),
            "largest_log_odds_evidence_on_the_drawing": round(float(heat[region > 0.5].max()), 3),
            "share_of_evidence_on_the_drawing": round(explain.mass_within(heat, region), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    model = load_model("MobileNetV2Mid", ROOT / "model", lanes=True)
    result: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
                              "machine": f"{platform.machine()} {os.cpu_count()} CPUs, shared",
                              "load_average_at_start": os.getloadavg(),
                              "model": model.name, "runtime": model.runtime, "lanes": model.lanes,
                              "cost": cost(model, args.reps), "api": api_cost(args.reps),
                              "saturation": saturation(model)}
    if not args.skip_quality:
        result["quality"] = quality(model)
    result["load_average_at_end"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
