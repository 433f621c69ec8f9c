"""Teaching the service a policy: adapters trained on the operator's images, proved on held-out data.

An *adapter* is a logistic regression (scikit-learn's) over an image's embedding and its five base
probabilities (:class:`~nsfw_core.inference.embeddings.AdapterHead`), trained on the operator's labels:
a labelled set (every source the Calibrate page reads: manifests, folders, ZIPs, the demo set) and the
reviewed items of the review queue (their embeddings are kept from the request that queued them), each
example with a weight: a reviewed item weighs 1 / the probability that queued it (issue 25's audit sample:
an automatic verdict sampled at rate r stands for 1/r production images), every other example 1.  "adult"
means what the platform blocks, "safe" what it allows: the labels are the policy, whatever the five classes
say.

Proof before publishing (:func:`train`): the examples are split into near-duplicate groups (PDQ hashes
within ``NSFW_MATCH_DISTANCE``, and equal bytes), then into ``folds`` folds, stratified, a group never on
both sides.  Each fold's adapter scores the fold it never saw; those held-out scores are compared with the
base model's adult score (the summed adult classes of the thresholds in force) on the same images: ROC AUC
(95 % interval by resampling the groups, and the paired difference), precision at the operator's target
recall, the share sent to review at the target precisions (the thresholds the calibration maths would
suggest, :func:`nsfw_core.calibration.maths.suggest_thresholds`), and verdict x truth at the thresholds in
force (the base model's) and at the adapter's.  The adapter's thresholds are those suggested on its
held-out scores.  The adapter that is stored is then fitted on all the examples.

Publishing is refused (:data:`MIN_PER_SIDE`: fewer than 20 examples on a side; or the AUC difference's
interval does not lie above 0) with these figures; the report says why (``gate``).

Example sets (:func:`build_example_set`): a few images of something to block or allow now; the similarity
threshold is chosen so that at most ``false_match`` of a background set (images that are not what the set
is for) would match, and reported with that rate's 95 % interval.

Training needs scikit-learn, which the runtime install leaves out (it and SciPy add about 200 MB):
``pip install -r requirements-adapters.txt`` (or ``pip install '.[adapters]'``).  Applying an adapter
needs numpy only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import ADULT, CLASS_NAMES, SAFE, LabelledItem
from nsfw_core.base.verdict import EPSILON, Thresholds
from nsfw_core.calibration import maths as cal
from nsfw_core.calibration.scorecache import Embedded
from nsfw_core.inference.embeddings import SET_VERDICTS, AdapterHead, ExampleSet, score_rows, unit_rows
from nsfw_core.state.hashindex import HashIndex, as_rows

REPORT_FORMAT = "nsfw-adapter-report/1"
MIN_PER_SIDE = 20  # examples of each truth below which an adapter is not published
FOLDS = 5
C = 0.002  # inverse L2 strength on standardised features (BENCHMARKS.md, "Adapters": 0.001-0.003 best)
MAX_ITER = 2000
BOOTSTRAP = 200  # resamples of the groups for the AUC intervals
CURVE_POINTS = 200  # ROC points kept in the report for the charts
MIN_BACKGROUND = 10  # background images an example set's threshold is chosen against, at least
MIN_SIMILARITY = 0.5  # an example set's threshold is never below this (centred cosine): a small or narrow background
# proves little about images unlike it (a photo scored 0.35 against striped drawings chosen against drawings only)
INSTALL_HINT = ("training adapters needs scikit-learn, which the runtime install leaves out: "
                "pip install -r requirements-adapters.txt (or pip install '.[adapters]')")


class TrainingUnavailable(NSFWError):
    """scikit-learn is not installed: adapters can be applied but not trained here."""

    status = 501
    code = "adapters_not_installed"


class TrainingError(NSFWError):
    """The examples cannot train an adapter (one truth only, none at all...)."""

    status = 400
    code = "cannot_train"


def sklearn_available() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def _sklearn() -> Any:
    try:
        import sklearn.linear_model
        import sklearn.model_selection
    except ImportError as exc:
        raise TrainingUnavailable(INSTALL_HINT) from exc
    return sklearn


@dataclasses.dataclass(frozen=True)
class Example:
    """One image an adapter learns from: its truth (1: adult, what the platform blocks), its embedding and base
    probabilities, its PDQ hash (near-duplicates are kept on one side of each split) and its weight."""

    sha256: str
    truth: int
    embedding: np.ndarray
    scores: Mapping[str, float]
    phash: bytes | None = None
    weight: float = 1.0
    source: str = ""
    origin: str = "set"  # "set" (a labelled set) or "reviewed" (the review queue)


@dataclasses.dataclass(frozen=True)
class Targets:
    """The operator's targets: the recall at which precision is reported, and the precisions the thresholds
    are chosen for (as on the Calibrate page)."""

    recall: float = 0.9
    adult_precision: float = 0.99
    safe_precision: float = 0.99

    def __post_init__(self) -> None:
        for name in ("recall", "adult_precision", "safe_precision"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
                raise ValueError(f"the target {name} must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class Trained:
    """An adapter fitted on all the examples, its thresholds and the report that proves (or not) it."""

    head: AdapterHead
    t_adult: float
    t_safe: float
    report: dict[str, Any]
    dataset_sha256: str

    @property
    def publishable(self) -> bool:
        return bool(self.report["gate"]["passed"])


# ---------------------------------------------------------------- examples


def examples_from_set(results: Iterable[tuple[LabelledItem, Embedded | None, NSFWError | None]]
                      ) -> tuple[list[Example], list[dict[str, Any]]]:
    """A labelled set's embedded images (:meth:`~nsfw_core.calibration.scorecache.ScoreCache.embed_items`) as
    examples, and the images that failed (``{"source", "code", "message"}``)."""
    examples: list[Example] = []
    failed: list[dict[str, Any]] = []
    for item, embedded, error in results:
        if embedded is None:
            failed.append({"source": item.source, **(error.to_dict() if error is not None else
                                                      {"code": "error", "message": "not scored"})})
            continue
        examples.append(Example(embedded.sha256, 1 if item.binary == ADULT else 0, embedded.embedding,
                                embedded.scores, embedded.phash, 1.0, item.source, "set"))
    return examples, failed


def examples_from_reviewed(items: Iterable[Any], embeddings: Mapping[int, tuple[np.ndarray, bytes | None]],
                           weights: Mapping[int, float] | None = None) -> tuple[list[Example], int]:
    """Decided review items (``ReviewedItem``) with a kept embedding, as examples; and how many had none (queued
    before adapters existed, or by another model or model version).  Each weighs what the item stands for in
    production (``ReviewedItem.weight``: 1 / the probability that queued it, so an audit item sampled at 1 %
    counts 100 and an item NSFW_REVIEW_VERDICTS queued counts 1), unless ``weights`` gives an item's weight
    by id."""
    examples: list[Example] = []
    missing = 0
    for item in items:
        found = embeddings.get(int(item.id))
        if found is None:
            missing += 1
            continue
        vector, ph = found
        weight = float(weights[int(item.id)]) if weights is not None and int(item.id) in weights \
            else float(getattr(item, "weight", 1.0))
        examples.append(Example(item.sha256, 1 if item.binary == ADULT else 0, vector, item.scores, ph,
                                weight, item.source, "reviewed"))
    return examples, missing


def dataset_sha256(examples: Sequence[Example]) -> str:
    """A hash of what an adapter was trained on: each image's sha256, truth and weight, in sorted order."""
    h = hashlib.sha256()
    for line in sorted(f"{e.sha256},{e.truth},{e.weight:.9g}" for e in examples):
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def near_duplicate_groups(examples: Sequence[Example], distance: int) -> np.ndarray:
    """A group number per example: equal bytes, or PDQ hashes within ``distance`` bits (transitively), share one."""
    n = len(examples)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    for i, e in enumerate(examples):
        if e.sha256 in first:
            union(first[e.sha256], i)
        else:
            first[e.sha256] = i
    hashed = [i for i, e in enumerate(examples) if e.phash]
    if hashed:
        index = HashIndex(as_rows([examples[i].phash or b"" for i in hashed]))
        for row, i in enumerate(hashed):
            found, _ = index.search(examples[i].phash or b"", distance)
            for other in found.tolist():
                if other != row:
                    union(i, hashed[int(other)])
    roots = np.array([find(i) for i in range(n)])
    _, groups = np.unique(roots, return_inverse=True)
    return np.asarray(groups, dtype=np.int64)


