"""Look-alikes (issue 29, point 2): how far the model's scores move under the edits a decided image must
survive, and the blend attack before and after the rule that a perceptual match clears only what the
model sees alike (:func:`nsfw_core.classify.sees_alike`).  Prints one JSON document (``--out`` writes it).

``python bench/lookalikes.py [--out FILE]``

1. Calibration: each repository image (data/demo, tests/fixtures/reference) and its four edited copies
   (tests/helpers/edits.py: JPEG q70, resized 50 %, cropped 2 %, watermarked): the largest change of one
   class score (L-infinity) and of the adult score (porn + hentai + sexy, the default adult classes), and
   how many copies a PDQ match reaches (<= NSFW_MATCH_DISTANCE) and the rule keeps.
   (The L-infinity change is reported, not used: a resized drawing moved 0.53 from drawings to neutral, two
   safe classes; the adult score moved at most 0.015.)
2. The blend attack: the 18 images of data/demo are "decided safe"; six adult stand-ins are synthetic
   pictures the model itself scores porn >= 0.9 (a seeded black-box search over smooth skin-toned shapes:
   the repository has no adult image); each stand-in's detail is laid over each decided image's shading in 8
   ways (blur radius 3, 5, 8, 12 x detail gain 1, 2), and alpha-blended at 5 strengths.  For each blend the
   model's verdict under the default thresholds (adult 0.7, safe 0.9), whether PDQ reaches the decided image,
   and the answer before (a PDQ match decides an unknown) and after (only when the model sees it alike).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from nsfw_core.base.verdict import Thresholds
from nsfw_core.classify import MATCH_ADULT_MARGIN, sees_alike
from nsfw_core.images import phash
from nsfw_core.inference.model import scores_dict
from nsfw_core.state.known import Match
from tests.helpers.edits import alpha_blend, detail_over_shading, edited_copies, png

MATCH_DISTANCE = 31
THRESHOLDS = Thresholds()
RADII = (3, 5, 8, 12)
GAINS = (1.0, 2.0)
ALPHAS = (0.2, 0.3, 0.4, 0.5, 0.6)


class Scorer:
    def __init__(self, folder: str) -> None:
        from nsfw_core.base.settings import load_settings
        from nsfw_core.context import Context

        self.ctx = Context(load_settings(environ={"NSFW_DATA_DIR": folder, "NSFW_MODEL_THREADS": "2",
                                                  "NSFW_COMPILED_DIR": str(ROOT / "var" / "compiled")}))
        self.model = self.ctx.models.get()

    def input(self, data: bytes) -> np.ndarray:
        x = self.ctx.decoder.prepare(self.model, data)
        assert isinstance(x, np.ndarray)
        return x

    def scores(self, x: np.ndarray) -> dict[str, float]:
        return scores_dict(self.model.predict(x[np.newaxis])[0])

    def close(self) -> None:
        self.ctx.close()


def images() -> list[Path]:
    return sorted(ROOT.glob("data/demo/*/*.jpg"))


def standin(scorer: Scorer, seed: int, steps: int = 400) -> tuple[bytes, float]:
    """A synthetic picture the model scores porn >= 0.9: smooth skin-toned ellipses kept while porn rises."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (224, 224), tuple(int(v) for v in rng.integers(120, 230, 3)))
    best = -1.0
    for _ in range(steps):
        trial = im.copy()
        draw = ImageDraw.Draw(trial)
        for _ in range(3):
            x0, y0 = rng.integers(-40, 224, 2)
            w, h = rng.integers(20, 140, 2)
            tone = rng.uniform(0.55, 1.0)
            colour = (int(230 * tone), int(170 * tone * rng.uniform(0.85, 1.1)), int(140 * tone * rng.uniform(0.8, 1.1)))
            draw.ellipse((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=colour)
        trial = trial.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3.0))))
        data = png(np.asarray(trial))
        porn = scorer.scores(scorer.input(data))["porn"]
        if porn > best:
            im, best = trial, porn
            if best >= 0.9:
                break
    return png(np.asarray(im)), best


def linf(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[c] - b[c]) for c in a)


