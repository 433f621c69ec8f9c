"""The evidence heat-maps (nsfw_core.inference.explain): the windows, log-odds under saturation, the passes through
the micro-batcher and their cancellation, and, on the real model, that the evidence lies where the drawing is,
on a plain background and next to a photograph where the probabilities saturate."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from PIL import Image

from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.images import overlay
from nsfw_core.inference import explain
from nsfw_core.inference.batcher import MicroBatcher
from tests.helpers.models import model_named
from tests.helpers.paths import ROOT

DEMO = ROOT / "data" / "demo"
S = 224


# ---------------------------------------------------------------- the plan and the maths


def test_one_pass_per_cell_and_larger_windows_cover_every_cell_alike():
    p = explain.plan(S, 8)
    assert (p.rows, p.cols, p.window) == (8, 8, 1)
    assert p.windows == 64 and p.passes == 65 == explain.passes(8)
    assert np.all(p.cover.sum(axis=0) == 1)
    w2 = explain.plan(S, 8, window=2)  # what bench/explain.py compares with
    assert w2.passes == 82 and np.all(w2.cover.sum(axis=0) == 4)  # the edges' too: the windows overhang
    for (top, left, bottom, right), cover in zip(p.boxes, p.cover, strict=True):
        assert 0 <= top < bottom <= S and 0 <= left < right <= S
        rows, cols = np.nonzero(cover)
        assert top == rows.min() * 28 and bottom == (rows.max() + 1) * 28
        assert left == cols.min() * 28 and right == (cols.max() + 1) * 28
    assert explain.plan(S, 16).passes == 257 and explain.plan(S, 3).passes == 10


def test_log_odds_read_a_saturated_probability_without_loss():
    # neutral 0.9997 and drawings 3e-4, then drawings falls to 1e-4 (neutral 0.9999): as probabilities both
    # move by 2e-4; as log-odds drawings falls by log(3) = 1.1 nats, as much as 0.5 -> 0.25 would
    before = np.array([[3e-4, 1e-6, 0.9997, 1e-7, 1e-7]], np.float32)
    after = np.array([[1e-4, 1e-6, 0.9999, 1e-7, 1e-7]], np.float32)
    drop = (explain.log_odds(before) - explain.log_odds(after))[0]
    assert drop[0] == pytest.approx(np.log(3e-4 / 1e-4) - np.log((1 - 1e-4 - 2.2e-6) / (1 - 3e-4 - 2.2e-6)),
                                    rel=1e-3)
    assert abs(float(before[0, 0] - after[0, 0])) < 3e-4
    # the dominant class's log-odds come from the small ones: log(0.9997) - log(3e-4 + ...), not log(1 - p)
    exact = np.log(0.9997) - np.log(3e-4 + 1e-6 + 2e-7)
    assert explain.log_odds(before)[0, 2] == pytest.approx(exact, rel=1e-5)
    # a probability that underflowed is floored, not -inf
    assert np.isfinite(explain.log_odds(np.array([[0.0, 0.0, 1.0, 0.0, 0.0]]))).all()


class Spot:
    """A model that finds 'drawings' in one patch: its drawings logit is the patch's darkness times ``gain``
    (the others 0), so the evidence for drawings is exactly there.  With a large gain the probabilities
    saturate (drawings 1.000), as the real model's do next to a photograph."""

    input_size = S

    def __init__(self, box: tuple[int, int, int, int], gain: float, bias: float = 0.0) -> None:
        self.box, self.gain, self.bias = box, gain, bias
        self.name, self.version, self.calls = "Spot", "1", 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += len(batch)
        top, left, bottom, right = self.box
        darkness = 1.0 - batch[:, top:bottom, left:right].mean(axis=(1, 2, 3))
        logits = np.zeros((len(batch), 5))
        logits[:, 0] = self.gain * darkness + self.bias
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return out


def _dark_square(box: tuple[int, int, int, int]) -> np.ndarray:
    x = np.ones((S, S, 3), np.float32)
    top, left, bottom, right = box
    x[top:bottom, left:right] = 0.0
    return x


def test_the_evidence_lies_where_the_model_finds_it_even_when_its_probability_saturates():
    box = (28, 140, 84, 196)  # cells (1..2, 5..6) of 8 x 8
    region = np.zeros((8, 8))
    region[1:3, 5:7] = 1.0
    x = _dark_square(box)
    for gain, bias in ((2.0, 0.0), (-30.0, 0.0), (40.0, -10.0)):  # drawings ~0.6; ~0 (1e-13); ~1 (1 - 1e-13)
        model = Spot(box, gain, bias)
        e = explain.explain(model, x, grid=8)
        assert model.calls == e.passes == 65
        heat = e.heatmaps["drawings"] * np.sign(gain)  # a negative gain: the square is evidence against
        assert explain.mass_within(heat, region) > 0.9, (gain, np.round(heat, 2))
    # with a saturated probability, the same map made of probabilities shows nothing measurable
    model = Spot(box, -30.0)
    probs = np.concatenate([model.predict(b) for b in explain.variants(x, explain.plan(S, 8))])
    assert np.abs(probs[0, 0] - probs[1:, 0]).max() < 1e-9
    assert np.abs(explain.explain(model, x).heatmaps["drawings"]).max() > 1.0


def test_stored_evidence_reads_back_and_another_method_version_does_not():
    e = explain.explain(Spot((0, 0, 56, 56), 3.0), _dark_square((0, 0, 56, 56)), grid=4, frame=3)
    doc = e.to_stored()
    back = explain.from_stored(doc)
    assert back is not None and (back.rows, back.cols, back.frame, back.passes) == (4, 4, 3, e.passes)
    for c in CLASS_NAMES:
        assert np.allclose(back.heatmaps[c], e.heatmaps[c], atol=1e-4)
    assert explain.from_stored({**doc, "method": {**doc["method"], "version": 0}}) is None
    assert explain.from_stored({**doc, "heatmaps": {"drawings": [[1.0]]}}) is None
    assert explain.from_stored({}) is None


