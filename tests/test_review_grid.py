"""The review grid (issue 30, point 4): a page of blurred thumbnails from the queue, the exceptions ticked, the rest
decided in one action, each item recorded as the Review page records it; and many reviewers at once.

The grid's work (nsfw_ui.review_grid) runs under real threads on SQLite and PostgreSQL; the page
(pages/review_grid.py) runs in Streamlit's AppTest, three reviewers' sessions side by side."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import threading
from typing import Iterator

import pytest
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from nsfw_core.access import Identity, Role
from nsfw_core.base.settings import load_settings
from nsfw_core.context import Context, current
from nsfw_core.state.migrations import KNOWN_TABLE, OUTBOX_TABLE
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.webhooks import outbox_hook
from nsfw_ui import review_grid
from nsfw_ui.auth import IDENTITY_KEY
from tests.helpers import videos
from tests.helpers.pages import new_context
from tests.helpers.paths import COMPILED_DIR, ROOT
from tests.helpers.signin import signed_in

PAGE = ROOT / "pages" / "review_grid.py"
REVIEW_PAGE = ROOT / "pages" / "review.py"
SCORES = {"drawings": 0.02, "hentai": 0.01, "neutral": 0.9, "porn": 0.04, "sexy": 0.03}


def picture(n: int) -> bytes:
    """A small distinct JPEG for item ``n``."""
    rng = random.Random(n)
    img = Image.new("RGB", (96, 72), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.randrange(80), rng.randrange(60)
        draw.ellipse((x, y, x + 16, y + 12), fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def fill(queue: ReviewQueue, count: int, start: int = 0) -> list[int]:
    ids = []
    for n in range(start, start + count):
        data = picture(n)
        scores = dict(SCORES, porn=0.01 * (n % 7))
        ids.append(queue.enqueue(hashlib.sha256(data).hexdigest(), f"upload:{n}.jpg", scores, "MobileNetV2Mid",
                                 "unknown", image_bytes=data))
    return ids


# what the queue keeps for a refused look-alike (Match.for_reviewer): a decided item PDQ found, the model disagreeing
MATCH = {"source": "review", "by": "pdq", "distance": 16, "label": "safe", "verdict": "safe", "entry_id": 1,
         "review_id": 1}


def lookalike(queue: ReviewQueue, n: int) -> int:
    """Queue item ``n`` as the API queues a refused look-alike: its bytes kept, the match it was refused."""
    data = picture(n)
    return queue.enqueue_for("", hashlib.sha256(data).hexdigest(), f"upload:blend-{n}.jpg", SCORES, "MobileNetV2Mid",
                             "unknown", image_bytes=data, matched=json.dumps(MATCH))[0]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> Iterator[Context]:
    """A process context for the perceptual hashes each decision is remembered by (its decoder and model)."""
    made = Context(load_settings(environ={}, data_dir=str(tmp_path_factory.mktemp("ctx")), compiled_dir=COMPILED_DIR))
    yield made
    made.close()


# ---------------------------------------------------------------- the grid's work, many reviewers at once


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request, tmp_path) -> Iterator[ReviewQueue]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    q = ReviewQueue(url, data_dir=tmp_path / "data", store_uploads=True)
    q.decision_hooks.append(outbox_hook)  # the webhooks' outbox, written in each decision's transaction
    yield q
    q.close()


def test_items_without_their_bytes_shown_blind_or_videos_never_enter_a_grid(queue):
    ids = fill(queue, 3)
    bare = queue.enqueue("b" * 64, "upload:bare.jpg", SCORES, "MobileNetV2Mid", "unknown")  # no bytes kept
    seen = picture(99)  # an audit item (issue 25): its bytes kept, shown blind
    audit = queue.enqueue(hashlib.sha256(seen).hexdigest(), "upload:audit.jpg", SCORES, "MobileNetV2Mid", "safe",
                          image_bytes=seen, kind="audit", probability=0.01)
    clip = videos.make(seconds=1.0, fps=4)  # a video item (issue 27): the Review page plays it
    video = queue.enqueue(hashlib.sha256(clip).hexdigest(), "upload:clip.mp4", SCORES, "MobileNetV2Mid", "unknown",
                          image_bytes=clip, media="video")
    items, left_out = review_grid.claim_page(queue, "alice", 10)
    assert [i.id for i in items] == ids and left_out == {bare, audit, video}
    for item_id in (bare, audit, video):
        assert queue.get(item_id).status == "pending"  # back at its place, for the Review page
    assert queue.get(audit).blind
    assert review_grid.fits(items[0]) and not review_grid.fits(dataclasses.replace(items[0], kind="audit"))
    assert not review_grid.fits(dataclasses.replace(items[0], matched=json.dumps(MATCH)))


def test_an_item_with_a_refused_lookalike_match_is_never_decided_from_a_grid(queue, ctx):
    """Issue 29: a refused look-alike goes to the Review page, which shows the match; the grid leaves it out
    when it claims, and never decides one that reaches it anyway (it goes back with the exceptions)."""
    ids = fill(queue, 2)
    blend = lookalike(queue, 50)
    items, left_out = review_grid.claim_page(queue, "alice", 10)
    assert [i.id for i in items] == ids and left_out == {blend}
    assert queue.get(blend).status == "pending"
    held = queue.claim("alice", exclude=ids)
    assert held is not None and held.id == blend and held.matched
    out = review_grid.decide_rest(ctx, queue, "alice", [*items, held], set(), "safe")
    assert out.decided == ids and out.returned == [blend] and not out.lost
    assert queue.get(blend).status == "pending" and queue.get(blend).decision is None
    with queue.pool.transaction(write=False) as tx:
        remembered = tx.run(f"SELECT review_id FROM {KNOWN_TABLE} WHERE op = 'add'")
    assert sorted(int(r[0]) for r in remembered) == ids  # the look-alike's decision is not remembered


def test_concurrent_reviewers_decide_every_item_once_and_leave_the_exceptions(queue, ctx):
    ids = fill(queue, 60)
    reviewers = [f"reviewer-{k}" for k in range(4)]
    exceptions: dict[str, set[int]] = {r: set() for r in reviewers}
    held_by: dict[int, list[str]] = {}
    outcomes: list[review_grid.Outcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(reviewers))

    def review(name: str) -> None:
        left_out: set[int] = set()
        barrier.wait()
        while True:
            items, skipped = review_grid.claim_page(queue, name, 7, exclude=left_out)
            left_out |= skipped
            if not items:
                return
            picked = {i.id for i in items if i.id % 5 == 0}  # the exceptions: every fifth item
            with lock:
                for i in items:
                    held_by.setdefault(i.id, []).append(name)
                exceptions[name] |= picked
            out = review_grid.decide_rest(ctx, queue, name, items, picked, "safe")
            left_out |= set(out.returned)
            with lock:
                outcomes.append(out)

    threads = [threading.Thread(target=review, args=(r,)) for r in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    decided = [i for out in outcomes for i in out.decided]
    assert not [out.lost for out in outcomes if out.lost]
    assert sorted(decided) == sorted(i for i in ids if i % 5)  # every item but the exceptions, each once
    for item_id in ids:
        item = queue.get(item_id)
        if item_id % 5:
            assert (item.status, item.decision) == ("decided", "safe")
            assert held_by[item_id] == [item.decided_by]  # decided by the one reviewer who held it
        else:  # an exception: back in the queue, set aside (no other grid showed it)
            assert item.status == "pending" and item.decision is None and len(held_by[item_id]) == 1
    # each decision remembered (the grid showed the item's own bytes) and in the webhooks' outbox, once
    with queue.pool.transaction(write=False) as tx:
        remembered = tx.run(f"SELECT review_id FROM {KNOWN_TABLE} WHERE op = 'add'")
        events = tx.run(f"SELECT item_id FROM {OUTBOX_TABLE}")
    assert sorted(int(r[0]) for r in remembered) == sorted(decided)
    assert sorted(int(r[0]) for r in events) == sorted(decided)


def test_a_lease_taken_over_by_another_reviewer_is_not_decided(queue, ctx):
    ids = fill(queue, 4)
    items, _ = review_grid.claim_page(queue, "alice", 4, )
    queue.release(ids[1], "alice")
    assert queue.claim("bob").id == ids[1]  # bob holds it now (as after alice's lease ran out)
    out = review_grid.decide_rest(ctx, queue, "alice", items, {ids[3]}, "adult")
    assert out.decided == [ids[0], ids[2]] and out.returned == [ids[3]]
    assert [i for i, _ in out.lost] == [ids[1]]
    assert queue.get(ids[1]).status == "claimed" and queue.get(ids[1]).claimed_by == "bob"
    back = review_grid.undo_action(queue, "alice", set(out.decided))
    assert sorted(back) == sorted(out.decided)
    assert all(queue.get(i).status == "claimed" and queue.get(i).claimed_by == "alice" for i in back)


# ---------------------------------------------------------------- the page


ENV_VARS = ("NSFW_ALLOW_PRIVATE_HOSTS", "NSFW_DATABASE_URL", "NSFW_REVIEW_STORE_UPLOADS", "NSFW_REVIEW_LEASE_SECONDS",
            "NSFW_REVIEW_RETENTION_DAYS", "NSFW_REVIEW_VERDICTS", "NSFW_REVIEW_GRID_SIZE")


@pytest.fixture
def page_queue(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "data"
    monkeypatch.setenv("NSFW_DATA_DIR", str(folder))
    monkeypatch.setenv("NSFW_REVIEW_GRID_SIZE", "6")
    new_context()
    q = ReviewQueue(data_dir=folder, store_uploads=True)
    yield q
    q.close()
    new_context()


def grid_page(name: str) -> AppTest:
    who = Identity(f"{name} (secret, session {name})", Role.REVIEWER, "secret")
    at = signed_in(AppTest.from_file(str(PAGE), default_timeout=120), who).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def held(at: AppTest) -> list[int]:
    value = at.session_state["grid_held"]
    return list(value[1]) if value else []


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_grid_decides_the_rest_and_gives_the_exceptions_back(page_queue, media):
    ids = fill(page_queue, 9)
    at = grid_page("ann")
    name = at.session_state[IDENTITY_KEY].name
    page = held(at)
    assert sorted(page) == ids[:6]  # NSFW_REVIEW_GRID_SIZE, oldest first
    assert all(page_queue.get(i).claimed_by == name for i in page)
    thumbs = [im for im in at.image if im.captions and im.captions[0].endswith("(blurred)")]
    assert len(thumbs) == 6 and max(Image.open(io.BytesIO(media(thumbs[0].value[0]))).size) <= 160
    assert at.button(key="grid_safe").label == "Mark the rest safe (6)"
    for item_id in page[:2]:
        at.checkbox(key=f"grid_pick_{item_id}").check()
    at.run()
    assert at.button(key="grid_safe").label == "Mark the rest safe (4)"
    at = click(at, "grid_safe")
    assert "4 items decided **safe**" in at.success[0].value and "2 exceptions" in at.success[0].value
    for item_id in page[2:]:
        item = page_queue.get(item_id)
        assert (item.status, item.decision, item.decided_by) == ("decided", "safe", name)
    for item_id in page[:2]:
        assert page_queue.get(item_id).status == "pending"
    # the next page: the three items left, never the exceptions (they wait for the one-by-one page)
    assert sorted(held(at)) == ids[6:]
    # undo the last action: its four decisions come back here, the page on screen goes back to the queue
    at = click(at, "grid_undo")
    assert sorted(held(at)) == sorted(page[2:])
    assert all(page_queue.get(i).status == "claimed" for i in page[2:])
    assert all(page_queue.get(i).status == "pending" for i in ids[6:])
    at = click(at, "grid_adult")
    assert all(page_queue.get(i).decision == "adult" for i in page[2:])


def test_three_reviewers_share_the_queue_through_the_grid(page_queue):
    ids = fill(page_queue, 20)
    pages = {name: grid_page(name) for name in ("ann", "ben", "cat")}
    names = {n: at.session_state[IDENTITY_KEY].name for n, at in pages.items()}
    shown = {n: set(held(at)) for n, at in pages.items()}
    assert sum(len(s) for s in shown.values()) == 18 and not (shown["ann"] & shown["ben"] | shown["ben"]
                                                              & shown["cat"] | shown["ann"] & shown["cat"])
    # ben ticks one exception and marks adult, ann marks safe, cat leaves for another page
    pick = min(shown["ben"])
    pages["ben"].checkbox(key=f"grid_pick_{pick}").check()
    pages["ben"].run()
    click(pages["ben"], "grid_adult")
    click(pages["ann"], "grid_safe")
    click(pages["cat"], "grid_next")
    for n, label in (("ann", "safe"), ("ben", "adult")):
        for item_id in shown[n] - {pick}:
            item = page_queue.get(item_id)
            assert (item.decision, item.decided_by) == (label, names[n])
    assert page_queue.get(pick).status == "pending"  # ben's exception: in no grid since, ann's next page included
    assert all(pick not in held(at) for at in pages.values())
    assert all(page_queue.get(i).status in ("pending", "claimed") and page_queue.get(i).decision is None
               for i in shown["cat"])
    counts = page_queue.counts()
    assert counts["decided"] == 11 and counts["total"] == len(ids)
    assert current().review_queue.counts() == counts


def test_a_refused_lookalike_goes_to_the_review_page_with_its_match_never_to_the_grid(page_queue):
    """Issue 29 point 2: an image PDQ matched to a remembered decision while the model saw it differently goes to
    review "with the match shown to the reviewer".  Before, the grid showed it as one more blurred thumbnail, and
    "Mark the rest safe" decided it (and remembered the decision for its copies) without the match ever shown."""
    ids = fill(page_queue, 2)
    blend = lookalike(page_queue, 50)
    ids += fill(page_queue, 2, start=2)
    at = grid_page("ann")
    assert sorted(held(at)) == ids and blend in at.session_state["grid_left_out"]
    captions = [c for im in at.image for c in im.captions]
    assert len(captions) == 4 and f"item {blend} (blurred)" not in captions
    at = click(at, "grid_safe")
    assert "4 items decided **safe**" in at.success[0].value
    assert all(page_queue.get(i).decision == "safe" for i in ids)
    item = page_queue.get(blend)
    assert item is not None and (item.status, item.decision) == ("pending", None)
    assert held(at) == []  # the next page does not take it either
    with page_queue.pool.transaction(write=False) as tx:
        remembered = tx.run(f"SELECT review_id FROM {KNOWN_TABLE} WHERE op = 'add'")
    assert sorted(int(r[0]) for r in remembered) == ids
    # the one-by-one Review page holds it, with the match shown
    review = signed_in(AppTest.from_file(str(REVIEW_PAGE), default_timeout=120),
                       Identity("ben (secret, session ben)", Role.REVIEWER, "secret")).run()
    assert not review.exception, [e.value for e in review.exception]
    assert review.session_state["review_current"][0] == blend
    assert any("Looks like review item 1" in w.value and "the model sees it differently" in w.value
               for w in review.warning)


def test_concurrent_claims_of_one_key_never_hold_more_than_max_held(queue):
    """The attack pass: the reviewer API counted a key's held items and claimed in two transactions, so 40
    concurrent claims of one key (NSFW_REVIEW_MAX_HELD=2) got 5 to 7 items.  Counted and claimed in one
    transaction under a lock on the key's name now, on SQLite and PostgreSQL alike."""
    import threading

    from nsfw_core.state.errors import TooManyClaims

    for n in range(12):
        queue.enqueue(f"{n:064x}", f"upload:{n}.jpg", SCORES, "MobileNetV2Mid", "unknown")
    start = threading.Barrier(8)
    got: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def claim() -> None:
        start.wait()
        try:
            item = queue.claim("key:abc", max_held=2)
        except TooManyClaims:
            with lock:
                refused.append(1)
            return
        if item is not None:
            with lock:
                got.append(item.id)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 2 and len(set(got)) == 2 and len(refused) == 6, (got, refused)
    assert queue.claim("key:other", max_held=2) is not None  # another key is not held up
