"""What reviewers remember must not be a way in (issue 29), each attack against a real ``python app.py`` with
two API keys, the review page run headless (AppTest) on the server's own database:

1. the bytes decided are the bytes remembered: a URL item keeps the bytes that were classified, so a server
   that answers the review page with another picture is never asked again; an item without kept bytes whose
   URL now serves another picture is not shown, and its decision is remembered for nothing;
2. a look-alike inherits "safe" only when the model sees it alike: the stand-in's detail over a decided house's
   shading (a PDQ match at 16 bits, porn 0.67: "unknown") stays unknown and goes to review with the match
   shown to the reviewer, while a re-encoded copy of the house is still cleared;
3. no oracle: answers carry no distance and no ids of other clients' items; review ids are unguessable and
   GET /v1/reviews/{id} answers only the key that got the id, never who decided;
4. the human queue is a budget: NSFW_REVIEW_QUOTA items per key and hour, and a decision on an item queued
   only by the request's own thresholds protects only that key.

The stand-in (tests/fixtures/lookalike/standin.png) is a synthetic picture the model scores porn 0.99 (made by
bench/lookalikes.py's seeded search: the repository has no adult image).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from nsfw_core.state.db import open_pool
from nsfw_core.state.migrations import KNOWN_TABLE
from nsfw_core.state.review import ReviewQueue
from tests.helpers.appserver import AppServer, Reply, app_server
from tests.helpers.edits import detail_over_shading, edited_copies
from tests.helpers.pages import new_context
from tests.helpers.paths import REFERENCE, ROOT
from tests.helpers.servers import LocalServer, RouteHandler, image, serve
from tests.helpers.signin import REVIEWER, signed_in

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")]

PAGE = ROOT / "pages" / "review.py"
HOUSE = (ROOT / "data/demo/photos/nsfwjs_house.jpg").read_bytes()  # safe 0.992: unknown under safe 0.995
SMILE = (REFERENCE / "smile.jpg").read_bytes()
STANDIN = (ROOT / "tests/fixtures/lookalike/standin.png").read_bytes()
KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"
TICKET = re.compile(r"rv_[A-Za-z0-9_-]{22}")


def classify(server: AppServer, key: str, data: bytes | None = None, url: str | None = None,
             thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"image": {"url": url} if url is not None else
                            {"base64": base64.b64encode(data or b"").decode()}}
    if thresholds is not None:
        body["thresholds"] = thresholds
    reply = server.request("POST", "/v1/classify", json.dumps(body).encode(),
                           {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    assert reply.status == 200, reply
    return dict(reply.json())


def get_review(server: AppServer, key: str, review_id: Any) -> Reply:
    return server.request("GET", f"/v1/reviews/{review_id}", headers={"Authorization": f"Bearer {key}"})


def until_source(server: AppServer, key: str, data: bytes, source: str, **kw: Any) -> dict[str, Any]:
    """The answer once its verdict_source is ``source`` (the servers' copy of decisions refreshes within ~1 s)."""
    deadline = time.monotonic() + 10
    while True:
        body = classify(server, key, data, **kw)
        if body["verdict_source"] == source or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def remembered(data_dir: Path) -> list[tuple[Any, ...]]:
    pool = open_pool(None, data_dir)
    try:
        with pool.transaction(write=False) as tx:
            return tx.run(f"SELECT sha256, verdict, review_id, audience FROM {KNOWN_TABLE} WHERE op = 'add'")
    finally:
        pool.close()


def review_page(monkeypatch: pytest.MonkeyPatch, data_dir: Path, allow: str = "") -> AppTest:
    """The review page on the server's database (a reviewer signed in)."""
    for name in ("NSFW_DATABASE_URL", "NSFW_REVIEW_STORE_UPLOADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NSFW_DATA_DIR", str(data_dir))
    if allow:
        monkeypatch.setenv("NSFW_ALLOW_PRIVATE_HOSTS", allow)
    new_context()
    at = signed_in(AppTest.from_file(str(PAGE), default_timeout=60), REVIEWER).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def server(tmp_path):
    with serve() as images:
        with app_server(tmp_path, NSFW_API_KEYS=f"{KEY_A},{KEY_B}", NSFW_SAFE_THRESHOLD="0.995",
                        NSFW_ALLOW_PRIVATE_HOSTS=images.netloc, NSFW_REVIEW_QUOTA="4",
                        NSFW_REVIEW_STORE_UPLOADS="true") as app:
            app.images = images  # type: ignore[attr-defined]
            yield app
    new_context()


# ---------------------------------------------------------------- 1. the bytes decided are the bytes remembered


def test_the_reviewer_sees_the_classified_bytes_and_only_they_are_remembered(server, monkeypatch):
    images: LocalServer = server.images
    served: list[bytes] = []

    def switching(handler: RouteHandler) -> None:  # the image to the API, a harmless one to anyone after
        body = HOUSE if not served else SMILE
        served.append(body)
        image(body, "image/jpeg")(handler)

    url = images.route("/p.jpg", switching)
    first = classify(server, KEY_A, url=url)
    assert first["verdict"] == "unknown" and TICKET.fullmatch(first["review_id"])
    house_sha = hashlib.sha256(HOUSE).hexdigest()
    assert first["sha256"] == house_sha
    with ReviewQueue(data_dir=server.data_dir) as queue:
        item = queue.get(queue.ticket(first["review_id"])[0])  # type: ignore[index]
        assert item is not None and item.image == HOUSE  # a URL item keeps the bytes that were classified

    at = review_page(monkeypatch, server.data_dir, images.netloc)
    at.toggle(key=f"reveal_{item.id}").set_value(True).run()
    assert not at.error
    assert len(served) == 1  # the page showed the stored bytes; the URL was not fetched again
    at = click(at, "label_safe")
    assert [(sha, verdict) for sha, verdict, _, _ in remembered(server.data_dir)] == [(house_sha, "safe")]

    # an item queued before URL bytes were kept (no bytes), whose URL now serves another picture: not shown,
    # and its decision remembered for nothing
    with ReviewQueue(data_dir=server.data_dir) as queue:
        old = queue.enqueue(house_sha, url, first["scores"], "MobileNetV2Mid", "unknown")
        assert queue.get(old).image is None  # type: ignore[union-attr]
    at = review_page(monkeypatch, server.data_dir, images.netloc)
    assert at.session_state["review_current"][0] == old
    assert len(served) == 2 and served[1] == SMILE
    assert any("other bytes than the image that was classified" in e.value for e in at.error)
    assert not at.image  # nothing shown
    at = click(at, "label_safe")
    with ReviewQueue(data_dir=server.data_dir) as queue:
        assert queue.get(old).decision == "safe"  # type: ignore[union-attr]  # recorded
    assert [review_id for _, _, review_id, _ in remembered(server.data_dir)] == [item.id]  # not remembered
    # the reviewer saw the house: its exact bytes get the house's decision, for the other key too
    assert until_source(server, KEY_B, HOUSE, "review")["verdict"] == "safe"


# ---------------------------------------------------------------- 2 and 3. look-alikes, no oracle


def test_a_lookalike_inherits_safe_only_when_the_model_sees_it_alike(server, monkeypatch):
    decided = classify(server, KEY_A, HOUSE)
    assert decided["verdict"] == "unknown"
    with ReviewQueue(data_dir=server.data_dir) as queue:
        item_id = queue.ticket(decided["review_id"])[0]  # type: ignore[index]
        queue.decide(item_id, "alice@example.com", "safe", seen=hashlib.sha256(HOUSE).hexdigest())
    pool = open_pool(None, server.data_dir)
    try:  # issue 26: the decision keeps the decided image's embedding (from its request), for the look-alike rule
        with pool.transaction(write=False) as tx:
            kept = tx.run(f"SELECT embedding, model_version FROM {KNOWN_TABLE} WHERE op = 'add' AND review_id = ?",
                          (item_id,))
    finally:
        pool.close()
    assert len(kept) == 1 and len(base64.b64decode(kept[0][0])) == 2 * 1792 and kept[0][1]

    # a re-encoded copy: the model sees it alike (its scores and its embedding), it is cleared, and the answer
    # names no distance and no ids
    copy = until_source(server, KEY_B, edited_copies(HOUSE)["jpeg q70"], "review")
    assert copy["verdict"] == "safe" and copy["match"] == {"source": "review", "by": "pdq", "label": "safe"}

    # the stand-in's detail over the house's shading: PDQ finds the house, the model says porn 0.67
    blend = detail_over_shading(HOUSE, STANDIN, radius=3)
    attack = classify(server, KEY_B, blend)
    assert attack["scores"]["porn"] > 0.6, attack["scores"]
    assert (attack["verdict"], attack["verdict_source"]) == ("unknown", "model")  # was "safe" by "review"
    assert "match" not in attack and TICKET.fullmatch(attack["review_id"])
    text = json.dumps(attack)
    assert "distance" not in text and "entry_id" not in text and decided["review_id"] not in text
    # queued, with the match shown to the reviewer
    with ReviewQueue(data_dir=server.data_dir) as queue:
        queued = queue.get(queue.ticket(attack["review_id"])[0])  # type: ignore[index]
        assert queued is not None and queued.matched is not None
        assert json.loads(queued.matched)["review_id"] == item_id
    at = review_page(monkeypatch, server.data_dir)
    for _ in range(3):  # the copy may have been queued before the servers' copy of decisions refreshed: skip it
        if at.session_state["review_current"][0] == queued.id:
            break
        at = click(at, "skip")
    assert at.session_state["review_current"][0] == queued.id
    assert any("Looks like review item" in w.value and "the model sees it differently" in w.value
               for w in at.warning)

    # no oracle through the review ids: the other key cannot read A's item, ids are not numbers, no reviewer
    assert get_review(server, KEY_B, decided["review_id"]).error(404, "not_found")
    assert get_review(server, KEY_B, item_id).error(404, "not_found")
    assert get_review(server, KEY_A, item_id).error(404, "not_found")
    mine = get_review(server, KEY_A, decided["review_id"]).json()
    assert mine["status"] == "decided" and mine["label"] == "safe" and "decided_by" not in mine
    assert "alice" not in json.dumps(mine)


# ---------------------------------------------------------------- 4. the human queue is a budget


def test_the_review_queue_is_a_budget_per_key(server):
    widen = {"safe": 1.0}  # every image not adult is "unknown" under this request's thresholds
    # six images safe under the thresholds in force (safe score 0.9976 to 0.99998 >= 0.995): only the request's
    # own thresholds make them "unknown"
    images = [ROOT / "data/demo" / n for n in ("drawings/nsfwjs_logo.jpg", "drawings/pillow_flower.jpg",
                                                "drawings/pillow_landscape.jpg", "drawings/pillow_smiley.jpg",
                                                "photos/nsfwjs_glasses.jpg", "photos/skimage_coffee.jpg")]
    body = {"items": [{"id": p.name, "image": {"base64": base64.b64encode(p.read_bytes()).decode()}}
                      for p in images], "thresholds": widen}
    reply = server.request("POST", "/v1/classify/batch", json.dumps(body).encode(),
                           {"Content-Type": "application/json", "Authorization": f"Bearer {KEY_A}"})
    results = reply.json()["results"]
    assert [r["verdict"] for r in results] == ["unknown"] * 6
    assert all(r["safe_score"] >= 0.995 for r in results)  # safe under the thresholds in force
    queued = [r for r in results if r["review_id"] is not None]
    refused = [r for r in results if r["review_id"] is None]
    assert len(queued) == 4 and len(refused) == 2  # NSFW_REVIEW_QUOTA=4 per key and hour
    assert all("NSFW_REVIEW_QUOTA=4" in r["review_error"] for r in refused)
    with ReviewQueue(data_dir=server.data_dir) as queue:
        assert queue.counts()["total"] == 4
        # the other key has a budget of its own
        other = classify(server, KEY_B, SMILE, thresholds=widen)
        assert other["review_id"] is not None
        # a decision on an item queued only by A's own thresholds protects only A
        item = queue.get(queue.ticket(queued[0]["review_id"])[0])  # type: ignore[index]
        assert item is not None and item.audience != ""
        data = next(p.read_bytes() for p in images if p.name == queued[0]["id"])
        queue.decide(item.id, "bob", "safe", seen=hashlib.sha256(data).hexdigest())
    assert until_source(server, KEY_A, data, "review", thresholds=widen)["verdict"] == "safe"
    for_b = classify(server, KEY_B, data, thresholds=widen)
    assert (for_b["verdict"], for_b["verdict_source"]) == ("unknown", "model")
