"""Local HTTP servers with scripted routes, for tests that fetch URLs.

Each :class:`LocalServer` is a ``ThreadingHTTPServer`` on a free port of
``127.0.0.1`` (or ``::1``) served by a daemon thread.  Routes map a path (the
query string is ignored when matching) to a :data:`Responder`; the factories
below cover the usual cases (bytes, redirects, error statuses, slow, endless,
short, over-long and gzip-bomb bodies).  Unknown paths get 404.  Every request
is logged in :attr:`LocalServer.requests` and every accepted TCP connection is
counted in :attr:`LocalServer.connections`, so a test can assert that a server
was never contacted.

Usage with pytest (import the fixtures into the test module)::

    from tests.helpers.servers import local_server, local_server_factory, image  # noqa: F401

    def test_something(local_server):
        url = local_server.route("/cat.png", image(b"..."))
        ...
        assert local_server.paths() == ["/cat.png"]

    def test_two(local_server_factory):
        first, second = local_server_factory(), local_server_factory()

Without pytest: ``with serve() as server: ...``.  Pass ``tls=`` a server-side
``ssl.SSLContext`` for an HTTPS server (``server.url()`` then says https).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http.server
import socket
import socketserver
import ssl
import struct
import sys
import threading
import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping

import pytest

Responder = Callable[["RouteHandler"], None]
"""Writes a whole response through the handler (``send_response``, ``wfile``...)."""

POLL_INTERVAL = 0.02  # how quickly serve_forever notices shutdown()


def tiny_png(width: int = 1, height: int = 1) -> bytes:
    """A valid grey PNG of the given size, built with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # with the query string
    headers: Mapping[str, str]  # header names lower-cased


class RouteHandler(http.server.BaseHTTPRequestHandler):
    """Dispatches to the route of the request's path; closes the connection unless the server keeps alive."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a silent client may hold a handler thread
    server: _Server

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        owner = self.server.owner
        self.close_connection = not owner.keep_alive
        owner.record(RequestRecord(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        responder = owner.routes.get(self.path.split("?", 1)[0], status(404))
        responder(self)

    def start(self, code: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send the status line and headers (plus ``Connection: close`` unless the server keeps alive)."""
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        if not self.server.owner.keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()

    def stopping(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True if the server is shutting down meanwhile."""
        return self.server.owner.stopped.wait(delay)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # handlers of slow or endless routes must not delay shutdown
    owner: LocalServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]  # (address, port): IPv4 or IPv6
        self.server_name, self.server_port = str(host), int(port)

    def verify_request(self, request: object, client_address: object) -> bool:
        self.owner.count_connection()
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients going away (the fetcher cuts big or slow bodies, rejects certificates) is expected."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class LocalServer:
    """One threaded HTTP server; use :func:`serve` or the pytest fixtures to run it."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, keep_alive: bool = False) -> None:
        self.routes: dict[str, Responder] = {}
        self.keep_alive = keep_alive  # HTTP/1.1 keep-alive; by default every answer closes its connection
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._connections = 0
        self._server = (_Server6 if ":" in host else _Server)((host, 0), RouteHandler)
        self._server.owner = self
        if tls is not None:
            # The handshake happens in the handler's thread (RouteHandler.setup), not in accept().
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.scheme = "http" if tls is None else "https"
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL,), name=f"local-http-{self.port}", daemon=True
        )

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.netloc}{path}"

    def route(self, path: str, responder: Responder) -> str:
        """Serve ``path`` with ``responder``; returns the route's URL."""
        self.routes[path] = responder
        return self.url(path)

    def redirect_chain(self, hops: int, final: str, prefix: str = "/hop") -> str:
        """``prefix/0`` -> ``prefix/1`` -> ... -> ``prefix/{hops-1}`` -> ``final``: ``hops`` redirects in all."""
        for index in range(hops):
            location = f"{prefix}/{index + 1}" if index + 1 < hops else final
            self.route(f"{prefix}/{index}", redirect(location))
        return self.url(f"{prefix}/0")

    def redirect_loop(self, length: int = 2, prefix: str = "/loop") -> str:
        """``prefix/0`` -> ... -> ``prefix/{length-1}`` -> ``prefix/0``."""
        for index in range(length):
            self.route(f"{prefix}/{index}", redirect(f"{prefix}/{(index + 1) % length}"))
        return self.url(f"{prefix}/0")

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (a TLS or garbage client counts here, not in requests)."""
        with self._lock:
            return self._connections

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def record(self, request: RequestRecord) -> None:
        with self._lock:
            self._requests.append(request)

    def count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextlib.contextmanager
def serve(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, keep_alive: bool = False) -> Iterator[LocalServer]:
    """A started :class:`LocalServer`, stopped on exit."""
    server = LocalServer(host, tls, keep_alive).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    """A started LocalServer on 127.0.0.1 with no routes yet."""
    with serve() as server:
        yield server


@pytest.fixture
def local_server_factory() -> Iterator[Callable[..., LocalServer]]:
    """Call it (optionally with ``host="::1"``, ``tls=context``, ``keep_alive=True``) for more started servers;
    all stop at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda host="127.0.0.1", tls=None, keep_alive=False: stack.enter_context(serve(host, tls, keep_alive))


