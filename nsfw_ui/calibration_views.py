"""The Calibrate page's sections on a scored set: what it holds, the metrics at the sliders' thresholds, the
suggestion, the score distributions, verdict × truth, the trade-off, ROC and precision-recall, the samples
worth a look.

Each ``show_*`` draws one section from the set's :class:`~nsfw_ui.set_scores.Labelled` frame and the
sidebar's :class:`~nsfw_ui.calibration_controls.Controls`, with the arithmetic of
``nsfw_core.calibration.maths`` and the charts of :mod:`nsfw_ui.charts`; a new section is one more
function here and one line in the page.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import ADULT, VERDICTS
from nsfw_core.base.verdict import EPSILON, Thresholds
from nsfw_core.calibration import labelsets
from nsfw_core.calibration import maths as cal
from nsfw_ui import charts, production, state, widgets
from nsfw_ui.calibration_controls import STEP, Controls
from nsfw_ui.set_scores import Labelled

SAMPLE_MARGIN = 0.05  # "near" a threshold in the table of samples worth a look

S = st.session_state
_pct = widgets.pct


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(source: str, model_name: str) -> str | None:
    """A blurred preview as a data URI (None when it cannot be read)."""
    if source.startswith("scores:"):
        return None
    ctx = state.context()
    try:
        data = labelsets.item_loader(ctx.settings.labelset_config, ctx.fetch)(source)
        rgb = ctx.decoder.decode_for(ctx.models.get(model_name), data)
    except NSFWError:
        return None
    return widgets.data_uri(widgets.blurred(rgb), size=96)


def adult_point(scores: Sequence[Mapping[str, float]], y: np.ndarray, rule: Thresholds,
                w: np.ndarray | None = None) -> dict[str, float]:
    """The adult score's operating point under ``rule``: its adult verdicts (``Thresholds.decide``)
    against the truth ``y`` (1: adult) as tpr = recall, fpr and precision (NaN: undefined); weighted by ``w``."""
    hit = np.array([rule.decide(sc) == ADULT for sc in scores], dtype=bool)
    ones = np.ones(len(y)) if w is None else w
    n_pos, n_neg = float(ones[y == 1].sum()), float(ones[y == 0].sum())
    tp, fp = float(ones[hit & (y == 1)].sum()), float(ones[hit & (y == 0)].sum())
    return {"tpr": tp / n_pos if n_pos else np.nan, "recall": tp / n_pos if n_pos else np.nan,
            "fpr": fp / n_neg if n_neg else np.nan, "precision": tp / (tp + fp) if tp + fp else np.nan}


def verdict_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Verdict × true label as text: the count and, in brackets, the share of the images with that label."""
    pivot = table.pivot(index="verdict", columns="truth", values="count").reindex(list(VERDICTS))
    pivot = pivot.reindex(columns=["adult", "safe"])
    rates = table.pivot(index="verdict", columns="truth", values="share_of_truth").reindex(pivot.index)
    return pd.DataFrame({f"true {c}": [f"{production.count_text(pivot.loc[v, c])} ({_pct(rates.loc[v, c], 0)})"
                                       for v in pivot.index]
                         for c in pivot.columns}, index=[f"verdict {v}" for v in pivot.index])


def suggested(context: tuple[Any, ...]) -> cal.Suggestion | None:
    """The suggestion made for this set and these choices, if any."""
    held = S.get("cal_suggestion")
    return held["suggestion"] if held and held["context"] == context else None


def on_suggest(a: np.ndarray, s: np.ndarray, y: np.ndarray, context: tuple[Any, ...],
               w: np.ndarray | None = None) -> None:
    sug = cal.suggest_thresholds(a, s, y, S.get("cal_target_adult", 99.0) / 100.0,
                                 S.get("cal_target_safe", 99.0) / 100.0, weights=w)
    if sug.status in ("ok", "partial") and sug.t_adult is not None and sug.t_safe is not None:
        t_a = cal.snap_threshold(sug.t_adult, a, STEP)
        t_s = cal.snap_threshold(sug.t_safe, s[a < t_a - EPSILON], STEP)
        if (t_a, t_s) != (sug.t_adult, sug.t_safe):
            sug.message += (f" Sliders set to T_adult = {t_a:.4f}, T_safe = {t_s:.4f}, which make the same "
                            "decisions on this set.")
        S["cal_t_adult"], S["cal_t_safe"] = float(t_a), float(t_s)
        sug.t_adult, sug.t_safe = float(t_a), float(t_s)
    S["cal_suggestion"] = {"context": context, "suggestion": sug}


