"""The Calibrate page's Adapter part: train an adapter on the chosen set, compare it with the base model, publish,
roll back, and example sets (issue 26).  Admins only (``Permission.ADAPTERS``).

The page calls :func:`render` once, with the labelled set it has loaded (or None): training embeds that set's
images (through the score cache, so a second training reads no image again) and, if asked, the review queue's
decided items (their embeddings were kept when they were queued; each weighted by 1 / the probability that
queued it, issue 25's audit sample, as the page's reviewed-items figures are), trains with
:func:`nsfw_core.calibration.adapters.train` and stores a new version.  Its report shows the adapter and the
base model side by side on held-out images (ROC curves, AUC with intervals, precision at the target recall,
the share sent to review at the target precisions, verdict x truth); publishing is refused when the report did
not pass.  Without scikit-learn (the runtime install leaves it out) the part says how to enable training and
still publishes, rolls back and lists what was trained elsewhere.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from nsfw_core.access import Identity, Permission
from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import ADULT, SAFE, LabelledItem, make_binary_map, to_binary
from nsfw_core.calibration import adapters as training
from nsfw_core.calibration import labelsets
from nsfw_core.context import Context
from nsfw_core.state.adapters import AdapterVersion

from . import auth
from .labelled_sets import LoadedSet
from .widgets import pct

S = st.session_state
CAN_TRAIN_ON = ("demo", "reviewed", "manifest", "folder", "zip")  # the synthetic set has no images


def render(ctx: Context, who: Identity, model_name: str, adult_labels: Sequence[str],
           chosen: LoadedSet | None) -> None:
    """The Adapter part, for ``model_name``'s embeddings; ``chosen``: the page's labelled set (None: none yet)."""
    if not auth.can(who, Permission.ADAPTERS):
        return
    with st.expander("Adapter: teach it your policy", expanded=bool(S.get("adapter_open"))):
        _in_force(ctx, model_name)
        _train(ctx, who, model_name, adult_labels, chosen)
        _report(ctx, who)
        _history(ctx, who, model_name)
        _example_sets(ctx, who, model_name, chosen, adult_labels)


def _in_force(ctx: Context, model_name: str) -> None:
    adapter = ctx.adapters.in_force().get(model_name)
    if ctx.adapters.warning:
        st.warning(ctx.adapters.warning)
    if adapter is None:
        st.caption(f"No adapter in force for {model_name}: the base model's summed classes are the adult score.")
    else:
        st.caption(f"In force for {model_name}: adapter **{adapter.name} v{adapter.version}** (trained by "
                   f"{adapter.trained_by}), T_adult = {adapter.t_adult:.4f}, T_safe = {adapter.t_safe:.4f} on its "
                   "score. Its probability is the adult score (the safe score is one minus it); a remembered "
                   "decision, a hash list or an example set still decides first.")


# ---------------------------------------------------------------- training


def _train(ctx: Context, who: Identity, model_name: str, adult_labels: Sequence[str],
           chosen: LoadedSet | None) -> None:
    st.subheader("Train")
    if not training.sklearn_available():
        st.info(f"Training is not enabled in this install: {training.INSTALL_HINT}. Adapters trained elsewhere "
                "(nsfw-classify adapter train, on the same database) can still be published and rolled back here.")
        return
    st.caption("Labels are your policy: adult = what the platform blocks, safe = what it allows (five-class labels "
               "follow the sidebar's map). The adapter reads the model's embedding and its five scores.")
    c1, c2, c3 = st.columns([2, 1, 1])
    S.setdefault("adapter_name", "policy")
    c1.text_input("Adapter name", key="adapter_name")
    c2.number_input("Target recall (%)", 50.0, 100.0, 90.0, 1.0, key="adapter_target_recall")
    c3.checkbox("Also the reviewed items", key="adapter_reviewed",
                help="Decided review items whose embedding was kept when they were queued.")
    usable = chosen is not None and chosen.kind in CAN_TRAIN_ON
    if chosen is not None and not usable:
        st.caption("The synthetic set has no images: choose a set with images, or train on the reviewed items alone.")
    what = (f"the {chosen.description}" if usable and chosen is not None else "") + \
        (" and " if usable and S.get("adapter_reviewed") else "") + \
        ("the reviewed items" if S.get("adapter_reviewed") else "")
    if st.button("Train adapter", disabled=not what, help=f"Train on {what or 'nothing yet'}; the figures come from "
                 "images held out of training."):
        S["adapter_open"] = True
        try:
            auth.check(who, Permission.ADAPTERS)
            saved = _run_training(ctx, who, model_name, adult_labels, chosen if usable else None)
        except NSFWError as exc:
            st.error(f"Could not train: {exc.message}")
            return
        except ValueError as exc:
            st.error(f"Could not train: {exc}")
            return
        S["adapter_shown"] = (saved.name, saved.version)


def _run_training(ctx: Context, who: Identity, model_name: str, adult_labels: Sequence[str],
                  chosen: LoadedSet | None) -> AdapterVersion:
    model = ctx.models.get(model_name)
    binary_map = make_binary_map(adult_labels)
    examples: list[training.Example] = []
    failed: list[dict[str, Any]] = []
    missing = 0
    if chosen is not None and chosen.kind != "reviewed":
        items = [LabelledItem(it.source, it.label, to_binary(it.label, binary_map)) for it in chosen.items]
        bar = st.progress(0.0, text=f"Embedding {len(items)} images…")
        loader = labelsets.item_loader(ctx.settings.labelset_config, ctx.fetch)

        def progress(done: int, total: int) -> None:
            bar.progress(done / max(total, 1), text=f"Embedded {done} of {total} images")

        results = ctx.score_cache.embed_items(model, items, ctx.decoder, loader, progress)
        bar.empty()
        examples, failed = training.examples_from_set(results)
    if S.get("adapter_reviewed") or (chosen is not None and chosen.kind == "reviewed"):
        reviewed = ctx.review_queue.reviewed_items(binary_map)  # each weighted 1 / the probability that queued it
        got, missing = training.examples_from_reviewed(reviewed, ctx.adapters.item_embeddings(model.name,
                                                                                              model.version))
        examples += got
    targets = training.Targets(float(S.get("adapter_target_recall", 90.0)) / 100.0,
                               float(S.get("cal_target_adult", 99.0)) / 100.0,
                               float(S.get("cal_target_safe", 99.0)) / 100.0)
    with st.spinner(f"Training on {len(examples)} examples and checking it on held-out folds…"):
        trained = training.train(examples, model=model.name, model_version=model.version,
                                 base=ctx.thresholds.current().thresholds, targets=targets,
                                 distance=ctx.settings.match_distance)
    report = {**trained.report, "failed_count": len(failed), "reviewed_without_embedding": missing,
              "source": chosen.description if chosen is not None else "reviewed items"}
    return ctx.adapters.save(name=str(S.get("adapter_name") or "policy"), model=model.name,
                             model_version=model.version, head=trained.head, t_adult=trained.t_adult,
                             t_safe=trained.t_safe, report=report, dataset_sha256=trained.dataset_sha256,
                             examples=len(examples), publishable=trained.publishable, by=who.name)


# ---------------------------------------------------------------- the report, side by side


def _figure(value: Any, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _interval(pair: Sequence[Any]) -> str:
    if not pair or any(v is None for v in pair):
        return "no interval"
    return f"95 % interval {pair[0]:.3f} to {pair[1]:.3f}"


def side_by_side(report: dict[str, Any]) -> pd.DataFrame:
    """The report's held-out figures, base model and adapter in two columns (pure: the tests read it)."""
    held = report["held_out"]
    rows: dict[str, tuple[str, str]] = {}
    b, a = held["base"], held["adapter"]
    rows["ROC AUC"] = (f"{_figure(b['auc']['value'])} ({_interval(b['auc']['interval_95'])})",
                       f"{_figure(a['auc']['value'])} ({_interval(a['auc']['interval_95'])})")
    recall = report["targets"]["recall"]
    rows[f"precision at recall {recall:g}"] = (pct(b["precision_at_recall"]["value"]),
                                               pct(a["precision_at_recall"]["value"]))
    targets = report["targets"]
    rows[f"sent to review at {targets['adult_precision']:g} / {targets['safe_precision']:g} precision"] = (
        f"{pct(b['at_target_precisions']['review_share'])} ({b['at_target_precisions']['status']})",
        f"{pct(a['at_target_precisions']['review_share'])} ({a['at_target_precisions']['status']})")
    conf_b, conf_a = b["confusion"], a["confusion"]
    rows["thresholds judged at"] = (
        f"T_adult {conf_b['thresholds']['adult']:.4f}, T_safe {conf_b['thresholds']['safe']:.4f} (in force)",
        f"T_adult {conf_a['thresholds']['adult']:.4f}, T_safe {conf_a['thresholds']['safe']:.4f} (the adapter's)")
    for verdict in ("adult", "unknown", "safe"):
        rows[f"verdict {verdict}: true adult / true safe"] = (
            f"{conf_b['counts'][f'{verdict}|adult']} / {conf_b['counts'][f'{verdict}|safe']}",
            f"{conf_a['counts'][f'{verdict}|adult']} / {conf_a['counts'][f'{verdict}|safe']}")
    return pd.DataFrame({"base model": [v[0] for v in rows.values()], "adapter": [v[1] for v in rows.values()]},
                        index=list(rows))


