"""Calibrate thresholds: score a labelled set, move T_adult / T_safe, see what the rule does, save.

The page's flow, top to bottom; each step is a helper of ``nsfw_ui``:

1. the thresholds in force and their history, with rollback (``nsfw_ui.thresholds_history``);
2. the sidebar's controls: sliders, classes summed, model, labels → truth (``nsfw_ui.calibration_controls``);
3. the labelled set, from one of six sources (``nsfw_ui.labelled_sets``);
4. its scores, computed once per (set, model) through the context's score cache and kept in
   ``st.session_state``, so moving a slider only redoes the arithmetic, never the model
   (``nsfw_ui.set_scores``);
5. the sections on the scored set: metrics, suggestion, distributions, verdicts, trade-off, curves,
   samples (``nsfw_ui.calibration_views``, charts from ``nsfw_ui.charts``), and saving the sliders'
   thresholds as a new version that the API and the classify page follow on every instance;
6. for admins, the Adapter part: train an adapter on the chosen set and/or the reviewed items, compare it with
   the base model, publish, roll back, example sets (``nsfw_ui.adapter_panel``).

The reviewed items are weighted by 1 / the probability that queued them (issue 25), so their figures
estimate production; what the weights mean and the thresholds' effect per day at the counted traffic
are ``nsfw_ui.production``'s.
"""

from __future__ import annotations

import streamlit as st

from nsfw_core.access import Permission
from nsfw_core.calibration import maths as cal
from nsfw_ui import (
    adapter_panel,
    auth,
    calibration_controls,
    calibration_views,
    labelled_sets,
    production,
    set_scores,
    state,
    thresholds_history,
)


def page() -> None:
    who = auth.require(Permission.CALIBRATE)
    st.title("Calibrate thresholds")
    ctx = state.context()
    active = ctx.thresholds.current()
    thresholds_history.show_active(active)
    thresholds_history.show_history(ctx, who)
    controls = calibration_controls.sidebar(active.thresholds, ctx.settings.model)

    loaded = labelled_sets.choose(ctx)
    adapter_panel.render(ctx, who, controls.model_name, controls.adult_labels, loaded)  # issue 26: admins only
    if loaded is None:
        return
    entry = set_scores.score_set(ctx, loaded, controls.model_name)
    if entry is None:
        return
    if loaded.note:
        st.info(loaded.note)
    scored = set_scores.scored_rows(entry)
    if scored is None:
        return
    rows, failed = scored
    binary_map = calibration_controls.binary_map(controls)
    if binary_map is None:
        return

    data = set_scores.labelled(rows, controls, binary_map, entry.get("weights"))
    calibration_views.describe(loaded.description, data)
    if data.w is not None:
        production.describe_weights(ctx, data.df)
    m = cal.decision_metrics(data.a, data.s, data.y, controls.t_adult, controls.t_safe, weights=data.w)
    context = (entry["key"], tuple(controls.adult_classes), tuple(controls.safe_classes),
               tuple(sorted(controls.adult_labels)))
    sug = calibration_views.suggested(context)
    shown_sug = sug if sug is not None and sug.t_adult is not None else None

    calibration_views.show_metrics(m, controls, data.n_adult)
    if data.w is not None:
        production.per_day_effect(ctx, data.df, controls.t_adult, controls.t_safe)
    calibration_views.show_suggest(data, context, sug)
    adapter = ctx.classifier.adapter_in_force(controls.model_name)
    if adapter is not None:
        st.info(f"The adapter {adapter.name} (version {adapter.version}) is in force for {controls.model_name}: "
                f"it judges with its own thresholds (definitely adult ≥ {adapter.t_adult:.2f}, definitely safe ≥ "
                f"{adapter.t_safe:.2f}, chosen on held-out data when it was trained). Thresholds saved here apply "
                "to the summed classes: to requests that ask for the base model, and after a rollback to it. "
                "Train a new version of the adapter to change its own.")
    if loaded.savable and st.button(
            "Save thresholds", type="primary",
            help="Save these thresholds as a new version: the API and the classify page use them."):
        thresholds_history.save(ctx, who, controls, loaded, entry, data, len(failed), m, sug)
    calibration_views.show_distributions(data, controls, shown_sug)
    calibration_views.show_verdicts(data, controls)
    calibration_views.show_tradeoff(data, controls, m, shown_sug)
    calibration_views.show_curves(data, controls, shown_sug)
    calibration_views.show_samples(data, controls)


page()
