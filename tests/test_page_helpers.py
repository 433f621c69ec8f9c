"""The pages' helpers in ``nsfw_ui``, checked exactly: state, widgets, inputs, charts.

The pages themselves are driven through AppTest in test_page_classify.py,
test_page_calibrate.py and test_page_review.py; here each helper is called
directly with small made-up data.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nsfw_core.base.settings import load_settings
from nsfw_core.base.verdict import Thresholds
from nsfw_core.calibration import maths as cal
from nsfw_core.context import Context, current, install
from nsfw_ui import charts, inputs, state, widgets

SCORES = {"drawings": 0.1, "hentai": 0.0, "neutral": 0.8, "porn": 0.05, "sexy": 0.05}


# ---------------------------------------------------------------- state


@pytest.fixture
def own_context(tmp_path):
    """A context of our own installed as the process's; the previous one put back afterwards."""
    ctx = Context(load_settings({"NSFW_DATA_DIR": str(tmp_path)}))
    previous = install(ctx)
    yield ctx
    install(previous)
    ctx.close()


def test_context_is_the_process_context(own_context):
    assert state.context() is own_context is current()
    assert state.context() is state.context()


def test_context_follows_a_replaced_context(own_context, tmp_path):
    other = Context(load_settings({"NSFW_DATA_DIR": str(tmp_path / "other")}))
    try:
        install(other)
        assert state.context() is other  # not a stale copy of the one installed before
    finally:
        install(own_context)
        other.close()


def test_model_comes_from_the_context(own_context, monkeypatch):
    calls: list[str | None] = []
    sentinel = object()

    def get(name=None):
        calls.append(name)
        return sentinel

    monkeypatch.setattr(own_context.models, "get", get)
    assert state.model("MobileNetV2") is sentinel
    assert state.model() is sentinel
    assert calls == ["MobileNetV2", None]


# ---------------------------------------------------------------- widgets


def test_verdict_labels():
    assert widgets.VERDICT_LABELS == {"adult": "definitely adult", "unknown": "needs review",
                                      "safe": "definitely safe"}


def test_md_escape():
    assert widgets.md_escape("https://a.example/x_y*z.jpg") == "https\\://a\\.example/x\\_y\\*z\\.jpg"
    assert widgets.md_escape("[a](b) #1 <c> `d` ~e~ $f$ & g!|") == \
        "\\[a\\]\\(b\\) \\#1 \\<c\\> \\`d\\` \\~e\\~ \\$f\\$ \\& g\\!\\|"
    assert widgets.md_escape("back\\slash {x} +-") == "back\\\\slash \\{x\\} \\+\\-"
    assert widgets.md_escape(42) == "42"
    assert widgets.md_escape("plain text") == "plain text"


def test_format_scores():
    assert widgets.format_scores(SCORES) == "drawings 0.1000 · hentai 0.0000 · neutral 0.8000 · porn 0.0500 · sexy 0.0500"
    assert widgets.format_scores({"porn": 0.123456}, digits=2) == "porn 0.12"


def test_pct():
    assert widgets.pct(0.1234) == "12.3 %"
    assert widgets.pct(1.0) == "100.0 %"
    assert widgets.pct(0.755, 0) == "76 %"
    assert widgets.pct(None) == "—"
    assert widgets.pct(float("nan")) == "—"
    assert widgets.pct(np.float64("nan")) == "—"
    assert widgets.pct(np.float64(0.5)) == "50.0 %"


def test_blurred_from_pixels_and_from_an_image():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    out = widgets.blurred(noise)
    assert out.mode == "RGB" and out.size == (384, 288)  # thumbnailed within 384 x 384, aspect kept
    assert np.asarray(out, dtype=np.float32).std() < 0.2 * noise.std()  # blurred: the noise is gone
    small = widgets.blurred(Image.fromarray(noise[:100, :50]).convert("L"))
    assert small.mode == "RGB" and small.size == (50, 100)  # never enlarged


def test_data_uri():
    uri = widgets.data_uri(Image.new("RGBA", (400, 200), (255, 0, 0, 255)), size=96)
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (96, 48)
    pixel = img.getpixel((48, 24))
    assert isinstance(pixel, tuple)
    r, g, b = pixel
    assert r > 240 and g < 15 and b < 15


def test_api_base_url_refuses_odd_hosts():
    assert widgets.api_base_url("ftp://h.example/x", "h2.example") == "http://h2.example"
    assert widgets.api_base_url("", "bad host") == "http://localhost:8080"
    assert widgets.api_base_url(None, "a/b", 9) == "http://localhost:9"
    assert widgets.api_base_url("https://n.example", None) == "https://n.example"