# --------------------------------------------------------------------------- responders


def send(
    body: bytes = b"",
    content_type: str | None = "application/octet-stream",
    code: int = 200,
    headers: Iterable[tuple[str, str]] = (),
) -> Responder:
    """A complete response with a correct Content-Length."""

    def respond(handler: RouteHandler) -> None:
        extra = [("Content-Type", content_type)] if content_type else []
        handler.start(code, [*extra, ("Content-Length", str(len(body))), *headers])
        if handler.command != "HEAD":
            handler.wfile.write(body)

    return respond


def image(body: bytes | None = None, content_type: str = "image/png") -> Responder:
    """An image (a 1x1 PNG unless ``body`` is given)."""
    return send(tiny_png() if body is None else body, content_type)


def html(text: str = "<!doctype html><title>not an image</title><p>hello</p>") -> Responder:
    return send(text.encode(), "text/html; charset=utf-8")


def status(code: int, body: bytes = b"error\n") -> Responder:
    """An error (or any) status with a small text body."""
    return send(body, "text/plain", code)


def redirect(location: str, code: int = 302) -> Responder:
    return send(b"", None, code, [("Location", location)])


def redirect_without_location(code: int = 302) -> Responder:
    return send(b"", None, code)


def until_eof(body: bytes, content_type: str = "image/png") -> Responder:
    """A body without Content-Length, delimited by closing the connection."""

    def respond(handler: RouteHandler) -> None:
        handler.start(200, [("Content-Type", content_type)])
        handler.wfile.write(body)

    return respond


def chunked(body: bytes, chunk_size: int = 1024, content_type: str = "image/png") -> Responder:
    """``Transfer-Encoding: chunked`` (no Content-Length)."""

    def respond(handler: RouteHandler) -> None:
        handler.start(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
        for start in range(0, len(body), chunk_size):
            piece = body[start : start + chunk_size]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    return respond


def endless(piece: bytes = b"\0" * 4096, content_type: str = "image/png") -> Responder:
    """A chunked body that never ends (until the client leaves or the server stops)."""

    def respond(handler: RouteHandler) -> None:
        handler.start(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
        while not handler.server.owner.stopped.is_set():
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))

    return respond


def slow(body: bytes = b"x" * 100, delay: float = 1.0, content_length: bool = True) -> Responder:
    """Slowloris: the headers at once, then one byte of the body every ``delay`` seconds."""

    def respond(handler: RouteHandler) -> None:
        headers = [("Content-Type", "image/png")]
        handler.start(200, [*headers, ("Content-Length", str(len(body)))] if content_length else headers)
        for index in range(len(body)):
            handler.wfile.write(body[index : index + 1])
            handler.wfile.flush()
            if handler.stopping(delay):
                return

    return respond


def raw(data: bytes, hold: float = 0.0) -> Responder:
    """Write ``data`` as it is (no status line of ours), then keep the connection ``hold`` seconds."""

    def respond(handler: RouteHandler) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        handler.stopping(hold)

    return respond


def hang() -> Responder:
    """Accept the request and never answer (until the server stops)."""

    def respond(handler: RouteHandler) -> None:
        handler.stopping(3600)

    return respond


def _announced(declared: int, sent: bytes) -> Responder:
    def respond(handler: RouteHandler) -> None:
        handler.start(200, [("Content-Type", "image/png"), ("Content-Length", str(declared))])
        handler.wfile.write(sent)

    return respond


def short_body(declared: int, sent: bytes) -> Responder:
    """Announce ``declared`` bytes, send ``sent`` (fewer), close."""
    assert len(sent) < declared
    return _announced(declared, sent)


def long_body(declared: int, sent: bytes) -> Responder:
    """Announce ``declared`` bytes, send ``sent`` (more), close."""
    assert len(sent) > declared
    return _announced(declared, sent)


def gzip_bomb(size: int = 10 * 1024 * 1024) -> Responder:
    """``Content-Encoding: gzip`` of ``size`` zero bytes (tens of KiB on the wire)."""
    return send(gzip.compress(b"\0" * size, compresslevel=9), "image/png", headers=[("Content-Encoding", "gzip")])
