"""What the Review page shows beside an item: where the model looked, and similar past decisions.

**Evidence** (:func:`item_evidence`, :func:`show_overlay`): the heat-maps of the item's own bytes
(:mod:`nsfw_core.inference.explain`: occlusion in log-odds), computed when the item is first claimed, or
ahead of that by one background thread per process (:func:`prefetch`, ``NSFW_EVIDENCE_AHEAD`` items), and
kept with the item (:mod:`nsfw_core.state.review.evidence`), so any replica and any later claim shows
them at once.  The page draws the deciding class's map over the image (another class on request),
blurred like the image until the reviewer reveals it.  For an animation the map is of its deciding frame,
the one the verdict was judged on, and is drawn over that frame.  For a video too: the item keeps when its
deciding frame is shown (migration 14), and that one frame is decoded alone in the isolated lane
(:meth:`~nsfw_core.inference.pipeline.Decoder.video_frame`: its group of pictures, within NSFW_VIDEO_TIMEOUT and
the pixel budget); a video queued before that is decoded and scored again as a request would (its deciding frame
found as an animation's).  An item shown
*blind* (an audit item, issue 25: no verdict, no scores) shows no evidence either: the map is the model's.

**Similar past decisions** (:func:`show_similar`): the decided items closest to this one
(:mod:`nsfw_core.state.review.similar`: by PDQ, and by embedding where the item and decided items keep one of
the same model version), each with its decision, who decided and when, how close it is and by what, and a
blurred thumbnail of its kept bytes.

Pure helpers (no Streamlit calls) are :func:`item_evidence`, :func:`frame_base`, :func:`similar_items` and
:func:`prefetch`; the ``show_*`` functions draw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import weakref
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.settings import MODEL_NAMES
from nsfw_core.context import Context
from nsfw_core.images import overlay, phash
from nsfw_core.images.sniff import sniff_video
from nsfw_core.inference import explain
from nsfw_core.inference.model import Model, scores_dict
from nsfw_core.inference.pipeline import FrameInputs
from nsfw_core.state.db import Pool
from nsfw_core.state.review import Item, ReviewQueue, iso
from nsfw_core.state.review import evidence as store
from nsfw_core.state.review.similar import (
    MAX_DISTANCE,
    MAX_EMBEDDING_DISTANCE,
    EmbeddingFinder,
    Finder,
    PdqFinder,
    Similar,
    similar_decisions,
)
from nsfw_ui import widgets

log = logging.getLogger(__name__)

EVIDENCE_KEY = "evidence_cache"  # {item id: Evidence} this session has shown
THUMBS_KEY = "evidence_thumbs"  # {item id: thumbnail} of similar decided items
THUMB_SIDE = 128
VIDEO_SIDE = 384  # a video's deciding frame (its 224 x 224 model input) is drawn this large
WAIT_S = 30.0  # how long the page waits for the background thread computing the same item
_md = widgets.md_escape


@dataclasses.dataclass(frozen=True)
class Evidence:
    """An item's explanation, and (an animation) the model input of the frame it explains, to draw on."""

    explanation: explain.Explanation
    frame_input: np.ndarray | None = None


def blind(item: Item) -> bool:
    """An audit item (issue 25): reviewers see neither the model's verdict nor its scores, so no evidence."""
    return item.blind


def _model(ctx: Context, item: Item) -> Model:
    """The model that scored the item (the default one when that is not a model of this service)."""
    return ctx.models.get(item.model if item.model in MODEL_NAMES else None)


def _deciding(ctx: Context, model: Model, x: np.ndarray | FrameInputs) -> tuple[np.ndarray, int | None]:
    """A still image's input, or an animation's deciding frame (the highest adult score under the thresholds
    in force, the earliest on a tie, as the verdict is judged) and its index."""
    if not isinstance(x, FrameInputs):
        return x, None
    thresholds = ctx.thresholds.current().thresholds
    probs = model.predict(x.inputs)
    k = max(range(len(x.refs)), key=lambda i: (thresholds.adult_score(scores_dict(probs[i])), -x.refs[i].index))
    return x.inputs[k], x.refs[k].index


