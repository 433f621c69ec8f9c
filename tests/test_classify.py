"""The one result type and the one use case: nsfw_core.classify."""

from __future__ import annotations

import dataclasses
from typing import Any

import jsonschema
import numpy as np
import pytest

from nsfw_core.base.errors import InvalidURL
from nsfw_core.base.settings import load_settings
from nsfw_core.base.verdict import Thresholds
from nsfw_core.classify import (
    MATCH_ADULT_MARGIN,
    MATCH_EMBEDDING_DISTANCE,
    Classification,
    FrameScore,
    ModelInfo,
    Outcome,
    ReviewTicket,
    Timings,
    judge,
)
from nsfw_core.context import Context
from nsfw_core.http.openapi import openapi_document
from nsfw_core.inference.embeddings import AdapterHead, ExampleMatch, embedding_distance
from nsfw_core.inference.pipeline import VideoInfo
from nsfw_core.state.adapters import AdapterVersion
from nsfw_core.state.known import Match
from tests.helpers.paths import COMPILED_DIR, REFERENCE_IMAGES

SCORES = {"drawings": 0.05, "hentai": 0.01, "neutral": 0.04, "porn": 0.6, "sexy": 0.3}
MODEL = ModelInfo("MobileNetV2Mid", "abc123")
TIMINGS = Timings.of(0.001, 0.0021, 0.00347, 0.0071)
SHA = "0" * 64
TICKET = "rv_" + "Ab0-_" * 4 + "xy"  # a review id's shape (nsfw_core.state.review.queue.new_ticket)


