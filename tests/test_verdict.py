"""The three-state rule, and the thresholds file of older installs.

The thresholds in force live in the database history (nsfw_core.state.thresholds); an old install's
``thresholds.json`` is read once, through ``read_small_regular_file`` and ``parse_thresholds_file``,
and imported when valid.  Every hostile file is asserted here through that import (the warning it
gives, the defaults kept) and through the two functions directly.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import pytest

from nsfw_core.base.files import atomic_write
from nsfw_core.base.labels import ADULT, SAFE, UNKNOWN
from nsfw_core.base.settings import load_settings
from nsfw_core.base.verdict import (
    MAX_FILE_BYTES,
    Thresholds,
    parse_thresholds_file,
    read_small_regular_file,
)
from nsfw_core.state.thresholds import IMPORTED_BY, ThresholdHistory


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


# ------------------------------------------------------------------ the import of an old install's file

GOOD: dict[str, Any] = {"thresholds": {"adult": 0.6, "safe": 0.8, "adult_classes": ["porn", "sexy"],
                       "safe_classes": ["neutral", "drawings"]}, "model": "MobileNetV2Mid"}
DEFAULTS = Thresholds(adult=0.75, safe=0.85)
IMPORT_LOG = "nsfw_core.state.thresholds"


@pytest.fixture
def histories(tmp_path):
    """``open(defaults=DEFAULTS)``: a ThresholdHistory on SQLite in ``tmp_path`` (the data folder), closed after."""
    opened: list[ThresholdHistory] = []

    def open_history(defaults: Thresholds = DEFAULTS) -> ThresholdHistory:
        h = ThresholdHistory(None, data_dir=tmp_path, defaults=defaults)
        opened.append(h)
        return h

    yield open_history
    for h in opened:
        h.close()


def test_no_file_gives_the_defaults(histories):
    active = histories(Thresholds(adult=0.6, safe=0.8)).current()
    assert active.source == "defaults" and active.warning is None
    assert active.thresholds == Thresholds(adult=0.6, safe=0.8)


def test_a_saved_file_is_imported_with_what_was_saved_with_it(tmp_path, histories):
    path = tmp_path / "thresholds.json"
    doc = {"thresholds": Thresholds(adult=0.55, safe=0.95).to_dict(), "model": "MobileNetV2Mid",
           "saved_at": "2026-01-02T03:04:05+00:00", "tuned_on": {"images": 12}}
    path.write_text(json.dumps(doc))
    assert parse_thresholds_file(path.read_bytes()) == (
        Thresholds(adult=0.55, safe=0.95),
        {"model": "MobileNetV2Mid", "saved_at": "2026-01-02T03:04:05+00:00", "tuned_on": {"images": 12}})
    active = histories().current()
    assert active.source == "database"
    assert active.thresholds == Thresholds(adult=0.55, safe=0.95)
    assert active.saved["model"] == "MobileNetV2Mid" and active.saved["tuned_on"] == {"images": 12}
    [v1] = histories().history()  # another process reading the same database: the same version
    assert (v1.saved_by, v1.note) == (IMPORTED_BY, f"imported from {path} (saved 2026-01-02T03:04:05+00:00)")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("thresholds")] == ["thresholds.json"]


@pytest.mark.parametrize("content", ["{not json", "[]", '{"thresholds": {"adult": 2, "safe": 0.5}}', ""])
def test_corrupt_file_falls_back_with_warning(tmp_path, histories, content):
    (tmp_path / "thresholds.json").write_text(content)
    active = histories(Thresholds(adult=0.6, safe=0.8)).current()
    assert active.source == "defaults"
    assert active.thresholds == Thresholds(adult=0.6, safe=0.8)
    assert active.warning and "unreadable" in active.warning


def test_from_settings_reads_the_file_in_the_data_dir(tmp_path):
    settings = load_settings(environ={"NSFW_DATA_DIR": str(tmp_path), "NSFW_ADULT_THRESHOLD": "0.65"})
    h = ThresholdHistory.from_settings(settings)
    try:
        assert h.file == tmp_path / "thresholds.json"
        assert h.current().thresholds.adult == 0.65
    finally:
        h.close()


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    # what wrote the old installs' thresholds files (and writes the compiled models today)
    path = tmp_path / "thresholds.json"
    atomic_write(path, json.dumps({"thresholds": Thresholds(adult=0.5, safe=0.5).to_dict()}).encode())
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(path, json.dumps({"thresholds": Thresholds(adult=0.9, safe=0.9).to_dict()}).encode())
    assert path.read_bytes() == before
    assert json.loads(before)["thresholds"]["adult"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thresholds.json"]


# ------------------------------------------------------------------ hostile thresholds files

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


WARNING_START = "the thresholds file (thresholds.json in the data folder) is unreadable ("
WARNING_END = "), so unusable: not imported; the defaults are in force until thresholds are saved"


@pytest.mark.parametrize("content,words", BAD_CONTENTS, ids=[str(i) for i in range(len(BAD_CONTENTS))])
def test_bad_content_is_refused_by_the_parser(content, words):
    with pytest.raises(ValueError) as info:
        parse_thresholds_file(content)
    assert words in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("content,words", BAD_CONTENTS, ids=[str(i) for i in range(len(BAD_CONTENTS))])
def test_bad_file_is_not_imported_with_a_warning_and_the_defaults_stay(tmp_path, caplog, histories, content, words):
    path = tmp_path / "thresholds.json"
    path.write_bytes(content)
    h = histories()
    with caplog.at_level(logging.WARNING, logger=IMPORT_LOG):
        for _ in range(3):  # asked again and again (every request), warned once
            active = h.current()
        h.refresh()  # a refresh of the database does not read the file again
    assert (active.thresholds, active.source, active.version) == (DEFAULTS, "defaults", None)
    assert active.warning.startswith(WARNING_START) and active.warning.endswith(WARNING_END)
    assert words in active.warning
    assert len(active.warning) < 400
    assert h.history() == []
    [record] = [r for r in caplog.records if r.name == IMPORT_LOG]
    assert f"thresholds file {path} is unreadable (" in record.getMessage() and words in record.getMessage()


def test_a_file_that_turns_bad_after_its_import_changes_nothing(tmp_path, caplog, histories):
    # The last good thresholds read from the file stay in force: once imported, the file is never read again.
    path = tmp_path / "thresholds.json"

    def write(text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    write(json.dumps(GOOD))
    first = histories().current()
    assert (first.thresholds.adult, first.source, first.version, first.warning) == (0.6, "database", 1, None)
    with caplog.at_level(logging.WARNING, logger=IMPORT_LOG):
        for text in (doc(adult=True), "[" * 30_000, doc(adult=0.5), "{"):
            write(text)  # each version read by a process starting anew
            active = histories().current()
            assert (active.thresholds.adult, active.thresholds.safe, active.version, active.warning) == \
                (0.6, 0.8, 1, None), text[:40]
            assert active.saved["model"] == "MobileNetV2Mid"
        path.unlink()
        assert (histories().current().thresholds.adult, histories().current().warning) == (0.6, None)
    assert [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()] == []
    assert [v.version for v in histories().history()] == [1]


def test_a_directory_is_rejected(tmp_path, histories):
    (tmp_path / "thresholds.json").mkdir()
    active = histories().current()
    assert active.thresholds == DEFAULTS and "not a regular file (a directory)" in active.warning
    with pytest.raises(OSError, match=r"not a regular file \(a directory\)"):
        read_small_regular_file(tmp_path / "thresholds.json", MAX_FILE_BYTES)


def test_a_dangling_symlink_is_a_warning_not_a_silent_default(tmp_path, caplog, histories):
    path = tmp_path / "thresholds.json"
    path.symlink_to(tmp_path / "gone.json")
    with caplog.at_level(logging.WARNING, logger=IMPORT_LOG):
        active = histories().current()
    assert active.thresholds == DEFAULTS and active.source == "defaults"
    # the public warning names the link, not where it points (/health is public); the log has the target
    assert "symbolic link to <path>, which does not exist" in active.warning and "gone.json" not in active.warning
    assert any("symbolic link" in r.getMessage() and "gone.json" in r.getMessage() for r in caplog.records)
    (tmp_path / "gone.json").write_text(json.dumps(GOOD))  # the target appears: the next start imports it
    again = histories().current()
    assert (again.thresholds.adult, again.warning) == (0.6, None)


def test_a_symlink_to_a_good_file_is_followed(tmp_path, histories):
    (tmp_path / "real.json").write_text(json.dumps(GOOD))
    (tmp_path / "thresholds.json").symlink_to(tmp_path / "real.json")
    active = histories().current()
    assert (active.thresholds.adult, active.source, active.warning) == (0.6, "database", None)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_never_blocks(tmp_path, histories):
    path = tmp_path / "thresholds.json"
    os.mkfifo(path)

    def in_thread(read, seconds: float):
        result = []
        reader = threading.Thread(target=lambda: result.append(read()), daemon=True)
        started = time.monotonic()
        reader.start()
        reader.join(5)
        if reader.is_alive():  # unblock it before failing, or the test process hangs on exit
            with open(path, "wb"):
                pass
            pytest.fail("reading a FIFO blocked")
        assert time.monotonic() - started < seconds
        return result[0]

    def read_direct():
        try:
            read_small_regular_file(path, MAX_FILE_BYTES)
        except OSError as exc:
            return str(exc)
        return "read"

    assert "not a regular file (a FIFO)" in in_thread(read_direct, 1)
    # through the import (which also creates and migrates the database: the 5 s join is the blocking check)
    active = in_thread(histories().current, 5)
    assert active.thresholds == DEFAULTS and "not a regular file (a FIFO)" in active.warning


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_warning(tmp_path, histories):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(GOOD))
    path.chmod(0)
    active = histories().current()
    assert active.thresholds == DEFAULTS and "Permission denied" in active.warning


def test_save_refuses_what_reading_would_reject(tmp_path, histories):
    overlapping = Thresholds(adult=0.6, safe=0.8, adult_classes=("porn", "neutral"))
    with pytest.raises(ValueError, match="cannot count as both"):
        parse_thresholds_file(json.dumps({"thresholds": overlapping.to_dict()}).encode())
    h = histories()
    with pytest.raises(ValueError, match="cannot count as both"):
        h.save(overlapping, model="m")
    assert h.history() == [] and h.current().version is None
    assert not (tmp_path / "thresholds.json").exists()
