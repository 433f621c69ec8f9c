"""The on-disk score cache: hits and misses, restarts, corrupt files, threads, scoring through it."""

from __future__ import annotations

import functools
import io
import sqlite3
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from nsfw_core.base.errors import InvalidURL, NotAnImage
from nsfw_core.base.settings import CLASS_NAMES, load_settings
from nsfw_core.calibration.labelsets import LabelledItem
from nsfw_core.calibration.scorecache import CACHE_FILE, ScoreCache, ScoreCacheWarning, model_key
from nsfw_core.inference import pipeline
from tests.helpers.paths import ROOT

SCORES = {"drawings": 0.1, "hentai": 0.05, "neutral": 0.7, "porn": 0.1, "sexy": 0.05}


def scored(scores: dict[str, float] | None) -> dict[str, float]:
    """Scores that must be there (a hit, a scored item)."""
    assert scores is not None
    return scores


def test_miss_then_hit(tmp_path):
    cache = ScoreCache(tmp_path / "c.sqlite")
    assert cache.get("abc", "M@1") is None
    cache.put("abc", "M@1", SCORES)
    assert cache.get("abc", "M@1") == SCORES
    assert cache.get("abc", "M@2") is None  # another model version is another key
    assert cache.get("abd", "M@1") is None
    cache.put("abc", "M@1", {**SCORES, "porn": 0.2})  # replaces
    assert scored(cache.get("abc", "M@1"))["porn"] == 0.2
    assert len(cache) == 1 and cache.warning is None


def test_survives_a_restart(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    first = ScoreCache(path)
    first.put_many([(f"sha{i}", {**SCORES, "porn": i / 100}) for i in range(50)], "M@1")
    first.close()
    second = ScoreCache(path)
    assert scored(second.get("sha42", "M@1"))["porn"] == 0.42
    assert len(second.get_many([f"sha{i}" for i in range(60)], "M@1")) == 50
    assert second.warning is None


def test_from_settings_uses_the_data_dir(tmp_path):
    cache = ScoreCache.from_settings(load_settings({"NSFW_DATA_DIR": str(tmp_path)}))
    assert cache.path == tmp_path / CACHE_FILE
    assert ScoreCache.in_folder(tmp_path / "data").path == tmp_path / "data" / CACHE_FILE


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, b"SQLite format 3\0" + b"\xff" * 5000])
def test_corrupt_file_starts_afresh_with_a_warning(tmp_path, content):
    path = tmp_path / CACHE_FILE
    path.write_bytes(content)
    with pytest.warns(ScoreCacheWarning, match="unusable"):
        cache = ScoreCache(path)
    assert cache.warning and "started a new one" in cache.warning
    assert cache.get("x", "M@1") is None
    cache.put("x", "M@1", SCORES)
    assert cache.get("x", "M@1") == SCORES
    assert list(tmp_path.glob(f"{CACHE_FILE}.corrupt-*"))  # the old file is kept aside
    cache.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new file opens cleanly
        assert ScoreCache(path).get("x", "M@1") == SCORES


def test_wrong_schema_and_bad_rows(tmp_path):
    path = tmp_path / "c.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE scores (a INTEGER)")  # a table of the same name, other columns
    conn.commit()
    conn.close()
    with pytest.warns(ScoreCacheWarning):
        cache = ScoreCache(path)
    cache.put("x", "M@1", SCORES)
    # a row that is not a score dict is treated as a miss
    with cache._lock:
        assert cache._conn is not None
        cache._conn.execute("INSERT INTO scores VALUES ('y', 'M@1', '[1, 2]', 0)")
    assert cache.get("y", "M@1") is None and cache.get("x", "M@1") == SCORES


def test_unwritable_location_falls_back_to_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.warns(ScoreCacheWarning, match="memory"):
        cache = ScoreCache(blocker / "c.sqlite")
    cache.put("x", "M@1", SCORES)
    assert cache.get("x", "M@1") == SCORES


def test_threads(tmp_path):
    cache = ScoreCache(tmp_path / "c.sqlite")
    errors = []

    def work(k: int) -> None:
        try:
            for i in range(40):
                cache.put(f"{k}-{i}", "M@1", {**SCORES, "porn": i / 100})
                assert scored(cache.get(f"{k}-{i}", "M@1"))["porn"] == i / 100
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) == 8 * 40


