"""Threshold calibration maths: pure numpy/pandas, no UI.

Inputs are three equal-length arrays over a labelled set:

- ``adult``: the adult score of each image (sum of the adult classes),
- ``safe``: the safe score (sum of the safe classes),
- ``truth``: 1 for a truly adult image, 0 for a truly safe one (``"adult"`` /
  ``"safe"`` strings and booleans are accepted too).

The decision rule is the one in :mod:`nsfw_core.base.verdict` (adult checked first,
"at or above" with :data:`nsfw_core.base.verdict.EPSILON` slack); :func:`verdicts`
evaluates ``Thresholds.decide`` for whole arrays at once, and a test keeps the
two identical.

Vocabulary used by the page and the saved metrics:

- *adult precision*: of the images the rule calls "adult" automatically, the
  share that are truly adult;
- *safe precision*: of the images called "safe" automatically, the share
  that are truly safe (1 - this is the share of adult images that slip
  through among the automatic "safe" decisions);
- *review share*: the share of images that get "unknown" (sent to a human).

Anything that cannot be computed (no decision of that kind, no adult samples,
an empty set, …) is ``nan`` together with a reason string, never a silent 0.

Weights (issue 25): every function that counts images takes optional ``weights``, one per image: an
image then counts as that many.  The review queue's decided items weighted by the inverse of the
probability that queued them (an audit item sampled at 1 % stands for 100 automatic decisions, an
"unknown" item for itself) estimate production, so the curves, metrics and suggestions computed with
those weights are estimates of what the rule does on the traffic the service sees.  Without weights
(``None``) every image counts one, exactly as before.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from nsfw_core.base.labels import ADULT, CLASS_NAMES, SAFE, UNKNOWN
from nsfw_core.base.labels import VERDICTS as VERDICTS  # re-exported: the verdict table's rows
from nsfw_core.base.verdict import EPSILON, Thresholds

TRUTH_NAMES = {1: ADULT, 0: SAFE}
NAN = float("nan")


# ---------------------------------------------------------------- inputs


def as_truth(truth: Iterable[Any]) -> np.ndarray:
    """0/1 int array from 1/0, True/False or "adult"/"safe"."""
    if isinstance(truth, pd.Series):
        truth = truth.to_numpy()
    arr = truth if isinstance(truth, np.ndarray) else np.asarray(list(truth), dtype=object)
    if arr.dtype == object and all(isinstance(t, (bool, int, float, np.number, np.bool_)) for t in arr.flat):
        arr = arr.astype(np.float64)
    if arr.dtype.kind in "biuf":
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"truth must be adult/safe or 1/0, got {sorted(set(arr.tolist()) - {0, 1})[:5]}")
        return arr.astype(np.int8).reshape(-1)
    out = []
    for t in arr.reshape(-1).tolist():
        if isinstance(t, str):
            key = t.strip().lower()
            key = {"1": ADULT, "0": SAFE}.get(key, key)
            if key not in (ADULT, SAFE):
                raise ValueError(f"truth must be adult/safe or 1/0, got {t!r}")
            out.append(1 if key == ADULT else 0)
        else:
            v = int(t)
            if v not in (0, 1):
                raise ValueError(f"truth must be adult/safe or 1/0, got {t!r}")
            out.append(v)
    return np.asarray(out, dtype=np.int8)


def _arrays(adult: Any, safe: Any, truth: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(adult, dtype=np.float64).reshape(-1)
    s = np.asarray(safe, dtype=np.float64).reshape(-1)
    y = as_truth(truth)
    if not (len(a) == len(s) == len(y)):
        raise ValueError(f"adult, safe and truth must have the same length ({len(a)}, {len(s)}, {len(y)})")
    if np.isnan(a).any() or np.isnan(s).any():
        raise ValueError("scores must not be NaN")
    return a, s, y


def as_weights(weights: Any, n: int) -> np.ndarray | None:
    """``weights`` as a float array of length ``n`` (None stays None: every image counts one)."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n:
        raise ValueError(f"weights must have one value per image ({len(w)} for {n})")
    if n and (not np.isfinite(w).all() or (w <= 0).any()):
        raise ValueError("weights must be positive and finite")
    return w


