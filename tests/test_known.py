"""Known images (issue 17, points 2-4): remembered decisions, hash lists, the lookup index.

- the multi-index finds exactly what a brute-force scan finds, on random hashes, at several distances;
- re-encoded (JPEG quality 70), resized (50 %), cropped (2 % off each side) and lightly watermarked copies
  of a decided image get its decision through the API (verdict_source review, not queued again); none of
  the repository's other images matches it (false match rate 0);
- an undone decision is forgotten;
- a hash list: import/export round-trips, a malformed list is refused naming the row, a listed image gets
  verdict_source list (by sha256 and by PDQ), and a list entry wins over a remembered decision.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from nsfw_core.base.settings import load_settings
from nsfw_core.images import phash
from nsfw_core.images.preprocess import preprocess
from nsfw_core.inference.pipeline import Decoder
from nsfw_core.state.db import open_pool
from nsfw_core.state.hashindex import HashIndex, brute_force
from nsfw_core.state.known import KnownImages, ListEntry, ListError, format_list, parse_list
from nsfw_core.state.review import ReviewQueue
from tests.helpers.apiclient import make_settings, running
from tests.helpers.edits import detail_over_shading, edited_copies
from tests.helpers.paths import REFERENCE, ROOT

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

SMILE = (REFERENCE / "smile.jpg").read_bytes()  # "unknown" with a safe threshold of 0.97: queued
HOUSE = (REFERENCE / "house.jpg").read_bytes()
JPEG = {"Content-Type": "image/jpeg"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def repository_images() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]


def copies(data: bytes) -> dict[str, bytes]:
    """The issue's edits of an image: re-encoded, resized, cropped, lightly watermarked."""
    return edited_copies(data)


class _Input:
    """What the decoder needs of a model to make its input (the default model's 224 x 224)."""

    input_size = 224

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess(rgb, self.input_size)


def model_input(data: bytes) -> np.ndarray:
    decoder = Decoder(load_settings(environ={}).decode_limits)
    try:
        x = decoder.prepare(_Input(), data)  # type: ignore[arg-type]
    finally:
        decoder.close()
    assert isinstance(x, np.ndarray)
    return x


# ---------------------------------------------------------------- the index


@pytest.mark.parametrize("max_distance", [0, 15, 31, 40])
def test_the_index_finds_exactly_what_brute_force_finds(max_distance):
    rng = np.random.default_rng(max_distance)
    rows = rng.integers(0, 256, (20_000, 32), dtype=np.uint8)
    rows[1000:1100] = rows[0]  # duplicates and clusters, as real lists have
    index = HashIndex(rows)
    for trial in range(200):
        base = rows[rng.integers(len(rows))] if trial % 4 else rng.integers(0, 256, 32, dtype=np.uint8)
        bits = np.unpackbits(base)
        bits[rng.choice(256, int(rng.integers(0, 48)), replace=False)] ^= 1
        query = np.packbits(bits).tobytes()
        got, got_d = index.search(query, max_distance)
        want, want_d = brute_force(rows, query, max_distance)
        order = np.argsort(want)
        assert got.tolist() == want[order].tolist()
        assert got_d.tolist() == want_d[order].tolist()
        assert all(phash.distance(rows[i].tobytes(), query) == d for i, d in zip(got, got_d, strict=True))


def test_an_empty_index_finds_nothing():
    got, d = HashIndex(np.zeros((0, 32), np.uint8)).search(bytes(32), 31)
    assert len(got) == 0 and len(d) == 0


# ---------------------------------------------------------------- hash lists


SHA = hashlib.sha256(b"x").hexdigest()
PDQ = "f" * 32 + "0" * 32


def test_a_list_round_trips_through_csv():
    entries = [ListEntry(SHA, None, "deny", "known bad, ticket 12"), ListEntry(None, PDQ, "allow", 'a "quoted", note'),
               ListEntry(SHA.replace("a", "b"), PDQ, "adult", ""), ListEntry(None, PDQ.replace("f", "e"), "safe")]
    text = format_list(entries)
    assert text.splitlines()[0] == "sha256,pdq,label,note"
    assert parse_list(text) == entries
    assert parse_list(text.encode("utf-8-sig")) == entries  # a BOM from a spreadsheet is fine
    assert [e.verdict for e in entries] == ["adult", "safe", "adult", "safe"]


