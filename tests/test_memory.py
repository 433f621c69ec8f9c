"""glibc malloc arenas: the cap app.py applies at import, observed through malloc_stats()."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nsfw_core.base.memory import limit_malloc_arenas
from tests.helpers.paths import ROOT

# Eight threads allocate at once, then glibc prints one "Arena N:" block per arena to stderr.
SCRIPT = """
import ctypes, sys, threading
if sys.argv[1] == "app":
    import app  # noqa: F401  (the server module caps the arenas at import)
elif sys.argv[1] == "limit":
    from nsfw_core.base.memory import limit_malloc_arenas
    assert limit_malloc_arenas()

def work():
    for _ in range(20000):
        [bytearray(200) for _ in range(20)]

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.stderr.flush()
ctypes.CDLL("libc.so.6").malloc_stats()
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc only")


def arenas(mode: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


@glibc
def test_threads_get_more_arenas_without_the_cap():
    assert arenas("none") > 2


@glibc
@pytest.mark.parametrize("mode", ["limit", "app"])
def test_the_cap_keeps_two_arenas(mode):
    assert arenas(mode) <= 2


@glibc
def test_an_operators_malloc_arena_max_stands(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
