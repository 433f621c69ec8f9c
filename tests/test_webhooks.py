"""Webhooks: the outbox written with the decision, signed deliveries, retries, the address checks."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import pytest

from nsfw_core.base.settings import load_settings
from nsfw_core.state import webhooks
from nsfw_core.state.migrations import OUTBOX_TABLE
from nsfw_core.state.review import ReviewQueue
from tests.helpers.servers import LocalServer, RouteHandler

SECRET = "whsec-test-0123456789"
SCORES = {"drawings": 0.1, "hentai": 0.1, "neutral": 0.4, "porn": 0.2, "sexy": 0.2}


class Receiver:
    """A webhook receiver: answers ``statuses`` in turn (then 200), keeps what it got."""

    def __init__(self, server: LocalServer, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.url = server.route("/hook", self.respond)

    def respond(self, handler: RouteHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        with self.lock:
            self.got.append(({k.lower(): v for k, v in handler.headers.items()}, body))
            code = self.statuses.pop(0) if self.statuses else 200
        handler.start(code, [("Content-Length", "0")])


def policy(private: bool = True):
    return load_settings(environ={"NSFW_ALLOW_PRIVATE_HOSTS": "*" if private else ""}).fetch_policy


@pytest.fixture
def queue(tmp_path):
    q = ReviewQueue(data_dir=tmp_path)
    q.decision_hooks.append(webhooks.outbox_hook)
    yield q
    q.close()


def decided(queue: ReviewQueue, n: int = 1) -> list[int]:
    ids = []
    for i in range(n):
        item_id = queue.enqueue(f"{i + 1:064x}", f"https://example.com/{i}.jpg", SCORES, "MobileNetV2Mid", "unknown")
        queue.decide(item_id, "alice", "safe")
        ids.append(item_id)
    return ids


def public(queue: ReviewQueue, item_ids: list[int]) -> list[str]:
    """The review ids the events name the items by (issue 29: the creator's ``rv_...``)."""
    return [queue.public_id(i) for i in item_ids]


def test_sign_and_verify():
    body = b'{"a":1}'
    header = webhooks.sign(SECRET, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert webhooks.verify(SECRET, body, header, now=1_700_000_100)
    assert not webhooks.verify(SECRET, body + b" ", header, now=1_700_000_100)
    assert not webhooks.verify("another-secret-012345", body, header, now=1_700_000_100)
    assert not webhooks.verify(SECRET, body, header, now=1_700_000_000 + 301)  # too old: a replay
    assert not webhooks.verify(SECRET, body, "v1=abc", now=1_700_000_000)


def test_backoff_grows_and_is_capped():
    assert [webhooks.backoff(n, rand=lambda: 0.5) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert webhooks.backoff(30, rand=lambda: 0.5) == webhooks.MAX_DELAY_S


def test_a_decision_writes_its_event_in_the_same_transaction(queue):
    (item_id,) = decided(queue)
    deliverer = webhooks.Deliverer(queue, "http://127.0.0.1:9/hook", SECRET, policy())
    assert [(p["item_id"], p["attempts"]) for p in deliverer.pending()] == [(item_id, 0)]


def test_a_failed_hook_rolls_the_decision_back(queue):
    item_id = queue.enqueue("f" * 64, "https://example.com/x.jpg", SCORES, "MobileNetV2Mid", "unknown")

    def broken(tx, item):
        raise RuntimeError("outbox down")

    queue.decision_hooks.append(broken)
    with pytest.raises(RuntimeError):
        queue.decide(item_id, "alice", "adult")
    item = queue.get(item_id)
    assert item is not None and item.status == "pending"  # neither the decision nor its event
    queue.decision_hooks.remove(broken)
    assert webhooks.Deliverer(queue, "http://127.0.0.1:9/", "", policy()).pending() == []


def test_delivered_signed_and_verifiable(queue, local_server):
    receiver = Receiver(local_server)
    (item_id,) = decided(queue)
    deliverer = webhooks.Deliverer(queue, receiver.url, SECRET, policy())
    assert deliverer.deliver_due() == 1
    assert deliverer.pending() == [] and deliverer.delivered == 1
    ((headers, body),) = receiver.got
    assert headers["content-type"] == "application/json"
    assert webhooks.verify(SECRET, body, headers["nsfw-signature"])
    event = json.loads(body)
    assert headers["nsfw-event-id"] == event["id"] and event["id"].startswith("evt_")
    assert event["type"] == "review.decided"
    review = event["review"]
    # the id is the review id its creator got (issue 29: unguessable), the operator's receiver sees who decided
    item = queue.get(item_id)
    assert item is not None
    public_id = item.public_id
    assert public_id is not None and public_id.startswith("rv_")
    assert (review["id"], review["status"], review["label"], review["decided_by"]) == (public_id, "decided", "safe",
                                                                                        "alice")
    assert review["decided_at"].endswith("+00:00")
    assert deliverer.deliver_due() == 0  # delivered once


def test_a_failing_receiver_is_retried_with_backoff_and_the_same_event_id(queue, local_server):
    receiver = Receiver(local_server, [500, 503])
    decided(queue)
    now = [time.time() + 1]
    deliverer = webhooks.Deliverer(queue, receiver.url, SECRET, policy(), clock=lambda: now[0])
    queue.clock = lambda: now[0]
    assert deliverer.deliver_due() == 1  # failed: due again in about 1 s
    (row,) = deliverer.pending()
    assert row["attempts"] == 1 and row["last_error"] == "the receiver answered 500"
    assert deliverer.deliver_due() == 0  # not due yet
    now[0] += 2
    assert deliverer.deliver_due() == 1  # 503
    assert deliverer.pending()[0]["attempts"] == 2
    now[0] += 1.5
    assert deliverer.deliver_due() == 0  # backoff doubled: about 2 s
    now[0] += 1.0
    assert deliverer.deliver_due() == 1
    assert deliverer.pending() == []
    ids = {json.loads(body)["id"] for _, body in receiver.got}
    assert len(receiver.got) == 3 and len(ids) == 1  # one event, three attempts: the idempotency key
    assert all(webhooks.verify(SECRET, body, h["nsfw-signature"], now=now[0]) for h, body in receiver.got)


def test_a_private_address_is_refused_unless_allowed(queue, local_server):
    receiver = Receiver(local_server)
    decided(queue)
    deliverer = webhooks.Deliverer(queue, receiver.url, SECRET, policy(private=False))
    assert deliverer.deliver_due() == 1
    (row,) = deliverer.pending()
    assert row["last_error"].startswith("forbidden_address: refusing to fetch from 127.0.0.1")
    assert receiver.got == [] and local_server.connections == 0


def test_a_redirect_is_a_failure(queue, local_server):
    from tests.helpers.servers import redirect

    url = local_server.route("/moved", redirect("http://169.254.169.254/"))
    decided(queue)
    deliverer = webhooks.Deliverer(queue, url, SECRET, policy())
    deliverer.deliver_due()
    assert deliverer.pending()[0]["last_error"] == "the receiver answered 302"


# ---------------------------------------------------------------- issue 29, point 6: keeping up, the whole story


@pytest.fixture(params=["sqlite", "postgresql"])
def any_queue(request, tmp_path):
    """The queue with the webhooks' hooks, on SQLite and on the suite's PostgreSQL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    q = ReviewQueue(url, data_dir=tmp_path)
    webhooks.hook_up(q)
    yield q
    q.close()


class Hanging:
    """A receiver that hangs on the events of ``stuck`` items until released, answers 200 to the others."""

    def __init__(self, server: LocalServer, stuck: set[str]) -> None:
        self.stuck = stuck
        self.release = threading.Event()
        self.delivered: list[str] = []
        self.lock = threading.Lock()
        self.url = server.route("/hook", self.respond)

    def respond(self, handler: RouteHandler) -> None:
        event = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", "0"))))
        item = event["review"]["id"]
        if item in self.stuck and not self.release.wait(20):
            return
        with self.lock:
            self.delivered.append(item)
        handler.start(200, [("Content-Length", "0")])


def test_a_hanging_receiver_on_the_oldest_event_does_not_hold_back_the_newer_ones(any_queue, local_server):
    """Before: one delivery at a time, oldest first: with the receiver hanging on the oldest event every
    attempt went to it (8 attempts in 77 s) and the newer events waited behind it."""
    import asyncio

    oldest, *newer = public(any_queue, decided(any_queue, 6))
    receiver = Hanging(local_server, {oldest})
    deliverer = webhooks.Deliverer(any_queue, receiver.url, SECRET, policy(), concurrency=3)

    async def main() -> float:
        task = asyncio.get_running_loop().create_task(deliverer.run())
        t0 = time.monotonic()
        try:
            while set(receiver.delivered) != set(newer):
                assert time.monotonic() - t0 < 15, receiver.delivered
                await asyncio.sleep(0.05)
            took = time.monotonic() - t0
            receiver.release.set()
            while oldest not in receiver.delivered:
                assert time.monotonic() - t0 < 30
                await asyncio.sleep(0.05)
            return took
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    took = asyncio.run(main())
    assert took < 5  # one at a time, they waited for the hanging delivery's deadline (NSFW_FETCH_TIMEOUT: 10 s)
    assert set(receiver.delivered[:len(newer)]) == set(newer)
    assert receiver.delivered[-1] == oldest and deliverer.pending() == []


def test_events_never_tried_go_before_retries(any_queue, local_server):
    receiver = Receiver(local_server, [500])
    first, second = public(any_queue, decided(any_queue, 2))
    now = [time.time() + 1]
    deliverer = webhooks.Deliverer(any_queue, receiver.url, SECRET, policy(), clock=lambda: now[0])
    assert deliverer.deliver_one()  # the first event: 500, due again in about 1 s
    now[0] += 5  # both are due now: the retry of the first, the first try of the second
    assert deliverer.deliver_one()
    assert [json.loads(b)["review"]["id"] for _, b in receiver.got] == [first, second]


def test_an_undo_sends_its_event(any_queue, local_server):
    """Before: an undo sent nothing, so the receiver kept 'safe' for an item that was open again."""
    receiver = Receiver(local_server)
    (item_id,) = public(any_queue, decided(any_queue))
    assert any_queue.undo("alice") is not None
    deliverer = webhooks.Deliverer(any_queue, receiver.url, SECRET, policy())
    assert deliverer.deliver_due() == 2
    decided_event, undone_event = (json.loads(b) for _, b in receiver.got)
    assert decided_event["type"] == "review.decided" and decided_event["review"]["label"] == "safe"
    assert undone_event["type"] == "review.undone" and undone_event["review"]["id"] == item_id
    assert undone_event["review"]["status"] == "pending" and "label" not in undone_event["review"]
    assert undone_event["undone"]["label"] == "safe" and undone_event["undone"]["decided_by"] == "alice"
    assert undone_event["undone"]["decided_at"] == decided_event["review"]["decided_at"]
    import msgspec

    from nsfw_core.http.contract import WebhookEvent

    for _, body in receiver.got:
        msgspec.json.decode(body, type=WebhookEvent)  # both match the published contract


def test_an_item_s_events_are_delivered_in_order_even_with_parallel_deliveries(any_queue, local_server):
    """Before: with several deliveries at once an item's review.undone could be taken (and arrive) while its
    review.decided was still in flight or waiting for a retry, leaving the receiver on the taken-back label."""
    receiver = Receiver(local_server, [500])
    first, other = decided(any_queue, 2)
    assert any_queue.undo("alice") is not None  # the last decision (``other``) taken back: two events for it
    now = [time.time() + 1]
    deliverer = webhooks.Deliverer(any_queue, receiver.url, SECRET, policy(), clock=lambda: now[0])
    taken = [deliverer._take() for _ in range(3)]  # three claims at once, as three deliveries would make
    payloads = [json.loads(t[2]) for t in taken if t is not None]
    assert [(p["review"]["id"], p["type"]) for p in payloads] == [(any_queue.public_id(first), "review.decided"),
                                                                 (any_queue.public_id(other), "review.decided")]
    assert taken[2] is None  # the undo waits for its decision's delivery
    now[0] += webhooks.CLAIM_S + 1  # the claims lapse: the decisions are due again, the undo still waits
    assert deliverer.deliver_one() and deliverer.deliver_one()  # the first fails (500), the second is delivered
    assert [json.loads(b)["type"] for _, b in receiver.got] == ["review.decided", "review.decided"]
    now[0] += webhooks.MAX_DELAY_S
    assert deliverer.deliver_due() == 2
    kinds = [(json.loads(b)["review"]["id"], json.loads(b)["type"]) for _, b in receiver.got]
    undone_at = kinds.index((any_queue.public_id(other), "review.undone"))
    assert (any_queue.public_id(other), "review.decided") in kinds[:undone_at] and deliverer.pending() == []


def test_the_outbox_is_purged_with_the_retention(any_queue):
    """Before: delivered or not, outbox rows (sha256, reviewer names) were kept forever."""
    decided(any_queue, 2)
    deliverer = webhooks.Deliverer(any_queue, "http://127.0.0.1:9/", "", policy())
    assert len(deliverer.pending()) == 2
    later = time.time() + 31 * 86400
    any_queue.clock = lambda: later
    any_queue.purge(30)
    assert deliverer.pending() == []
    with any_queue.pool.transaction(write=False) as tx:
        assert tx.one(f"SELECT COUNT(*) FROM {OUTBOX_TABLE}")[0] == 0


def events(queue: ReviewQueue) -> list[dict[str, Any]]:
    with queue.pool.transaction(write=False) as tx:
        return [json.loads(r[0]) for r in tx.run(f"SELECT payload FROM {OUTBOX_TABLE} ORDER BY id")]


def test_the_event_names_the_client_that_queued_the_image(any_queue):
    from nsfw_core.ratelimit import key_id

    client = key_id("client-a-api-key-0123456789")
    item_id, ticket = any_queue.enqueue_for("client-a-hash", "e" * 64, "https://example.com/e.jpg", SCORES,
                                            "MobileNetV2Mid", "unknown", key_id=client)
    # another client sends the same image: it joins the item with a review id of its own; the event stays the
    # creator's (its review id and its key id)
    joined, other_ticket = any_queue.enqueue_for("client-b-hash", "e" * 64, "upload", SCORES, "MobileNetV2Mid",
                                                 "unknown", key_id=key_id("client-b-api-key-0123456789"))
    assert joined == item_id and other_ticket != ticket
    other = any_queue.enqueue("d" * 64, "https://example.com/d.jpg", SCORES, "MobileNetV2Mid", "unknown")
    any_queue.decide(item_id, "bob", "adult")
    any_queue.decide(other, "bob", "safe")
    assert [(e["review"]["id"], e["client_key_id"]) for e in events(any_queue)] == [
        (ticket, client), (any_queue.public_id(other), None)]
    assert client.startswith("key:") and len(client) == 20 and "client-a" not in client


def test_an_audit_items_events_are_blind_and_name_no_client(any_queue):
    """Issue 25 made audit items blind in events (no model verdict); an audit is the server's sample, so even
    when a keyed client's request was sampled its events name no client, and its undo is as blind as its
    decision (the undone decision carries the reviewer's label only)."""
    from nsfw_core.ratelimit import key_id
    from nsfw_core.state.review.audit import AUDIT

    item_id, _ = any_queue.enqueue_for("client-a-hash", "a" * 64, "upload", SCORES, "MobileNetV2Mid", "safe",
                                       image_bytes=b"\xff\xd8\xff audit", kind=AUDIT, probability=0.01,
                                       key_id=key_id("client-a-api-key-0123456789"))
    any_queue.decide(item_id, "alice", "porn")
    assert any_queue.undo("alice") is not None
    decided_event, undone_event = events(any_queue)
    assert (decided_event["type"], undone_event["type"]) == ("review.decided", "review.undone")
    for event in (decided_event, undone_event):
        assert event["client_key_id"] is None and event["review"]["kind"] == "audit"
        assert "verdict" not in event["review"] and '"safe"' not in json.dumps(event)  # the model said safe
    assert undone_event["undone"] == {"label": "porn", "decided_by": "alice",
                                      "decided_at": decided_event["review"]["decided_at"]}
    import msgspec

    from nsfw_core.http.contract import WebhookEvent

    for event in (decided_event, undone_event):
        msgspec.json.decode(json.dumps(event).encode(), type=WebhookEvent)


def test_double_review_sends_the_decision_once_and_its_undo(any_queue):
    """Issue 25's double review: a first vote decides nothing and sends nothing; the agreeing second vote sends
    review.decided; undoing that vote reopens the item, and the receiver is told (review.undone)."""
    item_id = any_queue.enqueue("b" * 64, "https://example.com/b.jpg", SCORES, "MobileNetV2Mid", "unknown",
                                reviews=2)
    assert any_queue.decide(item_id, "alice", "safe").status != "decided"
    assert events(any_queue) == []
    assert any_queue.decide(item_id, "bob", "safe").status == "decided"
    (decided_event,) = events(any_queue)
    assert decided_event["review"]["decided_by"] == "bob" and decided_event["review"]["label"] == "safe"
    reopened = any_queue.undo("bob")
    assert reopened is not None and reopened.status != "decided"
    decided_event, undone_event = events(any_queue)
    assert undone_event["type"] == "review.undone" and undone_event["review"]["id"] == any_queue.public_id(item_id)
    assert undone_event["undone"]["label"] == "safe" and undone_event["undone"]["decided_by"] == "bob"
    assert "label" not in undone_event["review"]
