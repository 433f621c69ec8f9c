"""bytes -> decoded RGB -> model input -> scores: the steps every front end shares.

The CLI, the pages and the API all go through these functions, so fetching,
decoding, the pixel and byte limits and preprocessing are the same
everywhere.  The API splits the work in two (``prepare`` in a worker thread,
the forward pass in the micro-batcher); the CLI and the pages use
:func:`classify_sources`, which batches by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import decode as _decode
from . import fetch as _fetch
from .errors import InvalidURL, NSFWError, TooLarge
from .fetch import is_url
from .model import Model, scores_dict
from .sandbox import Sandbox

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# JPEG draft decoding keeps the shorter side at least this many times the model's
# input. nsfwjs's align_corners resize point-samples the full image, so a
# smaller draft (which box-filters) moves borderline images: at 2x, house.jpg
# (1024x1536) lost 0.31 of its "drawings" probability against nsfwjs.
DRAFT_FACTOR = 4
# Most of NSFW_DECODE_PIXEL_BUDGET one expensive (isolated) decode may hold: a 50-megapixel PNG
# holding the whole budget made every cheap image wait for it (small PNG p50 1.9 s).
ISOLATED_SHARE = 0.75


@dataclasses.dataclass
class Result:
    """The outcome for one input: scores, or the error that stopped it."""

    source: str
    scores: dict[str, float] | None = None
    error: NSFWError | None = None
    seconds: float = 0.0
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.error is None:
            out["scores"] = self.scores
        else:
            out["error"] = self.error.to_dict()
        return out


def read_file(path: str | Path, settings: Any) -> bytes:
    """Read a local image file, applying the same byte cap as uploads."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > settings.max_bytes:
            raise TooLarge(f"{path} is {size} bytes; the limit is {settings.max_bytes}", limit=settings.max_bytes)
        return path.read_bytes()
    except OSError as exc:
        raise InvalidURL(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_bytes(source: str, settings: Any) -> bytes:
    """The bytes of a URL (through the safe fetcher) or of a local file."""
    if is_url(source):
        return _fetch.fetch(source, settings).content
    return read_file(source, settings)


class PixelBudget:
    """A weighted semaphore on pixels being decoded at once, so memory stays bounded.

    A 50-megapixel image needs several hundred MB while it is decoded; eight
    worker threads decoding such images together would need gigabytes.  Each
    decode holds its header's pixel count (capped at the budget, so one image
    always fits) until it is done; small images share the budget freely.
    """

    def __init__(self, pixels: int) -> None:
        self.capacity = pixels
        self.free = pixels
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, *, share: float = 1.0) -> Iterator[None]:
        """Hold ``pixels`` of the budget, capped at ``share`` of it (so one image always fits).

        Expensive images (the isolated lane) hold at most :data:`ISOLATED_SHARE`: whatever
        they decode, the rest stays free for cheap images, which never wait behind them.
        """
        need = max(1, min(pixels, int(self.capacity * share)))
        with self._cond:
            self._cond.wait_for(lambda: self.free >= need)
            self.free -= need
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


_budgets: dict[int, PixelBudget] = {}
_sandboxes: dict[tuple[int, float], Sandbox] = {}
_shared_lock = threading.Lock()


def pixel_budget(pixels: int) -> PixelBudget:
    """The process-wide budget of this size (shared by the API's workers and the pages)."""
    with _shared_lock:
        return _budgets.setdefault(pixels, PixelBudget(pixels))


def sandbox(settings: Any) -> Sandbox:
    """The process-wide isolated decode lane for these settings (shared by the API and the pages)."""
    key = (settings.decode_processes, settings.decode_timeout)
    with _shared_lock:
        if key not in _sandboxes:
            _sandboxes[key] = Sandbox(settings.decode_processes, settings.decode_timeout)
        return _sandboxes[key]


def _limits(model: Model, settings: Any) -> dict[str, Any]:
    return _decode_limits(settings, model.input_size * DRAFT_FACTOR if settings.jpeg_draft else None)


def _decode_limits(settings: Any, draft_size: int | None) -> dict[str, Any]:
    return {"max_pixels": settings.max_pixels, "max_scans": settings.max_jpeg_scans, "draft_size": draft_size}


