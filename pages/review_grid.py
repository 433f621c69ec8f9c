"""Review grid: many obvious items at once. A page of blurred thumbnails from the queue; the reviewer ticks the
exceptions and decides the rest in one action.

Only reviewers and admins get this page; every button checks the role again on the server.  The page
claims up to ``NSFW_REVIEW_GRID_SIZE`` items (24) for the signed-in identity with the Review page's leases
(:mod:`nsfw_ui.review_grid`), shows them blurred (``grid_reveal`` reveals them), ordered by the model's
adult score under the thresholds in force (most likely safe first, or most likely adult first), each with
the model's leaning.  "Mark the rest safe" / "Mark the rest adult" records one decision per unticked item,
as the Review page does (identity, remembered decisions, webhooks); the ticked exceptions go back to their
place in the queue for the one-by-one Review page, and this session's grid does not show them again.
An audit item (issue 25, shown blind) never appears here, nor an item that looks like a remembered decision
to PDQ while the model sees it differently (issue 29: the Review page shows the match beside it): it goes back
to the queue at once, for the Review page.  "Undo the last action" takes back the last action's decisions;
the items come back here.

Widget keys: ``grid_order`` (radio), ``grid_reveal`` (toggle), ``grid_pick_<item id>`` (checkbox, an
exception), ``grid_safe`` / ``grid_adult`` (the action), ``grid_undo``, ``grid_next`` (another page:
the items shown go back to the queue undecided).
"""

from __future__ import annotations

import streamlit as st
from PIL import Image

from nsfw_core.access import Identity, Permission
from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import ADULT, SAFE
from nsfw_core.context import Context
from nsfw_core.state.review import CLAIMED, Item, ReviewQueue
from nsfw_ui import auth, review_grid, state, widgets

HELD_KEY = "grid_held"  # (reviewer, [item ids]) the page holds
LEFT_OUT_KEY = "grid_left_out"  # ids kept out of this grid (exceptions, audit items, look-alikes, no bytes)
LAST_KEY = "grid_last"  # (reviewer, [item ids]) decided by the last action
MESSAGE_KEY = "grid_message"
THUMBS_KEY = "grid_thumbs"  # {item id: thumbnail}
THUMB_SIDE = 160
COLUMNS = 6
ORDERS = ("most likely safe first", "most likely adult first")
_md = widgets.md_escape


def _say(kind: str, text: str) -> None:
    st.session_state[MESSAGE_KEY] = (kind, text)


def _left_out() -> set[int]:
    ids: set[int] = st.session_state.setdefault(LEFT_OUT_KEY, set())
    return ids


def _held(queue: ReviewQueue, reviewer: str, size: int) -> list[Item]:
    """The items this session holds (still claimed by it), or a new page claimed now."""
    held = st.session_state.get(HELD_KEY)
    items: list[Item] = []
    if held is not None:
        name, ids = held
        for item_id in ids:
            item = queue.get(item_id)
            if item is None:
                continue
            if name != reviewer:  # the name changed: give the items back under the old one
                try:
                    queue.release(item_id, name)
                except NSFWError:
                    pass
            elif item.status == CLAIMED and item.claimed_by == reviewer and review_grid.fits(item):
                items.append(item)
    if not items:
        items, left_out = review_grid.claim_page(queue, reviewer, size, exclude=_left_out())
        _left_out().update(left_out)
    st.session_state[HELD_KEY] = (reviewer, [i.id for i in items])
    return items


def _picked(items: list[Item]) -> set[int]:
    return {i.id for i in items if st.session_state.get(f"grid_pick_{i.id}", False)}


def _on_decide(ctx: Context, queue: ReviewQueue, who: Identity, label: str) -> None:
    try:
        auth.check(who, Permission.REVIEW)
        reviewer, ids = st.session_state.get(HELD_KEY) or (who.name, [])
        if reviewer != who.name:
            raise NSFWError("you signed in as someone else: these items were claimed under another name")
        items = [it for it in (queue.get(i) for i in ids) if it is not None]
        exceptions = _picked(items)
        out = review_grid.decide_rest(ctx, queue, who.name, items, exceptions, label)
        _left_out().update(out.returned)
        st.session_state[LAST_KEY] = (who.name, out.decided)
        _say("success" if not out.lost else "warning", review_grid.summary(out))
    except NSFWError as exc:
        _say("warning", _md(f"{exc.code}: {exc.message}"))
    st.session_state[HELD_KEY] = None


