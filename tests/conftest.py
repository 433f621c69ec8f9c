"""Shared fixtures (the reference outputs, the process-wide models, PostgreSQL) and markers.

Markers (``pyproject.toml``): ``slow`` (starts servers or subprocesses, fuzzes, or compiles),
``postgres`` (needs the PostgreSQL that ``postgres_server`` starts), ``browser`` (drives
Chromium).  They are applied here, by module and by fixture, so ``./test.sh -m "not slow"``
is the fast loop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from typing import Any
from urllib.parse import quote

import pytest

from tests.helpers.paths import COMPILED_DIR, REFERENCE, REFERENCE_IMAGES, ROOT, START_POSTGRES

# Fixtures shared by many modules live in tests/helpers and are registered here, so that no
# test module imports a fixture (or another test module) to use it.
pytest_plugins = ["tests.helpers.servers", "tests.helpers.slim"]

__all__ = ["COMPILED_DIR", "REFERENCE", "REFERENCE_IMAGES", "ROOT", "START_POSTGRES"]

# Modules whose tests start servers or subprocesses, fuzz, or compile models (seconds to minutes).
SLOW_MODULES = frozenset({
    "test_convert", "test_decode_fuzz", "test_e2e_browser", "test_hostile_api", "test_litert", "test_memory",
    "test_openapi_conformance", "test_reliability", "test_sandbox", "test_server", "test_signin_oidc_browser",
    "test_signin_websocket", "test_slim_install", "test_replicas", "test_replicas_review", "test_replicas_known",
})
BROWSER_MODULES = frozenset({"test_e2e_browser", "test_signin_oidc_browser"})
POSTGRES_FIXTURES = frozenset({"postgres_server", "postgres_url"})
# Fixtures that make any test slow: the runtime install (tests/helpers/slim.py) is built, or checked and
# brought up to date by pip, once per session
SLOW_FIXTURES = frozenset({"slim_python"})
POSTGRES_PARAMS = frozenset({"postgresql"})  # backend fixtures parametrised sqlite / postgresql


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if isinstance(item, pytest.Function) else ""
        fixtures = set(getattr(item, "fixturenames", ()))
        if module in SLOW_MODULES or fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if module in BROWSER_MODULES:
            item.add_marker(pytest.mark.browser)
        params = getattr(getattr(item, "callspec", None), "params", {}).values()
        if fixtures & POSTGRES_FIXTURES or any(isinstance(p, str) and p in POSTGRES_PARAMS for p in params):
            item.add_marker(pytest.mark.postgres)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _signed_in_secrets():
    """The role secrets ``tests.helpers.signin.signed_in`` configured for a test, gone after it."""
    yield
    from tests.helpers.signin import undo_secrets

    undo_secrets()


@pytest.fixture(autouse=True)
def _empty_fetch_pool():
    """Each test starts and ends without idle keep-alive connections from another test."""
    from nsfw_core.images.fetch import POOL

    POOL.clear()
    yield
    POOL.clear()


@pytest.fixture(scope="session")
def reference_outputs() -> dict[str, Any]:
    outputs: dict[str, Any] = json.loads((REFERENCE / "nsfwjs-4.4.0-outputs.json").read_text())
    return outputs


@pytest.fixture(scope="session")
def default_model():
    from tests.helpers.models import model_named

    return model_named("MobileNetV2Mid")


@pytest.fixture
def media(monkeypatch):
    """The media storage of the latest AppTest run, to read back images and downloads."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    storages: list[MemoryMediaFileStorage] = []

    class Recording(MemoryMediaFileStorage):
        def __init__(self, endpoint: str) -> None:
            super().__init__(endpoint)
            storages.append(self)

    monkeypatch.setattr("streamlit.testing.v1.app_test.MemoryMediaFileStorage", Recording)

    def read(url: str) -> bytes:
        return storages[-1].get_file(url.rsplit("/", 1)[-1]).content

    return read


# ---------------------------------------------------------------- a real PostgreSQL server on loopback


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL database for the tests (started here unless given)."""
    given = os.environ.get("NSFW_TEST_DATABASE_URL", "").strip()
    if given:
        yield given
        return
    if os.environ.get("NSFW_TEST_SKIP_POSTGRES") == "1":
        pytest.skip("NSFW_TEST_SKIP_POSTGRES=1: PostgreSQL cases skipped")
    folder = tempfile.mkdtemp(prefix="nsfw-pg-test.")  # under /tmp: the postgres user must reach it
    try:
        proc = subprocess.run([str(START_POSTGRES), "start", folder], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not run {START_POSTGRES}: {exc} (set NSFW_TEST_SKIP_POSTGRES=1 to skip the "
                    "PostgreSQL cases)", pytrace=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        subprocess.run([str(START_POSTGRES), "stop", folder], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"PostgreSQL could not be started (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n"
                    "Set NSFW_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL cases.", pytrace=False)
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(START_POSTGRES), "stop", folder], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-c search_path={schema}')}"


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh schema per test: the URL sets it as the search path; dropped afterwards."""
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield _with_search_path(postgres_server, schema)
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
