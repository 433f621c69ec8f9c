"""Audit sampling and double review: what the queue needs to measure the real error rate.

Two kinds of item (``review_items.kind``, :mod:`nsfw_core.state.migrations` version 9):

- ``review``: an image whose verdict NSFW_REVIEW_VERDICTS sends to a person (``unknown`` by default), all
  of them, so queued with probability 1;
- ``audit``: a random sample of the automatic verdicts (NSFW_AUDIT_RATE, per verdict), queued with the
  probability that chose it.  The client's answer is unchanged and the automatic verdict stands; the
  item only measures.  Reviewers see it *blind*: neither the model's verdict nor its scores, anywhere
  (the Review page, the reviewer API, ``GET /v1/reviews/{id}``, webhooks), so the model cannot anchor
  them.  Its bytes are kept whatever NSFW_REVIEW_STORE_UPLOADS says (a blind reviewer has no scores to
  decide from).

Double review (NSFW_DOUBLE_REVIEW_RATE): a share of items of either kind needs two reviewers
(``reviews_needed`` 2).  Each one's label is a row of ``review_votes``; the first vote puts the item back
in the queue (at its place) for someone else; a reviewer never gets an item they have voted on.  The
second vote decides it when the two agree on adult/safe (the label itself when equal, else the binary
label); otherwise the item is ``escalated`` and only an admin may decide it.  An undo removes the
reviewer's own vote (:func:`undo_vote`).

:class:`AuditPolicy` draws the samples; the SQL pieces here are called by
:class:`~nsfw_core.state.review.queue.ReviewQueue` inside its transactions, and :func:`audited`,
:func:`vote_pairs` and :func:`open_counts` read what the evaluation (:mod:`nsfw_core.calibration.production`)
estimates from.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Callable, Mapping, Sequence

from nsfw_core.base.labels import ADULT, SAFE, to_binary
from nsfw_core.state.db import Backend, Tx
from nsfw_core.state.errors import ReviewConflict
from nsfw_core.state.migrations import TABLE, VOTES_TABLE
from nsfw_core.state.review.items import CLAIMED, DECIDED, PENDING

REVIEW, AUDIT = "review", "audit"
KINDS = (REVIEW, AUDIT)
AUDITED_VERDICTS = (ADULT, SAFE)  # the automatic verdicts


@dataclasses.dataclass(frozen=True)
class AuditPolicy:
    """Which automatic verdicts are sampled for audit, at what rate, and how many items get two reviewers.

    ``rates``: verdict -> probability (0 to 1) for ``adult`` and ``safe``; ``double_rate``: the share of
    queued items (audit or review) that two reviewers decide independently.  ``rand`` draws in [0, 1).
    """

    rates: Mapping[str, float]
    double_rate: float = 0.0
    rand: Callable[[], float] = random.random

    def rate(self, verdict: str) -> float:
        return float(self.rates.get(verdict, 0.0)) if verdict in AUDITED_VERDICTS else 0.0

    def sample(self, verdict: str) -> float | None:
        """The probability that chose an automatic ``verdict`` for audit now, or None (not chosen)."""
        rate = self.rate(verdict)
        return rate if rate > 0 and self.rand() < rate else None

    def reviews(self) -> int:
        """How many reviewers a newly queued item needs: 2 for a share ``double_rate`` of them, else 1."""
        return 2 if self.double_rate > 0 and self.rand() < self.double_rate else 1

    @property
    def on(self) -> bool:
        return any(self.rate(v) > 0 for v in AUDITED_VERDICTS)

    def describe(self) -> str:
        """``adult 2 %, safe 0.5 %`` (or ``off``)."""
        if not self.on:
            return "off"
        return ", ".join(f"{v} {100 * self.rate(v):g} %" for v in AUDITED_VERDICTS)


# ---------------------------------------------------------------- claiming


def claimable(admin: bool) -> str:
    """The condition (on the inner claim query's ``review_items``) that a reviewer may take an item: not one
    they voted on, and not an escalated one unless an admin (who gets those first: :func:`claim_order`).
    One ``?``: the reviewer."""
    not_voted = (f"NOT EXISTS (SELECT 1 FROM {VOTES_TABLE} v WHERE v.item_id = {TABLE}.id AND v.reviewer = ?)")
    if admin:
        return f" AND (escalated = 1 OR {not_voted})"
    return f" AND escalated = 0 AND {not_voted}"


def claim_order(admin: bool) -> str:
    return "escalated DESC, queued_at, id" if admin else "queued_at, id"


# ---------------------------------------------------------------- deciding


@dataclasses.dataclass(frozen=True)
class Vote:
    reviewer: str
    label: str
    decided_at: float


def votes(tx: Tx, item_id: int) -> list[Vote]:
    """The item's votes, oldest first."""
    return [Vote(str(r), str(lb), float(t)) for r, lb, t in tx.run(
        f"SELECT reviewer, label, decided_at FROM {VOTES_TABLE} WHERE item_id = ? ORDER BY decided_at, id",
        (int(item_id),))]


def lock(tx: Tx, backend: Backend, item_id: int) -> tuple[int, bool, str, str | None] | None:
    """(reviews_needed, escalated, status, claimed_by) of the item, its row locked; None when it is gone."""
    row = tx.one(f"SELECT reviews_needed, escalated, status, claimed_by FROM {TABLE} WHERE id = ?{backend.for_update}",
                 (int(item_id),))
    if row is None:
        return None
    return int(row[0]), bool(row[1]), str(row[2]), row[3]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a vote did: ``final`` is the decided label (None: the item waits for another reviewer or an
    admin), ``escalated`` when the two reviewers disagreed."""

    final: str | None
    escalated: bool = False


def vote(tx: Tx, item_id: int, reviewer: str, label: str, now: float, *, needed: int, escalated: bool,
         admin: bool) -> Outcome:
    """Record ``reviewer``'s ``label`` for a double-review item (its row locked by :func:`lock`).

    An escalated item is an admin's to decide: their label is final.  Otherwise the vote is stored; the
    last one needed decides the item when the reviewers agree on adult/safe and escalates it when not.
    """
    if escalated:
        if not admin:
            raise ReviewConflict(f"item {item_id}: two reviewers disagreed on it; an admin decides it",
                                 item_id=item_id)
        return Outcome(label)
    earlier = votes(tx, item_id)
    if any(v.reviewer == reviewer for v in earlier):
        raise ReviewConflict(f"item {item_id}: you have reviewed it already; another reviewer decides it",
                             item_id=item_id)
    tx.run(f"INSERT INTO {VOTES_TABLE} (item_id, reviewer, label, decided_at) VALUES (?, ?, ?, ?)",
           (int(item_id), reviewer, label, now))
    given = [*earlier, Vote(reviewer, label, now)]
    if len(given) < needed:
        return Outcome(None)
    truths = {to_binary(v.label) for v in given}
    if len(truths) > 1:
        return Outcome(None, escalated=True)
    labels = {v.label for v in given}
    return Outcome(label if len(labels) == 1 else truths.pop())


def reopen(tx: Tx, item_id: int, *, escalated: bool | None = None) -> None:
    """Back to the queue at its place (pending, no claim); ``escalated`` set when given."""
    extra = "" if escalated is None else f", escalated = {1 if escalated else 0}"
    tx.run(f"UPDATE {TABLE} SET status = '{PENDING}', claimed_by = NULL, lease_until = NULL{extra} WHERE id = ?",
           (int(item_id),))


# ---------------------------------------------------------------- undoing


def latest_vote(tx: Tx, reviewer: str) -> tuple[int, float] | None:
    """(item id, when) of ``reviewer``'s latest vote, or None."""
    row = tx.one(f"SELECT item_id, decided_at FROM {VOTES_TABLE} WHERE reviewer = ? ORDER BY decided_at DESC, id DESC "
                 "LIMIT 1", (reviewer,))
    return (int(row[0]), float(row[1])) if row is not None else None


def has_voted(tx: Tx, item_id: int, reviewer: str) -> bool:
    return tx.one(f"SELECT 1 FROM {VOTES_TABLE} WHERE item_id = ? AND reviewer = ?", (int(item_id), reviewer)) \
        is not None


def undo_vote(tx: Tx, item_id: int, reviewer: str, now: float, *, status: str, escalated: bool,
              claimed_by: str | None, lease_until: float | None) -> None:
    """Remove ``reviewer``'s vote on the item (the caller reopens it).  Refused when an admin has since
    decided the dispute it was part of, or another reviewer holds the item now."""
    if status == DECIDED and escalated:
        raise ReviewConflict(f"cannot undo your vote on item {item_id}: an admin has decided it since",
                             item_id=item_id)
    if status == CLAIMED and claimed_by != reviewer and lease_until is not None and lease_until >= now:
        raise ReviewConflict(f"cannot undo your vote on item {item_id}: another reviewer holds it now",
                             item_id=item_id)
    tx.run(f"DELETE FROM {VOTES_TABLE} WHERE item_id = ? AND reviewer = ?", (int(item_id), reviewer))


def forget_votes(tx: Tx, item_ids: Sequence[int]) -> None:
    for item_id in item_ids:
        tx.run(f"DELETE FROM {VOTES_TABLE} WHERE item_id = ?", (int(item_id),))


def purge_votes(tx: Tx) -> None:
    """Votes of items that no longer exist (purged)."""
    tx.run(f"DELETE FROM {VOTES_TABLE} WHERE NOT EXISTS (SELECT 1 FROM {TABLE} i WHERE i.id = {VOTES_TABLE}.item_id)")


# ---------------------------------------------------------------- reads for the evaluation


@dataclasses.dataclass(frozen=True)
class Audited:
    """A decided item as the evaluation reads it: its kind, the model's verdict, the human label, the
    probability that queued it, when it was queued and decided."""

    id: int
    kind: str
    verdict: str
    label: str
    probability: float
    created_at: float
    decided_at: float
    scores: Mapping[str, float]


def _window(since: float | None, until: float | None, column: str = "created_at") -> tuple[str, list[Any]]:
    where, params = [], []
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(float(since))
    if until is not None:
        where.append(f"{column} < ?")
        params.append(float(until))
    return "".join(f" AND {w}" for w in where), params


def audited(tx: Tx, since: float | None = None, until: float | None = None) -> list[Audited]:
    """Decided items of both kinds queued in [since, until), oldest first."""
    clause, params = _window(since, until)
    rows = tx.run(f"SELECT id, kind, verdict, decision, probability, created_at, decided_at, scores FROM {TABLE} "
                  f"WHERE status = '{DECIDED}'{clause} ORDER BY created_at, id", params)
    return [Audited(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), float(r[5]), float(r[6] or 0.0),
                    json.loads(r[7])) for r in rows]


