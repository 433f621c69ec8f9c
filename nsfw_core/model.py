"""The nsfw_model networks, rebuilt with plain TensorFlow ops from ``model/``.

``model/<Name>/model.json`` holds a TF.js topology (a frozen graph for
MobileNetV2Mid, a Keras functional model for MobileNetV2 and InceptionV3) and a
table of uint8-quantised weights stored in ``weights.bin``
(see ``tools/convert_nsfwjs.py``).  Loading checks every file against the
sha256 in ``model/manifest.json``, dequantises (``q * scale + min``), folds
batch normalisation into the convolutions and traces one ``tf.function`` with
a variable batch dimension.

Public surface: :func:`get_model` (cached, one copy per process),
:func:`load_model` (uncached), :class:`Model` with ``preprocess`` /
``predict`` / ``classify``, and :func:`resize_bilinear`, the nsfwjs
preprocessing (``align_corners=True`` bilinear).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ModelError
from .settings import CLASS_NAMES, MODEL_NAMES

DEFAULT_MODEL = "MobileNetV2Mid"
FORMAT = "nsfw-core-model/1"

_tf: Any = None
_tf_lock = threading.Lock()


def configure_tensorflow(intra_op_threads: int = 0) -> Any:
    """Import TensorFlow once, quietly, with the given thread setting (0: its default)."""
    global _tf
    with _tf_lock:
        if _tf is None:
            import os

            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf

            if intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            _tf = tf
    return _tf


# ---------------------------------------------------------------- preprocessing


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, C) array to (size, size, C) float32, bilinear, align_corners=True.

    The same sampling as ``tf.image.resizeBilinear(img, [size, size], true)`` in
    TF.js (and TF's legacy ``align_corners``): output pixel i reads input
    coordinate ``i * (in - 1) / (size - 1)``.  Only the rows and columns that
    are sampled are converted to float, so a 12-megapixel input costs little.
    """
    h, w = image.shape[:2]
    ys, y0, y1 = _axis(h, size)
    xs, x0, x1 = _axis(w, size)
    top = image[y0].astype(np.float32)
    bottom = image[y1].astype(np.float32)
    rows = top + (bottom - top) * ys[:, None, None]
    left = rows[:, x0]
    right = rows[:, x1]
    return left + (right - left) * xs[None, :, None]


