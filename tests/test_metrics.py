"""GET /metrics (nsfw_core.metrics): the Prometheus text format, counters that move as requests are
served (errors and batch items included), the key it needs, and a scrape that survives a dead database."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.context import current
from nsfw_core.metrics import Metrics, ReviewProbe
from tests.helpers.apiclient import make_settings, running
from tests.helpers.paths import REFERENCE
from tests.helpers.servers import LocalServer, image, serve, status

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

HOUSE = (REFERENCE / "house.jpg").read_bytes()  # safe
SMILE = (REFERENCE / "smile.jpg").read_bytes()  # unknown with a safe threshold of 0.97
JPEG = {"Content-Type": "image/jpeg"}
KEY = "k" * 20
TOKEN = "metrics-token-0123456789"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # {(sample name, sorted labels): value}


def scrape(client: Any, **headers: str) -> Samples:
    """/metrics parsed by prometheus_client's own parser: {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def images() -> Iterator[LocalServer]:
    with serve() as server:
        server.route("/house.jpg", image(HOUSE, "image/jpeg"))
        server.route("/missing.jpg", status(404))
        yield server


def test_counters_move_with_requests_errors_and_batch_items(tmp_path, images):
    settings = make_settings(tmp_path, allow_private_hosts=(images.netloc,), safe_threshold=0.97,
                             review_verdicts=("unknown",))
    with running(settings) as client:
        before = scrape(client)
        assert value(before, "nsfw_ready") == 1.0
        assert value(before, "nsfw_review_queue_up") == 1.0
        assert value(before, "nsfw_review_queue_pending") == 0.0
        assert value(before, "nsfw_http_requests_total", route="/predict", status="200") == 0.0

        assert client.post("/predict", content=HOUSE, headers=JPEG).status_code == 200  # upload: safe
        assert client.post("/predict", content=SMILE, headers=JPEG).status_code == 200  # unknown, queued
        assert client.post("/predict?url=" + images.url("/house.jpg")).status_code == 200  # fetched: safe
        assert client.post("/predict?url=" + images.url("/missing.jpg")).status_code == 502
        assert client.post("/predict", content=b"not an image", headers=JPEG).status_code == 415
        batch = client.post("/predict/batch", json=[images.url("/house.jpg"), images.url("/missing.jpg"),
                                                    "http://169.254.169.254/latest"])
        assert batch.status_code == 200
        assert client.get("/predict/nowhere").status_code == 404
        after = scrape(client)

    assert value(after, "nsfw_http_requests_total", route="/predict", status="200") == 3.0
    assert value(after, "nsfw_http_requests_total", route="/predict", status="502") == 1.0
    assert value(after, "nsfw_http_requests_total", route="/predict", status="415") == 1.0
    assert value(after, "nsfw_http_requests_total", route="/predict/batch", status="200") == 1.0
    assert value(after, "nsfw_http_requests_total", route="/predict/{rest:path}", status="404") == 1.0
    assert value(after, "nsfw_http_requests_total", route="/metrics", status="200") == 1.0  # the first scrape
    assert value(after, "nsfw_http_request_duration_seconds_count", route="/predict") == 5.0
    # errors by code: whole requests and batch items alike
    assert value(after, "nsfw_errors_total", code="upstream_error") == 2.0  # /predict 502 and batch item 1
    assert value(after, "nsfw_errors_total", code="not_an_image") == 1.0
    assert value(after, "nsfw_errors_total", code="forbidden_address") == 1.0  # batch item 2
    assert value(after, "nsfw_errors_total", code="not_found") == 1.0
    # four images classified: two uploads, one fetched, one batch item
    assert value(after, "nsfw_verdicts_total", verdict="safe", source="model") == 3.0
    assert value(after, "nsfw_verdicts_total", verdict="unknown", source="model") == 1.0
    assert value(after, "nsfw_verdicts_total", verdict="adult", source="model") == 0.0
    for stage in ("decode", "inference", "total"):
        assert value(after, "nsfw_stage_duration_seconds_count", stage=stage) == 4.0
    assert value(after, "nsfw_stage_duration_seconds_count", stage="fetch") == 2.0  # the two URLs that loaded
    for name in CLASS_NAMES:
        assert value(after, "nsfw_score_count", **{"class": name}) == 4.0
        assert value(after, "nsfw_score_bucket", **{"class": name, "le": "+Inf"}) == 4.0
    assert value(after, "nsfw_batch_size_sum") == 4.0  # every image went through some forward pass
    assert value(after, "nsfw_review_queue_pending") == 1.0
    assert 0.0 <= value(after, "nsfw_review_queue_oldest_pending_age_seconds") < 60.0
    assert value(after, "nsfw_in_flight_images") == 0.0
    assert value(after, "nsfw_in_flight_limit") == settings.max_in_flight
    assert value(after, "nsfw_inference_queue_depth") == 0.0
    assert value(after, "nsfw_overloaded_total", where="admission") == 0.0
    build = [labels for (name, labels) in after if name == "nsfw_build_info"]
    assert len(build) == 1
    info = dict(build[0])
    assert info["model"] == "MobileNetV2Mid" and info["runtime"] == settings.runtime
    assert info["version"] and info["app_version"]


