"""Estimators of how good the automatic decisions are in production: pure numpy, no database, no UI.

Every figure comes with its sample size and a 95 % interval, or is NaN with nothing invented:

- :func:`proportion`: a share (the precision of automatic "adult", what the "unknown" items turned out to
  be) from a sample, each item weighted by the inverse of the probability that sampled it (Hájek's
  estimator); the interval is Wilson's score interval (continuity-corrected) on the Kish effective sample
  size ``(sum w)^2 / sum w^2`` (with equal weights, exactly that interval on the plain count);
- :func:`wilson`: Wilson's score interval for ``k`` successes in ``n`` trials, continuity-corrected by
  default;
- :func:`cohen_kappa` and :func:`class_kappas`: the agreement of two reviewers beyond chance, overall and
  per class (one class against the rest), with a large-sample interval;
- :func:`psi` and :func:`psi_interval`: the population stability index of a score's histogram against a
  reference one (drift), and a bootstrap interval of it;
- :func:`score_histogram`: the fixed bins every histogram here uses (:data:`SCORE_BINS` equal bins over 0…1),
  so counts kept apart (per day, per process) add up.

Tests check them against simulation (``tests/test_evaluation.py``): the interval of :func:`proportion`
holds a known true error rate in at least 93 % of 200 simulated audits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nsfw_core.state.traffic import SCORE_BINS as SCORE_BINS  # the production histograms' bins

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal
NAN = float("nan")
PSI_EPSILON = 1e-4  # a share of 0 in a bin counts as this much (the PSI's logarithm needs it)
PSI_WATCH, PSI_ACT = 0.1, 0.25  # the usual reading: below 0.1 stable, 0.1-0.25 watch, above 0.25 act


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ---------------------------------------------------------------- shares


def wilson(k: float, n: float, z: float = Z95, *, correction: bool = True) -> tuple[float, float]:
    """Wilson's score interval for ``k`` successes in ``n`` trials (floats allowed: effective counts).

    With ``correction`` (the default) the continuity-corrected form (Newcombe 1998, method 4): the plain
    score interval's coverage dips to about 90 % when the share is within a couple of failures of 0 or 1
    (99.5 % precision audited 100 times), which is where the precision of automatic decisions lives; the
    corrected one keeps at least its 95 % there (``tests/test_evaluation.py`` measures both).
    ``(nan, nan)`` when ``n`` is 0.  Never outside [0, 1], unlike the normal ("Wald") interval.
    """
    if not n > 0:
        return NAN, NAN
    p = min(max(k / n, 0.0), 1.0)
    z2 = z * z
    if not correction:
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        lo, hi = centre - half, centre + half
    else:
        denominator = 2 * (n + z2)
        lo = (2 * n * p + z2 - 1 - z * math.sqrt(max(z2 - 2 - 1 / n + 4 * p * (n * (1 - p) + 1), 0.0))) / denominator
        hi = (2 * n * p + z2 + 1 + z * math.sqrt(max(z2 + 2 - 1 / n + 4 * p * (n * (1 - p) - 1), 0.0))) / denominator
    lo = 0.0 if p <= 0 else min(max(lo, 0.0), p)
    hi = 1.0 if p >= 1 else max(min(hi, 1.0), p)
    return lo, hi


@dataclasses.dataclass(frozen=True)
class Proportion:
    """A share estimated from a (weighted) sample: ``n`` items, ``k`` of them successes, ``estimate`` in
    [0, 1] (NaN without items), ``ci95`` its interval, ``n_eff`` the effective sample size behind it."""

    n: int
    k: int
    estimate: float
    ci95: tuple[float, float]
    n_eff: float

    @property
    def defined(self) -> bool:
        return self.n > 0

    def complement(self) -> Proportion:
        """The share of the other outcome (an error rate from a precision), with the mirrored interval."""
        lo, hi = self.ci95
        return Proportion(self.n, self.n - self.k, 1.0 - self.estimate, (1.0 - hi, 1.0 - lo), self.n_eff)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "k": self.k, "estimate": _finite(self.estimate),
                "ci95": [_finite(self.ci95[0]), _finite(self.ci95[1])] if self.defined else None,
                "n_eff": round(self.n_eff, 2)}


def proportion(success: Any, weights: Any = None, z: float = Z95, *, correction: bool = True) -> Proportion:
    """The share of ``success`` (booleans) in a sample, each item weighted by ``weights`` (default 1).

    Weights are inverse sampling probabilities: an item audited at a rate of 1 % stands for 100
    automatic decisions.  The estimate is Hájek's ``sum(w * success) / sum(w)``; the interval is
    :func:`wilson` at that estimate with the Kish effective sample size ``(sum w)^2 / sum w^2``, which is
    ``n`` when the weights are equal (the sampling rate did not change), so the interval is then exactly
    :func:`wilson`'s on the counts.  Non-positive or non-finite weights are refused (ValueError).
    """
    s = np.asarray(success, dtype=bool).reshape(-1)
    n = int(s.size)
    if weights is None:
        w = np.ones(n, dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != n:
            raise ValueError(f"success and weights must have the same length ({n}, {w.size})")
        if n and (not np.isfinite(w).all() or (w <= 0).any()):
            raise ValueError("weights must be positive and finite")
    k = int(s.sum())
    if n == 0:
        return Proportion(0, 0, NAN, (NAN, NAN), 0.0)
    total = float(w.sum())
    estimate = float((w * s).sum() / total)
    n_eff = total * total / float((w * w).sum())
    lo, hi = wilson(estimate * n_eff, n_eff, z, correction=correction)
    if k == 0:
        lo = 0.0
    if k == n:
        hi = 1.0
    return Proportion(n, k, estimate, (lo, hi), n_eff)


# ---------------------------------------------------------------- agreement


@dataclasses.dataclass(frozen=True)
class Kappa:
    """Cohen's kappa of two raters over ``n`` items: observed agreement ``po``, chance agreement ``pe``,
    ``kappa`` (NaN when undefined: no items, or chance agreement 1) and an approximate 95 % interval."""

    n: int
    po: float
    pe: float
    kappa: float
    ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "observed_agreement": _finite(self.po), "chance_agreement": _finite(self.pe),
                "kappa": _finite(self.kappa),
                "ci95": [_finite(self.ci95[0]), _finite(self.ci95[1])] if math.isfinite(self.kappa) else None}


def cohen_kappa(a: Sequence[str], b: Sequence[str], categories: Iterable[str] | None = None,
                z: float = Z95) -> Kappa:
    """Cohen's kappa of the paired labels ``a[i]``, ``b[i]``: (po - pe) / (1 - pe).

    The interval uses the large-sample standard error ``sqrt(po (1 - po) / (n (1 - pe)^2))``, clipped to
    [-1, 1]; with few items it is wide, as it should be.  Undefined (NaN) without items or when both raters
    used one category only (pe = 1).
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must have the same length ({len(a)}, {len(b)})")
    n = len(a)
    if n == 0:
        return Kappa(0, NAN, NAN, NAN, (NAN, NAN))
    cats = sorted(set(a) | set(b) | set(categories or ()))
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)), dtype=np.float64)
    for x, y in zip(a, b, strict=True):
        table[index[x], index[y]] += 1
    table /= n
    po = float(np.trace(table))
    pe = float((table.sum(axis=1) * table.sum(axis=0)).sum())
    if pe >= 1.0 - 1e-12:
        return Kappa(n, po, pe, NAN, (NAN, NAN))
    kappa = (po - pe) / (1.0 - pe)
    se = math.sqrt(max(po * (1.0 - po), 0.0) / (n * (1.0 - pe) ** 2))
    return Kappa(n, po, pe, kappa, (max(-1.0, kappa - z * se), min(1.0, kappa + z * se)))


