"""The API in-process: Starlette's TestClient on the API's routes alone (lifespan run); ``app.py`` mounts the
same routes and lifespan in ``st.App``."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from starlette.applications import Starlette

from nsfw_core.base.settings import load_settings
from nsfw_core.http import app as api

from .paths import ADMIN_SECRET

with warnings.catch_warnings():  # "install httpx2": the httpx-based client still works
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

READY_TIMEOUT = 60.0


def make_settings(tmp: Path, **overrides: Any) -> Any:
    """Defaults (not the caller's environment), with the data folder in ``tmp``."""
    overrides.setdefault("admin_secret", ADMIN_SECRET)
    return load_settings(environ={}, data_dir=str(tmp), **overrides)


@contextlib.contextmanager
def running(settings: Any, *, wait: bool = True) -> Iterator[TestClient]:
    """A TestClient on the API with ``settings``, lifespan started, model ready if ``wait``."""
    with TestClient(Starlette(routes=api.routes, lifespan=api.make_lifespan(settings))) as client:
        deadline = time.monotonic() + READY_TIMEOUT
        while wait and client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health").json()
            time.sleep(0.02)
        yield client
