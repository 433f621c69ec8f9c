"""The thresholds in force, their saved versions and saving new ones, on the Calibrate page.

Saving adds a version to the thresholds history in the database that the API and the classify page
follow, on every instance (the context's ``ThresholdHistory.save``); the history table shows who saved
what, when and on which set, and can roll back to any version (a new version copying it).  Both need
the ``SAVE_THRESHOLDS`` permission, checked on the server.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from nsfw_core.access import Identity, Permission
from nsfw_core.base.errors import NSFWError
from nsfw_core.base.verdict import ActiveThresholds
from nsfw_core.calibration import maths as cal
from nsfw_core.context import Context
from nsfw_ui import auth, production
from nsfw_ui.calibration_controls import Controls
from nsfw_ui.labelled_sets import LoadedSet
from nsfw_ui.set_scores import Entry, Labelled

S = st.session_state


def show_active(active: ActiveThresholds) -> None:
    if active.warning:
        st.warning(f"⚠️ {active.warning}")
    saved = active.saved
    where = "defaults from the settings"
    if active.source != "defaults":
        where = (f"version {active.version}, " if active.version is not None else "") + \
            f"saved {saved.get('saved_at', '')} for {saved.get('model', '?')}" + \
            (f" by {saved['saved_by']}" if saved.get("saved_by") else "")
    st.caption(
        f"In force now: T_adult = {active.thresholds.adult:g}, T_safe = {active.thresholds.safe:g} ({where})."
        " The rule: adult score at or above T_adult → adult; otherwise safe score at or above T_safe → safe;"
        " otherwise the image goes to review.")


def save(ctx: Context, who: Identity, controls: Controls, loaded: LoadedSet, entry: Entry, data: Labelled,
          failed: int, m: cal.DecisionMetrics, sug: cal.Suggestion | None) -> None:
    """Save the sliders' thresholds as a new version (the API and the classify page use it), with what they were
    tuned on and who saved them."""
    store = ctx.thresholds
    tuned_on: dict[str, Any] = {
        "source": loaded.description, "images": data.n, "adult": data.n_adult, "safe": data.n_safe,
        "failed": failed, "labels": {k: int(v) for k, v in data.df["label"].value_counts().items()},
        "adult_labels": sorted(controls.adult_labels), "model_version": entry["model_version"],
        "metrics": m.to_dict(),
        # the set's score histograms: the reference the Evaluate page's score drift (PSI) compares production with
        "score_histograms": production.reference_histograms(data.scores, data.w, loaded.description),
    }
    if sug is not None:
        tuned_on["suggestion"] = sug.to_dict()
    try:
        auth.check(who, Permission.SAVE_THRESHOLDS)
        result = store.save(controls.rule(), model=entry["model"] or controls.model_name, tuned_on=tuned_on,
                            by=who.name)
    except ValueError as exc:  # e.g. a class on both sides
        st.error(f"Could not save the thresholds: {exc}")
        return
    except NSFWError as exc:  # the database is down: nothing saved
        st.error(f"Could not save the thresholds ({store.describe()}): {exc.message}")
        return
    if result.warning:
        st.warning(result.warning)
    else:
        st.success(f"Saved T_adult = {controls.t_adult:.4g}, T_safe = {controls.t_safe:.4g} as version "
                   f"{result.version}; the API and the classify page use them from now on, on every instance.")


def _rollback(ctx: Context, who: Identity, version: int) -> None:
    try:
        auth.check(who, Permission.SAVE_THRESHOLDS)
        result = ctx.thresholds.rollback(version, by=who.name)
    except NSFWError as exc:
        S["cal_rollback_message"] = ("error", f"Could not roll back to version {version}: {exc.message}")
        return
    S["cal_rollback_message"] = ("success", f"Rolled back to version {version}: now version {result.version} "
                                            f"(T_adult = {result.thresholds.adult:g}, "
                                            f"T_safe = {result.thresholds.safe:g}).")


def show_history(ctx: Context, who: Identity) -> None:
    """Who saved which thresholds, when, on which set; a rollback button per older version."""
    with st.expander("Thresholds history"):
        kind, message = S.pop("cal_rollback_message", (None, ""))
        if kind == "error":
            st.error(message)
        elif kind == "success":
            st.success(message)
        try:
            versions = ctx.thresholds.history(limit=50)
        except NSFWError as exc:
            st.error(f"The history cannot be read now: {exc.message}")
            return
        if not versions:
            st.write("No thresholds saved yet: the defaults from the settings are in force.")
            return
        table = pd.DataFrame([{
            "version": v.version, "T_adult": v.thresholds.adult, "T_safe": v.thresholds.safe,
            "adult classes": " + ".join(v.thresholds.adult_classes),
            "safe classes": " + ".join(v.thresholds.safe_classes), "model": v.model,
            "saved by": v.saved_by, "saved at (UTC)": v.saved_at_iso,
            "tuned on": str(v.tuned_on.get("source", "")) + (f" ({v.tuned_on['images']} images)"
                                                             if "images" in v.tuned_on else ""),
            "note": v.note,
        } for v in versions])
        st.dataframe(table, hide_index=True, width="stretch")
        older = [v.version for v in versions[1:]]
        if older:
            c1, c2 = st.columns([1, 2])
            chosen = c1.selectbox("Roll back to version", older, key="cal_rollback_version")
            c2.button("Roll back", key="cal_rollback", on_click=_rollback, args=(ctx, who, int(chosen)),
                      help="Save a new version with that version's thresholds (in force at once everywhere).")
