"""Classify page: image URLs, uploads or a camera snapshot -> scores and a verdict each; a video's timeline.

Everything goes through the process context (``nsfw_ui.state.context``): the
SSRF-safe fetcher, the decoder with its limits, the process-wide model and the
thresholds in force, so what this page shows is what the API answers for the
same image.  Results are kept in ``st.session_state`` so that revealing a
blurred preview does not classify again; verdicts are re-judged at display time
under the thresholds in force (``Classification.rejudged``: an adapter's own when one
judged the result, as the API does).

Widget keys: ``camera_on`` (toggle), form ``classify_form`` with ``urls``
(text area), ``uploads`` (file uploader), ``camera`` (camera input, only when
``camera_on``), ``model_name`` (selectbox) and ``classify`` (submit button);
per result ``reveal_<i>`` (toggle, adult and needs-review images only);
``download_csv`` and ``download_json`` under the summary table.
"""

from __future__ import annotations

import json
from typing import Any, Sequence, TypedDict

import pandas as pd
import streamlit as st
from PIL import Image

from nsfw_core.access import Permission
from nsfw_core.base import spreadsheet
from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import CLASS_NAMES, SAFE
from nsfw_core.base.settings import MODEL_NAMES
from nsfw_core.base.verdict import ActiveThresholds, Thresholds
from nsfw_core.classify import Classification, Outcome
from nsfw_core.context import Context
from nsfw_core.images.frames import FrameRef
from nsfw_core.inference.model import Model
from nsfw_ui import auth, charts, inputs, state, timeline, widgets
from nsfw_ui.inputs import Input, UploadedFile

UPLOAD_TYPES = ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "mp4", "mov", "webm", "mkv"]
RESULTS_KEY = "classify_results"
REVEAL_PREFIX = "reveal_"
PREVIEW_SIZE = 384
FRAME_THUMB_SIZE = 160  # an animation's frames in the strip, each fitted in a square of this side
FRAMES_PER_ROW = 8
EXAMPLE_URL = "https://example.com/image.jpg"
SCORE_COLUMNS = (*CLASS_NAMES, "adult score", "safe score")


class Row(TypedDict):
    """One input's result as kept in the session (judged again at display time)."""

    source: str
    kind: str
    classification: Classification | None
    error: dict[str, Any] | None  # {"code", "message"}
    ms: float
    preview: Image.Image | None
    blurred: Image.Image | None
    frames: list[FrameThumb] | None  # an animation's sampled frames, for the strip
    deciding: list[timeline.DecidingFrame] | None  # a video's segments' deciding frames


class FrameThumb(TypedDict):
    index: int
    time_ms: int
    image: Image.Image
    blurred: Image.Image


class Results(TypedDict):
    model: str
    rows: list[Row]


class Form(TypedDict):
    urls_text: str
    uploads: list[UploadedFile]
    camera: UploadedFile | None
    model_name: str
    submitted: bool


# ---------------------------------------------------------------- classifying


class _Progress:
    """The progress bar: loading and classifying each count for half."""

    def __init__(self, total: int) -> None:
        self.total, self.loaded, self.classified = total, 0, 0
        self.bar = st.progress(0.0, text=f"Classifying {total} image{'s' if total != 1 else ''}…")

    def _update(self, text: str) -> None:
        self.bar.progress(min(1.0, (self.loaded + self.classified) / (2 * self.total)), text=text)

    def on_loaded(self) -> None:
        self.loaded += 1
        self._update(f"Loaded {self.loaded} of {self.total}…")

    def on_classified(self, n: int) -> None:
        self.classified += n
        self._update(f"Classified {self.classified} of {self.total}")


def _classify(ctx: Context, items: Sequence[Input], model_name: str) -> Results:
    """Classify the inputs in batches through the core; previews decoded by the same decoder."""
    model = state.model(model_name)
    sources = [str(i) for i in range(len(items))]
    loaded: dict[str, bytes] = {}
    load = inputs.input_loader(ctx, {s: item.value for s, item in zip(sources, items, strict=True)}, keep=loaded)
    progress = _Progress(len(items))

    def loader(source: str) -> bytes:
        try:
            return load(source)
        finally:
            progress.on_loaded()

    outcomes = ctx.classifier.sources(sources, model_name=model_name, loader=loader,
                                batch_size=ctx.serving.max_batch, progress=progress.on_classified)
    progress.bar.empty()
    rows = [_row(ctx, model, item, outcome, loaded.get(outcome.source))
            for item, outcome in zip(items, outcomes, strict=True)]
    return {"model": model.name, "rows": rows}


