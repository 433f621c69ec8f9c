"""Calibrate thresholds: score a labelled set, move T_adult / T_safe, see what the rule does, save.

Scores come from the process context's on-disk score cache
(``nsfw_core.calibration.scorecache``) and are kept in ``st.session_state`` per (set,
model), so moving a slider only redoes the arithmetic
(``nsfw_core.calibration.maths``), never the model.  Saving adds a version to the
thresholds history in the database that the API and the classify page follow,
on every instance (the context's ``ThresholdHistory.save``); the history table
shows who saved what, when and on which set, and can roll back to any version
(a new version copying it).  The charts are ``nsfw_ui.charts``'.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence, TypedDict

import numpy as np
import pandas as pd
import streamlit as st

from nsfw_core.access import Identity, Permission
from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import (
    ADULT,
    CLASS_NAMES,
    DEFAULT_BINARY_MAP,
    LABELS,
    VERDICTS,
    LabelledItem,
    make_binary_map,
    to_binary,
)
from nsfw_core.base.settings import MODEL_NAMES
from nsfw_core.base.verdict import EPSILON, ActiveThresholds, Thresholds
from nsfw_core.calibration import labelsets
from nsfw_core.calibration import maths as cal
from nsfw_core.calibration.scorecache import model_key
from nsfw_core.context import Context
from nsfw_ui import adapter_panel, auth, charts, state, widgets

SOURCES = {
    "demo": "Demo set (benign only)",
    "reviewed": "Reviewed items (review queue)",
    "synthetic": "Synthetic scores (no images)",
    "manifest": "Upload a CSV/JSON manifest",
    "folder": "Folder on the server",
    "zip": "Upload a ZIP",
}
STEP = 0.0001  # slider step (suggestions are snapped to it when that keeps the same decisions)
KEEP_SETS = 4  # scored sets kept in the session
SAMPLE_MARGIN = 0.05  # "near" a threshold in the table of samples worth a look

S = st.session_state
_pct = widgets.pct


class ScoreRow(TypedDict):
    source: str
    label: str
    scores: dict[str, float] | None
    error: dict[str, Any] | None  # {"code", "message"}


class Entry(TypedDict):
    """A set's scores as kept in the session, per (set, model)."""

    key: tuple[str, str]
    rows: list[ScoreRow]
    model: str | None  # None: precomputed scores (synthetic, reviewed items)
    model_version: str | None


@dataclasses.dataclass(frozen=True)
class LoadedSet:
    """A labelled set as read: its items, how to describe it, and its scores when they come with it."""

    kind: str
    items: list[LabelledItem]
    description: str
    pre: Mapping[str, dict[str, float]] | None  # precomputed scores by source (no model involved)

    @property
    def key(self) -> str:
        h = hashlib.sha256(self.kind.encode())
        for it in self.items:
            h.update(f"\0{it.source}\0{it.label}".encode())
        return h.hexdigest()[:20]

    def entry_key(self, model_name: str) -> tuple[str, str]:
        """The session's key of this set's scores: per model, except for precomputed scores."""
        return self.key, model_name if self.pre is None else self.kind


@dataclasses.dataclass(frozen=True)
class Controls:
    """The sidebar's values (they exist whatever the set, so they survive switching sources)."""

    t_adult: float
    t_safe: float
    model_name: str
    adult_classes: list[str]
    safe_classes: list[str]
    adult_labels: list[str]

    def rule(self) -> Thresholds:
        """The thresholds on the sliders, as the API would apply them."""
        return Thresholds(adult=self.t_adult, safe=self.t_safe, adult_classes=tuple(self.adult_classes),
                          safe_classes=tuple(self.safe_classes))


