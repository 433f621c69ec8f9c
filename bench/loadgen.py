"""Closed-loop HTTP/1.1 load generator: asyncio streams, persistent (keep-alive) connections.

``concurrency`` workers each hold one connection and send the next request as
soon as the previous answer is in.  A connection is reopened only when the
server says ``Connection: close`` (gunicorn's sync workers do, on every
answer) or drops it; reopening is counted and its connect time is part of the
request's latency.  After ``duration`` seconds no new request starts; the ones
in flight may finish for up to ``drain`` seconds (so a slow server at high
concurrency is not flattered by dropping its slowest answers), and anything
still pending then counts as an error (``unfinished``).

Throughput = successful answers / (time from start to the last answer).

Standalone: ``python bench/loadgen.py URL -c 64 -d 5 [-m POST]`` prints JSON.
A ``--echo`` mode serves a canned keep-alive 200 as fast as asyncio can, to
measure this client's own ceiling (``python bench/loadgen.py --echo PORT``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import urllib.parse
from typing import Any, Callable, cast

from common import percentile

PathFn = Callable[[int], str]


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ensure(self) -> bool:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
            return True
        return False

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.reader = self.writer = None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return status, headers, body


async def run_load(host: str, port: int, path_fn: PathFn, *, method: str = "POST", concurrency: int = 1,
                   duration: float = 5.0, warmup: float = 0.0, drain: float = 30.0, timeout: float = 60.0,
                   body_check: Callable[[bytes], bool] | None = None) -> dict[str, Any]:
    """Run one load cell; returns counts, req/s and latency percentiles (ms)."""
    counter = itertools.count()
    host_hdr = f"{host}:{port}"

    def request_bytes(path: str) -> bytes:
        return (f"{method} {path} HTTP/1.1\r\nHost: {host_hdr}\r\nUser-Agent: nsfw-bench\r\n"
                f"Accept: application/json\r\nContent-Length: 0\r\n\r\n").encode()

    async def phase(seconds: float, record: bool) -> dict[str, Any]:
        lat: list[float] = []
        statuses: dict[str, int] = {}
        errors: dict[str, int] = {}
        stats = {"connects": 0, "ok": 0, "bad_body": 0}
        t_start = time.perf_counter()
        stop_at = t_start + seconds
        last_done = [t_start]

        async def worker() -> None:
            conn = _Conn(host, port)
            try:
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    try:
                        if await conn.ensure():
                            stats["connects"] += 1
                        assert conn.reader is not None and conn.writer is not None  # ensure() connected
                        conn.writer.write(request_bytes(path_fn(next(counter))))
                        status, headers, body = await asyncio.wait_for(_read_response(conn.reader), timeout)
                    except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.TimeoutError,
                            asyncio.LimitOverrunError, ValueError) as exc:
                        conn.close()
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                        last_done[0] = time.perf_counter()
                        await asyncio.sleep(0.01)
                        continue
                    t1 = time.perf_counter()
                    last_done[0] = t1
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == 200 and (body_check is None or body_check(body)):
                        stats["ok"] += 1
                        lat.append(t1 - t0)
                    elif status == 200:
                        stats["bad_body"] += 1
                    if headers.get("connection", "").lower() == "close":
                        conn.close()
            finally:
                conn.close()

        tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=seconds + drain)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        elapsed = max(last_done[0] - t_start, 1e-9)
        if not record:
            return {}
        lat.sort()
        total = sum(statuses.values())
        n_err = sum(errors.values()) + (total - stats["ok"]) + len(pending)
        return {
            "concurrency": concurrency,
            "duration_s": round(elapsed, 3),
            "requests": total + sum(errors.values()),
            "ok": stats["ok"],
            "errors": n_err,
            "unfinished": len(pending),
            "error_kinds": {**errors, **{f"http_{k}": v for k, v in statuses.items() if k != "200"},
                            **({"unfinished": len(pending)} if pending else {}),
                            **({"bad_body": stats["bad_body"]} if stats["bad_body"] else {})},
            "connects": stats["connects"],
            "rps": round(stats["ok"] / elapsed, 2),
            "p50_ms": _ms(percentile(lat, 50)),
            "p95_ms": _ms(percentile(lat, 95)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1] if lat else None),
            "mean_ms": _ms(sum(lat) / len(lat) if lat else None),
        }

    if warmup > 0:
        await phase(warmup, record=False)
    return await phase(duration, record=True)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 2)


def load(url_base: str, path_fn: PathFn, **kw: Any) -> dict[str, Any]:
    u = urllib.parse.urlsplit(url_base)
    return asyncio.run(run_load(u.hostname or "127.0.0.1", u.port or 80, path_fn, **kw))


# ---------------------------------------------------------------- echo server (client ceiling)

_CANNED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
           b'{"ok":true}')


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # a stream server's transport writes
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")  # bodiless requests only
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(_CANNED * n)


async def _serve_echo(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", port, backlog=1024)
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url", nargs="?")
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    ap.add_argument("-d", "--duration", type=float, default=5.0)
    ap.add_argument("-m", "--method", default="GET")
    ap.add_argument("--echo", type=int, help="serve a canned 200 on this port instead")
    a = ap.parse_args()
    if a.echo:
        asyncio.run(_serve_echo(a.echo))
        return
    u = urllib.parse.urlsplit(a.url)
    path = u.path + (f"?{u.query}" if u.query else "")
    print(json.dumps(load(a.url, lambda i: path, method=a.method, concurrency=a.concurrency,
                          duration=a.duration)))


if __name__ == "__main__":
    main()