def describe(description: str, data: Labelled) -> None:
    """What the set holds, and what cannot be computed when one truth is missing."""
    labels = data.df["label"].value_counts().sort_index()
    st.write(f"**{description}** — {data.n} images scored: **{data.n_adult} adult**, **{data.n_safe} safe** "
             f"(labels: {', '.join(f'{k} {v}' for k, v in labels.items())}).")
    if data.n_adult == 0:
        st.warning(
            "This set has **no adult samples**, so these cannot be computed: the ROC and PR curves and their AUC, "
            "the share of adult images caught, a threshold suggestion, and any real check of the safe precision "
            "(with no adult image to let through it is trivially 100 %). Adult precision is 0 % if a safe image is "
            "called adult, otherwise undefined. Shown below: the score distributions, the verdicts of the safe "
            "images, how many would be blocked by mistake and the share sent to review. Load a set with adult "
            "samples (your own manifest, folder or ZIP) to calibrate T_adult.")
    elif data.n_safe == 0:
        st.warning("This set has **no safe samples**: the false-positive rate, ROC/AUC, the precision of adult "
                   "decisions against safe images and a threshold suggestion cannot be computed.")


def show_metrics(m: cal.DecisionMetrics, controls: Controls, n_adult: int) -> None:
    st.subheader(f"At T_adult = {controls.t_adult:.4f}, T_safe = {controls.t_safe:.4f}")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Precision of automatic adult", _pct(m.adult_precision),
              help="Of the images called adult automatically, the share that are truly adult.")
    many = production.count_text  # a weighted set's counts are estimates of production images
    c1.caption(m.reasons.get("adult_precision") or f"{many(m.adult_correct)} of {many(m.adult_decisions)} correct")
    c2.metric("Precision of automatic safe", _pct(m.safe_precision),
              help="Of the images called safe automatically, the share that are truly safe.")
    c2.caption(m.reasons.get("safe_precision") or f"{many(m.safe_correct)} of {many(m.safe_decisions)} correct"
               + (" (no adult samples: trivially 100 %)" if n_adult == 0 else ""))
    c3.metric("Sent to review", _pct(m.review_share))
    c3.caption(f"{many(m.review_n)} of {many(m.n)} images")
    c4.metric("Adult images let through as safe", many(m.missed_adult) if n_adult else "—")
    c4.caption(f"{many(m.false_adult)} safe images blocked as adult; adult caught automatically: "
               + (_pct(m.adult_recall) if n_adult else "undefined (no adult samples)"))


def show_suggest(data: Labelled, context: tuple[Any, ...], sug: cal.Suggestion | None) -> None:
    st.subheader("Suggest and save")
    col_a, col_s, col_b = st.columns([1, 1, 1])
    col_a.number_input("Target precision of adult decisions (%)", 50.0, 100.0, 99.0, 0.1, key="cal_target_adult")
    col_s.number_input("Target precision of safe decisions (%)", 50.0, 100.0, 99.0, 0.1, key="cal_target_safe")
    col_b.button("Suggest thresholds", on_click=on_suggest, args=(data.a, data.s, data.y, context, data.w),
                 type="secondary",
                 help="The thresholds that send the fewest images to review while each kind of automatic "
                      "decision meets its target precision; moves the sliders there.")
    if sug is not None:
        box = {"ok": st.success, "partial": st.warning}.get(sug.status, st.error)
        extra = ""
        if sug.t_adult is not None:
            extra = (f" Achieved: adult precision {_pct(sug.adult_precision)}, safe precision "
                     f"{_pct(sug.safe_precision)}, review {_pct(sug.review_share)} — marked ◆ on the charts.")
        box(f"Suggestion ({sug.status}): {sug.message}{extra}")


