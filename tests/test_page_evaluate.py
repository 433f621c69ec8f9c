"""The Evaluate page, the Review page's audit and double-review items, and the Calibrate page's reviewed items
weighted to estimate production (issue 25), run headless with Streamlit's AppTest.

The data folder is a temporary one; its database is filled beforehand through ``ReviewQueue`` and the
traffic counter, as the API would have filled it.
"""

from __future__ import annotations

import hashlib

import pytest
from streamlit.testing.v1 import AppTest

from nsfw_core.access import ANONYMOUS
from nsfw_core.base.settings import load_settings
from nsfw_core.state.db import open_pool
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review.audit import AUDIT
from nsfw_core.state.thresholds import ThresholdHistory
from nsfw_core.state.traffic import TrafficCounter
from tests.helpers.pages import new_context
from tests.helpers.paths import REFERENCE, ROOT
from tests.helpers.signin import ADMIN, REVIEWER, signed_in

EVALUATE = str(ROOT / "pages" / "evaluate.py")
REVIEW = str(ROOT / "pages" / "review.py")
CALIBRATE = str(ROOT / "pages" / "calibrate.py")
HOUSE = (REFERENCE / "house.jpg").read_bytes()
ENV_VARS = ("NSFW_DATABASE_URL", "NSFW_AUDIT_RATE", "NSFW_DOUBLE_REVIEW_RATE", "NSFW_REVIEW_VERDICTS",
            "NSFW_REVIEW_STORE_UPLOADS")


def scores(adult: float) -> dict[str, float]:
    return {"porn": adult, "sexy": 0.0, "hentai": 0.0, "neutral": 1.0 - adult, "drawings": 0.0}


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NSFW_DATA_DIR", str(tmp_path))
    new_context()
    yield tmp_path
    new_context()


