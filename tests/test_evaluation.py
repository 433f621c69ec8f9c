"""The estimators of the production evaluation (issue 25) against simulation and known values.

- The precision of automatic verdicts is estimated from audit items drawn by the production sampler
  (:class:`AuditPolicy`) out of simulated traffic with a known true error rate: over 200 simulated runs
  per scenario, the 95 % interval holds the truth in at least 93 % of them, for constant and changing
  sampling rates, precisions near 1 and small samples.  The normal ("Wald") interval fails the same check
  (so the check can fail).
- The calibration maths weighted by the inverse queueing probabilities recovers the ROC of the whole
  simulated production from the queue's sample (unknowns all, automatic verdicts at 2 % and 0.5 %), which
  the unweighted sample does not.
- Weights of one change nothing; Cohen's kappa and the PSI on known values.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from nsfw_core.base.settings import SettingsError, load_settings
from nsfw_core.calibration import maths as cal
from nsfw_core.calibration.evaluation import (
    Z95,
    audits_needed,
    class_kappas,
    cohen_kappa,
    effective_size,
    histograms_by_class,
    proportion,
    psi,
    psi_interval,
    psi_level,
    score_histogram,
    wilson,
)
from nsfw_core.state.review.audit import AuditPolicy

RUNS = 200


# ---------------------------------------------------------------- coverage of the precision's interval


def simulate_audits(precision: float, decisions: int, rates: tuple[float, float], seed: int,
                    runs: int = RUNS, interval=None) -> tuple[float, float]:
    """(share of runs whose interval holds ``precision``, mean audited items per run).

    Each run: ``decisions`` automatic "adult" verdicts, each truly adult with probability ``precision``; the
    first half sampled for audit at ``rates[0]``, the second at ``rates[1]`` (the production sampler's rule,
    :meth:`AuditPolicy.sample`: a draw below the rate, vectorised here); the audited items' correctness,
    weighted by 1 / rate, goes through :func:`proportion`.
    """
    rng = np.random.default_rng(seed)
    first, second = AuditPolicy({"adult": rates[0]}), AuditPolicy({"adult": rates[1]})
    rate = np.where(np.arange(decisions) < decisions // 2, first.rate("adult"), second.rate("adult"))
    held, audited = 0, 0
    for _ in range(runs):
        correct = rng.random(decisions) < precision
        picked = rng.random(decisions) < rate
        audited += int(picked.sum())
        lo, hi = (interval or (lambda s, w: proportion(s, w).ci95))(correct[picked], 1.0 / rate[picked])
        held += bool(picked.any()) and lo <= precision <= hi
    return held / runs, audited / runs


SCENARIOS = {
    "97 % precision, 1 % audited (200 a run)": (0.97, 20_000, (0.01, 0.01)),
    "99.5 % precision, 0.2 % audited (100 a run, 0.5 wrong expected)": (0.995, 50_000, (0.002, 0.002)),
    "90 % precision, audit rate raised from 1 % to 3 % mid-window": (0.90, 10_000, (0.01, 0.03)),
    "98 % precision, 50 audited a run": (0.98, 5_000, (0.01, 0.01)),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_interval_holds_a_known_error_rate_in_at_least_93_percent_of_200_runs(name):
    precision, decisions, rates = SCENARIOS[name]
    coverage, audited = simulate_audits(precision, decisions, rates, seed=zlib.crc32(name.encode()))
    assert audited > 40  # a real audit each run
    assert coverage >= 0.93, f"{name}: the interval held the truth in {coverage:.1%} of {RUNS} runs"


def wald(success, weights):
    s = np.asarray(success, dtype=float)
    if not len(s):
        return math.nan, math.nan
    p = s.mean()
    half = Z95 * math.sqrt(p * (1 - p) / len(s))
    return p - half, p + half


def test_the_normal_interval_fails_the_same_check_near_100_percent():
    precision, decisions, rates = SCENARIOS["99.5 % precision, 0.2 % audited (100 a run, 0.5 wrong expected)"]
    coverage, _ = simulate_audits(precision, decisions, rates, seed=7, interval=wald)
    assert coverage < 0.93  # with no overturned item in a run it is [1, 1]: the check does catch a bad interval
    corrected, _ = simulate_audits(precision, decisions, rates, seed=7)
    assert corrected >= 0.93


def test_wilson_on_known_values():
    assert all(math.isnan(x) for x in wilson(0, 0))
    lo, hi = wilson(10, 10)
    assert hi == 1.0 and 0.6 < lo < 0.75  # continuity-corrected: 0.6554
    lo, hi = wilson(50, 100, correction=False)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)  # the textbook value
    lo_c, hi_c = wilson(50, 100)
    assert lo_c < lo and hi_c > hi  # the correction widens it
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0 < hi < 0.25


def test_proportion_weights_and_refusals():
    equal = proportion([True, True, False, True])
    assert (equal.n, equal.k, equal.estimate, equal.n_eff) == (4, 3, 0.75, 4.0)
    assert equal.ci95 == wilson(3, 4)
    # an item sampled at half the rate counts twice: the estimate moves, the effective sample shrinks
    weighted = proportion([True, False], [1.0, 3.0])
    assert weighted.estimate == pytest.approx(0.25) and weighted.n_eff == pytest.approx(1.6)
    assert proportion([]).defined is False and math.isnan(proportion([]).estimate)
    assert proportion([True, True], [1.0, 1.0]).ci95[1] == 1.0
    for bad in ([0.0, 1.0], [-1.0, 1.0], [math.inf, 1.0], [1.0]):
        with pytest.raises(ValueError):
            proportion([True, False], bad)
    error = weighted.complement()
    assert error.estimate == pytest.approx(0.75) and error.ci95 == pytest.approx((1 - weighted.ci95[1],
                                                                                   1 - weighted.ci95[0]))
    assert audits_needed(0.05) == 73  # 1.96^2 * 0.95 * 0.05 / 0.05^2


# ---------------------------------------------------------------- weighted calibration recovers production


def production(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(adult score, safe score, truth) of simulated traffic: 10 % adult, scores from two Beta laws (AUC 0.988)."""
    y = (rng.random(n) < 0.10).astype(int)
    a = np.where(y == 1, rng.beta(4, 1.5, n), rng.beta(1.2, 6, n))
    return a, 1.0 - a, y


