"""OpenID Connect sign-in configured from the environment, for Streamlit's ``st.login``.

Streamlit reads ``st.login``'s settings from the ``[auth]`` section of its secrets files
(``secrets.files``: ``~/.streamlit/secrets.toml`` and ``.streamlit/secrets.toml``).  On App
Platform settings come from environment variables, so :func:`install` writes the ``NSFW_OIDC_*``
values as such a section into a private file (mode 0600, in a folder of its own, removed at
exit) and adds it to ``secrets.files`` before the server starts.  A secrets file that already has
an ``[auth]`` section wins and nothing is written.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from pathlib import Path

from streamlit import config

from nsfw_core.access import secrets_toml_auth
from nsfw_core.base.settings import OIDCConfig

CALLBACK = "/oauth2callback"


def redirect_uri(oidc: OIDCConfig, app_url: str | None) -> str:
    """Where the provider sends the browser back: the setting, else APP_URL's, else localhost's."""
    if oidc.redirect_uri:
        return oidc.redirect_uri
    if app_url:
        return app_url.rstrip("/") + CALLBACK
    return f"http://localhost:{oidc.port}{CALLBACK}"


def cookie_secret(oidc: OIDCConfig) -> str:
    """The cookie-signing key: the setting, else one derived from the client secret (same on every replica)."""
    if oidc.cookie_secret:
        return oidc.cookie_secret
    return hmac.new(oidc.client_secret.encode(), b"nsfw-moderation st.login cookie", hashlib.sha256).hexdigest()


def auth_section(oidc: OIDCConfig, app_url: str | None) -> str:
    """The ``[auth]`` TOML section for ``oidc`` (values as JSON strings, which TOML reads as basic strings).

    ``expose_tokens = ["access"]`` puts the sign-in's access token in ``st.user.tokens`` (server side only,
    never sent to the browser), for re-checking the sign-in at the provider's userinfo endpoint
    (nsfw_ui/signin.py)."""
    values: dict[str, object] = {
        "redirect_uri": redirect_uri(oidc, app_url),
        "cookie_secret": cookie_secret(oidc),
        "client_id": oidc.client_id,
        "client_secret": oidc.client_secret,
        "server_metadata_url": oidc.metadata_url,
        "expose_tokens": ["access"],
    }
    return "[auth]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def install(oidc: OIDCConfig, app_url: str | None = None) -> Path | None:
    """Hand ``oidc`` to Streamlit as a secrets file; its path, or None when not configured or already there."""
    if not oidc.configured:
        return None
    files = [str(p) for p in config.get_option("secrets.files")]
    if secrets_toml_auth(Path(p) for p in files):
        return None
    folder = Path(tempfile.mkdtemp(prefix="nsfw-auth-"))  # mode 0700
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "secrets.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(auth_section(oidc, app_url))
    config.set_option("secrets.files", [*files, str(path)])
    return path
