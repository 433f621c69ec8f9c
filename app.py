"""The ASGI app: the Streamlit UI and the HTTP API in one process.

Run it with ``python app.py`` (or ``uvicorn app:app --host 0.0.0.0 --port $PORT``).
Both serve the app with plain uvicorn; ``streamlit run`` also works but answers
keep-alive API clients tens of milliseconds late, so it is not the production
command.  The API's routes come first; everything else (``/``, ``/_stcore/...``,
static assets) is Streamlit's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import streamlit as st
import streamlit.logger
from starlette.middleware import Middleware
from streamlit.runtime.pages_manager import PagesManager

import nsfw_core.base.arenas  # noqa: F401 - first: caps malloc arenas before any thread starts
from nsfw_core.base import logs
from nsfw_core.base.settings import Settings, SettingsError, load_settings
from nsfw_core.http import app as api
from nsfw_core.http.routing import StreamlitRefused
from nsfw_ui import framing, oidc, signout, stmetrics, uploads

ROOT = Path(__file__).resolve().parent
GRACEFUL_SHUTDOWN_S = 10  # in-flight requests get this long after SIGTERM

# Streamlit treats a folder named pages/ beside the main script as old-style
# multipage pages until some script calls st.navigation: a fresh server's first
# visitor of /calibrate would get pages/calibrate.py alone, with every file of
# pages/ in the sidebar. streamlit_app.py always navigates, so say so up front.
PagesManager.uses_pages_directory = False

try:  # OpenID Connect sign-in from NSFW_OIDC_*: Streamlit must see it before it serves (main() reports errors)
    _loaded = load_settings()
    _settings: Settings | None = _loaded
    oidc.install(_loaded.access_config.oidc, os.environ.get("APP_URL"))
except SettingsError:
    _settings = None



def configure_logging(log_format: str) -> None:
    """One handler for every logger (ours, Streamlit's, uvicorn's): NSFW_LOG_FORMAT text or json, the request
    id on each line; uvicorn's access line is dropped for API paths (the API writes its own) and loses its
    query string elsewhere (image URLs, sign-in codes)."""
    logs.configure(log_format, is_api_path=api.is_api_path)
    route_streamlit_logs()


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The API's lifespan; under ``uvicorn app:app`` (no :func:`main`) it sets up the log first."""
    if not logs.configured():
        try:
            configure_logging(load_settings().log_format)
        except SettingsError:
            pass  # the API's lifespan reports it
    async with api.lifespan(app):
        yield


# Streamlit's upload endpoint holds files in memory without a total: bounded here (nsfw_ui/uploads.py)
_max_upload_store = (_settings or load_settings({})).max_upload_store_bytes
# Streamlit's /_stcore/metrics follows /metrics' rule (nsfw_ui/stmetrics.py)
_metrics_keys = (_settings.api_keys + (_settings.metrics_token,)) if _settings is not None else ()
app = st.App(ROOT / "streamlit_app.py", routes=api.routes, lifespan=lifespan,
             middleware=[Middleware(framing.NoFraming),  # no other site frames the pages (clickjacking)
                         # API paths Streamlit's path check refuses: the API's JSON 404, not a bare "Bad Request"
                         Middleware(StreamlitRefused, lookalike=api.lookalike),
                         Middleware(stmetrics.MetricsGuard, keys=_metrics_keys),
                         Middleware(signout.EndSessionOnLogout),  # /auth/logout ends the session on the server
                         Middleware(uploads.UploadGuard, max_store_bytes=_max_upload_store)])


def route_streamlit_logs() -> None:
    """Streamlit gives each logger it sets up (uvicorn's too, and lazily, later) a console handler of its
    own and stops propagation; hand each to the root handler of :func:`nsfw_core.base.logs.configure` instead."""
    original = streamlit.logger.setup_formatter
    if getattr(original, "nsfw_routed", False):
        return

    def setup_formatter(logger: logging.Logger) -> None:
        original(logger)
        logs.adopt(logger)

    setup_formatter.nsfw_routed = True  # type: ignore[attr-defined]
    streamlit.logger.setup_formatter = setup_formatter


def main() -> None:
    """Serve ``app`` with uvicorn on NSFW_HOST:PORT (defaults 0.0.0.0:8080)."""
    import uvicorn

    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"invalid setting: {exc}")
    configure_logging(settings.log_format)
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
        access_log=False,  # Streamlit turns uvicorn's access line on anyway; logs.configure filters it
        log_config=None,  # uvicorn's loggers go through the root handler logs.configure installed
    )


if __name__ == "__main__":
    main()
