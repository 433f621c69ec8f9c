"""The review page, run headless with Streamlit's AppTest (no browser).

``NSFW_DATA_DIR`` points at a temporary folder whose review queue (SQLite) is
filled beforehand through ``ReviewQueue`` with the reference JPEGs as stored
bytes; the page's clicks are then checked in the database.
"""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from nsfw_core.access import Identity, Role
from nsfw_core.state.review import ReviewQueue
from nsfw_ui.auth import IDENTITY_KEY
from tests.helpers.pages import new_context
from tests.helpers.paths import REFERENCE, REFERENCE_IMAGES, ROOT
from tests.helpers.servers import image, local_server  # noqa: F401 - pytest fixture
from tests.helpers.signin import ADMIN, REVIEWER, signed_in

PAGE = ROOT / "pages" / "review.py"
IMAGES = REFERENCE_IMAGES
SCORES = {"drawings": 0.1, "hentai": 0.05, "neutral": 0.45, "porn": 0.25, "sexy": 0.15}
ENV_VARS = ("NSFW_ALLOW_PRIVATE_HOSTS", "NSFW_DATABASE_URL", "NSFW_REVIEW_STORE_UPLOADS", "NSFW_REVIEW_LEASE_SECONDS",
            "NSFW_REVIEW_RETENTION_DAYS", "NSFW_REVIEW_VERDICTS")


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    """A private data folder for the page; the process context (settings, queue) made afresh before and after."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "data"
    monkeypatch.setenv("NSFW_DATA_DIR", str(folder))
    new_context()
    yield folder
    new_context()


@pytest.fixture
def queue(data_dir):
    q = ReviewQueue(data_dir=data_dir, store_uploads=True)
    yield q
    q.close()


@pytest.fixture
def filled(queue):
    """The reference JPEGs queued as uploads with their bytes; returns their ids in queue order."""
    ids = []
    for path in IMAGES:
        data = path.read_bytes()
        ids.append(queue.enqueue(hashlib.sha256(data).hexdigest(), f"upload:{path.name}", SCORES,
                                 "MobileNetV2Mid", "unknown", image_bytes=data))
    return ids



def new_page(who: Identity = REVIEWER) -> AppTest:
    at = signed_in(AppTest.from_file(str(PAGE), default_timeout=60), who).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def left(at: AppTest) -> int:
    line = next(m.value for m in at.markdown if "left to review" in m.value)
    return int(line.split("**")[1])


def shown_id(at: AppTest) -> int | None:
    held = at.session_state["review_current"] if "review_current" in at.session_state else None
    return held[0] if held else None


def plain(markdown: str) -> str:
    """Markdown text with the page's backslash escapes removed."""
    return re.sub(r"\\(.)", r"\1", markdown)


def reviewer(at: AppTest) -> str:
    name: str = at.session_state[IDENTITY_KEY].name
    return name


# ---------------------------------------------------------------- the page


def test_shows_the_count_and_the_oldest_item_blurred(filled, queue, media):
    at = new_page()
    assert left(at) == len(filled)
    first = filled[0]
    assert shown_id(at) == first
    item = queue.get(first)
    assert item.status == "claimed" and item.claimed_by == reviewer(at)
    # Blurred until revealed.
    assert at.toggle(key=f"reveal_{first}").value is False
    assert at.image[0].value[0] and "(blurred)" in at.image[0].captions[0]
    blurred = Image.open(io.BytesIO(media(at.image[0].value[0])))
    assert max(blurred.size) <= 384
    # The scores table.
    table = at.dataframe[0].value
    assert list(table["class"]) == ["drawings", "hentai", "neutral", "porn", "sexy"]
    assert list(table["score"]) == [0.1, 0.05, 0.45, 0.25, 0.15]
    # The buttons, with shortcuts.
    keys = {b.key for b in at.button}
    assert {"label_adult", "label_safe", "label_drawings", "label_hentai", "label_neutral", "label_porn",
            "label_sexy", "skip", "undo"} <= keys
    assert at.button(key="label_safe").proto.shortcut == "s"
    assert not at.get("download_button")  # exports are the admins'
    # Revealed.
    at.toggle(key=f"reveal_{first}").set_value(True).run()
    assert not at.exception
    assert "(blurred)" not in at.image[0].captions[0]
    shown = Image.open(io.BytesIO(media(at.image[0].value[0])))
    assert max(shown.size) <= 512


def test_safe_decides_the_item_and_the_count_drops(filled, queue):
    at = new_page()
    first = shown_id(at)
    at = click(at, "label_safe")
    item = queue.get(first)
    assert (item.status, item.decision, item.decided_by) == ("decided", "safe", reviewer(at))
    assert left(at) == len(filled) - 1
    assert shown_id(at) == filled[1]
    assert queue.counts() == {"pending": len(filled) - 2, "claimed": 1, "decided": 1, "total": len(filled)}
    at = click(at, "label_hentai")
    assert queue.get(filled[1]).decision == "hentai" and left(at) == len(filled) - 2
    assert "Item" in at.success[0].value and "hentai" in at.success[0].value


def test_undo_restores_the_decision(filled, queue):
    at = click(new_page(), "label_porn")
    assert queue.get(filled[0]).decision == "porn" and shown_id(at) == filled[1]
    at = click(at, "undo")
    item = queue.get(filled[0])
    assert item.status == "claimed" and item.decision is None and item.claimed_by == reviewer(at)
    assert shown_id(at) == filled[0]  # back on screen
    assert queue.get(filled[1]).status == "pending"  # the one that was on screen went back
    assert left(at) == len(filled)
    at = click(at, "undo")
    assert "Nothing to undo" in at.info[0].value
    at = click(at, "label_neutral")
    assert queue.get(filled[0]).decision == "neutral"


