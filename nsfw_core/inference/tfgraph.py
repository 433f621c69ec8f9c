"""The ``tensorflow`` runtime: the nsfw_model networks as TensorFlow functions, rebuilt from their TF.js topology.

``model/<Name>/model.json`` holds a TF.js topology: a frozen graph for
MobileNetV2Mid, a Keras functional model for MobileNetV2 and InceptionV3.
:func:`build_function` turns one, with its dequantised weights, into a traced
``tf.function`` with a variable batch dimension (batch normalisation folded
into the convolutions).

Embeddings: each network ends in a global average pool over its last feature map, flattened, then its
classification head (one dense layer for MobileNetV2Mid; 256, 128 and 5 units for MobileNetV2 and
InceptionV3).  The pooled vector the head reads (1792, 1280 and 2048 values) is the image's *embedding*:
``build_function(..., embeddings=True)`` returns it beside the probabilities, from the same pass
(:func:`embedding_source` names where it is taken).  It is what adapters and example sets read
(:mod:`nsfw_core.inference.embeddings`).  :class:`TensorFlowForward` runs it as the
``tensorflow`` runtime; :mod:`nsfw_core.inference.litert` converts it for the ``litert``
runtime.  TensorFlow is imported only by :func:`configure_tensorflow`, when
called: importing this module never loads it, so a server on LiteRT never does.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any, Callable

import numpy as np

from nsfw_core.base.cpus import available_cpus
from nsfw_core.base.errors import ModelError

_tf: Any = None
_tf_lock = threading.Lock()


def configure_tensorflow(intra_op_threads: int = 0) -> Any:
    """Import TensorFlow once, quietly, with the given thread setting (0: its default)."""
    global _tf
    with _tf_lock:
        if _tf is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            # Imported here, not at the top: the server imports this module (nsfw_core.inference.model and
            # nsfw_core.inference.litert do) and must never load TensorFlow when it runs on LiteRT.
            import tensorflow as tf

            if intra_op_threads:
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
                except RuntimeError:  # TensorFlow already ran something in this process: keep its setting
                    pass
            _tf = tf
    return _tf


# ---------------------------------------------------------------- graph models (TF.js graph-model format)


def _attr_str(attr: dict[str, Any], key: str) -> str:
    return base64.b64decode(attr[key]["s"]).decode()


def _attr_ints(attr: dict[str, Any], key: str) -> list[int]:
    return [int(i) for i in attr[key]["list"].get("i", [])]


def _fused_ops(attr: dict[str, Any]) -> list[str]:
    return [base64.b64decode(s).decode() for s in attr.get("fused_ops", {}).get("list", {}).get("s", [])]


def _build_graph(tf: Any, topology: dict[str, Any], weights: dict[str, np.ndarray]) -> Callable[..., Any]:
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

    features = embedding_source(topology, "graph")

    def forward(x: Any) -> tuple[Any, Any]:
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
        return values["Identity"], values[features]

    return forward


# ---------------------------------------------------------------- layers models (Keras functional config)


def _fold_batchnorm(layers: list[dict[str, Any]], weights: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Fold each BatchNormalization that is the sole consumer of a bias-free conv into it.

    Returns {conv name: {"kernel", "bias", "bn": bn name}}; those BN layers become identities.
    """
    consumers: dict[str, list[str]] = {}
    for layer in layers:
        for node in layer["inbound_nodes"]:
            for inbound in node:
                consumers.setdefault(inbound[0], []).append(layer["name"])
    by_name = {layer["name"]: layer for layer in layers}
    folded: dict[str, dict[str, Any]] = {}
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


