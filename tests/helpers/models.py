"""The models the tests share: each loaded once per test session (the service keeps its own in its registry)."""

from __future__ import annotations

import functools

from nsfw_core.inference.model import Model, load_model
from tests.helpers.paths import ROOT


@functools.lru_cache(maxsize=None)
def model_named(name: str, runtime: str | None = None) -> Model:
    """``name`` on ``runtime`` (the settings table's default when None), loaded on first use."""
    return load_model(name, ROOT / "model", runtime=runtime)
