"""The calibration page, driven with Streamlit's AppTest (real model, data dir in a tmp folder)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from nsfw_core.base.settings import load_settings
from nsfw_core.base.verdict import THRESHOLDS_FILE, ActiveThresholds
from nsfw_core.calibration import labelsets
from nsfw_core.calibration import maths as cal
from nsfw_core.calibration.scorecache import CACHE_FILE, ScoreCache
from nsfw_core.context import current
from nsfw_core.state.thresholds import ThresholdHistory
from tests.helpers.pages import new_context as fresh_context
from tests.helpers.paths import ROOT
from tests.helpers.signin import signed_in

# Relative paths given to from_file are resolved against this test file's folder, hence the absolute path.
PAGE = str(ROOT / "pages" / "calibrate.py")
STEP = 0.0001


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NSFW_DATA_DIR", str(tmp_path))
    new_context()  # the context's settings, thresholds store and score cache read the new dir
    yield tmp_path
    new_context()


def new_context() -> None:
    """A fresh process context (tests.helpers.pages) and no cached thumbnails."""
    fresh_context()
    st.cache_data.clear()


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click(at: AppTest, label: str) -> AppTest:
    buttons = [b for b in at.button if b.label == label]
    assert buttons, f"no button {label!r} among {[b.label for b in at.button]}"
    buttons[0].click()
    return run(at)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def saved(data_dir: Path) -> dict[str, Any]:
    """The newest version in the thresholds history (the database under ``data_dir``), as a dict."""
    history = ThresholdHistory.from_settings(load_settings())
    try:
        [latest] = history.history(limit=1)
    finally:
        history.close()
    assert not (data_dir / THRESHOLDS_FILE).exists()  # nothing writes the old file any more
    return {"thresholds": latest.thresholds.to_dict(), "model": latest.model, "tuned_on": latest.tuned_on,
            "version": latest.version}


def in_force() -> ActiveThresholds:
    """What another process (the API of another instance) reads from the database."""
    history = ThresholdHistory.from_settings(load_settings())
    try:
        return history.current()
    finally:
        history.close()


def slider(at: AppTest, key: str) -> float:
    """A slider's value (the page's sliders hold one number)."""
    value = at.slider(key=key).value
    assert isinstance(value, float)
    return value


def roc_points(at: AppTest) -> dict[str, dict[str, Any]]:
    """The operating points drawn on the ROC chart, by kind ("current T_adult", "suggested T_adult")."""
    [chart] = [c for c in at.get("vega_lite_chart") if str(json.loads(c.proto.spec).get("title")).startswith("ROC")]
    frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
    [points] = [f for f in frames if "what" in f.columns]
    return {row["what"]: row for row in points.to_dict("records")}


def adult_point(a, s, y, t_adult: float, t_safe: float) -> dict[str, float]:
    """tpr, fpr and precision of the adult verdicts, from the array form of the rule (calibration.verdicts)."""
    hit = cal.verdicts(a, s, t_adult, t_safe) == "adult"
    tp, fp = int((hit & (y == 1)).sum()), int((hit & (y == 0)).sum())
    return {"tpr": tp / int((y == 1).sum()), "recall": tp / int((y == 1).sum()), "fpr": fp / int((y == 0).sum()),
            "precision": tp / (tp + fp)}


def test_demo_set_move_suggest_save(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    assert at.radio(key="cal_source").value == "demo"
    # Starts at the active thresholds (the defaults: no file yet).
    assert at.slider(key="cal_t_adult").value == pytest.approx(0.7)
    assert at.slider(key="cal_t_safe").value == pytest.approx(0.9)
    assert "18 images scored" in texts(at.markdown)
    assert "no adult samples" in texts(at.warning)
    assert "ROC curve and AUC cannot be computed" in texts(at.info)
    assert (data_dir / CACHE_FILE).exists()

    at.slider(key="cal_t_adult").set_value(0.55)
    at.slider(key="cal_t_safe").set_value(0.65)
    run(at)
    assert "At T_adult = 0.5500, T_safe = 0.6500" in texts(at.subheader)

    click(at, "Suggest thresholds")  # no adult samples: says why, leaves the sliders alone
    assert "no adult samples" in texts(at.error) and "cannot be measured" in texts(at.error)
    assert at.slider(key="cal_t_adult").value == pytest.approx(0.55)

    click(at, "Save thresholds")
    assert "Saved T_adult = 0.55, T_safe = 0.65" in texts(at.success)
    doc = saved(data_dir)
    assert doc["thresholds"]["adult"] == pytest.approx(0.55) and doc["thresholds"]["safe"] == pytest.approx(0.65)
    assert doc["model"] == "MobileNetV2Mid"
    tuned = doc["tuned_on"]
    assert (tuned["images"], tuned["adult"], tuned["safe"]) == (18, 0, 18)
    assert tuned["source"].startswith("demo set") and tuned["metrics"]["adult_precision"] is None
    # What the API reads:
    active = in_force()
    assert (active.source, active.version, active.warning) == ("database", 1, None)
    assert (active.thresholds.adult, active.thresholds.safe) == pytest.approx((0.55, 0.65))

    # A fresh session starts from the saved thresholds.
    again = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    assert again.slider(key="cal_t_adult").value == pytest.approx(0.55)


def test_moving_a_slider_never_rescores(data_dir, monkeypatch):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))

    def boom(*args, **kwargs):
        raise AssertionError("re-scored")

    monkeypatch.setattr(ScoreCache, "score_items", boom)
    at.slider(key="cal_t_safe").set_value(0.5)
    run(at)
    at.multiselect(key="cal_adult_classes").set_value(["porn", "sexy", "hentai"])
    run(at)
    assert "At T_adult = 0.7000, T_safe = 0.5000" in texts(at.subheader)


def _zip_of_demo_images() -> tuple[bytes, list[str], list[str]]:
    """Benign demo images under adult/ and safe/: the labels are fake, only to exercise the adult side."""
    adult = sorted((ROOT / "data" / "demo" / "photos").glob("*.jpg"))[:3]
    safe = sorted((ROOT / "data" / "demo" / "drawings").glob("*.jpg"))[:4]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder, files in (("adult", adult), ("safe", safe)):
            for f in files:
                zf.write(f, f"set/{folder}/{f.name}")
    return buf.getvalue(), [str(f) for f in adult], [str(f) for f in safe]


def test_zip_upload_suggest_and_save(data_dir):
    data, adult, safe = _zip_of_demo_images()
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    at.radio(key="cal_source").set_value("zip")
    run(at)
    assert "Upload a ZIP" in texts(at.info)
    at.file_uploader(key="cal_zip").set_value(("set.zip", data, "application/zip"))
    run(at)
    assert "7 images scored: **3 adult**, **4 safe**" in texts(at.markdown)
    assert "no adult samples" not in texts(at.warning)
    assert "ROC curve and AUC cannot be computed" not in texts(at.info)

    # The expected suggestion, computed here from the model directly.
    outcomes = current().classifier.sources(adult + safe)
    assert all(o.classification is not None for o in outcomes)
    df = cal.score_frame([o.classification.scores for o in outcomes if o.classification is not None],
                         ["adult"] * 3 + ["safe"] * 4)
    a, s, y = df["adult_score"].to_numpy(), df["safe_score"].to_numpy(), df["truth"].to_numpy()
    expected = cal.suggest_thresholds(a, s, y, 0.99, 0.99)
    assert expected.ok

    click(at, "Suggest thresholds")
    t_a, t_s = slider(at, "cal_t_adult"), slider(at, "cal_t_safe")
    assert expected.t_adult is not None and expected.t_safe is not None
    assert abs(t_a - expected.t_adult) < STEP and abs(t_s - expected.t_safe) < STEP
    m = cal.decision_metrics(a, s, y, t_a, t_s)
    assert m.review_n == expected.review_n  # the sliders make the suggested decisions
    assert f"Suggestion ({expected.status})" in texts(at.success) + texts(at.warning)

    click(at, "Save thresholds")
    doc = saved(data_dir)
    assert doc["thresholds"]["adult"] == pytest.approx(t_a) and doc["thresholds"]["safe"] == pytest.approx(t_s)
    assert (doc["tuned_on"]["images"], doc["tuned_on"]["adult"], doc["tuned_on"]["safe"]) == (7, 3, 4)
    assert doc["tuned_on"]["source"] == "zip set.zip" and doc["tuned_on"]["suggestion"]["status"] == expected.status
    active = in_force().thresholds
    assert (active.adult, active.safe) == pytest.approx((t_a, t_s))


def test_synthetic_scores_suggest_moves_the_sliders(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    at.radio(key="cal_source").set_value("synthetic")
    run(at)
    assert "220 images scored: **120 adult**, **100 safe**" in texts(at.markdown)
    assert "ROC curve and AUC cannot be computed" not in texts(at.info)
    pairs = labelsets.synthetic_set()
    df = cal.score_frame([sc for _, sc in pairs], [it.binary for it, _ in pairs])
    a, s, y = df["adult_score"].to_numpy(), df["safe_score"].to_numpy(), df["truth"].to_numpy()
    # The ROC and PR charts mark the operating point of the adult verdicts at T_adult (the defaults here).
    assert set(roc_points(at)) == {"current T_adult"}
    assert roc_points(at)["current T_adult"] == pytest.approx(
        {"what": "current T_adult", **adult_point(a, s, y, 0.7, 0.9)})
    at.number_input(key="cal_target_adult").set_value(95.0)
    run(at)
    click(at, "Suggest thresholds")
    expected = cal.suggest_thresholds(a, s, y, 0.95, 0.99)
    t_a, t_s = slider(at, "cal_t_adult"), slider(at, "cal_t_safe")
    assert expected.t_adult is not None and expected.t_safe is not None
    assert abs(t_a - expected.t_adult) < STEP and abs(t_s - expected.t_safe) < STEP
    assert cal.decision_metrics(a, s, y, t_a, t_s).review_n == expected.review_n
    assert "Suggestion (ok)" in texts(at.success)
    # The sliders moved to the suggestion: both points sit where its adult verdicts put them.
    points = roc_points(at)
    for what in ("current T_adult", "suggested T_adult"):
        assert points[what] == pytest.approx({"what": what, **adult_point(a, s, y, t_a, t_s)})
    assert "Save thresholds" not in [b.label for b in at.button]  # never saved from fake scores


def test_corrupt_thresholds_file_is_shown(data_dir):
    (data_dir / THRESHOLDS_FILE).write_text("{ not json")
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    assert "unusable" in texts(at.warning) and THRESHOLDS_FILE in texts(at.warning)
    assert at.slider(key="cal_t_adult").value == pytest.approx(0.7)  # the defaults


def test_uploaded_manifest_with_a_bad_label(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    at.radio(key="cal_source").set_value("manifest")
    run(at)
    at.file_uploader(key="cal_manifest").set_value(
        ("m.csv", b"path,label\ndemo/photos/skimage_coffee.jpg,neutral\nx.jpg,kitten\n", "text/csv"))
    run(at)
    assert "line 3: unknown label 'kitten'" in texts(at.error)


def test_uploaded_manifest_and_folder_sources(data_dir, monkeypatch):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    at.radio(key="cal_source").set_value("manifest")
    run(at)
    at.file_uploader(key="cal_manifest").set_value(
        ("m.json", json.dumps([{"path": "demo/photos/skimage_coffee.jpg", "label": "neutral"},
                               {"path": "demo/missing.jpg", "label": "porn"}]).encode(), "application/json"))
    run(at)
    assert "1 of 2 images could not be scored" in texts(at.warning)
    assert "1 images scored: **0 adult**, **1 safe**" in texts(at.markdown)

    sets = data_dir / "sets"  # server folders are read only under NSFW_LABELSETS_DIR
    monkeypatch.setenv("NSFW_LABELSETS_DIR", str(sets))
    new_context()
    folder = sets / "set"
    for label, src in (("neutral", "photos/skimage_chelsea.jpg"), ("drawings", "drawings/pillow_flower.jpg")):
        (folder / label).mkdir(parents=True)
        (folder / label / Path(src).name).write_bytes((ROOT / "data" / "demo" / src).read_bytes())
    at.radio(key="cal_source").set_value("folder")
    run(at)
    at.text_input(key="cal_folder").set_value(str(folder))
    run(at)
    assert "2 images scored" in texts(at.markdown)
    at.slider(key="cal_t_safe").set_value(0.999)  # sends at least one of them to review
    run(at)
    # The misclassified/borderline table carries blurred thumbnails as data URIs.
    frames = [d.value for d in at.dataframe if "preview" in getattr(d.value, "columns", [])]
    assert frames and all(str(v).startswith("data:image/jpeg;base64,") for v in frames[0]["preview"])


def test_tune_on_reviewed_items_without_rescoring(data_dir, monkeypatch):
    from nsfw_core.state.review import ReviewQueue

    # Decided review items carry the scores the API gave them: two adult, three safe.
    rows = [("adult", 0.9, 0.05), ("porn", 0.8, 0.1), ("safe", 0.1, 0.85), ("neutral", 0.3, 0.6), ("drawings", 0.02, 0.97)]
    with ReviewQueue.from_settings(load_settings()) as queue:
        for i, (label, adult, safe) in enumerate(rows):
            scores = {"porn": adult, "sexy": 0.0, "neutral": safe, "drawings": 0.0, "hentai": 1.0 - adult - safe}
            item_id = queue.enqueue(f"{i:064x}", f"https://img.example/{i}.jpg", scores, "MobileNetV2Mid", "unknown")
            queue.claim("alice")
            queue.decide(item_id, "alice", label)

    def boom(*args, **kwargs):
        raise AssertionError("re-scored")

    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))  # opens on the demo set, which is scored
    monkeypatch.setattr(ScoreCache, "score_items", boom)
    at.radio(key="cal_source").set_value("reviewed")
    run(at)
    assert "5 images scored: **2 adult**, **3 safe**" in texts(at.markdown)
    at.slider(key="cal_t_adult").set_value(0.8)
    at.slider(key="cal_t_safe").set_value(0.6)
    run(at)
    click(at, "Save thresholds")
    doc = saved(data_dir)
    assert doc["thresholds"]["adult"] == pytest.approx(0.8) and doc["thresholds"]["safe"] == pytest.approx(0.6)
    assert doc["tuned_on"]["source"].startswith("reviewed items (5")
    active = in_force()
    assert (active.thresholds.adult, active.thresholds.safe) == pytest.approx((0.8, 0.6))


def test_reviewed_source_with_nothing_reviewed(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    at.radio(key="cal_source").set_value("reviewed")
    run(at)
    assert "No reviewed items yet" in texts(at.info)


def test_history_shows_who_saved_what_and_rolls_back(data_dir):
    from nsfw_core.base.verdict import Thresholds

    other = ThresholdHistory.from_settings(load_settings())  # another instance saving
    try:
        other.save(Thresholds(0.6, 0.8), model="MobileNetV2Mid", by="alice", tuned_on={"source": "demo", "images": 18})
        other.save(Thresholds(0.65, 0.85), model="MobileNetV2Mid", by="bob")
    finally:
        other.close()
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    assert "In force now: T_adult = 0.65, T_safe = 0.85 (version 2, saved " in texts(at.caption)
    assert "by bob)" in texts(at.caption)
    [table] = [d.value for d in at.dataframe if "saved by" in d.value.columns]
    assert table[["version", "T_adult", "T_safe", "saved by", "tuned on"]].to_dict("records") == [
        {"version": 2, "T_adult": 0.65, "T_safe": 0.85, "saved by": "bob", "tuned on": ""},
        {"version": 1, "T_adult": 0.6, "T_safe": 0.8, "saved by": "alice", "tuned on": "demo (18 images)"},
    ]
    assert at.selectbox(key="cal_rollback_version").options == ["1"]
    at.selectbox(key="cal_rollback_version").set_value(1)
    run(at)
    at.button(key="cal_rollback").click()
    run(at)
    assert "Rolled back to version 1: now version 3 (T_adult = 0.6, T_safe = 0.8)." in texts(at.success)
    active = in_force()
    assert (active.version, active.thresholds.adult, active.thresholds.safe) == (3, 0.6, 0.8)
    assert active.saved["saved_by"] == "admin (secret, session a1b2c3)" and active.saved["rolled_back_from"] == 1
    assert "In force now: T_adult = 0.6, T_safe = 0.8 (version 3, saved " in texts(at.caption)


def test_server_paths_outside_the_labelled_set_folders_are_refused(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    at.radio(key="cal_source").set_value("folder")
    run(at)
    refused = f"only labelled sets under {ROOT / 'data'} can be read from the server"
    for path in ("/", "/etc", "../../", str(data_dir), "~/", "/proc/self", "/dev/zero", "demo/../..",
                 "/nonexistent/folder", str(data_dir / "labelsets")):
        at.text_input(key="cal_folder").set_value(path)
        run(at)
        assert texts(at.error) == f"Cannot read the set: {refused}", path
        assert "images scored" not in texts(at.markdown)


def test_uploaded_manifest_names_only_urls_and_files_under_the_root(data_dir):
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    at.radio(key="cal_source").set_value("manifest")
    run(at)
    rows = ["/etc/passwd", "/dev/zero", "/proc/self/environ", "../README.md", "demo/../../pyproject.toml", "~/x"]
    at.file_uploader(key="cal_manifest").set_value(
        ("m.csv", ("path,label\n" + "".join(f"{r},neutral\n" for r in rows)).encode(), "text/csv"))
    run(at)
    [error] = [e.value for e in at.error]
    root = ROOT / "data"
    assert error.startswith("Cannot read the set: 6 bad row(s) in the manifest: "
                            f"line 2: absolute path '/etc/passwd' is outside the labelled-sets folder {root}; "
                            f"line 3: absolute path '/dev/zero' is outside the labelled-sets folder {root}; "
                            f"line 4: absolute path '/proc/self/environ' is outside the labelled-sets folder {root}; "
                            f"line 5: path '../README.md' leaves the labelled-sets folder {root}; "
                            f"line 6: path 'demo/../../pyproject.toml' leaves the labelled-sets folder {root}; "
                            f"line 7: path '~/x' leaves the labelled-sets folder {root}. ")
    assert "root:" not in error and "[project]" not in error  # no file contents
    assert "images scored" not in texts(at.markdown)


# ---------------------------------------------------------------- the Adapter part (issue 26)


def _policy_folder(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.helpers.policy import write_set

    sets = data_dir / "sets"
    monkeypatch.setenv("NSFW_LABELSETS_DIR", str(sets))
    new_context()
    write_set(sets / "stripes", 25, 25)
    return sets / "stripes"


@pytest.mark.slow
def test_adapter_part_trains_shows_both_side_by_side_publishes_and_rolls_back(data_dir, monkeypatch):
    folder = _policy_folder(data_dir, monkeypatch)
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=300)))
    at.radio(key="cal_source").set_value("folder")
    run(at)
    at.text_input(key="cal_folder").set_value(str(folder))
    run(at)
    assert "50 images scored" in texts(at.markdown)
    assert "No adapter in force for MobileNetV2Mid" in texts(at.caption)
    assert "is in force for" not in texts(at.info)
    at.text_input(key="adapter_name").set_value("stripes")
    click(at, "Train adapter")
    shown = texts(at.markdown)
    assert "50 examples (25 adult, 25 safe)" in shown and "Publishable." in shown
    [table] = [d.value for d in at.dataframe if list(getattr(d.value, "columns", [])) == ["base model", "adapter"]]
    assert "ROC AUC" in table.index and "verdict adult: true adult / true safe" in table.index
    click(at, "Publish stripes v1")
    assert "Published stripes v1" in texts(at.success)
    ctx = current()
    in_force = ctx.adapters.current("MobileNetV2Mid")
    assert in_force is not None and in_force.ref == {"name": "stripes", "version": 1}
    assert ctx.adapters.get("stripes", 1).trained_by == "admin (secret, session a1b2c3)"
    run(at)
    assert "In force for MobileNetV2Mid: adapter **stripes v1**" in texts(at.caption)
    # thresholds saved on this page do not judge the adapter's score: the page says so
    assert f"The adapter stripes (version 1) is in force for MobileNetV2Mid: it judges with its own thresholds " \
           f"(definitely adult ≥ {in_force.t_adult:.2f}" in texts(at.info)
    click(at, "Roll back")
    assert "the base model now judges MobileNetV2Mid" in texts(at.success)
    run(at)
    assert "is in force for" not in texts(at.info)
    assert current().adapters.current("MobileNetV2Mid") is None


@pytest.mark.slow
def test_adapter_part_refuses_to_publish_on_too_few_images(data_dir, monkeypatch):
    from tests.helpers.policy import write_set

    sets = data_dir / "sets"
    monkeypatch.setenv("NSFW_LABELSETS_DIR", str(sets))
    new_context()
    write_set(sets / "few", 8, 8)
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=300)))
    at.radio(key="cal_source").set_value("folder")
    run(at)
    at.text_input(key="cal_folder").set_value(str(sets / "few"))
    run(at)
    click(at, "Train adapter")
    assert "Publishing is refused: only 8 adult (block) examples: at least 20 are needed" in texts(at.error)
    assert not [b for b in at.button if b.label.startswith("Publish ")]


def test_adapter_part_says_how_to_enable_training_without_scikit_learn(data_dir, monkeypatch):
    from nsfw_core.calibration import adapters as training

    monkeypatch.setattr(training, "sklearn_available", lambda: False)
    at = run(signed_in(AppTest.from_file(PAGE, default_timeout=180)))
    assert "pip install -r requirements-adapters.txt" in texts(at.info)
    assert not [b for b in at.button if b.label == "Train adapter"]
