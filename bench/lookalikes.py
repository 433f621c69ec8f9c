"""Look-alikes (issue 29, point 2; issue 26's embeddings): how far the model's scores and embedding move under
the edits a decided image must survive, and the blend attack before and after the rule that a perceptual match
clears only what the model sees alike (:func:`nsfw_core.classify.sees_alike`).  Prints one JSON document
(``--out`` writes it).

``python bench/lookalikes.py [--out FILE]``

1. Calibration: each repository image (data/demo, tests/fixtures/reference) and its four edited copies
   (tests/helpers/edits.py: JPEG q70, resized 50 %, cropped 2 %, watermarked): the largest change of one
   class score (L-infinity) and of the adult score (porn + hentai + sexy, the default adult classes), and
   how many copies a PDQ match reaches (<= NSFW_MATCH_DISTANCE) and the rule keeps.
   (The L-infinity change is reported, not used: a resized drawing moved 0.53 from drawings to neutral, two
   safe classes; the adult score moved at most 0.015.)  And the embedding's distance from the decided image's
   (one minus the cosine, :func:`nsfw_core.inference.embeddings.embedding_distance`): what
   MATCH_EMBEDDING_DISTANCE is calibrated on.
2. The blend attack: the 18 images of data/demo are "decided safe"; six adult stand-ins are synthetic
   pictures the model itself scores porn >= 0.9 (a seeded black-box search over smooth skin-toned shapes:
   the repository has no adult image); each stand-in's detail is laid over each decided image's shading in 8
   ways (blur radius 3, 5, 8, 12 x detail gain 1, 2), and alpha-blended at 5 strengths.  For each blend the
   model's verdict under the default thresholds (adult 0.7, safe 0.9), whether PDQ reaches the decided image,
   and the answer before (a PDQ match decides an unknown), after issue 29 (the adult score only: when the
   model sees it alike) and now (the adult score and, both embeddings existing, their distance).
3. The swap: another decided image's detail over each decided image's shading (the same 8 ways): a picture
   that is no more adult but is not the one decided.  The adult-score rule alone lets those through; the
   embedding bound is what tells them apart.
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
from nsfw_core.classify import MATCH_ADULT_MARGIN, MATCH_EMBEDDING_DISTANCE, sees_alike
from nsfw_core.images import phash
from nsfw_core.inference.embeddings import embedding_distance
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

    def both(self, x: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """The scores and the embedding, from one forward pass (as a request gets them)."""
        probs, embeddings = self.model.predict_with_embeddings(x[np.newaxis])
        return scores_dict(probs[0]), embeddings[0]

    def decided(self, scores: dict[str, float], embedding: np.ndarray | None, dist: int) -> Match:
        """A remembered safe decision of an image with these scores (and embedding), matched by PDQ at ``dist``."""
        return Match("review", "safe", "safe", "pdq", dist, 1, 1, scores, self.model.name, self.model.version,
                     embedding is not None, embedding)

    def alike(self, scores: dict[str, float], embedding: np.ndarray | None, match: Match) -> bool:
        return sees_alike(scores, match, THRESHOLDS, self.model.name, model_version=self.model.version,
                          embedding=embedding)

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
        (base, e_base), stored = scorer.both(x), phash.stored_hashes(x)
        for name, copy in edited_copies(data).items():
            y = scorer.input(copy)
            (s, e), q = scorer.both(y), phash.query_hash(y)
            dist = min((phash.distance(q, h) for h in stored), default=256) if q is not None else 256
            rows.append({"image": str(path.relative_to(ROOT)), "edit": name, "linf": round(linf(s, base), 4),
                         "adult_rise": round(THRESHOLDS.adult_score(s) - THRESHOLDS.adult_score(base), 4),
                         "embedding_distance": round(embedding_distance(e, e_base), 4),
                         "pdq": dist, "alike_by_score": scorer.alike(s, None, scorer.decided(base, None, dist)),
                         "alike": scorer.alike(s, e, scorer.decided(base, e_base, dist))})
    matched = [r for r in rows if r["pdq"] <= MATCH_DISTANCE]
    linfs = sorted(r["linf"] for r in rows)
    distances = sorted(r["embedding_distance"] for r in rows)
    by_edit = {edit: max(r["embedding_distance"] for r in rows if r["edit"] == edit)
               for edit in sorted({r["edit"] for r in rows})}
    return {"copies": len(rows), "images": len(paths), "pdq_matched": len(matched),
            "matched_and_alike_by_score": sum(1 for r in matched if r["alike_by_score"]),
            "matched_and_alike": sum(1 for r in matched if r["alike"]),
            "linf_max": linfs[-1], "linf_p95": float(np.percentile(linfs, 95)), "linf_median": float(np.median(linfs)),
            "adult_rise_max": max(r["adult_rise"] for r in rows),
            "embedding_distance_max": distances[-1], "embedding_distance_p95": float(np.percentile(distances, 95)),
            "embedding_distance_median": float(np.median(distances)), "embedding_distance_max_by_edit": by_edit,
            "embedding_distances": distances,
            "not_alike": [r for r in rows if not r["alike"]]}


def attack(scorer: Scorer, standins: list[bytes]) -> dict[str, Any]:
    decided = []
    for path in images():
        data = path.read_bytes()
        x = scorer.input(data)
        decided.append((path.name, data, *scorer.both(x), phash.stored_hashes(x)))
    out: dict[str, Any] = {}
    for kind in ("detail", "alpha", "swap"):
        rows: list[dict[str, Any]] = []
        for name, a, base, e_base, stored in decided:
            if kind == "swap":  # another decided (safe) picture's detail: no more adult, not the one decided
                others = [(other, b) for other, b, _, _, _ in decided if other != name]
                ways = [(f"{other} r{r} g{g:g}", detail_over_shading(a, b, r, g))
                        for other, b in others for r in RADII for g in GAINS]
                sources: list[tuple[Any, list[tuple[str, bytes]]]] = [(None, ways)]
            else:
                sources = [(si, [(f"r{r} g{g:g}", detail_over_shading(a, b, r, g)) for r in RADII for g in GAINS]
                            if kind == "detail" else [(f"alpha {al}", alpha_blend(a, b, al)) for al in ALPHAS])
                           for si, b in enumerate(standins)]
            for si, ways in sources:
                for way, blend in ways:
                    y = scorer.input(blend)
                    (s, e), q = scorer.both(y), phash.query_hash(y)
                    dist = min((phash.distance(q, h) for h in stored), default=256) if q is not None else 256
                    verdict = THRESHOLDS.decide(s)
                    matched = dist <= MATCH_DISTANCE
                    refused_to = matched and verdict == "unknown"
                    rows.append({"decided": name, "standin": si, "way": way, "verdict": verdict, "pdq": dist,
                                 "adult": round(THRESHOLDS.adult_score(s), 3),
                                 "adult_rise": round(THRESHOLDS.adult_score(s) - THRESHOLDS.adult_score(base), 4),
                                 "embedding_distance": round(embedding_distance(e, e_base), 4),
                                 "safe_before": refused_to,
                                 "safe_by_score": refused_to
                                 and scorer.alike(s, None, scorer.decided(base, None, dist)),
                                 "safe_after": refused_to and scorer.alike(s, e, scorer.decided(base, e_base, dist))})
        unknown = [r for r in rows if r["verdict"] == "unknown"]
        before = [r for r in rows if r["safe_before"]]
        by_score = [r for r in rows if r["safe_by_score"]]
        after = [r for r in rows if r["safe_after"]]
        matched_rows = [r for r in rows if r["pdq"] <= MATCH_DISTANCE]
        out[kind] = {"blends": len(rows), "model_unknown": len(unknown),
                     "model_adult": sum(1 for r in rows if r["verdict"] == "adult"),
                     "pdq_matched": len(matched_rows),
                     "pdq_matched_embedding_distance_min": min((r["embedding_distance"] for r in matched_rows),
                                                               default=None),
                     "pdq_matched_within_embedding_bound": sum(1 for r in matched_rows
                                                               if r["embedding_distance"] <= MATCH_EMBEDDING_DISTANCE),
                     "answered_safe_before": len(before),
                     "worst_adult_before": max((r["adult"] for r in before), default=None),
                     "least_adult_rise_before": min((r["adult_rise"] for r in before), default=None),
                     "median_adult_before": float(np.median([r["adult"] for r in before])) if before else None,
                     "least_embedding_distance_before": min((r["embedding_distance"] for r in before), default=None),
                     "before_within_embedding_bound": sum(1 for r in before
                                                          if r["embedding_distance"] <= MATCH_EMBEDDING_DISTANCE),
                     "before_embedding_distances": sorted(r["embedding_distance"] for r in before),
                     "answered_safe_by_score": len(by_score),
                     "least_embedding_distance_by_score": min((r["embedding_distance"] for r in by_score),
                                                              default=None),
                     "answered_safe_after": len(after),
                     "worst_adult_after": max((r["adult"] for r in after), default=None),
                     "after": after}
    return out


def sweep(result: dict[str, Any], bounds: tuple[float, ...] = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
          ) -> list[dict[str, Any]]:
    """Per candidate bound: the copies it would refuse, and the blends answered safe before issue 29 that the
    embedding bound alone would still let through (the adult-score rule refuses them all in any case)."""
    copies = result["calibration"]["embedding_distances"]
    out = []
    for bound in bounds:
        row: dict[str, Any] = {"bound": bound, "copies_refused": sum(1 for d in copies if d > bound)}
        for kind, figures in result["attack"].items():
            row[f"{kind}_through_by_embedding_alone"] = sum(1 for d in figures["before_embedding_distances"]
                                                           if d <= bound)
        out.append(row)
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
                      "embedding_distance_bound": MATCH_EMBEDDING_DISTANCE,
                      "standins_porn": [round(p, 3) for _, p in made],
                      "calibration": calibration(scorer),
                      "attack": attack(scorer, [d for d, _ in made])}
        finally:
            scorer.close()
    result["embedding_bound_sweep"] = sweep(result)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