@dataclasses.dataclass(frozen=True)
class Labelled:
    """The scored images of a set with their truth, as the calibration maths takes them."""

    df: pd.DataFrame  # source, label, the five scores, adult_score, safe_score, truth (0/1), truth_label
    scores: list[dict[str, float]]

    @property
    def a(self) -> np.ndarray:
        values: np.ndarray = self.df["adult_score"].to_numpy()
        return values

    @property
    def s(self) -> np.ndarray:
        values: np.ndarray = self.df["safe_score"].to_numpy()
        return values

    @property
    def y(self) -> np.ndarray:
        values: np.ndarray = self.df["truth"].to_numpy()
        return values

    @property
    def n(self) -> int:
        return len(self.df)

    @property
    def n_adult(self) -> int:
        return int(self.y.sum())

    @property
    def n_safe(self) -> int:
        return self.n - self.n_adult


# ---------------------------------------------------------------- loading and scoring a set


def _load_set(ctx: Context, kind: str) -> LoadedSet | None:
    """The set chosen; None while waiting for input (the page says what it waits for)."""
    if kind == "demo":
        return LoadedSet(kind, labelsets.demo_set(), "demo set (data/demo)", None)
    if kind == "synthetic":
        pairs = labelsets.synthetic_set()
        return LoadedSet(kind, [it for it, _ in pairs], "synthetic scores (data/synthetic/scores.csv)",
                         {it.source: sc for it, sc in pairs})
    if kind == "reviewed":
        return _load_reviewed(ctx)
    if kind == "manifest":
        return _load_manifest()
    if kind == "folder":
        return _load_folder()
    if kind == "zip":
        return _load_zip(ctx)
    raise ValueError(kind)


def _load_reviewed(ctx: Context) -> LoadedSet | None:
    reviewed = ctx.review_queue.reviewed_items()
    if not reviewed:
        st.info("No reviewed items yet: decisions made on the Review queue page appear here, "
                "with the scores the API gave them (no re-scoring).")
        return None
    models = sorted({it.model for it in reviewed})
    description = f"reviewed items ({len(reviewed)}, scored by {', '.join(models)})"
    return LoadedSet("reviewed", [it.labelled() for it in reviewed], description,
                     {it.source: it.scores for it in reviewed})


def _load_manifest() -> LoadedSet | None:
    up = st.file_uploader("Manifest (CSV or JSON: path or URL, label)", type=["csv", "json"], key="cal_manifest")
    [base] = labelsets.server_roots(state.context().settings.labelset_config)
    st.caption(f"Its paths are URLs or files under `{base}` (relative to it); nothing else is read.")
    if up is None:
        st.info("Upload a manifest: rows of `path,label` (CSV with a header) or a JSON list of "
                f"`{{\"path\": …, \"label\": …}}`. Labels: {', '.join(LABELS)}.")
        return None
    fmt = Path(up.name).suffix.lstrip(".").lower() or "csv"
    return LoadedSet("manifest", labelsets.parse_manifest(up.getvalue(), fmt, base_dir=base, confine=base,
                                                          where=f"the labelled-sets folder {base}"),
                     f"manifest {up.name}", None)


def _load_folder() -> LoadedSet | None:
    path = st.text_input("Folder (one sub-folder per label, or holding manifest.csv/json) or manifest file",
                         key="cal_folder")
    if not path.strip():
        roots = labelsets.server_roots(state.context().settings.labelset_config)
        st.info("Type a path on the server, under " + " or ".join(f"`{r}`" for r in roots) + ": a folder with "
                f"sub-folders named after the labels ({', '.join(LABELS)}), a folder with a manifest, or a "
                "manifest file.")
        return None
    config = state.context().settings.labelset_config
    return LoadedSet("folder", labelsets.load_server_set(path, config), f"folder {path.strip()}", None)


def _load_zip(ctx: Context) -> LoadedSet | None:
    up = st.file_uploader("ZIP archive (sub-folders per label, or a manifest inside)", type=["zip"], key="cal_zip")
    if up is None:
        st.info("Upload a ZIP holding one folder per label (porn/, neutral/, … or adult/, safe/) "
                "or a manifest.csv/json with paths relative to the archive.")
        return None
    config = ctx.settings.labelset_config
    items = labelsets.load_zip(up.getvalue(), config.uploads_dir, max_file_bytes=ctx.serving.max_bytes,
                               quota_bytes=config.quota_bytes)
    return LoadedSet("zip", items, f"zip {up.name}", None)