# ---------------------------------------------------------------- figures


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n (95 % by default); (nan, nan) when n is 0."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class _Ranked:
    """Scores sorted once into tie groups, so that the AUC under many weightings (the bootstrap) is cheap."""

    def __init__(self, s: np.ndarray) -> None:
        self.order = np.argsort(s, kind="mergesort")
        ranked = s[self.order]
        self.starts = np.flatnonzero(np.concatenate([[True], ranked[1:] != ranked[:-1]])) if len(s) else \
            np.zeros(0, np.int64)

    def auc(self, y: np.ndarray, w: np.ndarray) -> float:
        """Weighted ROC AUC: the chance that an adult example outscores a safe one, ties counting one half."""
        if not len(self.order):
            return math.nan
        yw, wo = y[self.order], w[self.order]
        pos = np.add.reduceat(wo * yw, self.starts)
        neg = np.add.reduceat(wo * (1 - yw), self.starts)
        total_pos, total_neg = float(pos.sum()), float(neg.sum())
        if total_pos <= 0 or total_neg <= 0:
            return math.nan
        below = np.cumsum(neg) - neg
        return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def _auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    return _Ranked(s).auc(y, w)


def _bootstrap_auc(y: np.ndarray, base: np.ndarray, adapter: np.ndarray, w: np.ndarray, groups: np.ndarray,
                   seed: int) -> dict[str, list[float]]:
    """95 % intervals of the two AUCs and their difference, resampling the groups (paired)."""
    rng = np.random.default_rng(seed)
    n_groups = int(groups.max()) + 1
    ranked_base, ranked_adapter = _Ranked(base), _Ranked(adapter)
    draws: dict[str, list[float]] = {"base": [], "adapter": [], "difference": []}
    for _ in range(BOOTSTRAP):
        counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
        weights = w * counts[groups]
        a, b = ranked_adapter.auc(y, weights), ranked_base.auc(y, weights)
        if math.isfinite(a) and math.isfinite(b):
            draws["adapter"].append(a)
            draws["base"].append(b)
            draws["difference"].append(a - b)
    return {k: ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) >= BOOTSTRAP // 2
                else [math.nan, math.nan]) for k, v in draws.items()}