@pytest.mark.parametrize("text, message", [
    ("", "the list is empty"),
    ("hash,label\n", "row 1: the header must name the columns sha256,pdq,label,note"),
    (f"sha256,pdq,label,note\n{SHA},,deny,ok\n,,allow,no hash\n", "row 3: neither a sha256 nor a PDQ hash"),
    (f"sha256,pdq,label,note\n{SHA},,deny,\n{SHA[:-1]}x,,deny,\n", "row 3: '" + SHA[:-1] + "x' is not a sha256"),
    (f"sha256,pdq,label,note\n,{PDQ[:60]},deny,\n", "row 2: '" + PDQ[:60] + "' is not a PDQ hash"),
    (f"sha256,pdq,label,note\n{SHA},,block,\n", "row 2: label 'block' is not one of allow, deny, safe, adult"),
    (f"sha256,pdq,label,note\n{SHA},,deny,a,b\n", "row 2: 5 fields, the header names 4"),
    (b"sha256,pdq,label,note\n\xff\n", "the list is not UTF-8 text"),
])
def test_a_malformed_list_is_refused_naming_the_row(text, message):
    with pytest.raises(ListError) as caught:
        parse_list(text)
    assert message in caught.value.message
    assert caught.value.status == 400


def test_import_export_round_trips_in_the_database_and_replaces(tmp_path):
    pool = open_pool(None, tmp_path)
    known = KnownImages(pool)
    try:
        entries = parse_list(f"sha256,pdq,label,note\n{SHA},,deny,first\n,{PDQ},allow,second\n")
        assert known.import_list(entries, by="admin") == {"added": 2, "removed": 0}
        assert parse_list(known.export_list()) == entries
        # the same hash again replaces its entry (not a second one); another is added
        again = [ListEntry(SHA, None, "allow", "changed my mind"), ListEntry(None, PDQ.replace("0", "1"), "deny")]
        assert known.import_list(again, by="admin") == {"added": 2, "removed": 1}
        assert parse_list(known.export_list()) == [entries[1], *again]
        assert known.lookup(SHA, None).verdict == "safe"  # type: ignore[union-attr]
        assert known.import_list(entries[:1], by="admin", replace=True) == {"added": 1, "removed": 3}
        assert parse_list(known.export_list()) == entries[:1]
        assert known.clear_list(by="admin") == 1
        assert known.export_list() == "sha256,pdq,label,note\n" and known.lookup(SHA, None) is None
    finally:
        pool.close()


# ---------------------------------------------------------------- through the API


def _post(client, data: bytes) -> dict[str, Any]:
    reply = client.post("/predict?detail=1", content=data, headers=JPEG)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _refreshed(client) -> None:
    """Bring the server's copy of the known images up to date now (it would within a second by itself; a copy
    sent before that would get the model's verdict and be queued)."""
    from nsfw_core.context import current

    current().known.refresh()  # the API's lifespan installed its context in this process


