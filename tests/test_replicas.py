"""Two real servers (``python app.py``) on one PostgreSQL agree on the thresholds (issue 15).

- a version saved to the database is in force on both within 2 s, and both report it in ``/health``
  and in the detailed answer;
- both restarted: the history is still there and the same version is in force at once;
- the database unreachable while requests flow (server B reaches PostgreSQL through a TCP proxy the
  test cuts, so the shared test server keeps running): no 5xx from ``/predict``, the thresholds in
  force never change, ``/health`` warns; when the proxy is back B recovers by itself and picks up a
  version saved meanwhile.

The versions are saved by a third "replica" (a :class:`ThresholdHistory` in this process, which is
what the calibrate page's save does in its server).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from nsfw_core.base.verdict import Thresholds
from nsfw_core.state.thresholds import ThresholdHistory
from tests.helpers.appserver import AppServer
from tests.helpers.paths import REFERENCE
from tests.helpers.tcpproxy import TcpProxy

SMILE = (REFERENCE / "smile.jpg").read_bytes()
T1 = Thresholds(0.61, 0.81)
T2 = Thresholds(0.52, 0.92)
T3 = Thresholds(0.73, 0.83)


def in_force(server: AppServer) -> tuple[int | None, float, float]:
    t = server.health().json()["thresholds"]
    return t["version"], t["adult"], t["safe"]


def detail(server: AppServer) -> dict[str, Any]:
    reply = server.request("POST", "/predict?detail=1", body=SMILE, headers={"Content-Type": "image/jpeg"})
    assert reply.status == 200, reply
    thresholds: dict[str, Any] = reply.json()["thresholds"]
    return thresholds


def wait_for(servers: list[AppServer], version: int, limit: float) -> float:
    """Seconds until every server reports ``version`` in /health (fails past ``limit``)."""
    started = time.monotonic()
    while not all(in_force(s)[0] == version for s in servers):
        assert time.monotonic() - started < limit, [in_force(s) for s in servers]
        time.sleep(0.02)
    return time.monotonic() - started


def test_two_servers_on_one_postgresql_agree_survive_restarts_and_outages(postgres_url, tmp_path: Path) -> None:
    proxy, proxied_url = TcpProxy.for_url(postgres_url)
    writer = ThresholdHistory(postgres_url, data_dir=tmp_path / "writer", defaults=Thresholds())
    servers: list[AppServer] = []

    def start() -> tuple[AppServer, AppServer]:
        a = AppServer(tmp_path / "a", NSFW_DATABASE_URL=postgres_url)
        b = AppServer(tmp_path / "b", NSFW_DATABASE_URL=proxied_url)
        servers.extend([a, b])
        return a.wait(), b.wait()

    try:
        a, b = start()
        assert in_force(a) == in_force(b) == (None, 0.7, 0.9)

        # 1. Saved once, in force on both within 2 s.
        writer.save(T1, model="MobileNetV2Mid", by="alice", tuned_on={"images": 3})
        delay = wait_for([a, b], 1, 2.0)
        print(f"version 1 in force on both servers {delay * 1000:.0f} ms after the save")
        for s in (a, b):
            assert in_force(s) == (1, 0.61, 0.81)
            assert detail(s) == {**T1.to_dict(), "version": 1}
        writer.save(T2, model="MobileNetV2Mid", by="bob")
        delay = wait_for([a, b], 2, 2.0)
        print(f"version 2 in force on both servers {delay * 1000:.0f} ms after the save")

        # 2. Both restarted: the history is there, the same version in force from the first answer.
        for s in (a, b):
            assert s.stop() == -15  # uvicorn re-raises the SIGTERM it caught (tests/test_server.py)
        a, b = start()
        assert in_force(a) == in_force(b) == (2, 0.52, 0.92)
        assert [v.version for v in writer.history()] == [2, 1]

        # 3. B's database goes away while requests flow.
        statuses: list[int] = []
        versions: list[int] = []
        stop = threading.Event()

        def flow() -> None:
            while not stop.is_set():
                reply = b.request("POST", "/predict?detail=1", body=SMILE, headers={"Content-Type": "image/jpeg"})
                statuses.append(reply.status)
                if reply.status == 200:
                    versions.append(reply.json()["thresholds"]["version"])

        flowing = threading.Thread(target=flow, daemon=True)
        flowing.start()
        time.sleep(0.5)
        proxy.down()
        # each store notices on its own refresh: the known images' warning may come first
        expected = ("the thresholds database (PostgreSQL) is unreachable; keeping version 2 in force (details in "
                    "the server log)")
        deadline = time.monotonic() + 10
        while expected not in (health := b.health().json())["warnings"]:
            assert time.monotonic() < deadline, f"no thresholds warning while the database is unreachable: {health}"
            time.sleep(0.05)
        assert (health["thresholds"]["version"], health["thresholds"]["adult"]) == (2, 0.52)
        assert not [w for w in health["warnings"] if "postgresql://" in w or "127.0.0.1" in w], health
        writer.save(T3, model="MobileNetV2Mid", by="carol")  # A sees it; B cannot yet
        wait_for([a], 3, 2.0)
        time.sleep(2.0)  # requests keep flowing to B while its database is away
        assert in_force(b) == (2, 0.52, 0.92)
        proxy.up()
        delay = wait_for([b], 3, 5.0)
        print(f"B back on version 3 {delay * 1000:.0f} ms after the database came back")
        deadline = time.monotonic() + 5
        while b.health().json()["warnings"]:
            assert time.monotonic() < deadline, b.health().json()
            time.sleep(0.05)
        stop.set()
        flowing.join(30)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert set(versions) <= {2, 3} and versions[0] == 2 and versions[-1] == 3, versions
        # never back to an older version once a newer one was in force
        assert versions == sorted(versions)
        print(f"{len(statuses)} /predict answers while the database was cut and restored: all 200")
        assert "Traceback" not in b.log.read_text()
    finally:
        for s in servers:
            s.stop()
        writer.close()
        proxy.close()


def test_one_server_on_the_sqlite_default_keeps_the_history_over_a_restart(tmp_path: Path) -> None:
    server = AppServer(tmp_path / "s").wait()
    writer = ThresholdHistory(None, data_dir=server.data_dir, defaults=Thresholds())  # <data_dir>/review.sqlite
    try:
        assert in_force(server) == (None, 0.7, 0.9)
        writer.save(T1, model="MobileNetV2Mid", by="alice")
        wait_for([server], 1, 2.0)
        assert detail(server) == {**T1.to_dict(), "version": 1}
        assert server.stop() == -15
        server = AppServer(tmp_path / "s").wait()
        assert in_force(server) == (1, 0.61, 0.81)
        assert [(v.version, v.saved_by) for v in writer.history()] == [(1, "alice")]
    finally:
        server.stop()
        writer.close()
