"""Hash lists page (admins): import, export and clear the allow/deny lists of known images.

A list is a CSV with the header ``sha256,pdq,label,note`` (:mod:`nsfw_core.state.known`): each row a sha256
or a PDQ hash (64 hex digits each) or both, a label (``allow``/``deny``, or ``safe``/``adult``) and a
note.  An image matching an entry gets the list's verdict (``verdict_source`` "list") on every replica
within about a second; a list entry wins over a reviewer's remembered decision.

Import adds the file's entries (an entry whose hashes are already listed replaces it), or replaces the
whole list; a malformed file is refused as a whole with the row named.  Every action checks the admin
role again on the server (:func:`nsfw_ui.auth.check`).

Widget keys: ``lists_upload`` (file), ``lists_replace`` (toggle), ``lists_import``, ``lists_clear``
(buttons), ``lists_download`` (download).
"""

from __future__ import annotations

import streamlit as st

from nsfw_core.access import Identity, Permission
from nsfw_core.base.errors import NSFWError
from nsfw_core.state.known import KnownImages, parse_list
from nsfw_ui import auth, state, widgets

MESSAGE_KEY = "lists_message"
_md = widgets.md_escape


def _say(kind: str, text: str) -> None:
    st.session_state[MESSAGE_KEY] = (kind, text)


def _on_import(known: KnownImages, who: Identity) -> None:
    upload = st.session_state.get("lists_upload")
    if upload is None:
        _say("warning", "Choose a CSV file first.")
        return
    try:
        auth.check(who, Permission.LISTS)
        entries = parse_list(upload.getvalue())
        replace = bool(st.session_state.get("lists_replace"))
        done = known.import_list(entries, by=who.name, replace=replace)
    except NSFWError as exc:
        _say("error", _md(f"{exc.code}: {exc.message}"))
        return
    _say("success", f"Imported {done['added']} entries from {_md(upload.name)}; {done['removed']} listed before "
                    f"{'were' if done['removed'] != 1 else 'was'} replaced.")


def _on_clear(known: KnownImages, who: Identity) -> None:
    try:
        auth.check(who, Permission.LISTS)
        removed = known.clear_list(by=who.name)
    except NSFWError as exc:
        _say("error", _md(f"{exc.code}: {exc.message}"))
        return
    _say("success", f"The list is empty: {removed} entries removed.")


def page() -> None:
    who = auth.require(Permission.LISTS)
    st.title("Hash lists")
    known = state.context().known
    known.refresh()  # what other replicas added since this one last looked (never raises)
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is not None:
        getattr(st, message[0])(message[1])
    counts = known.counts()
    st.caption(f"In force on this server: {counts['list']} list entries, {counts['review']} remembered review "
               f"decisions, {counts['hashes']} perceptual hashes · database {_md(known.describe())}")
    if known.warning:
        st.warning(_md(known.warning))

    st.subheader("Import")
    st.markdown("CSV with the header `sha256,pdq,label,note`: a sha256 or a PDQ hash (64 hex digits) or both, "
                "`allow` or `deny` (or `safe` / `adult`), and a note. A matching image gets the list's verdict "
                "(`verdict_source: list`) on every replica within about a second.")
    st.file_uploader("Hash list (CSV)", type=["csv"], key="lists_upload")
    st.toggle("Replace the whole list (otherwise add; an entry already listed is replaced)", key="lists_replace")
    st.button("Import", key="lists_import", type="primary", on_click=_on_import, args=(known, who))

    st.subheader("Export")
    try:
        text = known.export_list()
    except NSFWError as exc:
        st.error(_md(f"{exc.code}: {exc.message}"))
        return
    st.download_button("Download the list (CSV)", data=text, file_name="hash-list.csv", mime="text/csv",
                       key="lists_download", on_click="ignore")
    st.button("Clear the list", key="lists_clear", on_click=_on_clear, args=(known, who))


page()