def calibration(scorer: Scorer) -> dict[str, Any]:
    paths = images() + sorted((ROOT / "tests/fixtures/reference").glob("*.jpg"))
    rows: list[dict[str, Any]] = []
    for path in paths:
        data = path.read_bytes()
        x = scorer.input(data)
        base, stored = scorer.scores(x), phash.stored_hashes(x)
        for name, copy in edited_copies(data).items():
            y = scorer.input(copy)
            s, q = scorer.scores(y), phash.query_hash(y)
            dist = min((phash.distance(q, h) for h in stored), default=256) if q is not None else 256
            match = Match("review", "safe", "safe", "pdq", dist, 1, 1, base, scorer.model.name)
            rows.append({"image": str(path.relative_to(ROOT)), "edit": name, "linf": round(linf(s, base), 4),
                         "adult_rise": round(THRESHOLDS.adult_score(s) - THRESHOLDS.adult_score(base), 4),
                         "pdq": dist, "alike": sees_alike(s, match, THRESHOLDS, scorer.model.name)})
    matched = [r for r in rows if r["pdq"] <= MATCH_DISTANCE]
    linfs = sorted(r["linf"] for r in rows)
    return {"copies": len(rows), "images": len(paths), "pdq_matched": len(matched),
            "matched_and_alike": sum(1 for r in matched if r["alike"]),
            "linf_max": linfs[-1], "linf_p95": float(np.percentile(linfs, 95)), "linf_median": float(np.median(linfs)),
            "adult_rise_max": max(r["adult_rise"] for r in rows),
            "not_alike": [r for r in rows if not r["alike"]]}


def attack(scorer: Scorer, standins: list[bytes]) -> dict[str, Any]:
    decided = []
    for path in images():
        data = path.read_bytes()
        x = scorer.input(data)
        decided.append((path.name, data, scorer.scores(x), phash.stored_hashes(x)))
    out: dict[str, Any] = {}
    for kind in ("detail", "alpha"):
        rows: list[dict[str, Any]] = []
        for name, a, base, stored in decided:
            for si, b in enumerate(standins):
                ways = ([(f"r{r} g{g:g}", detail_over_shading(a, b, r, g)) for r in RADII for g in GAINS]
                        if kind == "detail" else [(f"alpha {al}", alpha_blend(a, b, al)) for al in ALPHAS])
                for way, blend in ways:
                    y = scorer.input(blend)
                    s, q = scorer.scores(y), phash.query_hash(y)
                    dist = min((phash.distance(q, h) for h in stored), default=256) if q is not None else 256
                    verdict = THRESHOLDS.decide(s)
                    match = Match("review", "safe", "safe", "pdq", dist, 1, 1, base, scorer.model.name)
                    matched = dist <= MATCH_DISTANCE
                    rows.append({"decided": name, "standin": si, "way": way, "verdict": verdict, "pdq": dist,
                                 "adult": round(THRESHOLDS.adult_score(s), 3),
                                 "adult_rise": round(THRESHOLDS.adult_score(s) - THRESHOLDS.adult_score(base), 4),
                                 "safe_before": matched and verdict == "unknown",
                                 "safe_after": matched and verdict == "unknown"
                                 and sees_alike(s, match, THRESHOLDS, scorer.model.name)})
        unknown = [r for r in rows if r["verdict"] == "unknown"]
        before = [r for r in rows if r["safe_before"]]
        after = [r for r in rows if r["safe_after"]]
        out[kind] = {"blends": len(rows), "model_unknown": len(unknown),
                     "model_adult": sum(1 for r in rows if r["verdict"] == "adult"),
                     "pdq_matched": sum(1 for r in rows if r["pdq"] <= MATCH_DISTANCE),
                     "answered_safe_before": len(before),
                     "worst_adult_before": max((r["adult"] for r in before), default=None),
                     "least_adult_rise_before": min((r["adult_rise"] for r in before), default=None),
                     "median_adult_before": float(np.median([r["adult"] for r in before])) if before else None,
                     "answered_safe_after": len(after),
                     "worst_adult_after": max((r["adult"] for r in after), default=None),
                     "after": after}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scorer = Scorer(folder)
        try:
            made = [standin(scorer, seed) for seed in range(6)]
            result = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                      "model": scorer.model.name, "adult_margin": MATCH_ADULT_MARGIN,
                      "standins_porn": [round(p, 3) for _, p in made],
                      "calibration": calibration(scorer),
                      "attack": attack(scorer, [d for d, _ in made])}
        finally:
            scorer.close()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
