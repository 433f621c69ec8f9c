"""Evidence heat-maps: where in an image the model found each class, from forward passes alone.

A LiteRT model gives no gradients, so the explanation asks the model itself, with a fixed number of
forward passes: **occlusion with the image's own dominant colour, scored in log-odds**.

* The image (the model input, S x S) is cut into a grid of ``rows`` x ``cols`` cells
  (``NSFW_EXPLAIN_GRID``, 8 x 8 by default: cells of 28 pixels at 224).
* For each cell the model scores the image with that cell painted over in the image's dominant colour,
  its per-channel median (:func:`reference`).  On a plain background that is the background itself:
  occluding a cell of background changes nothing, occluding a cell of the drawing removes that part of
  the drawing, as if it had never been drawn.  On a photograph it is its average tone, the classic grey
  square of occlusion made less foreign.
* A cell's evidence for class ``c`` is how much the class's **log-odds** fall when it is hidden,
  ``L_c(image) - L_c(occluded)``, with ``L_c = log p_c - log sum_{k != c} p_k``.  Positive: the cell holds
  evidence *for* the class; negative: evidence against it.  Units: nats of log-odds.
* The passes: one for the image itself, one per cell: :func:`passes`, 65 for 8 x 8.

Why this and not another forward-only method, at the same budget (``bench/explain.py``: the share of the
drawings map's positive evidence that lies over the drawing, for 54 drawings pasted on white, grey and
photographic backgrounds, the drawing covering 13 % of the image on average): the median colour put 62 %
of it there (70 % of the images above half), a blurred copy (sigma 16 px, as in "meaningful
perturbations") 42 % (37 %) and mid grey 43 % (46 %): blurring a drawing's lines leaves a smooth blob,
which the model reads as *more* drawing-like, and a grey square on a page is a new shape.  Windows of
2 x 2 cells sliding by one cell (82 passes) spread each effect over the neighbouring cells (median
colour 50 %).  LIME and random masks (RISE) need hundreds of passes for a stable map, beyond this
budget; they were not adopted.

**Saturation.**  The model answers softmax probabilities (float32).  Next to a photograph a drawing may
score drawings 0.0003 and neutral 0.9997: hiding a cell then moves both probabilities by less than
1e-4, nothing a heat-map of probabilities could show.  Log-odds do not saturate: a drawings probability
that goes from 3e-4 to 1e-4 is a fall of 1.1 nats, as large as one from 0.5 to 0.25.  Both parts are
read without loss: the small probabilities of the other classes carry full float32 precision (``1 - p``
of a saturated class would not), so ``L_c`` is precise whether ``p_c`` is near 0 or near 1.  Only a
probability that underflows to 0 in float32 (log-odds below about -87, beyond any image this model was
seen to give) is floored at :data:`FLOOR`: its map is then flat (zero).

The occluded inputs are made chunk by chunk (:func:`variants`), never all at once (65 inputs of
224 x 224 are 39 MB); :func:`explain` runs them on a model directly (the pages, the CLI, the bench)
and :func:`explain_on` through an async ``predict`` (the API: the model's micro-batcher, so the
passes share the model's lanes with classification and are cancelled with their request).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from typing import Any, Awaitable, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from nsfw_core.base.labels import CLASS_NAMES

METHOD = "occlusion"  # each cell painted over in the image's median colour, in log-odds
METHOD_VERSION = 2  # stored with cached evidence: another method or version is computed again
WINDOW = 1  # cells per side of the occluding window (stride: one cell)
FLOOR = 1e-37  # probabilities are floored here before their log (float32's smallest normal is 1.2e-38)
DEFAULT_GRID = 8
MAX_GRID = 16
CHUNK = 8  # occluded inputs made (and, through the batcher, submitted) at a time


class Predicts(Protocol):
    input_size: int

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where the windows go: ``boxes[k]`` = (top, left, bottom, right) in pixels of the S x S input, and
    ``cover[k]`` the (rows, cols) cells window k covers (1) or not (0)."""

    size: int
    rows: int
    cols: int
    window: int
    boxes: tuple[tuple[int, int, int, int], ...]
    cover: np.ndarray  # (K, rows, cols) float32

    @property
    def windows(self) -> int:
        return len(self.boxes)

    @property
    def passes(self) -> int:
        """Forward passes of one explanation: the image, then one per window."""
        return 1 + self.windows


def passes(grid: int, window: int = WINDOW) -> int:
    """Forward passes of an explanation on a ``grid`` x ``grid`` grid: 65 for 8 x 8."""
    return 1 + (grid + window - 1) ** 2