def precision_at_recall(y: np.ndarray, s: np.ndarray, w: np.ndarray, target: float) -> dict[str, Any]:
    """The precision of "score at or above t" at the highest t whose (weighted) recall reaches ``target``."""
    order = np.argsort(-s, kind="mergesort")
    ranked = s[order]
    ends = np.ones(len(ranked), dtype=bool)  # the last of each tie (closer than the rule's slack: one threshold)
    ends[:-1] = (ranked[:-1] - ranked[1:]) > EPSILON
    pos = (w * (y == 1))[order]
    neg = (w * (y == 0))[order]
    tp, fp = np.cumsum(pos)[ends], np.cumsum(neg)[ends]
    total = float(pos.sum())
    if total <= 0:
        return {"value": None, "threshold": None, "recall": None, "reason": "no adult examples"}
    reached = np.flatnonzero(tp >= target * total - 1e-9)
    k = int(reached[0])
    return {"value": float(tp[k] / (tp[k] + fp[k])), "threshold": float(ranked[ends][k]),
            "recall": float(tp[k] / total)}


def _suggested(adult: np.ndarray, safe: np.ndarray, y: np.ndarray, targets: Targets) -> cal.Suggestion:
    return cal.suggest_thresholds(adult, safe, y, targets.adult_precision, targets.safe_precision)


