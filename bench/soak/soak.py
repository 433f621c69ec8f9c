"""Soak test: the real server under a long mix of good and hostile requests.

    python -m bench.soak.soak --requests 10000 --concurrency 64 [--seed 0] [--json out.json]

Not part of the test suite.  It starts

* an upstream process (its own interpreter, so its threads do not share the
  client's GIL) with two local HTTP servers: ``upstream`` (images of several
  sizes and hostile responses; the only host the app may fetch from) and
  ``victim`` (an internal service nobody allowed, which must see nothing);
* the server, ``python app.py`` (PORT=free port, NSFW_ALLOW_PRIVATE_HOSTS=
  upstream, NSFW_FETCH_TIMEOUT=5, NSFW_MAX_BYTES=2 MiB, NSFW_DATA_DIR=temporary);

then sends ``--requests`` requests, drawn with ``--seed`` from a weighted mix of
kinds (:data:`KINDS`), over ``--concurrency`` keep-alive HTTP/1.1 connections
(a minimal client on asyncio streams, one connection per worker), and stops
issuing at ``--max-seconds``.  Every kind has the set of (status, error code)
answers it may get; every prediction may also get 503 ``overloaded`` (load shedding).

Report: requests sent and completed, status histogram, per-kind latency
p50/p99, unexpected answers, 5xx other than 503 overloaded and the upstream
failures a kind expects (502/504), server RSS, open file descriptors and
threads after the warm-up (the first ``--warmup`` requests) and at the end,
CPU seconds of the server, the client and the upstream process.

Exit status 1 when any criterion fails: every request completed; no unexpected
5xx (batch items included); no unexpected answer at all; RSS growth after
warm-up < ``--max-rss-growth-mb`` (50); the victim saw no connection; the
server is healthy at the end, exits cleanly on SIGTERM, and logged no
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import io
import json
import multiprocessing
import os
import random
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
OVERLOADED = (503, "overloaded")  # deliberate load shedding, with Retry-After
GOOD = {(200, None), OVERLOADED}
FETCH_TIMEOUT = 5.0
MAX_BYTES = 2 * 1024 * 1024
CLASSES_PREFIX = b'{"drawings":'
SAMPLE_EVERY_S = 2.0  # RSS timeline period


# ----------------------------------------------------------------------------- upstream process


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 4)) + _png_chunk(b"IEND", b""))


def generated_images() -> dict[str, bytes]:
    """A 1600x1200 JPEG (~480 KB), a 640x480 PNG with noise, a 64x48 PNG (deterministic)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    big = (rng.random((1200, 1600, 3)) * 40 + np.linspace(0, 200, 1600)[None, :, None]).astype("uint8")
    medium = (rng.random((480, 640, 3)) * 24 + np.linspace(0, 220, 640)[None, :, None]).astype("uint8")
    out = {}
    for name, array, fmt, params in (("big.jpg", big, "JPEG", {"quality": 85}), ("medium.png", medium, "PNG", {}),
                                     ("small.png", medium[:48, :64], "PNG", {})):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, fmt, **params)
        out[name] = buf.getvalue()
    return out


