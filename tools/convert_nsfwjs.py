#!/usr/bin/env python3
"""Convert the three models shipped in the npm package nsfwjs@4.4.0 into ``model/``.

Usage::

    python tools/convert_nsfwjs.py                 # runs `npm pack nsfwjs@4.4.0` itself
    python tools/convert_nsfwjs.py --tarball nsfwjs-4.4.0.tgz --out model

Needs Node.js at conversion time only (the package's model files are JS modules
that ``require`` evaluates); the service loads the result with numpy and
TensorFlow alone.  For each model it writes

* ``model/<Name>/model.json``: the TF.js topology (graph or Keras layers), the
  weight table (name, shape, offset, uint8 quantisation min and scale) and the
  input size, written with sorted keys so that reruns are byte-identical;
* ``model/<Name>/weights.bin``: the uint8 weights, concatenated in table order
  (exactly the bytes of the package's shards);

and ``model/manifest.json`` with the source package, its integrity hash, and the
sha256 of every file.  The tarball is checked against the pinned integrity
before anything is read from it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = "nsfwjs"
VERSION = "4.4.0"
INTEGRITY = "sha512-krC1fgeTLXtZwgdpKJ0jm7hqv0gTSRQQRL+FhOaxaJ9Wj92t42BO3csO2odwgTAgZgf2RvkwPtp0R8Aa7dc+MA=="
FORMAT = "nsfw-core-model/1"
CLASSES = ["drawings", "hentai", "neutral", "porn", "sexy"]

# name in this project -> (folder in the package, input size, kind of topology)
MODELS = {
    "MobileNetV2Mid": ("mobilenet_v2_mid", 224, "graph"),
    "MobileNetV2": ("mobilenet_v2", 224, "layers"),
    "InceptionV3": ("inception_v3", 299, "layers"),
}

NODE_DUMP = r"""
const path = require("path");
const dir = process.argv[1];
const model = require(path.join(dir, "model.min.js"));
const shards = {};
for (const group of model.weightsManifest) {
  for (const p of group.paths) {
    shards[p] = require(path.join(dir, p + ".min.js"));
  }
}
process.stdout.write(JSON.stringify({ model, shards }));
"""

LICENSE_TEXT = """\
The model files in this folder were converted from the npm package nsfwjs@4.4.0.

nsfwjs - MIT License - Copyright (c) 2019 Infinite Red, Inc.
Models trained by GantMan/nsfw_model - MIT License - Copyright (c) 2019 Gant Laborde.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npm_pack(workdir: Path) -> Path:
    out = subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"],
        cwd=workdir, check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    return workdir / out


def extract_models(tarball: Path, dest: Path) -> None:
    """Extract only the package's dist/models/ files, refusing odd member names."""
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not name.startswith("package/dist/models/") or not member.isfile():
                continue
            if ".." in Path(name).parts:
                raise SystemExit(f"refusing tar member {name!r}")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            target.write_bytes(src.read())


def dump_with_node(model_dir: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    raw = subprocess.run(
        ["node", "-e", NODE_DUMP, str(model_dir)], check=True, capture_output=True,
    ).stdout
    dumped = json.loads(raw)
    shards = {k: base64.b64decode(v) for k, v in dumped["shards"].items()}
    return dumped["model"], shards


def weight_table(manifest: list[dict[str, Any]], shards: dict[str, bytes]) -> tuple[list[dict[str, Any]], bytes]:
    """Flatten the TF.js weights manifest into one table and one blob of uint8 bytes."""
    table: list[dict[str, Any]] = []
    blob = io.BytesIO()
    for group in manifest:
        data = b"".join(shards[p] for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            q = w.get("quantization")
            if w["dtype"] != "float32" or not q or q.get("dtype") != "uint8":
                raise SystemExit(f"unexpected weight encoding for {w['name']}: {w}")
            size = math.prod(w["shape"])
            table.append({
                "name": w["name"], "shape": w["shape"], "offset": blob.tell(),
                "min": q["min"], "scale": q["scale"],
            })
            blob.write(data[offset:offset + size])
            offset += size
        if offset != len(data):
            raise SystemExit(f"shard bytes ({len(data)}) do not match the manifest ({offset})")
    return table, blob.getvalue()


def dumps(obj: object) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()


def convert(tarball: Path, out: Path) -> dict[str, Any]:
    data = tarball.read_bytes()
    got = integrity_of(data)
    if got != INTEGRITY:
        raise SystemExit(f"{tarball}: integrity {got} does not match the pinned {INTEGRITY}")
    files: dict[str, bytes] = {"LICENSE": LICENSE_TEXT.encode()}
    models_info: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        extract_models(tarball, Path(tmp))
        for name, (folder, size, kind) in MODELS.items():
            js_model, shards = dump_with_node(Path(tmp) / "package/dist/models" / folder)
            table, blob = weight_table(js_model["weightsManifest"], shards)
            doc = {
                "format": FORMAT, "name": name, "kind": kind, "input_size": size,
                "classes": CLASSES, "source": f"{PACKAGE}@{VERSION} dist/models/{folder}",
                "topology": js_model["modelTopology"], "weights": table,
            }
            files[f"{name}/model.json"] = dumps(doc)
            files[f"{name}/weights.bin"] = blob
            models_info[name] = {"kind": kind, "input_size": size, "weights": len(table)}
    manifest = {
        "format": FORMAT,
        "source": {"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY,
                   "licence": "MIT (nsfwjs: Infinite Red, Inc.; models: Gant Laborde / GantMan nsfw_model)"},
        "default": "MobileNetV2Mid",
        "models": models_info,
        "files": {path: sha256_of(content) for path, content in sorted(files.items())},
    }
    files["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    for path, content in files.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = target.with_suffix(target.suffix + ".tmp")
        tmp_path.write_bytes(content)
        tmp_path.replace(target)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path, help="nsfwjs-4.4.0.tgz (default: run npm pack)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "model")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball or npm_pack(Path(tmp))
        if shutil.which("node") is None:
            raise SystemExit("node is needed to read the package's model files")
        manifest = convert(tarball, args.out)
    for path, digest in manifest["files"].items():
        print(f"{digest}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