def roc_chart(report: dict[str, Any]) -> Any:
    """Both held-out ROC curves on one chart."""
    held = report["held_out"]
    frames = [pd.DataFrame({"false-positive rate": held[k]["roc"]["fpr"], "true-positive rate": held[k]["roc"]["tpr"],
                            "score": label}) for k, label in (("base", "base model"), ("adapter", "adapter"))]
    df = pd.concat(frames, ignore_index=True)
    return alt.Chart(df).mark_line(interpolate="step-after").encode(
        x="false-positive rate:Q", y="true-positive rate:Q", color="score:N").properties(height=260)


def _report(ctx: Context, who: Identity) -> None:
    shown = S.get("adapter_shown")
    if not shown:
        return
    try:
        adapter = ctx.adapters.get(shown[0], shown[1])
    except NSFWError as exc:
        st.error(exc.message)
        return
    report = adapter.report
    st.subheader(f"{adapter.name} v{adapter.version}: held-out comparison")
    st.write(training.summary(report))
    if report.get("failed_count"):
        st.warning(f"{report['failed_count']} images could not be read or decoded and were left out.")
    if report.get("reviewed_without_embedding"):
        st.caption(f"{report['reviewed_without_embedding']} reviewed items had no kept embedding (queued before "
                   "adapters, or by another model version) and were left out.")
    if report.get("held_out"):
        c1, c2 = st.columns([3, 2])
        c1.dataframe(side_by_side(report), width="stretch")
        c2.altair_chart(roc_chart(report), width="stretch")
        st.caption(report["held_out"]["method"] + ". The adapter's thresholds were suggested on its held-out "
                   "scores at the target precisions (as the thresholds above are on a set's scores).")
    gate = report["gate"]
    if gate["passed"]:
        if st.button(f"Publish {adapter.name} v{adapter.version}", type="primary",
                     help="Put it in force: the API, the pages and every replica use it within about a second."):
            try:
                auth.check(who, Permission.ADAPTERS)
                ctx.adapters.publish(adapter.name, adapter.version, by=who.name)
            except NSFWError as exc:
                st.error(f"Not published: {exc.message}")
            else:
                st.success(f"Published {adapter.name} v{adapter.version}: in force for {adapter.model}.")
    else:
        st.error("Publishing is refused: " + "; ".join(gate["reasons"]) + ".")