def upstream_main(conn: Any) -> None:
    """Child process: run the upstream and victim servers until told to stop; answer 'stats'."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import servers as h

    images = {p.name: p.read_bytes() for p in REFERENCE.glob("*.jpg")} | generated_images()
    with h.serve() as upstream, h.serve() as victim:
        victim.route("/", h.image(b"secret"))
        for name, data in images.items():
            upstream.route(f"/img/{name}", h.image(data, "image/png" if name.endswith(".png") else "image/jpeg"))
        upstream.route("/img/png-as-html", h.image(images["small.png"], "text/html"))
        upstream.route("/r/0", h.redirect("/r/1"))
        upstream.route("/r/1", h.redirect("/img/smile.jpg"))
        upstream.route("/bad/404", h.status(404))
        upstream.route("/bad/500", h.status(500))
        upstream.route("/bad/page.html", h.html())
        upstream.route("/bad/truncated.jpg", h.image(images["smile.jpg"][:12000], "image/jpeg"))
        upstream.route("/bad/gzip", h.gzip_bomb())
        upstream.route("/bad/short", h.short_body(len(images["small.png"]) + 500, images["small.png"]))
        upstream.route("/bad/bomb.png", h.image(png_bomb()))
        upstream.route("/bad/endless", h.endless())
        upstream.route("/bad/slowloris", h.slow(b"x" * 100, delay=1.0))
        upstream.route("/go/victim", h.redirect(victim.url("/")))
        upstream.redirect_loop(3)
        conn.send({"upstream": upstream.netloc, "upstream_port": upstream.port, "victim_port": victim.port,
                   "sizes": {k: len(v) for k, v in images.items()}, "pid": os.getpid()})
        while True:
            message = conn.recv()
            if message == "stats":
                conn.send({"victim_connections": victim.connections, "victim_requests": len(victim.requests),
                           "upstream_requests": len(upstream.requests)})
            else:
                break


# ----------------------------------------------------------------------------- request mix


@dataclasses.dataclass(frozen=True)
class Spec:
    kind: str
    raw: bytes  # the whole request, ready to write
    expect: frozenset[Any]  # of (status, code or None)
    batch_expect: tuple[Any, ...] = ()  # per item: set of codes (None: scores) for /predict/batch


def request_bytes(method: str, target: str, body: bytes = b"", content_type: str | None = None) -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: keep-alive"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    if method in ("POST", "PUT") or body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def predict_url(url: str) -> bytes:
    return request_bytes("POST", "/predict?url=" + urllib.parse.quote(url, safe=""))


def multipart(field: str, data: bytes, boundary: str = "soakboundary") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def build_kinds(up: dict[str, Any]) -> dict[str, tuple[float, list[Spec]]]:
    """kind -> (weight, the variants drawn uniformly)."""
    base = f"http://{up['upstream']}"
    victim = up["victim_port"]
    smile = (REFERENCE / "smile.jpg").read_bytes()
    glasses = (REFERENCE / "glasses.jpg").read_bytes()
    small_png = generated_images()["small.png"]
    rnd = random.Random(1).randbytes(20_000)

    def spec(kind: str, raw: bytes, *expect: tuple[int, str | None], batch: tuple[Any, ...] = ()) -> Spec:
        if raw.startswith(b"POST /predict"):  # any prediction may be shed: NSFW_MAX_IN_FLIGHT, NSFW_QUEUE_SIZE
            expect = (*expect, OVERLOADED)
        return Spec(kind, raw, frozenset(expect), batch)

    def url(kind: str, path: str, *expect: tuple[int, str | None]) -> Spec:
        return spec(kind, predict_url(base + path), *expect)

    hostile_urls = [
        f"http://127.0.0.1:{victim}/", f"http://2130706433:{victim}/", f"http://0x7f.0.0.1:{victim}/",
        f"http://[::ffff:127.0.0.1]:{victim}/", f"http://localhost:{victim}/", f"http://[::1]:{victim}/",
        "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://192.168.1.1/admin",
    ]
    invalid_urls = ["file:///etc/passwd", f"http://user:pw@127.0.0.1:{victim}/", "gopher://x/", "http://[::1",
                    "http://example.com/" + "a" * 2100, f"http://127.0.0.1:{victim}/\r\nX: 1"]
    batch_items: list[tuple[str, set[str | None]]] = [(base + "/img/smile.jpg", {None, "overloaded"}), (base + "/img/small.png", {None, "overloaded"}),
                   (base + "/img/glasses.jpg", {None, "overloaded"}), (base + "/bad/404", {"upstream_error"}),
                   (base + "/bad/page.html", {"not_an_image"}), (f"http://127.1:{victim}/", {"forbidden_address"}),
                   ("ftp://x/", {"invalid_url"}), (base + "/go/victim", {"forbidden_address"})]
    batches = []
    for n in (4, 6, 8):
        chosen = [batch_items[(i * 3 + n) % len(batch_items)] for i in range(n)]
        body = json.dumps({"items": [{"id": i, "url": u} for i, (u, _) in enumerate(chosen)]}).encode()
        batches.append(spec("batch", request_bytes("POST", "/predict/batch", body, "application/json"), (200, None),
                            batch=tuple(frozenset(e) for _, e in chosen)))
    mp_jpeg, mp_type = multipart("file", smile)
    mp_png, _ = multipart("image", small_png)
    kinds: dict[str, tuple[float, list[Spec]]] = {
        "url_jpeg_36k": (10, [url("url_jpeg_36k", "/img/smile.jpg", *GOOD)]),
        "url_jpeg_107k": (6, [url("url_jpeg_107k", "/img/glasses.jpg", *GOOD)]),
        "url_jpeg_480k": (4, [url("url_jpeg_480k", "/img/big.jpg", *GOOD)]),
        "url_png_small": (6, [url("url_png_small", "/img/small.png", *GOOD)]),
        "url_png_640x480": (4, [url("url_png_640x480", "/img/medium.png", *GOOD)]),
        "url_png_as_html": (2, [url("url_png_as_html", "/img/png-as-html", *GOOD)]),
        "url_redirected": (2, [url("url_redirected", "/r/0", *GOOD)]),
        "upload_jpeg": (8, [spec("upload_jpeg", request_bytes("POST", "/predict", smile, "image/jpeg"), *GOOD),
                            spec("upload_jpeg", request_bytes("POST", "/predict?detail=1", glasses, "image/jpeg"),
                                 *GOOD)]),
        "upload_png": (4, [spec("upload_png", request_bytes("POST", "/predict", small_png, "image/png"), *GOOD)]),
        "upload_multipart": (4, [spec("upload_multipart", request_bytes("POST", "/predict", mp_jpeg, mp_type), *GOOD),
                                 spec("upload_multipart", request_bytes("POST", "/predict", mp_png, mp_type), *GOOD)]),
        "batch": (6, batches),
        "url_404": (3, [url("url_404", "/bad/404", (502, "upstream_error"))]),
        "url_500": (2, [url("url_500", "/bad/500", (502, "upstream_error"))]),
        "url_html": (3, [url("url_html", "/bad/page.html", (415, "not_an_image"))]),
        "url_truncated": (3, [url("url_truncated", "/bad/truncated.jpg", (422, "undecodable_image"))]),
        "url_gzip_bomb": (1, [url("url_gzip_bomb", "/bad/gzip", (415, "not_an_image"))]),
        "url_short_body": (1, [url("url_short_body", "/bad/short", (502, "upstream_error"))]),
        "url_pixel_bomb": (1, [url("url_pixel_bomb", "/bad/bomb.png", (413, "image_too_large"))]),
        "url_endless": (0.5, [url("url_endless", "/bad/endless", (413, "too_large"))]),
        "url_slowloris": (0.2, [url("url_slowloris", "/bad/slowloris", (504, "upstream_timeout"))]),
        "url_redirect_loop": (1, [url("url_redirect_loop", "/loop/0", (400, "too_many_redirects"))]),
        "upload_truncated": (2, [spec("upload_truncated", request_bytes("POST", "/predict", smile[:9000], "image/jpeg"),
                                      (422, "undecodable_image"))]),
        "upload_random": (2, [spec("upload_random", request_bytes("POST", "/predict", rnd), (415, "not_an_image"))]),
        "upload_pixel_bomb": (2, [spec("upload_pixel_bomb", request_bytes("POST", "/predict", png_bomb(), "image/png"),
                                       (413, "image_too_large"))]),
        "upload_empty": (1, [spec("upload_empty", request_bytes("POST", "/predict"), (400, "invalid_url"))]),
        "upload_html": (1, [spec("upload_html", request_bytes("POST", "/predict", b"<html><p>x</p></html>",
                                                              "image/jpeg"), (415, "not_an_image"))]),
        "hostile_url": (6, [spec("hostile_url", predict_url(u), (403, "forbidden_address")) for u in hostile_urls]
                        + [spec("hostile_url", predict_url(base + "/go/victim"), (403, "forbidden_address"))]),
        "invalid_url": (3, [spec("invalid_url", predict_url(u), (400, "invalid_url")) for u in invalid_urls]),
        "unknown_api_path": (3, [spec("unknown_api_path", request_bytes(m, p), (404, "not_found"))
                                 for m, p in (("GET", "/v1/nope"), ("POST", "/predict/nope"), ("GET", "/predict/"))]),
        "ui_path": (1, [spec("ui_path", request_bytes("GET", "/no/such/page"), (200, None))]),
        "wrong_method": (3, [spec("wrong_method", request_bytes(m, p), (405, "method_not_allowed"))
                             for m, p in (("GET", "/predict"), ("DELETE", "/health"), ("PUT", "/predict/batch"),
                                          ("PATCH", "/openapi.json"))]),
        "bad_batch": (2, [spec("bad_batch", request_bytes("POST", "/predict/batch", b, "application/json"),
                               (400, "bad_request")) for b in (b"{", b'{"urls": []}', b'"x"', b"\xff\xfe")]),
        "health": (3, [spec("health", request_bytes("GET", "/health"), (200, None))]),
        # bodies that once gave 500 (deep nesting, values JSON cannot echo back)
        "unencodable_batch": (1, [spec("unencodable_batch", request_bytes("POST", "/predict/batch", b,
                                                                          "application/json"), (400, "bad_request"))
                                  for b in (b"[" * 50_000, b"[NaN]", b'["\\ud800"]')]),
    }
    return kinds


def draw(kinds: dict[str, tuple[float, list[Spec]]], n: int, seed: int) -> list[Spec]:
    rng = random.Random(seed)
    names = list(kinds)
    weights = [kinds[k][0] for k in names]
    return [rng.choice(kinds[k][1]) for k in rng.choices(names, weights, k=n)]


# ----------------------------------------------------------------------------- a minimal keep-alive client


class Closed(Exception):
    """The server closed a kept-alive connection before answering (stale: retried once)."""


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.opened = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        self.opened += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        fresh = self.writer is None
        if fresh:
            await self.open()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            await self.writer.drain()
            line = await self.reader.readline()
        except (ConnectionError, OSError) as exc:
            self.close()
            if fresh:
                raise
            raise Closed() from exc
        if not line:
            self.close()
            if fresh:
                raise ConnectionError("the server closed a new connection without answering")
            raise Closed()
        status = int(line.split(None, 2)[1])
        headers: dict[str, str] = {}
        while True:
            h = await self.reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


# ----------------------------------------------------------------------------- process probes


def proc_probe(pid: int) -> dict[str, float]:
    """RSS (MB), open fds, threads and CPU seconds of ``pid`` from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
    }


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Tally:
    completed: int = 0
    statuses: collections.Counter[Any] = dataclasses.field(default_factory=collections.Counter[Any])
    by_kind: dict[str, Any] = dataclasses.field(default_factory=lambda: collections.defaultdict(collections.Counter[Any]))
    latency: dict[str, Any] = dataclasses.field(default_factory=lambda: collections.defaultdict(list[Any]))
    unexpected: list[Any] = dataclasses.field(default_factory=list)
    unexpected_5xx: int = 0
    batch_items: collections.Counter[Any] = dataclasses.field(default_factory=collections.Counter[Any])
    batch_items_unexpected_5xx: int = 0
    transport_errors: list[Any] = dataclasses.field(default_factory=list)
    stale_retries: int = 0