@pytest.fixture
def queue(data_dir):
    q = ReviewQueue(data_dir=data_dir)
    yield q
    q.close()


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [getattr(e, "value", "") for kind in ("markdown", "info", "warning", "success", "error", "caption",
                                                  "subheader") for e in at.get(kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def count_traffic(data_dir, adult: int, safe: int, unknown: int) -> None:
    pool = open_pool(None, data_dir)
    try:
        counter = TrafficCounter(pool, prepare=lambda: None)
        for verdict, n, adult_score in (("adult", adult, 0.95), ("safe", safe, 0.02), ("unknown", unknown, 0.5)):
            for _ in range(n):
                counter.observe(verdict, "model", scores(adult_score))
        counter.flush()
    finally:
        pool.close()


def audit(queue: ReviewQueue, n: int, verdict: str, label: str, probability: float, adult: float) -> int:
    item = queue.enqueue(hashlib.sha256(f"{verdict}{n}".encode()).hexdigest(), "upload", scores(adult),
                         "MobileNetV2Mid", verdict, image_bytes=HOUSE, kind=AUDIT, probability=probability)
    queue.decide(item, "alice", label)
    return item


# ---------------------------------------------------------------- the Evaluate page


def test_with_nothing_audited_the_page_says_what_is_missing_and_invents_nothing(data_dir, queue):
    at = run(signed_in(AppTest.from_file(EVALUATE, default_timeout=60), REVIEWER))
    shown = texts(at)
    assert "Nothing audited yet" in shown and "NSFW_AUDIT_RATE" in shown and "adult 1 %" in shown
    assert "Review queue page" in shown and "reviewer API" in shown
    assert "Decide about 73" in shown  # how many to review for an interval of +-5 points
    precision = {m.label: m.value for m in at.metric}
    assert precision["Precision of automatic adult"] == "not enough data yet"
    assert precision["Precision of automatic safe"] == "not enough data yet"
    assert precision["Wrong automatic decisions per day"] == "not enough data yet"
    assert "%" not in precision["Precision of automatic adult"]
    assert not at.get("vega_lite_chart")  # no chart of nothing
    assert "save thresholds on the Calibrate page" in shown


def test_the_page_shows_the_estimates_with_their_intervals_and_charts(data_dir, queue):
    count_traffic(data_dir, adult=200, safe=800, unknown=50)
    for n in range(20):  # automatic adult audited at 10 %: 2 of 20 overturned
        audit(queue, n, "adult", "neutral" if n < 2 else "porn", 0.1, 0.95)
    for n in range(10):  # automatic safe at 1 %: all confirmed
        audit(queue, n, "safe", "neutral", 0.01, 0.02)
    at = run(signed_in(AppTest.from_file(EVALUATE, default_timeout=60), REVIEWER))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Precision of automatic adult"] == "90.0 %"
    assert metrics["Precision of automatic safe"] == "100.0 %"
    assert metrics["Wrong automatic decisions per day"] == "≈ 20.0"  # 10 % of 200 adult a day, 0 of 800 safe
    shown = texts(at)
    assert "20 audited, 2 overturned" in shown and "95 % interval" in shown
    assert "Nothing audited yet" not in shown
    assert len(at.get("vega_lite_chart")) >= 2  # precision by day, verdicts by day


def test_the_evaluate_page_is_for_reviewers_and_admins(data_dir):
    at = run(signed_in(AppTest.from_file(EVALUATE, default_timeout=60), ANONYMOUS))
    assert not at.metric and "Evaluate production" not in [t.value for t in at.title]
    assert run(signed_in(AppTest.from_file(EVALUATE, default_timeout=60), ADMIN)).title[0].value == "Evaluate production"


# ---------------------------------------------------------------- the Review page


def test_an_audit_item_is_reviewed_blind(data_dir, queue):
    # (its stored bytes are the classified image's: the page shows no others, issue 29)
    item = queue.enqueue(hashlib.sha256(HOUSE).hexdigest(), "upload", scores(0.97), "MobileNetV2Mid", "adult",
                         image_bytes=HOUSE, kind=AUDIT, probability=0.01)
    at = run(signed_in(AppTest.from_file(REVIEW, default_timeout=60), REVIEWER))
    assert queue.get(item).status == "claimed"
    shown = texts(at)
    assert "Decide from the image alone" in shown
    assert "verdict adult" not in shown and "MobileNetV2Mid" not in shown and "0.97" not in shown
    assert not at.dataframe  # no scores table
    assert at.image  # the image is there, blurred until revealed
    at.button(key="label_porn").click()
    run(at)
    # decided on the bytes shown: remembered, for every client (an audit item is no client's)
    with queue.pool.transaction(write=False) as tx:
        assert tx.run("SELECT label, audience FROM known_images WHERE sha256 = ?",
                      (hashlib.sha256(HOUSE).hexdigest(),)) == [("porn", "")]


def test_an_audit_item_without_its_own_bytes_is_never_fetched_again(data_dir, queue):
    item = queue.enqueue("c" * 64, "https://example.com/audited.jpg", scores(0.97), "MobileNetV2Mid", "adult",
                         kind=AUDIT, probability=0.01)  # no bytes (an audit item always has them: a damaged one)
    at = run(signed_in(AppTest.from_file(REVIEW, default_timeout=60), REVIEWER))
    assert queue.get(item).status == "claimed"
    shown = texts(at)
    assert "The image was not stored: skip it." in shown and not at.image
    assert "refetch" not in [b.key for b in at.button]  # nothing to fetch again
    assert "verdict adult" not in shown and "0.97" not in shown


def test_double_review_on_the_page_goes_to_a_second_reviewer_then_to_an_admin(data_dir, queue):
    item = queue.enqueue(hashlib.sha256(HOUSE).hexdigest(), "upload", scores(0.5), "MobileNetV2Mid", "unknown",
                         image_bytes=HOUSE, reviews=2)
    first = run(signed_in(AppTest.from_file(REVIEW, default_timeout=60), REVIEWER))
    first.button(key="label_porn").click()
    run(first)
    assert "a second reviewer decides it too" in texts(first)
    assert "waiting for another reviewer" in texts(first)  # nothing left for this reviewer
    assert queue.get(item).status == "pending"
    queue.claim("bob")
    assert queue.decide(item, "bob", "neutral").escalated
    admin = run(signed_in(AppTest.from_file(REVIEW, default_timeout=60), ADMIN))
    shown = texts(admin)
    assert "Two reviewers disagreed" in shown and "porn" in shown and "neutral" in shown
    admin.button(key="label_safe").click()
    run(admin)
    assert queue.get(item).decision == "safe" and queue.get(item).decided_by == ADMIN.name


# ---------------------------------------------------------------- the Calibrate page's reviewed items


def test_reviewed_items_are_weighted_to_estimate_production_and_saved_with_their_histograms(data_dir, queue):
    count_traffic(data_dir, adult=100, safe=900, unknown=100)
    for n in range(10):  # the uncertain band, all reviewed
        item = queue.enqueue(hashlib.sha256(f"u{n}".encode()).hexdigest(), f"https://img.example/u{n}.jpg",
                             scores(0.4 + 0.02 * n), "MobileNetV2Mid", "unknown")
        queue.decide(item, "alice", "porn" if n >= 5 else "neutral")
    for n in range(5):
        audit(queue, n, "adult", "porn", 0.1, 0.95)
        audit(queue, n, "safe", "neutral", 0.01, 0.02)
    at = run(signed_in(AppTest.from_file(CALIBRATE, default_timeout=180)))
    at.radio(key="cal_source").set_value("reviewed")
    at.slider(key="cal_t_adult").set_value(0.7)
    at.slider(key="cal_t_safe").set_value(0.9)
    run(at)
    shown = texts(at)
    assert "Weighted to estimate production: 10 audit items" in shown
    assert "stand for about 560 production images" in shown  # 10 + 5 x 10 + 5 x 100
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Sent to review"] == "1.8 %"  # 10 of about 560, not 10 of 20
    assert metrics["Sent to review per day"] == "≈ 20"  # 1.8 % of 1,100 a day
    assert "Wrong automatic decisions per day" in metrics
    [save] = [b for b in at.button if b.label == "Save thresholds"]
    save.click()
    run(at)
    history = ThresholdHistory.from_settings(load_settings())
    try:
        [latest] = history.history(limit=1)
    finally:
        history.close()
    histograms = latest.tuned_on["score_histograms"]
    assert histograms["bins"] == 10 and histograms["images"] == 20
    assert sum(histograms["classes"]["porn"]) == pytest.approx(560)  # weighted like the set
    new_context()
    evaluate = run(signed_in(AppTest.from_file(EVALUATE, default_timeout=60), REVIEWER))
    assert "Score drift against the labelled set" in texts(evaluate)
    assert any(chart for chart in evaluate.get("vega_lite_chart") if "PSI" in chart.proto.spec)
