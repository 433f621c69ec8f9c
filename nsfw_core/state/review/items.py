"""What the queue holds: an item's statuses, the item records, and the checks on what callers pass in."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Mapping

from nsfw_core.base.errors import BadRequest
from nsfw_core.base.labels import CLASS_NAMES, LabelledItem
from nsfw_core.images.fetch import is_url

PENDING, CLAIMED, DECIDED, SKIPPED = "pending", "claimed", "decided", "skipped"
STATUSES = (PENDING, CLAIMED, DECIDED, SKIPPED)  # "skipped" is reserved; skip() puts items back to pending
MAX_SOURCE_LENGTH = 4096
MAX_REVIEWER_LENGTH = 200


@dataclasses.dataclass(frozen=True)
class Item:
    id: int
    sha256: str
    source: str
    scores: dict[str, float]
    model: str
    verdict: str
    created_at: float
    queued_at: float
    status: str
    claimed_by: str | None
    lease_until: float | None
    decision: str | None
    decided_by: str | None
    decided_at: float | None
    skips: int
    client: str = ""  # who queued it: a hash of the API key (or peer address), never the key ('' before issue 29)
    audience: str = ""  # whom its decision protects: '' everyone, else that one client (its own thresholds queued it)
    matched: str | None = None  # JSON: the remembered decision a look-alike match pointed at, the model disagreeing
    public_id: str | None = None  # the review id its creator got (the webhook's id); None before issue 29
    image: bytes | None = None  # only loaded by get(), claim() and undo()
    has_image: bool = False
    # issue 25 (nsfw_core.state.review.audit): "review" or "audit" (a sampled automatic verdict, shown blind),
    # the probability that queued it, the reviewers it needs (2: double review), two reviewers disagreed
    kind: str = "review"
    probability: float = 1.0
    reviews_needed: int = 1
    escalated: bool = False

    @property
    def is_url(self) -> bool:
        return is_url(self.source)

    @property
    def blind(self) -> bool:
        """An audit item: reviewers never see the model's verdict or scores."""
        return self.kind == "audit"


@dataclasses.dataclass(frozen=True)
class ReviewedItem:
    """A decided item for calibration; ``source, label, binary`` like :class:`~nsfw_core.base.labels.LabelledItem`."""

    source: str
    label: str
    binary: str  # "adult" or "safe"
    sha256: str
    scores: dict[str, float]
    model: str
    decided_at: float
    decided_by: str
    id: int
    has_image: bool
    kind: str = "review"  # "audit": a sampled automatic verdict (nsfw_core.state.review.audit)
    probability: float = 1.0  # the probability that queued it
    verdict: str = ""  # the model's verdict when it was queued

    @property
    def weight(self) -> float:
        """How many production images it stands for: the inverse of the probability that queued it."""
        return 1.0 / self.probability if self.probability > 0 else 1.0

    def labelled(self) -> LabelledItem:
        """The same as a ``labelsets.LabelledItem``."""
        return LabelledItem(self.source, self.label, self.binary)


def iso(ts: float | None) -> str:
    """UTC ISO 8601 with seconds (empty for None)."""
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def check_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """The five class scores as floats; :class:`BadRequest` when one is missing or not a number."""
    try:
        out = {c: float(scores[c]) for c in CLASS_NAMES}
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"scores must give a number for each of {', '.join(CLASS_NAMES)} ({exc})") from exc
    return out


def check_reviewer(reviewer: Any) -> str:
    """The trimmed reviewer id; :class:`BadRequest` when it is missing or too long."""
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise BadRequest("a reviewer id is required")
    trimmed: str = reviewer.strip()
    if len(trimmed) > MAX_REVIEWER_LENGTH:
        raise BadRequest(f"reviewer id longer than {MAX_REVIEWER_LENGTH} characters")
    return trimmed
