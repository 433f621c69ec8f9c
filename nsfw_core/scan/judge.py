"""Scores -> verdicts for many rows at once, with the service's rules (:func:`nsfw_core.classify.judge`).

The same three rules, vectorised over a table of stored scores (a test checks every row against the
service's ``judge``):

* the three-state rule of :meth:`~nsfw_core.base.verdict.Thresholds.decide`: the adult score (the adult
  classes' probabilities added in their order, in float64, as the service adds them) at or above the adult
  threshold (less :data:`~nsfw_core.base.verdict.EPSILON`) is adult; else the safe score at or above the safe
  threshold is safe; else unknown;
* an animation is judged on its worst frame under these thresholds (the highest adult score, the earliest
  on a tie), whose scores the row gets;
* a known image (a reviewer's remembered decision, a hash-list entry: :class:`~nsfw_core.state.known.KnownImages`,
  looked up by sha256 and the stored PDQ hash) gets the human verdict, ``verdict_source`` review or list;
  except that a PDQ match never clears an image the model calls adult (only sha256 may).

Error rows keep null scores and a null verdict.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nsfw_core.base.labels import ADULT, CLASS_NAMES, SAFE, UNKNOWN
from nsfw_core.base.verdict import EPSILON, Thresholds
from nsfw_core.state.known import Match

# KnownImages.lookup_many: each row's match among the known images (sha256, PDQ hash) -> Match or None
Lookup = Callable[[Sequence["str | None"], Sequence["bytes | None"]], "list[Match | None]"]
MODEL = "model"


def _scores(table: pa.Table) -> np.ndarray:
    """(n, 5) float32, NaN where null."""
    return np.stack([table[c].to_numpy(zero_copy_only=False).astype(np.float32, copy=False) for c in CLASS_NAMES],
                    axis=1) if table.num_rows else np.zeros((0, len(CLASS_NAMES)), np.float32)


def summed(scores: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """The classes' probabilities added in float64 in their order, as ``Thresholds.adult_score`` adds them."""
    index = [CLASS_NAMES.index(c) for c in classes]
    acc = scores[:, index[0]].astype(np.float64)
    for i in index[1:]:
        acc = acc + scores[:, i].astype(np.float64)
    return acc


def decide(adult: np.ndarray, safe: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """The three-state rule over arrays of adult and safe scores -> an object array of verdicts."""
    return np.where(adult >= thresholds.adult - EPSILON, ADULT,
                    np.where(safe >= thresholds.safe - EPSILON, SAFE, UNKNOWN)).astype(object)


def judge(table: pa.Table, thresholds: Thresholds, version: int | None, lookup: Lookup | None = None,
          now: _dt.datetime | None = None, matches: Sequence[Match | None] | None = None) -> dict[str, pa.Array]:
    """The verdict columns for ``table``'s rows (:data:`~nsfw_core.scan.schema.SCHEMA` columns: the five
    scores, ``frames``, ``sha256``, ``pdq``, ``error_code``): scores, adult_score, safe_score, deciding_frame,
    verdict, verdict_source, match_*, thresholds(_version) and judged_at.  Known images: ``lookup`` asks for
    the rows' matches, or ``matches`` gives them (one per row, looked up before)."""
    n = table.num_rows
    scores = _scores(table)
    ok = np.asarray(pc.is_null(table["error_code"]).to_numpy(zero_copy_only=False), dtype=bool)
    deciding = np.full(n, -1, dtype=np.int64)
    frames = table["frames"]
    for i in np.flatnonzero(np.asarray(pc.is_valid(frames).to_numpy(zero_copy_only=False), dtype=bool) & ok):
        rows = frames[int(i)].as_py()
        if not rows:
            continue
        worst = max(rows, key=lambda f: (thresholds.adult_score(dict(zip(CLASS_NAMES, f["scores"], strict=True))),
                                         -f["index"]))
        scores[i] = np.asarray(worst["scores"], dtype=np.float32)
        deciding[i] = worst["index"]
    ok &= ~np.isnan(scores).any(axis=1)  # an error row, or (never written) a row without scores
    adult = summed(scores, thresholds.adult_classes)
    safe = summed(scores, thresholds.safe_classes)
    verdict = decide(adult, safe, thresholds)
    source = np.full(n, MODEL, dtype=object)
    match_by = np.full(n, None, dtype=object)
    match_distance = np.full(n, -1, dtype=np.int64)
    match_entry = np.full(n, -1, dtype=np.int64)
    if lookup is not None and matches is None:
        matches = lookup(table["sha256"].to_pylist(), table["pdq"].to_pylist())
    if matches is not None:
        for i in np.flatnonzero(ok):
            match = matches[int(i)]
            if match is None:
                continue
            if match.by != "sha256" and verdict[i] == ADULT and match.verdict != ADULT:
                continue  # a perceptual match never clears what the model calls adult
            verdict[i], source[i], match_by[i] = match.verdict, match.kind, match.by
            match_distance[i], match_entry[i] = match.distance, match.entry_id
    verdict[~ok] = None
    source[~ok] = None
    now = now or _dt.datetime.now(_dt.timezone.utc)
    mask = ~ok
    out: dict[str, pa.Array] = {c: pa.array(scores[:, j], pa.float32(), mask=mask) for j, c in enumerate(CLASS_NAMES)}
    out.update({
        "adult_score": pa.array(adult, pa.float64(), mask=mask),
        "safe_score": pa.array(safe, pa.float64(), mask=mask),
        "deciding_frame": pa.array(deciding, pa.int32(), mask=deciding < 0),
        "verdict": pa.array(verdict, pa.string()),
        "verdict_source": pa.array(source, pa.string()),
        "match_by": pa.array(match_by, pa.string()),
        "match_distance": pa.array(match_distance, pa.int32(), mask=match_distance < 0),
        "match_entry": pa.array(match_entry, pa.int64(), mask=match_entry < 0),
        "thresholds_version": pa.array([version] * n, pa.int64()),
        "thresholds": pa.array([json.dumps(thresholds.to_dict(), sort_keys=True)] * n, pa.string()),
        "judged_at": pa.array([now] * n, pa.timestamp("ms", tz="UTC")),
    })
    return out
