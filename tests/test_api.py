"""The HTTP API with the real model, through Starlette's TestClient (the lifespan runs)."""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # "install httpx2": the httpx-based client still works
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from nsfw_core.base.settings import CLASS_NAMES, load_settings
from nsfw_core.base.verdict import VERDICTS
from nsfw_core.context import current
from nsfw_core.http import app as api
from nsfw_core.http import openapi
from nsfw_core.http.routing import ApiLookalike, ApiRoute
from nsfw_core.inference.pipeline import Decoder
from tests.helpers.apiclient import make_settings, running
from tests.helpers.control_urls import CONTROL_URLS
from tests.helpers.paths import COMPILED_DIR, REFERENCE, REFERENCE_IMAGES
from tests.helpers.servers import LocalServer, hang, html, image, serve, status

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

HOUSE = (REFERENCE / "house.jpg").read_bytes()
SMILE = (REFERENCE / "smile.jpg").read_bytes()


def error_of(response: Any, status_code: int, code: str) -> dict[str, Any]:
    """Assert the status, the JSON error shape and the code; return the body."""
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert isinstance(body["message"], str) and body["message"]
    assert body["code"] == code, body
    return body


@pytest.fixture(scope="module")
def images() -> Iterator[LocalServer]:
    """An image server on 127.0.0.1 with the reference images and some broken responses."""
    with serve() as server:
        for path in REFERENCE_IMAGES:
            server.route(f"/{path.name}", image(path.read_bytes(), "image/jpeg"))
        server.route("/page.html", html())
        server.route("/truncated.jpg", image(HOUSE[: len(HOUSE) // 2], "image/jpeg"))
        server.route("/missing.jpg", status(404))
        server.route("/hang.jpg", hang())
        yield server


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, images: LocalServer) -> Any:
    """Loopback allowed for the image server only."""
    return make_settings(tmp_path_factory.mktemp("data"), allow_private_hosts=(images.netloc,), fetch_timeout=1.0)


@pytest.fixture(scope="module")
def client(default_model: Any, settings: Any) -> Iterator[TestClient]:
    with running(settings) as c:
        yield c


# ------------------------------------------------------------------ predict: the original contract


@pytest.mark.parametrize("path", REFERENCE_IMAGES, ids=lambda p: p.name)
def test_predict_url_gives_exactly_the_five_scores_of_the_model(client, images, default_model, settings, path):
    response = client.post("/predict", params={"url": images.url(f"/{path.name}")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == list(CLASS_NAMES)
    assert all(isinstance(v, float) for v in body.values())
    assert sum(body.values()) == pytest.approx(1.0, abs=1e-4)
    expected = default_model.classify([Decoder(settings.decode_limits).decode_for(default_model, path.read_bytes())])[0]
    assert body == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("path", REFERENCE_IMAGES, ids=lambda p: p.name)
def test_predict_answers_are_byte_for_byte_the_originals(client, default_model, settings, path):
    """The original service's clients parse this exact body: the five keys in this order, compact JSON,
    Python's shortest float repr, nothing else (no request id, no verdict) whatever v1 and the detail add."""
    response = client.post("/predict", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
    prepared = Decoder(settings.decode_limits).prepare(default_model, path.read_bytes())
    assert isinstance(prepared, np.ndarray)  # a still image
    probs = default_model.predict(prepared[None])[0]
    expected = "{" + ",".join(f'"{c}":{float(p)!r}' for c, p in zip(CLASS_NAMES, probs, strict=True)) + "}"
    assert response.content == expected.encode()
    assert response.headers["content-type"] == "application/json"


def test_upload_raw_and_multipart_give_the_url_answer(client, images):
    by_url = client.post("/predict", params={"url": images.url("/house.jpg")}).json()
    for content_type in ("image/jpeg", "application/octet-stream"):
        raw = client.post("/predict", content=HOUSE, headers={"content-type": content_type})
        assert raw.status_code == 200 and raw.json() == pytest.approx(by_url, abs=1e-6)
    for field in ("file", "image"):
        form = client.post("/predict", files={field: ("house.jpg", HOUSE, "image/jpeg")})
        assert form.status_code == 200 and form.json() == pytest.approx(by_url, abs=1e-6)


def test_detail_gives_verdict_thresholds_model_timings_and_hash(client, images, default_model):
    response = client.post("/predict", params={"url": images.url("/house.jpg"), "detail": "1"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"scores", "verdict", "adult_score", "safe_score", "thresholds", "model", "timings", "sha256",
                         "verdict_source"}
    assert body["verdict_source"] == "model"
    scores = body["scores"]
    assert list(scores) == list(CLASS_NAMES)
    assert body["verdict"] in VERDICTS
    assert body["adult_score"] == pytest.approx(scores["porn"] + scores["sexy"])
    assert body["safe_score"] == pytest.approx(scores["neutral"] + scores["drawings"])
    assert body["thresholds"] == {"adult": 0.7, "safe": 0.9, "adult_classes": ["porn", "sexy"],
                                  "safe_classes": ["neutral", "drawings"], "version": None}
    assert body["model"] == {"name": default_model.name, "version": default_model.version}
    assert set(body["timings"]) == {"fetch_ms", "decode_ms", "inference_ms", "total_ms"}
    assert body["timings"]["fetch_ms"] > 0 and body["timings"]["total_ms"] >= body["timings"]["inference_ms"]
    assert body["sha256"] == hashlib.sha256(HOUSE).hexdigest()
    upload = client.post("/predict?detail=true", content=HOUSE, headers={"content-type": "image/jpeg"}).json()
    assert upload["timings"]["fetch_ms"] == 0.0 and upload["sha256"] == body["sha256"]


# ------------------------------------------------------------------ batch


def test_batch_keeps_order_and_ids_and_reports_bad_items_alone(client, images):
    items = [
        {"id": "a", "url": images.url("/house.jpg")},
        {"id": "b", "url": images.url("/missing.jpg")},
        {"id": 3, "url": images.url("/smile.jpg")},
        {"id": 4.5, "url": "not a url"},
        {"id": "e", "url": "ftp://example.com/x.jpg"},
    ]
    response = client.post("/predict/batch", json={"items": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["a", "b", 3, 4.5, "e"]
    assert [r.get("url") for r in results] == [i.get("url") for i in items]
    assert set(results[0]) == {"id", "url", "scores", "verdict"}
    assert list(results[0]["scores"]) == list(CLASS_NAMES) and results[0]["verdict"] in VERDICTS
    assert results[1]["error"] == {"code": "upstream_error", "message": results[1]["error"]["message"],
                                   "upstream_status": 404}
    assert set(results[2]) == {"id", "url", "scores", "verdict"}
    assert results[3] == {"id": 4.5, "url": "not a url", "error": {
        "code": "invalid_url", "message": "the URL contains whitespace or control characters"}}
    assert results[4]["error"]["code"] == "invalid_url"
    single = client.post("/predict", params={"url": images.url("/house.jpg")}).json()
    assert results[0]["scores"] == pytest.approx(single, abs=1e-5)


def test_batch_accepts_a_plain_list_and_detail(client, images):
    urls = [images.url("/smile.jpg"), images.url("/glasses.jpg")]
    plain = client.post("/predict/batch", json=urls).json()["results"]
    assert [(r["id"], r["url"]) for r in plain] == [(None, u) for u in urls]
    detailed = client.post("/predict/batch", json={"items": urls, "detail": True}).json()["results"]
    assert set(detailed[0]) == {"id", "url", "scores", "verdict", "adult_score", "safe_score", "thresholds",
                                "model", "timings", "sha256", "verdict_source"}
    assert client.post("/predict/batch", json=[]).json() == {"results": []}


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b'{"urls": []}', b'"x"', b'{"items": 5}',
                                  b'{"items": [], "detail": "yes"}'])
def test_batch_malformed_body_is_400(client, body):
    error_of(client.post("/predict/batch", content=body, headers={"content-type": "application/json"}),
             400, "bad_request")


MAX_ID = 2**53 - 1
BAD_ITEMS = [  # (item, what the message says about it)
    ({"id": [[["deep"]]], "url": "http://example.com/a.jpg"}, "items[1].id must be a string of at most 256 "
                                                             "characters or a number between -9007199254740991 "
                                                             "and 9007199254740991, got a list"),
    ({"id": {"a": 1}, "url": "http://example.com/a.jpg"}, "got an object"),
    ({"id": True, "url": "http://example.com/a.jpg"}, "got a boolean"),
    ({"id": "x" * 257, "url": "http://example.com/a.jpg"}, "got a string of 257 characters"),
    ({"id": MAX_ID + 1, "url": "http://example.com/a.jpg"}, "got a number out of range"),
    ({"id": -1e300, "url": "http://example.com/a.jpg"}, "got a number out of range"),
    ({"id": "a"}, 'items[1] needs a "url"'),
    ({"id": "a", "url": None}, "items[1].url must be a non-empty URL string (or an object with one), got null"),
    ({"id": "a", "url": {}}, "got an object"),
    ({"id": "a", "url": ["http://example.com/a.jpg"]}, "got a list"),
    ({"id": "a", "url": 7}, "got a number"),
    ({"id": "a", "url": ""}, "got an empty string"),
    ("", "items[1] must be a non-empty URL string (or an object with one), got an empty string"),
    (5, "got a number"),
    (None, "got null"),
    ([["http://example.com/a.jpg"]], "got a list"),
]


@pytest.mark.parametrize("item,message", BAD_ITEMS, ids=[str(i) for i in range(len(BAD_ITEMS))])
def test_batch_item_of_the_wrong_shape_is_400_for_the_request(client, images, item, message):
    """Checked before any work: an id or url the answer could not carry never reaches the encoder."""
    items = [{"id": "ok", "url": images.url("/house.jpg")}, item]
    body = error_of(client.post("/predict/batch", json={"items": items}), 400, "bad_request")
    assert message in body["message"], body
    assert body["item"] == 1


def test_batch_with_a_bad_item_fetches_nothing(default_model, tmp_path):
    with serve() as server, running(make_settings(tmp_path, allow_private_hosts=(server.netloc,))) as c:
        url = server.route("/house.jpg", image(HOUSE, "image/jpeg"))
        error_of(c.post("/predict/batch", json=[url, {"id": [1], "url": url}]), 400, "bad_request")
        assert server.connections == 0


def test_batch_ids_within_the_limits_are_echoed_exactly(client):
    ids = [None, "", "x" * 256, MAX_ID, -MAX_ID, 0, 1.5, -0.25, 1e-300, "\u00e9\U0001f600"]
    items = [{"id": i, "url": "ftp://example.com/x.jpg"} for i in ids]
    response = client.post("/predict/batch", json={"items": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ids
    assert {r["error"]["code"] for r in results} == {"invalid_url"}


@pytest.mark.parametrize("body", [
    b"[" * 100_000,  # unclosed: the parser recurses before it could notice
    b'{"items": ' + b"[" * 60_000 + b"]" * 60_000 + b"}",
    b'{"items": [{"url": "http://example.com/a.jpg", "id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}",
    b'[{"id": NaN, "url": "http://example.com/a.jpg"}]',
    b'[{"id": Infinity, "url": "http://example.com/a.jpg"}]',
    b'[{"id": 1e400, "url": "http://example.com/a.jpg"}]',
    b'[{"id": "\\ud800", "url": "http://example.com/a.jpg"}]',
    b'["http://example.com/\\udfff.jpg"]',
], ids=["deep-list", "deep-items", "deep-id", "nan-id", "infinity-id", "huge-id", "surrogate-id", "surrogate-url"])
def test_batch_deep_or_unencodable_json_is_400(client, body):
    deep = body.count(b"[") > 1000
    error = error_of(client.post("/predict/batch", content=body, headers={"content-type": "application/json"}),
                     400, "bad_request")
    assert len(error["message"]) < 500
    assert (error["message"] == "the body is JSON nested too deep") is deep


def test_empty_or_unknown_detail_flag_is_400(client, images):
    for query in ("detail=", "detail=maybe"):
        error_of(client.post(f"/predict?{query}", content=HOUSE), 400, "bad_request")
        error_of(client.post(f"/predict/batch?{query}", json=[]), 400, "bad_request")
    assert client.post("/predict/batch?detail=on", json=[]).json() == {"results": []}


def test_batch_over_the_item_limit_is_413(default_model, tmp_path):
    with running(make_settings(tmp_path, max_batch_items=2)) as c:
        body = error_of(c.post("/predict/batch", json=["http://example.com/a.jpg"] * 3), 413, "too_many_items")
        assert body["limit"] == 2


# ------------------------------------------------------------------ every error status


def test_urls_with_control_characters_are_400_invalid_url_never_500(client):
    """url_for_log raised IndexError on a tab in the host (urlsplit drops it): /predict answered 500 and one
    such item failed a whole batch with 500."""
    for url in CONTROL_URLS:
        body = error_of(client.post("/predict", params={"url": url}), 400, "invalid_url")
        assert body["message"] == "the URL contains whitespace or control characters", (ascii(url), body)
    urls = CONTROL_URLS[:64]  # one batch's worth
    response = client.post("/predict/batch", json={"items": [{"id": i, "url": u} for i, u in enumerate(urls)]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == list(range(len(urls)))
    assert [r["error"] for r in results] == [
        {"code": "invalid_url", "message": "the URL contains whitespace or control characters"}] * len(urls)
    plain = client.post("/predict/batch", json=CONTROL_URLS[:6])
    assert plain.status_code == 200 and [r["error"]["code"] for r in plain.json()["results"]] == ["invalid_url"] * 6


def test_missing_url_and_no_body_is_400(client):
    body = error_of(client.post("/predict"), 400, "invalid_url")
    assert body["message"].startswith("missing url")
    error_of(client.post("/predict?url="), 400, "invalid_url")


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com/a.jpg", "http://", "http://user:pw@example.com/",
                                 "http://example.com:99999/a.jpg", "http://" + "a" * 3000 + ".com/"])
def test_malformed_url_is_400(client, url):
    error_of(client.post("/predict", params={"url": url}), 400, "invalid_url")


def test_url_and_body_together_or_a_bad_flag_is_400(client, images):
    error_of(client.post("/predict", params={"url": images.url("/house.jpg")}, content=HOUSE), 400, "bad_request")
    error_of(client.post("/predict", params={"detail": "maybe"}, content=HOUSE), 400, "bad_request")
    error_of(client.post("/predict", files={"other": ("a.jpg", HOUSE, "image/jpeg")}), 400, "bad_request")
    error_of(client.post("/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
             400, "bad_request")


def test_api_keys_guard_prediction_but_not_health_or_openapi(default_model, tmp_path):
    with running(make_settings(tmp_path, api_keys=("k-one", "k-two"))) as c:
        missing = c.post("/predict", content=HOUSE)
        error_of(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        error_of(c.post("/predict", content=HOUSE, headers={"authorization": "Bearer wrong"}), 401, "unauthorized")
        error_of(c.post("/predict", content=HOUSE, headers={"authorization": "Basic k-one"}), 401, "unauthorized")
        error_of(c.post("/predict/batch", json=[]), 401, "unauthorized")
        for key in ("k-one", "k-two"):
            assert c.post("/predict", content=HOUSE, headers={"authorization": f"Bearer {key}"}).status_code == 200
        assert c.post("/predict/batch", json=[], headers={"authorization": "bearer k-two"}).status_code == 200
        assert c.get("/health").status_code == 200
        assert c.get("/openapi.json").status_code == 200


def test_loopback_url_with_default_settings_is_403_without_contacting_it(default_model, tmp_path, images):
    before = images.connections
    with running(make_settings(tmp_path)) as c:
        body = error_of(c.post("/predict", params={"url": images.url("/house.jpg")}), 403, "forbidden_address")
        assert "loopback" in body["message"]
        batch = c.post("/predict/batch", json=[images.url("/house.jpg")]).json()["results"]
        assert batch[0]["error"]["code"] == "forbidden_address"
    assert images.connections == before


def test_over_max_bytes_is_413_for_uploads_and_fetches(default_model, tmp_path, images):
    limit = len(SMILE) - 1
    with running(make_settings(tmp_path, max_bytes=limit, allow_private_hosts=(images.netloc,))) as c:
        body = error_of(c.post("/predict", content=SMILE, headers={"content-type": "image/jpeg"}), 413, "too_large")
        assert body["limit"] == limit
        error_of(c.post("/predict", content=iter([SMILE[:20000], SMILE[20000:]])), 413, "too_large")  # chunked
        error_of(c.post("/predict", files={"file": ("s.jpg", SMILE, "image/jpeg")}), 413, "too_large")
        error_of(c.post("/predict", params={"url": images.url("/smile.jpg")}), 413, "too_large")
        assert c.post("/predict", content=SMILE[:limit]).status_code == 422  # at the limit: read, then decoded


def test_html_is_415(client, images):
    error_of(client.post("/predict", params={"url": images.url("/page.html")}), 415, "not_an_image")
    error_of(client.post("/predict", content=b"<html></html>", headers={"content-type": "text/html"}),
             415, "not_an_image")


def test_truncated_jpeg_is_422(client, images):
    error_of(client.post("/predict", params={"url": images.url("/truncated.jpg")}), 422, "undecodable_image")
    error_of(client.post("/predict", content=HOUSE[:5000]), 422, "undecodable_image")


def test_upstream_404_is_502_with_its_status(client, images):
    body = error_of(client.post("/predict", params={"url": images.url("/missing.jpg")}), 502, "upstream_error")
    assert body["upstream_status"] == 404


def test_upstream_timeout_is_504(client, images):
    started = time.monotonic()
    error_of(client.post("/predict", params={"url": images.url("/hang.jpg")}), 504, "upstream_timeout")
    assert time.monotonic() - started < 5


def test_full_inference_queue_is_503_with_retry_after(default_model, tmp_path):
    with running(make_settings(tmp_path, queue_size=1, max_batch=1)) as c:
        lane = current().models.default_lane()
        assert lane is not None
        batcher = lane.batcher
        real = batcher.model

        class Slow:  # only this app's batcher sees it: every forward pass takes 0.5 s
            input_size = real.input_size

            def predict(self, batch: Any) -> Any:
                time.sleep(0.5)
                return real.predict(batch)

        batcher.model = Slow()
        with ThreadPoolExecutor(3) as pool:
            running_one = pool.submit(c.post, "/predict", content=SMILE)
            time.sleep(0.2)  # in its forward pass
            queued_one = pool.submit(c.post, "/predict", content=SMILE)
            time.sleep(0.2)  # waiting in the queue (size 1)
            rejected = c.post("/predict", content=SMILE)
            assert running_one.result().status_code == 200 and queued_one.result().status_code == 200
        body = error_of(rejected, 503, "overloaded")
        assert rejected.headers["retry-after"] == "1" and body["queue_size"] == 1
        assert c.get("/health").json()["batcher"]["rejected"] == 1


def test_too_many_images_in_flight_is_503_before_the_body_is_read(tmp_path):
    with serve() as slow:
        slow.route("/hang.jpg", hang())
        settings = make_settings(tmp_path, max_in_flight=2, allow_private_hosts=(slow.netloc,), fetch_timeout=1.5)
        with running(settings) as c, ThreadPoolExecutor(2) as pool:
            stuck = [pool.submit(c.post, "/predict", params={"url": slow.url("/hang.jpg")}) for _ in range(2)]
            deadline = time.monotonic() + 5
            while current().admission.in_flight < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            rejected = c.post("/predict", content=SMILE)
            batch = c.post("/predict/batch", json=[slow.url("/hang.jpg")])
            assert [f.result().status_code for f in stuck] == [504, 504]
            body = error_of(rejected, 503, "overloaded")
            assert rejected.headers["retry-after"] == "1" and "in flight" in body["message"]
            error_of(batch, 503, "overloaded")
            health = c.get("/health").json()["in_flight"]
            assert health == {"images": 0, "limit": 2, "rejected": 2}
            assert c.post("/predict", content=SMILE).status_code == 200  # room again


def test_request_bodies_held_in_memory_are_bounded_before_they_are_read(tmp_path):
    limit = 4 * len(SMILE)
    with running(make_settings(tmp_path, max_body_bytes_in_flight=limit)) as c:
        admission = current().admission
        held = admission.hold_body(limit - len(SMILE) // 2)  # slow uploads already hold most of it
        held.__enter__()
        try:
            body = error_of(c.post("/predict", content=SMILE), 503, "overloaded")
            assert "request bodies in memory" in body["message"] and c.post("/predict", content=SMILE).headers[
                "retry-after"] == "1"
            # a batch body is counted at its largest allowed size when it declares none (chunked)
            error_of(c.post("/predict/batch", content=iter([b'["http://example.com/a.jpg"]'])), 503, "overloaded")
        finally:
            held.__exit__(None, None, None)
        assert admission.body_bytes == 0
        assert c.post("/predict", content=SMILE).status_code == 200  # room again
        assert admission.body_bytes == 0  # released after the answer


def test_unexpected_exception_is_json_500_and_logged(client, monkeypatch, caplog):
    async def broken(self, data: bytes, **kwargs) -> dict[str, Any]:
        raise RuntimeError("surprise")

    monkeypatch.setattr("nsfw_core.classify.Classifier.data", broken)
    with caplog.at_level(logging.ERROR, logger="nsfw_core.http"):
        body = error_of(client.post("/predict", content=HOUSE), 500, "internal_error")
    assert "surprise" not in body["message"]
    assert any(r.exc_info and "surprise" in str(r.exc_info[1]) for r in caplog.records)


# ------------------------------------------------------------------ routing: 405 and 404 in JSON


def test_wrong_method_is_json_405_with_allow(client):
    response = client.get("/predict")
    body = error_of(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST" and body["allow"] == ["POST"]
    assert error_of(client.post("/health"), 405, "method_not_allowed")["allow"] == ["GET", "HEAD"]
    error_of(client.get("/predict/batch"), 405, "method_not_allowed")
    error_of(client.delete("/openapi.json"), 405, "method_not_allowed")


@pytest.mark.parametrize("path", ["/predict/", "/predict/nope", "/predict/batch/x", "/v1/classify/nope", "/v1/",
                                  "/v1/reviews"])
def test_unknown_api_paths_are_json_404(client, path):
    error_of(client.get(path), 404, "not_found")
    error_of(client.post(path), 404, "not_found")


@pytest.mark.parametrize("path, hint", [
    ("/health/", "did you mean /health?"), ("/metrics/", "did you mean /metrics?"),
    ("/openapi.json/", "did you mean /openapi.json?"), ("/docs/", "did you mean /docs?"),
    ("/PREDICT", "did you mean /predict?"), ("/Health", "did you mean /health?"), ("/predict;x", "did you mean /predict?"),
    ("/health;jsessionid=1", "did you mean /health?"), ("/v1;x", "did you mean /v1?"), ("/health//", "did you mean /health?"),
    ("/V1/classify", "did you mean /v1/classify?"), ("/PREDICT/batch", "did you mean /predict/batch?"),
    ("/Predict/Nope", "(API paths are case-sensitive, without a trailing slash or ;parameters)"),
    ("/DOCS", "did you mean /docs?"), ("/OpenAPI.json", "did you mean /openapi.json?"),
])
def test_paths_that_look_like_the_api_are_json_404_not_a_redirect_or_the_ui(client, path, hint):
    for method in ("GET", "POST", "HEAD", "PUT"):
        response = client.request(method, path, follow_redirects=False)
        assert response.status_code == 404, (method, path, response.status_code, response.headers)
        assert response.headers["content-type"] == "application/json"
        assert len(response.headers["x-request-id"]) >= 16
        if method != "HEAD":
            body = response.json()
            assert body["code"] == "not_found" and body["request_id"] == response.headers["x-request-id"]
            expected = f"no API endpoint at {path} {hint}" if hint.startswith("(") else \
                f"no API endpoint at {path}; {hint}"
            assert body["message"] == expected, body
    assert api.is_api_path(path)
    counted = [line for line in client.get("/metrics").text.splitlines()
               if line.startswith("nsfw_http_requests_total{") and 'status="404"' in line]
    assert any('route="/(unmatched)"' in line for line in counted), counted
    assert not any('route="/health/"' in line or 'route="/health"' in line for line in counted), counted


@pytest.mark.parametrize("path", ["/", "/calibrate", "/review", "/predictions", "/healthz", "/_stcore/health",
                                  "/v1x", "/docsy"])
def test_other_paths_are_not_taken_for_the_api(path):
    assert not api.lookalike.looks_like_api(path)


def bad_requests(route: ApiRoute) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request kwargs) that must fail with a 4xx for ``route``."""
    if isinstance(route, ApiLookalike):  # its path is the label it counts under; /health/ is one it answers
        return [("GET", "/health/", {}), ("POST", "/PREDICT", {})]
    if not route.handlers:
        return [("GET", route.path.replace("{rest:path}", "unknown"), {})]
    cases: list[tuple[str, str, dict[str, Any]]] = [("PUT", route.path, {})]  # no API route takes PUT
    if "POST" in route.handlers:
        cases.append(("POST", route.path, {"content": b"{not json", "params": {"detail": "maybe"}}))
        cases.append(("POST", route.path, {}))
    return cases


def test_every_api_route_answers_bad_requests_with_the_error_shape(client):
    api_routes = [r for r in api.routes if isinstance(r, ApiRoute)]
    assert len(api_routes) == len(api.routes)
    checked = 0
    for route in api_routes:
        for method, path, kwargs in bad_requests(route):
            response = client.request(method, path, **kwargs)
            assert 400 <= response.status_code < 500, (method, path, response.status_code)
            assert response.headers["content-type"] == "application/json", (method, path)
            body = response.json()
            assert isinstance(body["code"], str) and isinstance(body["message"], str), (method, path, body)
            checked += 1
    assert checked >= 10


# ------------------------------------------------------------------ health and OpenAPI


def test_health_when_ready(client, default_model):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "model", "version", "runtime", "thresholds", "warnings", "batcher", "in_flight"}
    assert body["status"] == "ok" and body["runtime"] == "litert"
    assert body["model"] == "MobileNetV2Mid" and body["version"] == default_model.version
    assert body["thresholds"]["adult"] == 0.7 and body["thresholds"]["source"] == "defaults"
    assert body["thresholds"]["version"] is None
    assert body["warnings"] == []
    assert {"batches", "items", "mean_batch_size", "waiting"} <= set(body["batcher"])
    assert client.head("/health").status_code == 200


def test_health_warns_when_sign_in_is_not_configured(tmp_path, caplog):
    with running(make_settings(tmp_path, admin_secret="")) as c:
        body = c.get("/health").json()
    assert body["status"] == "ok"
    assert body["warnings"] == ["sign-in is not configured: the calibrate and review pages are locked (set "
                                "NSFW_ADMIN_SECRET, or OpenID Connect sign-in; docs/security.md)"]
    assert body["warnings"][0] in caplog.text


@pytest.mark.parametrize(("runtime", "wait_s"), [("litert", 0.0), ("tensorflow", 0.004)])
def test_runtime_setting_picks_the_runtime_and_the_batchers_wait(default_model, tmp_path, runtime, wait_s):
    """LiteRT gains nothing from waiting (a lone image runs on all threads), so its batcher never waits; TensorFlow's does."""
    with running(make_settings(tmp_path, runtime=runtime, compiled_dir=COMPILED_DIR)) as c:
        assert c.get("/health").json()["runtime"] == runtime
        lane = current().models.default_lane()
        assert lane is not None and lane.batcher.max_wait_s == wait_s
        answer = c.post("/predict", content=HOUSE, headers={"content-type": "image/jpeg"})
        assert answer.status_code == 200 and set(answer.json()) == set(CLASS_NAMES)


def test_health_reports_a_corrupt_thresholds_file_as_a_warning(default_model, tmp_path):
    (tmp_path / "thresholds.json").write_text("{not json")
    with running(make_settings(tmp_path)) as c:
        body = c.get("/health").json()
    assert body["status"] == "ok" and body["thresholds"]["source"] == "defaults"
    assert len(body["warnings"]) == 1 and "thresholds.json" in body["warnings"][0]


def test_a_saved_thresholds_version_is_in_health_and_the_detailed_answer(default_model, tmp_path):
    from nsfw_core.base.verdict import Thresholds

    with running(make_settings(tmp_path)) as c:
        current().thresholds.save(Thresholds(0.65, 0.85), model="MobileNetV2Mid", by="tester")
        health = c.get("/health").json()
        detail = c.post("/predict", params={"detail": "1"}, content=HOUSE,
                        headers={"content-type": "image/jpeg"}).json()
    assert health["thresholds"] == {"adult": 0.65, "safe": 0.85, "adult_classes": ["porn", "sexy"],
                                    "safe_classes": ["neutral", "drawings"], "source": "database", "version": 1}
    assert detail["thresholds"] == {"adult": 0.65, "safe": 0.85, "adult_classes": ["porn", "sexy"],
                                    "safe_classes": ["neutral", "drawings"], "version": 1}


def test_a_broken_model_gives_503_not_ready_with_the_reason(tmp_path):
    with running(make_settings(tmp_path, model_dir=str(tmp_path)), wait=False) as c:
        deadline = time.monotonic() + 10
        while "failed" not in c.get("/health").json()["reason"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        health = c.get("/health")
        body = error_of(health, 503, "not_ready")
        assert body["status"] == "unavailable"
        assert body["reason"].startswith("model failed to load: model manifest not found")
        error_of(c.post("/predict", content=HOUSE), 503, "not_ready")
        error_of(c.post("/predict/batch", json=[]), 503, "not_ready")


def test_openapi_describes_exactly_the_routes(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    documented = {path: {m.upper() for m in ops} for path, ops in doc["paths"].items()}
    routed = {r.path: set(r.handlers) - {"HEAD"} for r in api.routes if isinstance(r, ApiRoute) and r.handlers}
    assert documented == routed
    for ops in doc["paths"].values():
        for op in ops.values():
            assert "200" in op["responses"] and op["operationId"]
    schemas = doc["components"]["schemas"]
    assert schemas["Scores"]["required"] == list(CLASS_NAMES)
    assert schemas["Error"]["required"] == ["code", "message"]


def test_openapi_says_what_a_batch_item_and_a_url_may_be(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    batch = doc["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = schemas[batch["$ref"].rsplit("/", 1)[1]]
    listed, wrapped = body["anyOf"]
    assert schemas[wrapped["$ref"].rsplit("/", 1)[1]]["properties"]["items"]["maxItems"] == 64
    url_form, object_form = listed["items"]["anyOf"]
    item = schemas[object_form["$ref"].rsplit("/", 1)[1]]
    assert item["required"] == ["url"]
    assert item["properties"]["id"]["anyOf"] == schemas["BatchResult"]["properties"]["id"]["anyOf"]
    forms = {f["type"]: f for f in item["properties"]["id"]["anyOf"]}
    assert set(forms) == {"string", "integer", "number", "null"}
    assert forms["string"]["maxLength"] == 256
    for number in ("integer", "number"):
        assert (forms[number]["minimum"], forms[number]["maximum"]) == (-(2**53 - 1), 2**53 - 1)
    assert item["properties"]["url"]["type"] == "string" and item["properties"]["url"]["minLength"] == 1
    assert url_form == {"type": "string", "minLength": 1}
    assert listed["maxItems"] == 64
    url = doc["paths"]["/predict"]["post"]["parameters"][0]
    assert url["name"] == "url" and url["schema"]["minLength"] == 1 and url["schema"]["maxLength"] == 2048
    assert url["schema"]["pattern"] == openapi.URL_PATTERN


@pytest.mark.parametrize("url,documented", [
    ("http://example.com/a.jpg", True), ("https://cdn.example.co.uk:8443/x/y.png?w=1&h=2", True),
    ("http://a", True), ("", False), ("ftp://example.com/a.jpg", False), ("http://1.2.3.4/a.jpg", False),
    ("http://example.com:0/", False), ("http://user@example.com/", False), ("http://xn--abc.com/", False),
])
def test_url_pattern(url, documented):
    import re

    assert bool(re.search(openapi.URL_PATTERN, url)) is documented


def test_every_url_the_document_calls_valid_passes_the_fetchers_syntax_checks():
    """The pattern promises that such a URL is never 400 invalid_url (it may still be 403, 502 or 504)."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    from nsfw_core.images import fetch

    defaults = load_settings(environ={}).fetch_policy

    @hsettings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.from_regex(openapi.URL_PATTERN, fullmatch=True))
    def check(url: str) -> None:
        fetch._parse(url, defaults)

    check()


def test_a_number_too_long_to_convert_is_400_without_python_internals(client):
    body = error_of(client.post("/predict/batch", content=b'[{"id": ' + b"1" * 5000 + b', "url": "x"}]'),
                    400, "bad_request")
    assert body["message"] == "the body is not valid JSON we accept: a number in it is too long"


def test_the_v1_prefix_itself_is_a_json_404(client):
    body = error_of(client.get("/v1"), 404, "not_found")
    assert body["message"] == "no API endpoint at /v1"
