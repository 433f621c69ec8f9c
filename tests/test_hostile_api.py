"""Hostile batch bodies and thresholds files against a real server (``python app.py`` in a subprocess).

Issue 13, items 5 and 6: whatever a batch item's ``id``/``url`` or the
thresholds file contains, the server answers a 4xx (or its thresholds in
force), never a 500, and keeps serving.  Since issue 15 the thresholds live in
the database and the file is only imported once (checked here in-process).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.helpers.appserver import AppServer, app_server
from tests.helpers.paths import REFERENCE

SMILE = (REFERENCE / "smile.jpg").read_bytes()
GOOD: dict[str, Any] = {"thresholds": {"adult": 0.6, "safe": 0.8, "adult_classes": ["porn", "sexy"],
                       "safe_classes": ["neutral", "drawings"]}, "model": "MobileNetV2Mid"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with app_server(tmp_path_factory.mktemp("hostile-api")) as s:
        yield s


def assert_healthy_and_quiet(server: AppServer) -> None:
    assert server.health().status == 200
    log = server.new_log()
    assert "Traceback" not in log and "internal_error" not in log and " 500 " not in log, log[-3000:]


# ------------------------------------------------------------------ batch ids and urls (item 5)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("item,words", [
    ('{"id": %s, "url": "http://example.com/a.jpg"}' % nested(950), "items[0].id must be a string"),
    ('{"id": {"a": [1, 2]}, "url": "http://example.com/a.jpg"}', "got an object"),
    ('{"id": true, "url": "http://example.com/a.jpg"}', "got a boolean"),
    ('{"id": "%s", "url": "http://example.com/a.jpg"}' % ("x" * 257), "got a string of 257 characters"),
    ('{"id": 9007199254740992, "url": "http://example.com/a.jpg"}', "got a number out of range"),
    ('{"id": NaN, "url": "http://example.com/a.jpg"}', "got a non-finite number"),
    ('{"id": "a", "url": {"u": 1}}', "items[0].url must be a non-empty URL string"),
    ('{"id": "a", "url": %s}' % nested(950), "got a list"),
    ('{"id": "a", "url": ""}', "got an empty string"),
    ('{"id": "a"}', 'items[0] needs a "url"'),
    ("17", "items[0] must be a non-empty URL string"),
], ids=["deep-list-id", "object-id", "bool-id", "long-id", "big-id", "nan-id", "object-url", "deep-url",
        "empty-url", "no-url", "number-item"])
def test_bad_batch_item_is_400_naming_it(server: AppServer, item: str, words: str) -> None:
    reply = server.post_json("/predict/batch", '{"items": [%s]}' % item)
    body = reply.error(400, "bad_request")
    assert words in body["message"] and body["item"] == 0, body
    assert len(reply.body) < 1000
    assert_healthy_and_quiet(server)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"items": ' + b"[" * 70_000 + b"]" * 70_000 + b"}"],
                         ids=["unclosed-100000", "closed-70000"])
def test_deeply_nested_batch_body_is_400(server: AppServer, body: bytes) -> None:
    reply = server.post_json("/predict/batch", body)
    assert reply.error(400, "bad_request")["message"] == "the body is JSON nested too deep"
    assert reply.seconds < 5
    assert_healthy_and_quiet(server)


def test_good_ids_come_back_exactly(server: AppServer) -> None:
    ids = ["x" * 256, 9007199254740991, -9007199254740991, 0.5, None, "é😀"]
    items = [{"id": i, "url": "ftp://example.com/a.jpg"} for i in ids]
    reply = server.post_json("/predict/batch", json.dumps({"items": items}, ensure_ascii=False).encode())
    assert reply.status == 200, reply
    results = reply.json()["results"]
    assert [r["id"] for r in results] == ids
    assert all(r["error"]["code"] == "invalid_url" for r in results)
    assert_healthy_and_quiet(server)


# ------------------------------------------------------------------ thresholds files (item 6)


def replace(path: Path, make) -> None:
    """Remove whatever ``path`` is now, then let ``make(path)`` create the new one."""
    if path.is_symlink() or path.is_file() or path.exists() and not path.is_dir():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    make(path)
    time.sleep(0.01)  # a new mtime even on coarse clocks (the inode changes anyway)


def write(data: bytes):
    def make(path: Path) -> None:
        tmp = path.with_name(".thresholds.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    return make


BAD_FILES = [  # (name, maker, words in the warning)
    ("deep-nesting", write(b'{"thresholds": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"), "nested too deep"),
    ("bool-threshold", write(json.dumps({"thresholds": {**GOOD["thresholds"], "adult": True}}).encode()),
     "got True"),
    ("same-class-both-sides", write(json.dumps({"thresholds": {**GOOD["thresholds"],
                                                               "safe_classes": ["neutral", "sexy"]}}).encode()),
     "sexy cannot count as both adult and safe"),
    ("unknown-class", write(json.dumps({"thresholds": {**GOOD["thresholds"], "adult_classes": ["nude"]}}).encode()),
     "adult_classes must be"),
    ("not-utf8", write(b'{"thresholds": {"adult": 0.6, "safe": 0.8}, "m": "\xff"}'), "not UTF-8"),
    ("huge", write(b" " * (1 << 20) + json.dumps(GOOD).encode()), "larger than 65536 bytes"),
    ("directory", lambda p: p.mkdir(), "a directory"),
    ("dangling-symlink", lambda p: p.symlink_to(p.with_name("nowhere.json")), "symbolic link"),
    ("fifo", lambda p: os.mkfifo(p), "a FIFO"),
]


@pytest.mark.parametrize("maker,words", [(m, w) for _, m, w in BAD_FILES], ids=[n for n, _, _ in BAD_FILES])
def test_bad_thresholds_file_is_not_imported_and_is_a_warning(tmp_path: Path, maker, words, caplog) -> None:
    """An existing install's thresholds.json is imported once into the database (nsfw_core.state.thresholds);
    a bad one is not imported, never blocks, and is a warning while no thresholds are saved."""
    from nsfw_core.base.verdict import Thresholds
    from nsfw_core.state.thresholds import ThresholdHistory

    path = tmp_path / "thresholds.json"
    maker(path)
    history = ThresholdHistory(None, data_dir=tmp_path, defaults=Thresholds())
    answers: list[Any] = []
    worker = threading.Thread(target=lambda: answers.extend([history.current(), history.current()]), daemon=True)
    worker.start()
    worker.join(20)
    try:
        if worker.is_alive() and path.exists() and not path.is_file():  # a blocked FIFO read: free it, then fail
            with open(path, "wb"):
                pass
            pytest.fail("reading the thresholds file blocked")
        active = answers[-1]
        assert (active.thresholds, active.source, active.version) == (Thresholds(), "defaults", None)
        assert words in active.warning and "not imported" in active.warning, active.warning
        assert str(tmp_path) not in active.warning  # /health is public: the file's name, not its path
        assert history.history() == []
        assert sum("not imported" in r.getMessage() for r in caplog.records) == 1  # logged once
        assert history.save(Thresholds(0.6, 0.8), model="m").warning is None
    finally:
        history.close()


def test_thresholds_file_written_after_start_is_not_read(server: AppServer) -> None:
    """The database holds the thresholds: a file appearing later changes nothing (it is not read again)."""
    path = server.data_dir / "thresholds.json"
    before = server.health().json()["thresholds"]
    replace(path, write(json.dumps(GOOD).encode()))
    time.sleep(1.2)  # past the history's refresh interval
    health = server.health().json()
    assert health["thresholds"] == before and health["warnings"] == [], health
    detail = server.request("POST", "/predict?detail=1", body=SMILE, headers={"Content-Type": "image/jpeg"})
    assert detail.status == 200, detail
    assert detail.json()["thresholds"]["version"] == before["version"]
    assert detail.json()["thresholds"]["adult"] == before["adult"]
    path.unlink()
    assert_healthy_and_quiet(server)


# ------------------------------------------------------------------ a corrupt review database (item 8)


def test_corrupt_review_database_is_moved_aside_and_predictions_go_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "review.sqlite").write_bytes(b"SQLite format 3\0" + b"\xa5" * 8000)  # a header, then garbage
    (data / "review.sqlite-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\0" * 60)  # a WAL header that fails its checksum
    with app_server(tmp_path, NSFW_REVIEW_VERDICTS="adult,unknown,safe") as server:
        first = server.request("POST", "/predict?detail=1", body=SMILE, headers={"Content-Type": "image/jpeg"})
        assert first.status == 200, first
        assert first.json()["review_id"].startswith("rv_") and "review_error" not in first.json()
        log = server.new_log()
    moved = {p.name.split(".corrupt-")[0]: p for p in data.iterdir() if ".corrupt-" in p.name}
    assert {"review.sqlite", "review.sqlite-wal"} <= set(moved), moved
    assert moved["review.sqlite-wal"].read_bytes() == b"\x37\x7f\x06\x82" + b"\0" * 60
    errors = [line for line in log.splitlines() if " ERROR nsfw_core.state.review: " in line]
    assert len(errors) == 2, log[-3000:]
    assert "its write-ahead log was corrupt" in errors[0] and str(moved["review.sqlite-wal"]) in errors[0]
    assert "is corrupt (file is not a database)" in errors[1] and str(moved["review.sqlite"]) in errors[1]
    assert "Traceback" not in log


# ------------------------------------------------------------------ paths Streamlit's path check refuses


@pytest.mark.slow
@pytest.mark.parametrize("method,path", [
    ("POST", "//v1/classify"),  # a client's base URL with a trailing slash
    ("POST", "//predict"),
    ("GET", "/v1/jobs/%00"),
    ("GET", "/v1/jobs/.."),
    ("POST", "/v1/reviews/../claim"),
    ("POST", "/v1/reviews/a%5C..%5Cb/decision"),
    ("GET", "/health/.."),
    ("GET", "/v1/reviews/%00"),
])
def test_a_path_streamlit_finds_unsafe_is_a_json_error_on_the_api(server: AppServer, method: str, path: str) -> None:
    """Streamlit's path check (NUL bytes, '..' segments, a leading '//') answered these API paths with a bare
    text/plain "Bad Request" before the API saw them: no JSON, no code, no request id."""
    reply = server.request(method, path, body=b"{}" if method == "POST" else None)
    body = reply.error(404, "not_found")
    assert reply.headers.get("x-request-id") == body["request_id"], reply.headers
    assert_healthy_and_quiet(server)


@pytest.mark.slow
def test_a_doubled_slash_is_told_the_path_it_meant(server: AppServer) -> None:
    reply = server.request("POST", "//v1/classify", body=b"{}")
    assert "did you mean /v1/classify?" in reply.error(404, "not_found")["message"]


@pytest.mark.parametrize("path", ["//v1/classify", "/v1/jobs/\x00", "/v1/jobs/..", "/v1/reviews/a\\..\\b/decision",
                                  "\\\\v1/classify", "/\\v1/classify", "/v1/classify", "/v1/jobs/job_..x",
                                  "/predict;x", "/health/", "/v1/reviews/.../claim", "/c:/v1", "/v1/a:b"])
def test_the_api_knows_which_paths_streamlit_refuses(path: str) -> None:
    """The middleware's rule is Streamlit's (if Streamlit changes it, this fails and the rule follows)."""
    from streamlit.path_security import is_unsafe_path_pattern

    from nsfw_core.http.routing import streamlit_refuses

    relative = path.lstrip("/")
    refused = path.startswith(("//", "\\\\")) or bool(relative and is_unsafe_path_pattern(relative))
    assert streamlit_refuses(path) == refused
