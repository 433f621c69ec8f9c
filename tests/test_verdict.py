"""The three-state rule and the thresholds file."""

from __future__ import annotations

import json
import os

import pytest

from nsfw_core.settings import load_settings
from nsfw_core.verdict import ADULT, SAFE, UNKNOWN, Thresholds, ThresholdStore


def scores(drawings=0.0, hentai=0.0, neutral=0.0, porn=0.0, sexy=0.0):
    return {"drawings": drawings, "hentai": hentai, "neutral": neutral, "porn": porn, "sexy": sexy}


def test_rule_adult_first_then_safe_then_unknown():
    t = Thresholds(adult=0.7, safe=0.9)
    assert t.decide(scores(porn=0.5, sexy=0.2, neutral=0.3)) == ADULT  # 0.7 is "at or above"
    assert t.decide(scores(porn=0.4, sexy=0.29, neutral=0.31)) == UNKNOWN
    assert t.decide(scores(neutral=0.6, drawings=0.3, hentai=0.1)) == SAFE  # 0.9 at the threshold
    assert t.decide(scores(neutral=0.6, drawings=0.29, hentai=0.11)) == UNKNOWN
    assert t.decide(scores(hentai=1.0)) == UNKNOWN  # hentai counts for neither side by default


def test_configurable_classes():
    t = Thresholds(adult=0.5, safe=0.5, adult_classes=("porn", "hentai"), safe_classes=("neutral",))
    assert t.adult_score(scores(porn=0.2, hentai=0.35, sexy=0.4)) == pytest.approx(0.55)
    assert t.decide(scores(porn=0.2, hentai=0.35, sexy=0.45)) == ADULT
    assert t.decide(scores(drawings=0.9, neutral=0.1)) == UNKNOWN


@pytest.mark.parametrize("kwargs", [{"adult": 1.5}, {"safe": -0.1}, {"adult_classes": ()}, {"safe_classes": ("nude",)}])
def test_invalid_thresholds(kwargs):
    with pytest.raises(ValueError):
        Thresholds(**kwargs)


def test_store_defaults_when_no_file(tmp_path):
    store = ThresholdStore(tmp_path / "thresholds.json", Thresholds(adult=0.6, safe=0.8))
    active = store.current()
    assert active.source == "defaults" and active.warning is None
    assert active.thresholds == Thresholds(adult=0.6, safe=0.8)


def test_store_save_and_reload_without_restart(tmp_path):
    path = tmp_path / "sub" / "thresholds.json"
    writer = ThresholdStore(path, Thresholds())
    reader = ThresholdStore(path, Thresholds())  # another process/page reading the same file
    assert reader.current().source == "defaults"
    writer.save(Thresholds(adult=0.55, safe=0.95), model="MobileNetV2Mid", tuned_on={"images": 12})
    active = reader.current()
    assert active.source == "file"
    assert active.thresholds == Thresholds(adult=0.55, safe=0.95)
    assert active.saved["model"] == "MobileNetV2Mid" and active.saved["tuned_on"] == {"images": 12}
    assert "saved_at" in active.saved
    assert [p.name for p in path.parent.iterdir()] == ["thresholds.json"]  # no temp file left behind


@pytest.mark.parametrize("content", ["{not json", "[]", '{"thresholds": {"adult": 2, "safe": 0.5}}', ""])
def test_store_corrupt_file_falls_back_with_warning(tmp_path, content):
    path = tmp_path / "thresholds.json"
    path.write_text(content)
    active = ThresholdStore(path, Thresholds(adult=0.6, safe=0.8)).current()
    assert active.source == "defaults"
    assert active.thresholds == Thresholds(adult=0.6, safe=0.8)
    assert active.warning and "unreadable" in active.warning


def test_store_from_settings_uses_data_dir(tmp_path):
    settings = load_settings(environ={"NSFW_DATA_DIR": str(tmp_path), "NSFW_ADULT_THRESHOLD": "0.65"})
    store = ThresholdStore.from_settings(settings)
    assert store.path == tmp_path / "thresholds.json"
    assert store.current().thresholds.adult == 0.65


def test_save_is_atomic_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "thresholds.json"
    store = ThresholdStore(path, Thresholds())
    store.save(Thresholds(adult=0.5, safe=0.5), model="m")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.save(Thresholds(adult=0.9, safe=0.9), model="m")
    assert path.read_bytes() == before
    assert json.loads(before)["thresholds"]["adult"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thresholds.json"]
