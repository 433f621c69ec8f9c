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


@pytest.fixture
def media(monkeypatch):
    """The media storage of the latest AppTest run, to read back images and downloads."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    storages: list[MemoryMediaFileStorage] = []

    class Recording(MemoryMediaFileStorage):
        def __init__(self, endpoint: str) -> None:
            super().__init__(endpoint)
            storages.append(self)

    monkeypatch.setattr("streamlit.testing.v1.app_test.MemoryMediaFileStorage", Recording)

    def read(url: str) -> bytes:
        return storages[-1].get_file(url.rsplit("/", 1)[-1]).content

    return read
