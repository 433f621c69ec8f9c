"""The Calibrate page's reviewed items as an estimate of production (issue 25), kept out of the page.

The review queue's decided items, each weighted by the inverse of the probability that queued it (an
audit item sampled at 1 % stands for 100 automatic decisions, an "unknown" item for itself), estimate
the traffic the service sees, so the page's curves and suggestions computed with those weights estimate
production.  Here: the set's items under names of their own (:func:`reviewed_labelled`), what the
weights mean (:func:`describe_weights`), a threshold's estimated effect per day at the current traffic
(:func:`per_day_effect`), the histograms saved with thresholds (:func:`reference_histograms`), and
counts that may be estimates (:func:`count_text`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from nsfw_core.base.labels import ADULT, CLASS_NAMES, SAFE, UNKNOWN, LabelledItem
from nsfw_core.calibration import maths as cal
from nsfw_core.calibration.evaluation import effective_size, histograms_by_class, proportion
from nsfw_core.calibration.production import traffic_per_day
from nsfw_core.context import Context
from nsfw_core.state.review import ReviewedItem
from nsfw_core.state.traffic import SCORE_BINS

from .widgets import pct


def reviewed_labelled(reviewed: Sequence[ReviewedItem]) -> list[tuple[LabelledItem, ReviewedItem]]:
    """Each decided item as a labelled item under a name of its own: its URL, or ``<source> (review item
    <id>)`` for an upload or a URL decided more than once (every upload's source is ``upload``)."""
    seen: dict[str, int] = {}
    for it in reviewed:
        seen[it.source] = seen.get(it.source, 0) + 1
    out = []
    for it in reviewed:
        unique = it.source.startswith(("http://", "https://")) and seen[it.source] == 1
        name = it.source if unique else f"{it.source} (review item {it.id})"
        out.append((LabelledItem(name, it.label, it.binary), it))
    return out


def count_text(x: Any) -> str:
    """A count as it is (``12``), an estimate of production images rounded (``≈ 1,234``)."""
    if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer() and x < 1e6):
        return f"{int(x):,}"
    return f"≈ {float(x):,.0f}" if math.isfinite(float(x)) else "—"


def reference_histograms(scores: Sequence[dict[str, float]], weights: Any, source: str) -> dict[str, Any]:
    """The set's per-class score histograms (weighted like the set), saved with the thresholds."""
    return {"bins": SCORE_BINS, "classes": histograms_by_class(scores, CLASS_NAMES, weights),
            "images": len(scores),
            "effective_images": round(effective_size(weights), 1) if weights is not None else len(scores),
            "source": source}


def describe_weights(ctx: Context, df: pd.DataFrame) -> None:
    """What the weights do, and when the set cannot stand for production yet."""
    w = df["weight"].to_numpy()
    audit = w > 1.0
    st.caption(f"Weighted to estimate production: {int(audit.sum())} audit items (a random sample of the automatic "
               f"verdicts, each counting 1 / its sampling rate) and {int((~audit).sum())} items the model sent to "
               f"review (each counting one) stand for about {w.sum():,.0f} production images (effective sample "
               f"{effective_size(w):,.0f}). The curves, metrics and suggestions below are estimates for the traffic "
               "the service sees, not for this set as it is.")
    if not audit.any():
        st.warning("No audit item is decided yet, so this set holds only what the model sent to review: the "
                   "uncertain band, the images least like the rest. A threshold suggested from it is tuned on them. "
                   "Turn audit sampling on (NSFW_AUDIT_RATE) and review audit items; the Evaluate page says how "
                   "many are needed.")
    try:
        waiting = ctx.review_queue.counts()["pending"]
    except Exception:
        waiting = 0
    if waiting:
        st.caption(f"{waiting} queued items are not decided yet and are not in the estimate.")


def per_day_effect(ctx: Context, df: pd.DataFrame, t_adult: float, t_safe: float) -> None:
    """The thresholds' estimated effect per day at the current traffic: images sent to review, wrong automatic
    decisions (each with its 95 % interval)."""
    try:
        per_day, days = traffic_per_day(ctx.traffic, time.time())
    except Exception as exc:  # the database is down
        st.info(f"Per-day estimates: the traffic counts cannot be read now ({type(exc).__name__}).")
        return
    if per_day is None:
        st.info("Per-day estimates need the API's traffic: no classification was counted in the last 7 days.")
        return
    w = df["weight"].to_numpy()
    y = df["truth"].to_numpy()
    v = cal.verdicts(df["adult_score"].to_numpy(), df["safe_score"].to_numpy(), t_adult, t_safe)
    review = proportion(v == UNKNOWN, w)
    wrong = proportion(((v == ADULT) & (y == 0)) | ((v == SAFE) & (y == 1)), w)
    c1, c2 = st.columns(2)
    for col, name, p in ((c1, "Sent to review per day", review), (c2, "Wrong automatic decisions per day", wrong)):
        col.metric(name, f"≈ {p.estimate * per_day:,.0f}")
        col.caption(f"95 % interval {p.ci95[0] * per_day:,.0f} to {p.ci95[1] * per_day:,.0f}; "
                    f"{pct(p.estimate, 2)} of about {per_day:,.0f} images a day (the model's verdicts, last "
                    f"{days} day{'s' if days != 1 else ''} with traffic); effective sample {p.n_eff:,.0f}")
