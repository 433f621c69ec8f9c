"""POST /v1/explain on the real server (``python app.py``): an explanation whose client goes away is cancelled, its
passes not yet run never run, and the server goes on serving."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from nsfw_core.inference import explain
from tests.helpers.appserver import app_server
from tests.helpers.paths import REFERENCE

pytestmark = pytest.mark.slow

HOUSE = (REFERENCE / "house.jpg").read_bytes()
GRID = 16  # 257 passes: long enough to leave midway on any machine


def _batcher(server) -> dict[str, Any]:
    reply = server.health()
    assert reply.status == 200, reply
    batcher: dict[str, Any] = reply.json()["batcher"]
    return batcher


def test_an_explanation_is_cancelled_when_its_client_goes_away(tmp_path):
    with app_server(tmp_path, NSFW_EXPLAIN_GRID=str(GRID)) as server:
        passes = explain.passes(GRID)
        before = _batcher(server)["items"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                         + f"Content-Length: {len(HOUSE)}\r\nX-Request-ID: gone-1\r\n\r\n".encode() + HOUSE)
            deadline = time.monotonic() + 60
            while _batcher(server)["items"] == before:  # the explanation's passes have started
                assert time.monotonic() < deadline, "the explanation never started"
                time.sleep(0.02)
        # the client is gone: the server notices within its poll, and what it had not run never runs
        deadline = time.monotonic() + 30
        settled, last = 0, -1
        while settled < 10 and time.monotonic() < deadline:
            stats = _batcher(server)
            settled = settled + 1 if stats["items"] == last and stats["waiting"] == 0 else 0
            last = stats["items"]
            time.sleep(0.1)
        ran = last - before
        assert 0 < ran < passes // 2, f"{ran} of {passes} passes ran after the client left"
        # the server answers the next one in full
        reply = server.request("POST", "/v1/explain", body=HOUSE, headers={"Content-Type": "image/jpeg"},
                               timeout=120)
        assert reply.status == 200 and reply.json()["passes"] == passes
        assert _batcher(server)["items"] - before == ran + passes
        log = server.new_log()
        assert "client_closed_request" in log and "499" in log, log[-2000:]
        assert "Traceback" not in log
