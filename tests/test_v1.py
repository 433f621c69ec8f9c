"""API v1 in-process (Starlette's TestClient): /v1/classify, /v1/classify/batch, /v1/reviews/{id}, /docs,
the generated OpenAPI part, rate limits, models on demand.  tests/test_v1_server.py runs a real server."""

from __future__ import annotations

import base64
import re
from typing import Any

import jsonschema
import msgspec
import pytest

from nsfw_core.http import contract
from nsfw_core.http.contract import base64_text_cap
from tests.helpers.apiclient import make_settings, running
from tests.helpers.control_urls import CONTROL_URLS
from tests.helpers.paths import COMPILED_DIR, REFERENCE
from tests.helpers.servers import image as image_route

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

HOUSE = (REFERENCE / "house.jpg").read_bytes()
B64 = base64.b64encode(HOUSE).decode()


def error_of(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert body["field"] == field, body
    return body


def valid(doc: dict[str, Any], name: str, value: Any) -> None:
    """``value`` validates against the document's schema ``name`` (refs resolved in the document)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v1")
    return make_settings(tmp, compiled_dir=COMPILED_DIR, max_bytes=1_500_000, max_batch_items=4,
                         allow_private_hosts=("127.0.0.1",), review_verdicts=("unknown", "safe", "adult"))


@pytest.fixture(scope="module")
def client(settings):
    with running(settings) as c:
        yield c


@pytest.fixture(scope="module")
def doc(client):
    return client.get("/openapi.json").json()


# ---------------------------------------------------------------- /v1/classify


def test_classify_base64_gives_the_rich_answer(client, doc):
    r = client.post("/v1/classify", json={"image": {"base64": B64}, "id": "client-1"},
                    headers={"X-Request-ID": "req-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "req-1" == r.headers["x-request-id"]
    assert body["id"] == "client-1"
    assert body["verdict"] in ("adult", "unknown", "safe") and body["verdict_source"] == "model"
    assert body["model"]["name"] == "MobileNetV2Mid"
    assert body["thresholds"]["overridden"] is False
    assert re.fullmatch("[0-9a-f]{64}", body["sha256"])
    assert re.fullmatch(r"rv_[A-Za-z0-9_-]{22}", body["review_id"])  # every verdict is queued in this module
    assert set(body["timings"]) == {"fetch_ms", "decode_ms", "inference_ms", "total_ms"}
    valid(doc, "ClassifyResult", body)
    msgspec.convert(body, contract.ClassifyResult)  # the typed model too
    predict = client.post("/predict?detail=1", content=HOUSE).json()
    assert predict["scores"] == body["scores"] and predict["sha256"] == body["sha256"]


def test_classify_url_and_raw_bytes(client, local_server, doc):
    url = local_server.route("/house.jpg", image_route(HOUSE, "image/jpeg"))
    by_url = client.post("/v1/classify", json={"image": {"url": url}, "id": 3})
    assert by_url.status_code == 200, by_url.text
    raw = client.post("/v1/classify", content=HOUSE, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert by_url.json()["scores"] == raw.json()["scores"]
    assert by_url.json()["id"] == 3 and raw.json()["id"] is None
    assert by_url.json()["timings"]["fetch_ms"] > 0
    valid(doc, "ClassifyResult", raw.json())


def test_thresholds_override(client):
    body = client.post("/v1/classify", json={"image": {"base64": B64}, "thresholds": {"adult": 0.0}}).json()
    assert body["verdict"] == "adult"  # any adult score passes 0
    assert body["thresholds"]["adult"] == 0.0 and body["thresholds"]["safe"] == 0.9
    assert body["thresholds"]["overridden"] is True and body["thresholds"]["version"] is None


def test_another_model_per_request(client):
    mid = client.post("/v1/classify", json={"image": {"base64": B64}}).json()
    other = client.post("/v1/classify", json={"image": {"base64": B64}, "model": "MobileNetV2"}).json()
    assert other["model"]["name"] == "MobileNetV2"
    assert other["scores"] != mid["scores"]
    raw = client.post("/v1/classify?model=MobileNetV2", content=HOUSE).json()
    assert raw["model"]["name"] == "MobileNetV2" and raw["scores"] == other["scores"]
    error_of(client.post("/v1/classify?model=ResNet", content=HOUSE), 400, "invalid_request", "model")


@pytest.mark.parametrize("body,status,code,field", [
    ({"image": {"base64": "QQ"}}, 400, "invalid_base64", "$.image.base64"),
    ({"image": {"base64": "@@@@"}}, 400, "invalid_base64", "$.image.base64"),
    ({"image": {}}, 400, "invalid_request", "$.image"),
    ({"image": {"url": "http://e.com/", "base64": B64}}, 400, "invalid_request", "$.image"),
    ({"image": {"url": 5}}, 400, "invalid_request", "$.image.url"),
    ({"image": "http://e.com/"}, 400, "invalid_request", "$.image"),
    ({"image": {"base64": B64}, "model": "ResNet"}, 400, "invalid_request", "$.model"),
    ({"image": {"base64": B64}, "thresholds": {"adult": 2}}, 400, "invalid_request", "$.thresholds.adult"),
    ({"image": {"base64": B64}, "thresholds": {"adult": True}}, 400, "invalid_request", "$.thresholds.adult"),
    ({"image": {"base64": B64}, "id": [1]}, 400, "invalid_request", "$.id"),
    ({"image": {"base64": B64}, "color": "red"}, 400, "invalid_request", "$"),
    ({"image": {"url": "ftp://e.com/a.jpg"}}, 400, "invalid_url", None),
    ({"image": {"url": "http://10.0.0.1/a.jpg"}}, 403, "forbidden_address", None),
    ({"image": {"base64": base64.b64encode(b"not an image at all").decode()}}, 415, "not_an_image", None),
])
def test_classify_refuses(client, body, status, code, field):
    error_of(client.post("/v1/classify", json=body), status, code, field)


def test_classify_refuses_urls_with_control_characters(client):
    for url in CONTROL_URLS:
        body = error_of(client.post("/v1/classify", json={"image": {"url": url}}), 400, "invalid_url")
        assert body["message"] == "the URL contains whitespace or control characters", (ascii(url), body)
    r = client.post("/v1/classify/batch", json={"items": [{"id": i, "image": {"url": u}}
                                                         for i, u in enumerate(CONTROL_URLS[:4])]})
    assert r.status_code == 200, r.text
    assert [(x["id"], x["error"]["code"]) for x in r.json()["results"]] == [(i, "invalid_url") for i in range(4)]


def test_classify_refuses_malformed_json_and_an_empty_body(client):
    error_of(client.post("/v1/classify", content=b"{nope", headers={"Content-Type": "application/json"}),
             400, "invalid_json")
    error_of(client.post("/v1/classify", content=b""), 400, "invalid_url")  # as /predict: no image


def test_invalid_utf8_in_a_json_body_is_400_on_every_json_route(client):
    """The smoke pass: {"image": {"url": "\xff\xfe"}} answered 500 internal_error on every route that reads a
    JSON body (msgspec's UnicodeDecodeError was not converted)."""
    json_type = {"Content-Type": "application/json"}
    bodies = {"/v1/classify": b'{"image": {"url": "\xff\xfe"}}',
              "/v1/classify/batch": b'{"items": [{"image": {"url": "\xff"}}]}',
              "/v1/explain": b'{"image": {"url": "\xff\xfe"}}',
              "/v1/jobs": b'{"video": {"url": "\xff\xfe"}}',
              "/predict/batch": b'{"items": ["\xff"]}'}
    for path, raw in bodies.items():
        r = client.post(path, content=raw, headers=json_type)
        assert r.status_code == 400 and r.json()["code"] in ("invalid_json", "bad_request"), (path, r.text)


def test_base64_over_the_cap_is_413(client, settings):
    over = base64.b64encode(b"\xff" * (settings.max_bytes + 1)).decode()
    body = error_of(client.post("/v1/classify", json={"image": {"base64": over}}), 413, "too_large",
                    "$.image.base64")
    assert body["limit"] == settings.max_bytes
    huge = "A" * (base64_text_cap(settings.max_bytes) + 10_000)  # past the body cap: refused while reading
    error_of(client.post("/v1/classify", json={"image": {"base64": huge}}), 413, "too_large")
    error_of(client.post("/v1/classify", content=b"\xff" * (settings.max_bytes + 1)), 413, "too_large")


def test_wrong_method_and_the_openapi_document(client, doc):
    error_of(client.get("/v1/classify"), 405, "method_not_allowed")
    assert {"/v1/classify", "/v1/classify/batch", "/v1/reviews/{id}", "/docs"} <= set(doc["paths"])
    assert {"ClassifyRequest", "BatchRequest", "ClassifyResult", "BatchResponse", "Review",
            "WebhookEvent"} <= set(doc["components"]["schemas"])
    assert doc["components"]["schemas"]["BatchRequest"]["properties"]["items"]["maxItems"] == 4
    for schema in doc["components"]["schemas"].values():  # every schema is valid JSON Schema
        jsonschema.Draft202012Validator.check_schema(schema)


# ---------------------------------------------------------------- /v1/classify/batch


def test_batch_mixes_urls_and_base64_in_order(client, local_server, doc):
    url = local_server.route("/b.jpg", image_route(HOUSE, "image/jpeg"))
    items = [{"id": "a", "image": {"url": url}}, {"id": 2, "image": {"base64": B64}},
             {"image": {"url": local_server.url("/missing.jpg")}}, {"id": "d", "image": {"url": "http://10.1.1.1/"}}]
    r = client.post("/v1/classify/batch", json={"items": items, "thresholds": {"safe": 0.5}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    results = body["results"]
    assert [x["id"] for x in results] == ["a", 2, None, "d"]
    assert results[0]["scores"] == results[1]["scores"]
    assert results[0]["thresholds"]["overridden"] is True and results[0]["thresholds"]["safe"] == 0.5
    assert results[2]["error"]["code"] == "upstream_error"
    assert results[3]["error"]["code"] == "forbidden_address"
    valid(doc, "BatchResponse", body)


@pytest.mark.parametrize("body,status,code,field", [
    ({"items": []}, 400, "invalid_request", "$.items"),
    ({"items": [{"image": {"base64": "QQ="}}]}, 400, "invalid_base64", "$.items[0].image.base64"),
    ({"items": [{"image": {"base64": B64}}, {"image": {}}]}, 400, "invalid_request", "$.items[1].image"),
    ({"items": [{"image": {"base64": B64}, "id": True}]}, 400, "invalid_request", "$.items[0].id"),
    ({"items": "http://e.com/"}, 400, "invalid_request", "$.items"),
    ({"items": [{"image": {"url": "http://e.com/"}}] * 5}, 413, "too_many_items", None),
    ([{"image": {"url": "http://e.com/"}}], 400, "invalid_request", "$"),
])
def test_batch_refuses(client, body, status, code, field):
    error_of(client.post("/v1/classify/batch", json=body), status, code, field)


def test_batch_base64_in_all_is_capped(client, settings):
    # each image under the cap, together over it: the body is refused
    part = base64.b64encode(b"\xff" * (settings.max_bytes * 3 // 4)).decode()
    error_of(client.post("/v1/classify/batch", json={"items": [{"image": {"base64": part}}] * 3}), 413,
             "too_large")


# ---------------------------------------------------------------- /v1/reviews/{id}


def test_review_pending_then_decided(client, doc):
    from nsfw_core.context import current

    body = client.post("/v1/classify", json={"image": {"base64": B64}}).json()
    review_id = body["review_id"]
    r = client.get(f"/v1/reviews/{review_id}")
    assert r.status_code == 200, r.text
    pending = r.json()
    assert pending["id"] == review_id and pending["status"] == "pending" and "label" not in pending
    valid(doc, "Review", pending)
    queue = current().review_queue
    queue.claim("bob")
    assert client.get(f"/v1/reviews/{review_id}").json()["status"] == "claimed"
    found = queue.ticket(review_id)
    assert found is not None
    queue.decide(found[0], "bob", "safe")
    done = client.get(f"/v1/reviews/{review_id}").json()
    # who decided is never shown to a client key (issue 29: reviewer identities are e-mail addresses under OIDC)
    assert (done["status"], done["label"]) == ("decided", "safe") and "decided_by" not in done
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", done["decided_at"])
    valid(doc, "Review", done)


@pytest.mark.parametrize("path", ["/v1/reviews/999999", "/v1/reviews/0", "/v1/reviews/abc", "/v1/reviews/1",
                                  "/v1/reviews/rv_AAAAAAAAAAAAAAAAAAAAAA",  # well formed, given to nobody
                                  "/v1/reviews/99999999999999999999999",
                                  # digits to str.isdigit() but not ASCII: "²" and "①" made int() fail (500),
                                  # Arabic-Indic and fullwidth ones were read as item 1
                                  "/v1/reviews/%C2%B2", "/v1/reviews/%E2%91%A0", "/v1/reviews/%C2%B9%C2%B2",
                                  "/v1/reviews/%D9%A1", "/v1/reviews/%EF%BC%91", "/v1/reviews/%F0%9D%9F%8F"])
def test_unknown_reviews_are_404(client, path):
    error_of(client.get(path), 404, "not_found")


def test_an_unavailable_review_database_is_a_503_without_its_address(client, monkeypatch):
    from nsfw_core.context import current
    from nsfw_core.state.review import ReviewUnavailable

    def down(item_id):
        raise ReviewUnavailable("cannot connect to postgresql://nsfw:***@10.1.2.3:5432/nsfw_review: refused")

    monkeypatch.setattr(current().review_queue, "ticket", down)
    body = error_of(client.get("/v1/reviews/rv_AAAAAAAAAAAAAAAAAAAAAA"), 503, "review_unavailable")
    assert body["message"] == "the review database is unavailable; retry later (details in the server log)"


# ---------------------------------------------------------------- /docs


def test_docs_is_a_page_with_only_local_assets(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "openapi.json" in page and "<script>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing from another host
    assert not re.search(r"https?://", page)
    assert "@import" not in page


# ---------------------------------------------------------------- API keys and rate limits


def test_keys_and_rate_limit(tmp_path):
    settings = make_settings(tmp_path, compiled_dir=COMPILED_DIR, api_keys=("key-a", "key-b"),
                             rate_limit=contract_rate("2/m;burst=2"))
    with running(settings) as c:
        error_of(c.post("/v1/classify", json={"image": {"base64": B64}}), 401, "unauthorized")
        a = {"Authorization": "Bearer key-a"}
        first = c.post("/v1/classify", json={"image": {"base64": B64}}, headers=a)
        assert first.status_code == 200
        assert (first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"]) == ("2", "1")
        assert c.get("/v1/reviews/1", headers=a).status_code == 404  # counts too
        limited = c.post("/v1/classify", json={"image": {"base64": B64}}, headers=a)
        body = error_of(limited, 429, "rate_limited")
        assert limited.headers["retry-after"] == "30" and body["retry_after"] == 30
        assert limited.headers["ratelimit-remaining"] == "0"
        assert int(limited.headers["ratelimit-reset"]) > 0
        other = c.post("/v1/classify", json={"image": {"base64": B64}}, headers={"Authorization": "Bearer key-b"})
        assert other.status_code == 200  # a bucket per key
        # /predict and /predict/batch draw on the same bucket, with the same headers
        error_of(c.post("/predict", content=HOUSE, headers=a), 429, "rate_limited")
        error_of(c.post("/predict/batch", json=[], headers=a), 429, "rate_limited")
        b = {"Authorization": "Bearer key-b"}
        plain = c.post("/predict", content=HOUSE, headers=b)
        assert plain.status_code == 200 and set(plain.json()) == {"drawings", "hentai", "neutral", "porn", "sexy"}
        assert (plain.headers["ratelimit-limit"], plain.headers["ratelimit-remaining"]) == ("2", "0")
        error_of(c.post("/predict", content=HOUSE, headers=b), 429, "rate_limited")


def contract_rate(raw: str):
    from nsfw_core.base.rates import parse_rate

    return parse_rate(raw)


# ---------------------------------------------------------------- ?model= with a JSON body (one contract)


@pytest.mark.parametrize("path,body", [
    ("/v1/classify", {"image": {"base64": B64}}),
    ("/v1/classify/batch", {"items": [{"image": {"base64": B64}}]}),
])
def test_an_invalid_query_model_is_400_whatever_the_body(client, path, body):
    error_of(client.post(f"{path}?model=NotAModel", json=body), 400, "invalid_request", "model")
    error_of(client.post(f"{path}?model=MobileNetV2", json={**body, "model": "InceptionV3"}), 400,
             "invalid_request", "model")


def test_a_query_model_with_a_json_body_is_used(client):
    r = client.post("/v1/classify?model=MobileNetV2", json={"image": {"base64": B64}})
    assert r.status_code == 200, r.text
    assert r.json()["model"]["name"] == "MobileNetV2"
    same = client.post("/v1/classify?model=MobileNetV2", json={"image": {"base64": B64}, "model": "MobileNetV2"})
    assert same.json()["scores"] == r.json()["scores"]
    batch = client.post("/v1/classify/batch?model=MobileNetV2", json={"items": [{"image": {"base64": B64}}]})
    assert batch.json()["results"][0]["model"]["name"] == "MobileNetV2"
