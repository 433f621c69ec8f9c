"""Every Altair chart of the pages, built from plain data (no Streamlit calls).

- :func:`scores_chart`: one image's five class scores (the classify page);
- the calibration page's charts: :func:`distribution_chart` (a score's histogram by true
  label with the thresholds), :func:`verdict_chart` (verdict × true label),
  :func:`tradeoff_chart` (precision vs share sent to review), :func:`roc_chart` and
  :func:`pr_chart` (the adult score's curves with the operating points).
"""

from __future__ import annotations

from typing import Any, Mapping

import altair as alt
import numpy as np
import pandas as pd

from nsfw_core.base.verdict import Thresholds
from nsfw_core.calibration import maths as cal

from . import widgets
from .widgets import pct

TRUTH_COLORS = alt.Scale(domain=["adult", "safe"], range=["#d62728", "#2ca02c"])
SCORE_COLORS = alt.Scale(domain=["adult", "safe", "neither"], range=["#e4572e", "#29a36a", "#9aa0a6"])
POINT_KINDS = ["current", "suggested"]
ADULT_POINT_KINDS = ["current T_adult", "suggested T_adult"]
TRADEOFF_CURVES = {"T_adult": "adult decisions (T_adult moves)", "T_safe": "safe decisions (T_safe moves)"}

#: The adult score's operating point at one threshold: ``tpr``, ``recall``, ``fpr``, ``precision`` (NaN: undefined).
AdultPoint = Mapping[str, float]


# ---------------------------------------------------------------- the classify page


def scores_chart(scores: dict[str, float], thresholds: Thresholds | None = None) -> Any:
    """Horizontal bar chart of the five class scores with their values as labels.

    Bars are coloured by what they count toward under ``thresholds`` (adult, safe, neither).
    """
    adult = set(thresholds.adult_classes) if thresholds is not None else set()
    safe = set(thresholds.safe_classes) if thresholds is not None else set()
    df = pd.DataFrame({
        "class": list(scores),
        "score": [float(v) for v in scores.values()],
        "counts toward": ["adult" if c in adult else "safe" if c in safe else "neither" for c in scores],
    })
    base = alt.Chart(df).encode(
        y=alt.Y("class:N", sort=list(scores), title=None),
        # Room right of 1.0 for the label of a bar that fills the scale.
        x=alt.X("score:Q", scale=alt.Scale(domain=[0, 1.15]), title=None,
                axis=alt.Axis(values=[0, 0.2, 0.4, 0.6, 0.8, 1.0], format=".1f")),
        tooltip=["class", alt.Tooltip("score:Q", format=".6f"), "counts toward"],
    )
    bars = base.mark_bar().encode(color=alt.Color("counts toward:N", scale=SCORE_COLORS, legend=None))
    labels = base.mark_text(align="left", dx=4).encode(text=alt.Text("score:Q", format=".4f"))
    return (bars + labels).properties(height=150)


# ---------------------------------------------------------------- the calibration page


def threshold_rules(current: float, suggested: float | None) -> pd.DataFrame:
    """The vertical lines of a distribution chart: the current threshold and the suggested one."""
    rows: list[dict[str, Any]] = [{"x": current, "line": "current"}]
    if suggested is not None:
        rows.append({"x": suggested, "line": "suggested"})
    return pd.DataFrame(rows)