def _frame_strip(ctx: Context, c: Classification, data: bytes) -> list[FrameThumb] | None:
    """Thumbnails of an animation's classified frames (blurred copies too), in order."""
    if not c.frames:
        return None
    refs = tuple(FrameRef(f.index, f.time_ms) for f in c.frames)
    try:
        thumbs = ctx.decoder.thumbnails(data, refs, FRAME_THUMB_SIZE)
    except NSFWError:  # decoded once already for the model; should not happen
        return None
    return [{"index": r.index, "time_ms": r.time_ms, "image": Image.fromarray(t),
             "blurred": widgets.blurred(Image.fromarray(t))} for r, t in zip(refs, thumbs, strict=True)]


def _row(ctx: Context, model: Model, item: Input, outcome: Outcome, data: bytes | None) -> Row:
    """The session's record of one input: its outcome and, when it was classified, its previews."""
    preview = hidden = None
    strip = None
    deciding = None
    video = outcome.classification is not None and outcome.classification.video is not None
    if video and data is not None and outcome.classification is not None:
        deciding = timeline.deciding_frames(ctx, model, data, outcome.classification)
    elif outcome.ok and data is not None:
        try:
            preview = Image.fromarray(ctx.decoder.decode_for(model, data))
            preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
            hidden = widgets.blurred(preview)
        except NSFWError:  # decoded once already for the model; should not happen
            preview = hidden = None
        if outcome.classification is not None:
            strip = _frame_strip(ctx, outcome.classification, data)
    return {
        "source": item.name,
        "kind": item.kind,
        "classification": outcome.classification,
        "error": outcome.error.to_dict() if outcome.error is not None else None,
        "ms": round(outcome.seconds * 1000.0, 1),
        "preview": preview,
        "blurred": hidden,
        "frames": strip,
        "deciding": deciding,
    }


# ---------------------------------------------------------------- output


def _thresholds_caption(active: ActiveThresholds) -> str:
    t = active.thresholds
    where = "defaults from the settings"
    if active.source != "defaults":
        saved_at = active.saved.get("saved_at")
        model = active.saved.get("model")
        where = ("calibrated" + (f" for {model}" if model else "")
                 + (f", version {active.version}" if active.version is not None else "")
                 + (f", saved {saved_at}" if saved_at else ""))
    return (f"Active thresholds ({where}): **definitely adult** if {' + '.join(t.adult_classes)} ≥ {t.adult:.2f}; "
            f"otherwise **definitely safe** if {' + '.join(t.safe_classes)} ≥ {t.safe:.2f}; "
            f"otherwise **needs review**.")


def _summary(rows: Sequence[Row], thresholds: Thresholds) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The summary table and the same results as JSON-able records, judged under ``thresholds``."""
    table, records = [], []
    for row in rows:
        entry: dict[str, Any] = {"source": row["source"]}
        record: dict[str, Any] = {"source": row["source"], "kind": row["kind"]}
        if row["classification"] is not None:
            c = row["classification"].rejudged(thresholds)
            label = widgets.VERDICT_LABELS[c.verdict]
            entry.update({"verdict": label, **c.scores, "adult score": c.adult_score, "safe score": c.safe_score,
                          "ms": row["ms"], "error": None})
            record.update({"verdict": c.verdict, "verdict_label": label, "scores": c.scores,
                           "adult_score": c.adult_score, "safe_score": c.safe_score, "ms": row["ms"],
                           "sha256": c.sha256})
        else:
            error = row["error"] or {}
            entry.update({"verdict": None, **{c: None for c in CLASS_NAMES}, "adult score": None,
                          "safe score": None, "ms": row["ms"], "error": f"{error['code']}: {error['message']}"})
            record.update({"error": error, "ms": row["ms"]})
        table.append(entry)
        records.append(record)
    columns = ["source", "verdict", *CLASS_NAMES, "adult score", "safe score", "ms", "error"]
    return pd.DataFrame(table, columns=columns), records


def results_csv(table: pd.DataFrame) -> bytes:
    """The summary table as CSV, a source such as ``=HYPERLINK(...)`` written as text (CSV injection)."""
    return bytes(table.map(spreadsheet.safe_cell).to_csv(index=False).encode())


def _show_preview(i: int, row: Row, verdict: str) -> bool:
    """The preview, blurred behind a "Reveal" toggle unless the image is definitely safe; whether it is shown."""
    preview, hidden = row["preview"], row["blurred"]  # both set, or neither
    if preview is None or hidden is None:
        st.info("No preview.")
        return False
    revealed = verdict == SAFE or st.toggle(
        "Reveal", key=f"{REVEAL_PREFIX}{i}",
        help="The preview is blurred because the image may be adult content.")
    st.image(preview if revealed else hidden, width="stretch",
             alt=f"{'preview' if revealed else 'blurred preview'} of {row['source']}")
    return revealed


def _show_frames(row: Row, deciding: int | None, revealed: bool) -> None:
    """An animation's classified frames as a strip (blurred like the preview), the deciding one marked."""
    strip = row["frames"]
    if not strip:
        return
    st.caption(f"{len(strip)} frames classified; the image gets its worst frame's verdict (marked ◆).")
    columns = st.columns(min(len(strip), FRAMES_PER_ROW))
    for k, frame in enumerate(strip):
        mark = "◆ " if frame["index"] == deciding else ""
        columns[k % FRAMES_PER_ROW].image(
            frame["image"] if revealed else frame["blurred"], width="stretch",
            caption=f"{mark}frame {frame['index']} · {frame['time_ms']} ms")


