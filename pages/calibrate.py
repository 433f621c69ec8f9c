"""Calibrate thresholds: score a labelled set, move T_adult / T_safe, see what the rule does, save.

Scores come from the on-disk score cache (``nsfw_core.scorecache``) and are
kept in ``st.session_state`` per (set, model), so moving a slider only redoes
the arithmetic (``nsfw_core.calibration``), never the model.  Saving writes
the thresholds file that the API and the classify page follow
(``ThresholdStore.save``).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a page of streamlit_app.py or on its own (AppTest)
    sys.path.insert(0, str(ROOT))

import altair as alt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from nsfw_core import calibration as cal  # noqa: E402
from nsfw_core import labelsets, pipeline  # noqa: E402
from nsfw_core.errors import NSFWError  # noqa: E402
from nsfw_core.scorecache import model_key  # noqa: E402
from nsfw_core.settings import CLASS_NAMES, MODEL_NAMES  # noqa: E402
from nsfw_core.verdict import EPSILON, Thresholds  # noqa: E402
from pages import common  # noqa: E402

SOURCES = {
    "demo": "Demo set (benign only)",
    "reviewed": "Reviewed items (review queue)",
    "synthetic": "Synthetic scores (no images)",
    "manifest": "Upload a CSV/JSON manifest",
    "folder": "Folder on the server",
    "zip": "Upload a ZIP",
}
COLORS = alt.Scale(domain=["adult", "safe"], range=["#d62728", "#2ca02c"])
STEP = 0.0001  # slider step (suggestions are snapped to it when that keeps the same decisions)
KEEP_SETS = 4  # scored sets kept in the session

S = st.session_state


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.{digits}f} %"


# ---------------------------------------------------------------- loading a set


def _set_key(kind: str, items: list[labelsets.LabelledItem]) -> str:
    h = hashlib.sha256(kind.encode())
    for it in items:
        h.update(f"\0{it.source}\0{it.label}".encode())
    return h.hexdigest()[:20]


def _load_set(kind: str, settings: Any) -> tuple[list[labelsets.LabelledItem], str, dict | None] | None:
    """(items, description, precomputed scores by source or None); None while waiting for input."""
    if kind == "demo":
        return labelsets.demo_set(), "demo set (data/demo)", None
    if kind == "synthetic":
        pairs = labelsets.synthetic_set()
        return [it for it, _ in pairs], "synthetic scores (data/synthetic/scores.csv)", {it.source: sc for it, sc in pairs}
    if kind == "reviewed":
        reviewed = common.review_queue().reviewed_items()
        if not reviewed:
            st.info("No reviewed items yet: decisions made on the Review queue page appear here, "
                    "with the scores the API gave them (no re-scoring).")
            return None
        models = sorted({it.model for it in reviewed})
        description = f"reviewed items ({len(reviewed)}, scored by {', '.join(models)})"
        return [it.labelled() for it in reviewed], description, {it.source: it.scores for it in reviewed}
    if kind == "manifest":
        up = st.file_uploader("Manifest (CSV or JSON: path or URL, label)", type=["csv", "json"], key="cal_manifest")
        base = st.text_input("Relative paths in it are resolved against this folder on the server",
                             value=str(ROOT), key="cal_manifest_base")
        if up is None:
            st.info("Upload a manifest: rows of `path,label` (CSV with a header) or a JSON list of "
                    f"`{{\"path\": …, \"label\": …}}`. Labels: {', '.join(labelsets.LABELS)}.")
            return None
        fmt = Path(up.name).suffix.lstrip(".").lower() or "csv"
        return labelsets.parse_manifest(up.getvalue(), fmt, base_dir=base), f"manifest {up.name}", None
    if kind == "folder":
        path = st.text_input("Folder (one sub-folder per label, or holding manifest.csv/json) or manifest file",
                             key="cal_folder")
        if not path.strip():
            st.info("Type a path on the server: a folder with sub-folders named after the labels "
                    f"({', '.join(labelsets.LABELS)}), a folder with a manifest, or a manifest file.")
            return None
        return labelsets.load_path(path.strip()), f"folder {path.strip()}", None
    if kind == "zip":
        up = st.file_uploader("ZIP archive (sub-folders per label, or a manifest inside)", type=["zip"], key="cal_zip")
        if up is None:
            st.info("Upload a ZIP holding one folder per label (porn/, neutral/, … or adult/, safe/) "
                    "or a manifest.csv/json with paths relative to the archive.")
            return None
        items = labelsets.load_zip(up.getvalue(), labelsets.zip_cache_dir(settings),
                                   max_file_bytes=settings.max_bytes)
        return items, f"zip {up.name}", None
    raise ValueError(kind)


def _score(kind: str, items: list[labelsets.LabelledItem], pre: dict | None, model_name: str,
           settings: Any) -> dict:
    """Scores for the set, computed once per (set, model) and kept in the session."""
    store = S.setdefault("cal_scores", {})
    key = (_set_key(kind, items), model_name if pre is None else kind)
    if key in store:
        return store[key]
    if pre is not None:
        rows = [{"source": it.source, "label": it.label, "scores": pre[it.source], "error": None} for it in items]
        entry = {"key": key, "rows": rows, "model": None, "model_version": None}
    else:
        model = common.model(model_name)
        cache = common.score_cache()
        bar = st.progress(0.0, text=f"Scoring {len(items)} images with {model_name}…")

        def progress(done: int, total: int) -> None:
            bar.progress(done / max(total, 1), text=f"Scored {done} of {total} images with {model_name}")

        results = cache.score_items(model, items, settings, progress=progress)
        bar.empty()
        rows = [{"source": it.source, "label": it.label, "scores": sc,
                 "error": None if err is None else err.to_dict()} for it, sc, err in results]
        entry = {"key": key, "rows": rows, "model": model.name, "model_version": model_key(model, settings)}
    store[key] = entry
    while len(store) > KEEP_SETS:
        store.pop(next(iter(store)))
    return entry


@st.cache_data(max_entries=2000, show_spinner=False)
def _thumbnail(source: str, model_name: str) -> str | None:
    """A blurred preview as a data URI (None when it cannot be read)."""
    if source.startswith("scores:"):
        return None
    try:
        settings = common.settings()
        data = pipeline.load_bytes(source, settings)
        rgb = pipeline.decode_for(common.model(model_name), data, settings)
    except NSFWError:
        return None
    return common.data_uri(common.blurred(rgb), size=96)


# ---------------------------------------------------------------- callbacks


def _on_suggest(a: np.ndarray, s: np.ndarray, y: np.ndarray, context: tuple) -> None:
    sug = cal.suggest_thresholds(a, s, y, S.get("cal_target_adult", 99.0) / 100.0,
                                 S.get("cal_target_safe", 99.0) / 100.0)
    if sug.status in ("ok", "partial"):
        t_a = cal.snap_threshold(sug.t_adult, a, STEP)
        t_s = cal.snap_threshold(sug.t_safe, s[a < t_a - EPSILON], STEP)
        if (t_a, t_s) != (sug.t_adult, sug.t_safe):
            sug.message += (f" Sliders set to T_adult = {t_a:.4f}, T_safe = {t_s:.4f}, which make the same "
                            "decisions on this set.")
        S["cal_t_adult"], S["cal_t_safe"] = float(t_a), float(t_s)
        sug.t_adult, sug.t_safe = float(t_a), float(t_s)
    S["cal_suggestion"] = {"context": context, "suggestion": sug}


# ---------------------------------------------------------------- charts


def _rules(current: float, suggested: float | None) -> pd.DataFrame:
    rows = [{"x": current, "line": "current"}]
    if suggested is not None:
        rows.append({"x": suggested, "line": "suggested"})
    return pd.DataFrame(rows)


def _distribution(df: pd.DataFrame, column: str, title: str, current: float, suggested: float | None) -> alt.Chart:
    bars = alt.Chart(df).mark_bar(opacity=0.8).encode(
        x=alt.X(f"{column}:Q", bin=alt.Bin(extent=[0, 1], step=0.05), title=title),
        y=alt.Y("count():Q", stack=True, title="images"),
        color=alt.Color("truth_label:N", scale=COLORS, title="true label"),
        tooltip=[alt.Tooltip("truth_label:N", title="true label"), alt.Tooltip("count():Q", title="images")],
    )
    rules = alt.Chart(_rules(current, suggested)).mark_rule(strokeWidth=2.5).encode(
        x="x:Q",
        strokeDash=alt.StrokeDash("line:N", scale=alt.Scale(domain=["current", "suggested"], range=[[1, 0], [6, 4]]),
                                  title="threshold"),
        color=alt.value("black"),
        tooltip=[alt.Tooltip("line:N"), alt.Tooltip("x:Q", format=".3f", title="threshold")],
    )
    return (bars + rules).properties(height=230)


def _verdict_chart(table: pd.DataFrame) -> alt.Chart:
    t = table.copy()
    t["text"] = [f"{c} ({_pct(r, 0)})" for c, r in zip(t["count"], t["share_of_truth"])]
    base = alt.Chart(t).encode(
        x=alt.X("truth:N", sort=["adult", "safe"], title="true label"),
        y=alt.Y("verdict:N", sort=["adult", "unknown", "safe"], title="verdict"),
    )
    heat = base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="blues"), legend=None),
                                   tooltip=["verdict", "truth", "count",
                                            alt.Tooltip("share_of_truth:Q", format=".1%", title="share of this label"),
                                            alt.Tooltip("share_of_verdict:Q", format=".1%", title="share of this verdict")])
    text = base.mark_text(fontSize=14).encode(text="text:N")
    return (heat + text).properties(height=200)


def _tradeoff_chart(sw: pd.DataFrame, m: cal.DecisionMetrics, sug: cal.Suggestion | None) -> alt.Chart:
    names = {"T_adult": "adult decisions (T_adult moves)", "T_safe": "safe decisions (T_safe moves)"}
    data = sw.dropna(subset=["precision"]).copy()
    data["curve"] = data["moving"].map(names)
    scale = alt.Scale(domain=list(names.values()), range=["#d62728", "#2ca02c"])
    lines = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=15)).encode(
        x=alt.X("review_share:Q", title="share sent to review", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("precision:Q", title="precision of automatic decisions", axis=alt.Axis(format="%")),
        color=alt.Color("curve:N", scale=scale, title=None, legend=alt.Legend(orient="bottom", labelLimit=400)),
        order="threshold:Q",
        tooltip=["curve", alt.Tooltip("threshold:Q", format=".3f"), alt.Tooltip("precision:Q", format=".2%"),
                 alt.Tooltip("review_share:Q", format=".1%"), "decisions"],
    )
    points = [{"curve": names["T_adult"], "what": "current", "review_share": m.review_share, "precision": m.adult_precision},
              {"curve": names["T_safe"], "what": "current", "review_share": m.review_share, "precision": m.safe_precision}]
    if sug is not None and sug.t_adult is not None:
        points += [{"curve": names["T_adult"], "what": "suggested", "review_share": sug.review_share,
                    "precision": sug.adult_precision},
                   {"curve": names["T_safe"], "what": "suggested", "review_share": sug.review_share,
                    "precision": sug.safe_precision}]
    pts = pd.DataFrame(points).dropna(subset=["precision"])
    kinds = ["current", "suggested"]
    marks = alt.Chart(pts).mark_point(filled=True, stroke="black", strokeWidth=2).encode(
        x="review_share:Q", y="precision:Q",
        color=alt.Color("curve:N", scale=scale, legend=None),
        shape=alt.Shape("what:N", scale=alt.Scale(domain=kinds, range=["circle", "diamond"]),
                        title="operating point"),
        size=alt.Size("what:N", scale=alt.Scale(domain=kinds, range=[200, 600]), legend=None),
        fillOpacity=alt.FillOpacity("what:N", scale=alt.Scale(domain=kinds, range=[1.0, 0.0]), legend=None),
        tooltip=["what", "curve", alt.Tooltip("precision:Q", format=".2%"), alt.Tooltip("review_share:Q", format=".1%")],
    )
    return (lines + marks).properties(height=320)


def _roc_chart(roc: cal.RocCurve, point: dict, sug_point: dict | None) -> alt.Chart:
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
    return (line + diag + _point_layer(point, sug_point, "fpr", "tpr")).properties(
        height=300, title=f"ROC of the adult score — AUC {roc.auc:.3f}")


def _pr_chart(pr: cal.PrCurve, point: dict, sug_point: dict | None) -> alt.Chart:
    f = pr.frame().replace([np.inf], np.nan)
    line = alt.Chart(f).mark_line(point=True, interpolate="step-before").encode(
        x=alt.X("recall:Q", title="recall", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("precision:Q", title="precision", scale=alt.Scale(domain=[0, 1])),
        order="recall:Q",
        tooltip=[alt.Tooltip("threshold:Q", format=".4f"), alt.Tooltip("recall:Q", format=".3f"),
                 alt.Tooltip("precision:Q", format=".3f")],
    )
    return (line + _point_layer(point, sug_point, "recall", "precision")).properties(
        height=300, title=f"Precision-recall of the adult score — average precision {pr.average_precision:.3f}")


def _point_layer(point: dict, sug_point: dict | None, x: str, y: str) -> alt.Chart:
    rows = [dict(point, what="current T_adult")]
    if sug_point is not None:
        rows.append(dict(sug_point, what="suggested T_adult"))
    pts = pd.DataFrame(rows).dropna(subset=[x, y])
    kinds = ["current T_adult", "suggested T_adult"]
    return alt.Chart(pts).mark_point(filled=True, color="black", stroke="black", strokeWidth=2).encode(
        x=f"{x}:Q", y=f"{y}:Q",
        shape=alt.Shape("what:N", scale=alt.Scale(domain=kinds, range=["circle", "diamond"]), title=None,
                        legend=alt.Legend(orient="bottom")),
        size=alt.Size("what:N", scale=alt.Scale(domain=kinds, range=[150, 500]), legend=None),
        fillOpacity=alt.FillOpacity("what:N", scale=alt.Scale(domain=kinds, range=[1.0, 0.0]), legend=None),
        tooltip=["what", alt.Tooltip(f"{x}:Q", format=".3f"), alt.Tooltip(f"{y}:Q", format=".3f")],
    )


def _adult_point(a: np.ndarray, y: np.ndarray, t: float) -> dict:
    hit = a >= t - EPSILON
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    tp, fp = int((hit & (y == 1)).sum()), int((hit & (y == 0)).sum())
    return {"tpr": tp / n_pos if n_pos else np.nan, "recall": tp / n_pos if n_pos else np.nan,
            "fpr": fp / n_neg if n_neg else np.nan, "precision": tp / (tp + fp) if tp + fp else np.nan}


# ---------------------------------------------------------------- the page


def _sidebar(active: Thresholds, settings: Any) -> tuple[str, list[str], list[str], list[str]]:
    """Controls that exist whatever the set (so their values survive switching sources)."""
    S.setdefault("cal_t_adult", float(active.adult))
    S.setdefault("cal_t_safe", float(active.safe))
    S.setdefault("cal_adult_classes", list(active.adult_classes))
    S.setdefault("cal_safe_classes", list(active.safe_classes))
    S.setdefault("cal_adult_labels", [c for c, b in labelsets.DEFAULT_BINARY_MAP.items() if b == labelsets.ADULT])
    S.setdefault("cal_model", settings.model)
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
    return S["cal_model"], list(S["cal_adult_classes"]), list(S["cal_safe_classes"]), list(S["cal_adult_labels"])


def page() -> None:
    st.title("Calibrate thresholds")
    settings = common.settings()
    store = common.threshold_store()
    active = store.current()
    if active.warning:
        st.warning(f"⚠️ The active thresholds file is unusable: {active.warning}")
    saved = active.saved
    st.caption(
        f"In force now: T_adult = {active.thresholds.adult:g}, T_safe = {active.thresholds.safe:g} "
        f"({'saved ' + str(saved.get('saved_at', '')) + ' for ' + str(saved.get('model', '?')) if active.source == 'file' else 'defaults from the settings'})."
        " The rule: adult score at or above T_adult → adult; otherwise safe score at or above T_safe → safe;"
        " otherwise the image goes to review.")

    model_name, adult_classes, safe_classes, adult_labels = _sidebar(active.thresholds, settings)
    t_adult, t_safe = float(S["cal_t_adult"]), float(S["cal_t_safe"])

    kind = st.radio("Labelled set", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="cal_source")
    try:
        loaded = _load_set(kind, settings)
    except NSFWError as exc:
        st.error(f"Cannot read the set: {exc.message}")
        return
    if loaded is None:
        return
    items, description, pre = loaded
    if st.button("Re-score", help="Score the set again (changed files; the disk cache still skips known images)"):
        S.get("cal_scores", {}).pop((_set_key(kind, items), model_name if pre is None else kind), None)
    try:
        entry = _score(kind, items, pre, model_name, settings)
    except NSFWError as exc:
        st.error(f"Cannot score the set: {exc.message}")
        return
    if common.score_cache().warning:
        st.warning(common.score_cache().warning)
    if kind == "synthetic":
        st.info("Synthetic scores: made-up numbers with labels and no images, to try the adult side of the page "
                "(ROC, PR, suggestions). Thresholds tuned on them must not be saved, so saving is off.")

    rows = [r for r in entry["rows"] if r["scores"] is not None]
    failed = [r for r in entry["rows"] if r["scores"] is None]
    if failed:
        st.warning(f"{len(failed)} of {len(entry['rows'])} images could not be scored and are left out.")
        with st.expander("Images that failed"):
            st.dataframe(pd.DataFrame([{"source": r["source"], "label": r["label"], "code": r["error"]["code"],
                                        "message": r["error"]["message"]} for r in failed]), hide_index=True)
    if not rows:
        st.error("No image of the set could be scored.")
        return
    if not adult_classes or not safe_classes:
        st.error("Choose at least one adult class and one safe class in the sidebar.")
        return
    try:
        binary_map = labelsets.make_binary_map(adult_labels)
    except NSFWError as exc:
        st.error(exc.message)
        return

    truth = [labelsets.to_binary(r["label"], binary_map) for r in rows]
    df = cal.score_frame([r["scores"] for r in rows], truth, adult_classes, safe_classes)
    df.insert(0, "source", [r["source"] for r in rows])
    df.insert(1, "label", [r["label"] for r in rows])
    df["truth_label"] = truth
    a, s, y = df["adult_score"].to_numpy(), df["safe_score"].to_numpy(), df["truth"].to_numpy()
    n, n_adult = len(df), int(y.sum())
    n_safe = n - n_adult
    st.write(f"**{description}** — {n} images scored: **{n_adult} adult**, **{n_safe} safe** "
             f"(labels: {', '.join(f'{k} {v}' for k, v in df['label'].value_counts().sort_index().items())}).")
    if n_adult == 0:
        st.warning(
            "This set has **no adult samples**, so these cannot be computed: the ROC and PR curves and their AUC, "
            "the share of adult images caught, a threshold suggestion, and any real check of the safe precision "
            "(with no adult image to let through it is trivially 100 %). Adult precision is 0 % if a safe image is "
            "called adult, otherwise undefined. Shown below: the score distributions, the verdicts of the safe "
            "images, how many would be blocked by mistake and the share sent to review. Load a set with adult "
            "samples (your own manifest, folder or ZIP) to calibrate T_adult.")
    elif n_safe == 0:
        st.warning("This set has **no safe samples**: the false-positive rate, ROC/AUC, the precision of adult "
                   "decisions against safe images and a threshold suggestion cannot be computed.")

    m = cal.decision_metrics(a, s, y, t_adult, t_safe)
    context = (entry["key"], tuple(adult_classes), tuple(safe_classes), tuple(sorted(adult_labels)))
    sug_state = S.get("cal_suggestion")
    sug: cal.Suggestion | None = sug_state["suggestion"] if sug_state and sug_state["context"] == context else None
    shown_sug = sug if sug is not None and sug.t_adult is not None else None

    # ---- numbers at the current thresholds
    st.subheader(f"At T_adult = {t_adult:.4f}, T_safe = {t_safe:.4f}")
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

    # ---- suggest / save
    st.subheader("Suggest and save")
    col_a, col_s, col_b = st.columns([1, 1, 1])
    col_a.number_input("Target precision of adult decisions (%)", 50.0, 100.0, 99.0, 0.1, key="cal_target_adult")
    col_s.number_input("Target precision of safe decisions (%)", 50.0, 100.0, 99.0, 0.1, key="cal_target_safe")
    col_b.button("Suggest thresholds", on_click=_on_suggest, args=(a, s, y, context), type="secondary",
                 help="The thresholds that send the fewest images to review while each kind of automatic "
                      "decision meets its target precision; moves the sliders there.")
    if sug is not None:
        box = {"ok": st.success, "partial": st.warning}.get(sug.status, st.error)
        extra = ""
        if sug.t_adult is not None:
            extra = (f" Achieved: adult precision {_pct(sug.adult_precision)}, safe precision "
                     f"{_pct(sug.safe_precision)}, review {_pct(sug.review_share)} — marked ◆ on the charts.")
        box(f"Suggestion ({sug.status}): {sug.message}{extra}")

    if kind != "synthetic" and st.button("Save thresholds", type="primary",
                                 help="Write these thresholds to the file the API and the classify page use."):
        thresholds = Thresholds(adult=t_adult, safe=t_safe, adult_classes=tuple(adult_classes),
                                safe_classes=tuple(safe_classes))
        tuned_on = {
            "source": description, "images": n, "adult": n_adult, "safe": n_safe,
            "failed": len(failed), "labels": {k: int(v) for k, v in df["label"].value_counts().items()},
            "adult_labels": sorted(adult_labels), "model_version": entry["model_version"],
            "metrics": m.to_dict(),
        }
        if sug is not None:
            tuned_on["suggestion"] = sug.to_dict()
        try:
            result = store.save(thresholds, model=entry["model"] or model_name, tuned_on=tuned_on)
        except (OSError, ValueError) as exc:  # ValueError: e.g. a class on both sides
            st.error(f"Could not save the thresholds to {store.path}: {exc}")
        else:
            if result.warning:
                st.warning(result.warning)
            else:
                st.success(f"Saved T_adult = {t_adult:.4g}, T_safe = {t_safe:.4g} to {store.path}; the API and the "
                           "classify page use them from now on.")

    # ---- charts
    st.subheader("Score distributions by true label")
    d1, d2 = st.columns(2)
    d1.altair_chart(_distribution(df, "adult_score", f"adult score ({' + '.join(adult_classes)})", t_adult,
                                  shown_sug.t_adult if shown_sug else None), width="stretch")
    d2.altair_chart(_distribution(df, "safe_score", f"safe score ({' + '.join(safe_classes)})", t_safe,
                                  shown_sug.t_safe if shown_sug else None), width="stretch")
    st.caption("Solid line: current threshold; dashed: suggested. The safe threshold only applies to images "
               "below T_adult.")

    st.subheader("Verdict × true label")
    table = cal.verdict_table(df, (t_adult, t_safe))
    v1, v2 = st.columns([1, 1])
    v1.altair_chart(_verdict_chart(table), width="stretch")
    pivot = table.pivot(index="verdict", columns="truth", values="count").reindex(["adult", "unknown", "safe"])
    pivot = pivot.reindex(columns=["adult", "safe"])
    rates = table.pivot(index="verdict", columns="truth", values="share_of_truth").reindex(pivot.index)
    shown = pd.DataFrame({f"true {c}": [f"{int(pivot.loc[v, c])} ({_pct(rates.loc[v, c], 0)})" for v in pivot.index]
                          for c in pivot.columns}, index=[f"verdict {v}" for v in pivot.index])
    v2.dataframe(shown)
    v2.caption("Counts, and in brackets the share of the images with that true label.")

    st.subheader("Precision vs share sent to review")
    sw = cal.sweep(a, s, y, t_adult, t_safe)
    if sw["precision"].notna().any():
        st.altair_chart(_tradeoff_chart(sw, m, shown_sug), width="stretch")
    st.caption("Each curve moves one threshold over 0…1 with the other fixed at its current value; "
               "● current operating point, ◆ suggestion."
               + (" Without adult samples the safe curve is 100 % everywhere and the adult curve is empty or 0 %."
                  if n_adult == 0 else ""))

    st.subheader("ROC and precision-recall of the adult score")
    roc, pr = cal.roc_curve(a, y), cal.pr_curve(a, y)
    point = _adult_point(a, y, t_adult)
    sug_point = _adult_point(a, y, shown_sug.t_adult) if shown_sug else None
    r1, r2 = st.columns(2)
    if roc.defined:
        r1.altair_chart(_roc_chart(roc, point, sug_point), width="stretch")
    else:
        r1.info(f"ROC curve and AUC cannot be computed: {roc.reason}.")
    if pr.defined:
        r2.altair_chart(_pr_chart(pr, point, sug_point), width="stretch")
        if pr.note:
            r2.caption(pr.note)
    else:
        r2.info(f"Precision-recall curve cannot be computed: {pr.reason}.")
    st.caption("Both curves judge the adult score alone (\"at or above T\" for every distinct score T): "
               "true-positive rate = recall = share of adult images at or above T; false-positive rate = share "
               "of safe images at or above T; precision = share of adult images among those at or above T. "
               "Ties form one step; AUC by trapezoids (ties count one half).")

    st.subheader("Misclassified and borderline samples")
    samples = cal.review_samples(df, t_adult, t_safe, margin=0.05, limit=50)
    if samples.empty:
        st.write("None at these thresholds.")
    else:
        view = pd.DataFrame({
            "preview": [_thumbnail(src, model_name) for src in samples["source"]],
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


page()
