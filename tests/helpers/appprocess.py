"""``python app.py`` (or any helper server) in its own process group, stopped with the whole group.

For the sign-in tests, which start servers with an environment of their own: unlike
:class:`tests.helpers.appserver.AppServer`, nothing is added to the environment but the data
folder, the port and the shared compiled-model folder (no sign-in secret unless given), and
the process gets a session of its own so that :meth:`Process.stop` ends its children too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Mapping

from tests.helpers.appserver import free_port as free_port  # re-exported for the tests that start processes
from tests.helpers.paths import COMPILED_DIR, ROOT

START_S = 60.0  # Streamlit's import and the model's load take ~10 s on a busy machine


def http_status(url: str, timeout: float = 2.0) -> int:
    """The status of GET ``url``; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            status: int = reply.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class Process:
    """A command in a new session (process group), its output in ``log``."""

    def __init__(self, command: list[str], log: Path, env: Mapping[str, str], cwd: Path = ROOT) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = START_S) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.popen.poll() is not None:
                raise AssertionError(f"{what}: the process exited ({self.popen.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not ready in {timeout} s:\n{self.output()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after 15 s."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # children left behind by a clean exit


def app_env(data_dir: Path, port: int, **env: str) -> dict[str, str]:
    """The caller's environment without NSFW_* / STREAMLIT_*, plus the server's data folder, port and ``env``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "STREAMLIT_"))}
    out.update(PORT=str(port), NSFW_HOST="127.0.0.1", NSFW_DATA_DIR=str(data_dir), NSFW_COMPILED_DIR=COMPILED_DIR,
               PYTHONUNBUFFERED="1")
    out.update(env)
    return out


def serving_python(port: int) -> str | None:
    """The interpreter (as invoked, ``argv[0]``) of the ``app.py`` process started with ``PORT=port``, from
    /proc; None when there is none.  A test checks with it that a server runs on the install it means to."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[1:2] != [b"app.py"]:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        if f"PORT={port}".encode() in environ:
            return argv[0].decode(errors="replace")
    return None


@contextlib.contextmanager
def app_process(folder: Path, prepare: Callable[[dict[str, str]], None] | None = None, python: str = sys.executable,
                **env: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``python app.py`` with :func:`app_env`; yields (base URL on 127.0.0.1, its environment) once /health is 200.

    ``prepare`` gets the environment before the server starts (to fill its database, say); ``python`` is the
    interpreter (the runtime install's, tests/helpers/slim.py, to run the server as users get it).
    """
    port = int(env.pop("PORT", 0)) or free_port()
    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    environ = app_env(data_dir, port, **env)
    if prepare is not None:
        prepare(environ)
    server = Process([python, "app.py"], folder / f"app-{port}.log", environ)
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_until(lambda: http_status(base + "/health") == 200, "python app.py")
        yield base, environ
    finally:
        server.stop()