# ---------------------------------------------------------------- scoring through the cache


class FakeModel:
    """Stands in for nsfw_core.inference.model.Model: porn score = the image's mean red / 255."""

    name, version, input_size = "Fake", "v1", 4

    def __init__(self) -> None:
        self.predicted = 0

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return np.full((4, 4, 3), rgb[..., 0].mean() / 255.0, dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.predicted += len(batch)
        red = batch[:, 0, 0, 0]
        out = np.zeros((len(batch), 5), dtype=np.float32)
        out[:, CLASS_NAMES.index("porn")] = red
        out[:, CLASS_NAMES.index("neutral")] = 1 - red
        return out


@pytest.fixture
def reading(tmp_path):
    """``(settings, decoder, loader)`` as the process context passes them to ``score_items``."""
    settings = load_settings({"NSFW_DATA_DIR": str(tmp_path)})
    decoder = pipeline.Decoder(settings.decode_limits)
    yield settings, decoder, functools.partial(pipeline.load_bytes, policy=settings.fetch_policy)
    decoder.close()


def png(red: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (red, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def test_score_items_classifies_only_misses(tmp_path, reading):
    _, decoder, loader = reading
    files = {}
    for name, red in (("a", 51), ("b", 102), ("same_as_a", 51)):
        files[name] = tmp_path / f"{name}.png"
        files[name].write_bytes(png(red))
    (tmp_path / "text.png").write_bytes(b"hello, not an image")
    items = [LabelledItem(str(files["a"]), "porn", "adult"), LabelledItem(str(files["b"]), "neutral", "safe"),
             LabelledItem(str(tmp_path / "missing.png"), "porn", "adult"),
             LabelledItem(str(files["same_as_a"]), "porn", "adult"),
             LabelledItem(str(tmp_path / "text.png"), "porn", "adult")]
    model = FakeModel()
    cache = ScoreCache(tmp_path / "c.sqlite")
    seen = []
    out = cache.score_items(model, items, decoder, loader, progress=lambda done, total: seen.append((done, total)))
    assert [o[0] for o in out] == items
    assert scored(out[0][1])["porn"] == pytest.approx(0.2) and scored(out[1][1])["porn"] == pytest.approx(0.4)
    assert out[3][1] == out[0][1]  # same bytes, same scores
    assert isinstance(out[2][2], InvalidURL) and out[2][1] is None
    assert isinstance(out[4][2], NotAnImage) and out[4][1] is None
    assert model.predicted == 2  # a (= same_as_a) and b; errors never reach the model
    assert seen[-1] == (5, 5)

    # After a "restart", nothing is classified again.
    model2 = FakeModel()
    again = ScoreCache(tmp_path / "c.sqlite").score_items(model2, items, decoder, loader)
    assert model2.predicted == 0
    assert [o[1] for o in again] == [o[1] for o in out]
    # Another model version is a different key: classified again.
    model3 = FakeModel()
    model3.version = "v2"
    ScoreCache(tmp_path / "c.sqlite").score_items(model3, items[:2], decoder, loader)
    assert model3.predicted == 2


def test_model_key():
    settings = load_settings({"NSFW_JPEG_DRAFT": "false"})
    assert model_key(FakeModel(), settings) == "Fake@v1"
    assert model_key(FakeModel(), load_settings({"NSFW_JPEG_DRAFT": "true"})) == "Fake@v1+draft"


def test_real_model_scores_match_score_sources(tmp_path, default_model, reading):
    settings, decoder, loader = reading
    sources = sorted(str(p) for p in (ROOT / "data" / "demo" / "photos").glob("*.jpg"))[:3]
    items = [LabelledItem(s, "neutral", "safe") for s in sources]
    cache = ScoreCache.from_settings(settings)
    got = cache.score_items(default_model, items, decoder, loader)
    direct = pipeline.score_sources(default_model, sources, decoder, loader)
    for (_, scores, err), res in zip(got, direct, strict=True):
        assert err is None and scores == res.scores
    assert len(cache) == 3
    assert [s for _, s, _ in cache.score_items(default_model, items, decoder, loader)] == [r.scores for r in direct]