def _build_layers(tf: Any, topology: dict[str, Any], weights: dict[str, np.ndarray]) -> Callable[..., Any]:
    config = topology["model_config"]["config"]
    layers = config["layers"]
    folded = _fold_batchnorm(layers, weights)
    bn_folded = {v["bn"] for v in folded.values()}
    const = {k: tf.constant(v) for k, v in weights.items()}
    fconst = {k: {"kernel": tf.constant(v["kernel"]), "bias": tf.constant(v["bias"])} for k, v in folded.items()}
    output_name = config["output_layers"][0][0]
    features = embedding_source(topology, "layers")

    def pad_mode(cfg: dict[str, Any]) -> str:
        return str(cfg["padding"]).upper()

    def bias_and_activation(out: Any, name: str, cfg: dict[str, Any]) -> Any:
        """A convolution's bias (folded batch norm's, else its own) and activation."""
        if name in fconst:
            out = tf.nn.bias_add(out, fconst[name]["bias"])
        elif cfg["use_bias"]:
            out = tf.nn.bias_add(out, const[f"{name}/bias"])
        return _apply_activation(tf, out, cfg["activation"])

    def forward(x: Any) -> tuple[Any, Any]:
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
            elif kind == "Flatten":  # static inner size: the compiled model's embedding output has a fixed shape
                inner = ins[0].shape[1:]
                width = int(np.prod(inner)) if inner.is_fully_defined() else -1
                out = tf.reshape(ins[0], [tf.shape(ins[0])[0], width])
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
        return values[output_name], values[features]

    return forward


def embedding_source(topology: dict[str, Any], kind: str) -> str:
    """The node (graph) or layer (layers) whose output is the embedding: the first dense layer's input.

    The first dense layer of the head reads the flattened global average pool (MobileNetV2Mid's
    ``feature_vector/SpatialSqueeze``, the others' ``flatten_1``); that vector is the embedding.
    """
    if kind == "graph":
        for node in topology["node"]:
            if node["op"] == "_FusedMatMul":
                return str(node["input"][0].split(":")[0])
        raise ModelError("the graph has no dense layer to take the embedding from")
    for layer in topology["model_config"]["config"]["layers"]:
        if layer["class_name"] == "Dense":
            return str(layer["inbound_nodes"][0][0][0])
    raise ModelError("the model has no dense layer to take the embedding from")


def build_function(doc: dict[str, Any], weights: dict[str, np.ndarray], *, threads: int = 0,
                   embeddings: bool = False) -> Any:
    """The model's forward pass as a traced ``tf.function``: (N, S, S, 3) float32 -> (N, 5), or with
    ``embeddings`` the pair ((N, 5) probabilities, (N, D) embeddings) from the same pass."""
    tf = configure_tensorflow(threads)
    try:
        builder = _build_graph if doc["kind"] == "graph" else _build_layers
        forward = builder(tf, doc["topology"], weights)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelError(f"model topology is inconsistent: {exc!r}") from exc
    size = int(doc["input_size"])
    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    if embeddings:
        return tf.function(forward, input_signature=[spec], jit_compile=False)
    return tf.function(lambda x: forward(x)[0], input_signature=[spec], jit_compile=False)


class TensorFlowForward:
    """The ``tensorflow`` runtime's forward pass: :func:`build_function`'s result, numpy in and out. Thread-safe.

    ``threads``: threads of one forward pass (0: :func:`~nsfw_core.base.cpus.available_cpus`).
    """

    runtime = "tensorflow"
    batches = True  # one forward pass over N images costs less per image than N passes
    lanes = 0

    def __init__(self, doc: dict[str, Any], weights: dict[str, np.ndarray], *, threads: int = 0) -> None:
        self.threads = threads or available_cpus()
        self.function = build_function(doc, weights, threads=self.threads, embeddings=True)
        self._tf = configure_tensorflow()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.with_embeddings(batch)[0]

    def with_embeddings(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) float32 -> ((N, classes) probabilities, (N, D) embeddings), one pass."""
        probs, features = self.function(self._tf.convert_to_tensor(batch, dtype=self._tf.float32))
        return np.asarray(probs.numpy(), dtype=np.float32), np.asarray(features.numpy(), dtype=np.float32)