def _show_video(i: int, row: Row, c: Classification) -> bool:
    """A video's facts, and the toggle that reveals its deciding frames unless it is definitely safe."""
    assert c.video is not None
    st.caption(f"{c.video.container.upper()} · {c.video.codec} · {c.video.width}x{c.video.height} · "
               f"{c.video.duration_ms / 1000:.1f} s · {len(c.frames or ())} frames judged")
    return c.verdict == SAFE or st.toggle("Reveal", key=f"{REVEAL_PREFIX}{i}",
                                          help="The frames are blurred because the video may be adult content.")


def _show_timeline(row: Row, c: Classification, revealed: bool) -> None:
    """The scores over time with the segments shaded, and each segment's deciding frame (blurred until revealed)."""
    st.altair_chart(timeline.timeline_chart(c), width="stretch")
    segments = c.segments or ()
    st.caption(f"{len(segments)} segment{'s' if len(segments) != 1 else ''}; the video gets its worst frame's "
               f"verdict (at {(c.deciding_time_ms or 0) / 1000:.1f} s). Each segment's deciding frame:")
    shown = row.get("deciding") or []
    if shown:
        columns = st.columns(min(len(shown), FRAMES_PER_ROW))
        for k, frame in enumerate(shown):
            columns[k % FRAMES_PER_ROW].image(
                frame["image"] if revealed else frame["blurred"], width="stretch",
                caption=f"{widgets.VERDICT_LABELS[frame['verdict']]} · {frame['time_ms'] / 1000:.1f} s")


def _show_result(i: int, row: Row, thresholds: Thresholds) -> None:
    with st.container(border=True):
        st.markdown(f"**{i + 1}. {widgets.md_escape(row['source'])}**")
        if row["classification"] is None:
            error = row["error"] or {}
            st.error(f"{error['code']}: {error['message']}")
            return
        c = row["classification"].rejudged(thresholds)
        left, right = st.columns([1, 2])
        with left:
            revealed = _show_video(i, row, c) if c.video is not None else _show_preview(i, row, c.verdict)
        with right:
            st.markdown(f":{widgets.VERDICT_TEXT_COLORS[c.verdict]}[**{widgets.VERDICT_LABELS[c.verdict]}**] · "
                        f"adult score {c.adult_score:.4f} · safe score {c.safe_score:.4f} · {row['ms']:.0f} ms")
            st.altair_chart(charts.scores_chart(c.scores, thresholds), width="stretch")
            st.caption(widgets.format_scores(c.scores))
            if c.adapter is not None:
                st.caption(f"Judged by the adapter in force, {widgets.md_escape(c.adapter.name)} version "
                           f"{c.adapter.version}: the adult score is its probability, with its own thresholds "
                           f"(definitely adult ≥ {c.thresholds.adult:.2f}, definitely safe ≥ {c.thresholds.safe:.2f}).")
        if c.video is not None:
            _show_timeline(row, c, revealed)
        else:
            _show_frames(row, c.deciding_frame, revealed)


def _show_results(results: Results, thresholds: Thresholds) -> None:
    rows = results["rows"]
    failed = sum(row["error"] is not None for row in rows)
    st.subheader("Results")
    st.caption(f"{len(rows)} image{'s' if len(rows) != 1 else ''} with {results['model']}"
               + (f", {failed} failed" if failed else ""))
    for i, row in enumerate(rows):
        _show_result(i, row, thresholds)