def _axis(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = (n - 1) / (size - 1) if size > 1 else 0.0
    coord = np.arange(size, dtype=np.float64) * scale
    lo = np.floor(coord).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    return (coord - lo).astype(np.float32), lo, hi


# ---------------------------------------------------------------- loading


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_verified(model_dir: Path, name: str) -> tuple[dict, bytes]:
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


def _dequantise(doc: dict, blob: bytes) -> dict[str, np.ndarray]:
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


# ---------------------------------------------------------------- graph models (TF.js graph-model format)


def _attr_str(attr: dict, key: str) -> str:
    return base64.b64decode(attr[key]["s"]).decode()


def _attr_ints(attr: dict, key: str) -> list[int]:
    return [int(i) for i in attr[key]["list"].get("i", [])]


def _fused_ops(attr: dict) -> list[str]:
    return [base64.b64decode(s).decode() for s in attr.get("fused_ops", {}).get("list", {}).get("s", [])]


def _build_graph(tf: Any, topology: dict, weights: dict[str, np.ndarray]) -> Callable:
    nodes = topology["node"]
    consts = {n["name"]: tf.constant(weights[n["name"]]) for n in nodes if n["op"] == "Const"}

    def activation(x: Any, ops: list[str], bias: Any) -> Any:
        for op in ops:
            if op == "BiasAdd":
                x = tf.nn.bias_add(x, bias)
            elif op == "Relu6":
                x = tf.nn.relu6(x)
            elif op == "Relu":
                x = tf.nn.relu(x)
            else:
                raise ModelError(f"unsupported fused op {op}")
        return x

    def forward(x: Any) -> Any:
        values: dict[str, Any] = dict(consts)
        for n in nodes:
            op, attr = n["op"], n.get("attr", {})
            ins = [values[i.split(":")[0]] for i in n.get("input", []) if not i.startswith("^")]
            if op == "Const":
                continue
            if op == "Placeholder":
                out = x
            elif op in ("Mul", "Sub", "AddV2"):
                out = {"Mul": tf.multiply, "Sub": tf.subtract, "AddV2": tf.add}[op](ins[0], ins[1])
            elif op == "_FusedConv2D":
                out = tf.nn.conv2d(ins[0], ins[1], strides=_attr_ints(attr, "strides"),
                                   padding=_attr_str(attr, "padding"), dilations=_attr_ints(attr, "dilations"))
                out = activation(out, _fused_ops(attr), ins[2] if len(ins) > 2 else None)
            elif op == "FusedDepthwiseConv2dNative":
                out = tf.nn.depthwise_conv2d(ins[0], ins[1], strides=_attr_ints(attr, "strides"),
                                             padding=_attr_str(attr, "padding"),
                                             dilations=_attr_ints(attr, "dilations")[1:3])
                out = activation(out, _fused_ops(attr), ins[2] if len(ins) > 2 else None)
            elif op == "AvgPool":
                out = tf.nn.avg_pool2d(ins[0], ksize=_attr_ints(attr, "ksize"), strides=_attr_ints(attr, "strides"),
                                       padding=_attr_str(attr, "padding"))
            elif op == "Squeeze":
                out = tf.squeeze(ins[0], axis=_attr_ints(attr, "squeeze_dims"))
            elif op == "_FusedMatMul":
                out = tf.matmul(ins[0], ins[1], transpose_a=attr.get("transpose_a", {}).get("b", False),
                                transpose_b=attr.get("transpose_b", {}).get("b", False))
                out = activation(out, _fused_ops(attr), ins[2] if len(ins) > 2 else None)
            elif op == "Softmax":
                out = tf.nn.softmax(ins[0])
            elif op == "Identity":
                out = ins[0]
            else:
                raise ModelError(f"unsupported graph op {op} in node {n['name']}")
            values[n["name"]] = out
        return values["Identity"]

    return forward


# ---------------------------------------------------------------- layers models (Keras functional config)


def _fold_batchnorm(layers: list[dict], weights: dict[str, np.ndarray]) -> dict[str, dict]:
    """Fold each BatchNormalization that is the sole consumer of a bias-free conv into it.

    Returns {conv name: {"kernel", "bias", "bn": bn name}}; those BN layers become identities.
    """
    consumers: dict[str, list[str]] = {}
    for layer in layers:
        for node in layer["inbound_nodes"]:
            for inbound in node:
                consumers.setdefault(inbound[0], []).append(layer["name"])
    by_name = {layer["name"]: layer for layer in layers}
    folded: dict[str, dict] = {}
    for layer in layers:
        kind = layer["class_name"]
        if kind not in ("Conv2D", "DepthwiseConv2D") or layer["config"].get("activation", "linear") != "linear":
            continue
        users = consumers.get(layer["name"], [])
        if len(users) != 1 or by_name[users[0]]["class_name"] != "BatchNormalization":
            continue
        bn = by_name[users[0]]
        name, cfg = bn["name"], bn["config"]
        mean, var = weights[f"{name}/moving_mean"], weights[f"{name}/moving_variance"]
        gamma = weights[f"{name}/gamma"] if cfg.get("scale", True) else np.ones_like(mean)
        beta = weights[f"{name}/beta"] if cfg.get("center", True) else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + np.float32(cfg["epsilon"]))
        if kind == "Conv2D":
            kernel = weights[f"{layer['name']}/kernel"] * scale
        else:  # depthwise kernel: (kh, kw, channels, multiplier=1)
            kernel = weights[f"{layer['name']}/depthwise_kernel"] * scale[None, None, :, None]
        bias = weights.get(f"{layer['name']}/bias", np.zeros_like(mean))
        folded[layer["name"]] = {"kernel": kernel, "bias": (bias - mean) * scale + beta, "bn": name}
    return folded


