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

With an adapter (``reverdict --adapter``, issue 26) the rows that kept an embedding (``nsfw-scan
--embeddings``, still images) are judged as the service judges under that adapter: its probability over the
embedding and the five scores is the adult score, one minus it the safe score, under the adapter's thresholds
(or the ones given instead, applied to its score); their ``thresholds`` column names the adapter and their
``thresholds_version`` is null, as a detail answer's is.  Rows without an embedding (animations, images
scanned without ``--embeddings``) keep the base model's rule under ``thresholds``.

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
from nsfw_core.state.adapters import AdapterVersion
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


def embeddings_of(table: pa.Table, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Which rows kept an embedding of ``dim`` values (a bool mask), and those embeddings ((k, dim) float32)."""
    if "embedding" not in table.column_names or not table.num_rows:
        return np.zeros(table.num_rows, dtype=bool), np.zeros((0, dim), np.float32)
    column = table["embedding"]
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    has = np.asarray(lengths == dim, dtype=bool)
    if not has.any():
        return has, np.zeros((0, dim), np.float32)
    kept = column.filter(pa.array(has)).combine_chunks()
    values = kept.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    return has, values


def judge(table: pa.Table, thresholds: Thresholds, version: int | None, lookup: Lookup | None = None,
          now: _dt.datetime | None = None, matches: Sequence[Match | None] | None = None,
          adapter: AdapterVersion | None = None, adapter_thresholds: Thresholds | None = None
          ) -> dict[str, pa.Array]:
    """The verdict columns for ``table``'s rows (:data:`~nsfw_core.scan.schema.SCHEMA` columns: the five
    scores, ``frames``, ``sha256``, ``pdq``, ``embedding``, ``error_code``): scores, adult_score, safe_score,
    deciding_frame, verdict, verdict_source, match_*, thresholds(_version) and judged_at.  Known images:
    ``lookup`` asks for the rows' matches, or ``matches`` gives them (one per row, looked up before).
    ``adapter``: judges the rows with an embedding, under ``adapter_thresholds`` (default: its own)."""
    n = table.num_rows
    scores = _scores(table)
    ok = np.asarray(pc.is_null(table["error_code"]).to_numpy(zero_copy_only=False), dtype=bool)
    animated = np.asarray(pc.is_valid(table["frames"]).to_numpy(zero_copy_only=False), dtype=bool)
    ok &= ~np.isnan(scores).any(axis=1) | animated  # an error row, or (never written) a row without scores
    # still images without a known match: the three-state rule, vectorised
    adult = summed(scores, thresholds.adult_classes)
    safe = summed(scores, thresholds.safe_classes)
    verdict = decide(adult, safe, thresholds)
    by_adapter = np.zeros(n, dtype=bool)
    if adapter is not None:  # the rows that kept an embedding: the adapter's score under its thresholds
        adapter_thresholds = adapter_thresholds or adapter.thresholds(thresholds)
        has, kept = embeddings_of(table, adapter.head.dim)
        vectors = np.zeros((n, adapter.head.dim), np.float32)
        vectors[has] = kept
        same_model = np.asarray(pc.and_(pc.equal(table["model"], adapter.model),
                                        pc.equal(table["model_version"], adapter.model_version))
                                .to_numpy(zero_copy_only=False), dtype=bool) if n else np.zeros(0, dtype=bool)
        # an adapter reads the embeddings of the model version it was trained on only
        by_adapter = has & same_model & ok & ~animated
        if by_adapter.any():
            adult[by_adapter] = adapter.head.score_many(vectors[by_adapter], scores[by_adapter].astype(np.float64))
            safe[by_adapter] = 1.0 - adult[by_adapter]
            verdict[by_adapter] = decide(adult[by_adapter], safe[by_adapter], adapter_thresholds)
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
            mine = bool(by_adapter[i])
            judged = service_judge(frame_scores[0].scores if frame_scores else still,
                                   adapter_thresholds if mine and adapter_thresholds is not None else thresholds,
                                   ModelInfo(models[i], versions[i]), Timings(0, 0, 0, 0), shas[i] or "",
                                   None if mine else version, frames=frame_scores,
                                   match=matches[int(i)] if matches is not None else None,
                                   embedding=_embedding(table, int(i)), adapter=adapter if mine else None)
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
        "thresholds_version": pa.array([None if mine else version for mine in by_adapter.tolist()], pa.int64()),
        "thresholds": pa.array(_thresholds_column(thresholds, by_adapter, adapter, adapter_thresholds), pa.string()),
        "judged_at": pa.array([now] * n, pa.timestamp("ms", tz="UTC")),
    })
    return out


def _thresholds_column(thresholds: Thresholds, by_adapter: np.ndarray, adapter: AdapterVersion | None,
                       adapter_thresholds: Thresholds | None) -> list[str]:
    """Each row's thresholds as JSON; a row the adapter judged names it (``"adapter": {"name", "version"}``)."""
    base = json.dumps(thresholds.to_dict(), sort_keys=True)
    if adapter is None or adapter_thresholds is None or not by_adapter.any():
        return [base] * len(by_adapter)
    mine = json.dumps({**adapter_thresholds.to_dict(), "adapter": adapter.ref}, sort_keys=True)
    return [mine if m else base for m in by_adapter.tolist()]


def _embedding(table: pa.Table, i: int) -> np.ndarray | None:
    """Row ``i``'s embedding (None: it kept none): a look-alike's must lie near the decided image's."""
    if "embedding" not in table.column_names:
        return None
    values = table["embedding"][i].as_py()
    return np.asarray(values, dtype=np.float32) if values else None
