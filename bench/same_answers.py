"""Do two revisions answer the same? ``python bench/same_answers.py BASE [HEAD]``.

Starts ``app.py`` of each revision (a git worktree for BASE; HEAD defaults to this checkout)
on its own port and data folder, sends every reference image and a set of bad inputs to
both, and compares the answers: the plain scores, the detailed answer without its timings,
the batch answer, and every error's status and body.  Prints one line per difference and a
summary; exit status 1 when anything differs.  A structure change must give no difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from common import ROOT, log
from worktree import prepare, start_server, worktree

REFERENCE = ROOT / "tests" / "fixtures" / "reference"
BAD_INPUTS: list[tuple[str, str, bytes, str]] = [
    # (name, query, body, content type)
    ("not-an-image", "", b"hello, world", "application/octet-stream"),
    ("truncated-jpeg", "", (REFERENCE / "house.jpg").read_bytes()[:5000], "image/jpeg"),
    ("empty-body", "", b"", "application/octet-stream"),
    ("both-url-and-body", "url=http://example.com/a.jpg", b"x", "application/octet-stream"),
    ("file-url", "url=file:///etc/passwd", b"", ""),
    ("loopback-url", "url=http://127.0.0.1:1/x.jpg", b"", ""),
    ("bad-detail", "detail=maybe", b"x", "application/octet-stream"),
]


def call(port: int, method: str, path: str, body: bytes = b"", ctype: str = "") -> tuple[int, Any]:
    # the same X-Request-ID to both sides: error bodies echo it, and a random one would differ every time
    headers = {"X-Request-ID": "same-answers", **({"Content-Type": ctype} if ctype else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body if method == "POST" else None,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def strip_timings(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: strip_timings(v) for k, v in doc.items() if k != "timings"}
    if isinstance(doc, (list, tuple)):
        return [strip_timings(v) for v in doc]
    return doc


def answers(port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(REFERENCE.glob("*.jpg")):
        data = path.read_bytes()
        out[f"plain {path.name}"] = call(port, "POST", "/predict", data, "image/jpeg")
        out[f"detail {path.name}"] = strip_timings(call(port, "POST", "/predict?detail=1", data, "image/jpeg"))
    for name, query, body, ctype in BAD_INPUTS:
        out[f"error {name}"] = call(port, "POST", f"/predict?{query}", body, ctype)
    batch = json.dumps({"items": [{"id": 1, "url": "ftp://example.com/x.jpg"}, {"id": "b", "url": ""}]}).encode()
    out["batch bad item"] = call(port, "POST", "/predict/batch", batch, "application/json")
    batch = json.dumps(["http://127.0.0.1:1/a.jpg", "file:///etc/passwd"]).encode()
    out["batch per-item errors"] = call(port, "POST", "/predict/batch", batch, "application/json")
    out["wrong method"] = call(port, "GET", "/predict")
    out["unknown path"] = call(port, "GET", "/v1/nothing")
    health = call(port, "GET", "/health")
    out["health keys"] = (health[0], sorted(health[1]))
    return out


def diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two JSON documents differ, as 'path: a != b' lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in {'base' if k in a else 'head'}" for k in sorted(set(a) ^ set(b))]
        for k in a.keys() & b.keys():
            out += diff(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b, strict=True)) for line in diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}"]


def run(name: str, tree: Path, data_dir: Path) -> dict[str, Any]:
    prepare(tree, name)
    proc, port, sampler, _ = start_server(name, tree, data_dir)
    try:
        return answers(port)
    finally:
        sampler.stop()
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("head", nargs="?", default=None, help="a revision (default: this checkout as it is)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, worktree(a.base) as (base_tree, base_rev):
        base = run(f"base-{base_rev[:7]}", base_tree, Path(tmp) / "base")
        if a.head is None:
            head = run("head", ROOT, Path(tmp) / "head")
        else:
            with worktree(a.head) as (head_tree, head_rev):
                head = run(f"head-{head_rev[:7]}", head_tree, Path(tmp) / "head")
    differ = [k for k in base if base[k] != head.get(k)]
    for k in differ:
        print(f"DIFFERENT {k}: {'; '.join(diff(base[k], head.get(k)))}")
    log(f"{len(base)} answers compared, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
