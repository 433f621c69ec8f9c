"""The log (nsfw_core.base.logs): image URLs as host#hash, never their query string; NSFW_LOG_FORMAT=json gives
one JSON object a line; one access line per API request with the request id (a real ``python app.py``)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from nsfw_core.base import logs, requestid
from tests.helpers.appserver import app_server, free_port
from tests.helpers.control_urls import CONTROL_URLS
from tests.helpers.paths import COMPILED_DIR, REFERENCE, ROOT

HOUSE = (REFERENCE / "house.jpg").read_bytes()
SECRET = "SECRET-token-4f1e"
NATIVE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."  # LiteRT's C++ writes it to stderr itself


def short(rest: str) -> str:
    return hashlib.sha256(rest.encode()).hexdigest()[:12]


@pytest.mark.parametrize("url, logged", [
    ("https://img.example.com/a/b.jpg?X-Amz-Signature=abc&token=s", "img.example.com#" + short("/a/b.jpg?X-Amz-Signature=abc&token=s")),
    ("http://user:pw@cdn.example.org:8443/p?q=1#f", "cdn.example.org:8443#" + short("/p?q=1#f")),
    ("https://img.example.com", "img.example.com#" + short("")),
    ("not a url at all", "<no host>#" + short("not a url at all")),
    ("http://[::1/x?token=1", "<invalid URL>#" + hashlib.sha256(b"http://[::1/x?token=1").hexdigest()[:12]),
])
def test_urls_are_logged_as_host_and_a_short_hash(url, logged):
    assert logs.url_for_log(url) == logged
    assert "token" not in logs.url_for_log(url) and "pw" not in logs.url_for_log(url)


@pytest.mark.parametrize("url", CONTROL_URLS, ids=ascii)
def test_urls_with_control_characters_are_logged_without_raising(url):
    logged = logs.url_for_log(url)
    assert re.fullmatch(r"(<invalid URL>|<unprintable host>|<no host>|example\.com(:80)?)#[0-9a-f]{12}", logged), logged
    assert "sig" not in logged and "a.jpg" not in logged and "user" not in logged


def test_a_host_with_a_tab_is_an_invalid_url_hashed_whole():  # urlsplit drops the tab: "example.com"
    url = "https://exa\tmple.com/a.jpg"
    assert logs.url_for_log(url) == "<invalid URL>#" + short(url)
    assert logs.url_for_log(None) == "<no host>#" + short("None")  # type: ignore[arg-type]


def test_the_same_url_always_gives_the_same_hash_and_another_url_another():
    a = logs.url_for_log("https://h/x.jpg?sig=1")
    assert a == logs.url_for_log("https://h/x.jpg?sig=1") != logs.url_for_log("https://h/x.jpg?sig=2")


def _record_through(log_format: str, message: str, **extra) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(log_format))
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("tests.logs.format")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with requestid.bound("rid-1"):
            logger.warning(message, extra=extra)
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_text_lines_carry_the_request_id_in_brackets():
    first, second = _record_through("text", "hello %s" % "world").splitlines()
    assert first.endswith(" WARNING tests.logs.format [rid-1]: hello world")
    assert second.endswith(" WARNING tests.logs.format: outside")


def test_json_lines_are_objects_with_the_fields():
    first, second = (json.loads(line) for line in _record_through("json", "multi\nline", route="/x").splitlines())
    assert {k: first[k] for k in ("level", "logger", "message", "request_id", "route")} == {
        "level": "WARNING", "logger": "tests.logs.format", "message": "multi\nline", "request_id": "rid-1",
        "route": "/x"}
    assert second["request_id"] is None and second["message"] == "outside" and "time" in second


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError):
        logs.formatter("xml")


def test_uvicorn_access_lines_are_dropped_for_api_paths_and_lose_query_strings_elsewhere():
    f = logs.AccessLineFilter(lambda path: path == "/predict")
    api = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                            ("1.2.3.4:5", "POST", "/predict?url=https://h/x?token=1", "1.1", 200), None)
    assert not f.filter(api)
    page = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                             ("1.2.3.4:5", "GET", "/oauth2callback?code=abc&state=s", "1.1", 200), None)
    assert f.filter(page)
    assert page.getMessage() == '1.2.3.4:5 - "GET /oauth2callback?... HTTP/1.1" 200'


def _requests(server) -> dict[str, str]:
    """A few requests of each kind; the request ids sent, by name."""
    signed = f"http://127.0.0.1:9/private/photo.jpg?token={SECRET}&sig={SECRET}"
    assert server.request("POST", "/predict?url=" + signed.replace("&", "%26"),
                          headers={"X-Request-ID": "rid-url"}).error(403, "forbidden_address")
    reply = server.post_json("/predict/batch", json.dumps([signed, f"https://unresolvable.invalid/x?k={SECRET}"]))
    assert reply.status == 200
    assert server.request("POST", "/predict", body=HOUSE, headers={"Content-Type": "image/jpeg",
                                                                     "X-Request-ID": "rid-upload"}).status == 200
    assert server.request("GET", f"/?next={SECRET}").status == 200  # a Streamlit page, query string and all
    return {"batch": reply.headers["x-request-id"]}


def _check_access(lines: list[dict[str, Any]], batch_id: str) -> None:
    access = [line for line in lines if line.get("logger") == "nsfw_core.http.access"]
    by_id = {line["request_id"]: line for line in access}
    assert by_id["rid-url"]["route"] == "/predict" and by_id["rid-url"]["status"] == 403
    assert by_id["rid-url"]["code"] == "forbidden_address"
    assert by_id["rid-url"]["url"] == "127.0.0.1:9#" + short(f"/private/photo.jpg?token={SECRET}&sig={SECRET}")
    assert by_id["rid-upload"]["verdict"] == "safe" and by_id["rid-upload"]["status"] == 200
    assert {"decode_ms", "inference_ms", "duration_ms"} <= set(by_id["rid-upload"])
    assert by_id[batch_id]["route"] == "/predict/batch" and by_id[batch_id]["items"] == 2
    assert by_id[batch_id]["item_errors"] == 2
    items = [line for line in lines if line["message"].startswith("batch item ")]
    assert [(line["request_id"], line["item"]) for line in items] == [(batch_id, 0), (batch_id, 1)]


def test_json_logs_of_a_real_server_parse_line_by_line_and_never_show_a_query_string(tmp_path: Path):
    with app_server(tmp_path, NSFW_LOG_FORMAT="json", NSFW_FETCH_TIMEOUT="2") as server:
        sent = _requests(server)
        server.stop()
        text = server.log.read_text()
    assert SECRET not in text
    lines = []
    for raw in text.splitlines():
        if raw == NATIVE:
            continue
        line = json.loads(raw)  # every other line is one JSON object
        assert isinstance(line, dict) and {"time", "level", "logger", "message", "request_id"} <= set(line)
        lines.append(line)
    _check_access(lines, sent["batch"])
    assert any(line["logger"] == "uvicorn.access" and '"GET /?... HTTP/1.1" 200' in line["message"]
               for line in lines)
    assert not any(line["logger"] == "uvicorn.access" and "/predict" in line["message"] for line in lines)


def test_text_logs_of_a_real_server_carry_request_ids_and_never_show_a_query_string(tmp_path: Path):
    with app_server(tmp_path, NSFW_FETCH_TIMEOUT="2") as server:
        sent = _requests(server)
        text = server.new_log()
    assert SECRET not in text
    assert "token=" not in text and "sig=" not in text
    access = [line for line in text.splitlines() if " nsfw_core.http.access " in line]
    assert any(" [rid-url]: POST /predict 403 " in line and " code=forbidden_address url=127.0.0.1:9#" in line
               for line in access), access
    assert any(" [rid-upload]: POST /predict 200 " in line and " verdict=safe " in line for line in access), access
    assert any(f" [{sent['batch']}]: POST /predict/batch 200 " in line and " items=2 item_errors=2" in line
               for line in access), access
    assert sum(f" [{sent['batch']}]: batch item " in line for line in text.splitlines()) == 2


def test_under_uvicorn_app_app_the_log_is_set_up_too(tmp_path: Path):
    """``uvicorn app:app`` (the other command in docs/getting-started.md) has no ``main()``: the lifespan sets up the log, so
    uvicorn's own access line (on by default there) loses /predict's query string as well."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "STREAMLIT_"))}
    env.update(NSFW_DATA_DIR=str(tmp_path / "data"), NSFW_COMPILED_DIR=COMPILED_DIR, NSFW_LOG_FORMAT="json")
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port",
                                    str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict?url=http://127.0.0.1:9/a.jpg%3Ftoken%3D"
                                         f"{SECRET}", method="POST", headers={"X-Request-ID": "under-uvicorn"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    text = log.read_text()
    assert SECRET not in text
    lines = [json.loads(raw) for raw in text.splitlines() if raw.startswith("{")]
    access = [line for line in lines if line["logger"] == "nsfw_core.http.access" and line["route"] == "/predict"]
    assert [(a["request_id"], a["status"]) for a in access] == [("under-uvicorn", 403)]
    assert any(line["logger"] == "nsfw_core.http.access" and line["route"] == "/health" for line in lines)
