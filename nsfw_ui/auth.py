"""The browser session's identity, decided on the server (rules in :mod:`nsfw_core.access`).

:func:`identity` looks, in order, at local mode (the request's ``Host`` and headers, as the
websocket's HTTP request carried them), Streamlit's ``st.user`` (OpenID Connect, signed cookie)
and a secret sign-in kept in ``st.session_state[IDENTITY_KEY]``.  That key is set only by
:func:`sign_in_with_secret`, never by a widget, so a forged widget message cannot set it.
Both kinds of sign-in count only while their server-side session is live
(:mod:`nsfw_core.state.sessions`: not signed out in any tab or replica, within the idle and absolute
lifetimes, still accepted by the identity provider); :func:`sign_out` ends it everywhere.

:func:`watch` (started by the navigation for a signed-in visitor) reruns an open tab whose sign-in ended.
Pages call :func:`require` first (it stops the script for a visitor without the role) and
:func:`check` again right before an action, since an action runs from a callback or a rerun
that a client can trigger with a forged message.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from nsfw_core.access import ANONYMOUS, Identity, Permission
from nsfw_core.base.errors import NSFWError

from . import signin, uploads
from .state import context

IDENTITY_KEY = "_nsfw_identity"  # a secret sign-in's Identity; never a widget key
WATCH_S = 2.0  # how often an open tab of a signed-in visitor checks that its sign-in still holds
log = logging.getLogger(__name__)


def _oidc_claims() -> dict[str, Any] | None:
    """``st.user`` of a signed-in visitor (the ID token's claims, and ``tokens``: never shown or logged)."""
    try:
        user = st.user
        if not user.is_logged_in:
            return None
        return dict(user.to_dict())
    except Exception:  # no auth configured, or no session (bare script run)
        return None


def identity(*, touch: bool = True) -> Identity:
    """Who this browser session is (and, for the upload guard, whether this session may upload files).
    ``touch``: this is the visitor's action, which extends the sign-in's idle lifetime (:func:`watch`'s own
    checks are not)."""
    who = _identity(touch)
    ctx = get_script_run_ctx()
    if ctx is not None:
        uploads.note_session(ctx.session_id, context().access.can(who, Permission.CLASSIFY))
    return who


def _identity(touch: bool = True) -> Identity:
    access = context().access
    local = access.local_visitor(dict(st.context.headers))
    if local is not None:
        return local
    ended = ""
    if access.oidc:
        claims = _oidc_claims()
        if claims is not None:
            who = signin.oidc_identity(access, context().signin_sessions, claims, touch=touch)
            if who.via == "oidc":
                return who
            ended = who.note
    signed = st.session_state.get(IDENTITY_KEY)
    if isinstance(signed, Identity) and signed.via == "secret":
        status = context().signin_sessions.check_secret(signed.session, signed, access.secret_of(signed.role),
                                                        touch=touch)
        if status.ok:
            return signed
        if status.ended:  # signed out, or a lifetime ran out: forgotten
            st.session_state.pop(IDENTITY_KEY, None)
        ended = status.message
    return dataclasses.replace(ANONYMOUS, note=ended) if ended else ANONYMOUS


@st.fragment(run_every=WATCH_S)
def watch(who: Identity) -> None:
    """Every :data:`WATCH_S` while a tab is open: once the sign-in ``who`` it was drawn for has ended (signed
    out in another tab, ended by the operator, a lifetime run out, the provider's re-check) or changed, rerun
    the whole app, so the tab drops the operator's pages and shows what an anonymous visitor gets at once,
    not at its next action.  Draws nothing, and is no action of the visitor's: it does not extend the sign-in's
    idle lifetime (NSFW_SESSION_IDLE_MINUTES still ends a tab left open)."""
    now = identity(touch=False)
    if now != who or now.session != who.session:
        st.rerun(scope="app")


def can(who: Identity, permission: Permission) -> bool:
    return context().access.can(who, permission)


def check(who: Identity, permission: Permission) -> None:
    """Raise :class:`~nsfw_core.base.errors.Forbidden` unless ``who`` (checked again now) may ``permission``."""
    access = context().access
    access.require(who, permission)
    access.require(identity(), permission)


def require(permission: Permission) -> Identity:
    """This session's identity when it may ``permission``; otherwise say so and stop the script."""
    who = identity()
    if not can(who, permission):
        st.warning("This page needs signing in with the right role. Use the Sign in page.")
        if who.note:
            st.info(who.note)
        st.stop()
    return who


def sign_in_with_secret(secret: str) -> str | None:
    """Sign this session in with a role's secret; the error message, or None when signed in.

    The sign-in is a session of its own (:mod:`nsfw_core.state.sessions`), ended by :func:`sign_out`,
    by its idle and absolute lifetimes, or by the operator."""
    try:
        who = context().access.sign_in_with_secret(secret)
    except NSFWError as exc:
        return exc.message
    try:
        session = context().signin_sessions.start_secret(who, context().access.secret_of(who.role))
    except Exception as exc:  # the database: no session, no sign-in
        log.error("sign-in with the %s secret could not be recorded: %s", who.role.label, type(exc).__name__)
        return "the server cannot record the sign-in right now (its database is unavailable); try again later"
    st.session_state[IDENTITY_KEY] = dataclasses.replace(who, session=session)
    return None


def sign_out() -> None:
    """End this visitor's sign-in on the server, for every tab and replica: the OpenID Connect session of
    ``st.user`` (the page then calls ``st.logout()`` to delete the cookie and pass by the provider) and a
    secret sign-in.  A database error is logged; the sign-in is forgotten here all the same."""
    sessions = context().signin_sessions
    claims = _oidc_claims() if context().access.oidc else None
    signed = st.session_state.pop(IDENTITY_KEY, None)
    try:
        if claims is not None:
            signin.end_oidc_session(sessions, claims)
        if isinstance(signed, Identity) and signed.session:
            sessions.end(signed.session)
    except Exception as exc:
        log.error("signing out could not end the session in the database (%s): a copy of the sign-in cookie "
                  "stays valid until its idle lifetime ends", type(exc).__name__)
