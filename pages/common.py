"""Cached loaders and small helpers shared by the pages (not a page itself).

The model comes from ``nsfw_core.model.get_model``, the same process-wide copy
that the API uses; ``st.cache_resource`` only saves the lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st
from PIL import Image, ImageFilter

from nsfw_core.model import Model, load_for
from nsfw_core.settings import load_settings
from nsfw_core.verdict import ThresholdStore

if TYPE_CHECKING:
    from nsfw_core.scorecache import ScoreCache

BLUR_RADIUS = 28
VERDICT_LABELS = {"adult": "definitely adult", "unknown": "needs review", "safe": "definitely safe"}


@st.cache_resource
def settings() -> Any:
    return load_settings()


@st.cache_resource(show_spinner="Loading model…")
def model(name: str | None = None) -> Model:
    s = settings()
    return load_for(s, name)


@st.cache_resource
def threshold_store() -> ThresholdStore:
    return ThresholdStore.from_settings(settings())


def blurred(image: np.ndarray | Image.Image, radius: int = BLUR_RADIUS) -> Image.Image:
    """A strongly blurred copy for previews of adult or unreviewed images."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    img = img.convert("RGB")
    img.thumbnail((384, 384))
    return img.filter(ImageFilter.GaussianBlur(radius))


# --------------------------------------------------------------------------
# Helpers of the classify page (pure functions, importable by tests).

def upload_bytes(data: bytes, settings: Any) -> bytes:
    """Bytes of an uploaded file under the service's byte cap (the API applies the same cap)."""
    from nsfw_core.errors import TooLarge

    if len(data) > settings.max_bytes:
        raise TooLarge(f"the upload is {len(data)} bytes; the limit is {settings.max_bytes}",
                       limit=settings.max_bytes)
    return data


def url_bytes(url: str, settings: Any) -> bytes:
    """Bytes behind a URL typed by the user, through the core's SSRF-safe fetcher.

    Only URLs reach the fetcher: a line that is not a URL is refused instead of
    being read as a local path (``pipeline.load_bytes`` would read files).
    """
    from nsfw_core.errors import InvalidURL
    from nsfw_core.pipeline import is_url, load_bytes

    if not is_url(url):
        raise InvalidURL(f"not a URL: {url[:200]!r} (only http and https URLs are fetched)")
    return load_bytes(url, settings)


def input_loader(items: Any, keep: dict[str, bytes] | None = None) -> Any:
    """A ``loader(source, settings)`` for ``pipeline.classify_sources`` over page inputs.

    ``items`` maps a source key to either the uploaded ``bytes`` or a URL ``str``.
    When ``keep`` is given, the loaded bytes are stored in it by key (for previews).
    """
    def load(source: str, settings: Any) -> bytes:
        value = items[source]
        data = upload_bytes(value, settings) if isinstance(value, (bytes, bytearray)) else url_bytes(value, settings)
        if keep is not None:
            keep[source] = bytes(data)
        return bytes(data)

    return load


def api_base_url(url: str | None, host: str | None, default_port: int = 8080) -> str:
    """``scheme://host[:port]`` of this server as the browser sees it (for curl examples)."""
    from urllib.parse import urlsplit

    if url:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    if host and "/" not in host and " " not in host:
        return f"http://{host}"
    return f"http://localhost:{default_port}"


def curl_commands(base_url: str, urls: Any = (), uploads: Any = (), *, api_key: bool = False) -> str:
    """curl commands calling ``/predict`` for the given URLs and uploads ((filename, mime) pairs)."""
    import shlex
    from urllib.parse import quote

    def q(text: str) -> str:  # always single-quoted, like the examples in the docs
        return "'" + text.replace("'", "'\"'\"'") + "'"

    auth = ' -H "Authorization: Bearer $NSFW_API_KEY"' if api_key else ""
    lines = []
    for url in urls:
        lines.append(f"curl -XPOST{auth} {q(base_url + '/predict?url=' + quote(url, safe=''))}")
    for name, mime in uploads:
        lines.append(f"curl -XPOST{auth} --data-binary {shlex.quote('@' + name)} "
                     f"-H {q('Content-Type: ' + (mime or 'application/octet-stream'))} {q(base_url + '/predict')}")
    return "\n".join(lines)


def format_scores(scores: dict[str, float], digits: int = 4) -> str:
    """``drawings 0.0533 · hentai 0.0006 · …``: the scores as text (the chart's text alternative)."""
    return " · ".join(f"{name} {value:.{digits}f}" for name, value in scores.items())


def scores_chart(scores: dict[str, float], thresholds: Any = None) -> Any:
    """Horizontal Altair bar chart of the five class scores with their values as labels."""
    import altair as alt
    import pandas as pd

    adult = set(getattr(thresholds, "adult_classes", ()))
    safe = set(getattr(thresholds, "safe_classes", ()))
    df = pd.DataFrame({
        "class": list(scores),
        "score": [float(v) for v in scores.values()],
        "counts toward": ["adult" if c in adult else "safe" if c in safe else "neither" for c in scores],
    })
    base = alt.Chart(df).encode(
        y=alt.Y("class:N", sort=list(scores), title=None),
        # Room right of 1.0 for the label of a bar that fills the scale.
        x=alt.X("score:Q", scale=alt.Scale(domain=[0, 1.15]), title=None,
                axis=alt.Axis(values=[0, 0.2, 0.4, 0.6, 0.8, 1.0], format=".1f")),
        tooltip=["class", alt.Tooltip("score:Q", format=".6f"), "counts toward"],
    )
    bars = base.mark_bar().encode(color=alt.Color(
        "counts toward:N",
        scale=alt.Scale(domain=["adult", "safe", "neither"], range=["#e4572e", "#29a36a", "#9aa0a6"]),
        legend=None))
    labels = base.mark_text(align="left", dx=4).encode(text=alt.Text("score:Q", format=".4f"))
    return (bars + labels).properties(height=150)


@st.cache_resource
def score_cache() -> "ScoreCache":
    """The on-disk score cache (``<data_dir>/score-cache.sqlite``), one per process."""
    from nsfw_core.scorecache import ScoreCache

    return ScoreCache.from_settings(settings())


def data_uri(image: Image.Image, size: int = 128, quality: int = 80) -> str:
    """A small JPEG ``data:`` URI of an image (for ``st.column_config.ImageColumn``)."""
    import base64
    import io

    img = image.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------
# Review queue (the review page; other pages may queue items through it too).

@st.cache_resource(show_spinner=False)
def review_queue() -> Any:
    """The process-wide :class:`nsfw_core.review.ReviewQueue` from the settings (created and migrated once)."""
    from nsfw_core.review import ReviewQueue

    return ReviewQueue.from_settings(settings())
