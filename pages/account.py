"""Sign-in page: OpenID Connect (``st.login``) or a role's secret; who you are once signed in.

Roles and what they may do are :mod:`nsfw_core.access`'s; docs/security.md says how to
configure sign-in.  The secret field is a password input in a form that clears on submit; the
secret is checked on the server in constant time, rate-limited, and never logged or shown.
"""

from __future__ import annotations

import streamlit as st

from nsfw_ui import auth, widgets
from nsfw_ui.state import context

ROLE_TEXT = {
    "admin": "calibrate and save thresholds, review, export, classify",
    "reviewer": "review the queue and classify",
    "anonymous": "nothing beyond the public pages",
}


def _signed_in(name: str, role: str, via: str, note: str) -> None:
    st.success(f"Signed in as **{widgets.md_escape(name)}**, role **{role}**: you may {ROLE_TEXT[role]}.")
    if note:  # why the provider's answer gives no role (an address it did not verify, or not plain)
        st.warning(widgets.md_escape(note))
    elif role == "anonymous":
        st.info("Your account has no role here. An admin can add your address (or your domain) to "
                "NSFW_ADMIN_EMAILS or NSFW_REVIEWER_EMAILS.")
    if st.button("Sign out", key="sign_out"):
        auth.sign_out()  # the session ends on the server: every tab, every replica, any copy of the cookie
        if via == "oidc":
            st.logout()
        else:
            st.rerun()


def _secret_form() -> None:
    with st.form("sign_in_secret", clear_on_submit=True):
        secret = st.text_input("Secret", type="password", key="sign_in_secret_value", max_chars=1024,
                               help="The admin or reviewer secret your operator gave you.")
        if st.form_submit_button("Sign in", type="primary"):
            error = auth.sign_in_with_secret(secret or "")
            if error is None:
                st.rerun()
            st.error(error)


def page() -> None:
    access = context().access
    who = auth.identity()
    st.title("Account" if who.signed_in or who.via == "local" else "Sign in")  # as the navigation names it
    if who.via == "local":
        st.info("Local mode: everyone who opens this server at http://localhost is admin, without signing in.")
        return
    if who.signed_in:
        _signed_in(who.name, who.role.label, who.via, who.note)
        return
    if who.note:  # a sign-in that ended (signed out elsewhere, a lifetime, the provider) or cannot be checked
        st.warning(widgets.md_escape(who.note))
    if not access.sign_in_configured:
        st.warning("Sign-in is not configured on this server, so the calibrate and review pages are locked. "
                   "The operator sets NSFW_ADMIN_SECRET / NSFW_REVIEWER_SECRET, or an OpenID Connect provider "
                   "(docs/security.md).")
        return
    if access.oidc and st.button("Sign in with your identity provider", type="primary", key="sign_in_oidc"):
        st.login()
    if access.secrets:
        _secret_form()


page()
