"""Request ids (nsfw_core.base.requestid): a sane X-Request-ID is kept, any other replaced; the id comes back
as a header on every API response, in every JSON error body, and on the log lines of the request."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from nsfw_core.base import requestid
from nsfw_core.base.logs import RequestIdFilter
from tests.helpers.apiclient import make_settings, running
from tests.helpers.paths import REFERENCE

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

HOUSE = (REFERENCE / "house.jpg").read_bytes()
JPEG = {"Content-Type": "image/jpeg"}
GENERATED = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.parametrize("value", ["a", "abc-123", "req_1.2:3", "A" * 128, "0f" * 16])
def test_sane_ids_are_kept(value):
    assert requestid.sane(value)
    assert requestid.choose(value) == value


@pytest.mark.parametrize("value", [None, "", "A" * 129, "has space", "semi;colon", "new\nline", "é", "a/b",
                                   "<script>", "x" * 10_000])
def test_other_ids_are_replaced_by_a_new_one(value):
    assert not requestid.sane(value)
    chosen = requestid.choose(value)
    assert GENERATED.fullmatch(chosen)
    assert chosen != requestid.choose(value)  # a fresh one each time


def test_the_id_is_bound_for_the_block_and_reaches_threads():
    assert requestid.current() is None
    with requestid.bound("outer"):
        assert requestid.current() == "outer"

        async def in_task() -> str | None:
            return requestid.current()

        async def main() -> tuple[str | None, str | None, str | None]:
            loop = asyncio.get_running_loop()
            in_thread = await loop.run_in_executor(None, requestid.in_context(requestid.current))
            bare_thread = await loop.run_in_executor(None, requestid.current)  # why in_context exists
            return in_thread, await asyncio.create_task(in_task()), bare_thread

        assert asyncio.run(main()) == ("outer", "outer", None)
    assert requestid.current() is None


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with running(make_settings(tmp_path_factory.mktemp("data"))) as c:
        yield c


def test_a_sane_id_round_trips(client):
    response = client.post("/predict", content=HOUSE, headers={**JPEG, "X-Request-ID": "client-42.a:b"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "client-42.a:b"


def test_an_insane_id_is_replaced(client):
    response = client.post("/predict", content=HOUSE, headers={**JPEG, "X-Request-ID": "x" * 129})
    assert response.status_code == 200
    assert GENERATED.fullmatch(response.headers["x-request-id"])
    response = client.get("/health", headers={"X-Request-ID": "two words"})
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_without_an_id_each_request_gets_its_own(client):
    first, second = client.get("/health"), client.get("/health")
    assert GENERATED.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("method, path, kwargs, status, code", [
    ("POST", "/predict?url=http://127.0.0.1/x.jpg", {}, 403, "forbidden_address"),
    ("POST", "/predict", {"content": b"not an image", "headers": JPEG}, 415, "not_an_image"),
    ("POST", "/predict/batch", {"content": b"{"}, 400, "bad_request"),
    ("GET", "/predict", {}, 405, "method_not_allowed"),
    ("GET", "/v1/anything", {}, 404, "not_found"),
])
def test_every_error_body_carries_the_id_of_its_response(client, method, path, kwargs, status, code):
    headers = {**kwargs.pop("headers", {}), "X-Request-ID": f"err-{status}"}
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert body["request_id"] == f"err-{status}" == response.headers["x-request-id"]
    generated = client.request(method, path, headers=kwargs.get("headers", {}) | {"X-Request-ID": "bad id"},
                               **kwargs)
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    assert GENERATED.fullmatch(generated.headers["x-request-id"])


def test_an_unauthorized_answer_carries_the_id_too(tmp_path):
    with running(make_settings(tmp_path, api_keys=("k" * 20,))) as c:
        response = c.post("/predict", content=HOUSE, headers={**JPEG, "X-Request-ID": "no-key"})
    assert response.status_code == 401
    assert response.json()["request_id"] == "no-key" == response.headers["x-request-id"]


def test_a_batch_item_error_has_no_id_of_its_own(client):
    response = client.post("/predict/batch", json=["http://127.0.0.1/x.jpg"], headers={"X-Request-ID": "batch-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "batch-1"
    error = response.json()["results"][0]["error"]
    assert error["code"] == "forbidden_address" and "request_id" not in error


def test_log_lines_about_a_request_carry_its_id_batch_items_included(client, caplog):
    caplog.handler.addFilter(RequestIdFilter())  # what logs.configure puts on the server's handler
    with caplog.at_level(logging.INFO):
        client.post("/predict/batch", json=["http://127.0.0.1/a.jpg", "http://10.0.0.1/b.jpg"],
                    headers={"X-Request-ID": "trace-me"})
        client.post("/predict?url=http://127.0.0.1/c.jpg", headers={"X-Request-ID": "trace-2"})
    items = [r for r in caplog.records if r.getMessage().startswith("batch item ")]
    assert [(r.request_id, r.item, r.code) for r in items] == [("trace-me", 0, "forbidden_address"),
                                                               ("trace-me", 1, "forbidden_address")]
    access = [r for r in caplog.records if r.name == "nsfw_core.http.access"]
    assert [(r.request_id, r.route, r.status) for r in access] == [("trace-me", "/predict/batch", 200),
                                                                   ("trace-2", "/predict", 403)]
    assert access[0].items == 2 and access[0].item_errors == 2
    assert access[1].code == "forbidden_address"


def test_the_openapi_document_describes_the_header_and_the_field(client):
    doc = client.get("/openapi.json").json()
    assert "request_id" in doc["components"]["schemas"]["Error"]["properties"]
    assert "X-Request-ID" in doc["components"]["headers"]["RequestId"]["description"]
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            assert any(p["name"] == "X-Request-ID" and p["in"] == "header" for p in operation["parameters"]), path
            for status, response in operation["responses"].items():
                assert "X-Request-ID" in response["headers"], (path, status)
