"""The converter reproduces the committed model/ folder from the pinned npm package."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers.paths import ROOT

needs_node = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="the converter needs node and npm")


@needs_node
def test_converter_reproduces_committed_artifacts(tmp_path):
    out = tmp_path / "model"
    subprocess.run([sys.executable, str(ROOT / "tools" / "convert_nsfwjs.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    committed = json.loads((ROOT / "model" / "manifest.json").read_text())
    produced = json.loads((out / "manifest.json").read_text())
    assert produced == committed
    for rel, digest in committed["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
    assert (out / "manifest.json").read_bytes() == (ROOT / "model" / "manifest.json").read_bytes()


def test_converter_refuses_a_tarball_with_the_wrong_integrity(tmp_path):
    fake = tmp_path / "nsfwjs-4.4.0.tgz"
    fake.write_bytes(b"not the package")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_nsfwjs.py"), "--tarball", str(fake),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "does not match the pinned" in proc.stderr
    assert not (tmp_path / "out").exists()