def plan_for(model: Model, data: bytes, settings: Any) -> _decode.Plan:
    """Read the headers and apply every limit (413/415/422) before anything is decoded."""
    return _decode.plan(data, **_limits(model, settings))


def decode_for(model: Model, data: bytes, settings: Any) -> np.ndarray:
    """Decode with the configured limits (and JPEG draft at DRAFT_FACTOR x the model's input).

    See :func:`decode_preview`; :func:`prepare` feeds the model.
    """
    return decode_preview(data, settings, model.input_size * DRAFT_FACTOR if settings.jpeg_draft else None)


def decode_preview(data: bytes, settings: Any, draft_size: int | None) -> np.ndarray:
    """Decode for display, with the configured limits; JPEGs drafted to ``draft_size``.

    The header is read first (cheap, and it applies the limits); the decode then
    waits for its cost's share of ``NSFW_DECODE_PIXEL_BUDGET``.  An expensive image
    decodes in the isolated lane, whose answer is at most ``PREVIEW_SIDE`` pixels a side.
    """
    limits = _decode_limits(settings, draft_size)
    plan = _decode.plan(data, **limits)
    share = 1.0 if plan.cost.inline else ISOLATED_SHARE
    with pixel_budget(settings.decode_pixel_budget).hold(plan.cost.pixels, share=share):
        if plan.cost.inline:
            return _decode.decode(data, **limits)
        return sandbox(settings).decode(data, limits=limits, cost_pixels=plan.cost.pixels)


def prepare_inline(model: Model, data: bytes, plan: _decode.Plan, settings: Any) -> np.ndarray:
    """Decode a cheap image (``plan.cost.inline``) in this thread and preprocess it."""
    with pixel_budget(settings.decode_pixel_budget).hold(plan.cost.pixels):
        rgb = _decode.decode(data, **_limits(model, settings))
    return model.preprocess(rgb)


def prepare_isolated(model: Model, data: bytes, plan: _decode.Plan, settings: Any) -> np.ndarray:
    """Decode and preprocess an expensive image in the isolated lane, under NSFW_DECODE_TIMEOUT."""
    with pixel_budget(settings.decode_pixel_budget).hold(plan.cost.pixels, share=ISOLATED_SHARE):
        return sandbox(settings).prepare(data, size=model.input_size, limits=_limits(model, settings),
                                         cost_pixels=plan.cost.pixels)


def prepare(model: Model, data: bytes, settings: Any) -> np.ndarray:
    """bytes -> the (S, S, 3) float32 model input. Raises the core's typed errors."""
    plan = plan_for(model, data, settings)
    if plan.cost.inline:
        return prepare_inline(model, data, plan, settings)
    return prepare_isolated(model, data, plan, settings)


def iter_sources(inputs: Iterable[str]) -> list[str]:
    """Expand folders (recursively, image suffixes only, sorted); keep files and URLs as given."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if not is_url(item) and path.is_dir():
            out.extend(str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(item)
    return out


def classify_sources(
    model: Model,
    sources: Sequence[str],
    settings: Any,
    *,
    batch_size: int = 16,
    loader: Callable[[str, Any], bytes] = load_bytes,
    progress: Callable[[int], None] | None = None,
) -> list[Result]:
    """Classify paths or URLs in batches; one Result per source, in order, errors per item."""
    results: list[Result] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        prepared: list[tuple[Result, np.ndarray, float]] = []
        for source in chunk:
            t0 = time.perf_counter()
            result = Result(source)
            try:
                data = loader(source, settings)
                result.sha256 = hashlib.sha256(data).hexdigest()
                prepared.append((result, prepare(model, data, settings), t0))
            except NSFWError as exc:
                result.error = exc
                result.seconds = time.perf_counter() - t0
            results.append(result)
        if prepared:
            probs = model.predict(np.stack([p[1] for p in prepared]))
            now = time.perf_counter()
            for (result, _, t0), row in zip(prepared, probs):
                result.scores = scores_dict(row)
                result.seconds = now - t0
        if progress is not None:
            progress(len(chunk))
    return results