def classify(spec: Spec, status: int, headers: dict[str, str], body: bytes, tally: Tally) -> None:
    code = None
    is_json = headers.get("content-type", "").startswith("application/json")
    if status != 200 and is_json:
        try:
            code = json.loads(body).get("code")
        except ValueError:
            code = "<bad json>"
    ok = (status, code) in spec.expect
    if ok and status == 200 and spec.kind not in ("health", "ui_path", "batch"):
        ok = body.startswith(CLASSES_PREFIX) or (b'"scores":{"drawings":' in body[:40])
    if ok and status == 503 and headers.get("retry-after") != "1":
        ok = False
    if ok and spec.kind == "ui_path":
        ok = "text/html" in headers.get("content-type", "")
    if ok and spec.batch_expect and status == 200:
        results = json.loads(body)["results"]
        ok = len(results) == len(spec.batch_expect)
        for result, allowed in zip(results, spec.batch_expect, strict=False):
            item_code = result["error"]["code"] if "error" in result else None
            tally.batch_items[item_code or "scores"] += 1
            if item_code not in allowed:
                ok = False
                if item_code in ("internal_error", "model_error") or (item_code or "").startswith("upstream"):
                    tally.batch_items_unexpected_5xx += 1
    if not ok:
        if status >= 500:
            tally.unexpected_5xx += 1
        if len(tally.unexpected) < 20:
            tally.unexpected.append((spec.kind, status, code, body[:200]))
        else:
            tally.unexpected.append((spec.kind, status, code, b""))


