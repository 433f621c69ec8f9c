"""Classify page: image URLs, uploads or a camera snapshot -> scores and a verdict each.

Everything goes through ``nsfw_core`` (the SSRF-safe fetcher, the decoder with
its limits, the process-wide model, the thresholds file), so what this page
shows is what the API answers for the same image.  Results are kept in
``st.session_state`` so that revealing a blurred preview does not classify
again; verdicts are worked out at display time from the thresholds in force.

Widget keys: ``camera_on`` (toggle), form ``classify_form`` with ``urls``
(text area), ``uploads`` (file uploader), ``camera`` (camera input, only when
``camera_on``), ``model_name`` (selectbox) and ``classify`` (submit button);
per result ``reveal_<i>`` (toggle, adult and needs-review images only);
``download_csv`` and ``download_json`` under the summary table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run directly (AppTest, `streamlit run pages/classify.py`)
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402
from PIL import Image  # noqa: E402

from nsfw_core import pipeline  # noqa: E402
from nsfw_core.errors import NSFWError  # noqa: E402
from nsfw_core.settings import CLASS_NAMES, MODEL_NAMES  # noqa: E402
from nsfw_core.verdict import SAFE  # noqa: E402
from pages import common  # noqa: E402

UPLOAD_TYPES = ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"]
RESULTS_KEY = "classify_results"
REVEAL_PREFIX = "reveal_"
PREVIEW_SIZE = 384
VERDICT_COLORS = {"adult": "red", "unknown": "orange", "safe": "green"}
EXAMPLE_URL = "https://example.com/image.jpg"
_MARKDOWN_SPECIAL = set("\\`*_{}[]()<>#+-.!|~:$&")


def _md_escape(text: str) -> str:
    """User text (a URL, a file name) shown literally inside markdown."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


# ---------------------------------------------------------------- inputs


def _collect_inputs(urls_text: str, uploads: Any, camera: Any) -> list[dict[str, Any]]:
    """The submitted inputs in order: URLs (one per line, # starts a comment), uploads, the snapshot."""
    items: list[dict[str, Any]] = []
    for line in (urls_text or "").splitlines():
        url = line.strip()
        if url and not url.startswith("#"):
            items.append({"kind": "url", "name": url, "value": url, "mime": None})
    for f in uploads or []:
        items.append({"kind": "upload", "name": f.name, "value": f.getvalue(), "mime": f.type})
    if camera is not None:
        items.append({"kind": "camera", "name": camera.name or "camera.jpg", "value": camera.getvalue(),
                      "mime": camera.type or "image/jpeg"})
    return items


def _classify(items: list[dict[str, Any]], model_name: str, settings: Any) -> dict[str, Any]:
    """Classify the inputs in batches through the core; previews decoded by the same decoder."""
    model = common.model(model_name)
    total = len(items)
    sources = [str(i) for i in range(total)]
    loaded: dict[str, bytes] = {}
    load = common.input_loader({s: item["value"] for s, item in zip(sources, items)}, keep=loaded)
    bar = st.progress(0.0, text=f"Classifying {total} image{'s' if total != 1 else ''}…")
    counts = {"loaded": 0, "classified": 0}

    def update(text: str) -> None:
        bar.progress(min(1.0, (counts["loaded"] + counts["classified"]) / (2 * total)), text=text)

    def loader(source: str, s: Any) -> bytes:
        try:
            return load(source, s)
        finally:
            counts["loaded"] += 1
            update(f"Loaded {counts['loaded']} of {total}…")

    def progress(n: int) -> None:
        counts["classified"] += n
        update(f"Classified {counts['classified']} of {total}")

    results = pipeline.classify_sources(model, sources, settings, batch_size=settings.max_batch,
                                        loader=loader, progress=progress)
    bar.empty()

    rows = []
    for source, item, result in zip(sources, items, results):
        preview = hidden = None
        if result.ok:
            try:
                preview = Image.fromarray(pipeline.decode_for(model, loaded[source], settings))
                preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
                hidden = common.blurred(preview)
            except NSFWError:  # decoded once already for the model; should not happen
                preview = hidden = None
        rows.append({
            "source": item["name"],
            "kind": item["kind"],
            "scores": result.scores,
            "error": result.error.to_dict() if result.error is not None else None,
            "ms": round(result.seconds * 1000.0, 1),
            "sha256": result.sha256,
            "preview": preview,
            "blurred": hidden,
        })
    return {"model": model.name, "rows": rows}


