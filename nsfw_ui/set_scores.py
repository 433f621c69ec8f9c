"""A labelled set's scores on the Calibrate page, and the frame the calibration maths takes.

Scores come from the process context's on-disk score cache (``nsfw_core.calibration.scorecache``) and
are kept in ``st.session_state`` per (set, model) — the last :data:`KEEP_SETS` — so moving a slider only
redoes the arithmetic, never the model.  Precomputed scores (synthetic, reviewed items) are taken as
they come.  :func:`labelled` turns the scored rows into :class:`Labelled`: the classes summed as on
the sidebar, the truth from the labels, and for the reviewed items each one's weight (the production
images it stands for, issue 25: :mod:`nsfw_ui.production`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence, TypedDict

import numpy as np
import pandas as pd
import streamlit as st

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import to_binary
from nsfw_core.calibration import labelsets
from nsfw_core.calibration import maths as cal
from nsfw_core.calibration.scorecache import model_key
from nsfw_core.context import Context
from nsfw_ui import state
from nsfw_ui.calibration_controls import Controls
from nsfw_ui.labelled_sets import LoadedSet

KEEP_SETS = 4  # scored sets kept in the session

S = st.session_state


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
    weights: Mapping[str, float] | None  # by source: the reviewed items' inverse queueing probabilities


@dataclasses.dataclass(frozen=True)
class Labelled:
    """The scored images of a set with their truth, as the calibration maths takes them."""

    df: pd.DataFrame  # source, label, the five scores, adult_score, safe_score, truth (0/1), truth_label[, weight]
    scores: list[dict[str, float]]

    @property
    def w(self) -> np.ndarray | None:
        """Each image's weight (production images it stands for), or None: every image counts one."""
        if "weight" not in self.df.columns:
            return None
        values: np.ndarray = self.df["weight"].to_numpy()
        return values

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


def scores_of(ctx: Context, loaded: LoadedSet, model_name: str) -> Entry:
    """Scores for the set, computed once per (set, model) and kept in the session."""
    store: dict[tuple[str, str], Entry] = S.setdefault("cal_scores", {})
    key = loaded.entry_key(model_name)
    if key in store:
        return store[key]
    if loaded.pre is not None:
        pre = loaded.pre
        rows: list[ScoreRow] = [{"source": it.source, "label": it.label, "scores": pre[it.source], "error": None}
                                for it in loaded.items]
        entry: Entry = {"key": key, "rows": rows, "model": None, "model_version": None, "weights": loaded.weights}
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
        entry = {"key": key, "rows": rows, "model": model.name, "model_version": model_key(model, ctx.decoder.limits),
                 "weights": None}
    store[key] = entry
    while len(store) > KEEP_SETS:
        store.pop(next(iter(store)))
    return entry



def score_set(ctx: Context, loaded: LoadedSet, model_name: str) -> Entry | None:
    """The set's scores, with a button to score it again; None (after an error) when it cannot be scored."""
    if st.button("Re-score", help="Score the set again (changed files; the disk cache still skips known images)"):
        S.get("cal_scores", {}).pop(loaded.entry_key(model_name), None)
    try:
        entry = scores_of(ctx, loaded, model_name)
    except NSFWError as exc:
        st.error(f"Cannot score the set: {exc.message}")
        return None
    if ctx.score_cache.warning:
        st.warning(ctx.score_cache.warning)
    return entry


def scored_rows(entry: Entry) -> tuple[list[ScoreRow], list[ScoreRow]] | None:
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


def labelled(rows: Sequence[ScoreRow], controls: Controls, binary_map: Mapping[str, str],
             weights: Mapping[str, float] | None = None) -> Labelled:
    """The score frame of the scored rows: classes summed as on the sidebar, truth from the labels (and each
    row's weight when the set has weights)."""
    scores = [r["scores"] for r in rows if r["scores"] is not None]
    truth = [to_binary(r["label"], binary_map) for r in rows]
    df = cal.score_frame(scores, truth, controls.adult_classes, controls.safe_classes)
    df.insert(0, "source", [r["source"] for r in rows])
    df.insert(1, "label", [r["label"] for r in rows])
    df["truth_label"] = truth
    if weights is not None:
        df["weight"] = [float(weights.get(r["source"], 1.0)) for r in rows]
    return Labelled(df, scores)