def _detail_validator() -> jsonschema.Draft202012Validator:
    doc = openapi_document()
    schema = {**doc["components"]["schemas"]["Detail"], "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_judge_decides_the_verdict_from_the_thresholds():
    result = judge(SCORES, Thresholds(adult=0.7, safe=0.9), MODEL, TIMINGS, SHA)
    assert result.verdict == "adult"
    assert result.adult_score == pytest.approx(0.9)
    assert result.safe_score == pytest.approx(0.09)
    assert result.under(Thresholds(adult=0.95, safe=0.9)).verdict == "unknown"
    assert result.under(Thresholds(adult=0.95, safe=0.05)).verdict == "safe"


def test_timings_are_milliseconds_rounded_to_a_hundredth():
    assert TIMINGS == Timings(fetch_ms=1.0, decode_ms=2.1, inference_ms=3.47, total_ms=7.1)


def test_to_dict_is_the_api_detail_in_its_documented_order():
    result = judge(SCORES, Thresholds(), MODEL, TIMINGS, SHA)
    body = result.to_dict()
    assert list(body) == ["scores", "verdict", "adult_score", "safe_score", "thresholds", "model", "timings",
                          "sha256", "verdict_source"]
    assert body["model"] == {"name": "MobileNetV2Mid", "version": "abc123"}
    assert body["timings"] == {"fetch_ms": 1.0, "decode_ms": 2.1, "inference_ms": 3.47, "total_ms": 7.1}
    assert body["thresholds"] == {"adult": 0.7, "safe": 0.9, "adult_classes": ["porn", "sexy"],
                                  "safe_classes": ["neutral", "drawings"], "version": None}
    versioned = judge(SCORES, Thresholds(0.6, 0.8), MODEL, TIMINGS, SHA, thresholds_version=4)
    assert versioned.to_dict()["thresholds"] == {"adult": 0.6, "safe": 0.8, "adult_classes": ["porn", "sexy"],
                                                 "safe_classes": ["neutral", "drawings"], "version": 4}
    assert versioned.under(Thresholds(0.5, 0.8), 5).to_dict()["thresholds"]["version"] == 5
    queued = dataclasses.replace(result, review=ReviewTicket(TICKET)).to_dict()
    assert list(queued)[-1] == "review_id" and queued["review_id"] == TICKET
    failed = dataclasses.replace(result, review=ReviewTicket(None, "down")).to_dict()
    assert (failed["review_id"], failed["review_error"]) == (None, "down")


@pytest.mark.parametrize("version", [None, 7])
@pytest.mark.parametrize("review", [None, ReviewTicket(TICKET), ReviewTicket(None, "the queue is down")])
def test_every_shape_of_to_dict_validates_against_the_openapi_detail(review, version):
    body = dataclasses.replace(judge(SCORES, Thresholds(), MODEL, TIMINGS, "ab" * 32, version),
                               review=review).to_dict()
    _detail_validator().validate(body)


def test_the_openapi_detail_lists_exactly_the_fields_of_classification():
    schemas = openapi_document()["components"]["schemas"]
    props = schemas["Detail"]["properties"]

    def named(prop):  # a property that is another schema of the document
        return schemas[prop["$ref"].rsplit("/", 1)[1]]["properties"]

    # near: a look-alike the model disagreed with, for the reviewer only (issue 29: never in an answer);
    # embedding: the image's, kept with a queued item and compared with a look-alike's (issue 26: never answered)
    fields = {f.name for f in dataclasses.fields(Classification)} - {"review", "thresholds_version", "near",
                                                                     "embedding"}
    assert set(props) == fields | {"review_id", "review_error"}
    assert "version" in named(props["thresholds"])  # thresholds_version is rendered there
    assert set(named(props["timings"])) == {f.name for f in dataclasses.fields(Timings)}
    assert set(named(props["model"])) == {f.name for f in dataclasses.fields(ModelInfo)}


def test_outcome_to_dict_is_the_cli_line():
    ok = Outcome("a.jpg", judge(SCORES, Thresholds(), MODEL, TIMINGS, SHA))
    assert ok.to_dict() == {"source": "a.jpg", "scores": SCORES, "verdict": "adult"}
    failed = Outcome("b.jpg", error=InvalidURL("cannot read b.jpg"))
    assert failed.to_dict() == {"source": "b.jpg", "error": {"code": "invalid_url", "message": "cannot read b.jpg"}}
    assert not failed.ok and ok.ok


def test_classify_sources_gives_one_outcome_per_source_in_order(tmp_path):
    ctx = Context(load_settings(environ={"NSFW_DATA_DIR": str(tmp_path), "NSFW_COMPILED_DIR": COMPILED_DIR}))
    try:
        sources = [str(p) for p in REFERENCE_IMAGES[:3]] + [str(tmp_path / "missing.jpg")]
        outcomes = ctx.classifier.sources(sources, batch_size=2)
        assert [o.source for o in outcomes] == sources
        assert [o.ok for o in outcomes] == [True, True, True, False]
        assert outcomes[3].error is not None and outcomes[3].error.code == "invalid_url"
        first = outcomes[0].classification
        assert first is not None and len(first.sha256) == 64
        assert first.model.name == "MobileNetV2Mid"
        assert first.verdict == ctx.thresholds.current().thresholds.decide(first.scores)
        assert sum(first.scores.values()) == pytest.approx(1.0, abs=1e-5)
    finally:
        ctx.close()


# ---------------------------------------------------------------- who decides, and the look-alike rule with embeddings


UNKNOWN_SCORES = {"drawings": 0.05, "hentai": 0.05, "neutral": 0.6, "porn": 0.2, "sexy": 0.1}  # unknown by default


def _decided(embedding: np.ndarray | None, *, embedded: bool | None = None, version: str = "abc123",
             scores: dict[str, float] | None = None, verdict: str = "safe", by: str = "pdq") -> Match:
    """A remembered decision of an image with these scores (and embedding), matched by PDQ."""
    return Match("review", verdict, verdict, by, 20, 7, 7, scores or UNKNOWN_SCORES, "MobileNetV2Mid", version,
                 embedding is not None if embedded is None else embedded, embedding)


def _vector(seed: int, dim: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random(dim).astype(np.float32)


def test_the_order_of_who_decides_is_known_image_then_example_set_then_the_model():
    rule = Thresholds()
    allow = ExampleMatch("ours", "safe", 0.97, 0.9)
    e = _vector(1)
    exact = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(e, verdict="adult", by="sha256"),
                  example=allow, embedding=e)
    assert (exact.verdict, exact.verdict_source, exact.example) == ("adult", "review", None)
    by_example = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, example=allow, embedding=e)
    assert (by_example.verdict, by_example.verdict_source) == ("safe", "examples")
    by_model = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, embedding=e)
    assert (by_model.verdict, by_model.verdict_source) == ("unknown", "model")


