"""The Python client: calls, errors, retries on 429/503 honouring Retry-After."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from nsfw_core.client import ApiError, Client, classify_sources, retry_after
from tests.helpers.servers import LocalServer, RouteHandler

RESULT = {"request_id": "r", "id": None, "scores": {"drawings": 0.0, "hentai": 0.0, "neutral": 1.0, "porn": 0.0,
                                                    "sexy": 0.0}, "verdict": "safe"}


class Script:
    """Answers (status, headers, body) in turn at one path, the last one for ever; keeps the requests."""

    def __init__(self, server: LocalServer, path: str, answers: list[tuple[int, dict[str, str], dict[str, Any]]]) -> None:
        self.answers = answers
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.url = server.route(path, self.respond)

    def respond(self, handler: RouteHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        with self.lock:
            self.got.append(({k.lower(): v for k, v in handler.headers.items()}, body))
            status, headers, doc = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        data = json.dumps(doc).encode()
        handler.start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                               *headers.items()])
        handler.wfile.write(data)


def test_retries_429_and_503_after_retry_after(local_server):
    script = Script(local_server, "/v1/classify", [
        (429, {"Retry-After": "3"}, {"code": "rate_limited", "message": "slow down"}),
        (503, {"Retry-After": "1"}, {"code": "overloaded", "message": "busy"}),
        (503, {}, {"code": "not_ready", "message": "loading"}),
        (200, {}, RESULT)])
    waits: list[float] = []
    with Client(local_server.url(""), "secret-key", sleep=waits.append) as client:
        assert client.classify_url("https://example.com/a.jpg", model="InceptionV3", id=5) == RESULT
    assert waits == [3.0, 1.0, 4.0]  # Retry-After, then 2 ** attempt without one
    headers, body = script.got[0]
    assert headers["authorization"] == "Bearer secret-key"
    assert json.loads(body) == {"image": {"url": "https://example.com/a.jpg"}, "model": "InceptionV3", "id": 5}
    assert len(script.got) == 4


def test_gives_up_after_its_retries_with_the_error(local_server):
    Script(local_server, "/v1/classify", [(429, {"Retry-After": "1000"}, {"code": "rate_limited", "message": "no"})])
    waits: list[float] = []
    client = Client(local_server.url(""), retries=2, max_wait_s=5, sleep=waits.append)
    with pytest.raises(ApiError) as caught:
        client.classify_bytes(b"abc")
    assert (caught.value.status, caught.value.code, caught.value.message) == (429, "rate_limited", "no")
    assert waits == [5.0, 5.0]  # capped at max_wait_s


def test_errors_are_not_retried(local_server):
    script = Script(local_server, "/v1/reviews/7", [(404, {}, {"code": "not_found", "message": "gone"})])
    with pytest.raises(ApiError) as caught:
        Client(local_server.url(""), sleep=lambda s: None).review("7")
    assert caught.value.status == 404 and caught.value.code == "not_found"
    assert len(script.got) == 1


def test_batch_and_bytes_bodies(local_server):
    script = Script(local_server, "/v1/classify/batch", [(200, {}, {"request_id": "r", "results": [RESULT]})])
    client = Client(local_server.url(""))
    assert client.classify_batch([{"id": 1, "url": "https://e.com/a"}, {"id": "b", "bytes": b"\x00\x01"}],
                                 thresholds={"adult": 0.5}) == [RESULT]
    assert json.loads(script.got[0][1]) == {"items": [{"id": 1, "image": {"url": "https://e.com/a"}},
                                                      {"id": "b", "image": {"base64": "AAE="}}],
                                            "thresholds": {"adult": 0.5}}


def test_unreachable_is_an_api_error():
    waits: list[float] = []
    with pytest.raises(ApiError) as caught:
        Client("http://127.0.0.1:9", retries=1, timeout=2, sleep=waits.append).health()
    assert caught.value.status == 0 and caught.value.code == "unreachable" and waits == [1.0]


def test_retry_after_forms():
    assert retry_after("7") == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412480.0 - 10) == 10.0
    assert retry_after(None) is None and retry_after("soon") is None


def test_classify_sources_rows_in_order(local_server, tmp_path):
    Script(local_server, "/v1/classify", [(200, {}, RESULT)])
    f = tmp_path / "a.jpg"
    f.write_bytes(b"x")
    rows = classify_sources(Client(local_server.url("")), [str(f), str(tmp_path / "missing.jpg")])
    assert rows[0] == {"source": str(f), "scores": RESULT["scores"], "verdict": "safe"}
    assert rows[1]["source"].endswith("missing.jpg") and rows[1]["error"]["code"] == "unreadable"