def test_curl_commands_with_an_api_key():
    text = widgets.curl_commands("http://h", ["https://a.example/1.jpg"], [("x.bin", None)], api_key=True)
    assert text.splitlines() == [
        "curl -XPOST -H \"Authorization: Bearer $NSFW_API_KEY\" 'http://h/predict?url=https%3A%2F%2Fa.example%2F1.jpg'",
        "curl -XPOST -H \"Authorization: Bearer $NSFW_API_KEY\" --data-binary @x.bin "
        "-H 'Content-Type: application/octet-stream' 'http://h/predict'",
    ]
    assert widgets.curl_commands("http://h") == ""


# ---------------------------------------------------------------- inputs


class FakeUpload:
    def __init__(self, name: str, data: bytes, type: str) -> None:
        self.name, self._data, self.type = name, data, type

    def getvalue(self) -> bytes:
        return self._data


def test_url_lines():
    text = "  https://a.example/1.jpg \n\n# a comment\n  #another\nhttps://b.example/2.jpg"
    assert inputs.url_lines(text) == ["https://a.example/1.jpg", "https://b.example/2.jpg"]
    assert inputs.url_lines("") == [] and inputs.url_lines(None) == []


def test_collect_inputs_in_order():
    items = inputs.collect_inputs("https://a.example/1.jpg\n# no\n",
                                  [FakeUpload("x.png", b"png", "image/png"), FakeUpload("y.jpg", b"jpg", "image/jpeg")],
                                  FakeUpload("", b"snap", ""))
    assert items == [
        inputs.Input("url", "https://a.example/1.jpg", "https://a.example/1.jpg"),
        inputs.Input("upload", "x.png", b"png", "image/png"),
        inputs.Input("upload", "y.jpg", b"jpg", "image/jpeg"),
        inputs.Input("camera", "camera.jpg", b"snap", "image/jpeg"),  # a snapshot without name or type
    ]
    assert [item.file for item in items] == [None, ("x.png", "image/png"), ("y.jpg", "image/jpeg"),
                                             ("camera.jpg", "image/jpeg")]
    assert inputs.collect_inputs("", None, None) == []
    named = inputs.collect_inputs(None, [], FakeUpload("snap.png", b"s", "image/png"))
    assert named == [inputs.Input("camera", "snap.png", b"s", "image/png")]


# ---------------------------------------------------------------- charts


def layer_data(spec: dict[str, Any], layer: int) -> list[dict[str, Any]]:
    """The rows a layer of a chart's spec draws (its own data, else the chart's)."""
    data = spec["layer"][layer].get("data") or spec["data"]
    rows: list[dict[str, Any]] = spec["datasets"][data["name"]]
    return rows


def test_scores_chart_colours_what_each_class_counts_toward():
    spec = charts.scores_chart(SCORES, Thresholds(adult_classes=("porn", "sexy", "hentai"))).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["bar", "text"]
    assert spec["height"] == 150
    assert layer_data(spec, 0) == [
        {"class": "drawings", "score": 0.1, "counts toward": "safe"},
        {"class": "hentai", "score": 0.0, "counts toward": "adult"},
        {"class": "neutral", "score": 0.8, "counts toward": "safe"},
        {"class": "porn", "score": 0.05, "counts toward": "adult"},
        {"class": "sexy", "score": 0.05, "counts toward": "adult"},
    ]
    assert spec["layer"][0]["encoding"]["color"]["scale"] == {"domain": ["adult", "safe", "neither"],
                                                              "range": ["#e4572e", "#29a36a", "#9aa0a6"]}
    assert spec["layer"][0]["encoding"]["y"]["sort"] == list(SCORES)
    assert spec["layer"][1]["encoding"]["text"] == {"field": "score", "format": ".4f", "type": "quantitative"}
    plain = charts.scores_chart(SCORES).to_dict()
    assert {row["counts toward"] for row in layer_data(plain, 0)} == {"neither"}


def test_threshold_rules():
    assert charts.threshold_rules(0.7, None).to_dict("records") == [{"x": 0.7, "line": "current"}]
    assert charts.threshold_rules(0.7, 0.65).to_dict("records") == [{"x": 0.7, "line": "current"},
                                                                     {"x": 0.65, "line": "suggested"}]


def _frame() -> pd.DataFrame:
    scores = [{"drawings": 0.0, "hentai": 0.0, "neutral": 1.0 - a, "porn": a, "sexy": 0.0}
              for a in (0.95, 0.8, 0.6, 0.3, 0.1, 0.05)]
    df = cal.score_frame(scores, ["adult", "adult", "safe", "adult", "safe", "safe"])
    df["truth_label"] = ["adult", "adult", "safe", "adult", "safe", "safe"]
    return df


