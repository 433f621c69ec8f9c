"""An OpenID Connect sign-in (``st.user``) as a server-side session (:mod:`nsfw_core.state.sessions`).

:func:`oidc_identity` turns the claims Streamlit read from the sign-in cookie when the tab connected into
an :class:`~nsfw_core.access.Identity` only while the session is live: not signed out (in any tab, on any
replica), within its idle and absolute lifetimes, and still accepted by the provider when it is asked
again (:func:`revalidator`: the userinfo endpoint with the access token, every
``NSFW_OIDC_REVALIDATE_SECONDS``).  Otherwise the visitor is anonymous, with a note saying why.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import streamlit as st

from nsfw_core import userinfo
from nsfw_core.access import ANONYMOUS, Access, Identity
from nsfw_core.base.emails import ascii_lower, asserted_email
from nsfw_core.state.sessions import Revalidation, SigninSessions, oidc_session_id

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def metadata_url(provider: Any) -> str | None:
    """The discovery URL of ``provider`` (``st.user``'s ``provider``: "default" for a flat ``[auth]``
    section) as Streamlit's secrets give it."""
    try:
        auth = st.secrets.get("auth")
    except Exception:  # no secrets file at all
        return None
    if not isinstance(auth, Mapping):
        return None
    section = auth if provider in (None, "default") else auth.get(str(provider))
    url = section.get("server_metadata_url") if isinstance(section, Mapping) else None
    return url if isinstance(url, str) and url else None


def revalidator(access: Access, claims: Mapping[str, Any], who: Identity,
                tokens: Mapping[str, Any]) -> Callable[[], Revalidation] | None:
    """How to ask the provider again about this sign-in; None when it cannot be asked (no access token
    exposed, or no discovery URL), which is logged once."""
    token = tokens.get("access")
    url = metadata_url(claims.get("provider"))
    if not isinstance(token, str) or not token or url is None:
        _warn_once("no-token", "OpenID Connect sign-ins cannot be re-checked with the provider (%s): a user "
                   "disabled there keeps access until the session's idle or absolute lifetime ends; add "
                   "expose_tokens = [\"access\"] to the [auth] section of .streamlit/secrets.toml",
                   "no access token in st.user.tokens" if url else "no server_metadata_url")
        return None

    def ask() -> Revalidation:
        try:
            now = userinfo.userinfo(url, token)
        except userinfo.Refused as exc:
            return Revalidation.refused(str(exc))
        except userinfo.Unavailable as exc:
            return Revalidation.unavailable(str(exc))
        if now.get("sub") != claims.get("sub"):
            return Revalidation.refused("the identity provider answered for another user")
        then_email, now_email = asserted_email(claims), asserted_email(now)
        if now_email.address is not None and then_email.address is not None \
                and ascii_lower(now_email.address) != then_email.address:
            return Revalidation.refused("your e-mail address at the identity provider changed")
        current = access.from_oidc(now)
        if current.role < who.role:
            return Revalidation.refused(f"the identity provider no longer gives this address the {who.role.label} "
                                        f"role ({current.note.removeprefix('No role: ').rstrip('.') or 'no role'})")
        return Revalidation.ok()

    return ask


def claims_and_tokens(user: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``st.user.to_dict()`` split into the ID token's claims and the tokens Streamlit exposes."""
    claims = {k: v for k, v in user.items() if k != "tokens"}
    tokens = user.get("tokens")
    return claims, dict(tokens) if isinstance(tokens, Mapping) else {}


def oidc_identity(access: Access, sessions: SigninSessions, user: Mapping[str, Any], *,
                  touch: bool = True) -> Identity:
    """The identity of a signed-in ``st.user`` while its session is live; anonymous (with why) otherwise.
    ``touch``: the visitor acted (extends the idle lifetime; not for an open tab's own check)."""
    claims, tokens = claims_and_tokens(user)
    who = access.from_oidc(claims)
    status = sessions.check_oidc(claims, who, revalidator(access, claims, who, tokens), touch=touch)
    if status.ok:
        return who
    return Identity(ANONYMOUS.name, ANONYMOUS.role, ANONYMOUS.via, note=status.message)


def end_oidc_session(sessions: SigninSessions, user: Mapping[str, Any]) -> None:
    """Sign-out: the session of ``st.user`` ends for every tab and replica (raises if the database fails)."""
    claims, _ = claims_and_tokens(user)
    sessions.end(oidc_session_id(claims))