@functools.lru_cache(maxsize=16)
def plan(size: int, rows: int = DEFAULT_GRID, cols: int | None = None, window: int = WINDOW) -> Plan:
    """The windows over an S x S input cut into ``rows`` x ``cols`` cells (cell edges rounded to pixels): one
    per cell (``window`` 1), or, for larger windows, every position one cell apart, overhanging the edges so
    that each cell is covered ``window**2`` times."""
    cols = rows if cols is None else cols
    if not (1 <= rows <= size and 1 <= cols <= size and window >= 1):
        raise ValueError(f"a {rows} x {cols} grid with windows of {window} does not fit {size} pixels")
    ys = np.round(np.linspace(0, size, rows + 1)).astype(int)
    xs = np.round(np.linspace(0, size, cols + 1)).astype(int)
    boxes = []
    covers = []
    for i in range(-(window - 1), rows):
        for j in range(-(window - 1), cols):
            r0, r1 = max(i, 0), min(i + window, rows)
            c0, c1 = max(j, 0), min(j + window, cols)
            boxes.append((int(ys[r0]), int(xs[c0]), int(ys[r1]), int(xs[c1])))
            cover = np.zeros((rows, cols), np.float32)
            cover[r0:r1, c0:c1] = 1.0
            covers.append(cover)
    return Plan(size, rows, cols, window, tuple(boxes), np.stack(covers))


def reference(x: np.ndarray) -> np.ndarray:
    """The colour an occluded cell is painted in: the image's per-channel median, (3,) float32."""
    out: np.ndarray = np.median(x.reshape(-1, x.shape[-1]), axis=0).astype(np.float32)
    return out


