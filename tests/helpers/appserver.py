"""The real server, ``python app.py``, in a subprocess on a free port of 127.0.0.1.

For test modules that need the whole process (uvicorn, the lifespan, the
model, the log) rather than Starlette's TestClient.  The environment is the
caller's minus every ``NSFW_*`` / ``STREAMLIT_*`` variable, plus a data folder
under ``folder``, the shared compiled-model folder (``tests.conftest.COMPILED_DIR``,
so the model is compiled once per checkout) and ``env``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from tests.helpers.paths import ADMIN_SECRET, COMPILED_DIR, ROOT

STARTUP_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, seconds: float) -> None:
        self.status, self.headers, self.body, self.seconds = status, headers, body, seconds

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self, status_code: int, code: str) -> dict[str, Any]:
        """Assert a JSON error with this status and code; return the body."""
        assert self.status == status_code, (self.status, self.body[:300])
        assert self.headers.get("content-type") == "application/json", self.headers
        body: dict[str, Any] = self.json()
        assert body["code"] == code, body
        assert isinstance(body["message"], str) and body["message"], body
        return body

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:200]!r}, {self.seconds:.2f} s)"


class AppServer:
    """``python app.py`` on 127.0.0.1:<free port>; :meth:`wait` for /health 200 before use."""

    def __init__(self, folder: Path, **env: str) -> None:
        self.port = free_port()
        self.data_dir = folder / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = folder / f"server-{self.port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "STREAMLIT_"))}
        environ.update(PORT=str(self.port), NSFW_HOST="127.0.0.1", NSFW_DATA_DIR=str(self.data_dir),
                       NSFW_COMPILED_DIR=COMPILED_DIR, NSFW_ADMIN_SECRET=ADMIN_SECRET)
        environ.update(env)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=environ, stdout=out,
                                            stderr=subprocess.STDOUT)
        self._log_offset = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 30.0, encode_chunked: bool = False) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=encode_chunked)
            response = conn.getresponse()
            data = response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                         time.monotonic() - started)
        finally:
            conn.close()

    def post_json(self, path: str, body: bytes | str) -> Reply:
        data = body.encode() if isinstance(body, str) else body
        return self.request("POST", path, body=data, headers={"Content-Type": "application/json"})

    def health(self) -> Reply:
        return self.request("GET", "/health", timeout=10)

    def wait(self) -> "AppServer":
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited:\n{self.log.read_text(errors='replace')}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.health().status == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"no /health 200 in {STARTUP_TIMEOUT} s:\n{self.log.read_text(errors='replace')}")

    def new_log(self) -> str:
        """What the server logged since the last call."""
        text = self.log.read_text(errors="replace")
        new, self._log_offset = text[self._log_offset:], len(text)
        return new

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (kill after ``timeout``); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


@contextlib.contextmanager
def app_server(folder: Path, **env: str) -> Iterator[AppServer]:
    server = AppServer(folder, **env)
    try:
        yield server.wait()
    finally:
        server.stop()
