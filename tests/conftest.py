"""Shared fixtures: paths, the reference outputs, and the process-wide models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
REFERENCE_IMAGES = sorted(REFERENCE.glob("*.jpg"))


@pytest.fixture(scope="session")
def reference_outputs() -> dict:
    return json.loads((REFERENCE / "nsfwjs-4.4.0-outputs.json").read_text())


@pytest.fixture(scope="session")
def default_model():
    from nsfw_core.model import get_model

    return get_model("MobileNetV2Mid", ROOT / "model")
