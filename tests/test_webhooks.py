"""Webhooks: the outbox written with the decision, signed deliveries, retries, the address checks."""

from __future__ import annotations

import json
import threading
import time

import pytest

from nsfw_core.base.settings import load_settings
from nsfw_core.state import webhooks
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
