"""The review grid's work, apart from its page: claim a page of items, decide all but the exceptions.

:func:`claim_page` claims up to ``NSFW_REVIEW_GRID_SIZE`` items for one reviewer, one claim at a time
through the queue's own :meth:`~nsfw_core.state.review.ReviewQueue.claim` (the same leases, order and
locking as the Review page: two reviewers never hold the same item).  Items that do not belong in a
grid go straight back to their place in the queue: an item shown *blind* (an audit item, issue 25: its
thumbnail would come with the model's leaning, which a blind reviewer must not see), and an item whose
classified bytes are not kept (nothing to look at: the Review page decides it from its scores), a video
(issue 27: the Review page plays it; a thumbnail is not the video), and an item that looks like a remembered
decision to PDQ while the model sees it differently (``matched``, issue 29: the blend attack lays another
picture's detail over a decided image's shading): the Review page shows that match beside it, and a blurred
thumbnail cleared with "Mark the rest safe" would hand the remembered decision to its look-alike unseen.

:func:`decide_rest` records the reviewer's one action item by item, exactly as the Review page records a
decision (:meth:`~nsfw_core.state.review.ReviewQueue.decide` with the reviewer's identity, the item's
perceptual hashes and ``seen``: the grid showed the item's own bytes, so the decision is remembered for
copies; the webhooks' outbox is written in each decision's transaction); the exceptions go back to their
place in the queue for the one-by-one Review page.  An item whose lease ran out and that another reviewer
took meanwhile is not decided (its conflict is reported), whatever the others do.  The exceptions are set aside
(:mod:`nsfw_core.state.review.grid`): no grid, this reviewer's or another's, shows them again.  :func:`undo_action`
takes back the last action's decisions, latest first, through the queue's undo.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Collection, Iterable, Sequence

from nsfw_core.base.errors import NSFWError
from nsfw_core.images.sniff import sniff_video
from nsfw_core.state.known import item_hashes
from nsfw_core.state.review import Item, ReviewQueue
from nsfw_core.state.review import grid as marks


@dataclasses.dataclass
class Outcome:
    """What one grid action did: the items decided, the exceptions given back, and the ones it could not
    touch (``lost``: item id and why, e.g. another reviewer holds it now)."""

    label: str
    decided: list[int] = dataclasses.field(default_factory=list)
    returned: list[int] = dataclasses.field(default_factory=list)
    lost: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def fits(item: Item) -> bool:
    """True when an item may be shown in a grid: not blind (an audit item), not a video, without a refused
    look-alike match (the Review page shows it), and with its own classified bytes."""
    if item.blind or item.matched or not item.image or sniff_video(item.image) is not None:
        return False
    return hashlib.sha256(item.image).hexdigest() == item.sha256


def claim_page(queue: ReviewQueue, reviewer: str, size: int, exclude: Iterable[int] = ()
               ) -> tuple[list[Item], set[int]]:
    """Claim up to ``size`` items for ``reviewer``, oldest first: (the items, the ids given back at once because
    they do not fit a grid; the caller keeps them out of its later pages).  Items set aside for one-by-one
    review (a grid's exceptions) are never claimed."""
    excluded = {int(i) for i in exclude} | marks.set_aside_ids(queue.pool)
    items: list[Item] = []
    left_out: set[int] = set()
    while len(items) < size:
        item = queue.claim(reviewer, exclude=excluded)
        if item is None:
            break
        excluded.add(item.id)
        if fits(item):
            items.append(item)
            continue
        left_out.add(item.id)
        _give_back(queue, reviewer, item.id)
    if items:  # set aside by another grid while these were being claimed: given back too
        late = marks.set_aside_ids(queue.pool) & {i.id for i in items}
        for item_id in late:
            _give_back(queue, reviewer, item_id)
        items = [i for i in items if i.id not in late]
        left_out |= late
    return items, left_out


def _give_back(queue: ReviewQueue, reviewer: str, item_id: int) -> None:
    try:
        queue.release(item_id, reviewer)
    except NSFWError:
        pass


def decide_rest(ctx: Any, queue: ReviewQueue, reviewer: str, items: Sequence[Item], exceptions: Collection[int],
                label: str) -> Outcome:
    """Decide ``label`` for every item of ``items`` but ``exceptions``, each as the Review page decides one;
    give the exceptions back to their place in the queue.  An item that does not fit a grid (:func:`fits`: one
    :func:`claim_page` never hands out, e.g. a refused look-alike) is never decided here: it goes back with the
    exceptions, for the Review page."""
    out = Outcome(label)
    for item in items:
        try:
            if item.id in exceptions or not fits(item):  # marked first: a grid that claims it once released sees it
                marks.set_aside(queue.pool, (item.id,))
                queue.release(item.id, reviewer)
                out.returned.append(item.id)
                continue
            hashes = item_hashes(ctx, queue, item.id, item.image)
            queue.decide(item.id, reviewer, label, phash=hashes, seen=item.sha256)  # fits: its own bytes shown
            out.decided.append(item.id)
        except NSFWError as exc:  # taken by another reviewer after the lease ran out, purged, database down
            out.lost.append((item.id, exc.message))
    return out


def undo_action(queue: ReviewQueue, reviewer: str, decided: Collection[int]) -> list[int]:
    """Take back the decisions of one grid action (the reviewer's latest decisions, as many as it made): the
    items come back claimed by ``reviewer``.  Stops at a decision that is not the action's (made since, from
    another page), which goes back to the queue undone."""
    back: list[int] = []
    for _ in range(len(decided)):
        item = queue.undo(reviewer, reclaim=True)
        if item is None:
            break
        if item.id not in decided:
            try:
                queue.release(item.id, reviewer)
            except NSFWError:
                pass
            break
        back.append(item.id)
    return back


def summary(out: Outcome) -> str:
    """The action as one sentence."""
    parts = [f"{len(out.decided)} item{'s' if len(out.decided) != 1 else ''} decided **{out.label}**"]
    if out.returned:
        parts.append(f"{len(out.returned)} exception{'s' if len(out.returned) != 1 else ''} back in the queue "
                     "for one-by-one review")
    if out.lost:
        parts.append(f"{len(out.lost)} not decided (another reviewer holds {'them' if len(out.lost) > 1 else 'it'} "
                     "now, or it is gone)")
    return "; ".join(parts) + "."
