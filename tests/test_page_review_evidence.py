"""The Review page's evidence and similar past decisions (issue 30, point 2 and 3), with the real model: the overlay
of the deciding class, blurred until revealed, computed at claim and kept with the item (never twice), computed
ahead in the background, on an animation's deciding frame; and the closest decided items beside the item."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from nsfw_core.images import phash
from nsfw_core.inference import explain
from nsfw_core.state.adapters import Adapters
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review import evidence as store
from nsfw_ui.auth import IDENTITY_KEY
from tests.helpers.pages import new_context
from tests.helpers.paths import ROOT
from tests.helpers.signin import REVIEWER, signed_in

PAGE = ROOT / "pages" / "review.py"
PHOTOS = sorted((ROOT / "data" / "demo" / "photos").glob("*.jpg"))
SCORES = {"drawings": 0.1, "hentai": 0.05, "neutral": 0.45, "porn": 0.25, "sexy": 0.15}
ENV_VARS = ("NSFW_ALLOW_PRIVATE_HOSTS", "NSFW_DATABASE_URL", "NSFW_REVIEW_STORE_UPLOADS", "NSFW_REVIEW_LEASE_SECONDS",
            "NSFW_REVIEW_RETENTION_DAYS", "NSFW_REVIEW_VERDICTS", "NSFW_EVIDENCE_AHEAD", "NSFW_EXPLAIN_GRID")


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "data"
    monkeypatch.setenv("NSFW_DATA_DIR", str(folder))
    monkeypatch.setenv("NSFW_EVIDENCE_AHEAD", "0")  # the tests that want it ahead set it
    new_context()
    yield folder
    new_context()


@pytest.fixture
def queue(data_dir):
    q = ReviewQueue(data_dir=data_dir, store_uploads=True)
    yield q
    q.close()


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def enqueue(queue: ReviewQueue, data: bytes, name: str, scores: dict[str, float] = SCORES) -> int:
    return queue.enqueue(hashlib.sha256(data).hexdigest(), f"upload:{name}", scores, "MobileNetV2Mid", "unknown",
                         image_bytes=data)


def new_page() -> AppTest:
    at = signed_in(AppTest.from_file(str(PAGE), default_timeout=120), REVIEWER).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown_id(at: AppTest) -> int:
    held = at.session_state["review_current"]
    assert held
    item_id: int = held[0]
    return item_id


class Counting:
    """Counts explanations computed in this process (the page runs in it)."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        real = explain.explain

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(explain, "explain", counted)


def test_the_overlay_of_the_deciding_class_is_blurred_until_revealed_and_kept_with_the_item(queue, media,
                                                                                            monkeypatch):
    counting = Counting(monkeypatch)
    first = enqueue(queue, PHOTOS[0].read_bytes(), PHOTOS[0].name)
    at = new_page()
    assert shown_id(at) == first
    # the image first, then the overlay: the deciding class of an unknown item is its highest adult class (porn)
    assert at.selectbox(key=f"evidence_class_{first}").value == "porn"
    assert len(at.image) >= 2 and "(blurred)" in at.image[0].captions[0]
    caption = at.image[1].captions[0]
    assert "porn" in caption and caption.endswith("(blurred)"), caption
    blurred = Image.open(io.BytesIO(media(at.image[1].value[0])))
    assert max(blurred.size) <= 384
    doc = store.load(queue.pool, first)  # computed at claim, kept with the item
    assert doc is not None and counting.calls == 1
    kept = explain.from_stored(doc)
    assert kept is not None and kept.passes == explain.passes(8) and kept.model == "MobileNetV2Mid"
    # revealed with the image
    at.toggle(key=f"reveal_{first}").set_value(True).run()
    assert not at.exception
    assert "(blurred)" not in at.image[1].captions[0]
    # another class on request
    at.selectbox(key=f"evidence_class_{first}").set_value("neutral").run()
    assert "neutral" in at.image[1].captions[0]
    # given back, then claimed again in a new session: shown from what the item keeps
    queue.release(first, at.session_state[IDENTITY_KEY].name)
    new_context()
    again = new_page()
    assert shown_id(again) == first and len(again.image) >= 2
    assert counting.calls == 1