async def run_load(port: int, specs: list[Spec], concurrency: int, warmup: int, max_seconds: float,
                   server_pid: int) -> dict[str, Any]:
    tally = Tally()
    samples: dict[str, Any] = {}
    next_index = 0
    started = time.monotonic()
    stop_at = started + max_seconds
    timeline: list[tuple[float, int, float]] = []

    async def worker() -> None:
        nonlocal next_index
        conn = Connection(port)
        try:
            while next_index < len(specs) and time.monotonic() < stop_at:
                spec = specs[next_index]
                next_index += 1
                t0 = time.perf_counter()
                try:
                    try:
                        status, headers, body = await conn.exchange(spec.raw)
                    except Closed:
                        tally.stale_retries += 1
                        status, headers, body = await conn.exchange(spec.raw)
                except Exception as exc:
                    conn.close()
                    tally.transport_errors.append((spec.kind, repr(exc)))
                    continue
                tally.latency[spec.kind].append(time.perf_counter() - t0)
                tally.statuses[status] += 1
                tally.by_kind[spec.kind][status] += 1
                classify(spec, status, headers, body, tally)
                tally.completed += 1
                if tally.completed == warmup:
                    samples["warmup"] = proc_probe(server_pid) | {"at_request": warmup,
                                                                  "t": time.monotonic() - started}
                if tally.completed == len(specs):  # the last answer, connections still open as at warm-up
                    samples["end"] = proc_probe(server_pid) | {"at_request": tally.completed,
                                                               "t": time.monotonic() - started}
        finally:
            conn.close()

    async def sampler() -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            timeline.append((round(time.monotonic() - started, 1), tally.completed,
                             round(proc_probe(server_pid)["rss_mb"], 1)))

    probe = asyncio.create_task(sampler())
    client_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - started
    client_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    probe.cancel()
    samples.setdefault("end", proc_probe(server_pid) | {"at_request": tally.completed, "t": wall})
    await asyncio.sleep(2)
    samples["closed_plus_2s"] = proc_probe(server_pid)  # client connections closed, 2 s later
    return {"tally": tally, "samples": samples, "wall_s": wall, "timeline": timeline,
            "client_cpu_s": (client_cpu1.ru_utime + client_cpu1.ru_stime
                             - client_cpu0.ru_utime - client_cpu0.ru_stime),
            "issued": next_index}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def start_server(up: dict[str, Any], tmp: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "STREAMLIT_"))}
    env.update(PORT=str(port), NSFW_HOST="127.0.0.1", NSFW_DATA_DIR=str(tmp / "data"),
               NSFW_COMPILED_DIR=str(ROOT / "var" / "compiled"),
               NSFW_ALLOW_PRIVATE_HOSTS=up["upstream"], NSFW_FETCH_TIMEOUT=str(FETCH_TIMEOUT),
               NSFW_MAX_BYTES=str(MAX_BYTES), **extra_env)
    log = tmp / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited during startup:\n{log.read_text()}")
        try:
            if http_get(port, "/health")[0] == 200:
                return process, port, log
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit(f"the server was not healthy within 180 s:\n{log.read_text()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1_000, help="requests before the first RSS sample")
    parser.add_argument("--max-seconds", type=float, default=1_800, help="stop issuing requests after this long")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the server (repeatable), e.g. MALLOC_ARENA_MAX=2")
    args = parser.parse_args(argv)
    warmup = min(args.warmup, args.requests)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    upstream_proc = ctx.Process(target=upstream_main, args=(child,), daemon=True)
    upstream_proc.start()
    up = parent.recv()
    kinds = build_kinds(up)
    specs = draw(kinds, args.requests, args.seed)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nsfw-soak-") as tmp_name:
        tmp = Path(tmp_name)
        t_start = time.monotonic()
        extra_env = dict(item.split("=", 1) for item in args.server_env)
        process, port, log = start_server(up, tmp, extra_env)
        startup_s = time.monotonic() - t_start
        idle = proc_probe(process.pid)
        upstream_cpu0 = proc_probe(up["pid"])["cpu_s"]
        print(f"server pid {process.pid} on :{port}, healthy after {startup_s:.1f} s, RSS {idle['rss_mb']:.0f} MB; "
              f"upstream {up['upstream']}, victim :{up['victim_port']}; sending {args.requests} requests "
              f"at concurrency {args.concurrency}", flush=True)
        result = asyncio.run(run_load(port, specs, args.concurrency, warmup, args.max_seconds, process.pid))
        tally: Tally = result["tally"]
        health_status, health_body = http_get(port, "/health")
        parent.send("stats")
        upstream_stats = parent.recv()
        upstream_cpu = proc_probe(up["pid"])["cpu_s"] - upstream_cpu0
        server_cpu = result["samples"]["end"]["cpu_s"] - idle["cpu_s"]
        process.send_signal(signal.SIGTERM)
        exit_code: int | str
        try:
            exit_code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            exit_code = "killed after 30 s"
        log_text = log.read_text(errors="replace")
    parent.send("stop")
    upstream_proc.join(timeout=10)

    samples = result["samples"]
    all_latency = [x for values in tally.latency.values() for x in values]
    rss_growth = samples["end"]["rss_mb"] - samples["warmup"]["rss_mb"] if "warmup" in samples else float("nan")
    after = [(done, rss) for _, done, rss in result["timeline"] if done >= warmup]
    rss_trend = None  # least-squares slope of RSS against requests after warm-up, MB per 10,000 requests
    if len(after) >= 3 and len({d for d, _ in after}) > 1:
        rss_trend = round(statistics.linear_regression([d for d, _ in after], [r for _, r in after]).slope * 10_000, 1)
    figures = {
        "requests_planned": args.requests, "requests_issued": result["issued"], "completed": tally.completed,
        "concurrency": args.concurrency, "seed": args.seed, "server_env": args.server_env,
        "wall_s": round(result["wall_s"], 1),
        "throughput_rps": round(tally.completed / result["wall_s"], 1),
        "status_histogram": dict(sorted(tally.statuses.items())),
        "unexpected_answers": len(tally.unexpected), "unexpected_5xx": tally.unexpected_5xx,
        "batch_items": dict(tally.batch_items), "batch_items_unexpected_5xx": tally.batch_items_unexpected_5xx,
        "transport_errors": len(tally.transport_errors), "stale_keepalive_retries": tally.stale_retries,
        "latency_ms": {"p50": round(statistics.median(all_latency) * 1000, 1) if all_latency else None,
                       "p99": round(percentile(all_latency, 0.99) * 1000, 1),
                       "max": round(max(all_latency, default=float("nan")) * 1000, 1)},
        "server": {"startup_s": round(startup_s, 1), "idle": idle, "warmup": samples.get("warmup"),
                   "end": samples["end"], "closed_plus_2s": samples["closed_plus_2s"],
                   "rss_growth_mb": round(rss_growth, 1),
                   "rss_after_warmup_min_max_mb": [min((r for _, r in after), default=None),
                                                   max((r for _, r in after), default=None)],
                   "rss_trend_mb_per_10k_requests": rss_trend, "cpu_s": round(server_cpu, 1),
                   "health_at_end": health_status, "exit_code": exit_code,
                   "log_tracebacks": log_text.count("Traceback"), "log_error_lines": log_text.count(" ERROR ")},
        "client_cpu_s": round(result["client_cpu_s"], 1), "upstream_cpu_s": round(upstream_cpu, 1),
        "upstream": upstream_stats, "rss_timeline": result["timeline"],
        "by_kind": {k: {"n": len(tally.latency[k]), "statuses": dict(sorted(tally.by_kind[k].items())),
                        "p50_ms": round(statistics.median(tally.latency[k]) * 1000, 1),
                        "p99_ms": round(percentile(tally.latency[k], 0.99) * 1000, 1)}
                    for k in sorted(tally.latency)},
        "batcher_at_end": json.loads(health_body).get("batcher") if health_status == 200 else None,
    }

    if tally.completed != args.requests:
        failures.append(f"only {tally.completed} of {args.requests} requests completed "
                        f"({len(tally.transport_errors)} transport errors, time limit {args.max_seconds} s)")
    if tally.unexpected_5xx or tally.batch_items_unexpected_5xx:
        failures.append(f"{tally.unexpected_5xx} unexpected 5xx answers, "
                        f"{tally.batch_items_unexpected_5xx} unexpected 5xx batch items")
    if tally.unexpected:
        failures.append(f"{len(tally.unexpected)} answers not in their kind's expected set")
    if not rss_growth < args.max_rss_growth_mb:
        failures.append(f"server RSS grew {rss_growth:.1f} MB after warm-up (limit {args.max_rss_growth_mb})")
    if upstream_stats["victim_connections"] or upstream_stats["victim_requests"]:
        failures.append(f"the victim server was contacted: {upstream_stats}")
    if health_status != 200:
        failures.append(f"/health answered {health_status} at the end")
    if exit_code != -signal.SIGTERM:
        failures.append(f"the server's exit after SIGTERM was {exit_code}, not -15")
    if "Traceback" in log_text:
        failures.append(f"the server log holds {log_text.count('Traceback')} tracebacks")

    print(json.dumps(figures, indent=1, default=str))
    for kind, status, code, body in tally.unexpected[:20]:
        print(f"unexpected: {kind}: {status} {code} {body!r}")
    for kind, error in tally.transport_errors[:20]:
        print(f"transport error: {kind}: {error}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    w = figures["server"]
    print(f"\n{tally.completed}/{args.requests} requests in {figures['wall_s']} s "
          f"({figures['throughput_rps']} req/s) at concurrency {args.concurrency}; "
          f"statuses {figures['status_histogram']}")
    print(f"unexpected answers {len(tally.unexpected)}, unexpected 5xx {tally.unexpected_5xx} "
          f"(+{tally.batch_items_unexpected_5xx} batch items), transport errors {len(tally.transport_errors)}")
    if w["warmup"]:
        print(f"server RSS: warm-up (after {warmup} requests) {w['warmup']['rss_mb']:.1f} MB, end "
              f"{w['end']['rss_mb']:.1f} MB, growth {w['rss_growth_mb']} MB; fds {w['warmup']['fds']} -> "
              f"{w['end']['fds']}; threads {w['warmup']['threads']} -> {w['end']['threads']}")
        print(f"server RSS after warm-up ({SAMPLE_EVERY_S:g} s samples): "
              f"min/max {w['rss_after_warmup_min_max_mb']} MB, trend "
              f"{w['rss_trend_mb_per_10k_requests']} MB per 10,000 requests")
    print(f"latency p50 {figures['latency_ms']['p50']} ms, p99 {figures['latency_ms']['p99']} ms; CPU s: server "
          f"{w['cpu_s']}, client {figures['client_cpu_s']}, upstream {figures['upstream_cpu_s']}")
    print("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