def queue_sample(a: np.ndarray, s: np.ndarray, rng: np.random.Generator, t_adult: float = 0.8,
                 t_safe: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """What reaches the review queue: every "unknown" (probability 1), automatic adult audited at 2 %,
    automatic safe at 0.5 %; (indices, probability that queued each)."""
    verdict = cal.verdicts(a, s, t_adult, t_safe)
    policy = AuditPolicy({"adult": 0.02, "safe": 0.005}, rand=rng.random)
    picked, probability = [], []
    for i, v in enumerate(verdict):
        p = 1.0 if v == "unknown" else policy.sample(v)
        if p is not None:
            picked.append(i)
            probability.append(p)
    return np.asarray(picked), np.asarray(probability)


def operating_point(curve: cal.RocCurve, threshold: float) -> tuple[float, float]:
    """(fpr, tpr) of "adult score at or above ``threshold``" on a curve."""
    i = int(np.searchsorted(-curve.thresholds, -threshold, side="right")) - 1
    return float(curve.fpr[i]), float(curve.tpr[i])


def test_the_weighted_calibration_recovers_the_roc_of_production():
    rng = np.random.default_rng(20261207)
    auc_weighted, auc_raw, point_weighted, point_raw = [], [], [], []
    for _ in range(10):
        a, s, y = production(100_000, rng)
        truth = cal.roc_curve(a, y)
        idx, prob = queue_sample(a, s, rng)
        assert len(idx) < 0.4 * len(a)  # the queue sees a small, biased part of production
        weighted = cal.roc_curve(a[idx], y[idx], weights=1.0 / prob)
        raw = cal.roc_curve(a[idx], y[idx])
        auc_weighted.append(abs(weighted.auc - truth.auc))
        auc_raw.append(abs(raw.auc - truth.auc))
        for t in (0.3, 0.5, 0.7):
            (f0, t0), (f1, t1), (f2, t2) = (operating_point(c, t) for c in (truth, weighted, raw))
            point_weighted.append((abs(f1 - f0), abs(t1 - t0)))
            point_raw.append((abs(f2 - f0), abs(t2 - t0)))
    assert max(auc_weighted) < 0.005, auc_weighted
    assert max(f for f, _ in point_weighted) < 0.025 and max(t for _, t in point_weighted) < 0.05, point_weighted
    # unweighted, the sample is mostly the uncertain band: another curve (its FPR at 0.3 about 0.47, not 0.16)
    assert min(auc_raw) > 0.03, auc_raw
    assert max(f for f, _ in point_raw) > 0.2 and max(t for _, t in point_raw) > 0.15


def test_weighted_metrics_and_suggestion_estimate_production():
    rng = np.random.default_rng(3)
    a, s, y = production(200_000, rng)
    idx, prob = queue_sample(a, s, rng)
    w = 1.0 / prob
    for t_adult, t_safe in ((0.8, 0.8), (0.6, 0.9)):
        truth = cal.decision_metrics(a, s, y, t_adult, t_safe)
        est = cal.decision_metrics(a[idx], s[idx], y[idx], t_adult, t_safe, weights=w)
        assert est.review_share == pytest.approx(truth.review_share, abs=0.02)
        assert est.adult_precision == pytest.approx(truth.adult_precision, abs=0.03)
        assert est.n == pytest.approx(truth.n, rel=0.03)  # the weights add up to production's size
        raw = cal.decision_metrics(a[idx], s[idx], y[idx], t_adult, t_safe)
        assert abs(raw.review_share - truth.review_share) > 0.2
    a, s, y = a[:20_000], s[:20_000], y[:20_000]  # the suggestion tries every threshold: a smaller production
    idx, prob = queue_sample(a, s, rng)
    sug_truth = cal.suggest_thresholds(a, s, y, 0.95, 0.99, max_candidates=300)
    sug = cal.suggest_thresholds(a[idx], s[idx], y[idx], 0.95, 0.99, weights=1.0 / prob, max_candidates=300)
    assert sug.status == sug_truth.status == "ok"
    assert sug.review_share == pytest.approx(sug_truth.review_share, abs=0.03)
    assert "about" in sug.message  # counts are estimates, and say so


def test_weights_of_one_change_nothing():
    rng = np.random.default_rng(1)
    a, s, y = production(500, rng)
    ones = np.ones(len(a))
    plain, weighted = cal.decision_metrics(a, s, y, 0.7, 0.9), cal.decision_metrics(a, s, y, 0.7, 0.9, weights=ones)
    assert plain.to_dict() == weighted.to_dict()
    assert cal.sweep(a, s, y, 0.7, 0.9).equals(cal.sweep(a, s, y, 0.7, 0.9, weights=ones).astype(
        cal.sweep(a, s, y, 0.7, 0.9).dtypes.to_dict()))
    r1, r2 = cal.roc_curve(a, y), cal.roc_curve(a, y, weights=ones)
    assert r1.auc == pytest.approx(r2.auc) and np.allclose(r1.tpr, r2.tpr)
    p1, p2 = cal.pr_curve(a, y), cal.pr_curve(a, y, weights=ones)
    assert p1.average_precision == pytest.approx(p2.average_precision)
    s1, s2 = cal.suggest_thresholds(a, s, y), cal.suggest_thresholds(a, s, y, weights=ones)
    assert (s1.t_adult, s1.t_safe, s1.review_n) == (s2.t_adult, s2.t_safe, s2.review_n)
    df = cal.score_frame([{"porn": x, "sexy": 0.0, "hentai": 0.0, "neutral": 1 - x, "drawings": 0.0} for x in a],
                         list(y))
    table = cal.verdict_table(df, (0.7, 0.9))
    df["weight"] = 2.0
    doubled = cal.verdict_table(df, (0.7, 0.9))
    assert (doubled["count"] == 2 * table["count"]).all()
    assert np.allclose(doubled["share_of_truth"].fillna(-1), table["share_of_truth"].fillna(-1))
    with pytest.raises(ValueError):
        cal.decision_metrics(a, s, y, 0.7, 0.9, weights=np.zeros(len(a)))


# ---------------------------------------------------------------- agreement


def test_cohen_kappa_on_a_known_table():
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15: po 0.7, pe 0.5, kappa 0.4 (the textbook example)
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    k = cohen_kappa(a, b)
    assert k.n == 50 and k.po == pytest.approx(0.7) and k.pe == pytest.approx(0.5)
    assert k.kappa == pytest.approx(0.4)
    assert k.ci95[0] < 0.4 < k.ci95[1] and k.ci95[1] - k.ci95[0] < 0.6
    assert cohen_kappa(["adult"] * 5, ["adult"] * 5).to_dict()["kappa"] is None  # one category: undefined
    assert cohen_kappa(["adult", "safe"], ["adult", "safe"]).kappa == 1.0
    per_class = class_kappas(["porn", "sexy", "neutral", "porn"], ["porn", "porn", "neutral", "porn"],
                             ["porn", "sexy", "neutral"])
    assert per_class["neutral"].kappa == 1.0 and per_class["porn"].kappa < 1.0
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])


