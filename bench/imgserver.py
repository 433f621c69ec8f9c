"""Loopback static file server for the benchmark: threaded, HTTP/1.1 keep-alive, files held in memory.

``python bench/imgserver.py DIR`` binds 127.0.0.1 on a free port and prints
``PORT <n>`` on stdout.  The query string is ignored (the harness adds a
unique one per request so no URL-keyed cache can answer for the service).
Keep-alive is honoured unless the client sends ``Connection: close`` (the
service's fetcher does; ``requests`` in the original stack does not).
"""

from __future__ import annotations

import http.server
import socketserver
import sys
from pathlib import Path

TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    files: dict[str, tuple[bytes, str]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        entry = self.files.get(path)
        if entry is None:
            body = b"not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body, ctype = entry
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self) -> None:  # skip the reverse DNS lookup of HTTPServer.server_bind
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]  # an (address, port) pair: the server is IPv4
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients going away is expected


def main() -> None:
    folder = Path(sys.argv[1])
    Handler.files = {f"/{p.name}": (p.read_bytes(), TYPES.get(p.suffix.lower(), "application/octet-stream"))
                     for p in folder.iterdir() if p.is_file()}
    server = Server(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