def test_evidence_is_computed_ahead_in_the_background(queue, monkeypatch):
    monkeypatch.setenv("NSFW_EVIDENCE_AHEAD", "2")
    new_context()
    ids = [enqueue(queue, p.read_bytes(), p.name) for p in PHOTOS[:4]]
    new_page()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(store.load(queue.pool, i) for i in ids[:3]):
        time.sleep(0.2)
    assert all(store.load(queue.pool, i) for i in ids[:3])  # the one claimed, and two ahead
    time.sleep(0.5)
    assert store.load(queue.pool, ids[3]) is None  # no further than NSFW_EVIDENCE_AHEAD


def test_an_animation_shows_the_evidence_of_its_deciding_frame(queue):
    photos = [Image.open(p).convert("RGB").resize((160, 120)) for p in PHOTOS[:3]]
    buf = io.BytesIO()
    photos[0].save(buf, "GIF", save_all=True, append_images=photos[1:], duration=300, loop=0)
    item_id = enqueue(queue, buf.getvalue(), "anim.gif")
    at = new_page()
    assert shown_id(at) == item_id
    kept = explain.from_stored(store.load(queue.pool, item_id) or {})
    assert kept is not None and kept.frame is not None
    assert f"frame {kept.frame}" in at.image[1].captions[0]


def test_a_video_shows_the_evidence_of_its_deciding_frame_decoded_alone(queue, media, monkeypatch):
    """A video item keeps when its deciding frame is shown (migration 14): its evidence is of that frame, decoded
    alone (the decoder asked for that one instant, never the sampled frames), drawn over it, blurred until the
    video is revealed, kept with the item; a new session draws it from what the item keeps."""
    from nsfw_core.inference.pipeline import Decoder
    from tests.helpers import videos

    asked: list[int | None] = []
    real = Decoder.video

    def spied(self, model, data, **kwargs):
        asked.append(kwargs.get("at_ms"))
        return real(self, model, data, **kwargs)

    monkeypatch.setattr(Decoder, "video", spied)
    counting = Counting(monkeypatch)
    data = videos.make("mp4", "h264", seconds=4, fps=10, size=(160, 120), hold=1.0, pan=False,
                       images=videos.pictures(PHOTOS[:4]))
    item_id = queue.enqueue(hashlib.sha256(data).hexdigest(), "upload:clip.mp4", SCORES, "MobileNetV2Mid", "unknown",
                            image_bytes=data, media="video", deciding_ms=2_150)
    at = new_page()
    assert shown_id(at) == item_id
    doc = store.load(queue.pool, item_id)
    kept = explain.from_stored(doc or {})
    assert kept is not None and kept.frame == 21  # the frame on screen at 2.15 s (10 frames a second)
    assert asked == [2_150]  # that one frame, and no other decode
    [drawn] = [im for im in at.image if im.captions and "evidence" in im.captions[0]]
    assert "frame 21" in drawn.captions[0] and drawn.captions[0].endswith("(blurred)")
    assert max(Image.open(io.BytesIO(media(drawn.value[0]))).size) <= 384
    at.toggle(key=f"reveal_{item_id}").set_value(True).run()
    assert not at.exception
    [drawn] = [im for im in at.image if im.captions and "evidence" in im.captions[0]]
    assert "(blurred)" not in drawn.captions[0]
    queue.release(item_id, at.session_state[IDENTITY_KEY].name)
    new_context()
    again = new_page()
    assert shown_id(again) == item_id
    assert [im for im in again.image if im.captions and "frame 21" in im.captions[0]]
    assert counting.calls == 1 and store.load(queue.pool, item_id) == doc  # computed once, kept with the item
    assert asked == [2_150, 2_150]  # the frame to draw it on: decoded alone again