def test_overloaded_refusals_are_counted(tmp_path):
    with running(make_settings(tmp_path, max_in_flight=1)) as client:
        admission = current().admission
        admission.in_flight = 1  # as if one image were being served
        try:
            assert client.post("/predict", content=HOUSE, headers=JPEG).status_code == 503
        finally:
            admission.in_flight = 0
        samples = scrape(client)
    assert value(samples, "nsfw_overloaded_total", where="admission") == 1.0
    assert value(samples, "nsfw_errors_total", code="overloaded") == 1.0
    assert value(samples, "nsfw_http_requests_total", route="/predict", status="503") == 1.0


def test_metrics_need_a_key_when_api_keys_are_set(tmp_path):
    with running(make_settings(tmp_path, api_keys=(KEY,), metrics_token=TOKEN)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        scrape(client, Authorization=f"Bearer {KEY}")
        scrape(client, Authorization=f"Bearer {TOKEN}")
        # the metrics token opens /metrics only, not /predict
        assert client.post("/predict", content=HOUSE, headers={**JPEG, "Authorization": f"Bearer {TOKEN}"}
                           ).status_code == 401


def test_the_metrics_token_alone_protects_metrics(tmp_path):
    with running(make_settings(tmp_path, metrics_token=TOKEN)) as client:
        assert client.get("/metrics").status_code == 401
        scrape(client, Authorization=f"Bearer {TOKEN}")
        assert client.post("/predict", content=HOUSE, headers=JPEG).status_code == 200  # the API stays open


def test_without_keys_metrics_are_public(tmp_path):
    with running(make_settings(tmp_path)) as client:
        scrape(client)


def test_a_review_database_that_is_down_does_not_fail_the_scrape(tmp_path):
    settings = make_settings(tmp_path, database_url="postgresql://nobody:x@127.0.0.1:1/none")
    with running(settings) as client:
        started = time.monotonic()
        samples = scrape(client)
        assert time.monotonic() - started < 5.0
    assert value(samples, "nsfw_review_queue_up") == 0.0
    assert ("nsfw_review_queue_pending", ()) not in samples
    assert value(samples, "nsfw_http_requests_total", route="/health", status="200") >= 1.0


def test_a_slow_review_database_is_waited_for_briefly():
    def slow() -> tuple[int, float | None]:
        time.sleep(2.0)
        return 3, 0.0

    probe = ReviewProbe(slow, timeout=0.2)
    try:
        started = time.monotonic()
        assert probe.read() is None
        assert probe.read() is None  # the first query still runs: no second one piles up
        assert time.monotonic() - started < 1.0
    finally:
        probe.close()


def test_the_oldest_pending_item_age_is_measured_from_now():
    probe = ReviewProbe(lambda: (2, 1000.0), clock=lambda: 1042.5)
    try:
        assert probe.read() == (2, 42.5)
    finally:
        probe.close()
    empty = ReviewProbe(lambda: (0, None))
    try:
        assert empty.read() == (0, None)
    finally:
        empty.close()


def test_each_metrics_object_has_its_own_registry():
    first, second = Metrics(), Metrics()  # no "Duplicated timeseries" error: not the global registry
    first.observe_batch(3)
    text = second.exposition().decode()
    assert "nsfw_batch_size_count 0.0" in text
    assert "nsfw_batch_size_count 1.0" in first.exposition().decode()
