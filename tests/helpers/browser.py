"""Headless Chromium for the browser tests: Debian's chromium and chromium-driver, driven by Selenium.

``scripts/install-browser.sh`` installs them when missing (the test is skipped if that fails);
``SE_OFFLINE=true`` keeps selenium-manager from downloading anything. :func:`chromium` is the one
way a test module gets a driver (wrap it in a module-scoped fixture).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from .paths import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = ROOT / "scripts" / "install-browser.sh"
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1400,1000",
)


def ensure_browser() -> None:
    """Install chromium and its driver if missing; skip the test when that is not possible."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    try:
        subprocess.run(["bash", str(INSTALL)], check=True, timeout=600, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"chromium is not installed and {INSTALL.name} could not install it: {exc}")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing after {INSTALL.name}")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile, quit and cleaned up afterwards."""
    ensure_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not fetch drivers or browsers
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.implicitly_wait(0)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)
        if offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = offline
