"""Small display helpers of the pages: blurred previews, data URIs, texts and curl examples.

Pure functions (no Streamlit calls), so tests check them exactly.
"""

from __future__ import annotations

import base64
import io
import math
import shlex
from typing import Iterable
from urllib.parse import quote, urlsplit

import numpy as np
from PIL import Image, ImageFilter

from nsfw_core.base.labels import ADULT, SAFE, UNKNOWN

BLUR_RADIUS = 28
BLUR_SIDE = 384  # a blurred preview is at most this many pixels a side
VERDICT_LABELS = {ADULT: "definitely adult", UNKNOWN: "needs review", SAFE: "definitely safe"}
# Each verdict's colour, the same on every chart and page: hex for Altair, the nearest of Streamlit's
# markdown colour names (":red[...]") for text.
VERDICT_COLORS = {ADULT: "#d62728", UNKNOWN: "#ff7f0e", SAFE: "#2ca02c"}
VERDICT_TEXT_COLORS = {ADULT: "red", UNKNOWN: "orange", SAFE: "green"}
MARKDOWN_SPECIAL = frozenset("\\`*_{}[]()<>#+-.!|~:$&")


# ---------------------------------------------------------------- images


def blurred(image: np.ndarray | Image.Image, radius: int = BLUR_RADIUS) -> Image.Image:
    """A strongly blurred copy for previews of adult or unreviewed images."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    img = img.convert("RGB")
    img.thumbnail((BLUR_SIDE, BLUR_SIDE))
    return img.filter(ImageFilter.GaussianBlur(radius))


def data_uri(image: Image.Image, size: int = 128, quality: int = 80) -> str:
    """A small JPEG ``data:`` URI of an image (for ``st.column_config.ImageColumn``)."""
    img = image.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- texts


def md_escape(text: object) -> str:
    """User-supplied text (a URL, a file or reviewer name, an error message) shown literally in markdown."""
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in str(text))


def format_scores(scores: dict[str, float], digits: int = 4) -> str:
    """``drawings 0.0533 · hentai 0.0006 · …``: the scores as text (the chart's text alternative)."""
    return " · ".join(f"{name} {value:.{digits}f}" for name, value in scores.items())


def pct(x: float | None, digits: int = 1) -> str:
    """``12.3 %``; ``—`` for a share that is undefined (None or NaN)."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f} %"


# ---------------------------------------------------------------- calling the API


def api_base_url(url: str | None, host: str | None, default_port: int = 8080) -> str:
    """``scheme://host[:port]`` of this server as the browser sees it (for curl examples)."""
    if url:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    if host and "/" not in host and " " not in host:
        return f"http://{host}"
    return f"http://localhost:{default_port}"


def _single_quoted(text: str) -> str:
    """Always single-quoted, like the examples in the docs."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def curl_commands(base_url: str, urls: Iterable[str] = (), uploads: Iterable[tuple[str, str | None]] = (), *,
                  api_key: bool = False) -> str:
    """curl commands calling ``/predict`` for the given URLs and uploads ((filename, mime) pairs)."""
    q = _single_quoted
    auth = ' -H "Authorization: Bearer $NSFW_API_KEY"' if api_key else ""
    lines = []
    for url in urls:
        lines.append(f"curl -XPOST{auth} {q(base_url + '/predict?url=' + quote(url, safe=''))}")
    for name, mime in uploads:
        lines.append(f"curl -XPOST{auth} --data-binary {shlex.quote('@' + name)} "
                     f"-H {q('Content-Type: ' + (mime or 'application/octet-stream'))} {q(base_url + '/predict')}")
    return "\n".join(lines)