def test_skip_moves_on(filled, queue):
    at = new_page()
    at = click(at, "skip")
    assert shown_id(at) == filled[1]
    item = queue.get(filled[0])
    assert item.status == "pending" and item.skips == 1
    assert left(at) == len(filled)
    # Skipping everything: the page says so and offers the skipped items again.
    for _ in filled[1:]:
        at = click(at, "skip")
    assert shown_id(at) is None
    assert any("Only items you skipped" in i.value for i in at.info)
    at = click(at, "reset_skipped")
    assert shown_id(at) == filled[0]


def test_decisions_are_recorded_under_the_signed_in_identity(filled, queue):
    at = new_page(Identity("alice (secret)", Role.REVIEWER, "secret"))
    assert not at.text_input  # no free-text name to type
    assert queue.get(filled[0]).claimed_by == "alice (secret)"
    at = click(at, "label_adult")
    assert queue.get(filled[0]).decided_by == "alice (secret)"
    assert "you are alice (secret)" in plain(next(m.value for m in at.markdown if "left to review" in m.value))


def test_empty_queue(queue):
    at = new_page(ADMIN)
    assert left(at) == 0
    assert "Nothing left to review" in at.success[0].value
    assert at.button(key="label_safe").disabled and at.button(key="skip").disabled
    assert {b.key for b in at.get("download_button")} == {"download_reviewed_csv", "download_reviewed_zip"}
    assert all(b.proto.disabled for b in at.get("download_button"))  # nothing decided yet


def test_url_items_are_fetched_through_the_safe_fetcher(queue, data_dir, local_server, monkeypatch):  # noqa: F811
    house = (REFERENCE / "house.jpg").read_bytes()
    local_server.route("/house.jpg", image(house, "image/jpeg"))
    # an item queued before URL bytes were kept: fetched again, and shown because its sha256 is the item's
    good = queue.enqueue(hashlib.sha256(house).hexdigest(), local_server.url("/house.jpg"), SCORES, "MobileNetV2Mid",
                         "unknown")
    missing = queue.enqueue("b" * 64, local_server.url("/missing.jpg"), SCORES, "MobileNetV2Mid", "unknown")
    lost = queue.enqueue("c" * 64, "upload:lost.jpg", SCORES, "MobileNetV2Mid", "unknown")
    # Loopback is forbidden unless allowed.
    at = new_page()
    assert shown_id(at) == good and plain(at.error[0].value).startswith("forbidden_address: ")
    assert local_server.requests == []
    monkeypatch.setenv("NSFW_ALLOW_PRIVATE_HOSTS", local_server.netloc)
    new_context()  # new settings
    at = click(at, "refetch")
    assert shown_id(at) == good
    assert not at.error and "(blurred)" in at.image[0].captions[0]
    at.toggle(key=f"reveal_{good}").set_value(True).run()
    assert len(local_server.requests) == 1  # fetched once for the session, not on every rerun
    at = click(at, "label_safe")
    assert shown_id(at) == missing and plain(at.error[0].value).startswith("upstream_error: ")
    at = click(at, "label_safe")
    assert shown_id(at) == lost and "not stored" in at.info[0].value
    assert queue.counts()["decided"] == 2


def test_a_video_item_is_hidden_until_revealed_then_played(queue, media):
    from tests.helpers import videos

    clip = videos.make("mp4", "h264", seconds=2, fps=5, size=(64, 48))
    item_id = queue.enqueue(hashlib.sha256(clip).hexdigest(), "upload", SCORES, "MobileNetV2Mid", "unknown",
                            image_bytes=clip, media="video")
    at = new_page()
    assert shown_id(at) == item_id
    assert not at.get("video") and not at.error  # the video is not shown, no decode error
    # what shows is only issue 30's evidence of its deciding frame, blurred until revealed
    assert all(im.captions and im.captions[0].endswith("(blurred)") for im in at.image), \
        [im.captions for im in at.image]
    assert any("is a video" in i.value for i in at.info)
    at.toggle(key=f"reveal_{item_id}").set_value(True).run()
    assert not at.exception
    [player] = at.get("video")
    assert media(player.proto.url) == clip


def test_a_video_decided_on_the_page_is_remembered_by_its_frames(queue):
    """The bytes decided are the bytes remembered (issue 29) for a video too: the page offers the item's own
    video, so the decision is remembered with its frames' hashes and a copy of most frames gets it."""
    import numpy as np

    from nsfw_core.state.known import KnownImages
    from tests.helpers import videos

    clip = videos.make("mp4", "h264", seconds=2, fps=5, size=(64, 48))
    frames = [np.random.default_rng(3).bytes(32) for _ in range(4)]
    item_id = queue.enqueue(hashlib.sha256(clip).hexdigest(), "upload", SCORES, "MobileNetV2Mid", "unknown",
                            image_bytes=clip, phash=",".join(f.hex() for f in frames), media="video")
    at = new_page()
    assert shown_id(at) == item_id
    at = click(at, "label_safe")
    assert queue.counts()["decided"] == 1
    known = KnownImages(queue.pool)
    try:
        match = known.lookup_video("0" * 64, frames)
    finally:
        known.close()
    assert match is not None and match.by == "vpdq" and match.verdict == "safe" and match.scores == SCORES