def test_the_deciding_class():
    scores = {"drawings": 0.1, "hentai": 0.05, "neutral": 0.45, "porn": 0.25, "sexy": 0.15}
    assert explain.deciding_class(scores, "unknown", ("porn", "sexy"), ("neutral", "drawings")) == "porn"
    assert explain.deciding_class(scores, "adult", ("hentai", "sexy"), ("neutral", "drawings")) == "sexy"
    assert explain.deciding_class(scores, "safe", ("porn", "sexy"), ("neutral", "drawings")) == "neutral"


def test_the_overlay_draws_the_positive_evidence_only():
    img = Image.new("RGB", (300, 200), (120, 120, 120))
    heat = np.zeros((4, 4))
    heat[0, 0] = 2.0
    heat[3, 3] = -5.0
    out = np.asarray(overlay.overlay(img, heat), dtype=int)
    assert out.shape == (200, 300, 3)
    assert out[10, 10, 0] > out[10, 10, 2] + 60  # red over the evidence
    assert tuple(out[190, 290]) == tuple(out[100, 150]) == (90, 90, 90)  # evidence against: nothing drawn
    flat = np.asarray(overlay.overlay(img, np.full((4, 4), 0.001)), dtype=int)  # nothing measurable
    assert (flat == 90).all()


# ---------------------------------------------------------------- through the micro-batcher


def test_the_passes_run_through_the_batcher_and_stop_when_cancelled():
    box = (28, 140, 84, 196)
    x = _dark_square(box)

    async def run() -> tuple[explain.Explanation, int, int]:
        model = Spot(box, 2.0)
        batcher = MicroBatcher(model, max_batch=8, max_wait_s=0.0, queue_size=512)
        batcher.start()
        try:
            whole = await explain.explain_on(batcher.predict, x, name="Spot", version="1")
            ran = batcher.stats.items

            def slowly(batch: np.ndarray) -> np.ndarray:  # a slow model, to cancel the explanation midway
                time.sleep(0.05)
                return Spot.predict(model, batch)

            model.predict = slowly  # type: ignore[method-assign]
            task = asyncio.ensure_future(explain.explain_on(batcher.predict, x, name="Spot", version="1"))
            await asyncio.sleep(0.12)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.3)  # anything queued is dropped, not run
            return whole, ran, batcher.stats.items - ran
        finally:
            await batcher.stop()

    whole, ran, after_cancel = asyncio.run(run())
    assert ran == whole.passes == 65
    assert np.allclose(whole.heatmaps["drawings"], explain.explain(Spot(box, 2.0), x).heatmaps["drawings"])
    assert 0 < after_cancel < 65 // 2, after_cancel  # a few chunks ran, the rest never did


# ---------------------------------------------------------------- the real model


def _composite(background: Image.Image, size: int, at: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The demo landscape drawing pasted at ``at`` on a 448 x 448 ``background``: the model input and, per cell of
    8 x 8, the share of it the drawing covers."""
    drawing = Image.open(DEMO / "drawings" / "pillow_landscape.jpg").convert("RGB").resize((size, size))
    canvas = background.convert("RGB").resize((448, 448))
    canvas.paste(drawing, at)
    model = model_named("MobileNetV2Mid")
    x = model.preprocess(np.asarray(canvas))
    x0, y0, x1, y1 = (v / 56 for v in (at[0], at[1], at[0] + size, at[1] + size))
    cells = np.array([[max(0.0, min(i + 1, y1) - max(i, y0)) * max(0.0, min(j + 1, x1) - max(j, x0))
                       for j in range(8)] for i in range(8)])
    return x, cells


PLAIN = Image.new("RGB", (448, 448), (255, 255, 255))
PHOTO = Image.open(DEMO / "photos" / "skimage_coffee.jpg").crop((150, 0, 450, 200))  # neutral 0.9999 alone


def test_on_a_plain_background_the_drawings_evidence_lies_over_the_drawing():
    model = model_named("MobileNetV2Mid")
    x, region = _composite(PLAIN, 134, (280, 40))
    e = explain.explain(model, x)
    assert 0.25 < e.scores["drawings"] < 0.4  # "which the model scores drawings about 0.3"
    heat = e.heatmaps["drawings"]
    assert explain.mass_within(heat, region) > 0.6, np.round(heat, 2)  # the drawing covers 7 % of the image
    assert np.abs(heat[region == 0]).max() < 1e-6  # hiding plain background with its own colour changes nothing


def test_next_to_a_photograph_a_saturated_probability_still_shows_where_the_drawing_is():
    model = model_named("MobileNetV2Mid")
    x, region = _composite(PHOTO, 112, (326, 10))
    e = explain.explain(model, x)
    assert f"{e.scores['drawings']:.3f}" == "0.000" and f"{e.scores['neutral']:.3f}" == "1.000"
    # hiding any cell of the drawing moves the drawings probability by nothing measurable...
    probs = np.concatenate([model.predict(b) for b in explain.variants(x, explain.plan(S, 8))])
    moved = np.abs(probs[1:, 0] - probs[0, 0]).reshape(8, 8)
    assert moved[region > 0.5].max() < 5e-4
    # ...while its log-odds fall by a good part of a nat there, and the map's evidence lies mostly there
    heat = e.heatmaps["drawings"]
    assert heat[region > 0.5].max() > 0.5
    assert explain.mass_within(heat, region) > 0.6, np.round(heat, 2)
