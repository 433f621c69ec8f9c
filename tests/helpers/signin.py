"""Page tests' sign-in: the identity a secret sign-in would leave in the session (nsfw_ui.auth).

A secret sign-in counts only while its server-side session is live (nsfw_core.state.sessions), so
:func:`signed_in` records one in the process context's database, as ``sign_in_with_secret`` does.
"""

from __future__ import annotations

import dataclasses

import pytest
from streamlit.testing.v1 import AppTest

from nsfw_core.access import Identity, Role
from nsfw_core.context import current
from nsfw_ui.auth import IDENTITY_KEY

_environ = pytest.MonkeyPatch()  # the secrets signed_in configured; conftest undoes them after each test


def undo_secrets() -> None:
    _environ.undo()


ADMIN = Identity("admin (secret, session a1b2c3)", Role.ADMIN, "secret")  # as sign_in_with_secret names it
REVIEWER = Identity("reviewer (secret, session d4e5f6)", Role.REVIEWER, "secret")


def signed_in(at: AppTest, who: Identity = ADMIN) -> AppTest:
    """``at`` with ``who`` signed in (AppTest has no HTTP request, so no local mode either)."""
    access = current().access
    if not access.secret_of(who.role):  # a secret sign-in exists only where its role has a secret
        secret = f"{who.role.label}-secret-0123456789"
        name = "NSFW_ADMIN_SECRET" if who.role is Role.ADMIN else "NSFW_REVIEWER_SECRET"
        _environ.setenv(name, secret)  # for the contexts this test makes after this one too (undone after it)
        access.config = (dataclasses.replace(access.config, admin_secret=secret) if who.role is Role.ADMIN
                         else dataclasses.replace(access.config, reviewer_secret=secret))
    session = current().signin_sessions.start_secret(who, access.secret_of(who.role))
    at.session_state[IDENTITY_KEY] = dataclasses.replace(who, session=session)
    return at
