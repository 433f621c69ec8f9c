"""The three-state rule and the thresholds file."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest

from nsfw_core.base.settings import load_settings
from nsfw_core.base.verdict import ADULT, MAX_FILE_BYTES, SAFE, UNKNOWN, Thresholds, ThresholdStore


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


@pytest.mark.parametrize("kwargs", [{"adult": 1.5}, {"safe": -0.1}, {"adult_classes": ()}, {"safe_classes": ("nude",)},
                                    {"adult": True}, {"safe": float("nan")}, {"adult": "0.5"}])
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


# ------------------------------------------------------------------ hostile thresholds files

GOOD = {"thresholds": {"adult": 0.6, "safe": 0.8, "adult_classes": ["porn", "sexy"],
                       "safe_classes": ["neutral", "drawings"]}, "model": "MobileNetV2Mid"}
DEFAULTS = Thresholds(adult=0.75, safe=0.85)


def doc(**thresholds):
    return json.dumps({"thresholds": {**GOOD["thresholds"], **thresholds}})


BAD_CONTENTS = [  # (content, words the warning must contain)
    (b"[" * 30_000, "nested too deep"),
    (b'{"thresholds": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "nested too deep"),
    (b'{"thresholds": {"adult": 0.6, "safe": 0.8}, "x": "\xff\xfe"}', "not UTF-8"),
    (b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), "not valid JSON"),  # a BOM is not JSON
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[]", '"thresholds" object'),
    (b'{"thresholds": 7}', '"thresholds" object'),
    (b'{"thresholds": {"adult": 0.6}}', 'no "safe"'),
    (doc(adult=True).encode(), "adult threshold must be a number in [0, 1], got True"),
    (doc(safe=False).encode(), "safe threshold must be a number in [0, 1], got False"),
    (doc(adult="0.6").encode(), "got '0.6'"),
    (doc(adult=None).encode(), "got None"),
    (doc(adult=1.5).encode(), "got 1.5"),
    (doc(safe=-0.1).encode(), "got -0.1"),
    (doc(adult=[0.6]).encode(), "got [0.6]"),
    (b'{"thresholds": {"adult": NaN, "safe": 0.8}}', "got nan"),
    (b'{"thresholds": {"adult": 1e400, "safe": 0.8}}', "got inf"),
    (b'{"thresholds": {"adult": ' + b"9" * 5000 + b', "safe": 0.8}}', "not valid JSON"),
    (doc(adult_classes=["porn", "neutral"]).encode(), "neutral cannot count as both adult and safe"),
    (doc(adult_classes=["neutral"], safe_classes=["neutral"]).encode(), "cannot count as both"),
    (doc(adult_classes=[]).encode(), "adult_classes must be a non-empty list"),
    (doc(adult_classes="porn").encode(), "got 'porn'"),
    (doc(adult_classes=["porn", "nude"]).encode(), "from drawings, hentai, neutral, porn, sexy"),
    (doc(adult_classes=["porn", "porn"]).encode(), "distinct"),
    (doc(safe_classes=[1, 2]).encode(), "safe_classes"),
    (doc(safe_classes=None).encode(), "got None"),
    (b" " * (MAX_FILE_BYTES + 1), f"larger than {MAX_FILE_BYTES} bytes"),
    (json.dumps({**GOOD, "pad": "x" * MAX_FILE_BYTES}).encode(), "larger than"),
]


@pytest.mark.parametrize("content,words", BAD_CONTENTS, ids=[str(i) for i in range(len(BAD_CONTENTS))])
def test_bad_file_is_rejected_with_a_warning_and_the_defaults_stay(tmp_path, caplog, content, words):
    path = tmp_path / "thresholds.json"
    path.write_bytes(content)
    store = ThresholdStore(path, DEFAULTS)
    with caplog.at_level(logging.WARNING, logger="nsfw_core.base.verdict"):
        for _ in range(3):  # asked again and again (every request), warned once
            active = store.current()
    assert (active.thresholds, active.source) == (DEFAULTS, "defaults")
    assert active.warning.startswith(f"thresholds file {path} is unreadable (")
    assert words in active.warning and active.warning.endswith("; using the defaults")
    assert len(active.warning) < 400
    assert [r.getMessage() for r in caplog.records] == [active.warning]


def test_bad_file_keeps_the_last_good_thresholds_and_says_so_once_per_change(tmp_path, caplog):
    path = tmp_path / "thresholds.json"
    store = ThresholdStore(path, DEFAULTS)

    def write(text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    write(json.dumps(GOOD))
    assert (store.current().thresholds.adult, store.current().source, store.current().warning) == (0.6, "file", None)
    with caplog.at_level(logging.WARNING, logger="nsfw_core.base.verdict"):
        write(doc(adult=True))
        first = [store.current() for _ in range(5)][-1]
        assert (first.thresholds.adult, first.thresholds.safe, first.source) == (0.6, 0.8, "file")
        assert first.saved["model"] == "MobileNetV2Mid"
        assert "adult threshold" in first.warning and "keeping the last good thresholds" in first.warning
        write("[" * 30_000)  # another bad version: warned again, still the last good ones
        second = store.current()
        assert second.thresholds.adult == 0.6 and "nested too deep" in second.warning
        write(doc(adult=0.5))
        assert (store.current().thresholds.adult, store.current().warning) == (0.5, None)
        path.unlink()  # no file: the defaults, and the defaults are what a bad file falls back to next
        assert (store.current().thresholds, store.current().warning) == (DEFAULTS, None)
        write("{")
        assert store.current().thresholds == DEFAULTS and store.current().warning.endswith("using the defaults")
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "unreadable" in m]) == 3, messages
    assert any("valid again" in m for m in messages)


def test_a_directory_is_rejected(tmp_path):
    (tmp_path / "thresholds.json").mkdir()
    active = ThresholdStore(tmp_path / "thresholds.json", DEFAULTS).current()
    assert active.thresholds == DEFAULTS and "not a regular file (a directory)" in active.warning


def test_a_dangling_symlink_is_a_warning_not_a_silent_default(tmp_path):
    path = tmp_path / "thresholds.json"
    path.symlink_to(tmp_path / "gone.json")
    store = ThresholdStore(path, DEFAULTS)
    active = store.current()
    assert active.thresholds == DEFAULTS and active.source == "defaults"
    assert "symbolic link" in active.warning and "gone.json" in active.warning
    (tmp_path / "gone.json").write_text(json.dumps(GOOD))  # the target appears: picked up
    assert (store.current().thresholds.adult, store.current().warning) == (0.6, None)


def test_a_symlink_to_a_good_file_is_followed(tmp_path):
    (tmp_path / "real.json").write_text(json.dumps(GOOD))
    (tmp_path / "thresholds.json").symlink_to(tmp_path / "real.json")
    active = ThresholdStore(tmp_path / "thresholds.json", DEFAULTS).current()
    assert (active.thresholds.adult, active.source, active.warning) == (0.6, "file", None)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_never_blocks(tmp_path):
    path = tmp_path / "thresholds.json"
    os.mkfifo(path)
    result = []
    reader = threading.Thread(target=lambda: result.append(ThresholdStore(path, DEFAULTS).current()), daemon=True)
    started = time.monotonic()
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock it before failing, or the test process hangs on exit
        with open(path, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert time.monotonic() - started < 1
    assert result[0].thresholds == DEFAULTS and "not a regular file (a FIFO)" in result[0].warning


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_warning(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(GOOD))
    path.chmod(0)
    active = ThresholdStore(path, DEFAULTS).current()
    assert active.thresholds == DEFAULTS and "Permission denied" in active.warning


def test_save_refuses_what_reading_would_reject(tmp_path):
    store = ThresholdStore(tmp_path / "thresholds.json", DEFAULTS)
    with pytest.raises(ValueError, match="cannot count as both"):
        store.save(Thresholds(adult=0.6, safe=0.8, adult_classes=("porn", "neutral")), model="m")
    assert not (tmp_path / "thresholds.json").exists()