def _count(mask: np.ndarray, w: np.ndarray | None, axis: int | None = None) -> Any:
    """How many images ``mask`` holds: a count, or the sum of their weights."""
    if w is None:
        return mask.sum(axis=axis)
    ww = w if mask.ndim == 1 else w[:, None]
    return (mask * ww).sum(axis=axis)


def _n(x: Any, w: np.ndarray | None) -> Any:
    """A count as an int without weights, a float (rounded to 1e-9) with them."""
    return int(x) if w is None else round(float(x), 9)


def score_frame(
    scores: Sequence[Mapping[str, float]],
    truth: Sequence[Any],
    adult_classes: Sequence[str] = Thresholds.adult_classes,
    safe_classes: Sequence[str] = Thresholds.safe_classes,
) -> pd.DataFrame:
    """One row per image: the five class scores, ``adult_score``, ``safe_score`` and ``truth`` (0/1).

    The sums are computed by ``Thresholds.adult_score`` / ``safe_score``, the
    same code (and float rounding) the API uses.
    """
    rule = Thresholds(adult_classes=tuple(adult_classes), safe_classes=tuple(safe_classes))
    df = pd.DataFrame([{c: float(sc[c]) for c in CLASS_NAMES} for sc in scores], columns=list(CLASS_NAMES))
    df["adult_score"] = [rule.adult_score(sc) for sc in scores]
    df["safe_score"] = [rule.safe_score(sc) for sc in scores]
    df["truth"] = as_truth(truth)
    return df