def test_a_look_alike_must_also_lie_near_the_decided_images_embedding():
    rule, e = Thresholds(), _vector(1)
    assert rule.decide(UNKNOWN_SCORES) == "unknown"
    far = _vector(2)
    assert embedding_distance(e, far) > MATCH_EMBEDDING_DISTANCE
    near = e + np.float32(0.001)
    assert embedding_distance(e, near) < MATCH_EMBEDDING_DISTANCE
    cleared = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(near), embedding=e)
    assert (cleared.verdict, cleared.verdict_source) == ("safe", "review")
    # the same adult score, but another picture to the model: refused, kept for the reviewer
    refused = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(far), embedding=e)
    assert (refused.verdict, refused.verdict_source, refused.match) == ("unknown", "model", None)
    assert refused.near is not None and refused.near.entry_id == 7
    assert refused.under(rule).verdict == "unknown"  # re-judging keeps the embedding: still refused
    # a decision that keeps an embedding which could not be read now: fails closed
    unread = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(None, embedded=True), embedding=e)
    assert (unread.verdict, unread.verdict_source) == ("unknown", "model")
    # embeddings of another model version are not compared; nor when the request has none: the adult score decides
    other = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(far, version="old"), embedding=e)
    assert other.verdict_source == "review"
    assert judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(far)).verdict_source == "review"
    # a refused look-alike falls to the next in the order: an example set
    allow = ExampleMatch("ours", "safe", 0.97, 0.9)
    fallen = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(far), embedding=e, example=allow)
    assert (fallen.verdict, fallen.verdict_source) == ("safe", "examples")


def test_a_perceptual_match_never_clears_what_an_example_set_blocks():
    rule, e = Thresholds(), _vector(1)
    block = ExampleMatch("theirs", "adult", 0.95, 0.9)
    judged = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(e), embedding=e, example=block)
    assert (judged.verdict, judged.verdict_source) == ("adult", "examples")
    # the exact bytes a reviewer decided still win (the order: known image first)
    exact = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(e, by="sha256"), embedding=e,
                  example=block)
    assert (exact.verdict, exact.verdict_source) == ("safe", "review")


def _adapter(version: str = "abc123") -> AdapterVersion:
    """An adapter whose score follows the embedding's first value only (the five scores weigh nothing)."""
    weights = np.zeros(16 + 5)
    weights[0] = 12.0
    return AdapterVersion("policy", 1, "MobileNetV2Mid", version, AdapterHead(16, weights, -6.0), 0.7, 0.6, {},
                          "0" * 64, 40, True, "test", 0.0)


def test_under_an_adapter_a_look_alike_is_compared_on_the_adapters_score():
    adapter = _adapter()
    rule = adapter.thresholds(Thresholds())
    decided_e = np.full(16, 0.5, np.float32)  # adapter score 0.5: unknown under 0.7 / 0.6 (safe score 0.5)
    mine = decided_e.copy()
    mine[0] = 0.52  # the adapter's score 0.56 (still unknown): more than MATCH_ADULT_MARGIN above the decided 0.5
    assert adapter.score(mine, UNKNOWN_SCORES) - adapter.score(decided_e, UNKNOWN_SCORES) > MATCH_ADULT_MARGIN
    assert embedding_distance(mine, decided_e) < MATCH_EMBEDDING_DISTANCE  # near, and the base scores the same
    refused = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(decided_e), embedding=mine,
                    adapter=adapter)
    assert (refused.verdict, refused.verdict_source) == ("unknown", "model") and refused.adapter is adapter
    assert refused.near is not None
    same = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=_decided(decided_e), embedding=decided_e,
                 adapter=adapter)
    assert (same.verdict, same.verdict_source) == ("safe", "review")
    # the base model alone would clear it: the same five scores
    assert judge(UNKNOWN_SCORES, Thresholds(), MODEL, TIMINGS, SHA, match=_decided(decided_e),
                 embedding=mine).verdict_source == "review"
    # without the decided image's embedding (remembered before issue 26), or from another model version, the
    # adapter's score of the decided image is unknown: not alike
    for match in (_decided(None), _decided(decided_e, version="old")):
        judged = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, match=match, embedding=decided_e, adapter=adapter)
        assert judged.verdict_source == "model", match


# ---------------------------------------------------------------- issue 26 with issue 27's videos