def _score(ctx: Context, loaded: LoadedSet, model_name: str) -> Entry:
    """Scores for the set, computed once per (set, model) and kept in the session."""
    store: dict[tuple[str, str], Entry] = S.setdefault("cal_scores", {})
    key = loaded.entry_key(model_name)
    if key in store:
        return store[key]
    if loaded.pre is not None:
        pre = loaded.pre
        rows: list[ScoreRow] = [{"source": it.source, "label": it.label, "scores": pre[it.source], "error": None}
                                for it in loaded.items]
        entry: Entry = {"key": key, "rows": rows, "model": None, "model_version": None}
    else:
        model = state.model(model_name)
        bar = st.progress(0.0, text=f"Scoring {len(loaded.items)} images with {model_name}…")

        def progress(done: int, total: int) -> None:
            bar.progress(done / max(total, 1), text=f"Scored {done} of {total} images with {model_name}")

        loader = labelsets.item_loader(ctx.settings.labelset_config, ctx.fetch)  # files only under the roots
        results = ctx.score_cache.score_items(model, loaded.items, ctx.decoder, loader, progress=progress)
        bar.empty()
        rows = [{"source": it.source, "label": it.label, "scores": sc,
                 "error": None if err is None else err.to_dict()} for it, sc, err in results]
        entry = {"key": key, "rows": rows, "model": model.name, "model_version": model_key(model, ctx.decoder.limits)}
    store[key] = entry
    while len(store) > KEEP_SETS:
        store.pop(next(iter(store)))
    return entry


@st.cache_data(max_entries=2000, show_spinner=False)
def _thumbnail(source: str, model_name: str) -> str | None:
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


# ---------------------------------------------------------------- arithmetic for the page


def _labelled(rows: Sequence[ScoreRow], controls: Controls, binary_map: Mapping[str, str]) -> Labelled:
    """The score frame of the scored rows: classes summed as on the sidebar, truth from the labels."""
    scores = [r["scores"] for r in rows if r["scores"] is not None]
    truth = [to_binary(r["label"], binary_map) for r in rows]
    df = cal.score_frame(scores, truth, controls.adult_classes, controls.safe_classes)
    df.insert(0, "source", [r["source"] for r in rows])
    df.insert(1, "label", [r["label"] for r in rows])
    df["truth_label"] = truth
    return Labelled(df, scores)


def _adult_point(scores: Sequence[Mapping[str, float]], y: np.ndarray, rule: Thresholds) -> dict[str, float]:
    """The adult score's operating point under ``rule``: its adult verdicts (``Thresholds.decide``)
    against the truth ``y`` (1: adult) as tpr = recall, fpr and precision (NaN: undefined)."""
    hit = np.array([rule.decide(sc) == ADULT for sc in scores], dtype=bool)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    tp, fp = int((hit & (y == 1)).sum()), int((hit & (y == 0)).sum())
    return {"tpr": tp / n_pos if n_pos else np.nan, "recall": tp / n_pos if n_pos else np.nan,
            "fpr": fp / n_neg if n_neg else np.nan, "precision": tp / (tp + fp) if tp + fp else np.nan}