def class_kappas(a: Sequence[str], b: Sequence[str], classes: Iterable[str]) -> dict[str, Kappa]:
    """Per class, the kappa of "is this class" against "is another": where two reviewers disagree most."""
    return {c: cohen_kappa(["yes" if x == c else "no" for x in a], ["yes" if y == c else "no" for y in b])
            for c in classes}


# ---------------------------------------------------------------- drift


def score_histogram(scores: Any, bins: int = SCORE_BINS) -> np.ndarray:
    """Counts of ``scores`` in ``bins`` equal bins over [0, 1] (1.0 falls in the last one)."""
    x = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
    idx = np.minimum((x * bins).astype(np.int64), bins - 1)
    return np.bincount(idx, minlength=bins).astype(np.int64)


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    shares = counts / total if total > 0 else np.zeros_like(counts, dtype=np.float64)
    shares = np.maximum(shares, PSI_EPSILON)
    return np.asarray(shares / shares.sum(), dtype=np.float64)


def psi(expected: Any, actual: Any) -> float:
    """The population stability index of the histogram ``actual`` against ``expected`` (same bins):
    sum over bins of (a - e) ln(a / e) on the shares, empty bins counted as :data:`PSI_EPSILON`.
    NaN when either histogram is empty.  Read as: < 0.1 stable, 0.1-0.25 a shift worth watching,
    > 0.25 a shift that changes what the thresholds do."""
    e = np.asarray(expected, dtype=np.float64).reshape(-1)
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    if e.shape != a.shape:
        raise ValueError(f"the histograms have different bins ({e.size}, {a.size})")
    if e.sum() <= 0 or a.sum() <= 0:
        return NAN
    pe, pa = _shares(e), _shares(a)
    return float(((pa - pe) * np.log(pa / pe)).sum())