def _frames(firsts: list[float], scores: dict[str, float] = UNKNOWN_SCORES) -> list[FrameScore]:
    """Video frames one second apart, each with an embedding whose first value gives _adapter()'s score."""
    out = []
    for i, first in enumerate(firsts):
        e = np.full(16, 0.5, np.float32)
        e[0] = first
        out.append(FrameScore(i, i * 1000, dict(scores), e))
    return out


def test_a_video_under_an_adapter_is_judged_on_its_frames_adapter_scores():
    """The adapter scores every frame: the worst by its score decides (not the base model's worst, here the
    first frame on a tie of the five scores), and the timeline's segments are judged on it too."""
    adapter = _adapter()
    rule = adapter.thresholds(Thresholds())  # adult 0.7, safe 0.6 on the adapter's score
    video = VideoInfo("mp4", "h264", 320, 240, 3000, 90, 3, 3)
    frames = _frames([0.2, 0.9, 0.3])  # adapter scores 0.03, 1.0, 0.05: safe, adult, safe
    judged = judge(UNKNOWN_SCORES, rule, MODEL, TIMINGS, SHA, frames=frames, adapter=adapter, video=video)
    assert (judged.verdict, judged.deciding_frame, judged.deciding_time_ms) == ("adult", 1, 1000)
    assert judged.segments is not None
    assert [(s.start_ms, s.end_ms, s.verdict) for s in judged.segments] == [
        (0, 1000, "safe"), (1000, 2000, "adult"), (2000, 3000, "safe")]
    base = judge(UNKNOWN_SCORES, Thresholds(), MODEL, TIMINGS, SHA, frames=frames, video=video)
    assert base.segments is not None and [s.verdict for s in base.segments] == ["unknown"]
    assert (base.verdict, base.deciding_frame) == ("unknown", 0)


def test_a_known_video_never_clears_under_an_adapter_and_keeps_the_margin_without_one():
    """A vPDQ match keeps no embedding (a known video has none): under an adapter the decided video's score is
    unknown, so the match is refused (fails closed); with the base model the margin alone applies, as before."""
    adapter = _adapter()
    video = VideoInfo("mp4", "h264", 320, 240, 2000, 60, 2, 2)
    frames = _frames([0.5, 0.5])  # adapter score 0.5: unknown under 0.7 / 0.6
    known = Match("review", "safe", "neutral", "vpdq", 12, 7, 7, UNKNOWN_SCORES, "MobileNetV2Mid", share=0.9)
    under = judge(UNKNOWN_SCORES, adapter.thresholds(Thresholds()), MODEL, TIMINGS, SHA, frames=frames,
                  match=known, adapter=adapter, video=video)
    assert (under.verdict, under.verdict_source, under.near) == ("unknown", "model", known)
    base = judge(UNKNOWN_SCORES, Thresholds(), MODEL, TIMINGS, SHA, frames=frames, match=known, video=video)
    assert (base.verdict, base.verdict_source) == ("safe", "review")


def test_frames_without_embeddings_are_judged_by_the_model_under_the_thresholds_in_force():
    """A video job's frames are stored without embeddings: Classifier.verdict then uses neither the adapter nor
    its thresholds (the adapter's thresholds on the base model's summed classes would be neither rule)."""
    import types

    from nsfw_core.classify import Classifier

    adapter = dataclasses.replace(_adapter(), t_adult=0.2, t_safe=0.99)  # its thresholds would call these adult
    active = types.SimpleNamespace(thresholds=Thresholds(), version=3)
    stub: Any = types.SimpleNamespace  # only the parts verdict() reads
    classifier = Classifier(None, None, None, stub(current=lambda: active),  # type: ignore[arg-type]
                            stub(queues=lambda verdict: verdict == "unknown"), lambda s: b"",
                            adapters=stub(current=lambda name, version: adapter))
    frames = [FrameScore(i, i * 1000, dict(UNKNOWN_SCORES)) for i in range(3)]
    result, private = classifier.verdict(UNKNOWN_SCORES, None, MODEL, TIMINGS, SHA, frames=frames)
    assert (result.verdict, result.thresholds, result.thresholds_version, result.adapter) == (
        "unknown", Thresholds(), 3, None)
    assert not private
    with_embeddings = _frames([0.5, 0.5, 0.5])
    judged, _ = classifier.verdict(UNKNOWN_SCORES, None, MODEL, TIMINGS, SHA, frames=with_embeddings)
    assert judged.adapter is adapter and judged.thresholds_version is None  # embeddings: the adapter judges
