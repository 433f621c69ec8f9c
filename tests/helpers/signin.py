"""Page tests' sign-in: the identity a secret sign-in would leave in the session (nsfw_ui.auth)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from nsfw_core.access import Identity, Role
from nsfw_ui.auth import IDENTITY_KEY

ADMIN = Identity("admin (secret, session a1b2c3)", Role.ADMIN, "secret")  # as sign_in_with_secret names it
REVIEWER = Identity("reviewer (secret, session d4e5f6)", Role.REVIEWER, "secret")


def signed_in(at: AppTest, who: Identity = ADMIN) -> AppTest:
    """``at`` with ``who`` signed in (AppTest has no HTTP request, so no local mode either)."""
    at.session_state[IDENTITY_KEY] = who
    return at