# ---------------------------------------------------------------- history and rollback


def _history(ctx: Context, who: Identity, model_name: str) -> None:
    st.subheader("History")
    try:
        versions = ctx.adapters.versions(limit=50)
        publications = ctx.adapters.publications(model_name, limit=50)
    except NSFWError as exc:
        st.error(f"The adapters cannot be read now: {exc.message}")
        return
    if not versions:
        st.write("No adapter trained yet.")
        return
    table = pd.DataFrame([_row(v) for v in versions])
    st.dataframe(table, hide_index=True, width="stretch")
    c1, c2 = st.columns([2, 1])
    options = [f"{v.name}@{v.version}" for v in versions]
    c1.selectbox("Show the report of", options, key="adapter_pick")
    if c2.button("Show report"):
        name, version = str(S["adapter_pick"]).rsplit("@", 1)
        S["adapter_shown"] = (name, int(version))
        S["adapter_open"] = True
        st.rerun()
    if publications:
        st.dataframe(pd.DataFrame([p.to_dict() for p in publications]).assign(
            adapter=lambda d: [f"{a['name']} v{a['version']}" if a else "base model" for a in d["adapter"]]),
            hide_index=True, width="stretch")
        if st.button("Roll back", help="Put the adapter published before the one in force back in force (the base "
                                       "model when there was none), on every replica."):
            try:
                auth.check(who, Permission.ADAPTERS)
                now = ctx.adapters.rollback(model_name, by=who.name)
            except NSFWError as exc:
                st.error(f"Could not roll back: {exc.message}")
            else:
                who_judges = f"adapter {now.name} v{now.version}" if now else "the base model"
                st.success(f"Rolled back: {who_judges} now judges {model_name}.")


def _row(v: AdapterVersion) -> dict[str, Any]:
    held = v.report.get("held_out") or {}
    return {"adapter": v.name, "version": v.version, "model": v.model, "examples": v.examples,
            "AUC adapter": _figure((held.get("adapter") or {}).get("auc", {}).get("value")),
            "AUC base": _figure((held.get("base") or {}).get("auc", {}).get("value")),
            "publishable": "yes" if v.publishable else "no", "trained by": v.trained_by,
            "trained at (UTC)": v.summary()["trained_at"], "data (sha256)": v.dataset_sha256[:12]}


