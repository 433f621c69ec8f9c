"""Review page: a person labels the images the model could not decide, one at a time.

The queue is ``nsfw_core.state.review.ReviewQueue`` (the process context's, ``nsfw_ui.state.context().review_queue``).
Only reviewers and admins get this page (:mod:`nsfw_core.access`); decisions are
recorded under the signed-in identity's name, and every button checks the role
again on the server.  The page claims the oldest pending item for that name
(a lease of ``NSFW_REVIEW_LEASE_SECONDS``: another reviewer gets it if it is
left that long), shows it blurred until revealed,
with its scores, and records the button pressed: ``adult`` / ``safe`` or one
of the five classes, ``skip`` (the item goes to the end of the queue and this
session does not see it again until "review skipped items again"), or
``undo`` (the latest decision of this reviewer comes back to them).

An audit item (a random sample of the automatic verdicts, NSFW_AUDIT_RATE) is shown blind: neither
the model's verdict nor its scores.  Under double review (NSFW_DOUBLE_REVIEW_RATE) the label is this
reviewer's vote: the item goes to a second reviewer, and to an admin when the two disagree.

The image is always the bytes that were classified (issue 29): the stored bytes (a URL
item's always, an upload's with ``NSFW_REVIEW_STORE_UPLOADS``, an audit item's always); a
review item queued before the queue kept URL bytes is fetched again through the SSRF-safe
fetcher and shown only when its sha256 is the item's (once per item and session; "Fetch
again" after an error); an audit item is never fetched again.  A decision is remembered for
later copies only when the reviewer was shown those bytes (``seen``); an upload whose bytes
were not kept is decided from its scores, and remembered for nothing.  A review item whose
look-alike match the model disagreed with shows that match.  A video item (issue 27) is its video,
played once revealed; a decision on it is remembered by its frames' hashes, as it was classified.

Beside the image (issue 30, :mod:`nsfw_ui.evidence`): where the model found the deciding class (an
occlusion heat-map, blurred like the image until revealed; another class on request), computed when
the item is claimed or ahead of that and kept with the item, and the similar past decisions (the
closest decided items by PDQ, with their decisions, who decided, when, and blurred thumbnails).
Many obvious items at once: the review grid (``pages/review_grid.py``).

Widget keys: ``reveal_<item id>`` (toggle); ``evidence_class_<item id>`` (selectbox);
``label_<label>`` for each label, ``skip``, ``undo`` and ``reset_skipped``
and ``refetch`` (buttons); ``download_reviewed_csv`` and ``download_reviewed_zip`` (admins only).
Keyboard shortcuts: A adult, S safe, 1-5 the classes in order (drawings,
hentai, neutral, porn, sexy), K skip, U undo.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import streamlit as st
from PIL import Image

from nsfw_core.access import Identity, Permission, Role
from nsfw_core.base.errors import NSFWError
from nsfw_core.base.labels import BINARY_LABELS, CLASS_NAMES, DECISION_LABELS
from nsfw_core.context import Context
from nsfw_core.images.sniff import sniff_video
from nsfw_core.state.known import item_hashes
from nsfw_core.state.review import Item, ReviewQueue, iso
from nsfw_ui import auth, evidence, inputs, state, widgets

CURRENT_KEY = "review_current"  # (item id, reviewer id it was claimed under)
SKIPPED_KEY = "review_skipped"  # ids this session skipped
MESSAGE_KEY = "review_message"  # (kind, text) shown once after a button
FETCHED_KEY = "review_fetched"  # {item id: bytes or error text}: URL images fetched for this session
SHOWN_KEY = "review_shown"  # {item id: sha256 of the bytes shown}: what the reviewer saw (the item's own bytes)
SHORTCUTS = {"adult": "A", "safe": "S", "drawings": "1", "hentai": "2", "neutral": "3", "porn": "4", "sexy": "5",
             "skip": "K", "undo": "U"}
LABEL_HELP = {"adult": "Adult (binary label)", "safe": "Safe (binary label)",
              "drawings": "Safe drawing or anime", "hentai": "Adult drawing or anime",
              "neutral": "Safe photo", "porn": "Explicit photo", "sexy": "Suggestive photo"}
PREVIEW_SIZE = 512
_md = widgets.md_escape  # user-supplied text (a reviewer name, a URL, an error message) shown literally


def _error_text(exc: NSFWError) -> str:
    return _md(f"{exc.code}: {exc.message}")


def _say(kind: str, text: str) -> None:
    st.session_state[MESSAGE_KEY] = (kind, text)


# ---------------------------------------------------------------- the current item


def _current(queue: ReviewQueue, reviewer: str, admin: bool = False) -> Item | None:
    """The item this session holds (still claimed by it), else the next one claimed now."""
    held = st.session_state.get(CURRENT_KEY)
    if held is not None:
        item_id, claimed_as = held
        if claimed_as != reviewer:  # the name changed: give the item back under the old id
            try:
                queue.release(item_id, claimed_as)
            except NSFWError:
                pass
        else:
            item = queue.get(item_id)
            if item is not None and item.status == "claimed" and item.claimed_by == reviewer:
                return item
            if item is not None and item.status != "decided":
                _say("warning", f"Item {item_id} was given to another reviewer after your lease ran out.")
        st.session_state[CURRENT_KEY] = None
    item = queue.claim(reviewer, exclude=st.session_state.get(SKIPPED_KEY, set()), admin=admin)
    st.session_state[CURRENT_KEY] = (item.id, reviewer) if item is not None else None
    return item


# ---------------------------------------------------------------- button callbacks


def _on_decide(queue: ReviewQueue, who: Identity, item_id: int, label: str) -> None:
    try:
        auth.check(who, Permission.REVIEW)
        fetched = st.session_state.get(FETCHED_KEY, {}).get(item_id)
        seen = st.session_state.get(SHOWN_KEY, {}).get(item_id)
        # an item queued without perceptual hashes gets them now (the bytes shown), so later copies of the
        # image get this decision too (nsfw_core.state.known); items queued by the API carry them already
        hashes = item_hashes(state.context(), queue, item_id, fetched if isinstance(fetched, bytes) else None) \
            if seen else None
        item = queue.decide(item_id, who.name, label, phash=hashes, seen=seen, admin=who.role >= Role.ADMIN)
        if item.status == "decided":
            _say("success", f"Item {item_id}: **{label}**.")
        elif item.escalated:
            _say("info", f"Item {item_id}: your label **{label}** disagrees with another reviewer's: an admin decides.")
        else:
            _say("success", f"Item {item_id}: your label **{label}** is recorded; a second reviewer decides it too "
                            "(double review).")
    except NSFWError as exc:
        _say("warning", _error_text(exc))
    st.session_state[CURRENT_KEY] = None


def _on_skip(queue: ReviewQueue, who: Identity, item_id: int) -> None:
    try:
        auth.check(who, Permission.REVIEW)
        queue.skip(item_id, who.name)
        _say("info", f"Item {item_id} skipped: it goes to the end of the queue.")
    except NSFWError as exc:
        _say("warning", _error_text(exc))
    st.session_state.setdefault(SKIPPED_KEY, set()).add(item_id)
    st.session_state[CURRENT_KEY] = None


def _on_undo(queue: ReviewQueue, who: Identity) -> None:
    held = st.session_state.get(CURRENT_KEY)
    reviewer = who.name
    try:
        auth.check(who, Permission.REVIEW)
        item = queue.undo(reviewer, reclaim=True)
    except NSFWError as exc:
        _say("warning", _error_text(exc))
        return
    if item is None:
        _say("info", "Nothing to undo.")
        return
    if held is not None:  # the item on screen goes back to its place in the queue
        try:
            queue.release(held[0], held[1])
        except NSFWError:
            pass
    st.session_state.get(SKIPPED_KEY, set()).discard(item.id)
    st.session_state[CURRENT_KEY] = (item.id, reviewer)
    _say("info", f"Decision on item {item.id} undone: label it again.")


def _on_refetch() -> None:
    st.session_state.pop(FETCHED_KEY, None)


def _on_reset_skipped() -> None:
    st.session_state[SKIPPED_KEY] = set()


# ---------------------------------------------------------------- display


def _image_bytes(ctx: Context, item: Item) -> tuple[bytes | None, str | None]:
    """The bytes that were classified (stored, or, for a review item queued before URL bytes were kept, fetched
    once per session from its URL and refused when its sha256 is not the item's) or an error text.  An audit
    item's bytes are always stored: it is never fetched again."""
    if item.image:
        if hashlib.sha256(item.image).hexdigest() != item.sha256:
            return None, ("The stored bytes are not the classified image's (sha256 differs): "
                          + ("skip it." if item.blind else "decide from the scores."))
        return item.image, None
    if not item.is_url or item.blind:
        return None, None
    fetched = st.session_state.setdefault(FETCHED_KEY, {})
    if item.id not in fetched:
        try:
            fetched.clear()  # keep only the current item's bytes
            data = inputs.url_bytes(ctx, item.source)
            fetched[item.id] = data if hashlib.sha256(data).hexdigest() == item.sha256 else (
                "The URL now serves other bytes than the image that was classified (its sha256 differs), so "
                "they are not shown: decide from the scores or skip; the decision will not be remembered "
                "for copies.")
        except NSFWError as exc:
            fetched[item.id] = _error_text(exc)
    value = fetched[item.id]
    return (value, None) if isinstance(value, bytes) else (None, value)


def _show_image(ctx: Context, queue: ReviewQueue, item: Item) -> None:
    data, error = _image_bytes(ctx, item)
    if error:
        st.error(error)
        st.button("Fetch again", key="refetch", on_click=_on_refetch)
        return
    if data is None:
        st.info("The image was not stored: skip it." if item.blind else
                "The image was not stored (NSFW_REVIEW_STORE_UPLOADS is off) and has no URL: "
                "decide from the scores, or skip; the decision will not be remembered for copies.")
        return
    if sniff_video(data) is not None:  # a video: played once revealed (nothing of it shows before)
        st.session_state[SHOWN_KEY] = {item.id: hashlib.sha256(data).hexdigest()}  # the item's own bytes
        revealed = st.toggle("Reveal video", key=f"reveal_{item.id}", help="The video is hidden until you reveal it.")
        if revealed:
            st.video(data)
        else:
            st.info(f"Item {item.id} is a video: reveal it to play it.")
        evidence.show_overlay(ctx, queue, item, data, None, revealed)  # over its deciding frame, blurred till then
        return
    try:
        pixels = ctx.decoder.preview(data, PREVIEW_SIZE)
    except NSFWError as exc:
        st.error(_error_text(exc))
        return
    st.session_state[SHOWN_KEY] = {item.id: hashlib.sha256(data).hexdigest()}  # the item's own bytes
    revealed = st.toggle("Reveal image", key=f"reveal_{item.id}",
                         help="The image is blurred until you reveal it.")
    if revealed:
        img = Image.fromarray(pixels)
        img.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
        st.image(img, caption=f"item {item.id}")
    else:
        st.image(widgets.blurred(pixels), caption=f"item {item.id} (blurred)")
    evidence.show_overlay(ctx, queue, item, data, pixels, revealed)


def _scores_table(item: Item) -> pd.DataFrame:
    return pd.DataFrame({"class": list(CLASS_NAMES), "score": [round(float(item.scores[c]), 4) for c in CLASS_NAMES]})


def _buttons(queue: ReviewQueue, item: Item | None, who: Identity) -> None:
    disabled = item is None
    item_id = item.id if item is not None else 0
    cols = st.columns(len(DECISION_LABELS) + 1)
    for col, label in zip(cols[:-1], DECISION_LABELS, strict=True):
        col.button(label, key=f"label_{label}", disabled=disabled, help=LABEL_HELP[label],
                   type="primary" if label in BINARY_LABELS else "secondary", shortcut=SHORTCUTS[label],
                   on_click=_on_decide, args=(queue, who, item_id, label), width="stretch")
    cols[-1].button("skip", key="skip", disabled=disabled, help="Not now: back to the end of the queue",
                    shortcut=SHORTCUTS["skip"], on_click=_on_skip, args=(queue, who, item_id), width="stretch")
    st.button("Undo last decision", key="undo", icon=":material/undo:", shortcut=SHORTCUTS["undo"],
              on_click=_on_undo, args=(queue, who))


def _downloads(queue: ReviewQueue, who: Identity, decided: int) -> None:
    """Admins' exports; the data is made when the button is pressed, after the role is checked again."""

    def csv() -> str:
        auth.check(who, Permission.EXPORT)
        return queue.export_csv()

    def archive() -> bytes:
        auth.check(who, Permission.EXPORT)
        return queue.export_zip()[0]

    col1, col2 = st.columns(2)
    col1.download_button("Download reviewed items (CSV)", data=csv, file_name="reviewed.csv",
                         mime="text/csv", key="download_reviewed_csv", disabled=decided == 0, on_click="ignore",
                         help="Manifest of the decided items: path,label,sha256,model, the five scores, decided_at")
    col2.download_button("Download reviewed items with images (ZIP)", data=archive,
                         file_name="reviewed.zip", mime="application/zip", key="download_reviewed_zip",
                         disabled=decided == 0, on_click="ignore",
                         help="manifest.csv + stored images: upload it on the calibration page")


def _show_status(counts: dict[str, int], reviewer: str) -> None:
    """How many items are left, who this reviewer is, and the message of the latest button."""
    left = counts["pending"] + counts["claimed"]
    st.markdown(f"**{left}** left to review ({counts['pending']} waiting, {counts['claimed']} being reviewed)"
                f" · {counts['decided']} decided · you are {_md(reviewer)}")
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is not None:
        getattr(st, message[0])(message[1])


def _show_nothing_left(counts: dict[str, int]) -> None:
    skipped = st.session_state.get(SKIPPED_KEY, set())
    if counts["pending"] and skipped:
        st.info(f"Only items you skipped are left ({len(skipped)}).")
        st.button("Review skipped items again", key="reset_skipped", on_click=_on_reset_skipped)
    elif counts["pending"]:
        st.success(f"Nothing left for you: {counts['pending']} waiting for another reviewer (double review) or "
                   "for an admin (two reviewers disagreed).")
    else:
        st.success("Nothing left to review.")


def _show_item(ctx: Context, queue: ReviewQueue, item: Item) -> None:
    """The item held: its image (blurred until revealed) and where the model looked, beside its source, model,
    verdict and scores and the similar past decisions; an audit item blind (neither the model's verdict, its
    scores, its evidence nor similar past decisions: they would anchor the reviewer)."""
    left_col, right_col = st.columns([3, 2])
    with left_col:
        _show_image(ctx, queue, item)
    with right_col:
        st.markdown(f"**Source:** {_md(item.source)}")
        skipped = f" · skipped {item.skips}×" if item.skips else ""
        if item.blind:
            st.caption(f"queued {iso(item.created_at)}{skipped}")
            st.info("Decide from the image alone: the model's verdict and scores are hidden for this item.")
        else:
            st.caption(f"model {_md(item.model)} · verdict {_md(item.verdict)} · queued {iso(item.created_at)}"
                       + skipped)
            st.dataframe(_scores_table(item), hide_index=True)
            _show_match(item)
            evidence.show_similar(ctx, queue, item, evidence.revealed(item))
        if item.escalated:
            said = ", ".join(f"{_md(v.reviewer)} said **{_md(v.label)}**" for v in queue.votes(item.id))
            st.warning(f"Two reviewers disagreed ({said}): your decision is final.")


def _show_match(item: Item) -> None:
    """A remembered decision this image looks like (PDQ) while the model sees it differently: the reviewer
    decides, knowing it (issue 29: a perceptual hash alone never clears).  Never for an audit item (blind)."""
    if not item.matched or item.blind:
        return
    try:
        m = json.loads(item.matched)
        text = (f"Looks like {'review item ' + str(m['review_id']) if m.get('review_id') else 'a hash-list entry'}"
                f" ({_md(str(m.get('label', '')))}, {m.get('by', 'pdq')} distance {int(m.get('distance', 0))}),"
                " but the model sees it differently: decide on what you see.")
    except (ValueError, TypeError, KeyError):
        return
    st.warning(text)


def page() -> None:
    who = auth.require(Permission.REVIEW)
    st.title("Review queue")
    ctx = state.context()
    try:
        queue = ctx.review_queue
    except NSFWError as exc:
        st.error(_error_text(exc))
        return
    reviewer = who.name
    try:
        queue.purge_if_due()
        item = _current(queue, reviewer, admin=who.role >= Role.ADMIN)
        counts = queue.counts()
    except NSFWError as exc:
        st.error(_error_text(exc))
        return

    _show_status(counts, reviewer)
    if item is None:
        _show_nothing_left(counts)
    else:
        _show_item(ctx, queue, item)
        evidence.prefetch(ctx, queue)  # the next items' evidence, in the background
    _buttons(queue, item, who)
    st.caption("Shortcuts: " + " · ".join(f"{k} {v}" for k, v in SHORTCUTS.items()))
    if auth.can(who, Permission.EXPORT):
        _downloads(queue, who, counts["decided"])


page()
