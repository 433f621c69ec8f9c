"""Where the Calibrate page's labelled set comes from: one source a function, all in :data:`SOURCES`.

A source draws its own widgets (an uploader, a text box...) and returns the set as a :class:`LoadedSet`,
or None while it waits for input (after saying what it waits for).  Reading goes through
:mod:`nsfw_core.calibration.labelsets` (files only under the labelled-sets folder, ZIPs under the
upload quota); errors are ``NSFWError`` and :func:`choose` shows them.  A new source is one function
and one entry of :data:`SOURCES`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable, Mapping

import streamlit as st

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import LABELS, LabelledItem
from nsfw_core.calibration import labelsets
from nsfw_core.context import Context
from nsfw_ui import production

SYNTHETIC_NOTE = ("Synthetic scores: made-up numbers with labels and no images, to try the adult side of the page "
                  "(ROC, PR, suggestions). Thresholds tuned on them must not be saved, so saving is off.")


@dataclasses.dataclass(frozen=True)
class LoadedSet:
    """A labelled set as read: its items, how to describe it, and its scores when they come with it."""

    kind: str
    items: list[LabelledItem]
    description: str
    pre: Mapping[str, dict[str, float]] | None  # precomputed scores by source (no model involved)
    note: str | None = None  # shown once the set is scored
    savable: bool = True  # thresholds tuned on it may be saved
    weights: Mapping[str, float] | None = None  # reviewed items: production images each stands for (issue 25)

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
class SetSource:
    """One choice of the page's "Labelled set" radio."""

    title: str
    load: Callable[[Context], LoadedSet | None]


def _load_demo(ctx: Context) -> LoadedSet:
    return LoadedSet("demo", labelsets.demo_set(), "demo set (data/demo)", None)


def _load_synthetic(ctx: Context) -> LoadedSet:
    pairs = labelsets.synthetic_set()
    return LoadedSet("synthetic", [it for it, _ in pairs], "synthetic scores (data/synthetic/scores.csv)",
                     {it.source: sc for it, sc in pairs}, note=SYNTHETIC_NOTE, savable=False)


def _load_reviewed(ctx: Context) -> LoadedSet | None:
    reviewed = ctx.review_queue.reviewed_items()
    if not reviewed:
        st.info("No reviewed items yet: decisions made on the Review queue page appear here, "
                "with the scores the API gave them (no re-scoring).")
        return None
    models = sorted({it.model for it in reviewed})
    description = f"reviewed items ({len(reviewed)}, scored by {', '.join(models)})"
    # each item under its own name (uploads all come from "upload"), weighted by 1 / the probability that queued it
    items = production.reviewed_labelled(reviewed)
    return LoadedSet("reviewed", [item for item, _ in items], description,
                     {item.source: it.scores for item, it in items},
                     weights={item.source: it.weight for item, it in items})


def _load_manifest(ctx: Context) -> LoadedSet | None:
    up = st.file_uploader("Manifest (CSV or JSON: path or URL, label)", type=["csv", "json"], key="cal_manifest")
    [base] = labelsets.server_roots(ctx.settings.labelset_config)
    st.caption(f"Its paths are URLs or files under `{base}` (relative to it); nothing else is read.")
    if up is None:
        st.info("Upload a manifest: rows of `path,label` (CSV with a header) or a JSON list of "
                f"`{{\"path\": …, \"label\": …}}`. Labels: {', '.join(LABELS)}.")
        return None
    fmt = Path(up.name).suffix.lstrip(".").lower() or "csv"
    return LoadedSet("manifest", labelsets.parse_manifest(up.getvalue(), fmt, base_dir=base, confine=base,
                                                          where=f"the labelled-sets folder {base}"),
                     f"manifest {up.name}", None)


def _load_folder(ctx: Context) -> LoadedSet | None:
    path = st.text_input("Folder (one sub-folder per label, or holding manifest.csv/json) or manifest file",
                         key="cal_folder")
    if not path.strip():
        roots = labelsets.server_roots(ctx.settings.labelset_config)
        st.info("Type a path on the server, under " + " or ".join(f"`{r}`" for r in roots) + ": a folder with "
                f"sub-folders named after the labels ({', '.join(LABELS)}), a folder with a manifest, or a "
                "manifest file.")
        return None
    config = ctx.settings.labelset_config
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


SOURCES: dict[str, SetSource] = {
    "demo": SetSource("Demo set (benign only)", _load_demo),
    "reviewed": SetSource("Reviewed items (review queue)", _load_reviewed),
    "synthetic": SetSource("Synthetic scores (no images)", _load_synthetic),
    "manifest": SetSource("Upload a CSV/JSON manifest", _load_manifest),
    "folder": SetSource("Folder on the server", _load_folder),
    "zip": SetSource("Upload a ZIP", _load_zip),
}


def load_set(ctx: Context, kind: str) -> LoadedSet | None:
    """The set of source ``kind``; None while waiting for input (the source says what it waits for)."""
    if kind not in SOURCES:
        raise ValueError(kind)
    return SOURCES[kind].load(ctx)


def choose(ctx: Context) -> LoadedSet | None:
    """The source radio and the chosen source's widgets; the set, or None (after saying why) when there is none yet."""
    kind = st.radio("Labelled set", list(SOURCES), format_func=lambda k: SOURCES[k].title, horizontal=True,
                    key="cal_source")
    try:
        return load_set(ctx, kind)
    except NSFWError as exc:
        st.error(f"Cannot read the set: {exc.message}")
        return None
