"""The review queue shared by replicas: several processes on one real database (issue 15).

Each replica is a separate Python process with its own :class:`ReviewQueue` (its own
connection pool), as two ``python app.py`` instances would be; the database is the
PostgreSQL that ``postgres_url`` starts (a fresh schema per test), or one SQLite file in a
shared ``data_dir`` (the same cases, as one instance with several workers would use it).

- 2 processes x 8 reviewer threads claim and decide 1,000 items: every item is decided
  exactly once, by the reviewer that claimed it, none is lost or left open;
- ``kill -9`` of a process holding leases: nobody else can claim its items before the lease
  ends, and they are claimable (and can be decided) once it has.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from nsfw_core.state.review import ReviewQueue

SCORES = {"drawings": 0.2, "hentai": 0.2, "neutral": 0.2, "porn": 0.2, "sexy": 0.2}
PROCESS_TIMEOUT = 60.0


def _sha(n: int) -> str:
    return format(n, "064x")


def _enqueue(q: ReviewQueue, count: int) -> list[int]:
    ids = [q.enqueue(_sha(n), f"https://example.com/{n}.jpg", SCORES, "m", "unknown") for n in range(count)]
    assert len(set(ids)) == count
    return ids


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """Wait for the processes (bounded), kill any left, and return (exit code, stderr) of each."""
    out = []
    deadline = time.monotonic() + PROCESS_TIMEOUT
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        err = p.stderr.read() if p.stderr else ""
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
        out.append((p.returncode, err))
    return out


# ---------------------------------------------------------------- 2 processes x 8 reviewers

_REVIEWERS = """
import json, os, sys, threading, time, traceback
from nsfw_core.state.review import ReviewQueue
url, data_dir, name, threads, gate, log = sys.argv[1] or None, sys.argv[2], sys.argv[3], int(sys.argv[4]), \\
    sys.argv[5], sys.argv[6]
q = ReviewQueue(url, data_dir=data_dir, lease_seconds=120)
decided = {}
errors = []
def review(reviewer):
    mine = decided[reviewer] = []
    try:
        while (item := q.claim(reviewer)) is not None:
            assert item.claimed_by == reviewer, item
            q.decide(item.id, reviewer, "safe")
            mine.append(item.id)
    except BaseException:
        errors.append(traceback.format_exc())
workers = [threading.Thread(target=review, args=(f"{name}-r{i}",)) for i in range(threads)]
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(gate):
    if time.monotonic() > deadline:
        sys.exit("the start gate never opened")
    time.sleep(0.005)
for t in workers:
    t.start()
for t in workers:
    t.join()
with open(log, "w") as f:
    json.dump(decided, f)
if errors:
    sys.exit("\\n".join(errors))