# ---------------------------------------------------------------- example sets


def _example_sets(ctx: Context, who: Identity, model_name: str,
                  chosen: LoadedSet | None, adult_labels: Sequence[str]) -> None:
    st.subheader("Example sets")
    st.caption("A few example images of something to block (or allow) now, without training: an image whose "
               "embedding is within the set's similarity threshold of one example gets the set's verdict "
               "(verdict_source \"examples\").")
    live = ctx.examples.live()
    if live:
        st.dataframe(pd.DataFrame([_set_row(s.summary()) for s in live]), hide_index=True, width="stretch")
        c1, c2 = st.columns([2, 1])
        c1.selectbox("Example set", [s.name for s in live], key="examples_pick")
        if c2.button("Remove example set"):
            try:
                auth.check(who, Permission.ADAPTERS)
                ctx.examples.remove(str(S["examples_pick"]), by=who.name)
            except NSFWError as exc:
                st.error(exc.message)
            else:
                st.rerun()
    c1, c2, c3 = st.columns([2, 1, 1])
    c1.text_input("New example set's name", key="examples_name")
    c2.radio("Images like these are", ("blocked", "allowed"), key="examples_action", horizontal=True)
    c3.number_input("False matches allowed (%)", 0.0, 20.0, 1.0, 0.5, key="examples_false_match")
    uploads = st.file_uploader("Example images", accept_multiple_files=True, key="examples_images",
                               type=["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"])
    background = "the demo set (data/demo)"
    if chosen is not None and chosen.kind in CAN_TRAIN_ON and chosen.kind != "reviewed":
        background = st.radio("Background (images that are not what the set is for)",
                              (background, f"the {chosen.description}'s images of the other truth"),
                              key="examples_background")
    if st.button("Add example set", disabled=not uploads or not S.get("examples_name")):
        try:
            auth.check(who, Permission.ADAPTERS)
            verdict = ADULT if S.get("examples_action") == "blocked" else SAFE
            other = [it for it in (chosen.items if chosen is not None else [])
                     if to_binary(it.label, make_binary_map(adult_labels)) != verdict]
            use_chosen = background != "the demo set (data/demo)" and bool(other)
            stored = _add_set(ctx, who, model_name, verdict, uploads or [], other if use_chosen else None)
        except NSFWError as exc:
            st.error(f"Could not add the example set: {exc.message}")
        else:
            fm = stored.report["false_match"]
            st.success(f"Example set {stored.name}: threshold {stored.examples.threshold:.3f}; expected false-match "
                       f"rate {fm['matched']} of {fm['of']} background images ({_interval(fm['interval_95'])}).")


def _set_row(summary: dict[str, Any]) -> dict[str, Any]:
    fm = summary["report"].get("false_match", {})
    low, high = fm.get("interval_95", [None, None])
    return {"name": summary["name"], "action": summary["action"], "examples": summary["examples"],
            "threshold": round(summary["threshold"], 4), "model": summary["model"],
            "expected false matches": f"{fm.get('matched', '?')} of {fm.get('of', '?')} background images "
                                      f"(95 % interval {pct(low)} to {pct(high)})",
            "added by": summary["added_by"], "added at (UTC)": summary["added_at"]}


def _add_set(ctx: Context, who: Identity, model_name: str, verdict: str, uploads: Sequence[Any],
             background_items: Sequence[LabelledItem] | None) -> Any:
    model = ctx.models.get(model_name)
    blobs = {f"upload:{i}": up.getvalue() for i, up in enumerate(uploads)}
    examples = _vectors(ctx, model, [LabelledItem(k, verdict, verdict) for k in blobs], blobs.__getitem__)
    if background_items is None:
        background_items = labelsets.demo_set()
    background = _vectors(ctx, model, list(background_items),
                          labelsets.item_loader(ctx.settings.labelset_config, ctx.fetch))
    built, report = training.build_example_set(str(S["examples_name"]), verdict, examples, background,
                                               false_match=float(S.get("examples_false_match", 1.0)) / 100.0)
    return ctx.examples.add(built, model=model.name, model_version=model.version, report=report, by=who.name)


def _vectors(ctx: Context, model: Any, items: Sequence[LabelledItem], loader: Any) -> np.ndarray:
    results = ctx.score_cache.embed_items(model, items, ctx.decoder, loader)
    rows = [emb.embedding for _, emb, _ in results if emb is not None]
    return np.stack(rows) if rows else np.zeros((0, model.embedding_size), np.float32)