def _confusion(adult: np.ndarray, safe: np.ndarray, y: np.ndarray, t_adult: float, t_safe: float
               ) -> dict[str, Any]:
    table = cal.verdict_table(pd.DataFrame({"adult_score": adult, "safe_score": safe, "truth": y}), (t_adult, t_safe))
    cells = {f"{r.verdict}|{r.truth}": int(r.count) for r in table.itertuples()}
    metrics = cal.decision_metrics(adult, safe, y, t_adult, t_safe)
    return {"thresholds": {"adult": t_adult, "safe": t_safe}, "counts": cells,
            "adult_precision": _clean(metrics.adult_precision), "safe_precision": _clean(metrics.safe_precision),
            "review_share": _clean(metrics.review_share), "missed_adult": metrics.missed_adult,
            "false_adult": metrics.false_adult}


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _curve(s: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    roc = cal.roc_curve(s, y)
    if not roc.defined:
        return {"fpr": [], "tpr": []}
    keep = np.unique(np.linspace(0, len(roc.fpr) - 1, min(len(roc.fpr), CURVE_POINTS)).round().astype(int))
    return {"fpr": [round(float(v), 5) for v in roc.fpr[keep]], "tpr": [round(float(v), 5) for v in roc.tpr[keep]]}


def _side(name: str, adult: np.ndarray, safe: np.ndarray, y: np.ndarray, w: np.ndarray, targets: Targets,
          at: tuple[float, float], auc_interval: list[float]) -> dict[str, Any]:
    sug = _suggested(adult, safe, y, targets)
    return {
        "score": name,
        "auc": {"value": _clean(_auc(y, adult, w)), "interval_95": [_clean(v) for v in auc_interval]},
        "precision_at_recall": precision_at_recall(y, adult, w, targets.recall),
        "at_target_precisions": {"status": sug.status, "review_share": _clean(sug.review_share),
                                 "review_n": sug.review_n, "t_adult": sug.t_adult, "t_safe": sug.t_safe,
                                 "adult_precision": _clean(sug.adult_precision),
                                 "safe_precision": _clean(sug.safe_precision), "message": sug.message},
        "confusion": _confusion(adult, safe, y, *at),
        "roc": _curve(adult, y),
    }


# ---------------------------------------------------------------- training


def _matrix(examples: Sequence[Example]) -> np.ndarray:
    e = np.stack([np.asarray(x.embedding, dtype=np.float64) for x in examples])
    return np.hstack([e, score_rows([x.scores for x in examples])])


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Standardise, fit, and fold the standardisation into (weights, bias) over the raw features."""
    linear = _sklearn().linear_model
    mean = np.average(x, axis=0, weights=w)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    scale[scale < 1e-6] = 1.0
    model = linear.LogisticRegression(C=C, class_weight="balanced", max_iter=MAX_ITER, random_state=seed)
    model.fit((x - mean) / scale, y, sample_weight=w)
    coef = model.coef_[0] / scale
    return coef, float(model.intercept_[0] - coef @ mean)


def _folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group folds; fewer than asked when a truth has fewer groups (none below 2: no held-out data)."""
    per_truth = min(len(np.unique(groups[y == 1])), len(np.unique(groups[y == 0])))
    k = min(folds, per_truth)
    if k < 2:
        return []
    splitter = _sklearn().model_selection.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.asarray(a), np.asarray(b)) for a, b in splitter.split(np.zeros(len(y)), y, groups)]