def distribution_chart(df: pd.DataFrame, column: str, title: str, current: float, suggested: float | None) -> Any:
    """Stacked histogram of ``column`` (0…1, bins of 0.05) by ``truth_label``, with the threshold lines; with a
    ``weight`` column each image counts its weight (estimated production images)."""
    amount = "sum(weight):Q" if "weight" in df.columns else "count():Q"
    label = "images (estimated in production)" if "weight" in df.columns else "images"
    bars = alt.Chart(df).mark_bar(opacity=0.8).encode(
        x=alt.X(f"{column}:Q", bin=alt.Bin(extent=[0, 1], step=0.05), title=title),
        y=alt.Y(amount, stack=True, title=label),
        color=alt.Color("truth_label:N", scale=TRUTH_COLORS, title="true label"),
        tooltip=[alt.Tooltip("truth_label:N", title="true label"), alt.Tooltip(amount, title=label, format=",.0f")],
    )
    rules = alt.Chart(threshold_rules(current, suggested)).mark_rule(strokeWidth=2.5).encode(
        x="x:Q",
        strokeDash=alt.StrokeDash("line:N", scale=alt.Scale(domain=POINT_KINDS, range=[[1, 0], [6, 4]]),
                                  title="threshold"),
        color=alt.value("black"),
        tooltip=[alt.Tooltip("line:N"), alt.Tooltip("x:Q", format=".3f", title="threshold")],
    )
    return (bars + rules).properties(height=230)


def verdict_chart(table: pd.DataFrame) -> Any:
    """Heat map of :func:`nsfw_core.calibration.maths.verdict_table`: count and share of the true label per cell."""
    t = table.copy()
    t["text"] = [f"{c} ({pct(r, 0)})" for c, r in zip(t["count"], t["share_of_truth"], strict=True)]
    base = alt.Chart(t).encode(
        x=alt.X("truth:N", sort=["adult", "safe"], title="true label"),
        y=alt.Y("verdict:N", sort=["adult", "unknown", "safe"], title="verdict"),
    )
    heat = base.mark_rect().encode(
        color=alt.Color("count:Q", scale=alt.Scale(scheme="blues"), legend=None),
        tooltip=["verdict", "truth", "count",
                 alt.Tooltip("share_of_truth:Q", format=".1%", title="share of this label"),
                 alt.Tooltip("share_of_verdict:Q", format=".1%", title="share of this verdict")])
    text = base.mark_text(fontSize=14).encode(text="text:N")
    return (heat + text).properties(height=200)


def tradeoff_chart(sw: pd.DataFrame, m: cal.DecisionMetrics, sug: cal.Suggestion | None) -> Any:
    """Precision of automatic decisions vs share sent to review, one curve per threshold
    (:func:`nsfw_core.calibration.maths.sweep`), with the current (●) and suggested (◆) operating points."""
    names = TRADEOFF_CURVES
    data = sw.dropna(subset=["precision"]).copy()
    data["curve"] = data["moving"].map(names)
    scale = alt.Scale(domain=list(names.values()), range=["#d62728", "#2ca02c"])
    lines = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=15)).encode(
        x=alt.X("review_share:Q", title="share sent to review", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("precision:Q", title="precision of automatic decisions", axis=alt.Axis(format="%")),
        color=alt.Color("curve:N", scale=scale, title=None, legend=alt.Legend(orient="bottom", labelLimit=400)),
        order="threshold:Q",
        tooltip=["curve", alt.Tooltip("threshold:Q", format=".3f"), alt.Tooltip("precision:Q", format=".2%"),
                 alt.Tooltip("review_share:Q", format=".1%"), "decisions"],
    )
    points: list[dict[str, Any]] = [
        {"curve": names["T_adult"], "what": "current", "review_share": m.review_share,
         "precision": m.adult_precision},
        {"curve": names["T_safe"], "what": "current", "review_share": m.review_share,
         "precision": m.safe_precision}]
    if sug is not None and sug.t_adult is not None:
        points += [{"curve": names["T_adult"], "what": "suggested", "review_share": sug.review_share,
                    "precision": sug.adult_precision},
                   {"curve": names["T_safe"], "what": "suggested", "review_share": sug.review_share,
                    "precision": sug.safe_precision}]
    pts = pd.DataFrame(points).dropna(subset=["precision"])
    kinds = POINT_KINDS
    marks = alt.Chart(pts).mark_point(filled=True, stroke="black", strokeWidth=2).encode(
        x="review_share:Q", y="precision:Q",
        color=alt.Color("curve:N", scale=scale, legend=None),
        shape=alt.Shape("what:N", scale=alt.Scale(domain=kinds, range=["circle", "diamond"]),
                        title="operating point"),
        size=alt.Size("what:N", scale=alt.Scale(domain=kinds, range=[200, 600]), legend=None),
        fillOpacity=alt.FillOpacity("what:N", scale=alt.Scale(domain=kinds, range=[1.0, 0.0]), legend=None),
        tooltip=["what", "curve", alt.Tooltip("precision:Q", format=".2%"),
                 alt.Tooltip("review_share:Q", format=".1%")],
    )
    return (lines + marks).properties(height=320)


def roc_chart(roc: cal.RocCurve, point: AdultPoint, sug_point: AdultPoint | None) -> Any:
    """The adult score's ROC curve, the diagonal, and the operating points at T_adult."""
    f = roc.frame().replace([np.inf], np.nan)
    line = alt.Chart(f).mark_line(point=True, interpolate="linear").encode(
        x=alt.X("fpr:Q", title="false-positive rate", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("tpr:Q", title="true-positive rate", scale=alt.Scale(domain=[0, 1])),
        order="fpr:Q",
        tooltip=[alt.Tooltip("threshold:Q", format=".4f"), alt.Tooltip("fpr:Q", format=".3f"),
                 alt.Tooltip("tpr:Q", format=".3f")],
    )
    diag = alt.Chart(pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]})).mark_line(strokeDash=[4, 4], color="gray").encode(
        x="fpr:Q", y="tpr:Q")
    return (line + diag + point_layer(point, sug_point, "fpr", "tpr")).properties(
        height=300, title=f"ROC of the adult score — AUC {roc.auc:.3f}")


