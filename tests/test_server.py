"""The real server: ``python app.py`` in a subprocess, driven with curl, a websocket and SIGTERM."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers.appserver import free_port
from tests.helpers.paths import COMPILED_DIR, REFERENCE, ROOT
from tests.helpers.servers import LocalServer, image, serve

STARTUP_TIMEOUT = 90.0
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")


class Server:
    """A running ``python app.py`` on 127.0.0.1:``port``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def curl(self, *args: str) -> str:
        done = subprocess.run(["curl", "-s", "--max-time", "30", *args], capture_output=True, text=True, timeout=40)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        """SIGTERM, then check the graceful shutdown.

        uvicorn finishes in-flight requests and the lifespan, then re-raises the
        signal it caught, so the exit status is "killed by SIGTERM" (-15 here).
        """
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == -signal.SIGTERM
        log = self.log.read_text()
        assert "Application shutdown complete" in log and "Finished server process" in log
        assert "Exception in ASGI application" not in log, log




@contextlib.contextmanager
def app_server(tmp: Path, **env: str) -> Iterator[Server]:
    """Start ``.venv``'s python on app.py with defaults plus ``env``; wait for /health 200."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "STREAMLIT_"))}
    environ.update(PORT=str(port), NSFW_HOST="127.0.0.1", NSFW_DATA_DIR=str(tmp / "data"),
                   NSFW_COMPILED_DIR=COMPILED_DIR, **env)
    log = tmp / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=environ, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server(process, port, log)
    try:
        wait_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"server exited:\n{server.log.read_text()}"
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"no /health 200 within {STARTUP_TIMEOUT} s:\n{server.log.read_text()}")


@pytest.fixture(scope="module")
def images() -> Iterator[LocalServer]:
    with serve() as server:
        server.route("/house.jpg", image((REFERENCE / "house.jpg").read_bytes(), "image/jpeg"))
        yield server


def streamlit_session_runs(port: int) -> list[str | None]:
    """Open Streamlit's websocket like a browser, ask for a script run; the ForwardMsg types received."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect
    from websockets.typing import Origin, Subprotocol

    kinds: list[str | None] = []
    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=[Subprotocol("streamlit")],
                 origin=Origin(f"http://127.0.0.1:{port}"), open_timeout=10) as ws:
        assert ws.subprotocol == "streamlit"
        rerun = BackMsg()
        rerun.rerun_script.query_string = ""
        ws.send(rerun.SerializeToString())
        while "script_finished" not in kinds:
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv(timeout=30))
            kinds.append(msg.WhichOneof("type"))
    return kinds


def keep_alive_p50_ms(port: int, path: str = "/health", n: int = 200) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    times = []
    for _ in range(n + 20):
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        times.append(time.perf_counter() - started)
    conn.close()
    return statistics.median(times[20:]) * 1000


def test_python_app_py_serves_the_api_and_the_ui(tmp_path, images):
    with app_server(tmp_path, NSFW_ALLOW_PRIVATE_HOSTS=images.netloc) as server:
        # the original curl examples
        scores = json.loads(server.curl("-XPOST", server.url(f"/predict?url={images.url('/house.jpg')}")))
        assert list(scores) == ["drawings", "hentai", "neutral", "porn", "sexy"]
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert json.loads(server.curl(server.url("/health")))["status"] == "ok"
        upload = json.loads(server.curl("-XPOST", "--data-binary", f"@{REFERENCE / 'house.jpg'}",
                                        "-H", "Content-Type: image/jpeg", server.url("/predict")))
        assert upload == pytest.approx(scores, abs=1e-6)
        wrong = server.curl("-i", server.url("/predict"))
        assert wrong.startswith("HTTP/1.1 405") and '"code":"method_not_allowed"' in wrong
        unknown = server.curl("-i", server.url("/v1/nope"))
        assert unknown.startswith("HTTP/1.1 404") and '"code":"not_found"' in unknown
        # paths that only look like the API's: a JSON 404 with a request id, not a bare redirect or the UI's page
        for path in ("/health/", "/metrics/", "/openapi.json/", "/docs/", "/PREDICT", "/predict;x", "/V1/classify"):
            for method in ("GET", "POST"):
                reply = server.curl("-i", "-X", method, server.url(path))
                head, _, body = reply.partition("\n\n")  # text=True: CRLF read as LF
                assert head.startswith("HTTP/1.1 404"), (method, path, head)
                assert "content-type: application/json" in head.lower() and "x-request-id: " in head.lower(), head
                assert json.loads(body)["code"] == "not_found", (method, path, body)
        # the Streamlit UI is served by the same process
        page = server.curl(server.url("/"))
        assert "<!doctype html>" in page.lower() and "streamlit" in page.lower()
        # no other site may frame it (clickjacking), the API's answers neither
        for path in ("/", "/health"):
            head = server.curl("-sI", server.url(path)).lower()
            assert "x-frame-options: sameorigin" in head and "content-security-policy: frame-ancestors 'self'" in head
        assert server.curl(server.url("/_stcore/health")) == "ok"
        kinds = streamlit_session_runs(server.port)
        assert kinds[0] == "new_session" and kinds[-1] == "script_finished"
        p50 = keep_alive_p50_ms(server.port)
        print(f"/health keep-alive p50: {p50:.3f} ms")
        assert p50 < 20  # `streamlit run` would add ~40 ms per keep-alive request
        server.stop()


def test_default_settings_refuse_loopback_urls(tmp_path):
    with serve() as images, app_server(tmp_path) as server:
        images.route("/house.jpg", image((REFERENCE / "house.jpg").read_bytes(), "image/jpeg"))
        out = server.curl("-XPOST", "-w", "\n%{http_code}", server.url(f"/predict?url={images.url('/house.jpg')}"))
        body, code = out.rsplit("\n", 1)
        assert code == "403" and json.loads(body)["code"] == "forbidden_address"
        server.stop()
        assert images.connections == 0 and images.requests == []
