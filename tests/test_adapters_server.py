"""Issue 26 end to end: ``python -m nsfw_core adapter ...`` writes where real servers (``python app.py``) read, and
every replica judges with the published adapter within 2 s, and with the base model again after a rollback.

The policy is tests/helpers/policy.py's (block striped pictures); the image sent is one the adapter never saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.appserver import AppServer
from tests.helpers.paths import COMPILED_DIR, ROOT
from tests.helpers.policy import striped, write_set

PNG = {"Content-Type": "image/png"}
UNSEEN = striped(777_777)

pytestmark = pytest.mark.slow


def cli(env: dict[str, str], *argv: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NSFW_")}
    environ.update(NSFW_COMPILED_DIR=COMPILED_DIR, **env)
    done = subprocess.run([sys.executable, "-m", "nsfw_core", *argv], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def until(server: AppServer, want: dict[str, Any] | None, limit: float, since: float) -> float:
    """Seconds from ``since`` to the start of the first request whose answer names adapter ``want``."""
    while True:
        started = time.monotonic()
        reply = server.request("POST", "/predict?detail=1", body=UNSEEN, headers=PNG)
        assert reply.status == 200, reply
        if reply.json().get("adapter") == want:
            return started - since
        assert started - since < limit, reply.json()
        time.sleep(0.05)


def test_the_cli_trains_and_publishes_where_the_server_reads(tmp_path: Path) -> None:
    server = AppServer(tmp_path / "server")
    env = {"NSFW_DATA_DIR": str(server.data_dir)}  # the same data folder: the same SQLite database
    try:
        manifest = write_set(tmp_path / "set", 25, 25)
        report = cli(env, "adapter", "train", str(manifest), "--name", "stripes")
        assert report["publishable"] and report["report"]["held_out"]["adapter"]["auc"]["value"] > 0.95
        server.wait()
        before = server.request("POST", "/predict?detail=1", body=UNSEEN, headers=PNG).json()
        assert "adapter" not in before
        cli(env, "adapter", "publish", "stripes")
        assert until(server, {"name": "stripes", "version": 1}, 2.0, time.monotonic()) < 2.0
        after = server.request("POST", "/predict?detail=1", body=UNSEEN, headers=PNG).json()
        assert after["verdict"] == "adult" and after["scores"] == before["scores"]
        plain = server.request("POST", "/predict", body=UNSEEN, headers=PNG)
        assert json.loads(plain.body) == before["scores"]  # the plain answer: the five base scores, as always
    finally:
        server.stop()


def test_every_replica_uses_the_published_adapter_within_two_seconds(postgres_url, tmp_path: Path) -> None:
    env = {"NSFW_DATABASE_URL": postgres_url}
    a, b = AppServer(tmp_path / "a", **env), AppServer(tmp_path / "b", **env)
    try:
        manifest = write_set(tmp_path / "set", 25, 25)
        cli({**env, "NSFW_DATA_DIR": str(tmp_path / "cli")}, "adapter", "train", str(manifest), "--name", "stripes")
        a.wait(), b.wait()
        for server in (a, b):
            assert "adapter" not in server.request("POST", "/predict?detail=1", body=UNSEEN, headers=PNG).json()
        cli({**env, "NSFW_DATA_DIR": str(tmp_path / "cli")}, "adapter", "publish", "stripes")
        published = time.monotonic()
        for server in (a, b):
            assert until(server, {"name": "stripes", "version": 1}, 2.0, published) < 2.0
        cli({**env, "NSFW_DATA_DIR": str(tmp_path / "cli")}, "adapter", "rollback")
        rolled_back = time.monotonic()
        for server in (a, b):
            assert until(server, None, 2.0, rolled_back) < 2.0
    finally:
        a.stop()
        b.stop()