# ---------------------------------------------------------------- drift


def test_psi_on_known_histograms():
    same = [10, 20, 30, 40]
    assert psi(same, [1, 2, 3, 4]) == pytest.approx(0.0)
    # shares 0.5/0.5 against 0.9/0.1: (0.4 ln 1.8) + (-0.4 ln 0.2) = 0.8789
    assert psi([50, 50], [90, 10]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5), abs=1e-3)
    assert math.isnan(psi([0, 0], [1, 1]))
    assert psi_level(0.05) == "stable" and psi_level(0.2) == "watch" and psi_level(0.3) == "act"
    assert psi_level(math.nan) == "unknown"
    lo, hi = psi_interval([500, 500], [450, 550])
    assert 0 <= lo <= psi([500, 500], [450, 550]) <= hi < 0.1
    rng = np.random.default_rng(0)
    base = score_histogram(rng.beta(1, 8, 5000))
    moved = score_histogram(rng.beta(1, 4, 5000))
    assert base.sum() == 5000 and psi(base, moved) > 0.1
    assert score_histogram([0.0, 0.05, 0.999, 1.0]).tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert histograms_by_class([{"porn": 1.0}, {"porn": 0.0}], ["porn"], [2.0, 1.0])["porn"][9] == 2.0
    assert effective_size([1.0, 1.0, 1.0]) == pytest.approx(3.0)


