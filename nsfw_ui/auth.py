"""The browser session's identity, decided on the server (rules in :mod:`nsfw_core.access`).

:func:`identity` looks, in order, at local mode (the request's ``Host`` and headers, as the
websocket's HTTP request carried them), Streamlit's ``st.user`` (OpenID Connect, signed cookie)
and a secret sign-in kept in ``st.session_state[IDENTITY_KEY]``.  That key is set only by
:func:`sign_in_with_secret`, never by a widget, so a forged widget message cannot set it.

Pages call :func:`require` first (it stops the script for a visitor without the role) and
:func:`check` again right before an action, since an action runs from a callback or a rerun
that a client can trigger with a forged message.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from nsfw_core.access import ANONYMOUS, Identity, Permission
from nsfw_core.base.errors import NSFWError

from . import uploads
from .state import context

IDENTITY_KEY = "_nsfw_identity"  # a secret sign-in's Identity; never a widget key


def _oidc_claims() -> dict[str, Any] | None:
    try:
        user = st.user
        if not user.is_logged_in:
            return None
        return user.to_dict()
    except Exception:  # no auth configured, or no session (bare script run)
        return None


def identity() -> Identity:
    """Who this browser session is (and, for the upload guard, whether this session may upload files)."""
    who = _identity()
    ctx = get_script_run_ctx()
    if ctx is not None:
        uploads.note_session(ctx.session_id, context().access.can(who, Permission.CLASSIFY))
    return who


def _identity() -> Identity:
    access = context().access
    local = access.local_visitor(dict(st.context.headers))
    if local is not None:
        return local
    if access.oidc:
        claims = _oidc_claims()
        if claims is not None:
            return access.from_oidc(claims)
    signed = st.session_state.get(IDENTITY_KEY)
    if isinstance(signed, Identity) and signed.via == "secret":
        return signed
    return ANONYMOUS


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
        st.stop()
    return who


def sign_in_with_secret(secret: str) -> str | None:
    """Sign this session in with a role's secret; the error message, or None when signed in."""
    try:
        st.session_state[IDENTITY_KEY] = context().access.sign_in_with_secret(secret)
    except NSFWError as exc:
        return exc.message
    return None


def sign_out() -> None:
    """Forget a secret sign-in; an OpenID Connect one ends with ``st.logout()`` (the page does it)."""
    st.session_state.pop(IDENTITY_KEY, None)
