"""How the automatic decisions fare in production: the evaluation behind ``GET /v1/evaluation`` and the
Evaluate page, estimated from the audit items, the reviewed "unknown" items, the double reviews and the
traffic counts (the estimators are :mod:`nsfw_core.calibration.evaluation`'s).

:func:`evaluate` reads, for a window of time (items by the time they were queued, traffic by UTC day):

- ``automatic``: per automatic verdict (``adult``, ``safe``), the audited items, how many a reviewer
  overturned, the estimated precision with its 95 % interval (each audit item weighted by the inverse of
  the rate that sampled it), the decisions counted per day and so the expected wrong decisions per day;
- ``unknown``: what the items the model left to a person turned out to be (adult share and labels);
- ``wrong_per_day``: the expected wrong automatic decisions per day at the window's traffic, both verdicts;
- ``agreement``: Cohen's kappa of the double-reviewed items (adult/safe, and per class);
- ``daily``: the same per UTC day (the page's charts);
- ``drift``: per class, the PSI of the window's production scores against the histogram saved with the
  thresholds in force (the labelled set they were tuned on);
- ``missing``: for each figure that cannot be given, what is missing and how to get it.  Nothing is
  invented: a figure without data is ``null`` and the reason is here.

:func:`gauges` turns an evaluation into ``/metrics`` gauges; :func:`traffic_per_day` gives the Calibrate
page the production traffic its per-day estimates scale to.
"""

from __future__ import annotations

import collections
import datetime as _dt
import math
from typing import Any, Iterable, Mapping, Sequence

from nsfw_core.base.labels import ADULT, CLASS_NAMES, SAFE, UNKNOWN, to_binary
from nsfw_core.base.verdict import ActiveThresholds
from nsfw_core.calibration.evaluation import (
    PSI_ACT,
    Proportion,
    audits_needed,
    class_kappas,
    cohen_kappa,
    proportion,
    psi,
    psi_interval,
    psi_level,
)
from nsfw_core.state.review import ReviewQueue
from nsfw_core.state.review.audit import (
    AUDIT,
    AUDITED_VERDICTS,
    REVIEW,
    Audited,
    AuditPolicy,
    audited,
    open_counts,
    vote_pairs,
)
from nsfw_core.state.traffic import SCORE_BINS, TrafficCounter, day_of, decisions, histogram

