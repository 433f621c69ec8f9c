"""Calibration maths against hand-computed expectations.

The main table (8 images) used throughout, adult score / safe score / truth:

    idx  adult  safe  truth
     0   0.95   0.05  adult
     1   0.80   0.20  adult   <- tied with 2 on the adult score
     2   0.80   0.15  safe
     3   0.40   0.60  adult
     4   0.10   0.90  safe    <- tied with 7 on the adult score
     5   0.05   0.95  safe
     6   0.30   0.70  safe
     7   0.10   0.85  adult

4 adult (0, 1, 3, 7), 4 safe (2, 4, 5, 6).
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pandas as pd
import pytest

from nsfw_core.base.settings import CLASS_NAMES
from nsfw_core.base.verdict import Thresholds
from nsfw_core.calibration import labelsets
from nsfw_core.calibration import maths as cal

A = [0.95, 0.80, 0.80, 0.40, 0.10, 0.05, 0.30, 0.10]
S = [0.05, 0.20, 0.15, 0.60, 0.90, 0.95, 0.70, 0.85]
Y = [1, 1, 0, 1, 0, 0, 0, 1]


def frame(a=A, s=S, y=Y) -> pd.DataFrame:
    return pd.DataFrame({"adult_score": a, "safe_score": s, "truth": y})


def nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


# ---------------------------------------------------------------- the rule


def test_verdicts_at_exact_threshold_values():
    # T_adult = 0.80: 0 (0.95), 1 and 2 (0.80, "at or above") are adult.
    # Others by safe score >= 0.85: 4 (0.90), 5 (0.95), 7 (0.85 exactly) safe; 3 (0.60), 6 (0.70) unknown.
    v = cal.verdicts(A, S, 0.80, 0.85)
    assert list(v) == ["adult", "adult", "adult", "unknown", "safe", "safe", "unknown", "safe"]
    # Just above 0.80, items 1 and 2 fall through to the safe check (0.20, 0.15 < 0.85) -> unknown.
    v = cal.verdicts(A, S, 0.8000001, 0.85)
    assert list(v) == ["adult", "unknown", "unknown", "unknown", "safe", "safe", "unknown", "safe"]


def test_adult_is_checked_first():
    # adult 0.9 >= 0.7 wins although safe 0.95 >= 0.9 as well.
    assert list(cal.verdicts([0.9], [0.95], 0.7, 0.9)) == ["adult"]


def test_float_sums_land_on_the_threshold_like_the_api():
    # neutral 0.6 + drawings 0.3 = 0.8999999999999999 in binary floats: still "at or above" 0.9.
    scores = {"drawings": 0.3, "hentai": 0.0, "neutral": 0.6, "porn": 0.05, "sexy": 0.05}
    df = cal.score_frame([scores], ["safe"])
    assert df["safe_score"][0] < 0.9  # the float sum really is below
    assert Thresholds(adult=0.7, safe=0.9).decide(scores) == "safe"
    assert list(cal.verdicts(df["adult_score"], df["safe_score"], 0.7, 0.9)) == ["safe"]


def test_verdicts_match_thresholds_decide_on_random_scores():
    rng = random.Random(3)
    for _ in range(300):
        raw = [rng.choice([0, 1, 2, 3, 5, 10]) for _ in CLASS_NAMES]
        total = sum(raw) or 1
        scores = {c: r / total for c, r in zip(CLASS_NAMES, raw, strict=True)}
        adult_classes = tuple(rng.sample(CLASS_NAMES, rng.randint(1, 3)))
        safe_classes = tuple(rng.sample(CLASS_NAMES, rng.randint(1, 3)))
        t = Thresholds(adult=rng.choice([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]),
                       safe=rng.choice([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]),
                       adult_classes=adult_classes, safe_classes=safe_classes)
        df = cal.score_frame([scores], [1], adult_classes, safe_classes)
        assert cal.verdicts(df["adult_score"], df["safe_score"], t.adult, t.safe)[0] == t.decide(scores)


# ---------------------------------------------------------------- verdict x truth


def test_verdict_table_counts_and_rates():
    t = cal.verdict_table(frame(), Thresholds(adult=0.80, safe=0.85))
    got = {(r.verdict, r.truth): (r.count, r.share_of_truth, r.share_of_verdict) for r in t.itertuples()}
    # verdict adult: truly adult {0, 1} = 2, truly safe {2} = 1  -> 3 adult verdicts
    # verdict unknown: adult {3} = 1, safe {6} = 1               -> 2
    # verdict safe: adult {7} = 1, safe {4, 5} = 2               -> 3
    # share_of_truth = count / 4 (4 adult, 4 safe); share_of_verdict = count / verdict total
    assert got[("adult", "adult")] == (2, 2 / 4, 2 / 3)
    assert got[("adult", "safe")] == (1, 1 / 4, 1 / 3)
    assert got[("unknown", "adult")] == (1, 1 / 4, 1 / 2)
    assert got[("unknown", "safe")] == (1, 1 / 4, 1 / 2)
    assert got[("safe", "adult")] == (1, 1 / 4, 1 / 3)
    assert got[("safe", "safe")] == (2, 2 / 4, 2 / 3)
    assert list(t["verdict"]) == ["adult", "adult", "unknown", "unknown", "safe", "safe"]
    assert t["count"].sum() == 8


def test_verdict_table_accepts_a_tuple_and_leaves_empty_classes_nan():
    # Only safe images: 0.1/0.9 -> safe; 0.8/0.1 -> adult (false adult).
    t = cal.verdict_table(frame([0.1, 0.8], [0.9, 0.1], [0, 0]), (0.7, 0.9))
    row = t[(t.verdict == "adult") & (t.truth == "adult")].iloc[0]
    assert row["count"] == 0 and nan(row["share_of_truth"])  # 0 adult images: 0/0
    assert row["share_of_verdict"] == 0.0  # 1 adult verdict, 0 of them adult
    row = t[(t.verdict == "unknown") & (t.truth == "safe")].iloc[0]
    assert row["count"] == 0 and row["share_of_truth"] == 0.0 and nan(row["share_of_verdict"])  # no unknown verdicts


# ---------------------------------------------------------------- decision metrics


def test_decision_metrics_by_hand():
    m = cal.decision_metrics(A, S, Y, 0.80, 0.85)
    assert (m.n, m.n_adult, m.n_safe) == (8, 4, 4)
    assert (m.adult_decisions, m.adult_correct) == (3, 2)  # items 0, 1, 2; item 2 is safe
    assert m.adult_precision == pytest.approx(2 / 3)
    assert (m.safe_decisions, m.safe_correct) == (3, 2)  # items 4, 5, 7; item 7 is adult
    assert m.safe_precision == pytest.approx(2 / 3)
    assert m.review_n == 2 and m.review_share == 2 / 8  # items 3, 6
    assert m.adult_recall == 2 / 4  # 0 and 1 of the 4 adult images
    assert m.missed_adult == 1 and m.false_adult == 1  # item 7 let through, item 2 blocked
    assert m.reasons == {} and m.notes == []


def test_decision_metrics_no_adult_decisions_is_undefined_not_zero():
    # T_adult = 1.0: nobody reaches it. T_safe = 0.85 -> 4 (S), 5 (S), 7 (A) safe: 2/3.
    m = cal.decision_metrics(A, S, Y, 1.0, 0.85)
    assert m.adult_decisions == 0 and nan(m.adult_precision)
    assert "no automatic adult decisions" in m.reasons["adult_precision"]
    assert m.safe_precision == pytest.approx(2 / 3)
    assert m.review_n == 5
    d = m.to_dict()
    assert d["adult_precision"] is None and d["safe_precision"] == pytest.approx(2 / 3)


def test_decision_metrics_without_adult_samples():
    # 3 safe images: adult 0.9 -> adult (wrong); 0.1/0.95 and 0.2/0.92 -> safe.
    m = cal.decision_metrics([0.9, 0.1, 0.2], [0.1, 0.95, 0.92], [0, 0, 0], 0.7, 0.9)
    assert m.adult_precision == 0.0  # defined: 0 of 1 adult decisions are adult
    assert m.safe_precision == 1.0  # trivially
    assert nan(m.adult_recall) and "no adult samples" in m.reasons["adult_recall"]
    assert any("no adult samples" in note for note in m.notes)
    assert m.false_adult == 1 and m.missed_adult == 0


def test_decision_metrics_all_adult_and_empty():
    m = cal.decision_metrics([0.9, 0.3], [0.1, 0.7], [1, 1], 0.7, 0.6)
    # 0.9 -> adult (right); 0.3/0.7 -> safe (wrong): safe precision 0/1, adult precision 1/1
    assert (m.adult_precision, m.safe_precision, m.adult_recall) == (1.0, 0.0, 0.5)
    assert any("no safe samples" in note for note in m.notes)
    e = cal.decision_metrics([], [], [], 0.7, 0.9)
    assert e.n == 0 and nan(e.review_share) and nan(e.adult_precision) and nan(e.safe_precision)
    assert e.reasons["review_share"] == "the set is empty"


def test_truth_accepts_labels_and_rejects_others():
    assert list(cal.as_truth(["adult", "safe", 1, 0, True])) == [1, 0, 1, 0, 1]
    with pytest.raises(ValueError):
        cal.as_truth(["porn"])
    with pytest.raises(ValueError):
        cal.as_truth([2])
    with pytest.raises(ValueError):
        cal.decision_metrics([0.1], [0.2, 0.3], [0], 0.5, 0.5)


# ---------------------------------------------------------------- sweep


def test_sweep_rows_by_hand():
    sw = cal.sweep(A, S, Y, 0.805, 0.85, grid=[0.0, 0.5, 0.8, 1.0])
    ta = sw[sw.moving == "T_adult"].set_index("threshold")
    # The current T_adult (0.805, off the grid) is added: 4 thresholds + 1.
    assert list(ta.index) == [0.0, 0.5, 0.8, 0.805, 1.0]
    # T_adult = 0.8 (T_safe 0.85): adult {0,1,2} 2/3; safe {4,5,7}; review {3,6} = 2/8.
    assert ta.loc[0.8, "precision"] == pytest.approx(2 / 3) and ta.loc[0.8, "review_share"] == 0.25
    # T_adult = 0.805: adult {0} 1/1; items 1, 2 join review: {1,2,3,6} = 4/8.
    assert ta.loc[0.805, "precision"] == 1.0 and ta.loc[0.805, "review_n"] == 4
    # T_adult = 1.0: no adult decisions (NaN); safe {4,5,7}; review 5/8.
    assert nan(ta.loc[1.0, "precision"]) and ta.loc[1.0, "review_share"] == 5 / 8
    # T_adult = 0: everything adult: precision 4/8, nothing to review.
    assert ta.loc[0.0, "precision"] == 0.5 and ta.loc[0.0, "review_n"] == 0
    ts = sw[sw.moving == "T_safe"].set_index("threshold")
    # T_safe moves with T_adult = 0.805 (only item 0 adult). Below it: 1..7.
    # T_safe = 0.5: safe score >= 0.5 among 1..7: 3 (A), 4, 5, 6 (S), 7 (A) -> 3/5 safe precision; review {1, 2} = 2.
    assert ts.loc[0.5, "precision"] == pytest.approx(3 / 5) and ts.loc[0.5, "review_n"] == 2
    # T_safe = 0.85 (current, added): 4, 5 (S), 7 (A) -> 2/3; review 8 - 1 - 3 = 4.
    assert ts.loc[0.85, "precision"] == pytest.approx(2 / 3) and ts.loc[0.85, "review_n"] == 4
    assert ts.loc[0.0, "decisions"] == 7 and ts.loc[0.0, "review_n"] == 0


def test_sweep_matches_decision_metrics_on_the_synthetic_set():
    a, s, y = synthetic()
    sw = cal.sweep(a, s, y, 0.7, 0.9)
    for row in sw.iloc[::17].itertuples():
        m = cal.decision_metrics(a, s, y, row.t_adult, row.t_safe)
        assert m.review_n == row.review_n
        assert np.allclose([m.adult_precision, m.safe_precision], [row.adult_precision, row.safe_precision],
                           equal_nan=True)


# ---------------------------------------------------------------- ROC / PR / AUC


def test_roc_by_hand_with_ties():
    roc = cal.roc_curve(A, Y)
    # Descending distinct adult scores: 0.95 (A) | 0.80 (A, S) | 0.40 (A) | 0.30 (S) | 0.10 (S, A) | 0.05 (S)
    # cumulative TP: 1, 2, 3, 3, 4, 4 of 4; FP: 0, 1, 1, 2, 3, 4 of 4
    assert list(roc.thresholds) == [np.inf, 0.95, 0.80, 0.40, 0.30, 0.10, 0.05]
    assert list(roc.tpr) == [0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0]
    assert list(roc.fpr) == [0, 0.0, 0.25, 0.25, 0.5, 0.75, 1.0]
    # Trapezoids: 0 + .25*(.25+.5)/2 + 0 + .25*.75 + .25*(.75+1)/2 + .25*1
    #           = .09375 + .1875 + .21875 + .25 = 0.75
    assert roc.auc == pytest.approx(0.75)
    # Mann-Whitney with ties 1/2: adult scores {.95, .80, .40, .10} vs safe scores {.80, .10, .05, .30}:
    # .95 beats 4; .80 ties .80 (1/2) beats .10 .05 .30 (3) = 3.5; .40 beats 3; .10 ties .10 (1/2), beats .05 = 1.5
    # (4 + 3.5 + 3 + 1.5) / 16 = 12 / 16 = 0.75
    assert roc.defined and roc.reason is None


def test_auc_equals_mann_whitney_with_many_ties():
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(2, 30))
        y = rng.integers(0, 2, n)
        if y.sum() in (0, n):
            continue
        x = rng.integers(0, 5, n) / 4  # heavy ties
        pos, neg = x[y == 1], x[y == 0]
        mw = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
        assert cal.roc_curve(x, y).auc == pytest.approx(mw, abs=1e-12)


def test_all_tied_scores_give_the_diagonal():
    roc = cal.roc_curve([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert list(roc.fpr) == [0, 1] and list(roc.tpr) == [0, 1] and roc.auc == 0.5


def test_perfect_and_reversed_separation():
    assert cal.roc_curve([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]).auc == 1.0
    assert cal.roc_curve([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]).auc == 0.0


def test_roc_and_pr_undefined_for_missing_classes():
    roc = cal.roc_curve([0.1, 0.2], [0, 0])
    assert not roc.defined and nan(roc.auc) and "no adult samples" in (roc.reason or "")
    roc = cal.roc_curve([0.1, 0.2], ["adult", "adult"])
    assert not roc.defined and "no safe samples" in (roc.reason or "")
    assert "empty" in (cal.roc_curve([], []).reason or "")
    pr = cal.pr_curve([0.1, 0.2], [0, 0])
    assert not pr.defined and nan(pr.average_precision) and "no adult samples" in (pr.reason or "")
    # Only adult samples: PR is defined but trivial (precision 1 everywhere), with a note.
    pr = cal.pr_curve([0.3, 0.3, 0.9], [1, 1, 1])
    assert pr.defined and list(pr.precision) == [1.0, 1.0, 1.0] and list(pr.recall) == [0.0, 1 / 3, 1.0]
    assert pr.average_precision == 1.0 and "no safe samples" in (pr.note or "")


def test_pr_by_hand():
    pr = cal.pr_curve(A, Y)
    # thresholds .95 .80 .40 .30 .10 .05: TP 1 2 3 3 4 4, TP+FP 1 3 4 5 7 8
    assert list(pr.recall) == [0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0]
    assert list(pr.precision) == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5, 4 / 7, 4 / 8])
    # AP = sum (R_k - R_{k-1}) P_k = .25*1 + .25*2/3 + .25*3/4 + 0*3/5 + .25*4/7 + 0*1/2
    #    = (1 + 2/3 + 3/4 + 4/7) / 4 = (84 + 56 + 63 + 48) / 84 / 4 = 251/336
    assert pr.average_precision == pytest.approx(251 / 336)


def test_auc_trapezoid_helper():
    assert cal.auc([0, 0.5, 1], [0, 1, 1]) == pytest.approx(0.75)  # .5*.5/2 + .5*1
    assert nan(cal.auc([0], [1]))


# ---------------------------------------------------------------- suggestion


def test_suggest_99_percent_by_hand():
    sug = cal.suggest_thresholds(A, S, Y, 0.99, 0.99)
    # Adult candidates (descending): .95 -> 1/1 ok; .80 -> 2/3; .40 -> 3/4; .30 -> 3/5; .10 -> 4/7; .05 -> 4/8;
    # plus 1.0 (no adult decisions). The .80 tie cannot be split: both or neither.
    # T_adult = .95: below it 1..7, safe desc .95 S, .90 S, .85 A, .70 S, .60 A, .20 A, .15 S:
    #   precision of prefixes 1, 1, 2/3, ... -> largest at target: 2 images, T_safe = .90; review 8-1-2 = 5.
    # T_adult = 1.0: also item 0 (safe .05) below: same best prefix of 2 -> review 6. So .95 wins.
    assert sug.status == "ok" and sug.ok
    assert (sug.t_adult, sug.t_safe) == (0.95, 0.90)
    assert (sug.adult_decisions, sug.safe_decisions, sug.review_n) == (1, 2, 5)
    assert sug.review_share == 5 / 8 and sug.adult_precision == 1.0 and sug.safe_precision == 1.0


def test_suggest_75_percent_uses_the_rule_order():
    sug = cal.suggest_thresholds(A, S, Y, 0.75, 0.75)
    # Adult candidates meeting 75 %: .95 (1/1) and .40 (3/4 = 0.75, "at or above" the target).
    # T_adult = .40: adult {0,1,2,3} (3/4); below it {4 S .90, 5 S .95, 6 S .70, 7 A .85}:
    #   safe desc .95 S, .90 S, .85 A, .70 S -> 1, 1, 2/3, 3/4: all 4 at T_safe = .70 -> review 0.
    # T_adult = .95: safe desc .95 S .90 S .85 A .70 S .60 A .20 A .15 S -> 1 1 .67 .75 .6 .5 .57:
    #   best 4 at .70 -> review 8-1-4 = 3. So T_adult = .40 wins with nothing to review.
    assert (sug.t_adult, sug.t_safe, sug.review_n) == (0.40, 0.70, 0)
    assert sug.adult_precision == 0.75 and sug.safe_precision == 0.75
    assert sug.t_adult is not None and sug.t_safe is not None
    m = cal.decision_metrics(A, S, Y, sug.t_adult, sug.t_safe)
    assert (m.adult_precision, m.safe_precision, m.review_n) == (0.75, 0.75, 0)


def test_suggest_partial_when_no_adult_threshold_reaches_the_target():
    # idx adult safe truth: 0: .9 .1 S | 1: .2 .8 S | 2: .1 .05 A
    # adult: .9 -> 0/1, .2 -> 0/2, .1 -> 1/3: none reaches 99 % -> T_adult = 1.0.
    # all below: safe desc .8 S (1/1), .1 S (2/2), .05 A (2/3) -> 2 safe decisions at T_safe = .1; review 1.
    sug = cal.suggest_thresholds([0.9, 0.2, 0.1], [0.1, 0.8, 0.05], [0, 0, 1])
    assert sug.status == "partial" and sug.ok
    assert (sug.t_adult, sug.t_safe, sug.review_n) == (1.0, 0.1, 1)
    assert nan(sug.adult_precision) and sug.safe_precision == 1.0
    assert "No adult threshold reaches 99 %" in sug.message


def test_suggest_cannot_reach_target():
    # 0: adult .9 but safe; 1: adult .8, safe .9 but adult. No automatic decision is ever right first.
    sug = cal.suggest_thresholds([0.9, 0.8], [0.1, 0.9], [0, 1])
    assert sug.status == "impossible" and not sug.ok
    assert (sug.t_adult, sug.t_safe, sug.review_n, sug.review_share) == (1.0, 1.0, 2, 1.0)
    assert "Cannot reach the targets" in sug.message


def test_suggest_impossible_when_a_wrong_score_is_exactly_one():
    # A safe image with adult score 1.0 is adult at any T_adult <= 1: no valid pair exists.
    sug = cal.suggest_thresholds([1.0, 0.5], [0.0, 0.5], [0, 1])
    assert sug.status == "impossible" and sug.t_adult is None and "1.0" in sug.message


def test_suggest_undefined_for_one_class_or_empty():
    for truth, word in (([0, 0], "no adult samples"), ([1, 1], "no safe samples")):
        sug = cal.suggest_thresholds([0.1, 0.9], [0.9, 0.1], truth)
        assert sug.status == "undefined" and not sug.ok and sug.t_adult is None and word in sug.message
    assert cal.suggest_thresholds([], [], []).status == "undefined"
    assert cal.suggest_thresholds([], [], []).to_dict()["adult_precision"] is None


def test_suggest_is_optimal_against_brute_force():
    rng = np.random.default_rng(11)
    for trial in range(150):
        n = int(rng.integers(3, 12))
        y = rng.integers(0, 2, n)
        if y.sum() in (0, n):
            continue
        a = rng.integers(0, 10, n) / 10
        s = rng.integers(0, 10, n) / 10
        ta, ts = (0.99, 0.8) if trial % 2 else (0.6, 0.7)
        sug = cal.suggest_thresholds(a, s, y, ta, ts)
        best = None
        for t1, t2 in itertools.product(sorted(set(a) | {1.0}), sorted(set(s) | {1.0})):
            m = cal.decision_metrics(a, s, y, t1, t2)
            if (m.adult_decisions == 0 or m.adult_precision >= ta - 1e-12) and \
               (m.safe_decisions == 0 or m.safe_precision >= ts - 1e-12):
                best = m.review_n if best is None else min(best, m.review_n)
        assert sug.review_n == best
        assert sug.t_adult is not None and sug.t_safe is not None
        m = cal.decision_metrics(a, s, y, sug.t_adult, sug.t_safe)
        assert m.review_n == sug.review_n


def test_suggestion_on_the_synthetic_set_meets_its_targets():
    a, s, y = synthetic()
    sug = cal.suggest_thresholds(a, s, y, 0.95, 0.95)
    assert sug.status == "ok"
    assert sug.t_adult is not None and sug.t_safe is not None
    m = cal.decision_metrics(a, s, y, sug.t_adult, sug.t_safe)
    assert m.adult_precision >= 0.95 and m.safe_precision >= 0.95
    assert m.review_n == sug.review_n and m.adult_precision == sug.adult_precision
    # Moving either threshold one distinct score lower breaks a target or does not help.
    lower_a = a[a < sug.t_adult - 1e-9]
    if lower_a.size:
        m2 = cal.decision_metrics(a, s, y, lower_a.max(), sug.t_safe)
        assert m2.adult_precision < 0.95 or m2.safe_precision < 0.95 or m2.review_n >= m.review_n


# ---------------------------------------------------------------- snapping, samples


def test_snap_threshold():
    scores = [0.84212, 0.842559, 0.9]
    # 0.842 would also admit 0.84212: keep the exact value.
    assert cal.snap_threshold(0.842559, scores, 0.001) == 0.842559
    # 0.8425 admits nothing more (0.84212 < 0.8425).
    assert cal.snap_threshold(0.842559, scores, 0.0001) == 0.8425
    assert cal.snap_threshold(0.9, scores, 0.001) == 0.9  # already on the grid
    assert cal.snap_threshold(0.0, scores, 0.001) == 0.0


def test_review_samples_orders_by_issue():
    out = cal.review_samples(frame(), 0.80, 0.85, margin=0.05)
    # missed adult: 7 (adult, decided safe); false adult: 2; review: 6 (distance min(|.3-.8|, |.7-.85|) = .15)
    # before 3 (min(|.4-.8|, |.6-.85|) = .25);
    # near T_adult: 1 (adult 0.80, distance 0); near T_safe: 4 (0.90, 0.05 from 0.85).
    assert list(out.index) == [7, 2, 6, 3, 1, 4]
    assert list(out["issue"]) == ["missed adult", "false adult", "review", "review", "near T_adult", "near T_safe"]


# ---------------------------------------------------------------- the synthetic set (fake scores, no images)


def synthetic():
    pairs = labelsets.synthetic_set()
    df = cal.score_frame([sc for _, sc in pairs], [it.binary for it, _ in pairs])
    return df["adult_score"].to_numpy(), df["safe_score"].to_numpy(), df["truth"].to_numpy()


def test_synthetic_set_has_both_sides():
    a, s, y = synthetic()
    assert len(y) == 220 and y.sum() == 120  # porn 60 + sexy 40 + hentai 20 adult; neutral 60 + drawings 40 safe
    roc = cal.roc_curve(a, y)
    pos, neg = a[y == 1], a[y == 0]
    mw = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc.auc == pytest.approx(mw) and 0.7 < roc.auc < 1.0