"""


def _reviewers_decide_everything_once(url: str | None, data_dir: Path, tmp_path: Path, items: int,
                                      processes: int = 2, threads: int = 8) -> None:
    with ReviewQueue(url, data_dir=data_dir) as q:
        ids = _enqueue(q, items)
    gate = tmp_path / "go"
    logs = [tmp_path / f"decided-{i}.json" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-c", _REVIEWERS, url or "", str(data_dir), f"p{i}", str(threads),
                               str(gate), str(logs[i])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    try:
        for p in procs:  # every process has its queue open before any reviewer starts
            assert p.stdout is not None and p.stderr is not None  # pipes
            assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.poll() is not None else "no ready"
        gate.touch()
    finally:
        results = _finish(procs)
    assert all(rc == 0 for rc, _ in results), results

    by_reviewer: dict[str, list[int]] = {}
    for log in logs:
        by_reviewer.update(json.loads(log.read_text()))
    assert len(by_reviewer) == processes * threads
    logged = [i for decided in by_reviewer.values() for i in decided]
    twice = [i for i, n in Counter(logged).items() if n > 1]
    assert not twice, f"decided more than once: {twice[:20]}"
    assert sorted(logged) == sorted(ids)  # the union is every item: none lost
    assert sum(1 for decided in by_reviewer.values() if decided) > 1  # the work really was shared

    with ReviewQueue(url, data_dir=data_dir) as q:
        assert q.counts() == {"pending": 0, "claimed": 0, "decided": items, "total": items}
        rows = q.items(limit=items + 10)
    assert sorted(r.id for r in rows) == sorted(ids)
    decided_by = {i: reviewer for reviewer, decided in by_reviewer.items() for i in decided}
    for r in rows:  # the database agrees with the logs: one decision each, by the reviewer who logged it
        assert (r.status, r.decision, r.decided_by, r.claimed_by) == ("decided", "safe", decided_by[r.id], None)


def test_two_processes_of_eight_reviewers_decide_each_item_exactly_once(postgres_url, tmp_path):
    _reviewers_decide_everything_once(postgres_url, tmp_path / "data", tmp_path, items=1000)


def test_two_processes_of_eight_reviewers_on_one_sqlite_file(tmp_path):
    _reviewers_decide_everything_once(None, tmp_path / "shared-data", tmp_path, items=1000)


# ---------------------------------------------------------------- kill -9 while holding leases

_HOLDER = """
import json, sys, time
from nsfw_core.state.review import ReviewQueue
url, data_dir, count, lease = sys.argv[1] or None, sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
q = ReviewQueue(url, data_dir=data_dir)
held = []
for _ in range(count):
    item = q.claim("holder", lease)
    held.append({"id": item.id, "lease_until": item.lease_until})
print(json.dumps(held), flush=True)
time.sleep(120)
"""


def _leases_of_a_killed_process_expire(url: str | None, data_dir: Path, count: int = 5, lease: float = 5.0) -> None:
    with ReviewQueue(url, data_dir=data_dir) as q:
        ids = _enqueue(q, count)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, url or "", str(data_dir), str(count), str(lease)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stderr is not None  # pipes
    try:
        line = holder.stdout.readline()
        assert line, holder.stderr.read() if holder.poll() is not None else "the holder printed nothing"
        held = json.loads(line)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
        _finish([holder])
    assert holder.returncode == -signal.SIGKILL
    assert sorted(h["id"] for h in held) == sorted(ids)
    first_expiry = min(h["lease_until"] for h in held)
    last_expiry = max(h["lease_until"] for h in held)

    with ReviewQueue(url, data_dir=data_dir) as other:
        assert time.time() < first_expiry - 0.5, "the lease ran out before it could be checked; lengthen it"
        # Before the lease ends: the dead process's items are not claimable, nor decidable by anyone else.
        assert other.claim("rescuer", 30) is None
        assert other.counts() == {"pending": 0, "claimed": count, "decided": 0, "total": count}
        assert all(it.claimed_by == "holder" for it in other.items())
        while time.time() < first_expiry - 0.2:
            assert other.claim("rescuer", 30) is None
            time.sleep(0.2)

        time.sleep(max(0.0, last_expiry - time.time()) + 0.3)
        # After it: all of them come back, once each, and can be decided.
        assert other.counts()["pending"] == count
        reclaimed = []
        while (item := other.claim("rescuer", 30)) is not None:
            assert item.claimed_by == "rescuer"
            reclaimed.append(item.id)
            assert len(reclaimed) <= count
        assert sorted(reclaimed) == sorted(ids)
        for item_id in reclaimed:
            assert other.decide(item_id, "rescuer", "safe").decided_by == "rescuer"
        assert other.counts() == {"pending": 0, "claimed": 0, "decided": count, "total": count}


def test_kill_9_of_a_process_holding_leases_postgres(postgres_url, tmp_path):
    _leases_of_a_killed_process_expire(postgres_url, tmp_path / "data")


def test_kill_9_of_a_process_holding_leases_sqlite(tmp_path):
    _leases_of_a_killed_process_expire(None, tmp_path / "shared-data")
