"""Entry point of the browser app: only builds the navigation (one file per page).

Which pages a visitor gets is decided here, on the server, from their identity
(:mod:`nsfw_ui.auth`); a page that is not in the navigation cannot be opened by
its URL, and every page checks the role again itself.
"""

import streamlit as st

from nsfw_core.access import Permission
from nsfw_ui import auth

st.set_page_config(page_title="NSFW moderation", page_icon="🛡️", layout="wide")

who = auth.identity()
pages = []
if auth.can(who, Permission.CLASSIFY):
    pages.append(st.Page("pages/classify.py", title="Classify", icon="🔍", default=True))
if auth.can(who, Permission.CALIBRATE):
    pages.append(st.Page("pages/calibrate.py", title="Calibrate thresholds", icon="🎚️"))
if auth.can(who, Permission.REVIEW):
    pages.append(st.Page("pages/review.py", title="Review queue", icon="🧑‍⚖️"))
    pages.append(st.Page("pages/review_grid.py", title="Review grid", icon="🔲", url_path="review_grid"))
if auth.can(who, Permission.EVALUATE):
    pages.append(st.Page("pages/evaluate.py", title="Evaluate production", icon="📈"))
if auth.can(who, Permission.LISTS):
    pages.append(st.Page("pages/lists.py", title="Hash lists", icon="📋"))
if who.via != "local":
    pages.append(st.Page("pages/account.py", title="Account" if who.signed_in else "Sign in", icon="🔑",
                         url_path="account", default=not pages))
if who.via != "none":
    st.sidebar.caption(f"{who.name} · {who.role.label}")
if who.signed_in:
    with st.sidebar:
        auth.watch(who)  # the tab drops these pages as soon as the sign-in ends, not at its next action
st.navigation(pages).run()