def _ge(values: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """"at or above" exactly as ``Thresholds.decide`` compares."""
    return values >= threshold - EPSILON


def verdicts(adult: Any, safe: Any, t_adult: float, t_safe: float) -> np.ndarray:
    """The rule of ``Thresholds.decide`` over arrays: "adult", "safe" or "unknown" per image."""
    a = np.asarray(adult, dtype=np.float64)
    s = np.asarray(safe, dtype=np.float64)
    is_adult = _ge(a, t_adult)
    is_safe = ~is_adult & _ge(s, t_safe)
    return np.where(is_adult, ADULT, np.where(is_safe, SAFE, UNKNOWN)).astype(object)


def _split(thresholds: Thresholds | tuple[float, float]) -> tuple[float, float]:
    if isinstance(thresholds, Thresholds):
        return thresholds.adult, thresholds.safe
    t_adult, t_safe = thresholds
    return float(t_adult), float(t_safe)


def _ratio(num: float, den: float) -> float:
    return num / den if den else NAN


# ---------------------------------------------------------------- verdict x truth


def verdict_table(df: pd.DataFrame, thresholds: Thresholds | tuple[float, float]) -> pd.DataFrame:
    """Verdict x truth counts and rates from ``df``'s ``adult_score``, ``safe_score``, ``truth``.

    Tidy: one row per (verdict, truth) in the order adult/unknown/safe x
    adult/safe, with ``count``, ``share_of_truth`` (count / images of that
    truth: e.g. the share of adult images sent to review) and
    ``share_of_verdict`` (count / images with that verdict: for the automatic
    verdicts, their precision or error rate).  A share whose denominator is 0
    is NaN.  Only the thresholds' numbers are used (the class sums are the
    frame's columns).  With a ``weight`` column, counts are sums of weights.
    """
    t_adult, t_safe = _split(thresholds)
    a, s, y = _arrays(df["adult_score"], df["safe_score"], df["truth"])
    w = as_weights(df["weight"].to_numpy(), len(y)) if "weight" in df.columns else None
    v = verdicts(a, s, t_adult, t_safe)
    rows = []
    for verdict in VERDICTS:
        n_verdict = _n(_count(v == verdict, w), w)
        for code in (1, 0):
            n_truth = _n(_count(y == code, w), w)
            count = _n(_count((v == verdict) & (y == code), w), w)
            rows.append({"verdict": verdict, "truth": TRUTH_NAMES[code], "count": count,
                         "share_of_truth": _ratio(count, n_truth), "share_of_verdict": _ratio(count, n_verdict)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- metrics at one operating point


def _json_able(obj: Any) -> dict[str, Any]:
    """A dataclass as a dict with NaN fields as None (JSON has no NaN)."""
    out = dataclasses.asdict(obj)
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


@dataclasses.dataclass
class DecisionMetrics:
    """What the rule does on a labelled set at (``t_adult``, ``t_safe``)."""

    t_adult: float
    t_safe: float
    # counts of images; with weights, sums of weights (floats): estimated production images
    n: float
    n_adult: float  # truly adult images
    n_safe: float  # truly safe images
    adult_decisions: float  # verdict "adult"
    adult_correct: float  # ... that are truly adult
    safe_decisions: float  # verdict "safe"
    safe_correct: float  # ... that are truly safe
    review_n: float  # verdict "unknown"
    adult_precision: float
    safe_precision: float
    review_share: float
    adult_recall: float  # truly adult images decided "adult" automatically / truly adult
    missed_adult: float  # truly adult images decided "safe" (the costly error)
    false_adult: float  # truly safe images decided "adult"
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)  # metric -> why it is NaN
    notes: list[str] = dataclasses.field(default_factory=list)  # caveats about defined numbers

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN -> None), as saved with the thresholds."""
        return _json_able(self)


def decision_metrics(adult: Any, safe: Any, truth: Any, t_adult: float, t_safe: float, *,
                     weights: Any = None) -> DecisionMetrics:
    """Precision of the automatic adult and safe decisions, the share sent to review, and counts (sums of
    ``weights`` when given)."""
    a, s, y = _arrays(adult, safe, truth)
    w = as_weights(weights, len(y))
    v = verdicts(a, s, t_adult, t_safe)
    n, n_adult = _n(_count(np.ones(len(y), dtype=bool), w), w), _n(_count(y == 1, w), w)
    n_safe = _n(n - n_adult, w)
    is_a, is_s = v == ADULT, v == SAFE
    adult_dec, safe_dec = _n(_count(is_a, w), w), _n(_count(is_s, w), w)
    adult_ok = _n(_count(is_a & (y == 1), w), w)
    safe_ok = _n(_count(is_s & (y == 0), w), w)
    reasons: dict[str, str] = {}
    notes: list[str] = []
    if n == 0:
        for k in ("adult_precision", "safe_precision", "review_share", "adult_recall"):
            reasons[k] = "the set is empty"
    if adult_dec == 0 and n:
        reasons["adult_precision"] = (f"no image has an adult score at or above T_adult={t_adult:g}: "
                                      "no automatic adult decisions")
    if safe_dec == 0 and n:
        reasons["safe_precision"] = (f"no image below T_adult has a safe score at or above T_safe={t_safe:g}: "
                                     "no automatic safe decisions")
    if n_adult == 0 and n:
        reasons["adult_recall"] = "the set has no adult samples"
        notes.append("The set has no adult samples: the safe precision is trivially 100 % and says nothing about "
                     "how many adult images would be let through; adult precision can only be 0 % or undefined.")
    if n_safe == 0 and n:
        notes.append("The set has no safe samples: the adult precision is trivially 100 % and says nothing about "
                     "how many safe images would be blocked.")
    return DecisionMetrics(
        t_adult=float(t_adult), t_safe=float(t_safe), n=n, n_adult=n_adult, n_safe=n_safe,
        adult_decisions=adult_dec, adult_correct=adult_ok, safe_decisions=safe_dec, safe_correct=safe_ok,
        review_n=_n(n - adult_dec - safe_dec, w),
        adult_precision=_ratio(adult_ok, adult_dec), safe_precision=_ratio(safe_ok, safe_dec),
        review_share=_ratio(n - adult_dec - safe_dec, n), adult_recall=_ratio(adult_ok, n_adult),
        missed_adult=_n(_count(is_s & (y == 1), w), w), false_adult=_n(_count(is_a & (y == 0), w), w),
        reasons=reasons, notes=notes,
    )


# ---------------------------------------------------------------- sweep


DEFAULT_GRID = np.round(np.linspace(0.0, 1.0, 101), 10)


def sweep(adult: Any, safe: Any, truth: Any, t_adult: float, t_safe: float,
          grid: Sequence[float] | None = None, *, weights: Any = None) -> pd.DataFrame:
    """Precision vs share sent to review while one threshold moves and the other stays put.

    Two families of rows: ``moving == "T_adult"`` (T_safe fixed at ``t_safe``;
    ``precision`` is the adult precision) and ``moving == "T_safe"`` (T_adult
    fixed at ``t_adult``; ``precision`` is the safe precision).  The grid
    (default 0, 0.01, …, 1) always includes the current thresholds, so the
    operating point lies on both curves.  Columns: moving, threshold, t_adult,
    t_safe, precision, decisions, adult_precision, safe_precision,
    review_share, review_n (sums of ``weights`` when given).
    """
    a, s, y = _arrays(adult, safe, truth)
    w = as_weights(weights, len(y))
    base = np.asarray(DEFAULT_GRID if grid is None else grid, dtype=np.float64)
    n = len(y) if w is None else float(w.sum())
    frames = []
    for moving in ("T_adult", "T_safe"):
        current = t_adult if moving == "T_adult" else t_safe
        ts = np.unique(np.append(base, current))
        if moving == "T_adult":
            is_a = _ge(a[:, None], ts[None, :])  # (N, G)
            is_s = ~is_a & _ge(s, t_safe)[:, None]
            ta_col, ts_col = ts, np.full(len(ts), float(t_safe))
        else:
            is_a = np.broadcast_to(_ge(a, t_adult)[:, None], (len(y), len(ts)))
            is_s = ~is_a & _ge(s[:, None], ts[None, :])
            ta_col, ts_col = np.full(len(ts), float(t_adult)), ts
        truly = (y == 1)[:, None]
        a_dec, s_dec = _count(is_a, w, 0), _count(is_s, w, 0)
        a_ok, s_ok = _count(is_a & truly, w, 0), _count(is_s & ~truly, w, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            a_prec = np.where(a_dec > 0, a_ok / np.where(a_dec > 0, a_dec, 1), np.nan)
            s_prec = np.where(s_dec > 0, s_ok / np.where(s_dec > 0, s_dec, 1), np.nan)
        review = n - a_dec - s_dec
        frames.append(pd.DataFrame({
            "moving": moving, "threshold": ts, "t_adult": ta_col, "t_safe": ts_col,
            "precision": a_prec if moving == "T_adult" else s_prec,
            "decisions": a_dec if moving == "T_adult" else s_dec,
            "adult_precision": a_prec, "safe_precision": s_prec,
            "review_share": review / n if n else np.full(len(ts), np.nan), "review_n": review,
        }))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- ROC / PR


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order (descending) and, for each position, whether it ends a tie group.

    Values closer than EPSILON to their neighbour are one tie (as the rule
    cannot separate them with any threshold).
    """
    order = np.argsort(-values, kind="mergesort")
    v = values[order]
    ends = np.ones(len(v), dtype=bool)
    if len(v) > 1:
        ends[:-1] = (v[:-1] - v[1:]) > EPSILON
    return order, ends


def _cumulative(scores: np.ndarray, positive: np.ndarray,
                weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct threshold (descending, a tie group's lowest value): cumulative TP and FP
    counted "at or above" it (sums of ``weights`` when given)."""
    order, ends = _tie_groups(scores)
    pos = positive[order].astype(np.int64)
    if weights is None:
        return scores[order][ends], np.cumsum(pos)[ends], np.cumsum(1 - pos)[ends]
    w = weights[order]
    return scores[order][ends], np.cumsum(w * pos)[ends], np.cumsum(w * (1 - pos))[ends]


def auc(x: Any, y: Any) -> float:
    """Area under a curve by the trapezoid rule (x monotonic; NaN when fewer than 2 points)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return NAN
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


@dataclasses.dataclass
class RocCurve:
    """ROC of the adult score; points from (0, 0) at threshold +inf to (1, 1)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    reason: str | None = None  # why the curve is undefined

    @property
    def defined(self) -> bool:
        return self.reason is None

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"fpr": self.fpr, "tpr": self.tpr, "threshold": self.thresholds})


@dataclasses.dataclass
class PrCurve:
    """Precision-recall of the adult score; starts at (recall 0, precision 1)."""

    recall: np.ndarray
    precision: np.ndarray
    thresholds: np.ndarray
    average_precision: float  # sum of (R_k - R_{k-1}) * P_k over the thresholds
    reason: str | None = None
    note: str | None = None

    @property
    def defined(self) -> bool:
        return self.reason is None

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"recall": self.recall, "precision": self.precision, "threshold": self.thresholds})


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.float64)


def _class_reason(n_pos: int, n_neg: int, need_neg: bool = True) -> str | None:
    if n_pos == 0 and n_neg == 0:
        return "the set is empty"
    if n_pos == 0:
        return ("the set has no adult samples, so the share of adult images caught (true-positive rate, recall) "
                "is undefined")
    if need_neg and n_neg == 0:
        return "the set has no safe samples, so the false-positive rate is undefined"
    return None


def roc_curve(scores: Any, truth: Any, *, weights: Any = None) -> RocCurve:
    """ROC of "adult score at or above t" for every distinct score t.

    Tied scores form one step (a diagonal segment when they mix classes), so
    the trapezoid AUC equals the Mann-Whitney probability that a random adult
    image scores above a random safe one, ties counting 1/2.  Undefined
    (``reason`` set, AUC NaN) when either class is absent.
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = as_truth(truth)
    w = as_weights(weights, len(y))
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    reason = _class_reason(n_pos, n_neg)
    if reason:
        return RocCurve(_empty(), _empty(), _empty(), NAN, reason)
    if w is not None:
        n_pos, n_neg = float(w[y == 1].sum()), float(w[y == 0].sum())  # type: ignore[assignment]
    thr, tp, fp = _cumulative(x, y == 1, w)
    tpr = np.concatenate([[0.0], tp / n_pos])
    fpr = np.concatenate([[0.0], fp / n_neg])
    thresholds = np.concatenate([[np.inf], thr])
    return RocCurve(fpr, tpr, thresholds, auc(fpr, tpr))


def pr_curve(scores: Any, truth: Any, *, weights: Any = None) -> PrCurve:
    """Precision and recall of "adult score at or above t" for every distinct score t.

    Undefined without adult samples.  Without safe samples precision is 1
    everywhere (defined but uninformative: ``note`` says so).
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = as_truth(truth)
    w = as_weights(weights, len(y))
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    reason = _class_reason(n_pos, n_neg, need_neg=False)
    if reason:
        return PrCurve(_empty(), _empty(), _empty(), NAN, reason)
    if w is not None:
        n_pos = float(w[y == 1].sum())  # type: ignore[assignment]
    thr, tp, fp = _cumulative(x, y == 1, w)
    recall = tp / n_pos
    precision = tp / (tp + fp)
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    note = "the set has no safe samples: precision is 100 % at every threshold" if n_neg == 0 else None
    return PrCurve(np.concatenate([[0.0], recall]), np.concatenate([[1.0], precision]),
                   np.concatenate([[np.inf], thr]), ap, None, note)


# ---------------------------------------------------------------- suggestion


@dataclasses.dataclass
class Suggestion:
    """The thresholds that send the fewest images to review at the target precisions.

    ``status``: "ok"; "partial" (one kind of automatic decision cannot reach
    its target, so that kind is switched off: T = 1.0); "impossible" (no
    automatic decision at all meets the targets: everything goes to review);
    "undefined" (the set lacks adult or safe samples, so precision cannot be
    measured; no thresholds are suggested).  ``message`` explains it.
    """

    status: str
    message: str
    t_adult: float | None = None
    t_safe: float | None = None
    target_adult_precision: float = 0.99
    target_safe_precision: float = 0.99
    adult_precision: float = NAN
    safe_precision: float = NAN
    review_share: float = NAN
    review_n: float = 0  # counts; sums of weights (estimated production images) when suggested with weights
    adult_decisions: float = 0
    safe_decisions: float = 0
    n: float = 0

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "partial")

    def to_dict(self) -> dict[str, Any]:
        return _json_able(self)


_TOL = 1e-12  # precision comparisons: 99/100 must meet 0.99


def _best_prefix(values: np.ndarray, good: np.ndarray, target: float,
                 weights: np.ndarray | None = None) -> tuple[float, float, float]:
    """Largest tie-respecting "at or above t" set meeting ``target`` precision.

    Returns (count, correct, threshold) (counts: sums of ``weights`` when given); (0, 0, nan) when no
    non-empty set qualifies.
    """
    if len(values) == 0:
        return 0, 0, NAN
    order, ends = _tie_groups(values)
    w = np.ones(len(values), dtype=np.int64) if weights is None else weights[order]
    counts = np.cumsum(w)[ends]
    correct = np.cumsum(w * good[order].astype(np.int64))[ends]
    ok = correct >= (target - _TOL) * counts
    if not ok.any():
        return 0, 0, NAN
    k = int(np.flatnonzero(ok)[-1])  # the largest qualifying set
    if weights is None:
        return int(counts[k]), int(correct[k]), float(values[order][ends][k])
    return float(counts[k]), float(correct[k]), float(values[order][ends][k])


def suggest_thresholds(
    adult: Any,
    safe: Any,
    truth: Any,
    target_adult_precision: float = 0.99,
    target_safe_precision: float = 0.99,
    *,
    max_candidates: int = 4000,
    weights: Any = None,
) -> Suggestion:
    """(T_adult, T_safe) sending the fewest images to review while each automatic decision
    meets its target precision.

    Candidates for T_adult are the distinct adult scores (each admits a tie
    group entirely: "at or above") plus 1.0 (no adult decisions, when no score
    reaches 1.0).  The rule checks adult first, so for each T_adult the safe
    decisions are taken among the images *below* it: T_safe is the lowest
    distinct safe score among those whose "at or above" set still meets the
    safe target (or 1.0: no safe decisions).  A kind of decision that makes no
    decision meets its target vacuously.  Ties in the review count go to the
    higher adult precision, then the higher safe precision, then the higher
    thresholds.  With more than ``max_candidates`` distinct adult scores, an
    evenly spaced subset of them (by rank) is tried.  With ``weights``, every
    count is a sum of weights (estimated production images).
    """
    a, s, y = _arrays(adult, safe, truth)
    w = as_weights(weights, len(y))
    n_images, n_adult_images = len(y), int(y.sum())
    n: float = n_images if w is None else float(w.sum())
    suggestion = functools.partial(Suggestion, target_adult_precision=target_adult_precision,
                                   target_safe_precision=target_safe_precision, n=n)
    if n_images == 0:
        return suggestion("undefined", "The set is empty.")
    if n_adult_images == 0:
        return suggestion("undefined", "The set has no adult samples: the precision of safe decisions against "
                          "adult images cannot be measured, so no thresholds can be suggested.")
    if n_adult_images == n_images:
        return suggestion("undefined", "The set has no safe samples: the precision of adult decisions against "
                          "safe images cannot be measured, so no thresholds can be suggested.")

    order, ends = _tie_groups(a)
    group_thr = a[order][ends]  # descending distinct adult thresholds (tie group minima)
    ordered_w = np.ones(n_images, dtype=np.int64) if w is None else w[order]
    group_cnt = np.cumsum(ordered_w)[ends]
    group_tp = np.cumsum(ordered_w * y[order].astype(np.int64))[ends]
    feasible = group_tp >= (target_adult_precision - _TOL) * group_cnt
    idx = np.flatnonzero(feasible)
    if len(idx) > max_candidates:
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_candidates).round().astype(int))]
    # (t_adult, adult decisions, correct adult decisions)
    candidates: list[tuple[float, float, float]] = [(float(group_thr[k]), _n(group_cnt[k], w), _n(group_tp[k], w))
                                                    for k in idx]
    if not _ge(a, 1.0).any():
        candidates.append((1.0, 0, 0))

    best: tuple[tuple[float, float, float, float, float], float, float, float, float, float, float] | None = None
    for t_a, a_dec, a_ok in candidates:
        rest = ~_ge(a, t_a)
        s_dec, s_ok, t_s = _best_prefix(s[rest], y[rest] == 0, target_safe_precision,
                                        None if w is None else w[rest])
        if s_dec == 0:
            if _ge(s[rest], 1.0).any():
                continue  # "no safe decisions" cannot be expressed with T_safe <= 1
            t_s = 1.0
        review = _n(n - a_dec - s_dec, w)
        a_prec = a_ok / a_dec if a_dec else 1.0
        s_prec = s_ok / s_dec if s_dec else 1.0
        key = (review, -a_prec, -s_prec, -t_a, -t_s)
        if best is None or key < best[0]:
            best = (key, t_a, t_s, a_dec, a_ok, s_dec, s_ok)

    if best is None:
        return suggestion("impossible", "No pair of thresholds in [0, 1] meets the targets: some images have scores "
                          "of 1.0 whose automatic decision would miss the target precision.")
    _, t_a, t_s, a_dec, a_ok, s_dec, s_ok = best
    review = _n(n - a_dec - s_dec, w)

    def pct(p: float) -> str:
        return f"{100 * p:g} %"

    def many(x: float) -> str:  # a count, or an estimate of production images
        return f"{x:g}" if w is None else f"about {x:,.0f}"

    if a_dec == 0 and s_dec == 0:
        status = "impossible"
        message = (f"Cannot reach the targets ({pct(target_adult_precision)} adult, {pct(target_safe_precision)} safe) "
                   "with any automatic decision on this set: everything would go to review.")
    elif a_dec == 0 or s_dec == 0:
        status = "partial"
        kind, target = ("adult", target_adult_precision) if a_dec == 0 else ("safe", target_safe_precision)
        message = (f"No {kind} threshold reaches {pct(target)} precision on this set: the suggestion makes no "
                   f"automatic {kind} decisions (T_{kind} = 1.0) and sends {many(review)} of {many(n)} images to "
                   "review.")
    else:
        status = "ok"
        message = (f"T_adult = {t_a:.6g}, T_safe = {t_s:.6g}: {many(a_dec)} automatic adult and {many(s_dec)} "
                   f"automatic safe decisions; {many(review)} of {many(n)} images ({100 * review / n:.1f} %) go to "
                   "review.")
    return suggestion(status, message, t_adult=t_a, t_safe=t_s,
                      adult_precision=_ratio(a_ok, a_dec), safe_precision=_ratio(s_ok, s_dec),
                      review_share=review / n, review_n=review, adult_decisions=a_dec, safe_decisions=s_dec)


def snap_threshold(t: float, scores: Any, step: float = 0.001) -> float:
    """The largest multiple of ``step`` at or below ``t`` that makes the same decisions on
    ``scores`` ("at or above", with the rule's slack); ``t`` itself when there is none.

    Lets a slider with a coarse step show a suggested threshold that sits
    exactly on a score value.
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = math.floor((t + EPSILON) / step) * step
    g = round(g, 12)
    if g > t + EPSILON or g < 0:
        return t
    lower = x[~_ge(x, t)]
    if lower.size and not (lower.max() < g - EPSILON):
        return t
    return g


# ---------------------------------------------------------------- samples worth a look


def review_samples(df: pd.DataFrame, t_adult: float, t_safe: float, margin: float = 0.05,
                   limit: int | None = 50) -> pd.DataFrame:
    """Misclassified and borderline rows of a score frame, the worst first.

    Adds ``verdict`` and ``issue``: "missed adult" (adult image decided safe),
    "false adult" (safe image decided adult), "review" (sent to a human),
    "near T_adult" / "near T_safe" (within ``margin`` of a threshold though
    decided correctly).  Sorted by issue then by distance to the threshold.
    """
    a, s, y = _arrays(df["adult_score"], df["safe_score"], df["truth"])
    v = verdicts(a, s, t_adult, t_safe)
    out = df.copy()
    out["verdict"] = v
    issue = np.full(len(out), "", dtype=object)
    dist = np.minimum(np.abs(a - t_adult), np.abs(s - t_safe))
    issue[(v == SAFE) & (y == 1)] = "missed adult"
    issue[(v == ADULT) & (y == 0)] = "false adult"
    issue[(issue == "") & (v == UNKNOWN)] = "review"
    near_a = (issue == "") & (np.abs(a - t_adult) <= margin + EPSILON)
    issue[near_a] = "near T_adult"
    near_s = (issue == "") & (v == SAFE) & (np.abs(s - t_safe) <= margin + EPSILON)
    issue[near_s] = "near T_safe"
    out["issue"] = issue
    out["distance"] = dist
    rank = {"missed adult": 0, "false adult": 1, "review": 2, "near T_adult": 3, "near T_safe": 4}
    out = out[out["issue"] != ""].copy()
    out["_rank"] = out["issue"].map(rank)
    out = out.sort_values(["_rank", "distance"], kind="mergesort").drop(columns="_rank")
    return out.head(limit) if limit is not None else out
