"""Shared helpers of the benchmark harness: processes, /proc sampling, machine facts.

Standard library only, so every venv (and the harness itself) can import it.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCRATCH = BENCH / "results" / "scratch"
VENVS = BENCH / ".venvs"
PROJECT_PY = ROOT / ".venv" / "bin" / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def median(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.median(xs) if xs else None


def percentile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, int(round(q / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


# ---------------------------------------------------------------- /proc


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its live threads included)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        rest = stat[stat.rfind(b")") + 2:].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def system_cpu() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


class TreeSampler(threading.Thread):
    """Samples the summed RSS (and PSS) of a process tree every ``interval`` s; keeps peaks.

    ``cell_peak`` is the peak since the last :meth:`reset_cell`; ``peak`` the peak since start.
    CPU seconds of the tree are accumulated per pid (max seen), so processes that exit keep theirs.
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name=f"rss-{root}")
        self.root = root
        self.interval = interval
        self.peak = 0
        self.cell_peak = 0
        self.peak_pss = 0
        self.procs = 0
        self._cpu: dict[int, float] = {}
        self._stop_evt = threading.Event()
        self._n = 0

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self._stop_evt.wait(self.interval)

    def sample(self) -> None:
        pids = process_tree(self.root)
        total = sum(rss_bytes(p) for p in pids)
        self.procs = max(self.procs, len(pids))
        self.peak = max(self.peak, total)
        self.cell_peak = max(self.cell_peak, total)
        for p in pids:
            self._cpu[p] = max(self._cpu.get(p, 0.0), cpu_seconds(p))
        self._n += 1
        if self._n % 10 == 1:  # PSS is dearer to read: once a second
            self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in pids))

    def cpu(self) -> float:
        """CPU seconds used by the tree so far (sampled now)."""
        for p in process_tree(self.root):
            self._cpu[p] = max(self._cpu.get(p, 0.0), cpu_seconds(p))
        return sum(self._cpu.values())

    def reset_cell(self) -> None:
        self.cell_peak = 0

    def stop(self) -> None:
        self._stop_evt.set()


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the live threads of ``pid``, summed per thread name (comm).

    Only a coarse split: Python threads are all named 'python', and in this TF build the intra-op
    pool that runs the forward pass is not named either (it shows as 'python' too); 'tf_Compute'
    is a small auxiliary pool.  Kept in the JSON, not in the report."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode(errors="replace")
        rest = stat[stat.rfind(b")") + 2:].split()
        out[comm] = out.get(comm, 0.0) + (int(rest[11]) + int(rest[12])) / CLK_TCK
    return out


class CpuMeter:
    """CPU used during a window: by the server tree, by this process, by the image server, and the rest."""

    def __init__(self, server: TreeSampler | None, others: dict[str, int]) -> None:
        self.server = server
        self.others = others

    def start(self) -> None:
        self.thr0 = thread_cpu(self.server.root) if self.server else {}
        self.t0 = time.perf_counter()
        self.sys0 = system_cpu()
        self.self0 = time.process_time()
        self.srv0 = self.server.cpu() if self.server else 0.0
        self.oth0 = {k: cpu_seconds(p) for k, p in self.others.items()}

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        busy1, _ = system_cpu()
        out: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "server_cores": round(((self.server.cpu() if self.server else 0.0) - self.srv0) / wall, 3),
            "client_cores": round((time.process_time() - self.self0) / wall, 3),
            "machine_busy_cores": round((busy1 - self.sys0[0]) / wall, 3),
        }
        for k, p in self.others.items():
            out[f"{k}_cores"] = round((cpu_seconds(p) - self.oth0[k]) / wall, 3)
        if self.server:
            thr1 = thread_cpu(self.server.root)
            # threads that ended during the window are lost; new ones count from 0
            out["server_root_threads_cores"] = {k: round((v - self.thr0.get(k, 0.0)) / wall, 3)
                                                for k, v in sorted(thr1.items(), key=lambda kv: -kv[1])
                                                if v - self.thr0.get(k, 0.0) > 0.005 * wall}
        ours = out["server_cores"] + out["client_cores"] + sum(out[f"{k}_cores"] for k in self.others)
        out["other_jobs_cores"] = round(max(0.0, out["machine_busy_cores"] - ours), 3)
        return out


# ---------------------------------------------------------------- subprocesses


class Proc:
    """A subprocess in its own session (so its whole tree can be stopped), logs to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 cwd: Path | str = ROOT) -> None:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = SCRATCH / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen(argv, cwd=str(cwd), env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 15.0) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)  # the group of the session we started
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)
        # children that outlived the leader (same process group)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(proc: Proc, url: str, timeout: float = 180.0) -> float:
    """Poll ``url`` until 200; returns seconds waited. Raises if the process dies or time runs out."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.p.returncode}):\n{proc.tail()}")
        try:
            code, _ = http_get(url, 1.0)
            if code == 200:
                return time.perf_counter() - t0
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready after {timeout}s:\n{proc.tail()}")


# ---------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")]
        info["cpu_model"] = models[0] if models else platform.processor()
        flags = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
        info["cpu_flags_of_note"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile", "fma")
                                     if f" {f}" in flags]
    except OSError:
        info["cpu_model"] = platform.processor()
    info["cores"] = os.cpu_count()
    try:
        info["affinity_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        info["ram_gib"] = round(int(mem) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        osr = dict(ln.split("=", 1) for ln in Path("/etc/os-release").read_text().splitlines() if "=" in ln)
        info["os"] = osr.get("PRETTY_NAME", "").strip('"')
    except OSError:
        info["os"] = platform.platform()
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    # cgroup CPU quota, if any
    try:
        quota = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        info["cgroup_cpu_max"] = " ".join(quota)
    except OSError:
        pass
    return info


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def run_json(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    """Run a helper script that prints one JSON object as its last stdout line."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    r = subprocess.run(argv, cwd=str(ROOT), env=full_env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{argv[1] if len(argv) > 1 else argv[0]} failed ({r.returncode}):\n"
                           f"{r.stdout[-1500:]}\n{r.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