def train(examples: Sequence[Example], *, model: str, model_version: str, base: Thresholds,
          targets: Targets | None = None, folds: int = FOLDS, distance: int = 31, seed: int = 0,
          progress: Callable[[str], None] | None = None) -> Trained:
    """Train an adapter on ``examples``, prove it on held-out folds against the base model (its adult score under
    ``base``, the thresholds in force), and fit it on everything; see the module docstring.

    :class:`TrainingError` when the examples hold one truth only; :class:`TrainingUnavailable` without
    scikit-learn.
    """
    _sklearn()
    targets = targets or Targets()
    say = progress or (lambda message: None)
    started = time.perf_counter()
    if not examples:
        raise TrainingError("no examples to train on")
    dims = {np.asarray(e.embedding).shape for e in examples}
    if len(dims) != 1:
        raise TrainingError(f"the examples' embeddings differ in size ({sorted(dims)}): one model's only")
    y = np.array([e.truth for e in examples], dtype=np.int64)
    w = np.array([e.weight for e in examples], dtype=np.float64)
    if not np.isfinite(w).all() or (w <= 0).any():
        raise TrainingError("every example's weight must be a positive number")
    n_adult, n_safe = int(y.sum()), int(len(y) - y.sum())
    if n_adult == 0 or n_safe == 0:
        raise TrainingError(f"an adapter learns from both sides: {n_adult} adult and {n_safe} safe examples given")
    x = _matrix(examples)
    scores = score_rows([e.scores for e in examples])
    base_adult = np.array([base.adult_score(e.scores) for e in examples])
    base_safe = np.array([base.safe_score(e.scores) for e in examples])
    groups = near_duplicate_groups(examples, distance)

    split = _folds(y, groups, folds, seed)
    held_out = np.full(len(y), np.nan)
    t0 = time.perf_counter()
    for k, (tr, te) in enumerate(split, start=1):
        say(f"held-out fold {k} of {len(split)}")
        weights, bias = _fit(x[tr], y[tr], w[tr], seed)
        held_out[te] = AdapterHead(x.shape[1] - len(CLASS_NAMES), weights, bias).score_many(
            x[te, :-len(CLASS_NAMES)], scores[te])
    cv_s = time.perf_counter() - t0

    say("fitting on every example")
    t0 = time.perf_counter()
    weights, bias = _fit(x, y, w, seed)
    head = AdapterHead(x.shape[1] - len(CLASS_NAMES), weights, bias)
    fit_s = time.perf_counter() - t0

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "model": {"name": model, "version": model_version},
        "n": len(y), "n_adult": n_adult, "n_safe": n_safe,
        "weighted": bool((w != 1.0).any()), "weight_sum": float(w.sum()),
        "origins": {o: sum(1 for e in examples if e.origin == o) for o in sorted({e.origin for e in examples})},
        "groups": int(groups.max()) + 1, "folds": len(split), "near_duplicate_distance": distance,
        "targets": dataclasses.asdict(targets),
        "base_thresholds": base.to_dict(),
        "features": f"embedding ({head.dim}) + the five probabilities, standardised; logistic regression, C={C}, "
                    "balanced classes",
    }
    gate: list[str] = []
    if n_adult < MIN_PER_SIDE:
        gate.append(f"only {n_adult} adult (block) examples: at least {MIN_PER_SIDE} are needed")
    if n_safe < MIN_PER_SIDE:
        gate.append(f"only {n_safe} safe (allow) examples: at least {MIN_PER_SIDE} are needed")
    t_adult, t_safe = 1.0, 1.0
    if not split:
        gate.append("too few distinct images on a side to hold any out: the adapter cannot be compared with the "
                    "base model")
        report["held_out"] = None
    else:
        say("comparing with the base model")
        intervals = _bootstrap_auc(y, base_adult, held_out, w, groups, seed)
        sug = _suggested(held_out, 1.0 - held_out, y, targets)
        if sug.t_adult is not None and sug.t_safe is not None:
            t_adult, t_safe = float(sug.t_adult), float(sug.t_safe)
        base_side = _side(" + ".join(base.adult_classes), base_adult, base_safe, y, w, targets,
                          (base.adult, base.safe), intervals["base"])
        adapter_side = _side("adapter", held_out, 1.0 - held_out, y, w, targets, (t_adult, t_safe),
                             intervals["adapter"])
        a_auc, b_auc = adapter_side["auc"]["value"], base_side["auc"]["value"]
        difference = None if a_auc is None or b_auc is None else a_auc - b_auc
        low, high = intervals["difference"]
        report["held_out"] = {
            "method": f"{len(split)}-fold cross-validation, stratified, grouped so that near-duplicates (PDQ within "
                      f"{distance} bits, or equal bytes) never sit on both sides; each image scored by the adapter "
                      "that did not see it",
            "base": base_side, "adapter": adapter_side,
            "auc_difference": {"value": difference, "interval_95": [_clean(low), _clean(high)]},
        }
        if difference is None or not math.isfinite(low) or low <= 0:
            shown = "undefined" if difference is None else f"{difference:+.3f}"
            gate.append(f"the adapter is not better than the base model on held-out data: AUC "
                        f"{_fmt(a_auc)} against {_fmt(b_auc)}, difference {shown} (95 % interval "
                        f"{_fmt(low, '+')} to {_fmt(high, '+')}; it must lie above 0)")
    report["thresholds"] = {"adult": t_adult, "safe": t_safe,
                            "chosen": "suggested on the adapter's held-out scores at the target precisions"}
    report["gate"] = {"passed": not gate, "reasons": gate, "min_per_side": MIN_PER_SIDE}
    report["timings"] = {"cross_validation_s": round(cv_s, 3), "final_fit_s": round(fit_s, 3),
                         "total_s": round(time.perf_counter() - started, 3)}
    return Trained(head, t_adult, t_safe, report, dataset_sha256(examples))


