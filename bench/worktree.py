"""Another version of the code beside this checkout, for side-by-side runs (bench/ab_code.py, bench/hostile_latency.py).

:func:`worktree` checks a revision out with ``git worktree add --detach`` into a
temporary folder and removes it again (also on error or Ctrl-C).  :func:`start_server`
runs ``<tree>/app.py`` with this checkout's ``.venv`` Python and ``cwd=<tree>``, so the
tree's ``nsfw_core`` is the one imported (the script's folder comes first on
``sys.path``), with a private ``NSFW_DATA_DIR`` and the shared ``NSFW_COMPILED_DIR``
(this checkout's ``var/compiled``): no side compiles the model while being measured.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from common import PROJECT_PY, ROOT, Proc, TreeSampler, free_port, log, wait_ready

COMPILED_DIR = ROOT / "var" / "compiled"


def _git(*args: str, cwd: Path = ROOT, tries: int = 20) -> str:
    """Run git; retries while another process holds a lock (other people work in this checkout)."""
    for i in range(tries):
        r = subprocess.run(["git", *args], cwd=str(cwd), capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.strip()
        if ".lock" not in r.stderr or i == tries - 1:
            raise RuntimeError(f"git {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        time.sleep(0.5)
    raise AssertionError("unreachable")


def describe_checkout(tree: Path = ROOT) -> str:
    """Short commit of ``tree``, with '+uncommitted changes' when tracked files differ from it."""
    rev = _git("rev-parse", "--short", "HEAD", cwd=tree)
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=tree)
    return rev + ("+uncommitted changes" if dirty else "")


def resolve(rev: str) -> str:
    """Full commit id of ``rev`` (raises for an unknown revision)."""
    return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so ``finally`` blocks (servers, worktrees) still run."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """A detached worktree of ``rev`` under a temporary folder: (path, full commit); removed on exit."""
    sha = resolve(rev)
    tmp = Path(tempfile.mkdtemp(prefix="nsfw-bench-"))
    path = tmp / f"tree-{sha[:10]}"
    try:
        _git("worktree", "add", "--detach", str(path), sha)
        log(f"worktree of {rev} ({sha[:10]}) at {path}")
        yield path, sha
    finally:
        try:
            _git("worktree", "remove", "--force", str(path))
        except RuntimeError as exc:
            log(f"warning: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(RuntimeError):
            _git("worktree", "prune")
        log(f"worktree {path} removed")


def imported_from(tree: Path) -> str:
    """Where ``nsfw_core`` comes from when ``<tree>/app.py`` runs with the project's Python (a check)."""
    r = subprocess.run([str(PROJECT_PY), "-c", "import nsfw_core, os; print(os.path.dirname(nsfw_core.__file__))"],
                       cwd=str(tree), capture_output=True, text=True, check=True)
    return r.stdout.strip()


def prepare(tree: Path, name: str) -> None:
    """``python -m nsfw_core.inference.litert`` in ``tree`` into the shared compiled dir (instant when already there)."""
    COMPILED_DIR.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = Proc(f"{name}-compile", [str(PROJECT_PY), "-m", "nsfw_core.inference.litert"], cwd=tree,
                env={"NSFW_COMPILED_DIR": str(COMPILED_DIR)})
    rc = proc.p.wait(timeout=900)
    tail = proc.tail(300).strip().splitlines()
    proc.stop()
    if rc != 0:
        raise RuntimeError(f"{name}: python -m nsfw_core.inference.litert failed ({rc}): {tail}")
    log(f"{name}: model ready in {COMPILED_DIR} ({time.perf_counter() - t0:.1f} s; {tail[-1] if tail else ''})")


def start_server(name: str, tree: Path, data_dir: Path, env: dict[str, str] | None = None,
                 ready_timeout: float = 240.0) -> tuple[Proc, int, TreeSampler, float]:
    """``python <tree>/app.py`` on a free loopback port: (process, port, RSS sampler, seconds to ready)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = {"PORT": str(port), "NSFW_HOST": "127.0.0.1", "NSFW_DATA_DIR": str(data_dir),
                "NSFW_COMPILED_DIR": str(COMPILED_DIR), "PYTHONUNBUFFERED": "1", **(env or {})}
    t0 = time.perf_counter()
    proc = Proc(name, [str(PROJECT_PY), str(tree / "app.py")], env=full_env, cwd=tree)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health", timeout=ready_timeout)
    except BaseException:
        sampler.stop()
        proc.stop()
        raise
    return proc, port, sampler, time.perf_counter() - t0


def kill_now(proc: Proc) -> None:
    """SIGKILL the server's whole process group at once (a memory guard tripped)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
