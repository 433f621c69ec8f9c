"""Where the service runs: is the local disk ephemeral, and is durable state on it?

On DigitalOcean App Platform the container's filesystem is lost on every deployment and
container replacement ("App Platform Limits", Storage Limits), so the default SQLite database
under ``NSFW_DATA_DIR`` loses the review queue, the reviewers' decisions and the saved
thresholds there.  :func:`storage_warnings` says so, for ``/health`` and the start-up log.

App Platform documents the app's URL as a *bindable* variable ("How to Use Environment
Variables in App Platform"): it is in the environment when the app spec binds it, and
``.do/app.yaml`` binds ``APP_URL: ${APP_URL}``.  So ``auto`` (the default of
``NSFW_EPHEMERAL_DISK``) takes a non-empty ``APP_URL`` to mean App Platform;
``NSFW_EPHEMERAL_DISK=true|false`` overrides the guess on any platform.
"""

from __future__ import annotations

from typing import Mapping

PLATFORM_MARKER = "APP_URL"  # bound by .do/app.yaml from App Platform's ${APP_URL}


def ephemeral_disk(environ: Mapping[str, str], override: bool | None = None) -> bool:
    """True when the local disk does not survive a redeploy: ``override`` if set, else App Platform."""
    if override is not None:
        return override
    return bool(environ.get(PLATFORM_MARKER, "").strip())


def uses_sqlite(database_url: str) -> bool:
    """True for the SQLite default (empty URL) or an explicit ``sqlite:`` URL."""
    url = database_url.strip()
    return not url or url.lower().startswith("sqlite:")


def storage_warnings(environ: Mapping[str, str], database_url: str, override: bool | None = None) -> list[str]:
    """Warnings for durable state on a disk that a redeploy wipes (empty when there is none)."""
    if not uses_sqlite(database_url) or not ephemeral_disk(environ, override):
        return []
    return ["the database is SQLite on an ephemeral disk (NSFW_DATABASE_URL is not a PostgreSQL URL): "
            "a redeploy or container replacement loses the review queue, the reviewers' decisions and the "
            "saved thresholds, and instances do not share them; set NSFW_DATABASE_URL to a PostgreSQL URL "
            "(.do/app.yaml binds ${db.DATABASE_URL}), or NSFW_EPHEMERAL_DISK=false if the disk persists"]
