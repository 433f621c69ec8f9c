"""The runtime install: a virtualenv built from ``requirements.txt`` only, as ./run.sh and App Platform build it.

:func:`slim_python` builds it for real (``VENV=.venv-slim scripts/setup-venv.sh requirements.txt``,
reused while the requirements do not change) and adds only the test runner (pytest and what it
needs), so a test that runs the server or a module there sees exactly what users get: a package that
only the development environment has (TensorFlow, or httpx before issue 31) is missing there too.
The ``slim_python`` fixture (registered in tests/conftest.py) builds it once per test session.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .paths import ROOT

SLIM = ROOT / ".venv-slim"
TEST_TOOLS = ("pytest", "pluggy", "iniconfig", "pytest-timeout", "Pygments")
BUILD_S = 900


def pins(names: tuple[str, ...]) -> list[str]:
    """``name==version`` for each of ``names`` pinned in requirements-dev.txt or requirements-convert.txt."""
    text = (ROOT / "requirements-dev.txt").read_text() + (ROOT / "requirements-convert.txt").read_text()
    return [m.group(0) for name in names for m in [re.search(rf"^{re.escape(name)}==\S+", text, re.M)] if m]


def slim_python() -> str:
    """The runtime install's python (built or brought up to date now), with the test runner added."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run(["bash", "scripts/setup-venv.sh", "requirements.txt"], cwd=ROOT, env={**env, "VENV": str(SLIM)},
                   check=True, timeout=BUILD_S)
    python = str(SLIM / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    *pins(TEST_TOOLS)], check=True, timeout=600)
    return python


@pytest.fixture(scope="session", name="slim_python")
def slim_python_fixture() -> str:
    return slim_python()
