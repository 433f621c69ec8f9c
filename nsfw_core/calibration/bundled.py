"""The labelled sets shipped with the project: the benign demo images and the synthetic score table."""

from __future__ import annotations

from typing import Mapping

from nsfw_core.base.labels import LabelledItem
from nsfw_core.base.settings import ROOT
from nsfw_core.calibration.manifests import load_manifest, load_score_table

DEMO_DIR = ROOT / "data" / "demo"
DEMO_MANIFEST = DEMO_DIR / "manifest.csv"
SYNTHETIC_SCORES = ROOT / "data" / "synthetic" / "scores.csv"


def demo_set(binary_map: Mapping[str, str] | None = None) -> list[LabelledItem]:
    """The benign demo set (``data/demo/manifest.csv``; see ``data/demo/LICENSES.md``)."""
    return load_manifest(DEMO_MANIFEST, binary_map=binary_map)


def synthetic_set(binary_map: Mapping[str, str] | None = None) -> list[tuple[LabelledItem, dict[str, float]]]:
    """The synthetic score table ``data/synthetic/scores.csv`` (fake scores, no images)."""
    return load_score_table(SYNTHETIC_SCORES, binary_map=binary_map)