def test_similar_past_decisions_are_shown_beside_the_item(queue, media):
    photo = Image.open(PHOTOS[1])
    decided_bytes = jpeg(photo, 95)
    x = np.asarray(photo.convert("RGB").resize((224, 224)), dtype=np.float32) / 255.0
    decided = queue.enqueue(hashlib.sha256(decided_bytes).hexdigest(), "upload:first.jpg", SCORES,
                            "MobileNetV2Mid", "unknown", image_bytes=decided_bytes,
                            phash=phash.join_hex(phash.stored_hashes(x)))
    queue.decide(decided, "earlier reviewer", "sexy", seen=hashlib.sha256(decided_bytes).hexdigest())
    copy = enqueue(queue, jpeg(photo.resize((photo.width // 2, photo.height // 2)), 60), "copy.jpg")
    at = new_page()
    assert shown_id(at) == copy
    texts = " ".join(m.value for m in at.markdown)
    assert "Similar past decisions" in texts
    line = next(m.value for m in at.markdown if f"item {decided}:" in m.value)
    assert "**sexy**" in line and "earlier reviewer" in line and "PDQ distance" in line
    assert queue.get(decided).decided_at is not None
    thumbs = [im for im in at.image if im.captions and im.captions[0] == "blurred"]
    assert thumbs and max(Image.open(io.BytesIO(media(thumbs[0].value[0]))).size) <= 128


def test_similar_past_decisions_by_embedding_are_shown_beside_the_pdq_ones(queue, media):
    """A decided item with no PDQ hash is found by its embedding (of the same model version as the item's):
    shown with its decision, who decided, the embedding distance and a blurred thumbnail."""
    rng = np.random.default_rng(7)
    e = rng.uniform(0.0, 6.0, 1792).astype(np.float32)
    store_ = Adapters(queue.pool)
    decided_bytes = jpeg(Image.open(PHOTOS[3]), 95)
    decided = enqueue(queue, decided_bytes, "decided.jpg")  # queued without hashes: PDQ cannot find it
    store_.save_item_embedding(decided, "MobileNetV2Mid", "v1", e)
    queue.decide(decided, "embedding reviewer", "hentai", seen=hashlib.sha256(decided_bytes).hexdigest())
    looking = enqueue(queue, PHOTOS[4].read_bytes(), PHOTOS[4].name)
    store_.save_item_embedding(looking, "MobileNetV2Mid", "v1", e + rng.normal(0.0, 0.2, 1792).astype(np.float32))
    at = new_page()
    assert shown_id(at) == looking
    line = next(m.value for m in at.markdown if f"item {decided}:" in m.value)
    assert "**hentai**" in line and "embedding reviewer" in line and "embedding distance 0.0" in line
    thumbs = [im for im in at.image if im.captions and im.captions[0] == "blurred"]
    assert thumbs and max(Image.open(io.BytesIO(media(thumbs[0].value[0]))).size) <= 128


def test_no_similar_decision_says_so(queue):
    enqueue(queue, PHOTOS[2].read_bytes(), PHOTOS[2].name)
    at = new_page()
    assert any("No decided item looks like this one" in c.value for c in at.caption)


def test_an_audit_item_shows_neither_evidence_nor_similar_decisions(queue, monkeypatch):
    """Issue 25's audit items are reviewed blind: no verdict, no scores, and (issue 30) no evidence map and no
    similar past decisions either (a copy's earlier decision would anchor the reviewer); nothing computed ahead."""
    monkeypatch.setenv("NSFW_EVIDENCE_AHEAD", "2")
    new_context()
    photo = Image.open(PHOTOS[1])
    decided_bytes = jpeg(photo, 95)
    x = np.asarray(photo.convert("RGB").resize((224, 224)), dtype=np.float32) / 255.0
    decided = queue.enqueue(hashlib.sha256(decided_bytes).hexdigest(), "upload:first.jpg", SCORES,
                            "MobileNetV2Mid", "unknown", image_bytes=decided_bytes,
                            phash=phash.join_hex(phash.stored_hashes(x)))
    queue.decide(decided, "earlier reviewer", "sexy", seen=hashlib.sha256(decided_bytes).hexdigest())
    copy = jpeg(photo.resize((photo.width // 2, photo.height // 2)), 60)
    audit = queue.enqueue(hashlib.sha256(copy).hexdigest(), "upload:copy.jpg", SCORES, "MobileNetV2Mid", "safe",
                          image_bytes=copy, phash=phash.join_hex(phash.stored_hashes(x)), kind="audit",
                          probability=0.01)
    at = new_page()
    assert shown_id(at) == audit
    texts = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "Similar past decisions" not in texts and "earlier reviewer" not in texts
    assert not any("evidence" in (im.captions[0] if im.captions else "") for im in at.image)
    time.sleep(1.0)  # the background thread, had it started, would have picked the audit item
    assert store.load(queue.pool, audit) is None
    assert store.missing(queue.pool, 5) == []