def show_distributions(data: Labelled, controls: Controls, shown_sug: cal.Suggestion | None) -> None:
    st.subheader("Score distributions by true label")
    d1, d2 = st.columns(2)
    d1.altair_chart(charts.distribution_chart(data.df, "adult_score",
                                              f"adult score ({' + '.join(controls.adult_classes)})",
                                              controls.t_adult, shown_sug.t_adult if shown_sug else None),
                    width="stretch")
    d2.altair_chart(charts.distribution_chart(data.df, "safe_score",
                                              f"safe score ({' + '.join(controls.safe_classes)})",
                                              controls.t_safe, shown_sug.t_safe if shown_sug else None),
                    width="stretch")
    st.caption("Solid line: current threshold; dashed: suggested. The safe threshold only applies to images "
               "below T_adult.")


def show_verdicts(data: Labelled, controls: Controls) -> None:
    st.subheader("Verdict × true label")
    table = cal.verdict_table(data.df, (controls.t_adult, controls.t_safe))  # weighted by its weight column
    v1, v2 = st.columns([1, 1])
    v1.altair_chart(charts.verdict_chart(table), width="stretch")
    v2.dataframe(verdict_counts(table))
    v2.caption("Counts, and in brackets the share of the images with that true label.")


def show_tradeoff(data: Labelled, controls: Controls, m: cal.DecisionMetrics,
                   shown_sug: cal.Suggestion | None) -> None:
    st.subheader("Precision vs share sent to review")
    sw = cal.sweep(data.a, data.s, data.y, controls.t_adult, controls.t_safe, weights=data.w)
    if sw["precision"].notna().any():
        st.altair_chart(charts.tradeoff_chart(sw, m, shown_sug), width="stretch")
    st.caption("Each curve moves one threshold over 0…1 with the other fixed at its current value; "
               "● current operating point, ◆ suggestion."
               + (" Without adult samples the safe curve is 100 % everywhere and the adult curve is empty or 0 %."
                  if data.n_adult == 0 else ""))


def show_curves(data: Labelled, controls: Controls, shown_sug: cal.Suggestion | None) -> None:
    st.subheader("ROC and precision-recall of the adult score")
    roc, pr = cal.roc_curve(data.a, data.y, weights=data.w), cal.pr_curve(data.a, data.y, weights=data.w)
    rule = controls.rule()
    point = adult_point(data.scores, data.y, rule, data.w)
    sug_point = None
    if shown_sug is not None and shown_sug.t_adult is not None:
        sug_point = adult_point(data.scores, data.y, dataclasses.replace(rule, adult=shown_sug.t_adult), data.w)
    r1, r2 = st.columns(2)
    if roc.defined:
        r1.altair_chart(charts.roc_chart(roc, point, sug_point), width="stretch")
    else:
        r1.info(f"ROC curve and AUC cannot be computed: {roc.reason}.")
    if pr.defined:
        r2.altair_chart(charts.pr_chart(pr, point, sug_point), width="stretch")
        if pr.note:
            r2.caption(pr.note)
    else:
        r2.info(f"Precision-recall curve cannot be computed: {pr.reason}.")
    st.caption("Both curves judge the adult score alone (\"at or above T\" for every distinct score T): "
               "true-positive rate = recall = share of adult images at or above T; false-positive rate = share "
               "of safe images at or above T; precision = share of adult images among those at or above T. "
               "Ties form one step; AUC by trapezoids (ties count one half).")


def show_samples(data: Labelled, controls: Controls) -> None:
    st.subheader("Misclassified and borderline samples")
    samples = cal.review_samples(data.df, controls.t_adult, controls.t_safe, margin=SAMPLE_MARGIN, limit=50)
    if samples.empty:
        st.write("None at these thresholds.")
        return
    view = pd.DataFrame({
        "preview": [thumbnail(src, controls.model_name) for src in samples["source"]],
        "issue": samples["issue"], "true label": samples["label"], "verdict": samples["verdict"],
        "adult score": samples["adult_score"], "safe score": samples["safe_score"], "source": samples["source"],
    })
    st.dataframe(view, hide_index=True, width="stretch", column_config={
        "preview": st.column_config.ImageColumn("preview (blurred)", width="small"),
        "adult score": st.column_config.NumberColumn(format="%.4f"),
        "safe score": st.column_config.NumberColumn(format="%.4f"),
    })
    st.caption("Missed adult: adult image decided safe; false adult: safe image decided adult; review: sent to "
               "a human; near: decided correctly but within 0.05 of a threshold. Previews are blurred.")
