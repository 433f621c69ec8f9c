"""The API queues uncertain images for human review (issue: review queue)."""

from __future__ import annotations

import hashlib

import pytest

from nsfw_core.base.settings import CLASS_NAMES
from nsfw_core.state.review import ReviewQueue
from tests.helpers.apiclient import make_settings, running
from tests.helpers.paths import REFERENCE
from tests.helpers.servers import image, serve

pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")

SMILE = (REFERENCE / "smile.jpg").read_bytes()  # safe score 0.962: "unknown" with a safe threshold of 0.97
HOUSE = (REFERENCE / "house.jpg").read_bytes()  # safe score 0.993: "safe"
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """Every API queueing case runs on SQLite (empty URL: the data folder) and on PostgreSQL."""
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""


def queue_items(settings):
    with ReviewQueue.from_settings(settings) as queue:
        return queue.items()


def test_unknown_verdicts_are_queued_once_and_safe_ones_are_not(tmp_path, database_url):
    settings = make_settings(tmp_path, safe_threshold=0.97, database_url=database_url)
    with running(settings) as client:
        first = client.post("/predict?detail=1", content=SMILE, headers=JPEG).json()
        assert first["verdict"] == "unknown"
        assert isinstance(first["review_id"], str) and first["review_id"].startswith("rv_")  # unguessable
        again = client.post("/predict?detail=1", content=SMILE, headers=JPEG).json()
        assert again["review_id"] == first["review_id"]  # same image, still pending: not queued twice
        plain = client.post("/predict", content=SMILE, headers=JPEG).json()
        assert sorted(plain) == sorted(CLASS_NAMES)  # the original body is unchanged
        safe = client.post("/predict?detail=1", content=HOUSE, headers=JPEG).json()
        assert safe["verdict"] == "safe" and "review_id" not in safe
    items = queue_items(settings)
    assert len(items) == 1
    item = items[0]
    with ReviewQueue.from_settings(settings) as queue:
        assert queue.ticket(first["review_id"]) == (item.id, item.client)
    assert item.sha256 == hashlib.sha256(SMILE).hexdigest()
    assert item.source == "upload" and item.verdict == "unknown" and item.model == "MobileNetV2Mid"
    assert item.scores == pytest.approx(first["scores"])
    assert item.status == "pending"


def test_url_items_keep_their_url_and_bytes_and_uploads_are_stored_when_configured(tmp_path, database_url):
    settings_kw = {"safe_threshold": 0.97, "review_store_uploads": True, "database_url": database_url}
    with serve() as server:
        server.route("/smile.jpg", image(SMILE, "image/jpeg"))
        settings = make_settings(tmp_path, allow_private_hosts=(server.netloc,), **settings_kw)
        with running(settings) as client:
            by_url = client.post("/predict", params={"url": server.url("/smile.jpg"), "detail": "1"}).json()
            assert by_url["verdict"] == "unknown"
            uploaded = client.post("/predict?detail=1", content=SMILE + b"\0", headers=JPEG).json()
            assert uploaded["verdict"] == "unknown" and uploaded["review_id"] != by_url["review_id"]
    with ReviewQueue.from_settings(settings) as queue:
        by_url_ticket, uploaded_ticket = queue.ticket(by_url["review_id"]), queue.ticket(uploaded["review_id"])
        assert by_url_ticket is not None and uploaded_ticket is not None
        item = queue.get(by_url_ticket[0])
        assert item is not None
        assert item.source == server.url("/smile.jpg")
        # the bytes that were classified (issue 29): the reviewer never sees what the URL serves later
        assert item.image == SMILE
        upload = queue.get(uploaded_ticket[0])
        assert upload is not None
        assert upload.source == "upload" and upload.image == SMILE + b"\0"


def test_queue_off_and_adult_verdicts(tmp_path, database_url):
    off = make_settings(tmp_path / "off", safe_threshold=0.97, review_verdicts=(), database_url=database_url)
    with running(off) as client:
        body = client.post("/predict?detail=1", content=SMILE, headers=JPEG).json()
        assert body["verdict"] == "unknown" and "review_id" not in body
    assert queue_items(off) == []
    # an adult threshold of 0 makes every image "adult"; queued only when configured
    adult = make_settings(tmp_path / "adult", adult_threshold=0.0, review_verdicts=("unknown", "adult"),
                          database_url=database_url)
    with running(adult) as client:
        body = client.post("/predict?detail=1", content=HOUSE, headers=JPEG).json()
        assert body["verdict"] == "adult" and body["review_id"].startswith("rv_")


def test_a_broken_queue_does_not_fail_the_prediction(tmp_path):
    settings = make_settings(tmp_path, safe_threshold=0.97, database_url="postgresql://nobody@127.0.0.1:9/none")
    with running(settings) as client:
        response = client.post("/predict?detail=1", content=SMILE, headers=JPEG)
        assert response.status_code == 200
        body = response.json()
        assert body["verdict"] == "unknown"
        assert body["review_id"] is None and "unavailable" in body["review_error"]