def test_distribution_chart():
    df = _frame()
    spec = charts.distribution_chart(df, "adult_score", "adult score (porn + sexy)", 0.7, 0.55).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["bar", "rule"]
    bars = spec["layer"][0]["encoding"]
    assert bars["x"]["field"] == "adult_score" and bars["x"]["title"] == "adult score (porn + sexy)"
    assert bars["x"]["bin"] == {"extent": [0, 1], "step": 0.05}
    assert bars["color"]["field"] == "truth_label"
    assert len(layer_data(spec, 0)) == len(df)
    assert layer_data(spec, 1) == [{"x": 0.7, "line": "current"}, {"x": 0.55, "line": "suggested"}]
    assert spec["height"] == 230


def test_verdict_chart_labels_each_cell():
    table = cal.verdict_table(_frame(), (0.7, 0.9))
    spec = charts.verdict_chart(table).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rect", "text"]
    cells = {(r["verdict"], r["truth"]): r["text"] for r in layer_data(spec, 0)}
    # adult scores 0.95, 0.8 (adult), 0.3 (adult), 0.6, 0.1, 0.05 (safe); safe score = 1 - adult score.
    assert cells == {("adult", "adult"): "2 (67 %)", ("adult", "safe"): "0 (0 %)",
                     ("unknown", "adult"): "1 (33 %)", ("unknown", "safe"): "1 (33 %)",
                     ("safe", "adult"): "0 (0 %)", ("safe", "safe"): "2 (67 %)"}


def test_tradeoff_chart_marks_the_operating_points():
    df = _frame()
    a, s, y = df["adult_score"].to_numpy(), df["safe_score"].to_numpy(), df["truth"].to_numpy()
    m = cal.decision_metrics(a, s, y, 0.7, 0.9)
    sw = cal.sweep(a, s, y, 0.7, 0.9)
    spec = charts.tradeoff_chart(sw, m, None).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["line", "point"]
    curves = charts.TRADEOFF_CURVES
    assert {r["curve"] for r in layer_data(spec, 0)} == set(curves.values())
    assert layer_data(spec, 1) == [
        {"curve": curves["T_adult"], "what": "current", "review_share": m.review_share, "precision": 1.0},
        {"curve": curves["T_safe"], "what": "current", "review_share": m.review_share, "precision": 1.0},
    ]
    sug = cal.suggest_thresholds(a, s, y, 0.99, 0.99)
    assert sug.t_adult is not None
    with_sug = charts.tradeoff_chart(sw, m, sug).to_dict()
    assert [r["what"] for r in layer_data(with_sug, 1)] == ["current", "current", "suggested", "suggested"]
    assert layer_data(with_sug, 1)[2]["review_share"] == sug.review_share


def test_roc_and_pr_charts():
    df = _frame()
    a, y = df["adult_score"].to_numpy(), df["truth"].to_numpy()
    roc, pr = cal.roc_curve(a, y), cal.pr_curve(a, y)
    point = {"tpr": 2 / 3, "recall": 2 / 3, "fpr": 0.0, "precision": 1.0}
    roc_spec = charts.roc_chart(roc, point, None).to_dict()
    assert roc_spec["title"] == f"ROC of the adult score — AUC {roc.auc:.3f}"
    assert [layer["mark"]["type"] for layer in roc_spec["layer"]] == ["line", "line", "point"]
    assert layer_data(roc_spec, 2) == [{**point, "what": "current T_adult"}]
    pr_spec = charts.pr_chart(pr, point, dict(point, precision=0.5)).to_dict()
    assert pr_spec["title"] == f"Precision-recall of the adult score — average precision {pr.average_precision:.3f}"
    assert [r["what"] for r in layer_data(pr_spec, 1)] == ["current T_adult", "suggested T_adult"]


def test_point_layer_leaves_out_undefined_points():
    undefined = {"tpr": math.nan, "recall": math.nan, "fpr": 0.5, "precision": math.nan}
    spec = charts.point_layer(undefined, {"tpr": 1.0, "recall": 1.0, "fpr": 0.5, "precision": 0.5},
                              "fpr", "tpr").to_dict()
    rows = spec["datasets"][spec["data"]["name"]]
    assert [r["what"] for r in rows] == ["suggested T_adult"]
    assert spec["encoding"]["shape"]["scale"] == {"domain": ["current T_adult", "suggested T_adult"],
                                                  "range": ["circle", "diamond"]}
