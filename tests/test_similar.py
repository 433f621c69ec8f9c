"""Similar past decisions (nsfw_core.state.review.similar) and the evidence kept with review items
(nsfw_core.state.review.evidence, migration 13), on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import io
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from nsfw_core.images import phash
from nsfw_core.state.adapters import Adapters
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review import evidence as store
from nsfw_core.state.review.similar import (
    MAX_DISTANCE,
    MAX_EMBEDDING_DISTANCE,
    EmbeddingFinder,
    PdqFinder,
    similar_decisions,
)
from tests.helpers.paths import ROOT

SCORES = {"drawings": 0.05, "hentai": 0.05, "neutral": 0.5, "porn": 0.2, "sexy": 0.2}
MODEL = "MobileNetV2Mid"
PHOTOS = sorted((ROOT / "data" / "demo" / "photos").glob("*.jpg"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request, tmp_path) -> Iterator[ReviewQueue]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    q = ReviewQueue(url, data_dir=tmp_path / "data", store_uploads=True, clock=Clock())
    yield q
    q.close()


def _input(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _add(queue: ReviewQueue, data: bytes, name: str, *, with_hashes: bool = True) -> int:
    hashes = phash.join_hex(phash.stored_hashes(_input(data))) if with_hashes else None
    return queue.enqueue(hashlib.sha256(data).hexdigest(), f"upload:{name}", SCORES, MODEL, "unknown",
                         image_bytes=data, phash=hashes)


def test_the_closest_decided_items_come_first_with_who_decided_and_when(queue):
    photos = [Image.open(p) for p in PHOTOS[:4]]
    decided = []
    for i, img in enumerate(photos):  # four different photos, decided by two reviewers
        item_id = _add(queue, _jpeg(img), f"p{i}.jpg")
        queue.decide(item_id, "alice" if i % 2 else "bob", "safe" if i % 2 else "porn")
        decided.append(item_id)
    # under review: a re-encoded, resized copy of photo 2 (a look-alike), and a photo never decided
    copy = _jpeg(photos[2].resize((photos[2].width // 2, photos[2].height // 2)), quality=60)
    looking = _add(queue, copy, "copy.jpg")
    other = _add(queue, _jpeg(Image.open(PHOTOS[5])), "new.jpg")
    finder = PdqFinder(queue.pool)
    found = similar_decisions(queue.pool, looking, [finder])
    assert found and found[0].item_id == decided[2]
    first = found[0]
    assert (first.decision, first.decided_by, first.by, first.has_image) == ("porn", "bob", "pdq", True)
    assert first.distance <= 31 and first.decided_at == queue.get(decided[2]).decided_at
    assert all(s.distance <= MAX_DISTANCE for s in found)
    assert [s.distance for s in found] == sorted(s.distance for s in found)
    assert looking not in {s.item_id for s in found}  # never itself
    # an unrelated image has no neighbour within 64 bits among unrelated photos
    assert all(s.item_id != decided[2] or s.distance > 31 for s in similar_decisions(queue.pool, other, [finder]))


def test_the_finder_follows_new_decisions_undos_and_purges(queue):
    photo = Image.open(PHOTOS[0])
    a = _add(queue, _jpeg(photo, 95), "a.jpg")
    b = _add(queue, _jpeg(photo, 50), "b.jpg")  # the same picture, other bytes
    finder = PdqFinder(queue.pool)
    assert similar_decisions(queue.pool, b, [finder]) == []  # nothing decided yet
    queue.decide(a, "alice", "safe")
    [s] = similar_decisions(queue.pool, b, [finder])  # read since the last look
    assert (s.item_id, s.decision) == (a, "safe")
    queue.undo("alice")
    assert similar_decisions(queue.pool, b, [finder]) == []  # undone: no longer a decision
    queue.claim("alice")
    queue.decide(a, "alice", "adult")
    [s] = similar_decisions(queue.pool, b, [finder])
    assert s.decision == "adult"
    queue.purge(older_than_days=1e-9)  # everything old enough: gone
    c = _add(queue, _jpeg(photo, 70), "c.jpg")
    assert similar_decisions(queue.pool, c, [finder]) == []


def test_an_item_without_hashes_has_no_pdq_neighbours_until_it_keeps_its_own(queue):
    photo = Image.open(PHOTOS[1])
    decided = _add(queue, _jpeg(photo, 95), "a.jpg")
    queue.decide(decided, "alice", "safe")
    data = _jpeg(photo, 60)
    bare = _add(queue, data, "bare.jpg", with_hashes=False)
    finder = PdqFinder(queue.pool)
    assert similar_decisions(queue.pool, bare, [finder]) == []
    hashes = phash.join_hex(phash.stored_hashes(_input(data)))
    assert store.keep_hashes(queue.pool, bare, hashlib.sha256(data).hexdigest(), hashes)
    assert not store.keep_hashes(queue.pool, bare, hashlib.sha256(data).hexdigest(), hashes)  # it has some now
    assert [s.item_id for s in similar_decisions(queue.pool, bare, [finder])] == [decided]


class Fixed:
    """A finder that always answers the same (an embedding finder's seam)."""

    by = "embedding"

    def __init__(self, answer: list[tuple[int, float]]) -> None:
        self.answer = answer

    def nearest(self, item_id: int, count: int) -> list[tuple[int, float]]:
        return self.answer[:count]


def test_finders_are_merged_each_item_once_at_its_closest(queue):
    photos = [Image.open(p) for p in PHOTOS[:3]]
    ids = [_add(queue, _jpeg(img), f"p{i}.jpg") for i, img in enumerate(photos)]
    for item_id in ids:
        queue.decide(item_id, "alice", "safe")
    looking = _add(queue, _jpeg(photos[0], 50), "copy.jpg")
    found = similar_decisions(queue.pool, looking, [PdqFinder(queue.pool), Fixed([(ids[1], 0.1), (ids[0], 0.2)])],
                              count=3)
    assert [s.item_id for s in found][:2] == [ids[0], ids[1]]
    assert (found[0].by, found[1].by) == ("pdq", "embedding")  # rank 0 of each: PDQ's first
    assert len({s.item_id for s in found}) == len(found)


def test_evidence_is_kept_with_its_item_and_goes_with_it(queue):
    data = _jpeg(Image.open(PHOTOS[2]))
    sha = hashlib.sha256(data).hexdigest()
    item_id = _add(queue, data, "x.jpg")
    other = _add(queue, _jpeg(Image.open(PHOTOS[3])), "y.jpg")
    assert store.load(queue.pool, item_id) is None
    assert store.missing(queue.pool, 10) == [item_id, other]
    doc = {"method": {"name": "occlusion", "version": 2}, "grid": {"rows": 2, "cols": 2}}
    assert store.save(queue.pool, item_id, doc, sha256=sha)
    assert not store.save(queue.pool, other, doc, sha256=sha)  # not that image
    assert not store.save(queue.pool, item_id, {"x": "y" * store.MAX_STORED}, sha256=sha)  # too large
    assert store.load(queue.pool, item_id) == doc
    assert store.missing(queue.pool, 10) == [other]
    assert store.missing(queue.pool, 10, exclude=(other,)) == []
    queue.decide(item_id, "alice", "safe")
    assert store.load(queue.pool, item_id) == doc  # a decided item keeps it
    queue.purge(older_than_days=1e-9)
    assert store.load(queue.pool, item_id) is None


def test_a_video_keeps_its_deciding_frames_time_and_only_then_is_computed_ahead(queue):
    """Migration 14: a video item keeps when its deciding frame is shown; the background computes the evidence of a
    video that keeps it (one frame decoded), never of one queued without it, nor of an image's (no such time)."""
    kept = queue.enqueue(hashlib.sha256(b"v1").hexdigest(), "upload:v1.mp4", SCORES, MODEL, "unknown",
                         image_bytes=b"v1", media="video", deciding_ms=2_500)
    bare = queue.enqueue(hashlib.sha256(b"v2").hexdigest(), "upload:v2.mp4", SCORES, MODEL, "unknown",
                         image_bytes=b"v2", media="video")
    image = queue.enqueue(hashlib.sha256(b"i").hexdigest(), "upload:i.jpg", SCORES, MODEL, "unknown",
                          image_bytes=b"i", deciding_ms=7)
    assert (store.deciding_ms(queue.pool, kept), store.deciding_ms(queue.pool, bare)) == (2_500, None)
    assert store.deciding_ms(queue.pool, image) is None  # kept for videos only
    assert store.missing(queue.pool, 10) == [kept, image]


# ---------------------------------------------------------------- by embedding (issue 26's, kept per queued item)

DIM = 1792


def _vector(seed: int, support: slice = slice(None)) -> np.ndarray:
    """A non-negative embedding (as the model's are after ReLU6), non-zero only on ``support``."""
    v = np.zeros(DIM, np.float32)
    v[support] = np.random.default_rng(seed).uniform(0.0, 6.0, DIM)[support]
    return v


def _embedded(queue: ReviewQueue, name: str, vector: np.ndarray | None, *, model: str = MODEL,
              version: str = "v1") -> int:
    data = name.encode()
    item_id = queue.enqueue(hashlib.sha256(data).hexdigest(), f"upload:{name}", SCORES, model, "unknown",
                            image_bytes=data)  # no PDQ hashes: only the embedding can find it
    if vector is not None:
        Adapters(queue.pool).save_item_embedding(item_id, model, version, vector)
    return item_id


def test_decided_items_are_found_by_embedding_of_the_same_model_version_only(queue):
    half = slice(None, DIM // 2)
    e = _vector(1, half)
    near = np.clip(e + np.random.default_rng(2).normal(0.0, 0.3, DIM).astype(np.float32), 0.0, None)  # a copy's
    near[DIM // 2:] = 0.0
    same = _embedded(queue, "same", e)
    other_version = _embedded(queue, "v2", e, version="v2")  # the same vector, another model version
    other_model = _embedded(queue, "other-model", e, model="MobileNetV2")  # the same numbers, another model
    unrelated = _embedded(queue, "far", _vector(3, slice(DIM // 2, None)))  # features the query has none of
    for item_id in (same, other_version, other_model, unrelated):
        queue.decide(item_id, "alice", "porn")
    looking = _embedded(queue, "looking", near)
    finder = EmbeddingFinder(queue.pool)
    found = similar_decisions(queue.pool, looking, [PdqFinder(queue.pool), finder])
    assert [(s.item_id, s.by, s.decision, s.decided_by) for s in found] == [(same, "embedding", "porn", "alice")]
    assert 0.0 < found[0].distance <= MAX_EMBEDDING_DISTANCE
    assert finder.nearest(unrelated, 4) == []  # its own only decided neighbour is itself: never itself
    bare = _embedded(queue, "bare", None)
    assert finder.nearest(bare, 4) == []  # an item without an embedding has no neighbour by it


def test_the_embedding_finder_follows_decisions_undos_and_holds_the_newest(queue):
    e = _vector(4)
    looking = _embedded(queue, "looking", e)
    finder = EmbeddingFinder(queue.pool, held=2)
    ids = []
    for k in range(3):
        ids.append(_embedded(queue, f"copy{k}", e * (1.0 + 0.01 * k)))
        queue.decide(ids[-1], "bob", "safe")
        assert {i for i, _ in finder.nearest(looking, 4)} == set(ids[-2:])  # read forward; the newest 2 held
    queue.undo("bob")
    assert {i for i, _ in finder.nearest(looking, 4)} == {ids[0], ids[1]}  # undone: read again
    assert all(d < 1e-3 for _, d in finder.nearest(looking, 4))