def _apply_activation(tf: Any, x: Any, name: str) -> Any:
    if name in ("linear", None):
        return x
    if name == "relu":
        return tf.nn.relu(x)
    if name == "softmax":
        return tf.nn.softmax(x)
    raise ModelError(f"unsupported activation {name}")


def _build_layers(tf: Any, topology: dict, weights: dict[str, np.ndarray]) -> Callable:
    config = topology["model_config"]["config"]
    layers = config["layers"]
    folded = _fold_batchnorm(layers, weights)
    bn_folded = {v["bn"] for v in folded.values()}
    const = {k: tf.constant(v) for k, v in weights.items()}
    fconst = {k: {"kernel": tf.constant(v["kernel"]), "bias": tf.constant(v["bias"])} for k, v in folded.items()}
    output_name = config["output_layers"][0][0]

    def pad_mode(cfg: dict) -> str:
        return cfg["padding"].upper()

    def bias_and_activation(out: Any, name: str, cfg: dict) -> Any:
        """A convolution's bias (folded batch norm's, else its own) and activation."""
        if name in fconst:
            out = tf.nn.bias_add(out, fconst[name]["bias"])
        elif cfg["use_bias"]:
            out = tf.nn.bias_add(out, const[f"{name}/bias"])
        return _apply_activation(tf, out, cfg["activation"])

    def forward(x: Any) -> Any:
        values: dict[str, Any] = {}
        for layer in layers:
            kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
            ins = [values[i[0]] for node in layer["inbound_nodes"] for i in node]
            if kind == "InputLayer":
                out = x
            elif kind == "ZeroPadding2D":
                (t, b), (lft, r) = cfg["padding"]
                out = tf.pad(ins[0], [[0, 0], [t, b], [lft, r], [0, 0]])
            elif kind == "Conv2D":
                kernel = fconst[name]["kernel"] if name in fconst else const[f"{name}/kernel"]
                out = tf.nn.conv2d(ins[0], kernel, strides=cfg["strides"], padding=pad_mode(cfg),
                                   dilations=cfg["dilation_rate"])
                out = bias_and_activation(out, name, cfg)
            elif kind == "DepthwiseConv2D":
                kernel = fconst[name]["kernel"] if name in fconst else const[f"{name}/depthwise_kernel"]
                out = tf.nn.depthwise_conv2d(ins[0], kernel, strides=[1, *cfg["strides"], 1],
                                             padding=pad_mode(cfg), dilations=cfg["dilation_rate"])
                out = bias_and_activation(out, name, cfg)
            elif kind == "BatchNormalization":
                if name in bn_folded:
                    out = ins[0]
                else:
                    mean, var = const[f"{name}/moving_mean"], const[f"{name}/moving_variance"]
                    gamma = const[f"{name}/gamma"] if cfg.get("scale", True) else None
                    beta = const[f"{name}/beta"] if cfg.get("center", True) else None
                    out = tf.nn.batch_normalization(ins[0], mean, var, beta, gamma, cfg["epsilon"])
            elif kind == "ReLU":
                out = tf.nn.relu(ins[0])
                if cfg.get("max_value") is not None:
                    out = tf.minimum(out, float(cfg["max_value"]))
            elif kind == "Activation":
                out = _apply_activation(tf, ins[0], cfg["activation"])
            elif kind == "Add":
                out = tf.add_n(ins)
            elif kind == "Concatenate":
                out = tf.concat(ins, axis=cfg["axis"])
            elif kind == "MaxPooling2D":
                out = tf.nn.max_pool2d(ins[0], cfg["pool_size"], cfg["strides"], pad_mode(cfg))
            elif kind == "AveragePooling2D":
                out = tf.nn.avg_pool2d(ins[0], cfg["pool_size"], cfg["strides"], pad_mode(cfg))
            elif kind == "Flatten":
                out = tf.reshape(ins[0], [tf.shape(ins[0])[0], -1])
            elif kind == "Dense":
                out = tf.matmul(ins[0], const[f"{name}/kernel"])
                if cfg["use_bias"]:
                    out = tf.nn.bias_add(out, const[f"{name}/bias"])
                out = _apply_activation(tf, out, cfg["activation"])
            elif kind == "Dropout":
                out = ins[0]
            else:
                raise ModelError(f"unsupported layer {kind} ({name})")
            values[name] = out
        return values[output_name]

    return forward


