"""The reviewer API and the evaluation against real servers (``python app.py``), issue 25.

- One server on the SQLite default, every automatic verdict audited (NSFW_AUDIT_RATE=1): the clients'
  answers are unchanged; reviewer keys claim, decide and undo, naming items by their unguessable review
  ids (the client's own for an item it queued; the queue's numbers are 404); an audit item never shows the
  model's verdict or scores (claim, undo) and no client can read it (``GET /v1/reviews/{id}``); a key is
  recorded as its id, never itself (answers, log, database), and shown to reviewer keys, never to the
  client key; client keys and strangers are refused; ``GET /v1/evaluation`` counts it all; decisions made
  on the bytes the API handed are remembered (a copy gets them), for every client when it was an audit.
- Double review through the API: the second key's disagreement goes to the admin key, with the votes.
- A refused look-alike (issue 29: PDQ finds a remembered decision, the model sees the image differently) is
  claimed with the ``match`` the Review page shows: the decided item's review id and hash, its label, the
  distance; an audit item never carries one (blind).
- Two servers on one PostgreSQL, four reviewer keys claiming and deciding at once through both: every
  item is decided exactly once, by the key that claimed it; an undo through the other server works; the
  traffic counted by one server is in the other's evaluation.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nsfw_core.http.contract import Claim
from nsfw_core.http.reviews import claimed, key_id, stored_match
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review.queue import TICKET_RE
from tests.helpers.appserver import AppServer, Reply, app_server
from tests.helpers.edits import detail_over_shading
from tests.helpers.paths import REFERENCE, ROOT

pytestmark = pytest.mark.slow

HOUSE = (REFERENCE / "house.jpg").read_bytes()  # safe score 0.993: "safe" (automatic, audited at rate 1)
SMILE = (REFERENCE / "smile.jpg").read_bytes()  # safe score 0.962: "unknown" with a safe threshold of 0.97
CLIENT = "client-key-0123456789"
OTHER = "other-client-key-0123456789"  # a second client: an audit item's decision protects it too
R1, R2, R3, R4 = (f"reviewer-key-{i}-0123456789" for i in range(1, 5))
ADMIN = "admin-key-0123456789abc"
ENV = {"NSFW_AUDIT_RATE": "1", "NSFW_SAFE_THRESHOLD": "0.97", "NSFW_API_KEYS": f"{CLIENT},{OTHER}",
       "NSFW_REVIEWER_API_KEYS": ",".join((R1, R2, R3, R4)), "NSFW_ADMIN_API_KEYS": ADMIN}


def call(server: AppServer, method: str, path: str, key: str | None = None, body: Any = None) -> Reply:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    return server.request(method, path, body=data, headers=headers)


def classify(server: AppServer, image: bytes, key: str = CLIENT) -> dict[str, Any]:
    reply = server.request("POST", "/predict?detail=1", body=image,
                           headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {key}"})
    assert reply.status == 200, reply
    answer: dict[str, Any] = reply.json()
    return answer


def variants(image: bytes, start: int, count: int) -> list[bytes]:
    """Copies that decode the same but have their own sha256 (a byte after the JPEG's end)."""
    return [image + bytes([0]) * (i + 1) for i in range(start, start + count)]


def claim(server: AppServer, key: str) -> dict[str, Any] | None:
    reply = call(server, "POST", "/v1/reviews/claim", key)
    assert reply.status == 200, reply
    item: dict[str, Any] | None = reply.json()["item"]
    return item


def held(server: AppServer, key: str) -> dict[str, Any]:
    """The item a claim gave ``key`` (there must be one)."""
    item = claim(server, key)
    assert item is not None
    return item


def assert_blind(item: dict[str, Any], raw: bytes | None = None) -> None:
    """An audit item shows neither the model's verdict nor its scores nor its model."""
    assert item["kind"] == "audit"
    assert not {"verdict", "scores", "model"} & set(item), item.keys()
    if raw is not None:
        assert b"scores" not in raw and b"verdict" not in raw and b"neutral" not in raw


# ---------------------------------------------------------------- one server, SQLite


def test_reviewer_api_on_one_server_with_sqlite(tmp_path: Path) -> None:
    with app_server(tmp_path, **ENV) as server:
        safe = [classify(server, img) for img in variants(HOUSE, 0, 6)]
        unknown = [classify(server, img) for img in variants(SMILE, 0, 3)]
        # the clients' answers are unchanged: an audited "safe" carries no review id
        assert all(r["verdict"] == "safe" and "review_id" not in r and "review_error" not in r for r in safe)
        assert all(r["verdict"] == "unknown" and TICKET_RE.match(r["review_id"]) for r in unknown)

        call(server, "POST", "/v1/reviews/claim").error(401, "unauthorized")
        call(server, "POST", "/v1/reviews/claim", CLIENT).error(403, "forbidden")
        call(server, "POST", "/v1/reviews/claim", "not-a-key-at-all-here").error(401, "unauthorized")
        call(server, "GET", "/v1/evaluation", CLIENT).error(403, "forbidden")

        seen: dict[str, dict[str, Any]] = {}  # by review id, in the order claimed
        while True:
            reply = call(server, "POST", "/v1/reviews/claim", R1)
            item = reply.json()["item"]
            if item is None:
                break
            assert TICKET_RE.match(item["id"]), item["id"]
            seen[item["id"]] = item
            if item["kind"] == "audit":
                assert_blind(item, reply.body)
                assert item["image"]["media_type"] == "image/jpeg" and item["image"]["base64"]
                label = "porn" if len([i for i in seen.values() if i["kind"] == "audit"]) == 1 else "neutral"
            else:
                assert item["verdict"] == "unknown" and set(item["scores"]) == {
                    "drawings", "hentai", "neutral", "porn", "sexy"}
                label = "neutral"
            decided = call(server, "POST", f"/v1/reviews/{item['id']}/decision", R1, {"label": label})
            assert decided.status == 200, decided
            assert decided.json()["outcome"] == "decided"
            assert decided.json()["review"]["id"] == item["id"]
            assert decided.json()["review"]["decided_by"] == key_id(R1)  # a reviewer key is told who decided
        assert Counter(i["kind"] for i in seen.values()) == {"audit": 6, "review": 3}
        audit_ids = [i for i, item in seen.items() if item["kind"] == "audit"]
        # a review item is named by the id its client got: the client's and the reviewer API's are one
        assert {i for i, item in seen.items() if item["kind"] == "review"} == {r["review_id"] for r in unknown}

        # the client reads its items without who decided; an audit item is no client's (404), and blind anyway
        mine = call(server, "GET", f"/v1/reviews/{unknown[0]['review_id']}", CLIENT)
        assert mine.status == 200 and mine.json()["label"] == "neutral" and "decided_by" not in mine.json()
        assert key_id(R1).encode() not in mine.body
        call(server, "GET", f"/v1/reviews/{audit_ids[0]}", CLIENT).error(404, "not_found")
        # deciding it again is a conflict, whichever key
        call(server, "POST", f"/v1/reviews/{audit_ids[0]}/decision", R2, {"label": "safe"}).error(409,
                                                                                                "review_conflict")
        call(server, "POST", f"/v1/reviews/{audit_ids[0]}/decision", R2, {"label": "maybe"}).error(
            400, "invalid_request")
        call(server, "POST", f"/v1/reviews/{audit_ids[0]}/decision", CLIENT, {"label": "safe"}).error(
            403, "forbidden")  # a client key never acts on an item, even with its id
        # the queue's own numbers, and ids no one was given, name nothing
        for bad in ("1", "999999", "rv_" + "A" * 22, "rv_short"):
            call(server, "POST", f"/v1/reviews/{bad}/decision", R2, {"label": "safe"}).error(404, "not_found")


        # undo: R1's latest decision comes back to R1, blind if it is an audit item, and can be decided again
        last = list(seen)[-1]
        undone = call(server, "POST", "/v1/reviews/undo", R1)
        item = undone.json()["item"]
        assert item["id"] == last and item["lease_until"]
        if item["kind"] == "audit":
            assert_blind(item, undone.body)
        else:
            assert call(server, "GET", f"/v1/reviews/{last}", CLIENT).json()["status"] == "claimed"
        refused = call(server, "POST", f"/v1/reviews/{last}/decision", R2, {"label": "safe"})
        body = refused.error(409, "review_conflict")  # named by its review id, never the queue's number
        assert body["review_id"] == last and "item_id" not in body and last in body["message"], body
        again = call(server, "POST", f"/v1/reviews/{last}/decision", R1, {"label": "sexy"})
        assert again.json()["review"]["label"] == "sexy"
        assert call(server, "POST", "/v1/reviews/undo", R2).json() == {"item": None}

        # the evaluation: 6 automatic "safe" audited, 1 overturned (porn)
        report = call(server, "GET", "/v1/evaluation", R2)
        assert report.status == 200, report
        body = report.json()
        safe_block = body["automatic"]["safe"]
        overturned = 1 + (last in audit_ids)  # the undone item was relabelled sexy
        assert (safe_block["audited"], safe_block["overturned"]) == (6, overturned)
        assert safe_block["precision"] == pytest.approx((6 - overturned) / 6)
        assert safe_block["decisions"] == 6 and body["unknown"]["decisions"] == 3
        assert call(server, "GET", "/v1/evaluation?since=2026-13-01", R2).error(400, "invalid_request")
        assert call(server, "GET", "/v1/evaluation?since=2026-12-01&until=2026-11-01", R2).error(
            400, "invalid_request")
        admin_view = call(server, "GET", "/v1/evaluation?since=2000-01-01&until=2000-01-02", ADMIN).json()
        assert admin_view["automatic"]["safe"]["audited"] == 0 and admin_view["missing"]

        # remembered: a decision on the bytes the API handed; an audit item's protects every client (OTHER
        # never sent it). Last: until the server has read the decision (every 0.5 s) a copy is audited again
        deadline = time.monotonic() + 30
        while True:
            copy = classify(server, variants(HOUSE, 0, 1)[0], OTHER)  # an audited image (all six look alike)
            if copy["verdict_source"] == "review" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert copy["verdict_source"] == "review" and copy["match"]["source"] == "review", copy
        log = server.new_log()

    # a key is recorded as its id: never the key itself, in the database or the log
    with sqlite3.connect(server.data_dir / "review.sqlite") as db:
        rows = db.execute("SELECT decided_by, claimed_by FROM review_items").fetchall()
    assert {r[0] for r in rows} <= {key_id(R1)} | {None} and all(r[1] is None for r in rows)
    for key in (R1, R2, ADMIN, CLIENT, OTHER):
        assert key not in log
        with sqlite3.connect(server.data_dir / "review.sqlite") as db:
            assert not any(key in json.dumps(row) for row in db.execute("SELECT * FROM known_images"))


def test_double_review_through_the_api_escalates_a_disagreement_to_the_admin_key(tmp_path: Path) -> None:
    with app_server(tmp_path, **{**ENV, "NSFW_AUDIT_RATE": "0", "NSFW_DOUBLE_REVIEW_RATE": "1"}) as server:
        review_id = classify(server, SMILE)["review_id"]
        first = held(server, R1)
        assert first["id"] == review_id
        vote = call(server, "POST", f"/v1/reviews/{review_id}/decision", R1, {"label": "porn"}).json()
        assert vote["outcome"] == "second_review" and vote["review"]["status"] == "pending"
        assert claim(server, R1) is None  # not the same key twice
        assert held(server, R2)["id"] == review_id
        second = call(server, "POST", f"/v1/reviews/{review_id}/decision", R2, {"label": "neutral"}).json()
        assert second["outcome"] == "escalated"
        assert claim(server, R3) is None  # only an admin gets it
        call(server, "POST", f"/v1/reviews/{review_id}/decision", R3, {"label": "safe"}).error(409, "review_conflict")
        disputed = held(server, ADMIN)
        assert disputed["id"] == review_id and disputed["escalated"] is True
        assert sorted(v["label"] for v in disputed["votes"]) == ["neutral", "porn"]
        assert {v["reviewer"] for v in disputed["votes"]} == {key_id(R1), key_id(R2)}  # shown to the admin key
        final = call(server, "POST", f"/v1/reviews/{review_id}/decision", ADMIN, {"label": "safe"}).json()
        assert final["outcome"] == "decided" and final["review"]["decided_by"] == key_id(ADMIN)
        agreement = call(server, "GET", "/v1/evaluation", ADMIN).json()["agreement"]
        assert (agreement["items"], agreement["disagreed"], agreement["escalated_open"]) == (1, 1, 0)


# ---------------------------------------------------------------- two replicas, PostgreSQL


def test_two_replicas_on_postgresql_decide_each_item_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    env = {**ENV, "NSFW_DATABASE_URL": postgres_url}
    servers = [AppServer(tmp_path / "a", **env), AppServer(tmp_path / "b", **env)]
    try:
        a, b = (s.wait() for s in servers)
        for img in variants(HOUSE, 0, 12):
            assert "review_id" not in classify(a, img)  # audited, answer unchanged
        for img in variants(SMILE, 0, 12):
            assert TICKET_RE.match(classify(b, img)["review_id"])

        decided: dict[str, list[str]] = {}  # review ids, by the key that decided them
        leaks: list[str] = []
        errors: list[str] = []

        def review(server: AppServer, key: str) -> None:
            mine: list[str] = []
            decided[key] = mine
            try:
                while True:
                    reply = call(server, "POST", "/v1/reviews/claim", key)
                    item = reply.json()["item"]
                    if item is None:
                        return
                    if item["kind"] == "audit" and ({"verdict", "scores", "model"} & set(item)
                                                    or b"scores" in reply.body):
                        leaks.append(reply.body.decode()[:200])
                    answer = call(server, "POST", f"/v1/reviews/{item['id']}/decision", key, {"label": "neutral"})
                    if answer.status != 200:
                        errors.append(f"{key[:14]} {item['id']}: {answer.status} {answer.body[:200]!r}")
                    else:
                        mine.append(item["id"])
            except Exception as exc:  # reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=review, args=(server, key))
                   for server, key in ((a, R1), (a, R2), (b, R3), (b, R4))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and not leaks, (errors, leaks)
        all_ids = [i for ids in decided.values() for i in ids]
        assert len(all_ids) == 24 and len(set(all_ids)) == 24, Counter(all_ids).most_common(3)
        assert sum(1 for ids in decided.values() if ids) > 1  # the work was shared

        import psycopg

        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute("SELECT public_id, status, decided_by, kind FROM review_items").fetchall()
        by_id = {i: key for key, ids in decided.items() for i in ids}
        assert len(rows) == 24
        for item_id, status, decided_by, _ in rows:  # once each, by the key that claimed and decided it
            assert status == "decided" and decided_by == key_id(by_id[item_id])
        assert Counter(kind for *_, kind in rows) == {"audit": 12, "review": 12}

        # an undo through the other replica: R1 decided through A, undoes through B
        latest = decided[R1][-1]
        undone = call(b, "POST", "/v1/reviews/undo", R1).json()["item"]
        assert undone["id"] == latest
        assert call(a, "POST", f"/v1/reviews/{latest}/decision", R1, {"label": "porn"}).json()["outcome"] == "decided"

        # the traffic one replica counted is in the other's evaluation (flushed every few seconds)
        deadline = time.monotonic() + 30
        while True:
            report = call(a, "GET", "/v1/evaluation", R2).json()
            if report["unknown"]["decisions"] == 12 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert report["unknown"]["decisions"] == 12 and report["automatic"]["safe"]["decisions"] == 12
        assert report["automatic"]["safe"]["audited"] == 12
    finally:
        for s in servers:
            s.stop()


# ---------------------------------------------------------------- a refused look-alike (issue 29)

DEMO_HOUSE = (ROOT / "data/demo/photos/nsfwjs_house.jpg").read_bytes()  # safe 0.992: unknown under safe 0.995
STANDIN = (ROOT / "tests/fixtures/lookalike/standin.png").read_bytes()  # synthetic, porn 0.99 (test_lookalikes)


def classify_v1(server: AppServer, image: bytes, key: str) -> dict[str, Any]:
    reply = call(server, "POST", "/v1/classify", key, {"image": {"base64": base64.b64encode(image).decode()}})
    assert reply.status == 200, reply
    answer: dict[str, Any] = reply.json()
    return answer


def test_a_refused_lookalike_is_claimed_with_its_match(tmp_path: Path) -> None:
    """Issue 29 point 2: an image that fails the look-alike check goes to review "with the match shown to the
    reviewer".  Before, the Review page showed it and the reviewer API did not: a review tool decided the blend
    without knowing it looked like a decided image."""
    env = {**ENV, "NSFW_AUDIT_RATE": "0", "NSFW_SAFE_THRESHOLD": "0.995", "NSFW_REVIEW_STORE_UPLOADS": "true"}
    with app_server(tmp_path, **env) as server:
        house = classify_v1(server, DEMO_HOUSE, CLIENT)
        assert house["verdict"] == "unknown" and TICKET_RE.fullmatch(house["review_id"])
        first = held(server, R1)
        assert first["id"] == house["review_id"] and "match" not in first  # no look-alike: no match
        decided = call(server, "POST", f"/v1/reviews/{first['id']}/decision", R1, {"label": "neutral"})
        assert decided.json()["outcome"] == "decided"  # remembered: the API handed the house's own bytes
        # until the server has read the decision (every 0.5 s) the house's bytes are queued again
        deadline = time.monotonic() + 30
        while classify_v1(server, DEMO_HOUSE, OTHER)["verdict_source"] != "review":
            assert time.monotonic() < deadline, "the decision was never read"
            time.sleep(0.5)

        # the stand-in's detail over the house's shading: PDQ finds the house, the model does not see it alike
        blend = classify_v1(server, detail_over_shading(DEMO_HOUSE, STANDIN, radius=3), OTHER)
        assert (blend["verdict"], blend["verdict_source"]) == ("unknown", "model") and "match" not in blend
        while True:  # the house's copies queued while the decision was being read come first
            reply = call(server, "POST", "/v1/reviews/claim", R2)
            item = reply.json()["item"]
            assert item is not None, "the blend was never claimed"
            if item["id"] == blend["review_id"]:
                break
            assert "match" not in item, item
            call(server, "POST", f"/v1/reviews/{item['id']}/decision", R2, {"label": "neutral"})
        match = item["match"]
        assert match == {"source": "review", "by": "pdq", "label": "neutral", "verdict": "safe",
                         "distance": match["distance"], "review_id": house["review_id"],
                         "sha256": hashlib.sha256(DEMO_HOUSE).hexdigest()}, match
        assert 0 < match["distance"] <= 31  # NSFW_MATCH_DISTANCE
        assert item["kind"] == "review" and item["verdict"] == "unknown" and item["scores"]["porn"] > 0.5
        assert msgspec.json.decode(reply.body, type=Claim).item.match.review_id == house["review_id"]  # type: ignore[union-attr]
        document = call(server, "GET", "/openapi.json").json()["components"]["schemas"]
        assert document["ClaimedItem"]["properties"]["match"] == {"$ref": "#/components/schemas/ClaimedMatch"}
        assert set(document["ClaimedMatch"]["required"]) == {"source", "by", "label", "verdict", "distance"}

        # decided, then undone: back to the key with its match
        call(server, "POST", f"/v1/reviews/{item['id']}/decision", R2, {"label": "porn"})
        back = call(server, "POST", "/v1/reviews/undo", R2).json()["item"]
        assert back["id"] == blend["review_id"] and back["match"] == match
        # the client that queued it is never told (no oracle)
        mine = call(server, "GET", f"/v1/reviews/{blend['review_id']}", OTHER)
        assert mine.status == 200 and b"match" not in mine.body and b"distance" not in mine.body


def test_an_audit_item_never_carries_a_match(tmp_path: Path) -> None:
    """An audit item is reviewed blind: the match is the model's view of it (the model saw it differently), so
    the claimed item leaves it out, as it leaves out the verdict and scores, whatever the queue kept."""
    match = {"source": "review", "by": "pdq", "distance": 20, "label": "safe", "verdict": "safe", "entry_id": 7,
             "review_id": 3}
    with ReviewQueue(data_dir=tmp_path) as queue:
        item_id, ticket = queue.enqueue_for("c1", "a" * 64, "upload:x.jpg", {"drawings": 0.1, "hentai": 0.1,
                                            "neutral": 0.5, "porn": 0.2, "sexy": 0.1}, "MobileNetV2Mid", "unknown",
                                            matched=json.dumps(match))
        item = queue.get(item_id)
    assert item is not None and item.matched
    assert stored_match(item) == match  # a review item: the queue's numbers, named by the API before it answers
    assert "match" in claimed(item, ticket, match={"source": "review", "by": "pdq", "label": "safe",
                                                   "verdict": "safe", "distance": 20})
    audit = dataclasses.replace(item, kind="audit")
    assert stored_match(audit) is None
    assert "match" not in claimed(audit, ticket, match={"source": "review", "by": "pdq", "label": "safe",
                                                        "verdict": "safe", "distance": 20})
    for bad in ("not json", "[1]", json.dumps({**match, "distance": -1}), json.dumps({**match, "by": "sha256"}),
                json.dumps({**match, "label": None})):
        assert stored_match(dataclasses.replace(item, matched=bad)) is None


def test_one_key_holds_at_most_nsfw_review_max_held_items(tmp_path: Path) -> None:
    """Before, a reviewer key could claim item after item without deciding any, holding the whole queue away
    from the other reviewers for NSFW_REVIEW_LEASE_SECONDS; now its claims stop at NSFW_REVIEW_MAX_HELD."""
    with app_server(tmp_path, **{**ENV, "NSFW_REVIEW_MAX_HELD": "2"}) as server:
        for img in variants(SMILE, 0, 4):
            classify(server, img)
        first, second = held(server, R1), held(server, R1)
        refused = call(server, "POST", "/v1/reviews/claim", R1).error(429, "too_many_claims")
        assert (refused["held"], refused["limit"]) == (2, 2)
        assert "NSFW_REVIEW_MAX_HELD" in refused["message"]
        other = held(server, R2)  # the other reviewers still get the rest
        assert other["id"] not in (first["id"], second["id"])
        decided = call(server, "POST", f"/v1/reviews/{first['id']}/decision", R1, {"label": "neutral"})
        assert decided.status == 200, decided
        third = held(server, R1)  # one decided: room for one more
        assert third["id"] not in (first["id"], second["id"], other["id"])
        call(server, "POST", "/v1/reviews/claim", R1).error(429, "too_many_claims")


def test_a_reviewer_key_on_the_client_api_is_403_and_not_a_wrong_key(tmp_path: Path) -> None:
    """The smoke pass: a reviewer key on /v1/classify was 401 'not valid' and counted against
    NSFW_WRONG_KEY_LIMIT, while a client key on the reviewer API is 403 and not counted."""
    with app_server(tmp_path, **{**ENV, "NSFW_WRONG_KEY_LIMIT": "3/m"}) as server:
        for key in (R1, ADMIN, R2, R3, R4):  # five of them: more than the wrong-key limit allows
            for method, path in (("POST", "/v1/classify"), ("GET", "/v1/jobs/job_" + "0" * 32),
                                 ("POST", "/predict/batch")):
                reply = call(server, method, path, key, {"items": []} if method == "POST" else None)
                body = reply.error(403, "forbidden")
                assert "NSFW_API_KEYS" in body["message"], body
        call(server, "POST", "/v1/classify", "not-a-key-at-all-here").error(401, "unauthorized")  # still counted
        assert classify(server, HOUSE)["verdict"] == "safe"  # the right key passes