def _show_summary(rows: Sequence[Row], thresholds: Thresholds) -> None:
    st.subheader("Summary")
    table, records = _summary(rows, thresholds)
    number = st.column_config.NumberColumn(format="%.4f")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={**{c: number for c in SCORE_COLUMNS},
                                "ms": st.column_config.NumberColumn(format="%.0f")})
    c1, c2, _ = st.columns([1, 1, 4])
    with c1:
        st.download_button("Download CSV", results_csv(table), file_name="nsfw-results.csv",
                           mime="text/csv", key="download_csv", on_click="ignore")
    with c2:
        st.download_button("Download JSON", (json.dumps(records, indent=2) + "\n").encode(),
                           file_name="nsfw-results.json", mime="application/json", key="download_json",
                           on_click="ignore")


def _show_api(ctx: Context, form: Form) -> None:
    settings, serving = ctx.settings, ctx.serving
    with st.expander("Call the API"):
        headers = st.context.headers
        base = widgets.api_base_url(st.context.url, headers.get("host") if headers else None, settings.port)
        urls = inputs.url_lines(form["urls_text"])
        files: list[tuple[str, str | None]] = [(f.name, f.type) for f in form["uploads"]]
        camera = form["camera"]
        if camera is not None:
            files.append((camera.name or inputs.CAMERA_NAME, camera.type or inputs.CAMERA_MIME))
        if not urls and not files:
            st.caption("Example (enter URLs or upload images above to get the commands for them):")
            urls, files = [EXAMPLE_URL], [("image.jpg", "image/jpeg")]
        st.code(widgets.curl_commands(base, urls, files, api_key=bool(serving.api_keys)), language="bash")
        if form["model_name"] != settings.model:
            st.caption(f"The API answers with the server's model, {settings.model} (NSFW_MODEL), "
                       f"not {form['model_name']}.")
        if serving.api_keys:
            st.caption("This server requires an API key: set `NSFW_API_KEY` before running the commands.")


# ---------------------------------------------------------------- input


def _form(ctx: Context) -> Form:
    camera_on = st.toggle("Use the camera", key="camera_on",
                          help="Take a snapshot with this device's camera (the browser asks for permission).")
    with st.form("classify_form"):
        urls_text = st.text_area("Image URLs, one per line", key="urls", height=110, placeholder=EXAMPLE_URL)
        uploads = st.file_uploader("Or drop image files", type=UPLOAD_TYPES, accept_multiple_files=True,
                                   key="uploads")
        camera = st.camera_input("Snapshot", key="camera") if camera_on else None
        model_name = st.selectbox("Model", MODEL_NAMES, index=MODEL_NAMES.index(ctx.settings.model),
                                  key="model_name")
        submitted = st.form_submit_button("Classify", type="primary", key="classify")
    return {"urls_text": urls_text, "uploads": list(uploads or []), "camera": camera,
            "model_name": str(model_name), "submitted": submitted}


def _submit(ctx: Context, form: Form) -> None:
    """Classify what was submitted; the results replace the session's previous ones."""
    items = inputs.collect_inputs(form["urls_text"], form["uploads"], form["camera"])
    if not items:
        st.warning("Enter at least one image URL or add an image first.")
        return
    limit = ctx.serving.max_batch_items
    if len(items) > limit:
        st.warning(f"Only the first {limit} of {len(items)} images are classified (NSFW_MAX_BATCH_ITEMS).")
        items = items[:limit]
    try:
        results = _classify(ctx, items, form["model_name"])
    except NSFWError as exc:  # the model could not be loaded
        st.error(f"{exc.code}: {exc.message}")
        return
    for key in [k for k in st.session_state if str(k).startswith(REVEAL_PREFIX)]:
        del st.session_state[key]
    st.session_state[RESULTS_KEY] = results


# ---------------------------------------------------------------- the page


def page() -> None:
    auth.require(Permission.CLASSIFY)
    ctx = state.context()
    st.title("Classify images")
    active = ctx.thresholds.current()
    if active.warning:
        st.warning(active.warning)
    st.markdown(_thresholds_caption(active))

    form = _form(ctx)
    if form["submitted"]:
        _submit(ctx, form)

    results: Results | None = st.session_state.get(RESULTS_KEY)
    if results:
        _show_results(results, active.thresholds)
        _show_summary(results["rows"], active.thresholds)

    _show_api(ctx, form)


page()
