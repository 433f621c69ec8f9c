"""Remembered decisions and hash lists shared by replicas: two real servers (``python app.py``) on one
PostgreSQL (issue 17).

Server A queues an image; a reviewer decides it (a :class:`ReviewQueue` in this process: what the review
page does in whichever replica the reviewer uses); within seconds server B, which never saw the image,
gives a re-encoded copy the reviewer's verdict (``verdict_source`` review), and so does A.  A hash list
imported through a third process is used by both the same way.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

from PIL import Image

from nsfw_core.state.db import open_pool
from nsfw_core.state.known import KnownImages, ListEntry
from nsfw_core.state.review import ReviewQueue
from tests.helpers.appserver import AppServer
from tests.helpers.paths import REFERENCE

SMILE = (REFERENCE / "smile.jpg").read_bytes()  # "unknown" with a safe threshold of 0.97: queued
HOUSE = (REFERENCE / "house.jpg").read_bytes()
JPEG = {"Content-Type": "image/jpeg"}


def _reencoded(data: bytes, quality: int = 70) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def detail(server: AppServer, data: bytes) -> dict[str, Any]:
    reply = server.request("POST", "/predict?detail=1", body=data, headers=JPEG)
    assert reply.status == 200, reply
    body: dict[str, Any] = reply.json()
    return body


def until(server: AppServer, data: bytes, source: str, limit: float) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    while True:
        body = detail(server, data)
        if body["verdict_source"] == source:
            return body, time.monotonic() - started
        assert time.monotonic() - started < limit, body
        time.sleep(0.1)


def test_a_decision_made_through_one_process_is_used_by_another(postgres_url, tmp_path: Path) -> None:
    env = {"NSFW_DATABASE_URL": postgres_url, "NSFW_SAFE_THRESHOLD": "0.97", "NSFW_REVIEW_STORE_UPLOADS": "true"}
    a, b = AppServer(tmp_path / "a", **env), AppServer(tmp_path / "b", **env)
    pool = open_pool(postgres_url)
    try:
        a.wait(), b.wait()
        first = detail(a, SMILE)
        assert first["verdict"] == "unknown" and first["verdict_source"] == "model"
        copy = _reencoded(SMILE)
        assert detail(b, copy)["verdict_source"] == "model"  # B has not been told anything
        with ReviewQueue(postgres_url) as queue:
            found = queue.ticket(first["review_id"])
            assert found is not None
            shown = queue.get(found[0]).image  # type: ignore[union-attr]  # what the review page shows
            assert shown == SMILE
            queue.decide(found[0], "alice", "safe", seen=hashlib.sha256(shown).hexdigest())
        on_b, seconds = until(b, copy, "review", 5.0)
        # no distance and no ids in the answer (issue 29); the copy is seen alike by the model, so it is cleared
        assert on_b["verdict"] == "safe" and on_b["match"] == {"source": "review", "by": "pdq", "label": "safe"}
        assert "review_id" not in on_b
        assert seconds < 3.0
        assert until(a, SMILE, "review", 5.0)[0]["match"]["by"] == "sha256"

        # a hash list imported elsewhere: both servers use it
        KnownImages(pool).import_list([ListEntry(hashlib.sha256(HOUSE).hexdigest(), None, "deny", "test")],
                                      by="admin")
        for server in (a, b):
            listed, _ = until(server, HOUSE, "list", 5.0)
            assert listed["verdict"] == "adult" and listed["match"]["label"] == "deny"
    finally:
        pool.close()
        a.stop()
        b.stop()