def _fmt(value: float | None, sign: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "undefined"
    return f"{value:{sign}.3f}"


def summary(report: Mapping[str, Any]) -> str:
    """One paragraph of a report: what the CLI prints on stderr and the page shows above the charts."""
    held = report.get("held_out")
    head = (f"{report['n']} examples ({report['n_adult']} adult, {report['n_safe']} safe) in {report['groups']} "
            f"near-duplicate groups")
    if not held:
        text = f"{head}; no held-out comparison."
    else:
        b, a = held["base"], held["adapter"]
        text = (f"{head}, {report['folds']}-fold grouped cross-validation. ROC AUC: adapter {_fmt(a['auc']['value'])} "
                f"against base {_fmt(b['auc']['value'])} (difference {_fmt(held['auc_difference']['value'], '+')}, "
                f"95 % interval {_fmt(held['auc_difference']['interval_95'][0], '+')} to "
                f"{_fmt(held['auc_difference']['interval_95'][1], '+')}). Precision at recall "
                f"{report['targets']['recall']:g}: adapter {_fmt(a['precision_at_recall']['value'])}, base "
                f"{_fmt(b['precision_at_recall']['value'])}. Sent to review at the target precisions: adapter "
                f"{_fmt(a['at_target_precisions']['review_share'])}, base "
                f"{_fmt(b['at_target_precisions']['review_share'])}.")
    gate = report["gate"]
    return text + (" Publishable." if gate["passed"] else " Not publishable: " + "; ".join(gate["reasons"]) + ".")


# ---------------------------------------------------------------- example sets


def build_example_set(name: str, verdict: str, examples: np.ndarray, background: np.ndarray, *,
                      false_match: float = 0.01) -> tuple[ExampleSet, dict[str, Any]]:
    """An example set from (k, D) example embeddings, its threshold chosen against (m, D) background embeddings.

    The centre is the background's mean embedding.  Each background image's highest similarity to an example
    is measured; the threshold is the lowest that lets at most ``false_match`` of them match (and never below
    :data:`MIN_SIMILARITY`).  The report gives the background's false matches at that threshold with their
    Wilson 95 % interval (the expected false-match rate), and how many examples the other examples would catch
    (leave one out: how far the set reaches beyond its own images).
    """
    if verdict not in SET_VERDICTS:
        raise TrainingError(f"an example set blocks (adult) or allows (safe), not {verdict!r}")
    ex = np.atleast_2d(np.asarray(examples, dtype=np.float64))
    bg = np.atleast_2d(np.asarray(background, dtype=np.float64))
    if ex.shape[0] < 1 or ex.shape[1] != bg.shape[1]:
        raise TrainingError("give at least one example image, embedded by the background's model")
    if bg.shape[0] < MIN_BACKGROUND:
        raise TrainingError(f"the background set has {bg.shape[0]} images; at least {MIN_BACKGROUND} are needed to "
                            "choose a threshold")
    if not 0.0 <= false_match < 1.0:
        raise TrainingError("the false-match rate must be in [0, 1)")
    center = bg.mean(axis=0)
    units = unit_rows(ex, center)
    sims = (unit_rows(bg, center) @ units.T).max(axis=1)
    ranked = np.sort(sims)[::-1]
    allowed = int(math.floor(false_match * len(ranked) + 1e-9))
    threshold = float(ranked[allowed]) + 1e-6 if allowed < len(ranked) else float(ranked[-1])
    floored = threshold < MIN_SIMILARITY
    threshold = min(1.0, max(threshold, MIN_SIMILARITY))
    matched = int((sims >= threshold).sum())
    low, high = wilson(matched, len(sims))
    caught = None
    if len(units) > 1:
        pair = units @ units.T
        np.fill_diagonal(pair, -np.inf)
        caught = int((pair.max(axis=1) >= threshold).sum())
    built = ExampleSet(name, verdict, threshold, center, units)
    report = {
        "examples": int(len(units)), "background": int(len(sims)), "threshold": threshold,
        "threshold_floor": MIN_SIMILARITY if floored else None,
        "target_false_match": false_match,
        "false_match": {"matched": matched, "of": int(len(sims)), "rate": matched / len(sims),
                        "interval_95": [low, high]},
        "examples_caught_by_the_others": None if caught is None else {"caught": caught, "of": int(len(units))},
        "highest_background_similarity": float(ranked[0]),
        "similarity": "cosine of the embeddings minus the background's mean embedding",
    }
    return built, report


def verdict_of(action: str) -> str:
    """``block`` -> adult, ``allow`` -> safe (and the verdicts themselves)."""
    table = {"block": ADULT, "allow": SAFE, ADULT: ADULT, SAFE: SAFE}
    if action not in table:
        raise TrainingError(f"an example set blocks or allows, not {action!r}")
    return table[action]