def pr_chart(pr: cal.PrCurve, point: AdultPoint, sug_point: AdultPoint | None) -> Any:
    """The adult score's precision-recall curve and the operating points at T_adult."""
    f = pr.frame().replace([np.inf], np.nan)
    line = alt.Chart(f).mark_line(point=True, interpolate="step-before").encode(
        x=alt.X("recall:Q", title="recall", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("precision:Q", title="precision", scale=alt.Scale(domain=[0, 1])),
        order="recall:Q",
        tooltip=[alt.Tooltip("threshold:Q", format=".4f"), alt.Tooltip("recall:Q", format=".3f"),
                 alt.Tooltip("precision:Q", format=".3f")],
    )
    return (line + point_layer(point, sug_point, "recall", "precision")).properties(
        height=300, title=f"Precision-recall of the adult score — average precision {pr.average_precision:.3f}")


def point_layer(point: AdultPoint, sug_point: AdultPoint | None, x: str, y: str) -> Any:
    """The current (●) and suggested (◆) T_adult as points on a curve's axes ``x`` and ``y``."""
    rows = [dict(point, what="current T_adult")]
    if sug_point is not None:
        rows.append(dict(sug_point, what="suggested T_adult"))
    pts = pd.DataFrame(rows).dropna(subset=[x, y])
    kinds = ADULT_POINT_KINDS
    return alt.Chart(pts).mark_point(filled=True, color="black", stroke="black", strokeWidth=2).encode(
        x=f"{x}:Q", y=f"{y}:Q",
        shape=alt.Shape("what:N", scale=alt.Scale(domain=kinds, range=["circle", "diamond"]), title=None,
                        legend=alt.Legend(orient="bottom")),
        size=alt.Size("what:N", scale=alt.Scale(domain=kinds, range=[150, 500]), legend=None),
        fillOpacity=alt.FillOpacity("what:N", scale=alt.Scale(domain=kinds, range=[1.0, 0.0]), legend=None),
        tooltip=["what", alt.Tooltip(f"{x}:Q", format=".3f"), alt.Tooltip(f"{y}:Q", format=".3f")],
    )


# ---------------------------------------------------------------- the evaluate page (issue 25)

VERDICT_SCALE = alt.Scale(domain=list(widgets.VERDICT_COLORS), range=list(widgets.VERDICT_COLORS.values()))
PSI_LEVELS = (0.1, 0.25)  # watch, act


def precision_by_day_chart(daily: list[dict[str, Any]]) -> Any:
    """Per UTC day and automatic verdict, the estimated precision (●) and its 95 % interval (bar), from the
    evaluation's ``daily`` rows; days without audited items are left out."""
    rows = [{"day": d["day"], "verdict": v, "precision": d[v]["precision"], "lo": d[v]["ci95"][0],
             "hi": d[v]["ci95"][1], "audited": d[v]["audited"], "overturned": d[v]["overturned"]}
            for d in daily for v in ("adult", "safe") if d.get(v, {}).get("audited")]
    df = pd.DataFrame(rows, columns=["day", "verdict", "precision", "lo", "hi", "audited", "overturned"])
    base = alt.Chart(df).encode(
        x=alt.X("day:T", title="day (UTC)"),
        color=alt.Color("verdict:N", scale=VERDICT_SCALE, title="automatic verdict"),
        xOffset=alt.XOffset("verdict:N"),
        tooltip=["day:T", "verdict", alt.Tooltip("precision:Q", format=".1%"), alt.Tooltip("lo:Q", format=".1%"),
                 alt.Tooltip("hi:Q", format=".1%"), "audited", "overturned"],
    )
    bars = base.mark_rule(strokeWidth=2).encode(y=alt.Y("lo:Q", title="precision (95 % interval)",
                                                       axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
                                               y2="hi:Q")
    points = base.mark_point(filled=True, size=60).encode(y="precision:Q")
    return (bars + points).properties(height=260)


def decisions_by_day_chart(daily: list[dict[str, Any]]) -> Any:
    """Per UTC day, the verdicts the API gave (the model's own), stacked."""
    rows = [{"day": d["day"], "verdict": v, "images": d["decisions"].get(v, 0)} for d in daily
            for v in ("adult", "unknown", "safe")]
    df = pd.DataFrame(rows, columns=["day", "verdict", "images"])
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("day:T", title="day (UTC)"),
        y=alt.Y("images:Q", stack=True, title="verdicts"),
        color=alt.Color("verdict:N", scale=VERDICT_SCALE, title="verdict"),
        tooltip=["day:T", "verdict", "images"],
    ).properties(height=220)


def psi_chart(classes: Mapping[str, Mapping[str, Any]]) -> Any:
    """Per class, the PSI of production's scores against the labelled set (bar) with its interval, and the
    0.1 (watch) and 0.25 (act) lines."""
    rows = [{"class": c, "psi": d["psi"], "lo": (d["ci95"] or [None, None])[0], "hi": (d["ci95"] or [None, None])[1],
             "level": d["level"], "images": d["production_images"]} for c, d in classes.items() if d["psi"] is not None]
    df = pd.DataFrame(rows, columns=["class", "psi", "lo", "hi", "level", "images"])
    base = alt.Chart(df).encode(x=alt.X("class:N", title=None))
    bars = base.mark_bar(opacity=0.8).encode(
        y=alt.Y("psi:Q", title="PSI (production vs labelled set)"),
        tooltip=["class", alt.Tooltip("psi:Q", format=".3f"), alt.Tooltip("lo:Q", format=".3f"),
                 alt.Tooltip("hi:Q", format=".3f"), "level", "images"])
    whiskers = base.mark_rule(color="black").encode(y="lo:Q", y2="hi:Q")
    lines = alt.Chart(pd.DataFrame({"psi": list(PSI_LEVELS), "line": ["watch (0.1)", "act (0.25)"]})).mark_rule(
        strokeDash=[5, 4]).encode(y="psi:Q", color=alt.Color("line:N", scale=alt.Scale(range=["#e6a700", "#d62728"]),
                                                              title=None))
    return (bars + whiskers + lines).properties(height=220)