# ---------------------------------------------------------------- computing and keeping


_computing: dict[int, threading.Event] = {}  # item ids being computed in this process
_computing_lock = threading.Lock()


def _usable(found: explain.Explanation | None, model: Model, grid: int) -> bool:
    return found is not None and found.model == model.name and found.rows == grid and found.cols == grid


def item_evidence(ctx: Context, queue: ReviewQueue, item: Item, data: bytes) -> Evidence:
    """The item's evidence: kept with it, or computed now from ``data`` (its own bytes) and kept.

    Waits when another thread of this process is computing it; raises the core's errors (a model that
    cannot load, bytes that do not decode)."""
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise NSFWError("these are not the bytes that were classified: no evidence is shown for them")
    model = _model(ctx, item)
    grid = ctx.settings.explain_grid
    mine: threading.Event | None = None
    while mine is None:
        found = explain.from_stored(store.load(queue.pool, item.id) or {})
        if found is not None and _usable(found, model, grid):
            return Evidence(found)
        with _computing_lock:
            running = _computing.get(item.id)
            if running is None:
                mine = _computing[item.id] = threading.Event()
        if running is not None and not running.wait(WAIT_S):
            mine = threading.Event()  # the other thread is stuck: compute it here
    try:
        return _compute(ctx, queue, item, data, model, grid)
    finally:
        with _computing_lock:
            if _computing.get(item.id) is mine:
                del _computing[item.id]
        mine.set()


def _video_frame(ctx: Context, queue: ReviewQueue, item: Item, data: bytes, model: Model
                 ) -> tuple[np.ndarray, int] | None:
    """A video item's deciding frame (its model input and index), decoded alone; None when the item does not keep
    its time (queued before migration 14) or is not a video."""
    if sniff_video(data) is None:
        return None
    at = store.deciding_ms(queue.pool, item.id)
    if at is None:
        return None
    ref, x = ctx.decoder.video_frame(model, data, at)
    return x, ref.index


def _compute(ctx: Context, queue: ReviewQueue, item: Item, data: bytes, model: Model, grid: int) -> Evidence:
    alone = _video_frame(ctx, queue, item, data, model)
    if alone is not None:
        found = explain.explain(model, alone[0], grid=grid, name=model.name, version=model.version, frame=alone[1])
        store.save(queue.pool, item.id, found.to_stored(), sha256=item.sha256)
        return Evidence(found, alone[0])
    prepared = ctx.decoder.prepare(model, data)
    if isinstance(prepared, np.ndarray):  # its hashes, for similar past decisions (an item queued without them)
        store.keep_hashes(queue.pool, item.id, item.sha256, phash.join_hex(phash.stored_hashes(prepared)))
    x, frame = _deciding(ctx, model, prepared)
    found = explain.explain(model, x, grid=grid, name=model.name, version=model.version, frame=frame)
    store.save(queue.pool, item.id, found.to_stored(), sha256=item.sha256)
    return Evidence(found, x if frame is not None else None)


def frame_base(ctx: Context, queue: ReviewQueue, item: Item, data: bytes, frame: int) -> np.ndarray | None:
    """The model input of an animation's or a video's frame ``frame`` (to draw its evidence on), or None."""
    alone = _video_frame(ctx, queue, item, data, _model(ctx, item))
    if alone is not None:
        return alone[0] if alone[1] == frame else None
    prepared = ctx.decoder.prepare(_model(ctx, item), data)
    if not isinstance(prepared, FrameInputs):
        return None
    for ref, x in zip(prepared.refs, prepared.inputs, strict=True):
        if ref.index == frame:
            return np.asarray(x)
    return None


