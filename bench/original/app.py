"""The original stack, re-created for the benchmark: Flask under gunicorn, one image per request.

What the service replaced did, per request: download the URL with ``requests``
to a temporary file, ``keras.utils.load_img(path, target_size=(224, 224))``,
``img_to_array / 255``, ``model.predict`` on a batch of one, delete the file,
answer the five scores.  The network is this project's converted
MobileNetV2Mid (same weights as the service), wrapped in a ``keras.Model`` so
the per-request ``model.predict`` overhead of Keras is what it was.

Run: ``PYTHONPATH=<repo> gunicorn -w 2 app:app`` (from this folder), with the
venv ``bench/.venvs/original`` (flask, gunicorn, requests, tensorflow-cpu).
``BENCH_READY_DIR``: each worker writes ``<pid>`` there once its model is loaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import requests  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402

from nsfw_core.model import get_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["drawings", "hentai", "neutral", "porn", "sexy"]


class NSFWModel(keras.Model):
    """keras.Model whose forward pass is the converted network's TF graph."""

    def __init__(self, core) -> None:
        super().__init__()
        self.core_fn = core.function  # the traced tf.function (nsfw_core's tensorflow runtime)

    def call(self, inputs):
        return self.core_fn(inputs)


model = NSFWModel(get_model("MobileNetV2Mid", ROOT / "model", runtime="tensorflow"))
model.predict(keras.ops.zeros((1, 224, 224, 3)), verbose=0)  # build + trace once, as a loaded model would

app = Flask(__name__)

if os.environ.get("BENCH_READY_DIR"):
    Path(os.environ["BENCH_READY_DIR"], str(os.getpid())).write_text("ready")


@app.route("/health")
def health():
    return jsonify(status="ok")


@app.route("/predict", methods=["POST"])
def predict():
    url = request.args.get("url")
    if not url:
        return jsonify(error="missing url"), 400
    r = requests.get(url, timeout=30)
    r.raise_for_status()
    fd, path = tempfile.mkstemp(suffix=os.path.splitext(url.split("?")[0])[1] or ".img")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(r.content)
        img = keras.utils.load_img(path, target_size=(224, 224))
        x = keras.utils.img_to_array(img) / 255
        preds = model.predict(x[None, ...], verbose=0)
    finally:
        os.remove(path)
    return jsonify(dict(zip(CLASSES, [float(p) for p in preds[0]])))
