"""Audit items, double review, traffic counts and the evaluation over them (issue 25), on SQLite and PostgreSQL.

- An audit item keeps its bytes whatever NSFW_REVIEW_STORE_UPLOADS says, its probability, and is blind in
  what the API and the webhooks show (no model verdict);
- double review: the first vote reopens the item for someone else, agreement decides it, disagreement
  escalates it to an admin (only an admin claims or decides it, first), two concurrent second votes
  decide it once, undo takes back one's own vote;
- traffic counts from two "replicas" add up in the database; a database that is down keeps them;
- the evaluation's figures are the estimators' on exactly the decided items, and say what is missing;
- merged with issue 29: an audit item is the server's sample (no client, no quota spent, its decision
  protects every client), it is remembered only for the bytes the reviewer saw (double review too), an
  item without a review id gets one for the reviewer API; through the API: the reviewer API hands the
  classified bytes and passes what it handed as ``seen``, and who decided is shown to reviewer and admin
  keys, never to a client key.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from nsfw_core.base.errors import BadRequest
from nsfw_core.base.verdict import ActiveThresholds, Thresholds
from nsfw_core.calibration.evaluation import proportion
from nsfw_core.calibration.production import evaluate, gauges
from nsfw_core.state import webhooks
from nsfw_core.state.db import Pool, backend_for
from nsfw_core.state.known import KnownImages
from nsfw_core.state.migrations import OUTBOX_TABLE, TABLE
from nsfw_core.state.review import ReviewConflict, ReviewQueue
from nsfw_core.state.review.audit import AUDIT, AuditPolicy
from nsfw_core.state.review.queue import TICKET_RE, QuotaSpent
from nsfw_core.state.traffic import TrafficCounter, day_of

SCORES = {"drawings": 0.05, "hentai": 0.05, "neutral": 0.1, "porn": 0.6, "sexy": 0.2}
MODEL = "MobileNetV2Mid"
NOW = 1_796_000_000.0  # 2026-11-29


def sha(n: object) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request):
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def q(url, tmp_path, clock):
    queue = ReviewQueue(url, data_dir=tmp_path, clock=clock)
    yield queue
    queue.close()


def add(q: ReviewQueue, n: object, verdict: str = "unknown", **kw) -> int:
    return q.enqueue(sha(n), kw.pop("source", f"https://example.com/{n}.jpg"), kw.pop("scores", SCORES), MODEL,
                     verdict, **kw)


# ---------------------------------------------------------------- audit items


def test_an_audit_item_keeps_its_bytes_and_its_probability_and_is_shown_blind(q):
    jpeg = b"\xff\xd8\xff audit"
    audit_id = add(q, 1, "safe", source="upload", image_bytes=jpeg, kind=AUDIT, probability=0.005)
    review_id = add(q, 2, source="upload", image_bytes=b"\xff\xd8\xff review")
    audit, review = q.get(audit_id), q.get(review_id)
    assert audit.image == jpeg and audit.kind == "audit" and audit.probability == 0.005 and audit.blind
    assert review.image is None and not review.blind  # uploads' bytes only with NSFW_REVIEW_STORE_UPLOADS
    shown = webhooks.review_dict(audit)
    assert shown["kind"] == "audit" and "verdict" not in shown and "safe" not in json.dumps(shown)
    assert webhooks.review_dict(review)["verdict"] == "unknown" and "kind" not in webhooks.review_dict(review)
    q.decision_hooks.append(webhooks.outbox_hook)
    q.decide(audit_id, "r1", "porn")
    with q.pool.transaction(write=False) as tx:
        [(payload,)] = tx.run(f"SELECT payload FROM {OUTBOX_TABLE}")
    event = json.loads(payload)["review"]
    assert event["kind"] == "audit" and event["label"] == "porn" and "verdict" not in event
    [reviewed] = q.reviewed_items()
    assert (reviewed.kind, reviewed.verdict, reviewed.probability, reviewed.weight) == ("audit", "safe", 0.005, 200.0)


def test_an_audit_item_is_the_servers_it_spends_no_quota_and_protects_every_client(q):
    """Sampled by the server, asked for by no client: whoever's request was sampled, the item is queued for no
    client (no ticket of theirs, nothing counted against NSFW_REVIEW_QUOTA) and its decision protects all."""
    for n in range(3):  # three audits of client c1's traffic, its quota 1
        item, ticket = q.enqueue_for("c1", sha(n), "upload", SCORES, MODEL, "safe", image_bytes=b"x%d" % n,
                                     audience="c1", matched='{"label": "safe"}', quota=1, kind=AUDIT,
                                     probability=0.01)
        shown = q.get(item)
        assert (shown.client, shown.audience, shown.matched, shown.kind) == ("", "", None, "audit")
        assert q.ticket(ticket) == (item, "") and shown.public_id == ticket  # the server's id, no client's
    q.enqueue_for("c1", sha("r1"), "upload", SCORES, MODEL, "unknown", quota=1)  # its one review item
    with pytest.raises(QuotaSpent):
        q.enqueue_for("c1", sha("r2"), "upload", SCORES, MODEL, "unknown", quota=1)
    # decided on the bytes the reviewer saw: remembered for everyone (c2 never sent it)
    claimed = q.claim("r1")
    assert claimed is not None and claimed.sha256 == sha(0) and claimed.image == b"x0"  # bytes kept: an audit's
    assert q.decide(claimed.id, "r1", "porn", seen=sha(0)).decision == "porn"
    known = KnownImages(q.pool)
    for client in ("c1", "c2", None):
        match = known.lookup(sha(0), None, client)
        assert match is not None and match.label == "porn", client
    known.close()


def test_a_decision_is_remembered_only_for_the_bytes_seen_under_double_review_too(q, clock):
    known = KnownImages(q.pool)

    def remembered(n: str) -> bool:
        known.refresh()
        return known.lookup(sha(n), None) is not None

    try:
        seen_item = add(q, "seen", reviews=2)
        q.decide(seen_item, "r1", "porn", seen=sha("seen"))  # a vote: nothing decided, nothing remembered
        assert not remembered("seen")
        clock.now += 1
        assert q.decide(seen_item, "r2", "porn", seen=sha("seen")).status == "decided"
        assert remembered("seen")
        unseen = add(q, "unseen", reviews=2)
        q.decide(unseen, "r1", "porn", seen=sha("unseen"))
        clock.now += 1
        # the deciding reviewer was not shown the item's own bytes (other bytes)
        assert q.decide(unseen, "r2", "porn", seen=sha("other")).status == "decided"
        assert not remembered("unseen")
        clock.now += 1
        disputed = add(q, "disputed", reviews=2)
        q.decide(disputed, "r1", "porn", seen=sha("disputed"))
        q.decide(disputed, "r2", "neutral", seen=sha("disputed"))
        assert q.decide(disputed, "boss", "neutral", admin=True).status == "decided"  # without seeing it
        assert not remembered("disputed")
    finally:
        known.close()


def test_exports_hold_no_item_a_reviewer_may_still_be_deciding(q, clock):
    open_audit = add(q, "open", "safe", kind=AUDIT, probability=0.01)
    voted = add(q, "voted", reviews=2)
    q.decide(voted, "r1", "porn")  # one vote of two: still open
    clock.now += 1
    done = add(q, "done", "adult", kind=AUDIT, probability=0.01)
    q.decide(done, "r1", "neutral")
    manifest = q.export_csv()
    assert sha("done") in manifest and sha("open") not in manifest and sha("voted") not in manifest
    assert {q.get(open_audit).status, q.get(voted).status} == {"pending"}


def test_an_item_without_a_review_id_gets_one_for_the_reviewer_api(q):
    item = add(q, 1)
    given = q.get(item).public_id
    assert given is not None and q.public_id(item) == given  # one already: the same
    with q.pool.transaction() as tx:  # an item queued before issue 29 (migration 7) has none
        tx.run(f"UPDATE {TABLE} SET public_id = NULL WHERE id = ?", (item,))
    new = q.public_id(item)
    assert TICKET_RE.match(new) and new != given and q.public_id(item) == new
    assert q.ticket(new) == (item, "")  # bound to no client: GET /v1/reviews answers it to no API key
    assert webhooks.review_dict(q.get(item))["id"] == new  # the webhooks name it the same


def test_enqueue_refuses_what_is_not_an_item(q):
    for kw in ({"kind": "other"}, {"probability": 0.0}, {"probability": 1.5}, {"reviews": 3}):
        with pytest.raises(BadRequest):
            add(q, 1, **kw)


# ---------------------------------------------------------------- double review


def test_two_reviewers_who_agree_decide_an_item(q, clock):
    item = add(q, 1, reviews=2)
    assert q.claim("r1").id == item
    first = q.decide(item, "r1", "porn")
    assert (first.status, first.claimed_by, first.decision) == ("pending", None, None)
    assert q.reviewed_items() == []  # one vote decides nothing, and is not remembered
    assert q.claim("r1") is None  # never the same reviewer twice
    with pytest.raises(ReviewConflict):
        q.decide(item, "r1", "porn")
    clock.now += 5
    assert q.claim("r2").id == item
    second = q.decide(item, "r2", "sexy")
    assert (second.status, second.decision, second.decided_by) == ("decided", "adult", "r2")  # both adult classes
    assert [(v.reviewer, v.label) for v in q.votes(item)] == [("r1", "porn"), ("r2", "sexy")]
    other = add(q, 2, reviews=2)
    q.decide(other, "r1", "neutral")
    assert q.decide(other, "r3", "neutral").decision == "neutral"  # the same label: that label


def test_a_disagreement_goes_to_an_admin_first_and_only_to_an_admin(q, clock):
    older = add(q, 1)
    item = add(q, 2, reviews=2)
    q.decide(item, "r1", "porn")
    escalated = q.decide(item, "r2", "neutral")
    assert (escalated.status, escalated.escalated) == ("pending", True)
    assert q.claim("r3").id == older  # a reviewer never gets it
    q.release(older, "r3")
    with pytest.raises(ReviewConflict, match="an admin decides"):
        q.decide(item, "r3", "safe")
    claimed = q.claim("boss", admin=True)
    assert claimed.id == item and claimed.escalated  # before the older item
    final = q.decide(item, "boss", "safe", admin=True)
    assert (final.status, final.decision, final.decided_by) == ("decided", "safe", "boss")
    assert q.claim("boss", admin=True).id == older


def _vote(q: ReviewQueue, item: int, who: str, barrier: threading.Barrier, results: list[str]) -> None:
    barrier.wait()
    try:
        results.append(q.decide(item, who, "sexy").status)
    except ReviewConflict:
        results.append("conflict")


def test_two_concurrent_second_votes_decide_the_item_once(url, tmp_path, clock):
    queues = [ReviewQueue(url, data_dir=tmp_path, clock=clock) for _ in range(2)]
    try:
        for round_ in range(10):
            item = add(queues[0], round_, reviews=2)
            queues[0].decide(item, "first", "porn")
            barrier, results = threading.Barrier(2), list[str]()
            threads = [threading.Thread(target=_vote, args=(queues[i], item, f"second-{i}", barrier, results))
                       for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(results) == ["conflict", "decided"], results
            assert len(queues[1].votes(item)) == 2
    finally:
        for queue in queues:
            queue.close()


def test_undo_takes_back_ones_own_vote(q, clock):
    item = add(q, 1, reviews=2)
    q.decide(item, "r1", "porn")
    clock.now += 1
    back = q.undo("r1", reclaim=True)
    assert (back.id, back.status, back.claimed_by) == (item, "claimed", "r1") and q.votes(item) == []
    q.decide(item, "r1", "porn")
    clock.now += 1
    assert q.decide(item, "r2", "hentai").status == "decided"
    clock.now += 1
    again = q.undo("r2")  # the second vote undone: the first stays, the decision goes
    assert (again.status, again.decision) == ("pending", None)
    assert [v.reviewer for v in q.votes(item)] == ["r1"] and q.reviewed_items() == []
    assert q.decide(item, "r2", "neutral").escalated  # changed their mind: a disagreement now
    clock.now += 1
    q.decide(item, "boss", "adult", admin=True)
    with pytest.raises(ReviewConflict, match="an admin has decided"):
        q.undo("r2")
    clock.now += 1
    reopened = q.undo("boss", reclaim=True)  # the admin's own decision: the dispute is open again
    assert (reopened.status, reopened.claimed_by, reopened.escalated) == ("claimed", "boss", True)
    assert q.undo("nobody") is None


def test_purge_deletes_the_votes_of_purged_items(q, clock):
    item = add(q, 1, reviews=2)
    q.decide(item, "r1", "porn")
    clock.now += 40 * 86400
    assert q.purge(30) == 1
    assert q.votes(item) == [] and q.undo("r1") is None


# ---------------------------------------------------------------- traffic counts


def test_traffic_counts_of_two_replicas_add_up(url, tmp_path, q):
    pools = [Pool(backend_for(url, tmp_path)) for _ in range(2)]
    counters = [TrafficCounter(pool, prepare=lambda: q, clock=lambda: NOW) for pool in pools]
    try:
        for i, counter in enumerate(counters):
            for _ in range(3 + i):
                counter.observe("safe", "model", {"porn": 0.05, "neutral": 0.95})
            counter.observe("adult", "model", {"porn": 1.0, "neutral": 0.0})
        threads = [threading.Thread(target=c.flush) for c in counters]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert counters[0].pending == 0 and counters[0].flush() == 0
        counts = counters[1].read(NOW - 1, NOW)[day_of(NOW)]
        assert counts["decisions:safe:model"] == 7 and counts["decisions:adult:model"] == 2
        assert counts["score:porn:0"] == 7 and counts["score:porn:9"] == 2 and counts["score:neutral:9"] == 7
        assert counters[0].read(NOW + 86400, NOW + 86400) == {}
    finally:
        for pool in pools:
            pool.close()


def test_traffic_counts_wait_in_memory_while_the_database_is_down(url, tmp_path, q):
    down = {"now": True}

    def prepare() -> None:
        if down["now"]:
            raise RuntimeError("database down")

    counter = TrafficCounter(q.pool, prepare=prepare, clock=lambda: NOW)
    counter.observe("unknown", "model", {"porn": 0.5})
    with pytest.raises(RuntimeError):
        counter.flush()
    counter.observe("unknown", "model", {"porn": 0.5})
    assert counter.pending == 2
    down["now"] = False
    counter.flush()
    assert counter.read()[day_of(NOW)]["decisions:unknown:model"] == 2


# ---------------------------------------------------------------- the evaluation over them


def test_the_evaluation_is_the_estimators_on_the_decided_items(q, clock):
    traffic = TrafficCounter(q.pool, prepare=lambda: q, clock=lambda: NOW)
    for _ in range(400):
        traffic.observe("adult", "model", {"porn": 0.9, "neutral": 0.1})
    for _ in range(1600):
        traffic.observe("safe", "model", {"porn": 0.02, "neutral": 0.98})
    for _ in range(100):
        traffic.observe("unknown", "model", {"porn": 0.5, "neutral": 0.5})
    # adult audited at 10 %: 20 audits, 2 overturned; safe at 1 %: 16 audits, 1 overturned (adult let through)
    labels = [("adult", "porn")] * 18 + [("adult", "neutral")] * 2 + [("safe", "neutral")] * 15 + [("safe", "porn")]
    for n, (verdict, label) in enumerate(labels):
        item = add(q, n, verdict, kind=AUDIT, probability=0.1 if verdict == "adult" else 0.01)
        q.decide(item, "r1", label)
    for n, label in enumerate(["porn"] * 3 + ["neutral"] * 7):
        q.decide(add(q, f"u{n}"), "r1", label)
    add(q, "waiting", "safe", kind=AUDIT, probability=0.01)
    for n, (a, b) in enumerate([("porn", "porn"), ("neutral", "neutral"), ("porn", "neutral")]):
        item = add(q, f"d{n}", reviews=2)
        q.decide(item, "r1", a)
        q.decide(item, "r2", b)
    reference = {"bins": 10, "classes": {"porn": [80, 0, 0, 0, 0, 0, 0, 0, 0, 20],
                                         "neutral": [20, 0, 0, 0, 0, 0, 0, 0, 0, 80]}, "images": 100}
    active = ActiveThresholds(Thresholds(), "database", {"tuned_on": {"score_histograms": reference}}, None, 3)
    policy = AuditPolicy({"adult": 0.1, "safe": 0.01}, double_rate=0.2)
    report = evaluate(q, traffic, active, policy, ("unknown",), since=NOW - 86400, until=NOW + 60, now=NOW + 60)

    adult, safe = report["automatic"]["adult"], report["automatic"]["safe"]
    assert (adult["audited"], adult["overturned"], safe["audited"], safe["overturned"]) == (20, 2, 16, 1)
    expected = proportion([True] * 18 + [False] * 2, [10.0] * 20)
    assert adult["precision"] == pytest.approx(0.9) and adult["ci95"] == pytest.approx(list(expected.ci95), abs=1e-6)
    assert safe["pending"] == 1 and adult["decisions"] == 400 and adult["decisions_per_day"] == 400
    assert adult["wrong_per_day"]["estimate"] == pytest.approx(40.0)  # 10 % of 400 a day
    assert safe["wrong_per_day"]["estimate"] == pytest.approx(100.0)  # 1 in 16 of 1600 a day
    assert report["wrong_per_day"]["estimate"] == pytest.approx(140.0)
    lo, hi = report["wrong_per_day"]["ci95"]
    assert lo < 140 < hi
    unknown = report["unknown"]
    # 10 reviewed once, and the 2 double-reviewed items the reviewers agreed on (the third waits for an admin)
    assert (unknown["reviewed"], unknown["adult"]["n"], unknown["labels"]) == (12, 4, {"neutral": 8, "porn": 4})
    agreement = report["agreement"]
    assert (agreement["items"], agreement["agreed"], agreement["disagreed"], agreement["escalated_open"]) == (3, 2, 1, 1)
    assert agreement["kappa"]["kappa"] == pytest.approx(0.4)  # po 2/3, pe 4/9
    assert report["daily"][-1]["decisions"] == {"adult": 400, "unknown": 100, "safe": 1600}
    drift = report["drift"]["classes"]
    # production: porn 0.02 for 1600 images (bin 0), 0.5 for 100 (bin 5), 0.9 for 400 (bin 9); reference 80/0/20
    assert drift["porn"]["production_images"] == 2100 and drift["porn"]["level"] == "act"
    lo, hi = drift["porn"]["ci95"]
    assert lo <= drift["porn"]["psi"] <= hi
    assert [m for m in report["missing"] if "precision" in m] == []
    named = {(name, tuple(labels.items())) for name, _, labels, _ in gauges(report)}
    assert ("nsfw_automatic_precision", (("verdict", "adult"),)) in named
    assert ("nsfw_score_psi", (("class", "porn"),)) in named


def test_with_nothing_audited_the_evaluation_says_what_is_missing(q):
    traffic = TrafficCounter(q.pool, prepare=lambda: q, clock=lambda: NOW)
    report = evaluate(q, traffic, ActiveThresholds(Thresholds(), "defaults", {}), AuditPolicy({"adult": 0.01}),
                      ("unknown",), now=NOW)
    adult = report["automatic"]["adult"]
    assert adult["precision"] is None and adult["ci95"] is None and adult["wrong_per_day"] is None
    assert report["wrong_per_day"] is None and report["daily"] == []
    text = " ".join(report["missing"])
    assert "audit sampling is on (adult 1 %)" in text and "audit sampling of safe verdicts is off" in text
    assert "Decide about 73" in text and "NSFW_DOUBLE_REVIEW_RATE" in text and "Calibrate page" in text
    assert gauges(report) == [("nsfw_audited_items", "Audited automatic decisions decided by a reviewer (the last "
                                                    "7 days)", {"verdict": v}, 0.0) for v in ("adult", "safe")]


def test_a_database_that_never_was_migrated_still_works(tmp_path: Path):
    """The traffic table arrives with the queue's migrations: a counter whose prepare opens the queue works
    on a brand-new database."""
    pool = Pool(backend_for(None, tmp_path))
    opened: list[ReviewQueue] = []
    def prepare() -> None:
        if not opened:
            opened.append(ReviewQueue(None, data_dir=tmp_path, pool=pool))

    counter = TrafficCounter(pool, prepare=prepare)
    counter.observe("safe", "model", {"porn": 0.0})
    assert counter.flush() == 2
    pool.close()


# ---------------------------------------------------------------- /metrics


def test_the_evaluation_gauges_never_hold_up_a_scrape():
    import time

    from nsfw_core.metrics import Metrics

    def slow() -> list[tuple[str, str, dict[str, str], float]]:
        time.sleep(5.0)
        return [("nsfw_score_psi", "x", {"class": "porn"}, 0.3)]

    metrics = Metrics(quality=slow)
    try:
        started = time.monotonic()
        text = metrics.exposition().decode()
        assert time.monotonic() - started < 4.0
        assert "nsfw_evaluation_up 0.0" in text and "nsfw_score_psi" not in text
    finally:
        metrics.close()
    quick = Metrics(quality=lambda: [("nsfw_automatic_precision", "p", {"verdict": "safe"}, 0.98),
                                     ("nsfw_automatic_precision", "p", {"verdict": "adult"}, 0.9)])
    try:
        text = quick.exposition().decode()
        assert "nsfw_evaluation_up 1.0" in text
        assert 'nsfw_automatic_precision{verdict="safe"} 0.98' in text
        assert 'nsfw_automatic_precision{verdict="adult"} 0.9' in text
    finally:
        quick.close()


def test_the_api_counts_audits_and_serves_the_gauges(tmp_path):
    from tests.helpers.apiclient import make_settings, running
    from tests.helpers.paths import REFERENCE

    house = (REFERENCE / "house.jpg").read_bytes()
    settings = make_settings(tmp_path, audit_rate=(("adult", 1.0), ("safe", 1.0)))
    with running(settings) as client:
        answer = client.post("/predict?detail=1", content=house, headers={"Content-Type": "image/jpeg"}).json()
        assert answer["verdict"] == "safe" and "review_id" not in answer
        with ReviewQueue.from_config(settings.review_config) as queue:
            [item] = queue.items()
            assert (item.kind, item.probability, item.verdict) == ("audit", 1.0, "safe")
            queue.decide(item.id, "r1", "neutral")
        text = client.get("/metrics").text
    assert 'nsfw_audited_items{verdict="safe"} 1.0' in text
    assert 'nsfw_automatic_precision{verdict="safe"} 1.0' in text
    assert "nsfw_evaluation_up 1.0" in text


def test_the_reviewer_apis_answers_match_the_openapi_document(tmp_path):
    import jsonschema

    from tests.helpers.apiclient import make_settings, running
    from tests.helpers.paths import REFERENCE

    def valid(doc, name, value):
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)

    key = {"Authorization": "Bearer " + "k" * 20}
    settings = make_settings(tmp_path, audit_rate=(("adult", 1.0), ("safe", 1.0)), safe_threshold=0.97,
                             admin_api_keys=("k" * 20,), double_review_rate=1.0)
    with running(settings) as client:
        doc = client.get("/openapi.json").json()
        answers = [client.post("/predict?detail=1", content=(REFERENCE / name).read_bytes(),
                               headers={"Content-Type": "image/jpeg"}).json() for name in ("house.jpg", "smile.jpg")]
        assert "review_id" not in answers[0]  # house: audited, the answer unchanged; smile: queued for review
        review_id = answers[1]["review_id"]
        claimed = client.post("/v1/reviews/claim", headers=key).json()
        valid(doc, "Claim", claimed)
        decided = client.post(f"/v1/reviews/{claimed['item']['id']}/decision", json={"label": "porn"}, headers=key)
        valid(doc, "DecisionResult", decided.json())
        assert decided.json()["outcome"] == "second_review"
        valid(doc, "Claim", client.post("/v1/reviews/undo", headers=key).json())
        client.post(f"/v1/reviews/{claimed['item']['id']}/decision", json={"label": "porn"}, headers=key)
        # the audit item's review id is the server's (no client asked for it): GET answers it to no client
        assert client.get(f"/v1/reviews/{claimed['item']['id']}").status_code == 404
        valid(doc, "Review", client.get(f"/v1/reviews/{review_id}").json())
        valid(doc, "Claim", client.post("/v1/reviews/claim", headers=key).json())
        evaluation = client.get("/v1/evaluation", headers=key).json()
        valid(doc, "Evaluation", evaluation)
        valid(doc, "Evaluation", client.get("/v1/evaluation?since=2026-01-01&until=2026-02-01", headers=key).json())
    assert doc["paths"]["/v1/reviews/claim"]["post"]["security"] == [{"bearer": []}]


def test_through_the_api_audits_spend_no_quota_decisions_follow_what_was_handed_and_who_decided_is_for_reviewers(
        tmp_path):
    """In-process API (the model loaded): NSFW_REVIEW_QUOTA=1 with every automatic verdict audited; the reviewer
    API names items by review id, hands the classified bytes, and passes them as ``seen``; ``decided_by`` for
    reviewer and admin keys only."""
    import base64
    import sqlite3

    from nsfw_core.context import current
    from nsfw_core.http.reviews import key_id
    from tests.helpers.apiclient import make_settings, running
    from tests.helpers.paths import REFERENCE

    client_key, both_key, reviewer = "client-key-0123456789", "client-and-reviewer-0123", "reviewer-key-0123456789"
    house, smile = (REFERENCE / "house.jpg").read_bytes(), (REFERENCE / "smile.jpg").read_bytes()
    settings = make_settings(tmp_path, audit_rate=(("adult", 1.0), ("safe", 1.0)), safe_threshold=0.97,
                             review_quota=1, api_keys=(client_key, both_key), reviewer_api_keys=(both_key, reviewer))

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def classify(key: str, image: bytes) -> dict[str, Any]:
        reply = client.post("/predict?detail=1", content=image, headers={"Content-Type": "image/jpeg", **auth(key)})
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def remembered(sha256: str) -> int:
        with sqlite3.connect(tmp_path / "review.sqlite") as db:
            return int(db.execute("SELECT COUNT(*) FROM known_images WHERE sha256 = ?", (sha256,)).fetchone()[0])

    houses = [house + bytes(i + 1) for i in range(3)]  # the same picture, three sha256s
    with running(settings) as client:
        for image in houses:  # three audits of this key's traffic: its quota of 1 is untouched
            answer = classify(client_key, image)
            assert answer["verdict"] == "safe" and "review_id" not in answer and "review_error" not in answer
        mine = classify(client_key, smile)
        assert mine["verdict"] == "unknown" and TICKET_RE.match(mine["review_id"]), mine
        spent = classify(client_key, smile + b"\0")
        assert spent["review_id"] is None and "NSFW_REVIEW_QUOTA" in spent["review_error"]
        joined = classify(both_key, smile)["review_id"]  # the same item, an id of its own (joining is free)
        assert TICKET_RE.match(joined) and joined != mine["review_id"]

        queue = current().review_queue
        old_url = queue.enqueue(sha("old"), "https://example.com/old.jpg", SCORES, MODEL, "unknown")  # no bytes
        other_bytes = queue.enqueue(sha("other"), "upload", SCORES, MODEL, "safe", image_bytes=b"\xff\xd8 not it",
                                    kind=AUDIT, probability=0.5)  # bytes that are not the item's sha256's
        audit_url = queue.enqueue(sha("audit-url"), "https://example.com/a.jpg", SCORES, MODEL, "safe", kind=AUDIT,
                                  probability=0.5)  # (an audit item always has its bytes: never its URL instead)
        assert client.post("/v1/reviews/claim", headers=auth(client_key)).status_code == 403
        handed: dict[str, dict[str, Any]] = {}
        while (item := client.post("/v1/reviews/claim", headers=auth(reviewer)).json()["item"]) is not None:
            handed[item["id"]] = item
            label = "porn" if item["kind"] == "audit" and item["source"] == "upload" else "neutral"
            decided = client.post(f"/v1/reviews/{item['id']}/decision", json={"label": label}, headers=auth(reviewer))
            assert decided.status_code == 200, decided.text
            assert decided.json()["review"]["decided_by"] == key_id(reviewer)  # a reviewer key is told
        assert len(handed) == 7 and mine["review_id"] in handed
        # the audits and the review item: the classified bytes, base64; decided on them, so remembered
        for image in houses:
            digest = hashlib.sha256(image).hexdigest()
            [item] = [i for i in handed.values() if i["image"] and i["image"].get("base64")
                      and hashlib.sha256(base64.b64decode(i["image"]["base64"])).digest().hex() == digest]
            assert item["kind"] == "audit" and "verdict" not in item and remembered(digest) == 1
        # the review item is an upload whose bytes were not kept (NSFW_REVIEW_STORE_UPLOADS off): no image handed,
        # decided from its scores, remembered for nothing
        assert handed[mine["review_id"]]["image"] is None and "scores" in handed[mine["review_id"]]
        assert remembered(hashlib.sha256(smile).hexdigest()) == 0
        # an old URL item gives its URL (not bytes); an audit item without its own bytes gives nothing (no URL):
        # what the reviewer saw is unknown, so the decisions are recorded and remembered for nothing
        by_number = {queue.ticket(i)[0]: i for i in handed}  # type: ignore[index]  # item number -> review id
        assert handed[by_number[old_url]]["image"] == {"url": "https://example.com/old.jpg"}
        assert handed[by_number[other_bytes]]["image"] is None and handed[by_number[audit_url]]["image"] is None
        assert queue.get(old_url).decision == "neutral" and queue.get(other_bytes).decision == "porn"  # type: ignore[union-attr]
        assert remembered(sha("old")) == 0 and remembered(sha("other")) == 0
        # the audit's decision protects every client: the other key never sent that image
        current().known.refresh()  # (the server reads new decisions every few seconds)
        copy = classify(both_key, houses[0])
        assert (copy["verdict"], copy["verdict_source"]) == ("adult", "review")
        # who decided: never to the client key; to a key that is a reviewer key too
        for_client = client.get(f"/v1/reviews/{mine['review_id']}", headers=auth(client_key)).json()
        assert for_client["status"] == "decided" and "decided_by" not in for_client
        for_reviewer = client.get(f"/v1/reviews/{joined}", headers=auth(both_key)).json()
        assert for_reviewer["decided_by"] == key_id(reviewer)


def test_the_evaluations_window_takes_exactly_the_dates_the_document_allows(tmp_path):
    """``since``/``until`` are ``format: date`` in the OpenAPI document: every full date is answered (years 1 to
    9999 included: a default window ending early in year 1 was a 500), anything else is 400 naming the
    parameter (epoch seconds and ISO times were accepted although the document does not allow them)."""
    from tests.helpers.apiclient import make_settings, running

    key = {"Authorization": "Bearer " + "k" * 20}
    with running(make_settings(tmp_path, reviewer_api_keys=("k" * 20,)), wait=False) as client:
        for query in ("since=0001-01-01&until=0001-12-31", "until=0001-01-01", "until=0001-01-15",
                      "since=9999-01-01&until=9999-12-31", "until=9999-12-31", "since=2026-02-28&until=2026-03-01"):
            answer = client.get(f"/v1/evaluation?{query}", headers=key)
            assert answer.status_code == 200, (query, answer.text)
        for query, field in (("until=0.5", "until"), ("since=1796083200", "since"), ("until=2026-12-01T00:00:00Z", "until"),
                             ("since=20261201", "since"), ("until=2026-02-30", "until"), ("since=2026-12-01%0A", "since"),
                             ("since=%D9%A2%D9%A0%D9%A2%D9%A6-12-01", "since"), ("until=0000-01-01", "until"),
                             ("since=2026-12-01&until=2026-12-01", "since"), ("since=2025-01-01&until=2026-12-01", "since")):
            answer = client.get(f"/v1/evaluation?{query}", headers=key)
            assert (answer.status_code, answer.json()["code"], answer.json().get("field")) == (
                400, "invalid_request", field), (query, answer.text)
