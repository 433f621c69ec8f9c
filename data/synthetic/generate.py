"""Rebuild ``scores.csv``: a labelled set of FAKE model scores (no images).

Each row is an imaginary image with a true label and five class probabilities
drawn from a Dirichlet distribution leaning towards the true class, with some
hard cases (adult images that look neutral and the reverse), so that the
calibration maths and the page have an adult side to work on without any
adult imagery in the repository.  Deterministic (seeded).  Run from the
project root: ``python data/synthetic/generate.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CLASSES = ("drawings", "hentai", "neutral", "porn", "sexy")
COUNTS = {"porn": 60, "sexy": 40, "hentai": 20, "neutral": 60, "drawings": 40}
CONFUSED_WITH = {"porn": "sexy", "sexy": "neutral", "hentai": "drawings", "neutral": "sexy", "drawings": "hentai"}
HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = np.random.default_rng(20240611)
    rows = []
    for label, count in COUNTS.items():
        for i in range(count):
            alpha = np.full(len(CLASSES), 0.4)
            hard = rng.random() < 0.2
            alpha[CLASSES.index(label)] += 2.0 if hard else 8.0
            alpha[CLASSES.index(CONFUSED_WITH[label])] += 4.0 if hard else 0.8
            p = rng.dirichlet(alpha)
            p = np.round(p, 6)
            p[-1] = round(1.0 - p[:-1].sum(), 6)
            if p[-1] < 0:  # keep it a distribution after rounding
                p[int(np.argmax(p))] += p[-1]
                p[-1] = 0.0
            rows.append({"id": f"{label}-{i:03d}", "label": label, **{c: f"{v:.6f}" for c, v in zip(CLASSES, p, strict=False)}})
    with open(HERE / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "label", *CLASSES])
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
