"""The one place for labels: the model's classes, the verdicts, the labels people give, and their truth.

- :data:`CLASS_NAMES`: the five classes the model scores, in the model's output order.
- :data:`VERDICTS`: what the three-state rule answers (:mod:`nsfw_core.base.verdict`): ``adult``,
  ``unknown`` (a human reviews it), ``safe``.
- A *label* is what a person says an image is: one of the five classes, or directly one of the
  :data:`BINARY_LABELS` ``adult`` / ``safe``.  :func:`normalise_label` trims, lower-cases and resolves
  :data:`ALIASES` (nsfwjs says "Drawing"); :func:`check_label` refuses anything else with a 400.
- The *truth* of a label is ``adult`` or ``safe`` (:func:`to_binary`): the binary labels are their own
  truth, the five classes follow a binary map, :data:`DEFAULT_BINARY_MAP` unless another is given
  (:func:`make_binary_map`).  It is independent of the classes whose scores the verdict rule *sums*
  (``Thresholds.adult_classes``): the map says what an image is, the classes how its score is built.
- :class:`LabelledItem`: an image (path or URL) with its label and its truth, as labelled sets
  (:mod:`nsfw_core.calibration.labelsets`) and the review queue's decided items
  (:mod:`nsfw_core.state.review`) give them.

The labels are listed in two orders, each kept as the place that shows it has always shown it:
:data:`LABELS` (the classes first: labelled sets, the calibration page) and :data:`DECISION_LABELS`
(the binary labels first: a reviewer's decision, the review page's buttons).

This module imports nothing else of the package but :mod:`nsfw_core.base.errors`, so everything may use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from nsfw_core.base.errors import BadRequest

#: The five classes, in the model's output order.
CLASS_NAMES = ("drawings", "hentai", "neutral", "porn", "sexy")

ADULT, UNKNOWN, SAFE = "adult", "unknown", "safe"
#: The verdicts of the three-state rule, in this order wherever they are listed.
VERDICTS = (ADULT, UNKNOWN, SAFE)

#: The labels that are their own truth.
BINARY_LABELS = (ADULT, SAFE)
#: Every label, the classes first (labelled sets, the calibration page).
LABELS = CLASS_NAMES + BINARY_LABELS
#: The same labels as a reviewer decides them, the binary ones first (the review queue, its page).
DECISION_LABELS = BINARY_LABELS + CLASS_NAMES

#: Other spellings accepted for a label (after lower-casing): nsfwjs says "Drawing".
ALIASES: Mapping[str, str] = {"drawing": "drawings", "nsfw": ADULT, "sfw": SAFE}

#: The five classes -> binary truth. Change it per call with ``binary_map=``.
DEFAULT_BINARY_MAP: Mapping[str, str] = {
    "porn": ADULT,
    "sexy": ADULT,
    "hentai": ADULT,
    "neutral": SAFE,
    "drawings": SAFE,
}


class InvalidLabel(BadRequest):
    """A label that is none of :data:`DECISION_LABELS` (nor an alias of one)."""

    code = "invalid_label"


class LabelSetError(BadRequest):
    """A labelled set cannot be read (bad manifest, unknown label, unsafe archive…), or a binary map is not one."""


@dataclasses.dataclass(frozen=True)
class LabelledItem:
    source: str  # local path (absolute) or URL
    label: str  # one of LABELS
    binary: str  # "adult" or "safe"


def normalise_label(raw: Any) -> str:
    """Lower-case, trimmed label with aliases resolved (may still be unknown)."""
    label = str(raw if raw is not None else "").strip().lower()
    return ALIASES.get(label, label)


def check_label(raw: Any) -> str:
    """The normalised label; :class:`InvalidLabel` (400) when it is not a known one."""
    label = normalise_label(raw)
    if label not in DECISION_LABELS:
        raise InvalidLabel(f"unknown label {raw!r}; expected one of {', '.join(DECISION_LABELS)}")
    return label


def make_binary_map(adult_labels: Iterable[str]) -> dict[str, str]:
    """A five-class -> binary mapping where ``adult_labels`` are adult and the rest safe."""
    adult = {normalise_label(a) for a in adult_labels}
    bad = sorted(adult - set(CLASS_NAMES))
    if bad:
        raise LabelSetError(f"not model classes: {', '.join(bad)}; expected some of {', '.join(CLASS_NAMES)}")
    return {c: ADULT if c in adult else SAFE for c in CLASS_NAMES}


def check_binary_map(binary_map: Mapping[str, str] | None) -> Mapping[str, str]:
    """``binary_map`` if it maps each class to adult or safe (:data:`DEFAULT_BINARY_MAP` for None);
    :class:`LabelSetError` otherwise."""
    if binary_map is None:
        return DEFAULT_BINARY_MAP
    missing = [c for c in CLASS_NAMES if c not in binary_map]
    wrong = [f"{k}->{v}" for k, v in binary_map.items() if v not in BINARY_LABELS]
    if missing or wrong:
        raise LabelSetError(f"binary_map must map each of {', '.join(CLASS_NAMES)} to adult or safe"
                            f" (missing: {', '.join(missing) or '-'}; invalid: {', '.join(wrong) or '-'})")
    return binary_map


def to_binary(label: str, binary_map: Mapping[str, str] | None = None) -> str:
    """``adult``/``safe`` for a known label; ValueError for any other."""
    label = normalise_label(label)
    if label in BINARY_LABELS:
        return label
    mapping = check_binary_map(binary_map)
    if label in mapping:
        return mapping[label]
    raise ValueError(f"unknown label {label!r}")