def _until(client, data: bytes, source: str, limit: float = 5.0) -> dict[str, Any]:
    """The answer for ``data`` once its verdict_source is ``source`` (the background refresh: within a second)."""
    deadline = time.monotonic() + limit
    while True:
        body = _post(client, data)
        if body["verdict_source"] == source or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_copies_of_a_decided_image_get_the_decision_and_no_other_image_does(tmp_path):
    """The reviewer saw the stored upload (NSFW_REVIEW_STORE_UPLOADS): the decision is remembered.  The answers
    name the match's kind, how it matched and its label, and nothing else (issue 29: no distance, no ids);
    the server's own lookup says which entry and how far."""
    from nsfw_core.context import current

    settings = make_settings(tmp_path, safe_threshold=0.97, review_store_uploads=True)
    with running(settings) as client:
        first = _post(client, SMILE)
        assert first["verdict"] == "unknown" and first["verdict_source"] == "model"
        with ReviewQueue.from_settings(settings) as queue:
            found = queue.ticket(first["review_id"])
            assert found is not None
            item_id = found[0]
            assert queue.phash(item_id) is not None  # its hashes came with it from the request
            shown = queue.get(item_id).image  # type: ignore[union-attr]
            assert shown == SMILE  # what the reviewer sees is what was classified
            # five-class label: adult by the binary map
            queue.decide(item_id, "alice", "porn", seen=hashlib.sha256(shown).hexdigest())
        _refreshed(client)
        same = _post(client, SMILE)
        assert same["verdict"] == "adult" and same["verdict_source"] == "review"
        assert same["match"] == {"source": "review", "by": "sha256", "label": "porn"}
        assert "review_id" not in same  # not queued again
        assert same["scores"] == pytest.approx(first["scores"])  # the scores stay the model's
        for name, data in copies(SMILE).items():
            body = _post(client, data)
            assert body["verdict_source"] == "review", name
            assert body["verdict"] == "adult" and "review_id" not in body, name
            assert body["match"] == {"source": "review", "by": "pdq", "label": "porn"}, (name, body["match"])
            match = current().known.lookup(hashlib.sha256(data).hexdigest(), phash.query_hash(model_input(data)))
            assert match is not None and match.review_id == item_id and 0 <= match.distance <= 31, (name, match)
        smile_sha = hashlib.sha256(SMILE).hexdigest()
        others = [p for p in repository_images() if p.name not in ("smile.jpg", "nsfwjs_smile.jpg")]
        assert len(others) >= 20
        false = [str(p.relative_to(ROOT)) for p in others if _post(client, p.read_bytes())["verdict_source"] != "model"]
        assert false == []  # false match rate on every other image in the repository: 0
        # the demo copy of the same photo (same pixels, another file) is a copy, and matches
        assert _post(client, (ROOT / "data/demo/photos/nsfwjs_smile.jpg").read_bytes())["verdict_source"] == "review"
        with ReviewQueue.from_settings(settings) as queue:
            assert [it.id for it in queue.items() if it.sha256 == smile_sha] == [item_id]
            undone = queue.undo("alice")
            assert undone is not None and undone.id == item_id
        forgotten = _until(client, SMILE, "model")
        assert forgotten["verdict_source"] == "model" and forgotten["verdict"] == "unknown"


def test_listed_images_get_the_list_verdict_which_wins_over_a_decision(tmp_path):
    settings = make_settings(tmp_path, safe_threshold=0.97)
    house_pdq = phash.query_hash(model_input(HOUSE))
    assert house_pdq is not None
    pool = open_pool(None, settings.data_dir)
    known = KnownImages(pool)
    try:
        with running(settings) as client:
            assert _post(client, HOUSE)["verdict"] == "safe"
            known.import_list([ListEntry(None, house_pdq.hex(), "deny", "test"),
                               ListEntry(hashlib.sha256(SMILE).hexdigest(), None, "allow")], by="admin")
            house = _until(client, copies(HOUSE)["jpeg q70"], "list")
            assert house["verdict"] == "adult" and house["match"]["source"] == "list"
            assert house["match"]["by"] == "pdq" and house["match"]["label"] == "deny"
            smile = _until(client, SMILE, "list")
            assert smile["verdict"] == "safe" and smile["match"]["by"] == "sha256" and "review_id" not in smile
            # a reviewer decides the house adult-or-not otherwise: the list still wins
            with ReviewQueue.from_settings(settings) as queue:
                item = queue.enqueue(hashlib.sha256(HOUSE).hexdigest(), "upload", house["scores"], "m", "unknown",
                                     phash=phash.join_hex([house_pdq]))
                queue.decide(item, "bob", "safe", seen=hashlib.sha256(HOUSE).hexdigest())
            time.sleep(1.2)
            assert _post(client, HOUSE)["verdict_source"] == "list"
    finally:
        pool.close()


def _shading_of_a_detail_of_b(a: bytes, b: bytes, radius: float = 6) -> bytes:
    """Picture ``b`` drawn over the blurred shading of ``a`` (224x224 PNG): it shows b, and PDQ, which sees
    only coarse shading, puts it near a (the security test's bypass of an allow list)."""
    return detail_over_shading(a, b, radius)