def psi_interval(expected: Any, actual: Any, reps: int = 200, seed: int = 0, *, expected_n: float | None = None,
                 actual_n: float | None = None) -> tuple[float, float]:
    """A 95 % bootstrap interval of :func:`psi`: both histograms redrawn (multinomial) ``reps`` times, each
    at its size (``expected_n`` / ``actual_n`` when the counts are weighted: their effective sizes).  Small
    samples give a PSI above 0 by chance alone; the interval shows how much."""
    e = np.asarray(expected, dtype=np.float64).reshape(-1)
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    if e.sum() <= 0 or a.sum() <= 0:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    pe, pa = e / e.sum(), a / a.sum()
    ne = max(1, int(round(expected_n if expected_n else e.sum())))
    na = max(1, int(round(actual_n if actual_n else a.sum())))
    draws = [psi(rng.multinomial(ne, pe), rng.multinomial(na, pa)) for _ in range(reps)]
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(lo), float(hi)


def psi_level(value: float) -> str:
    """``stable``, ``watch`` or ``act`` for a PSI (``unknown`` for NaN)."""
    if not math.isfinite(value):
        return "unknown"
    return "stable" if value < PSI_WATCH else "watch" if value < PSI_ACT else "act"


def histograms_by_class(scores: Sequence[Mapping[str, float]], classes: Iterable[str], weights: Any = None,
                        bins: int = SCORE_BINS) -> dict[str, list[float]]:
    """Per class, the :func:`score_histogram` of its scores (a labelled set's, saved with the thresholds);
    with ``weights``, each image counts its weight (rounded to 0.01)."""
    out: dict[str, list[float]] = {}
    for c in classes:
        x = np.clip(np.asarray([float(s[c]) for s in scores], dtype=np.float64), 0.0, 1.0)
        idx = np.minimum((x * bins).astype(np.int64), bins - 1)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        out[c] = [round(float(v), 2) for v in np.bincount(idx, weights=w, minlength=bins)]
    return out


def effective_size(weights: Any) -> float:
    """Kish's effective sample size of weights: ``(sum w)^2 / sum w^2`` (the count when they are equal)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    return float(w.sum() ** 2 / (w * w).sum()) if w.size and (w * w).sum() > 0 else 0.0


# ---------------------------------------------------------------- sample sizes


def audits_needed(margin: float, expected: float = 0.95, z: float = Z95) -> int:
    """Items to audit for a 95 % interval of about +-``margin`` around a share near ``expected``."""
    p = min(max(expected, 0.01), 0.99)
    return int(math.ceil(z * z * p * (1 - p) / (margin * margin)))
