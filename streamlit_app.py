"""Entry point of the browser app: only builds the navigation (one file per page)."""

import streamlit as st

st.set_page_config(page_title="NSFW moderation", page_icon="🛡️", layout="wide")

pages = [
    st.Page("pages/classify.py", title="Classify", icon="🔍", default=True),
    st.Page("pages/calibrate.py", title="Calibrate thresholds", icon="🎚️"),
    st.Page("pages/review.py", title="Review queue", icon="🧑‍⚖️"),
]
st.navigation(pages).run()
