"""Evaluate: how often the automatic verdicts are wrong on the traffic the service actually sees (issue 25).

For reviewers and admins (:data:`nsfw_core.access.Permission.EVALUATE`).  Everything comes from the process
context's :meth:`~nsfw_core.context.Context.evaluation` (the same as ``GET /v1/evaluation``), for the window
chosen (items by the day they were queued, traffic by UTC day):

- the estimated precision of the automatic ``adult`` and ``safe`` verdicts, each from its audited items
  (NSFW_AUDIT_RATE), with its 95 % interval, how many were audited and overturned;
- the expected wrong automatic decisions per day at the window's traffic;
- what the items the model called ``unknown`` turned out to be;
- reviewer agreement (Cohen's kappa) on the double-reviewed items (NSFW_DOUBLE_REVIEW_RATE);
- the same by day, as Altair charts (:mod:`nsfw_ui.charts`);
- score drift: per class, the PSI of production's scores against the labelled set the thresholds in force
  were saved with.

A figure without data is never invented: the page says what is missing and how to get there (turn audit
sampling on, review so many audit items, save thresholds on the Calibrate page).

Widget keys: ``eval_window`` (the date range).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping

import pandas as pd
import streamlit as st

from nsfw_core.access import Permission
from nsfw_core.base.errors import NSFWError
from nsfw_core.calibration.production import DAY, DEFAULT_DAYS
from nsfw_ui import auth, charts, state, widgets

_pct = widgets.pct
_md = widgets.md_escape


def _interval(ci: list[float | None] | None, digits: int = 1) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "no interval"
    return f"95 % interval {_pct(ci[0], digits)} to {_pct(ci[1], digits)}"


def _window() -> tuple[float, float]:
    today = _dt.datetime.now(_dt.timezone.utc).date()
    chosen = st.date_input("Window (UTC days, both included)", (today - _dt.timedelta(days=DEFAULT_DAYS - 1), today),
                           max_value=today, key="eval_window")
    picked = [d for d in (chosen if isinstance(chosen, (tuple, list)) else (chosen,)) if isinstance(d, _dt.date)]
    start, end = (picked[0], picked[-1]) if picked else (today, today)  # one day picked so far: that day
    since = _dt.datetime.combine(start, _dt.time(), _dt.timezone.utc).timestamp()
    until = _dt.datetime.combine(end, _dt.time(), _dt.timezone.utc).timestamp() + DAY
    return since, until


def _automatic(report: Mapping[str, Any]) -> None:
    st.subheader("Automatic decisions, audited")
    cols = st.columns(3)
    for col, verdict in zip(cols, ("adult", "safe"), strict=False):
        block = report["automatic"][verdict]
        title = f"Precision of automatic {verdict}"
        if block["precision"] is None:
            col.metric(title, "not enough data yet")
            col.caption(block.get("note") or f"0 audited items decided; {block['pending']} waiting in the queue; "
                        f"audit rate {100 * block['audit_rate']:g} %")
            continue
        col.metric(title, _pct(block["precision"]))
        col.caption(f"{_interval(block['ci95'])}; {block['audited']} audited, {block['overturned']} overturned by "
                    f"a reviewer; {block['pending']} waiting; audit rate {100 * block['audit_rate']:g} %")
    total = report["wrong_per_day"]
    if total is None:
        cols[2].metric("Wrong automatic decisions per day", "not enough data yet")
        cols[2].caption("Needs both verdicts' precision and the API's traffic counts.")
    else:
        cols[2].metric("Wrong automatic decisions per day", f"≈ {total['estimate']:,.1f}")
        lo, hi = total["ci95"]
        per = [f"{v} ≈ {report['automatic'][v]['wrong_per_day']['estimate']:,.1f} (of "
               f"{report['automatic'][v]['decisions_per_day']:,.0f} a day)" for v in ("adult", "safe")]
        cols[2].caption(f"95 % interval {lo:,.1f} to {hi:,.1f} ({'; '.join(per)}), at this window's traffic "
                        f"({report['window']['days_with_traffic']} days counted).")


def _unknown(report: Mapping[str, Any]) -> None:
    st.subheader("What the 'unknown' items turned out to be")
    block = report["unknown"]
    if not block["reviewed"]:
        st.write(f"Not enough data yet: no item the model left to review was decided in this window "
                 f"({block['pending']} waiting).")
        return
    c1, c2 = st.columns([1, 2])
    c1.metric("Adult among them", _pct(block["adult"]["share"]))
    c1.caption(f"{_interval(block['adult']['ci95'])}; {block['adult']['n']} adult of {block['reviewed']} reviewed; "
               f"{block['pending']} waiting")
    labels = pd.DataFrame({"label": list(block["labels"]), "items": list(block["labels"].values())})
    c2.dataframe(labels, hide_index=True)


def _agreement(report: Mapping[str, Any]) -> None:
    st.subheader("Reviewer agreement (double review)")
    block = report["agreement"]
    kappa = block["kappa"]
    if not block["items"]:
        st.write("Not enough data yet: no item was decided by two reviewers in this window "
                 f"(double review rate {100 * block['double_review_rate']:g} %).")
        return
    c1, c2 = st.columns([1, 2])
    value = "undefined" if kappa["kappa"] is None else f"{kappa['kappa']:.2f}"
    c1.metric("Cohen's kappa (adult/safe)", value)
    ci = kappa["ci95"]
    c1.caption(f"{block['items']} items, {block['disagreed']} disagreements ({block['escalated_open']} waiting for "
               f"an admin); observed agreement {_pct(kappa['observed_agreement'])}"
               + (f"; 95 % interval {ci[0]:.2f} to {ci[1]:.2f}" if ci else ""))
    if block["classes"]:
        rows = [{"class": c, "kappa": k["kappa"], "95 % interval": "" if not k["ci95"] else
                 f"{k['ci95'][0]:.2f} to {k['ci95'][1]:.2f}"} for c, k in block["classes"].items()]
        c2.dataframe(pd.DataFrame(rows), hide_index=True)
        c2.caption(f"Per class (that class against the others), over the {block['class_items']} items both "
                   "reviewers labelled with one of the five classes.")


def _daily(report: Mapping[str, Any]) -> None:
    st.subheader("By day")
    daily = report["daily"]
    if not daily:
        st.write("Not enough data yet: no traffic counted and no item decided in this window.")
        return
    if any(d.get(v, {}).get("audited") for d in daily for v in ("adult", "safe")):
        st.altair_chart(charts.precision_by_day_chart(daily), width="stretch")
        st.caption("Per day, the precision of each automatic verdict among that day's audited items (●), and its "
                   "95 % interval: one day's sample is small, so the intervals are wide.")
    st.altair_chart(charts.decisions_by_day_chart(daily), width="stretch")
    st.caption("The model's verdicts the API gave per day (every replica on the database counts).")


def _drift(report: Mapping[str, Any]) -> None:
    st.subheader("Score drift against the labelled set of the thresholds in force")
    drift = report["drift"]
    if drift["reference"] is None:
        version = drift["thresholds_version"]
        st.write(("The thresholds in force are the defaults" if version is None else
                  f"Thresholds version {version} was saved") + " without the labelled set's score histograms: "
                 "save thresholds on the Calibrate page to give the drift a reference.")
        return
    if not drift["classes"] or all(d["psi"] is None for d in drift["classes"].values()):
        st.write("Not enough data yet: no production image was counted in this window.")
        return
    st.altair_chart(charts.psi_chart(drift["classes"]), width="stretch")
    rows = [{"class": c, "PSI": d["psi"], "95 % interval": "" if not d["ci95"] else
             f"{d['ci95'][0]:.3f} to {d['ci95'][1]:.3f}", "reading": d["level"],
             "production images": d["production_images"]} for c, d in drift["classes"].items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.caption(f"Reference: {_md(drift['reference'].get('source') or 'the labelled set')} "
               f"({drift['reference'].get('images')} images). PSI below 0.1: stable; 0.1 to 0.25: a shift worth "
               "watching; above 0.25: production no longer looks like the set the thresholds were tuned on.")


def _missing(report: Mapping[str, Any]) -> None:
    if not report["missing"]:
        return
    automatic = report["automatic"]
    if not any(automatic[v]["audited"] for v in ("adult", "safe")):
        st.info("**Nothing audited yet.** The precision of the automatic verdicts is measured on audit items: a "
                "random sample of the images the model decided by itself, sent to the review queue and reviewed "
                "blind. Turn audit sampling on with NSFW_AUDIT_RATE (it is "
                + ", ".join(f"{v} {100 * automatic[v]['audit_rate']:g} %" for v in ("adult", "safe"))
                + " now), classify through the API, then review the audit items on the Review queue page or "
                "through the reviewer API (docs/review.md).")
    with st.expander(f"What is missing ({len(report['missing'])})", expanded=True):
        for line in report["missing"]:
            st.markdown(f"- {_md(line)}")


def page() -> None:
    auth.require(Permission.EVALUATE)
    st.title("Evaluate production")
    st.caption("How often the automatic verdicts are wrong on the traffic the service sees, estimated from audit "
               "items (a random sample of the automatic verdicts, reviewed blind), with 95 % intervals.")
    ctx = state.context()
    since, until = _window()
    try:
        report = ctx.evaluation(since=since, until=until)
    except NSFWError as exc:
        st.error(f"The evaluation cannot be read now: {exc.code}: {_md(exc.message)}")
        return
    _missing(report)
    _automatic(report)
    _unknown(report)
    _agreement(report)
    _daily(report)
    _drift(report)


page()