# ---------------------------------------------------------------- output


def _thresholds_caption(active: Any) -> str:
    t = active.thresholds
    where = "defaults from the settings"
    if active.source == "file":
        saved_at = active.saved.get("saved_at")
        model = active.saved.get("model")
        where = "calibrated" + (f" for {model}" if model else "") + (f", saved {saved_at}" if saved_at else "")
    return (f"Active thresholds ({where}): **definitely adult** if {' + '.join(t.adult_classes)} ≥ {t.adult:.2f}; "
            f"otherwise **definitely safe** if {' + '.join(t.safe_classes)} ≥ {t.safe:.2f}; "
            f"otherwise **needs review**.")


def _summary(rows: list[dict[str, Any]], thresholds: Any) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The summary table and the same results as JSON-able records."""
    table, records = [], []
    for row in rows:
        scores, error = row["scores"], row["error"]
        entry: dict[str, Any] = {"source": row["source"]}
        record: dict[str, Any] = {"source": row["source"], "kind": row["kind"]}
        if scores is not None:
            verdict = thresholds.decide(scores)
            adult, safe = thresholds.adult_score(scores), thresholds.safe_score(scores)
            entry.update({"verdict": common.VERDICT_LABELS[verdict], **scores,
                          "adult score": adult, "safe score": safe, "ms": row["ms"], "error": None})
            record.update({"verdict": verdict, "verdict_label": common.VERDICT_LABELS[verdict],
                           "scores": scores, "adult_score": adult, "safe_score": safe,
                           "ms": row["ms"], "sha256": row["sha256"]})
        else:
            entry.update({"verdict": None, **{c: None for c in CLASS_NAMES}, "adult score": None,
                          "safe score": None, "ms": row["ms"], "error": f"{error['code']}: {error['message']}"})
            record.update({"error": error, "ms": row["ms"]})
        table.append(entry)
        records.append(record)
    columns = ["source", "verdict", *CLASS_NAMES, "adult score", "safe score", "ms", "error"]
    return pd.DataFrame(table, columns=columns), records


def _show_result(i: int, row: dict[str, Any], thresholds: Any) -> None:
    with st.container(border=True):
        st.markdown(f"**{i + 1}. {_md_escape(row['source'])}**")
        if row["error"] is not None:
            st.error(f"{row['error']['code']}: {row['error']['message']}")
            return
        scores = row["scores"]
        verdict = thresholds.decide(scores)
        left, right = st.columns([1, 2])
        with left:
            if row["preview"] is None:
                st.info("No preview.")
            else:
                revealed = verdict == SAFE or st.toggle(
                    "Reveal", key=f"{REVEAL_PREFIX}{i}",
                    help="The preview is blurred because the image may be adult content.")
                st.image(row["preview"] if revealed else row["blurred"], width="stretch",
                         alt=f"{'preview' if revealed else 'blurred preview'} of {row['source']}")
        with right:
            st.markdown(f":{VERDICT_COLORS[verdict]}[**{common.VERDICT_LABELS[verdict]}**] · "
                        f"adult score {thresholds.adult_score(scores):.4f} · "
                        f"safe score {thresholds.safe_score(scores):.4f} · {row['ms']:.0f} ms")
            st.altair_chart(common.scores_chart(scores, thresholds), width="stretch")
            st.caption(common.format_scores(scores))


def _show_api(settings: Any, urls_text: str, uploads: Any, camera: Any, model_name: str) -> None:
    with st.expander("Call the API"):
        headers = st.context.headers
        base = common.api_base_url(st.context.url, headers.get("host") if headers else None, settings.port)
        urls = [item["name"] for item in _collect_inputs(urls_text, None, None)]
        files = [(f.name, f.type) for f in (uploads or [])]
        if camera is not None:
            files.append((camera.name or "camera.jpg", camera.type or "image/jpeg"))
        if not urls and not files:
            st.caption("Example (enter URLs or upload images above to get the commands for them):")
            urls, files = [EXAMPLE_URL], [("image.jpg", "image/jpeg")]
        st.code(common.curl_commands(base, urls, files, api_key=bool(settings.api_keys)), language="bash")
        if model_name != settings.model:
            st.caption(f"The API answers with the server's model, {settings.model} (NSFW_MODEL), not {model_name}.")
        if settings.api_keys:
            st.caption("This server requires an API key: set `NSFW_API_KEY` before running the commands.")


# ---------------------------------------------------------------- the page


def page() -> None:
    settings = common.settings()
    st.title("Classify images")
    active = common.threshold_store().current()
    if active.warning:
        st.warning(active.warning)
    st.markdown(_thresholds_caption(active))

    camera_on = st.toggle("Use the camera", key="camera_on",
                          help="Take a snapshot with this device's camera (the browser asks for permission).")
    with st.form("classify_form"):
        urls_text = st.text_area("Image URLs, one per line", key="urls", height=110,
                                 placeholder=EXAMPLE_URL)
        uploads = st.file_uploader("Or drop image files", type=UPLOAD_TYPES, accept_multiple_files=True,
                                   key="uploads")
        camera = st.camera_input("Snapshot", key="camera") if camera_on else None
        model_name = st.selectbox("Model", MODEL_NAMES, index=MODEL_NAMES.index(settings.model), key="model_name")
        submitted = st.form_submit_button("Classify", type="primary", key="classify")

    if submitted:
        items = _collect_inputs(urls_text, uploads, camera)
        if not items:
            st.warning("Enter at least one image URL or add an image first.")
        else:
            if len(items) > settings.max_batch_items:
                st.warning(f"Only the first {settings.max_batch_items} of {len(items)} images are classified "
                           f"(NSFW_MAX_BATCH_ITEMS).")
                items = items[:settings.max_batch_items]
            try:
                state = _classify(items, model_name, settings)
            except NSFWError as exc:  # the model could not be loaded
                st.error(f"{exc.code}: {exc.message}")
            else:
                for key in [k for k in st.session_state if str(k).startswith(REVEAL_PREFIX)]:
                    del st.session_state[key]
                st.session_state[RESULTS_KEY] = state

    state = st.session_state.get(RESULTS_KEY)
    if state:
        thresholds = active.thresholds
        rows = state["rows"]
        failed = sum(row["error"] is not None for row in rows)
        st.subheader("Results")
        st.caption(f"{len(rows)} image{'s' if len(rows) != 1 else ''} with {state['model']}"
                   + (f", {failed} failed" if failed else ""))
        for i, row in enumerate(rows):
            _show_result(i, row, thresholds)

        st.subheader("Summary")
        table, records = _summary(rows, thresholds)
        number = st.column_config.NumberColumn(format="%.4f")
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={**{c: number for c in (*CLASS_NAMES, "adult score", "safe score")},
                                    "ms": st.column_config.NumberColumn(format="%.0f")})
        c1, c2, _ = st.columns([1, 1, 4])
        with c1:
            st.download_button("Download CSV", table.to_csv(index=False).encode(), file_name="nsfw-results.csv",
                               mime="text/csv", key="download_csv", on_click="ignore")
        with c2:
            st.download_button("Download JSON", (json.dumps(records, indent=2) + "\n").encode(),
                               file_name="nsfw-results.json", mime="application/json", key="download_json",
                               on_click="ignore")

    _show_api(settings, urls_text, uploads, camera, model_name)


page()