# ---------------------------------------------------------------- the model


class Model:
    """One loaded network. Thread-safe: ``predict`` may be called from any thread."""

    classes: tuple[str, ...] = CLASS_NAMES

    def __init__(self, name: str, input_size: int, version: str, forward: Callable, tf: Any) -> None:
        self.name = name
        self.input_size = input_size
        self.version = version
        self._tf = tf
        spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32)
        self._fn = tf.function(forward, input_signature=[spec], jit_compile=False)
        self.load_seconds = 0.0

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (S, S, 3) float32 in [0, 1], as nsfwjs prepares its input."""
        out = resize_bilinear(rgb, self.input_size)
        out *= np.float32(1.0 / 255.0)
        return out

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 -> (N, 5) class probabilities, one forward pass."""
        if batch.ndim != 4 or batch.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"batch must be (N, {self.input_size}, {self.input_size}, 3), got {batch.shape}")
        if batch.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self._fn(self._tf.convert_to_tensor(batch, dtype=self._tf.float32)).numpy()

    def classify(self, images: Sequence[np.ndarray]) -> list[dict[str, float]]:
        """Decoded RGB images -> one {class: probability} dict each, in one forward pass."""
        if not images:
            return []
        batch = np.stack([self.preprocess(im) for im in images])
        return [scores_dict(row) for row in self.predict(batch)]

    def warm_up(self) -> None:
        """Run one inference so the first request does not pay for tracing; checks the output."""
        probs = self.predict(np.zeros((1, self.input_size, self.input_size, 3), dtype=np.float32))
        if probs.shape != (1, len(self.classes)) or not np.isfinite(probs).all() or abs(float(probs.sum()) - 1) > 1e-3:
            raise ModelError(f"model {self.name} failed its warm-up inference: {probs}")

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "input_size": self.input_size}


def scores_dict(row: Sequence[float]) -> dict[str, float]:
    return {name: float(p) for name, p in zip(CLASS_NAMES, row)}


def load_model(name: str = DEFAULT_MODEL, model_dir: str | Path = "model", *, tf_threads: int = 0) -> Model:
    """Load, verify and warm up one model (uncached; use :func:`get_model` in the service)."""
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    start = time.perf_counter()
    model_dir = Path(model_dir)
    doc, blob = _read_verified(model_dir, name)
    weights = _dequantise(doc, blob)
    tf = configure_tensorflow(tf_threads)
    try:
        builder = _build_graph if doc["kind"] == "graph" else _build_layers
        forward = builder(tf, doc["topology"], weights)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelError(f"model {name} topology is inconsistent: {exc!r}") from exc
    version = f"{doc['source'].split()[0]}+{hashlib.sha256(blob).hexdigest()[:12]}"
    model = Model(name, int(doc["input_size"]), version, forward, tf)
    try:
        model.warm_up()
    except ModelError:
        raise
    except Exception as exc:  # TensorFlow raises many types for a broken graph
        raise ModelError(f"model {name} failed to run: {exc}") from exc
    model.load_seconds = time.perf_counter() - start
    return model


_cache: dict[tuple[str, str], Model] = {}
_cache_lock = threading.Lock()


def get_model(name: str = DEFAULT_MODEL, model_dir: str | Path = "model", *, tf_threads: int = 0) -> Model:
    """The process-wide copy of a model, loaded on first use (shared by the API and the UI)."""
    key = (name, str(Path(model_dir).resolve()))
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _cache[key] = load_model(name, model_dir, tf_threads=tf_threads)
        return model