def open_counts(tx: Tx, since: float | None = None, until: float | None = None) -> dict[tuple[str, str], int]:
    """{(kind, verdict): items not decided yet} queued in [since, until), escalated ones under
    ``(kind, "escalated")`` too."""
    clause, params = _window(since, until)
    out: dict[tuple[str, str], int] = {}
    for kind, verdict, escalated, n in tx.run(
            f"SELECT kind, verdict, escalated, COUNT(*) FROM {TABLE} WHERE status <> '{DECIDED}'{clause} "
            "GROUP BY kind, verdict, escalated", params):
        out[(str(kind), str(verdict))] = out.get((str(kind), str(verdict)), 0) + int(n)
        if escalated:
            out[(str(kind), "escalated")] = out.get((str(kind), "escalated"), 0) + int(n)
    return out


def vote_pairs(tx: Tx, since: float | None = None, until: float | None = None) -> list[tuple[str, str]]:
    """The two reviewers' labels of every double-reviewed item queued in [since, until) with both votes."""
    clause, params = _window(since, until, "i.created_at")
    rows = tx.run(f"SELECT v.item_id, v.label FROM {VOTES_TABLE} v JOIN {TABLE} i ON i.id = v.item_id "
                  f"WHERE 1 = 1{clause} ORDER BY v.item_id, v.decided_at, v.id", params)
    by_item: dict[int, list[str]] = {}
    for item_id, label in rows:
        by_item.setdefault(int(item_id), []).append(str(label))
    return [(labels[0], labels[1]) for labels in by_item.values() if len(labels) >= 2]