def _on_undo(queue: ReviewQueue, who: Identity) -> None:
    try:
        auth.check(who, Permission.REVIEW)
        last = st.session_state.get(LAST_KEY)
        if not last or last[0] != who.name or not last[1]:
            _say("info", "Nothing to undo.")
            return
        held = st.session_state.get(HELD_KEY)
        if held is not None and held[0] == who.name:  # the page on screen goes back to the queue
            for item_id in held[1]:
                try:
                    queue.release(item_id, who.name)
                except NSFWError:
                    pass
        back = review_grid.undo_action(queue, who.name, set(last[1]))
        st.session_state[HELD_KEY] = (who.name, back)
        st.session_state[LAST_KEY] = None
        _say("info", f"{len(back)} decision{'s' if len(back) != 1 else ''} undone: the items are back here.")
    except NSFWError as exc:
        _say("warning", _md(f"{exc.code}: {exc.message}"))


def _on_next(queue: ReviewQueue, who: Identity) -> None:
    held = st.session_state.get(HELD_KEY)
    if held is not None and held[0] == who.name:
        for item_id in held[1]:
            try:
                queue.release(item_id, who.name)
            except NSFWError:
                pass
            _left_out().add(item_id)
    st.session_state[HELD_KEY] = None


def _thumbnail(ctx: Context, item: Item) -> Image.Image | None:
    thumbs: dict[int, Image.Image | None] = st.session_state.setdefault(THUMBS_KEY, {})
    if item.id not in thumbs:
        if len(thumbs) > 4 * COLUMNS * 8:
            thumbs.clear()
        try:
            assert item.image is not None
            img = Image.fromarray(ctx.decoder.preview(item.image, THUMB_SIDE * 2))
            img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        except NSFWError:
            img = None
        thumbs[item.id] = img
    return thumbs[item.id]


def _leaning(ctx: Context, item: Item) -> str:
    thresholds = ctx.thresholds.current().thresholds
    top = max(item.scores, key=lambda c: item.scores[c])
    return f"{top} {item.scores[top]:.2f} · adult score {thresholds.adult_score(item.scores):.2f}"


def _grid(ctx: Context, items: list[Item], revealed: bool) -> None:
    for start in range(0, len(items), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, item in zip(cols, items[start:start + COLUMNS], strict=False):
            with col:
                thumb = _thumbnail(ctx, item)
                if thumb is None:
                    st.caption(f"item {item.id}: cannot be shown")
                else:
                    st.image(thumb if revealed else widgets.blurred(thumb, radius=10),
                             caption=f"item {item.id}" + ("" if revealed else " (blurred)"),
                             alt=f"{'' if revealed else 'blurred '}thumbnail of item {item.id}")
                st.caption(_leaning(ctx, item))
                st.checkbox("exception", key=f"grid_pick_{item.id}",
                            help="Leave this one for the one-by-one Review page")


def page() -> None:
    who = auth.require(Permission.REVIEW)
    st.title("Review grid")
    st.caption("Tick the exceptions, then decide the rest in one action. Each item is recorded as on the Review "
               "page; the exceptions go back to the queue for one-by-one review.")
    ctx = state.context()
    try:
        queue = ctx.review_queue
        queue.purge_if_due()
        items = _held(queue, who.name, ctx.settings.review_grid_size)
        counts = queue.counts()
    except NSFWError as exc:
        st.error(_md(f"{exc.code}: {exc.message}"))
        return
    left = counts["pending"] + counts["claimed"]
    st.markdown(f"**{left}** left to review · {len(items)} on this page · you are {_md(who.name)}")
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is not None:
        getattr(st, message[0])(message[1])
    order = st.radio("Order", ORDERS, key="grid_order", horizontal=True)
    thresholds = ctx.thresholds.current().thresholds
    items.sort(key=lambda i: (thresholds.adult_score(i.scores), i.id), reverse=order == ORDERS[1])
    revealed = st.toggle("Reveal thumbnails", key="grid_reveal", help="The thumbnails are blurred until revealed.")
    if not items:
        st.success("Nothing left for the grid." + (" The items left need one-by-one review (Review page)."
                                                   if left else ""))
    else:
        _grid(ctx, items, revealed)
    picked = len(_picked(items))
    rest = len(items) - picked
    cols = st.columns(4)
    cols[0].button(f"Mark the rest safe ({rest})", key="grid_safe", type="primary", disabled=not items,
                   on_click=_on_decide, args=(ctx, queue, who, SAFE), width="stretch")
    cols[1].button(f"Mark the rest adult ({rest})", key="grid_adult", disabled=not items,
                   on_click=_on_decide, args=(ctx, queue, who, ADULT), width="stretch")
    cols[2].button("Undo the last action", key="grid_undo", icon=":material/undo:", on_click=_on_undo,
                   args=(queue, who), width="stretch")
    cols[3].button("Another page", key="grid_next", disabled=not items, on_click=_on_next, args=(queue, who),
                   help="These items go back to the queue undecided", width="stretch")


page()