class _Ahead:
    """The one background thread per process that computes evidence ahead of the reviewers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self, ctx: Context, queue: ReviewQueue, count: int) -> bool:
        with self.lock:
            if count <= 0 or (self.thread is not None and self.thread.is_alive()):
                return False
            self.thread = threading.Thread(target=self._run, args=(ctx, queue, count), name="nsfw-evidence",
                                           daemon=True)
            self.thread.start()
            return True

    @staticmethod
    def _run(ctx: Context, queue: ReviewQueue, count: int) -> None:
        skipped: tuple[int, ...] = ()
        try:
            for _ in range(count + 8):  # a few more looks than items, for the ones skipped on the way
                ids = store.missing(queue.pool, 1, exclude=skipped)
                if not ids or count <= 0:
                    return
                item = queue.get(ids[0])
                if item is None or blind(item) or not item.image:
                    skipped += (ids[0],)
                    continue
                try:
                    item_evidence(ctx, queue, item, item.image)
                    count -= 1
                except NSFWError as exc:  # undecodable, not the classified bytes: nothing to show, skip it
                    log.info("review item %d: no evidence (%s)", item.id, exc.message)
                    skipped += (item.id,)
        except Exception as exc:  # the context was closed, the database went away: try again on the next page
            log.info("computing evidence ahead stopped: %r", exc)


_ahead = _Ahead()


def prefetch(ctx: Context, queue: ReviewQueue) -> bool:
    """Start computing the evidence of the next ``NSFW_EVIDENCE_AHEAD`` items without any, in the background
    (one thread per process; False when it is running already or the setting is 0)."""
    return _ahead.start(ctx, queue, ctx.settings.evidence_ahead)


# ---------------------------------------------------------------- similar past decisions


_finders: weakref.WeakKeyDictionary[Pool, list[Finder]] = weakref.WeakKeyDictionary()
_finders_lock = threading.Lock()


def finders(queue: ReviewQueue) -> list[Finder]:
    """The finders of similar decided items on the queue's database (one of each per process and database): by PDQ,
    then by embedding."""
    with _finders_lock:
        found = _finders.get(queue.pool)
        if found is None:
            found = _finders[queue.pool] = [PdqFinder(queue.pool), EmbeddingFinder(queue.pool)]
    return list(found)


def similar_items(queue: ReviewQueue, item: Item, count: int = 4) -> list[Similar]:
    """The decided items closest to ``item``, closest first (see :mod:`nsfw_core.state.review.similar`)."""
    return similar_decisions(queue.pool, item.id, finders(queue), count)


# ---------------------------------------------------------------- drawing


def _cache() -> dict[int, Evidence]:
    cache: dict[int, Evidence] = st.session_state.setdefault(EVIDENCE_KEY, {})
    return cache


def deciding_class(ctx: Context, item: Item) -> str:
    thresholds = ctx.thresholds.current().thresholds
    return explain.deciding_class(item.scores, item.verdict, thresholds.adult_classes, thresholds.safe_classes)


def show_overlay(ctx: Context, queue: ReviewQueue, item: Item, data: bytes, pixels: np.ndarray | None,
                 revealed: bool) -> None:
    """The item's evidence for its deciding class (or the one chosen) drawn over the image (``pixels``; None for
    a video: over its deciding frame), blurred unless ``revealed``; computed now if no one has yet."""
    if blind(item):
        return
    cache = _cache()
    found = cache.get(item.id)
    if found is None:
        try:
            with st.spinner("Finding where the model looked…"):
                found = item_evidence(ctx, queue, item, data)
                if found.explanation.frame is not None and found.frame_input is None:
                    found = Evidence(found.explanation, frame_base(ctx, queue, item, data, found.explanation.frame))
        except NSFWError as exc:
            st.caption(f"No evidence map: {_md(exc.message)}")
            return
        cache.clear()  # the current item's only
        cache[item.id] = found
    e = found.explanation
    default = deciding_class(ctx, item)
    chosen = st.selectbox("Evidence for", CLASS_NAMES, index=CLASS_NAMES.index(default),
                          key=f"evidence_class_{item.id}",
                          help="Where the model found this class: the cells whose hiding lowers the class's "
                               "log-odds most (occlusion). The deciding class is chosen first.")
    if e.frame is not None and found.frame_input is not None:
        frame = Image.fromarray(np.clip(found.frame_input * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
        base = frame.resize(Image.fromarray(pixels).size if pixels is not None else (VIDEO_SIDE, VIDEO_SIDE),
                            Image.Resampling.BILINEAR)
    elif pixels is not None:
        base = Image.fromarray(pixels)
    else:
        st.caption("No evidence map: the video's deciding frame could not be decoded again.")
        return
    base.thumbnail((512, 512))
    drawn = overlay.overlay(base, e.heatmaps[chosen])
    top = float(np.max(e.heatmaps[chosen]))
    where = f"frame {e.frame}, " if e.frame is not None else ""
    caption = (f"evidence for {chosen} ({where}strongest {top:.2f} nats of log-odds; {e.passes} passes)"
               if top >= overlay.MIN_EVIDENCE else f"no measurable evidence for {chosen}")
    if revealed:
        st.image(drawn, caption=caption, alt=f"evidence for {chosen} over item {item.id}")
    else:
        st.image(widgets.blurred(drawn), caption=caption + " (blurred)",
                 alt=f"blurred evidence for {chosen} over item {item.id}")


def _thumbnail(ctx: Context, queue: ReviewQueue, item_id: int) -> Image.Image | None:
    thumbs: dict[int, Image.Image | None] = st.session_state.setdefault(THUMBS_KEY, {})
    if item_id not in thumbs:
        if len(thumbs) > 64:
            thumbs.clear()
        data = queue.image(item_id)
        try:
            img = Image.fromarray(ctx.decoder.preview(data, THUMB_SIDE * 2)) if data else None
            if img is not None:
                img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        except NSFWError:
            img = None
        thumbs[item_id] = img
    return thumbs[item_id]


def describe(s: Similar) -> str:
    """One similar decision as text: its item, decision, who decided and when, and how close it is."""
    if s.same_image:
        close = "the same picture (PDQ 0)"
    elif s.by == "pdq":
        close = f"PDQ distance {int(s.distance)} of 256"
    elif s.by == "embedding":
        close = f"embedding distance {s.distance:.3f} (one minus the cosine)"
    else:
        close = f"{s.by} distance {s.distance:.3f}"
    return (f"item {s.item_id}: **{_md(s.decision)}** by {_md(s.decided_by)}, {iso(s.decided_at)} · {close}")


def show_similar(ctx: Context, queue: ReviewQueue, item: Item, revealed: bool) -> None:
    """The closest decided items, each with a blurred thumbnail (unless ``revealed``) and who decided what, when."""
    st.markdown("**Similar past decisions**")
    try:
        found = similar_items(queue, item)
    except NSFWError as exc:
        st.caption(f"Similar past decisions are unavailable: {_md(exc.message)}")
        return
    if not found:
        st.caption(f"No decided item looks like this one (PDQ distance up to {MAX_DISTANCE} of 256, embedding "
                   f"distance up to {MAX_EMBEDDING_DISTANCE:g} with the same model).")
        return
    for s in found:
        left, right = st.columns([1, 3])
        thumb = _thumbnail(ctx, queue, s.item_id) if s.has_image else None
        if thumb is not None:
            left.image(thumb if revealed else widgets.blurred(thumb, radius=8),
                       caption=None if revealed else "blurred",
                       alt=f"{'' if revealed else 'blurred '}thumbnail of decided item {s.item_id}")
        else:
            left.caption("no image kept")
        right.markdown(describe(s))


def revealed(item: Item) -> bool:
    """Whether the reviewer revealed the item's image (its ``reveal_<id>`` toggle)."""
    value: Any = st.session_state.get(f"reveal_{item.id}", False)
    return bool(value)
