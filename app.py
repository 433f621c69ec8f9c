"""The ASGI app: the Streamlit UI and the HTTP API in one process.

Run it with ``python app.py`` (or ``uvicorn app:app --host 0.0.0.0 --port $PORT``).
Both serve the app with plain uvicorn; ``streamlit run`` also works but answers
keep-alive API clients tens of milliseconds late, so it is not the production
command.  The API's routes come first; everything else (``/``, ``/_stcore/...``,
static assets) is Streamlit's.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import nsfw_core.arenas  # noqa: F401 - first: caps malloc arenas before any thread starts
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from nsfw_core import api
from nsfw_core.settings import SettingsError, load_settings
from nsfw_ui import oidc

ROOT = Path(__file__).resolve().parent
GRACEFUL_SHUTDOWN_S = 10  # in-flight requests get this long after SIGTERM

# Streamlit treats a folder named pages/ beside the main script as old-style
# multipage pages until some script calls st.navigation: a fresh server's first
# visitor of /calibrate would get pages/calibrate.py alone, with every file of
# pages/ in the sidebar. streamlit_app.py always navigates, so say so up front.
PagesManager.uses_pages_directory = False

try:  # OpenID Connect sign-in from NSFW_OIDC_*: Streamlit must see it before it serves (main() reports errors)
    oidc.install(load_settings().access_config.oidc, os.environ.get("APP_URL"))
except SettingsError:
    pass

app = st.App(ROOT / "streamlit_app.py", routes=api.routes, lifespan=api.lifespan)


def main() -> None:
    """Serve ``app`` with uvicorn on NSFW_HOST:PORT (defaults 0.0.0.0:8080)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"invalid setting: {exc}")
    if settings.local_mode:
        logging.getLogger("app").info("local mode: whoever opens http://localhost:%d is admin, without signing in",
                                      settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",  # the implementation Streamlit's own runner picks
        ws_per_message_deflate=False,  # Streamlit's default (server.enableWebsocketCompression)
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        access_log=False,  # Streamlit's logger already writes one access line per request
    )


if __name__ == "__main__":
    main()
