"""Page tests' sign-in: the identity a secret sign-in would leave in the session (nsfw_ui.auth).

A secret sign-in counts only while its server-side session is live (nsfw_core.state.sessions), so
:func:`signed_in` records one in the process context's database, as ``sign_in_with_secret`` does.
"""

from __future__ import annotations

import dataclasses

from streamlit.testing.v1 import AppTest

from nsfw_core.access import Identity, Role
from nsfw_core.context import current
from nsfw_ui.auth import IDENTITY_KEY

ADMIN = Identity("admin (secret, session a1b2c3)", Role.ADMIN, "secret")  # as sign_in_with_secret names it
REVIEWER = Identity("reviewer (secret, session d4e5f6)", Role.REVIEWER, "secret")


def signed_in(at: AppTest, who: Identity = ADMIN) -> AppTest:
    """``at`` with ``who`` signed in (AppTest has no HTTP request, so no local mode either)."""
    session = current().signin_sessions.start_secret(who)
    at.session_state[IDENTITY_KEY] = dataclasses.replace(who, session=session)
    return at