def test_a_perceptual_match_never_clears_what_the_model_calls_adult(tmp_path):
    """Drawings play the adult class here (the repository has no adult image): skimage's cat scores drawings
    0.79.  Its detail over an allow-listed photo's shading is a PDQ match of that photo, yet the model calls
    it adult: adult it stays.  The exact bytes of a listed image still get the list's verdict."""
    allowed = (ROOT / "data/demo/photos/skimage_astronaut.jpg").read_bytes()
    hidden = (ROOT / "data/demo/photos/skimage_chelsea.jpg").read_bytes()
    forged = _shading_of_a_detail_of_b(allowed, hidden)
    allowed_pdq = phash.query_hash(model_input(allowed))
    forged_pdq = phash.query_hash(model_input(forged))
    assert allowed_pdq is not None and forged_pdq is not None
    assert phash.distance(allowed_pdq, forged_pdq) <= 31  # the bypass still matches
    settings = make_settings(tmp_path, adult_classes=("drawings",), safe_classes=("neutral",),
                             adult_threshold=0.5)
    pool = open_pool(None, settings.data_dir)
    try:
        with running(settings) as client:
            assert _post(client, forged)["verdict"] == "adult"
            KnownImages(pool).import_list([ListEntry(None, allowed_pdq.hex(), "allow", "astronaut"),
                                           ListEntry(hashlib.sha256(forged).hexdigest(), None, "allow")],
                                          by="admin")
            exact = _until(client, forged, "list")  # the exact bytes, listed by sha256: the list decides
            assert (exact["verdict"], exact["match"]["by"]) == ("safe", "sha256")
            KnownImages(pool).import_list([ListEntry(None, allowed_pdq.hex(), "allow", "astronaut")], by="admin",
                                          replace=True)
            body = _until(client, forged, "model")  # once refreshed: the sha256 entry gone, the PDQ entry kept
            assert (body["verdict"], body["verdict_source"]) == ("adult", "model") and "match" not in body, body.get("match")
    finally:
        pool.close()


def test_calibration_scores_images_with_the_model_whatever_is_known(tmp_path):
    """Point 5: the calibrate page scores labelled sets with the model itself (score cache -> score_sources)
    and judges the scores under the thresholds it tries; a listed or decided image is scored as the model
    sees it there, never given the human verdict."""
    from nsfw_core.base.labels import LabelledItem
    from nsfw_core.context import Context
    from tests.helpers.paths import COMPILED_DIR

    ctx = Context(load_settings(environ={"NSFW_DATA_DIR": str(tmp_path), "NSFW_COMPILED_DIR": COMPILED_DIR}))
    try:
        house = str(REFERENCE / "house.jpg")
        ctx.known.import_list([ListEntry(hashlib.sha256(HOUSE).hexdigest(), None, "deny")], by="admin")
        assert ctx.known.lookup(hashlib.sha256(HOUSE).hexdigest(), None) is not None
        [scored] = ctx.score_cache.score_items(ctx.models.get(), [LabelledItem(house, "neutral", "safe")], ctx.decoder,
                                               ctx.load_bytes)
        [model_only] = ctx.classifier.sources([house], known=False)
        assert model_only.classification is not None
        assert model_only.classification.verdict_source == "model" and model_only.classification.verdict == "safe"
        assert scored[1] == pytest.approx(model_only.classification.scores)
        # the Classify page and the CLI give the list's verdict, as the API does; the scores stay the model's
        [listed] = ctx.classifier.sources([house])
        assert listed.classification is not None and listed.classification.verdict_source == "list"
        assert listed.classification.verdict == "adult" and listed.classification.scores == scored[1]
    finally:
        ctx.close()


def test_an_item_queued_without_hashes_gets_them_when_decided(tmp_path):
    """The review page's fallback: stored upload bytes (or the URL, through the safe fetcher) give the hashes;
    bytes that are not the item's image (the URL serves another one now) give none: sha256 only."""
    from nsfw_core.context import Context
    from nsfw_core.state.known import item_hashes
    from tests.helpers.paths import COMPILED_DIR

    ctx = Context(load_settings(environ={"NSFW_DATA_DIR": str(tmp_path), "NSFW_COMPILED_DIR": COMPILED_DIR,
                                         "NSFW_REVIEW_STORE_UPLOADS": "true"}))
    try:
        queue = ctx.review_queue
        sha = hashlib.sha256(SMILE).hexdigest()
        item = queue.enqueue(sha, "upload", {c: 0.2 for c in ("drawings", "hentai", "neutral", "porn", "sexy")},
                             "m", "unknown", image_bytes=SMILE)
        assert queue.phash(item) is None
        assert item_hashes(ctx, queue, item, HOUSE) is None  # not this item's image
        hashes = item_hashes(ctx, queue, item)
        assert hashes is not None and len(phash.split_hex(hashes)) == 3
        queue.decide(item, "alice", "safe", phash=hashes, seen=sha)
        ctx.known.refresh()
        match = ctx.known.lookup("0" * 64, phash.query_hash(model_input(copies(SMILE)["resized 50%"])))
        assert match is not None and match.review_id == item and match.verdict == "safe" and match.by == "pdq"
        assert item_hashes(ctx, queue, item) is None  # it has hashes now
    finally:
        ctx.close()