# ---------------------------------------------------------------- the sampler and its settings


def test_the_audit_policy_samples_at_its_rates():
    rng = np.random.default_rng(5)
    policy = AuditPolicy({"adult": 0.2, "safe": 0.0}, double_rate=0.5, rand=rng.random)
    picks = [policy.sample("adult") for _ in range(10_000)]
    assert {p for p in picks if p is not None} == {0.2}
    assert 0.18 < sum(p is not None for p in picks) / 10_000 < 0.22
    assert all(policy.sample(v) is None for v in ("safe", "unknown") for _ in range(100))
    reviews = [policy.reviews() for _ in range(1000)]
    assert set(reviews) == {1, 2} and 400 < reviews.count(2) < 600
    assert policy.describe() == "adult 20 %, safe 0 %" and AuditPolicy({}).describe() == "off"


@pytest.mark.parametrize("raw,expected", [
    ("", {"adult": 0.0, "safe": 0.0}),
    ("0.01", {"adult": 0.01, "safe": 0.01}),
    ("adult=0.02,safe=0.005", {"adult": 0.02, "safe": 0.005}),
    ("safe=0.5", {"adult": 0.0, "safe": 0.5}),
])
def test_the_audit_rate_setting(raw, expected):
    assert dict(load_settings(environ={"NSFW_AUDIT_RATE": raw}).audit_rate) == expected


def test_the_default_audit_rate_is_on_and_small():
    rates = dict(load_settings(environ={}).review_config.audit_rates)
    assert 0 < rates["adult"] <= 0.05 and 0 < rates["safe"] <= 0.05


@pytest.mark.parametrize("raw", ["unknown=0.1", "adult=2", "adult=x", "-0.1", "adult"])
def test_bad_audit_rates_are_refused_naming_the_variable(raw):
    with pytest.raises(SettingsError, match="NSFW_AUDIT_RATE"):
        load_settings(environ={"NSFW_AUDIT_RATE": raw})


def test_reviewer_keys_must_be_long_and_are_secret():
    with pytest.raises(SettingsError, match="NSFW_REVIEWER_API_KEYS=<secret>"):
        load_settings(environ={"NSFW_REVIEWER_API_KEYS": "short"})
    settings = load_settings(environ={"NSFW_REVIEWER_API_KEYS": "r" * 16, "NSFW_ADMIN_API_KEYS": "a" * 16})
    assert settings.reviewer_keys.configured and "rrrr" not in repr(settings) and "aaaa" not in repr(settings)