DAY = 86400.0
DEFAULT_DAYS = 28  # the window when none is given
MAX_DAYS = 366
EARLIEST = -62135596800.0  # 0001-01-01T00:00:00Z: the first day a date (and the traffic's day key) can name
MIN_DRIFT_IMAGES = 50  # fewer production images than this: the PSI is shown as not enough data
TARGET_MARGIN = 0.05  # "decide about N audit items for an interval of +-5 points"


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def _num(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def _ci(p: Proportion) -> list[float | None] | None:
    return [_num(p.ci95[0]), _num(p.ci95[1])] if p.defined else None


def _days(since: float, until: float) -> list[str]:
    out, t = [], since
    while t < until:
        out.append(day_of(t))
        t += DAY
    last = day_of(until - 1e-6)
    if not out or out[-1] != last:
        out.append(last)
    return out


def _precision(items: Sequence[Audited], verdict: str) -> Proportion:
    mine = [a for a in items if a.kind == AUDIT and a.verdict == verdict]
    return proportion([to_binary(a.label) == verdict for a in mine], [1.0 / a.probability for a in mine])


class _Traffic:
    """The window's traffic counts: per day, the model's verdicts, and the production score histograms."""

    def __init__(self, rows: Mapping[str, Mapping[str, int]]) -> None:
        self.rows = rows
        self.days = sorted(d for d, counts in rows.items()
                           if any(decisions(counts, v, s) for v in (ADULT, SAFE, UNKNOWN)
                                  for s in ("model", "review", "list")))

    def total(self, verdict: str) -> int:
        return sum(decisions(self.rows[d], verdict) for d in self.days)

    def per_day(self, verdict: str) -> float | None:
        return self.total(verdict) / len(self.days) if self.days else None

    def scores(self, name: str) -> list[int]:
        out = [0] * SCORE_BINS
        for counts in self.rows.values():
            for b, n in enumerate(histogram(counts, name)):
                out[b] += n
        return out


def evaluate(queue: ReviewQueue, traffic: TrafficCounter, active: ActiveThresholds, policy: AuditPolicy,
             review_verdicts: Iterable[str], *, since: float | None = None, until: float | None = None,
             now: float | None = None) -> dict[str, Any]:
    """The evaluation of the window [since, until) (default: the last :data:`DEFAULT_DAYS` days up to now)."""
    import time

    now = time.time() if now is None else float(now)
    until = now if until is None else float(until)
    # the default window starts no earlier than the first day a date can name (a window ending early in year 1)
    since = max(until - DEFAULT_DAYS * DAY, EARLIEST) if since is None else float(since)
    try:
        traffic.flush()  # this process's latest counts too
    except Exception:  # the reads below say what is wrong with the database
        pass
    with queue.pool.transaction(write=False) as tx:
        items = audited(tx, since, until)
        waiting = open_counts(tx, since, until)
        pairs = vote_pairs(tx, since, until)
    counts = _Traffic(traffic.read(since, until - 1e-6))
    verdicts = tuple(review_verdicts)
    missing: list[str] = []
    automatic = {v: _automatic(v, items, waiting, counts, policy, verdicts, missing) for v in AUDITED_VERDICTS}
    return {
        "window": {"since": _iso(since), "until": _iso(until), "days_with_traffic": len(counts.days)},
        "sampling": {"audit_rate": {v: policy.rate(v) for v in AUDITED_VERDICTS},
                     "double_review_rate": policy.double_rate, "review_verdicts": list(verdicts)},
        "automatic": automatic,
        "wrong_per_day": _wrong_total(automatic, missing),
        "unknown": _unknown(items, waiting, counts, verdicts, missing),
        "agreement": _agreement(pairs, waiting, policy, missing),
        "daily": _daily(items, counts, since, until),
        "drift": _drift(active, counts, missing),
        "missing": missing,
    }


def _automatic(verdict: str, items: Sequence[Audited], waiting: Mapping[tuple[str, str], int], counts: _Traffic,
               policy: AuditPolicy, review_verdicts: Sequence[str], missing: list[str]) -> dict[str, Any]:
    p = _precision(items, verdict)
    per_day = counts.per_day(verdict)
    block: dict[str, Any] = {
        "audited": p.n, "overturned": p.n - p.k, "precision": _num(p.estimate), "ci95": _ci(p),
        "effective_sample": round(p.n_eff, 1), "pending": int(waiting.get((AUDIT, verdict), 0)),
        "audit_rate": policy.rate(verdict), "decisions": counts.total(verdict),
        "decisions_per_day": _num(per_day, 2), "wrong_per_day": None,
    }
    if verdict in review_verdicts:
        block["note"] = (f"every {verdict} verdict goes to review (NSFW_REVIEW_VERDICTS), so none is automatic "
                         "and none is audited")
    elif not p.defined:
        how = (f"audit sampling of {verdict} verdicts is off: set NSFW_AUDIT_RATE (e.g. {verdict}=0.01)"
               if policy.rate(verdict) <= 0 else
               f"audit sampling is on ({verdict} {100 * policy.rate(verdict):g} %); {block['pending']} audit items "
               f"of automatic {verdict} verdicts wait in the review queue")
        missing.append(f"precision of automatic {verdict}: no audited item decided in this window; {how}. Decide "
                       f"about {audits_needed(TARGET_MARGIN)} of them for an interval of about "
                       f"+-{100 * TARGET_MARGIN:g} points")
    if p.defined and per_day is not None:
        lo, hi = p.ci95
        block["wrong_per_day"] = {"estimate": _num((1 - p.estimate) * per_day, 3),
                                  "ci95": [_num((1 - hi) * per_day, 3), _num((1 - lo) * per_day, 3)]}
    elif p.defined:
        missing.append(f"wrong automatic {verdict} decisions per day: no traffic counted in this window (the API "
                       "counts every classification per day)")
    return block


def _wrong_total(automatic: Mapping[str, Mapping[str, Any]], missing: list[str]) -> dict[str, Any] | None:
    blocks = [automatic[v]["wrong_per_day"] for v in AUDITED_VERDICTS]
    if any(b is None for b in blocks):
        return None
    return {"estimate": _num(sum(b["estimate"] for b in blocks), 3),
            "ci95": [_num(sum(b["ci95"][0] for b in blocks), 3), _num(sum(b["ci95"][1] for b in blocks), 3)],
            "method": "the sum of both verdicts' estimates; the interval adds their bounds (conservative)"}


def _unknown(items: Sequence[Audited], waiting: Mapping[tuple[str, str], int], counts: _Traffic,
             review_verdicts: Sequence[str], missing: list[str]) -> dict[str, Any]:
    mine = [a for a in items if a.kind == REVIEW and a.verdict == UNKNOWN]
    adult = proportion([to_binary(a.label) == ADULT for a in mine])
    block: dict[str, Any] = {
        "reviewed": adult.n, "pending": int(waiting.get((REVIEW, UNKNOWN), 0)),
        "adult": {"n": adult.k, "share": _num(adult.estimate), "ci95": _ci(adult)},
        "safe": {"n": adult.n - adult.k, "share": _num(1 - adult.estimate) if adult.defined else None,
                 "ci95": _ci(adult.complement())},
        "labels": dict(sorted(collections.Counter(a.label for a in mine).items())),
        "decisions": counts.total(UNKNOWN), "decisions_per_day": _num(counts.per_day(UNKNOWN), 2),
    }
    if not adult.defined:
        where = ("NSFW_REVIEW_VERDICTS does not send unknown verdicts to review" if UNKNOWN not in review_verdicts
                 else f"{block['pending']} wait in the review queue")
        missing.append(f"what the unknown items turned out to be: none decided in this window ({where})")
    return block


def _agreement(pairs: Sequence[tuple[str, str]], waiting: Mapping[tuple[str, str], int], policy: AuditPolicy,
               missing: list[str]) -> dict[str, Any]:
    first = [to_binary(a) for a, _ in pairs]
    second = [to_binary(b) for _, b in pairs]
    binary = cohen_kappa(first, second, (ADULT, SAFE))
    fine = [(a, b) for a, b in pairs if a in CLASS_NAMES and b in CLASS_NAMES]
    per_class = class_kappas([a for a, _ in fine], [b for _, b in fine], CLASS_NAMES) if fine else {}
    agreed = sum(1 for a, b in zip(first, second, strict=True) if a == b)
    if not pairs:
        missing.append("reviewer agreement: no item was decided by two reviewers in this window ("
                       + ("set NSFW_DOUBLE_REVIEW_RATE, e.g. 0.05, and have two reviewers" if policy.double_rate <= 0
                          else f"double review is on for {100 * policy.double_rate:g} % of items; they need two "
                               "different reviewers") + ")")
    return {"double_review_rate": policy.double_rate, "items": len(pairs), "agreed": agreed,
            "disagreed": len(pairs) - agreed,
            "escalated_open": int(waiting.get((AUDIT, "escalated"), 0) + waiting.get((REVIEW, "escalated"), 0)),
            "kappa": binary.to_dict(), "classes": {c: k.to_dict() for c, k in per_class.items()},
            "class_items": len(fine)}


def _daily(items: Sequence[Audited], counts: _Traffic, since: float, until: float) -> list[dict[str, Any]]:
    by_day: dict[str, list[Audited]] = collections.defaultdict(list)
    for a in items:
        by_day[day_of(a.created_at)].append(a)
    out = []
    for day in _days(since, until):
        row = counts.rows.get(day, {})
        entry: dict[str, Any] = {"day": day, "decisions": {v: decisions(row, v) for v in (ADULT, UNKNOWN, SAFE)}}
        if not by_day.get(day) and not any(entry["decisions"].values()):
            continue
        for v in AUDITED_VERDICTS:
            p = _precision(by_day.get(day, []), v)
            entry[v] = {"audited": p.n, "overturned": p.n - p.k, "precision": _num(p.estimate), "ci95": _ci(p)}
        out.append(entry)
    return out


def reference_histograms(active: ActiveThresholds) -> dict[str, Any] | None:
    """The score histograms saved with the thresholds in force (None: the defaults, or saved without them)."""
    tuned = active.saved.get("tuned_on") if isinstance(active.saved, dict) else None
    found = tuned.get("score_histograms") if isinstance(tuned, dict) else None
    if not isinstance(found, dict) or found.get("bins") != SCORE_BINS or not isinstance(found.get("classes"), dict):
        return None
    return found


def _drift(active: ActiveThresholds, counts: _Traffic, missing: list[str]) -> dict[str, Any]:
    reference = reference_histograms(active)
    where = "the defaults" if active.version is None else f"thresholds version {active.version}"
    out: dict[str, Any] = {"thresholds_version": active.version, "reference": None, "classes": {},
                           "psi_watch": 0.1, "psi_act": PSI_ACT}
    if reference is None:
        what = ("the thresholds in force are the defaults, tuned on no labelled set" if active.version is None else
                f"{where}, in force, was saved without its labelled set's score histograms")
        missing.append(f"score drift: {what}; save thresholds on the Calibrate page to record the set's histograms")
        return out
    ref_n = float(reference.get("effective_images") or reference.get("images") or 0)
    out["reference"] = {"images": reference.get("images"), "source": reference.get("source")}
    short = False
    for c in CLASS_NAMES:
        expected = reference["classes"].get(c)
        actual = counts.scores(c)
        if not isinstance(expected, list) or len(expected) != SCORE_BINS:
            continue
        n = sum(actual)
        value = psi(expected, actual) if n else float("nan")
        lo, hi = psi_interval(expected, actual, expected_n=ref_n or None) if n else (float("nan"),) * 2
        enough = n >= MIN_DRIFT_IMAGES
        short = short or not enough
        out["classes"][c] = {"psi": _num(value, 4), "ci95": [_num(lo, 4), _num(hi, 4)] if n else None,
                             "level": psi_level(value) if enough else "not enough data", "production_images": n}
    if short:
        missing.append(f"score drift: fewer than {MIN_DRIFT_IMAGES} production images counted in this window")
    return out


def gauges(report: Mapping[str, Any]) -> list[tuple[str, str, dict[str, str], float]]:
    """``/metrics`` gauges of an evaluation: (name, help, labels, value); figures without data are left out."""
    out: list[tuple[str, str, dict[str, str], float]] = []
    for v, block in report["automatic"].items():
        out.append(("nsfw_audited_items", "Audited automatic decisions decided by a reviewer (the last 7 days)",
                    {"verdict": v}, float(block["audited"])))
        if block["precision"] is not None:
            out.append(("nsfw_automatic_precision", "Estimated precision of automatic verdicts (audits, 7 days)",
                        {"verdict": v}, block["precision"]))
            out.append(("nsfw_automatic_precision_lower", "Lower bound of its 95 % interval",
                        {"verdict": v}, block["ci95"][0]))
        if block["wrong_per_day"] is not None:
            out.append(("nsfw_wrong_automatic_per_day", "Expected wrong automatic decisions per day",
                        {"verdict": v}, block["wrong_per_day"]["estimate"]))
    for c, d in report["drift"]["classes"].items():
        if d["psi"] is not None:
            out.append(("nsfw_score_psi", "Population stability index of the class's scores (7 days) against the "
                        "labelled set of the thresholds in force", {"class": c}, d["psi"]))
            out.append(("nsfw_score_drift_images", "Production images behind nsfw_score_psi", {"class": c},
                        float(d["production_images"])))
    return out


def traffic_per_day(traffic: TrafficCounter, now: float, days: int = 7) -> tuple[float | None, int]:
    """(the model's verdicts per day over the last ``days`` UTC days with traffic, how many such days)."""
    counts = _Traffic(traffic.read(now - days * DAY, now))
    if not counts.days:
        return None, 0
    total = sum(counts.total(v) for v in (ADULT, UNKNOWN, SAFE))
    return total / len(counts.days), len(counts.days)
