"""Fetcher cost with and without keep-alive, over loopback HTTP and HTTPS.

    .venv/bin/python bench/fetch_keepalive.py [--fetches 300]

Serves a 277 KiB JPEG-sized body from the test suite's local server (HTTP/1.1
keep-alive; HTTPS with a throwaway self-signed certificate made by ``openssl``,
trusted for this run only) and fetches it ``--fetches`` times in a row with
``NSFW_FETCH_KEEPALIVE`` on and off, alternating blocks of 50. Prints per-fetch
wall and CPU time (medians of the blocks) as JSON. Loopback has no round-trip
time, so the gain on a real network is larger (a TCP and a TLS handshake,
1-3 round trips, per fetch saved).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nsfw_core.images.fetch as fetcher
from nsfw_core.base.settings import load_settings
from tests.helpers.servers import RouteHandler, image, serve

BLOCK = 50
BODY = b"\xff\xd8" + b"x" * (277 * 1024)


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=images.test",
                    "-addext", "subjectAltName=DNS:images.test"], check=True, capture_output=True)
    return cert, key


def measure(url: str, settings, resolver, fetches: int) -> dict[str, float]:
    wall, cpu = [], []
    for _ in range(fetches // BLOCK):
        fetcher.POOL.clear()
        w, c = time.perf_counter(), time.process_time()
        for _ in range(BLOCK):
            fetcher.fetch(url, settings, resolver=resolver)
        wall.append((time.perf_counter() - w) / BLOCK * 1000)
        cpu.append((time.process_time() - c) / BLOCK * 1000)
    return {"wall_ms": round(statistics.median(wall), 3), "cpu_ms": round(statistics.median(cpu), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fetches", type=int, default=300)
    ap.add_argument("--server-nodelay", action="store_true",
                    help="the server sets TCP_NODELAY, as nginx does on keep-alive connections; Python's "
                         "http.server does not, and its TLS answers then wait for delayed ACKs on reused connections")
    a = ap.parse_args()
    patches = contextlib.ExitStack()  # in force for the whole run (a script's)
    if a.server_nodelay:
        plain_setup = RouteHandler.setup

        def setup(handler: RouteHandler) -> None:
            handler.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            plain_setup(handler)

        patches.enter_context(mock.patch.object(RouteHandler, "setup", setup))
    resolver = lambda host, port: ["127.0.0.1"]  # noqa: E731
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(Path(tmp))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        trusting = ssl.create_default_context(cafile=str(cert))
        patches.enter_context(mock.patch.object(fetcher, "_tls_context", lambda: trusting))  # this run only
        for scheme, tls in (("http", None), ("https", server_ctx)):
            with serve(tls=tls, keep_alive=True) as server:
                server.route("/img.jpg", image(BODY, "image/jpeg"))
                url = f"{scheme}://images.test:{server.port}/img.jpg"
                rows: dict[str, list[dict[str, float]]] = {}
                for keepalive in (True, False, True, False):
                    s = load_settings(environ={}, allow_private_hosts=("images.test",), fetch_keepalive=keepalive).fetch_policy
                    rows.setdefault("on" if keepalive else "off", []).append(measure(url, s, resolver, a.fetches))
                out[scheme] = {k: {m: round(statistics.median(r[m] for r in v), 3) for m in ("wall_ms", "cpu_ms")}
                               for k, v in rows.items()}
                out[scheme]["connections"] = server.connections
    out["server_nodelay"] = a.server_nodelay
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