def variants(x: np.ndarray, p: Plan, chunk: int = CHUNK, fill: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The inputs of one explanation, ``chunk`` at a time: the image itself, then one copy per window with the
    window painted over in ``fill`` (a colour, or an image of the input's shape; :func:`reference` by default)."""
    if fill is None:
        fill = reference(x)
    whole = fill.ndim == x.ndim
    batch: list[np.ndarray] = [x]
    for top, left, bottom, right in p.boxes:
        v = x.copy()
        v[top:bottom, left:right] = fill[top:bottom, left:right] if whole else fill
        batch.append(v)
        if len(batch) == chunk:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def log_odds(probs: np.ndarray) -> np.ndarray:
    """(N, C) probabilities -> (N, C) log-odds of each class against all the others, float64.

    ``log p_c - log sum_{k != c} p_k``, each sum over the small probabilities themselves (never ``1 - p_c``),
    so a class near 0 and a class near 1 are both read to float32's relative precision.
    """
    p = np.maximum(np.asarray(probs, dtype=np.float64), FLOOR)
    total = p.sum(axis=1, keepdims=True)
    # the others' sum, added up from the small ones: sum of all minus p_c would cancel when p_c is near 1
    others = np.stack([np.delete(p, c, axis=1).sum(axis=1) for c in range(p.shape[1])], axis=1)
    others = np.maximum(others, FLOOR * total)
    out: np.ndarray = np.log(p) - np.log(others)
    return out


def attribute(probs: np.ndarray, p: Plan) -> np.ndarray:
    """The passes' probabilities (the image's first, then one row per window) -> (C, rows, cols) evidence."""
    lo = log_odds(probs)
    effect = lo[0][None, :] - lo[1:]  # (K, C): how much each class's log-odds fall when window k is hidden
    covered = p.cover.sum(axis=0)  # (rows, cols): window**2 everywhere
    out: np.ndarray = np.einsum("kc,krs->crs", effect, p.cover) / covered[None]
    return out


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One image's evidence: the model's scores, and per class a (rows, cols) map in nats of log-odds."""

    model: str
    version: str
    scores: dict[str, float]
    rows: int
    cols: int
    heatmaps: dict[str, np.ndarray]
    passes: int
    seconds: float = 0.0
    frame: int | None = None  # an animation's: the index of the frame explained (its deciding frame)
    method: str = METHOD

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """The API's answer's core (the heat-maps as lists of rows, rounded to ``digits``)."""
        out: dict[str, Any] = {
            "model": {"name": self.model, "version": self.version},
            "scores": dict(self.scores),
            "method": {"name": self.method, "fill": "median colour", "units": "log-odds (nats)"},
            "grid": {"rows": self.rows, "cols": self.cols},
            "passes": self.passes,
            "heatmaps": {c: [[round(float(v), digits) for v in row] for row in h] for c, h in self.heatmaps.items()},
        }
        if self.frame is not None:
            out["frame"] = self.frame
        return out

    def to_stored(self) -> dict[str, Any]:
        """What a review item keeps (:func:`from_stored` reads it back)."""
        out = self.to_dict()
        out["method"] = {"name": self.method, "version": METHOD_VERSION}
        out["seconds"] = round(self.seconds, 4)
        return out


def from_stored(doc: Mapping[str, Any]) -> Explanation | None:
    """An :class:`Explanation` from :meth:`Explanation.to_stored`; None when it is malformed or of another
    method or version (it is then computed again)."""
    try:
        method = doc["method"]
        if method.get("name") != METHOD or method.get("version") != METHOD_VERSION:
            return None
        rows, cols = int(doc["grid"]["rows"]), int(doc["grid"]["cols"])
        maps = {c: np.asarray(doc["heatmaps"][c], dtype=np.float64) for c in CLASS_NAMES}
        if any(m.shape != (rows, cols) for m in maps.values()):
            return None
        frame = doc.get("frame")
        return Explanation(str(doc["model"]["name"]), str(doc["model"]["version"]),
                           {c: float(doc["scores"][c]) for c in CLASS_NAMES}, rows, cols, maps, int(doc["passes"]),
                           float(doc.get("seconds", 0.0)), None if frame is None else int(frame))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _finish(model: str, version: str, probs: np.ndarray, p: Plan, started: float,
            frame: int | None) -> Explanation:
    maps = attribute(probs, p)
    scores = {c: float(v) for c, v in zip(CLASS_NAMES, probs[0], strict=True)}
    return Explanation(model, version, scores, p.rows, p.cols,
                       {c: maps[i] for i, c in enumerate(CLASS_NAMES)}, len(probs),
                       time.perf_counter() - started, frame)


def explain(model: Predicts, x: np.ndarray, *, grid: int = DEFAULT_GRID, name: str = "", version: str = "",
            frame: int | None = None) -> Explanation:
    """Explain the model input ``x`` ((S, S, 3) float32) with ``model.predict``, in this thread."""
    started = time.perf_counter()
    p = plan(x.shape[0], grid)
    probs = np.concatenate([np.asarray(model.predict(b)) for b in variants(x, p)])
    return _finish(name or getattr(model, "name", ""), version or getattr(model, "version", ""), probs, p, started,
                   frame)


async def explain_on(predict: Callable[[np.ndarray], Awaitable[np.ndarray]], x: np.ndarray, *, name: str,
                     version: str, grid: int = DEFAULT_GRID, frame: int | None = None,
                     chunk: int = CHUNK, ahead: int = 2) -> Explanation:
    """Explain ``x`` with ``predict`` (one input -> its probabilities; the micro-batcher's), on the event loop.

    The occluded inputs are made ``chunk`` at a time in a worker thread and submitted as they are made,
    at most ``ahead`` chunks waiting at once: requests that arrive meanwhile queue between two chunks,
    not behind the whole explanation.  Cancelling the task cancels every pass not yet run (the
    batcher skips inputs whose caller is gone).
    """
    started = time.perf_counter()
    p = plan(x.shape[0], grid)
    made = variants(x, p, chunk)
    loop = asyncio.get_running_loop()
    chunks: list[list[asyncio.Task[np.ndarray]]] = []
    rows: list[np.ndarray] = []
    done = 0
    try:
        while True:
            batch = await loop.run_in_executor(None, next, made, None)
            if batch is None:
                break
            chunks.append([asyncio.ensure_future(predict(v)) for v in batch])
            while len(chunks) - done >= ahead:
                rows.extend(await asyncio.gather(*chunks[done]))
                done += 1
        while done < len(chunks):
            rows.extend(await asyncio.gather(*chunks[done]))
            done += 1
    finally:  # an error or a cancellation: no pass of this explanation is left to run
        for task in (t for c in chunks for t in c):
            task.cancel()
    return _finish(name, version, np.stack(rows), p, started, frame)


def deciding_class(scores: Mapping[str, float], verdict: str, adult_classes: Sequence[str],
                   safe_classes: Sequence[str]) -> str:
    """The class a reviewer should see the evidence of: the adult class with the highest score for an adult or
    unknown verdict (what pushed the image towards adult), the safe class with the highest score for a safe one."""
    pool = [c for c in (safe_classes if verdict == "safe" else adult_classes) if c in scores] or list(CLASS_NAMES)
    return max(pool, key=lambda c: (scores.get(c, 0.0), -CLASS_NAMES.index(c)))


def mass_within(heat: np.ndarray, region: np.ndarray) -> float:
    """The share of a map's positive evidence that lies in ``region`` ((rows, cols) weights in [0, 1]: the share
    of each cell inside it); 0 when the map has none."""
    pos = np.maximum(np.asarray(heat, dtype=np.float64), 0.0)
    total = float(pos.sum())
    return float((pos * region).sum() / total) if total > 0 else 0.0
