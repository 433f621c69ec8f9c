"""Scores -> verdicts for many rows at once, with the service's rules (:func:`nsfw_core.classify.judge`).

Still images without a known match (nearly every row) take the three-state rule of
:meth:`~nsfw_core.base.verdict.Thresholds.decide`, vectorised: the adult score (the adult classes'
probabilities added in their order, in float64, as the service adds them) at or above the adult threshold
(less :data:`~nsfw_core.base.verdict.EPSILON`) is adult; else the safe score at or above the safe threshold
is safe; else unknown.  The few others, animations (judged on their worst frame) and images that match a
known image (a reviewer's remembered decision or a hash-list entry, looked up by sha256 and the stored PDQ
hash through :meth:`~nsfw_core.state.known.KnownImages.lookup_many`), go through the service's own
``judge`` one by one, so the rules on when a match may decide stay in one place.  A test checks every row
against the service's ``judge``.

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
    animated = np.asarray(pc.is_valid(table["frames"]).to_numpy(zero_copy_only=False), dtype=bool)
    ok &= ~np.isnan(scores).any(axis=1) | animated  # an error row, or (never written) a row without scores
    # still images without a known match: the three-state rule, vectorised
    adult = summed(scores, thresholds.adult_classes)
    safe = summed(scores, thresholds.safe_classes)
    verdict = decide(adult, safe, thresholds)
    source = np.full(n, MODEL, dtype=object)
    deciding = np.full(n, -1, dtype=np.int64)
    match_by = np.full(n, None, dtype=object)
    match_distance = np.full(n, -1, dtype=np.int64)
    match_entry = np.full(n, -1, dtype=np.int64)
    if lookup is not None and matches is None:
        matches = lookup(table["sha256"].to_pylist(), table["pdq"].to_pylist())
    # animations and known images (few rows): the service's own judge, so its rules stay in one place
    special = ok & (animated | (np.array([m is not None for m in matches], dtype=bool) if matches is not None
                                else np.zeros(n, dtype=bool)))
    if special.any():
        from nsfw_core.classify import FrameScore, ModelInfo, Timings
        from nsfw_core.classify import judge as service_judge

        models, versions, shas = (table[c].to_pylist() for c in ("model", "model_version", "sha256"))
        frames = table["frames"]
        for i in np.flatnonzero(special):
            raw = frames[int(i)].as_py() if animated[i] else None
            frame_scores = [FrameScore(f["index"], f["time_ms"], dict(zip(CLASS_NAMES, f["scores"], strict=True)))
                            for f in raw] if raw else None
            still = dict(zip(CLASS_NAMES, (float(v) for v in scores[i]), strict=True))
            judged = service_judge(frame_scores[0].scores if frame_scores else still, thresholds,
                                   ModelInfo(models[i], versions[i]), Timings(0, 0, 0, 0), shas[i] or "", version,
                                   frames=frame_scores, match=matches[int(i)] if matches is not None else None)
            scores[i] = np.asarray([judged.scores[c] for c in CLASS_NAMES], dtype=np.float32)
            adult[i], safe[i] = judged.adult_score, judged.safe_score
            verdict[i], source[i] = judged.verdict, judged.verdict_source
            if judged.deciding_frame is not None:
                deciding[i] = judged.deciding_frame
            if judged.match is not None:
                match_by[i], match_distance[i], match_entry[i] = (judged.match.by, judged.match.distance,
                                                                  judged.match.entry_id)
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