def test_an_unreachable_database_keeps_what_is_known_and_health_says_so(tmp_path):
    """Lookups never fail: the entries in memory stay in force while the database is away, /health warns."""
    from nsfw_core.context import Context
    from tests.helpers.paths import COMPILED_DIR

    ctx = Context(load_settings(environ={"NSFW_DATA_DIR": str(tmp_path), "NSFW_COMPILED_DIR": COMPILED_DIR}))
    try:
        ctx.known.import_list([ListEntry(SHA, None, "deny")], by="admin")
        assert ctx.warnings() == [] or all("known images" not in w for w in ctx.warnings())
        ctx.database.close()  # every later connection refused: "the review queue is closed"
        ctx.known.refresh()
        match = ctx.known.lookup(SHA, None)
        assert match is not None and match.verdict == "adult"
        assert "the known images database (SQLite) is unreachable; the entries in memory stay in force (details " \
            "in the server log)" in ctx.warnings(), ctx.warnings()
        assert not [w for w in ctx.warnings() if str(tmp_path) in w or ".db" in w], ctx.warnings()
    finally:
        ctx.close()


def test_a_remembered_decision_keeps_the_decided_images_embedding_for_its_look_alikes(tmp_path, monkeypatch):
    """Issue 26 with issue 29's look-alike rule: the decided image's embedding (kept with its review item from the
    request) is remembered with the decision; a perceptual match reads it (the exact bytes need not); a copy is
    still cleared; and when the embedding cannot be read, a look-alike is not cleared (fails closed)."""
    import contextlib

    from nsfw_core.context import current
    from nsfw_core.inference.embeddings import decode_embedding
    from nsfw_core.state.migrations import KNOWN_TABLE

    settings = make_settings(tmp_path, safe_threshold=0.97, review_store_uploads=True)
    smile_sha = hashlib.sha256(SMILE).hexdigest()
    copy = copies(SMILE)["jpeg q70"]
    with running(settings) as client:
        first = _post(client, SMILE)
        assert first["verdict"] == "unknown"
        ctx = current()
        queue = ctx.review_queue
        found = queue.ticket(first["review_id"])
        assert found is not None
        kept = ctx.adapters.item_embedding(found[0])
        assert kept is not None and kept[0] == "MobileNetV2Mid"
        queue.decide(found[0], "alice", "safe", seen=smile_sha)
        _refreshed(client)
        with ctx.database.connection() as conn:
            rows = conn.execute(f"SELECT embedding, model_version FROM {KNOWN_TABLE} WHERE review_id = ? AND "
                                "op = 'add'", (found[0],)).fetchall()
        assert len(rows) == 1 and rows[0][1] == kept[1]
        remembered_vector = decode_embedding(rows[0][0])
        assert remembered_vector is not None and np.array_equal(remembered_vector, kept[2])
        exact = ctx.known.lookup(smile_sha, None)
        assert exact is not None and exact.by == "sha256" and exact.embedded and exact.embedding is None
        match = ctx.known.lookup(hashlib.sha256(copy).hexdigest(), phash.query_hash(model_input(copy)))
        assert match is not None and match.by == "pdq" and match.model_version == kept[1]
        assert match.embedding is not None and np.array_equal(match.embedding, kept[2])
        cleared = _post(client, copy)
        assert (cleared["verdict"], cleared["verdict_source"]) == ("safe", "review")

        @contextlib.contextmanager
        def unreachable() -> Iterator[Any]:
            raise OSError("the database is away")
            yield

        ctx.known._embeddings.clear()
        monkeypatch.setattr(ctx.known, "_connection", unreachable)
        unread = ctx.known.lookup(hashlib.sha256(copy).hexdigest(), phash.query_hash(model_input(copy)))
        assert unread is not None and unread.embedded and unread.embedding is None
        refused = _post(client, copy)
        assert (refused["verdict"], refused["verdict_source"]) == ("unknown", "model")
        assert _post(client, SMILE)["verdict_source"] == "review"  # the exact bytes need no embedding