def _verdict_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Verdict × true label as text: the count and, in brackets, the share of the images with that label."""
    pivot = table.pivot(index="verdict", columns="truth", values="count").reindex(list(VERDICTS))
    pivot = pivot.reindex(columns=["adult", "safe"])
    rates = table.pivot(index="verdict", columns="truth", values="share_of_truth").reindex(pivot.index)
    return pd.DataFrame({f"true {c}": [f"{int(pivot.loc[v, c])} ({_pct(rates.loc[v, c], 0)})" for v in pivot.index]
                         for c in pivot.columns}, index=[f"verdict {v}" for v in pivot.index])


def _suggested(context: tuple[Any, ...]) -> cal.Suggestion | None:
    """The suggestion made for this set and these choices, if any."""
    held = S.get("cal_suggestion")
    return held["suggestion"] if held and held["context"] == context else None


# ---------------------------------------------------------------- callbacks


def _on_suggest(a: np.ndarray, s: np.ndarray, y: np.ndarray, context: tuple[Any, ...]) -> None:
    sug = cal.suggest_thresholds(a, s, y, S.get("cal_target_adult", 99.0) / 100.0,
                                 S.get("cal_target_safe", 99.0) / 100.0)
    if sug.status in ("ok", "partial") and sug.t_adult is not None and sug.t_safe is not None:
        t_a = cal.snap_threshold(sug.t_adult, a, STEP)
        t_s = cal.snap_threshold(sug.t_safe, s[a < t_a - EPSILON], STEP)
        if (t_a, t_s) != (sug.t_adult, sug.t_safe):
            sug.message += (f" Sliders set to T_adult = {t_a:.4f}, T_safe = {t_s:.4f}, which make the same "
                            "decisions on this set.")
        S["cal_t_adult"], S["cal_t_safe"] = float(t_a), float(t_s)
        sug.t_adult, sug.t_safe = float(t_a), float(t_s)
    S["cal_suggestion"] = {"context": context, "suggestion": sug}


# ---------------------------------------------------------------- sections of the page


def _show_active(active: ActiveThresholds) -> None:
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


def _sidebar(active: Thresholds, default_model: str) -> Controls:
    """Controls that exist whatever the set (so their values survive switching sources)."""
    S.setdefault("cal_t_adult", float(active.adult))
    S.setdefault("cal_t_safe", float(active.safe))
    S.setdefault("cal_adult_classes", list(active.adult_classes))
    S.setdefault("cal_safe_classes", list(active.safe_classes))
    S.setdefault("cal_adult_labels", [c for c, b in DEFAULT_BINARY_MAP.items() if b == ADULT])
    S.setdefault("cal_model", default_model)
    with st.sidebar:
        st.header("Thresholds")
        st.slider("T_adult: adult score at or above → adult", 0.0, 1.0, step=STEP, format="%.4f", key="cal_t_adult")
        st.slider("T_safe: else safe score at or above → safe", 0.0, 1.0, step=STEP, format="%.4f", key="cal_t_safe")
        st.multiselect("Adult classes (summed into the adult score)", CLASS_NAMES, key="cal_adult_classes")
        st.multiselect("Safe classes (summed into the safe score)", CLASS_NAMES, key="cal_safe_classes")
        st.selectbox("Model", MODEL_NAMES, key="cal_model")
        with st.expander("Labels → truth"):
            st.multiselect("Five-class labels that count as adult (the others are safe)", CLASS_NAMES,
                           key="cal_adult_labels",
                           help="Default: porn, sexy, hentai → adult; neutral, drawings → safe. "
                                "Labels adult/safe in a set are used as they are.")
    return Controls(t_adult=float(S["cal_t_adult"]), t_safe=float(S["cal_t_safe"]), model_name=S["cal_model"],
                    adult_classes=list(S["cal_adult_classes"]), safe_classes=list(S["cal_safe_classes"]),
                    adult_labels=list(S["cal_adult_labels"]))


def _choose_and_score(ctx: Context, model_name: str) -> tuple[LoadedSet, Entry] | None:
    """The set chosen and its scores; None (after saying why) when there is nothing to show yet."""
    kind = st.radio("Labelled set", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="cal_source")
    try:
        loaded = _load_set(ctx, kind)
    except NSFWError as exc:
        st.error(f"Cannot read the set: {exc.message}")
        return None
    if loaded is None:
        return None
    if st.button("Re-score", help="Score the set again (changed files; the disk cache still skips known images)"):
        S.get("cal_scores", {}).pop(loaded.entry_key(model_name), None)
    try:
        entry = _score(ctx, loaded, model_name)
    except NSFWError as exc:
        st.error(f"Cannot score the set: {exc.message}")
        return None
    if ctx.score_cache.warning:
        st.warning(ctx.score_cache.warning)
    if kind == "synthetic":
        st.info("Synthetic scores: made-up numbers with labels and no images, to try the adult side of the page "
                "(ROC, PR, suggestions). Thresholds tuned on them must not be saved, so saving is off.")
    return loaded, entry


def _scored_rows(entry: Entry) -> tuple[list[ScoreRow], list[ScoreRow]] | None:
    """(scored rows, failed rows), showing the failures; None (after an error) when none was scored."""
    rows = [r for r in entry["rows"] if r["scores"] is not None]
    failed = [r for r in entry["rows"] if r["scores"] is None]
    if failed:
        st.warning(f"{len(failed)} of {len(entry['rows'])} images could not be scored and are left out.")
        with st.expander("Images that failed"):
            st.dataframe(pd.DataFrame([{"source": r["source"], "label": r["label"],
                                        "code": (r["error"] or {}).get("code"),
                                        "message": (r["error"] or {}).get("message")} for r in failed]),
                         hide_index=True)
    if not rows:
        st.error("No image of the set could be scored.")
        return None
    return rows, failed


def _binary_map(controls: Controls) -> dict[str, str] | None:
    """The label -> truth map of the sidebar; None (after an error) when the choices cannot make one."""
    if not controls.adult_classes or not controls.safe_classes:
        st.error("Choose at least one adult class and one safe class in the sidebar.")
        return None
    try:
        return make_binary_map(controls.adult_labels)
    except NSFWError as exc:
        st.error(exc.message)
        return None


def _describe(description: str, data: Labelled) -> None:
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


def _show_metrics(m: cal.DecisionMetrics, controls: Controls, n_adult: int) -> None:
    st.subheader(f"At T_adult = {controls.t_adult:.4f}, T_safe = {controls.t_safe:.4f}")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Precision of automatic adult", _pct(m.adult_precision),
              help="Of the images called adult automatically, the share that are truly adult.")
    c1.caption(m.reasons.get("adult_precision") or f"{m.adult_correct} of {m.adult_decisions} correct")
    c2.metric("Precision of automatic safe", _pct(m.safe_precision),
              help="Of the images called safe automatically, the share that are truly safe.")
    c2.caption(m.reasons.get("safe_precision") or f"{m.safe_correct} of {m.safe_decisions} correct"
               + (" (no adult samples: trivially 100 %)" if n_adult == 0 else ""))
    c3.metric("Sent to review", _pct(m.review_share))
    c3.caption(f"{m.review_n} of {m.n} images")
    c4.metric("Adult images let through as safe", f"{m.missed_adult}" if n_adult else "—")
    c4.caption(f"{m.false_adult} safe images blocked as adult; adult caught automatically: "
               + (_pct(m.adult_recall) if n_adult else "undefined (no adult samples)"))


def _show_suggest(data: Labelled, context: tuple[Any, ...], sug: cal.Suggestion | None) -> None:
    st.subheader("Suggest and save")
    col_a, col_s, col_b = st.columns([1, 1, 1])
    col_a.number_input("Target precision of adult decisions (%)", 50.0, 100.0, 99.0, 0.1, key="cal_target_adult")
    col_s.number_input("Target precision of safe decisions (%)", 50.0, 100.0, 99.0, 0.1, key="cal_target_safe")
    col_b.button("Suggest thresholds", on_click=_on_suggest, args=(data.a, data.s, data.y, context),
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


def _save(ctx: Context, who: Identity, controls: Controls, loaded: LoadedSet, entry: Entry, data: Labelled,
          failed: int, m: cal.DecisionMetrics, sug: cal.Suggestion | None) -> None:
    """Save the sliders' thresholds as a new version (the API and the classify page use it), with what they were
    tuned on and who saved them."""
    store = ctx.thresholds
    tuned_on: dict[str, Any] = {
        "source": loaded.description, "images": data.n, "adult": data.n_adult, "safe": data.n_safe,
        "failed": failed, "labels": {k: int(v) for k, v in data.df["label"].value_counts().items()},
        "adult_labels": sorted(controls.adult_labels), "model_version": entry["model_version"],
        "metrics": m.to_dict(),
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


def _show_history(ctx: Context, who: Identity) -> None:
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


def _show_distributions(data: Labelled, controls: Controls, shown_sug: cal.Suggestion | None) -> None:
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


def _show_verdicts(data: Labelled, controls: Controls) -> None:
    st.subheader("Verdict × true label")
    table = cal.verdict_table(data.df, (controls.t_adult, controls.t_safe))
    v1, v2 = st.columns([1, 1])
    v1.altair_chart(charts.verdict_chart(table), width="stretch")
    v2.dataframe(_verdict_counts(table))
    v2.caption("Counts, and in brackets the share of the images with that true label.")


def _show_tradeoff(data: Labelled, controls: Controls, m: cal.DecisionMetrics,
                   shown_sug: cal.Suggestion | None) -> None:
    st.subheader("Precision vs share sent to review")
    sw = cal.sweep(data.a, data.s, data.y, controls.t_adult, controls.t_safe)
    if sw["precision"].notna().any():
        st.altair_chart(charts.tradeoff_chart(sw, m, shown_sug), width="stretch")
    st.caption("Each curve moves one threshold over 0…1 with the other fixed at its current value; "
               "● current operating point, ◆ suggestion."
               + (" Without adult samples the safe curve is 100 % everywhere and the adult curve is empty or 0 %."
                  if data.n_adult == 0 else ""))


def _show_curves(data: Labelled, controls: Controls, shown_sug: cal.Suggestion | None) -> None:
    st.subheader("ROC and precision-recall of the adult score")
    roc, pr = cal.roc_curve(data.a, data.y), cal.pr_curve(data.a, data.y)
    rule = controls.rule()
    point = _adult_point(data.scores, data.y, rule)
    sug_point = None
    if shown_sug is not None and shown_sug.t_adult is not None:
        sug_point = _adult_point(data.scores, data.y, dataclasses.replace(rule, adult=shown_sug.t_adult))
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


def _show_samples(data: Labelled, controls: Controls) -> None:
    st.subheader("Misclassified and borderline samples")
    samples = cal.review_samples(data.df, controls.t_adult, controls.t_safe, margin=SAMPLE_MARGIN, limit=50)
    if samples.empty:
        st.write("None at these thresholds.")
        return
    view = pd.DataFrame({
        "preview": [_thumbnail(src, controls.model_name) for src in samples["source"]],
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


# ---------------------------------------------------------------- the page


def page() -> None:
    who = auth.require(Permission.CALIBRATE)
    st.title("Calibrate thresholds")
    ctx = state.context()
    active = ctx.thresholds.current()
    _show_active(active)
    _show_history(ctx, who)
    controls = _sidebar(active.thresholds, ctx.settings.model)

    chosen = _choose_and_score(ctx, controls.model_name)
    adapter_panel.render(ctx, who, controls.model_name, controls.adult_labels,  # issue 26: the Adapter part
                         None if chosen is None else (chosen[0].kind, chosen[0].items, chosen[0].description))
    if chosen is None:
        return
    loaded, entry = chosen
    scored = _scored_rows(entry)
    if scored is None:
        return
    rows, failed = scored
    binary_map = _binary_map(controls)
    if binary_map is None:
        return

    data = _labelled(rows, controls, binary_map)
    _describe(loaded.description, data)
    m = cal.decision_metrics(data.a, data.s, data.y, controls.t_adult, controls.t_safe)
    context = (entry["key"], tuple(controls.adult_classes), tuple(controls.safe_classes),
               tuple(sorted(controls.adult_labels)))
    sug = _suggested(context)
    shown_sug = sug if sug is not None and sug.t_adult is not None else None

    _show_metrics(m, controls, data.n_adult)
    _show_suggest(data, context, sug)
    if loaded.kind != "synthetic" and st.button(
            "Save thresholds", type="primary",
            help="Save these thresholds as a new version: the API and the classify page use them."):
        _save(ctx, who, controls, loaded, entry, data, len(failed), m, sug)
    _show_distributions(data, controls, shown_sug)
    _show_verdicts(data, controls)
    _show_tradeoff(data, controls, m, shown_sug)
    _show_curves(data, controls, shown_sug)
    _show_samples(data, controls)


page()
