"""POST /v1/explain in-process (Starlette's TestClient): the answer, its forms, and that it refuses and bounds like
/v1/classify (errors, API keys, the rate limit counted at its real cost, admission, the batcher's passes).
tests/test_explain_server.py cancels an explanation whose client went away, on a real server."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import jsonschema
import msgspec
import pytest
from PIL import Image

from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.rates import parse_rate
from nsfw_core.http import contract
from nsfw_core.inference import explain
from tests.helpers.apiclient import make_settings, running
from tests.helpers.paths import COMPILED_DIR, REFERENCE

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

HOUSE = (REFERENCE / "house.jpg").read_bytes()
B64 = base64.b64encode(HOUSE).decode()
PASSES = explain.passes(explain.DEFAULT_GRID)  # 65


def error_of(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert body["field"] == field, body
    return body


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("explain"), compiled_dir=COMPILED_DIR, max_bytes=1_500_000)
    with running(settings) as c:
        yield c


@pytest.fixture(scope="module")
def doc(client):
    return client.get("/openapi.json").json()


def valid(doc: dict[str, Any], name: str, value: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)


def lane_of(ctx: Any) -> Any:
    lane = ctx.models.default_lane()
    assert lane is not None
    return lane


def batcher_items() -> int:
    from nsfw_core.context import current

    items: int = lane_of(current()).batcher.stats.items
    return items


# ---------------------------------------------------------------- the answer


def test_explain_answers_a_heat_map_per_class_through_the_models_batcher(client, doc):
    before = batcher_items()
    r = client.post("/v1/explain", json={"image": {"base64": B64}, "id": "x-1"}, headers={"X-Request-ID": "e-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "e-1" and body["id"] == "x-1"
    assert body["grid"] == {"rows": 8, "cols": 8} and body["passes"] == PASSES
    assert body["method"]["name"] == "occlusion" and body["model"]["name"] == "MobileNetV2Mid"
    assert set(body["heatmaps"]) == set(CLASS_NAMES)
    for rows in body["heatmaps"].values():
        assert len(rows) == 8 and all(len(row) == 8 for row in rows)
    assert body["class"] in CLASS_NAMES
    # the passes ran through the model's micro-batcher (its lanes), every one of them
    assert batcher_items() - before == PASSES
    # the scores are the classification's (the same forward pass over the same input)
    classified = client.post("/v1/classify", json={"image": {"base64": B64}}).json()
    assert body["scores"] == pytest.approx(classified["scores"], abs=1e-6)
    valid(doc, "ExplainResult", body)
    msgspec.convert(body, contract.ExplainResult)


def test_the_raw_body_and_multipart_forms_and_the_png_overlay(client):
    raw = client.post("/v1/explain", content=HOUSE, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    multipart = client.post("/v1/explain", files={"file": ("house.jpg", HOUSE, "image/jpeg")})
    assert multipart.json()["heatmaps"] == raw.json()["heatmaps"]
    png = client.post("/v1/explain?format=png&class=porn", content=HOUSE)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-explain-class"] == "porn" and png.headers["x-explain-passes"] == str(PASSES)
    img = Image.open(io.BytesIO(png.content))
    w, h = Image.open(io.BytesIO(HOUSE)).size
    assert max(img.size) == 448 and abs(img.size[0] / img.size[1] - w / h) < 0.02  # the picture's proportions
    default = client.post("/v1/explain?format=png", content=HOUSE)
    assert default.headers["x-explain-class"] == raw.json()["class"]


@pytest.mark.parametrize("query,body,field", [
    ("?format=gif", None, "format"),
    ("?class=nude", None, "class"),
    ("?model=NotAModel", None, "model"),
    ("?model=MobileNetV2", {"image": {"base64": B64}, "model": "InceptionV3"}, "model"),
    ("", {"image": {"base64": B64}, "class": "nude"}, "$.class"),
    ("", {"image": {"base64": B64}, "grid": 64}, None),
    ("", {"image": {}}, "$.image"),
])
def test_bad_requests_are_400_naming_the_field(client, query, body, field):
    response = client.post(f"/v1/explain{query}", json=body or {"image": {"base64": B64}})
    error_of(response, 400, "invalid_request", field)


def test_bad_images_are_refused_as_v1_classify_refuses_them(client):
    before = batcher_items()
    error_of(client.post("/v1/explain", content=b"not an image at all"), 415, "not_an_image")
    error_of(client.post("/v1/explain", content=HOUSE[:2000]), 422, "undecodable_image")
    error_of(client.post("/v1/explain", content=b""), 400, "invalid_url")
    error_of(client.post("/v1/explain", json={"image": {"base64": "!!!!"}}), 400, "invalid_base64")
    error_of(client.post("/v1/explain", content=b"\xff" * 1_600_000), 413, "too_large")
    error_of(client.post("/v1/explain", json={"image": {"url": "http://127.0.0.1:1/x.jpg"}}), 403,
             "forbidden_address")
    error_of(client.get("/v1/explain"), 405, "method_not_allowed")
    assert batcher_items() == before  # nothing was run for them


# ---------------------------------------------------------------- refused and bounded like /v1/classify


def test_api_keys_and_the_rate_limit_count_an_explanation_at_its_real_cost(tmp_path):
    settings = make_settings(tmp_path, compiled_dir=COMPILED_DIR, api_keys=("key-a-0123456789", "key-b-0123456789"),
                             rate_limit=parse_rate("10/m;burst=10"))
    with running(settings) as c:
        error_of(c.post("/v1/explain", content=HOUSE), 401, "unauthorized")
        a = {"Authorization": "Bearer key-a-0123456789"}
        first = c.post("/v1/explain", content=HOUSE, headers=a)
        assert first.status_code == 200, first.text
        # 65 passes from a bucket of 10: allowed from a full bucket, which it leaves 55 in debt
        assert first.headers["ratelimit-remaining"] == "0"
        limited = error_of(c.post("/v1/classify", content=HOUSE, headers=a), 429, "rate_limited")
        assert limited["retry_after"] >= (PASSES - 10) * 6  # 10 a minute: the debt takes minutes to refill
        error_of(c.post("/v1/explain", content=HOUSE, headers=a), 429, "rate_limited")
        b = {"Authorization": "Bearer key-b-0123456789"}
        classified = c.post("/v1/classify", content=HOUSE, headers=b)
        assert classified.status_code == 200 and classified.headers["ratelimit-remaining"] == "9"
        # an explanation needs a full bucket (the whole burst): key b spent one unit, so it waits
        error_of(c.post("/v1/explain", content=HOUSE, headers=b), 429, "rate_limited")


def _gif() -> bytes:
    frames = [Image.new("RGB", (96, 96), colour) for colour in ((250, 250, 250), (20, 20, 20), (200, 30, 30))]
    for i, frame in enumerate(frames):  # something to see in each frame
        frame.paste((0, 0, 255) if i % 2 else (255, 255, 0), (20 + 10 * i, 20, 60 + 10 * i, 70))
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    return buf.getvalue()


def test_an_explanation_is_charged_its_model_runs_times_the_models_cost(tmp_path):
    """Issue 29's cost units: the passes times the model's relative cost, and an animation's frames scored to find
    its deciding frame on top; each key's bucket (burst 100) tells what its one request cost."""
    keys = tuple(f"key-{n}-0123456789abcdef" for n in "abcd")
    settings = make_settings(tmp_path, compiled_dir=COMPILED_DIR, api_keys=keys,
                             rate_limit=parse_rate("100/h;burst=100"))

    def remaining(response: Any) -> int:
        assert response.status_code == 200, response.text
        return int(response.headers["ratelimit-remaining"])

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    from nsfw_core.context import current

    with running(settings) as c:
        # a still on the default model: 65 passes of cost 1
        assert remaining(c.post("/v1/explain", content=HOUSE, headers=auth(keys[0]))) == 100 - PASSES
        # on MobileNetV2, named in the JSON body: 65 passes at its relative cost (0.53; the image's own pass is
        # within the request's first unit), not 65 units
        cost = current().models.cost("MobileNetV2")
        assert 0.4 < cost < 0.7
        body = {"image": {"base64": B64}, "model": "MobileNetV2"}
        charged = 1 + (PASSES - 1) * cost
        assert remaining(c.post("/v1/explain", json=body, headers=auth(keys[1]))) == int(100 - charged)
        # an animation: its frames (as /v1/classify charges them) and then every pass on its deciding frame
        gif = _gif()
        frames = 100 - remaining(c.post("/v1/classify", content=gif, headers=auth(keys[2])))
        assert frames >= 2
        assert remaining(c.post("/v1/explain", content=gif, headers=auth(keys[3]))) == 100 - frames - PASSES


