"""The converted model files: reading them, checking them, and turning their weights back into floats.

``model/<Name>/model.json`` holds a TF.js topology and a table of uint8-quantised
weights stored in ``weights.bin`` (see ``tools/convert_nsfwjs.py``).
:func:`read_verified` checks both files against the sha256 in ``model/manifest.json``
before it returns them; :func:`dequantise` turns the weights back into float32
(``q * scale + min``); :func:`version` names the exact bytes read.  Any runtime starts
from these; nothing here runs a network.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from nsfw_core.base.errors import ModelError
from nsfw_core.base.settings import MODEL_NAMES

FORMAT = "nsfw-core-model/1"


def check_name(name: str) -> None:
    """Raise :class:`ModelError` unless ``name`` is one of :data:`~nsfw_core.base.settings.MODEL_NAMES`."""
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def read_verified(model_dir: Path, name: str) -> tuple[dict[str, Any], bytes]:
    """``name``'s model.json (parsed) and weights.bin, both checked against the manifest's sha256."""
    manifest_path = model_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"]
    except FileNotFoundError as exc:
        raise ModelError(f"model manifest not found: {manifest_path}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model manifest unreadable: {manifest_path}: {exc}") from exc
    for rel in (f"{name}/model.json", f"{name}/weights.bin"):
        path = model_dir / rel
        if rel not in expected:
            raise ModelError(f"{rel} is not listed in {manifest_path}")
        try:
            digest = _sha256(path)
        except OSError as exc:
            raise ModelError(f"model file missing or unreadable: {path}: {exc.strerror or exc}") from exc
        if digest != expected[rel]:
            raise ModelError(f"model file corrupt (sha256 mismatch): {path}")
    try:
        doc = json.loads((model_dir / name / "model.json").read_text())
        blob = (model_dir / name / "weights.bin").read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model {name}: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise ModelError(f"{name}/model.json has format {doc.get('format')!r}, expected {FORMAT!r}")
    return doc, blob


def version(doc: dict[str, Any], blob: bytes) -> str:
    """The model's version: its source package, then the first 12 hex digits of its weights' sha256."""
    return f"{doc['source'].split()[0]}+{hashlib.sha256(blob).hexdigest()[:12]}"


def dequantise(doc: dict[str, Any], blob: bytes) -> dict[str, np.ndarray]:
    """The weights as float32 arrays, by name: ``q * scale + min`` for each entry of the table."""
    raw = np.frombuffer(blob, dtype=np.uint8)
    weights: dict[str, np.ndarray] = {}
    for w in doc["weights"]:
        shape = tuple(w["shape"])
        n = int(np.prod(shape)) if shape else 1
        q = raw[w["offset"]:w["offset"] + n]
        if q.size != n:
            raise ModelError(f"weights.bin too short for {w['name']}")
        weights[w["name"]] = (q.astype(np.float32) * np.float32(w["scale"]) + np.float32(w["min"])).reshape(shape)
    return weights


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