def test_an_explanation_counts_its_passes_as_images_in_flight(tmp_path):
    from nsfw_core.context import current

    with running(make_settings(tmp_path, compiled_dir=COMPILED_DIR, max_in_flight=100)) as c:
        admission = current().admission
        with admission.admit(40):  # 40 images of other requests in flight: 40 + 65 > 100
            body = error_of(c.post("/v1/explain", content=HOUSE), 503, "overloaded")
            assert "in flight" in body["message"]
            assert c.post("/v1/classify", content=HOUSE).status_code == 200  # one more image fits
        assert admission.in_flight == 0
        assert c.post("/v1/explain", content=HOUSE).status_code == 200
        assert c.get("/health").json()["in_flight"] == {"images": 0, "limit": 100, "rejected": 1}


def test_an_explanation_larger_than_the_limit_runs_alone(tmp_path):
    with running(make_settings(tmp_path, compiled_dir=COMPILED_DIR, max_in_flight=16)) as c:
        assert c.post("/v1/explain", content=HOUSE).status_code == 200


def test_a_full_inference_queue_refuses_the_explanation_and_drops_the_passes_it_queued(tmp_path):
    from nsfw_core.context import current

    with running(make_settings(tmp_path, compiled_dir=COMPILED_DIR, queue_size=4)) as c:
        before = batcher_items()
        r = c.post("/v1/explain", content=HOUSE)
        # the passes are submitted a chunk at a time (8); a queue of 4 refuses the first chunk's fifth
        error_of(r, 503, "overloaded")
        lane = lane_of(current())
        assert lane.batcher.stats.rejected >= 1
        assert batcher_items() - before < PASSES
        deadline = time.monotonic() + 10
        while lane.batcher.waiting and time.monotonic() < deadline:  # its cancelled passes are dropped
            time.sleep(0.01)
        assert lane.batcher.waiting == 0
        assert c.post("/v1/classify", content=HOUSE).status_code == 200  # the queue is free again


def test_an_animation_is_explained_on_its_deciding_frame(client):
    gif = _gif()
    classified = client.post("/v1/classify", content=gif).json()
    explained = client.post("/v1/explain", content=gif)
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["frame"] == classified["deciding_frame"]
    assert body["scores"] == pytest.approx(classified["scores"], abs=1e-6)
    assert body["passes"] == PASSES
