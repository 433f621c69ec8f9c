"""The converted models against nsfwjs 4.4.0's own outputs, and the model runtime."""

from __future__ import annotations

import ast
import json
import shutil

import numpy as np
import pytest

from nsfw_core.base.errors import ModelError
from nsfw_core.base.settings import CLASS_NAMES, MODEL_NAMES, load_settings
from nsfw_core.inference.model import load_model, resize_bilinear
from nsfw_core.inference.pipeline import Decoder
from nsfw_core.inference.registry import Batching, ModelRegistry
from tests.helpers.models import model_named
from tests.helpers.paths import REFERENCE_IMAGES, ROOT

NSFWJS_CLASSES = {"Drawing": "drawings", "Hentai": "hentai", "Neutral": "neutral", "Porn": "porn", "Sexy": "sexy"}
TOLERANCE = 0.01


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model(request):
    return model_named(request.param)


@pytest.fixture(scope="module")
def decoders():
    """A decoder with large JPEGs drafted (the default) and one without, by ``jpeg_draft``."""
    made = {draft: Decoder(load_settings(environ={}, jpeg_draft=draft).decode_limits) for draft in (True, False)}
    yield made
    for decoder in made.values():
        decoder.close()


@pytest.mark.parametrize("draft", [True, False], ids=["jpeg-draft", "full-decode"])
def test_fidelity_against_nsfwjs(model, reference_outputs, decoders, draft):
    batch = np.stack([decoders[draft].prepare(model, p.read_bytes()) for p in REFERENCE_IMAGES])
    probs = model.predict(batch)  # all four images in one forward pass
    for path, row in zip(REFERENCE_IMAGES, probs, strict=True):
        expected = {NSFWJS_CLASSES[k]: v for k, v in reference_outputs[model.name][path.name].items()}
        got = dict(zip(CLASS_NAMES, row.tolist(), strict=True))
        for cls in CLASS_NAMES:
            assert abs(got[cls] - expected[cls]) <= TOLERANCE, (model.name, path.name, cls, got[cls], expected[cls])
        assert max(got, key=lambda c: got[c]) == max(expected, key=lambda c: expected[c]), (model.name, path.name)


def test_batch_equals_single(default_model, decoders):
    inputs = [decoders[True].prepare(default_model, p.read_bytes()) for p in REFERENCE_IMAGES]
    together = default_model.predict(np.stack(inputs))
    for x, row in zip(inputs, together, strict=True):
        np.testing.assert_allclose(default_model.predict(x[None])[0], row, atol=1e-5)


def test_probabilities_sum_to_one(default_model):
    probs = default_model.predict(np.random.default_rng(0).random((3, 224, 224, 3), dtype=np.float32))
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_predict_rejects_wrong_shape(default_model):
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\)"):
        default_model.predict(np.zeros((1, 100, 100, 3), np.float32))
    assert default_model.predict(np.zeros((0, 224, 224, 3), np.float32)).shape == (0, 5)


def test_model_info(default_model):
    assert default_model.info() == {"name": "MobileNetV2Mid", "version": default_model.version, "input_size": 224}
    assert default_model.version.startswith("nsfwjs@4.4.0+")


def test_load_model_defaults_are_the_settings_tables(default_model):
    table = load_settings(environ={}).model_config
    assert default_model.runtime == table.runtime


def test_the_registry_loads_each_model_once_whoever_asks():
    settings = load_settings(environ={})
    registry = ModelRegistry(settings.model_config, Batching(8, 2.0, 64), 1024 * 1024 * 1024)
    served = registry.get()
    assert served.name == settings.model_config.name
    assert registry.get(settings.model_config.name) is served
    other = registry.get("MobileNetV2")
    assert registry.get("MobileNetV2") is other and registry.loads == 2
    assert served.lanes > 1 and other.lanes <= 1  # the served model runs a batch on parallel lanes


# The modules of the model layer and what each may import from the others (at any depth: a function-level
# import counts too). Lower layers never import higher ones, so there is no cycle to hide.
LAYERS = {
    "preprocess": set(),
    "modelfiles": set(),
    "runtime": set(),
    "tfgraph": set(),
    "litert": {"modelfiles", "runtime", "tfgraph"},
    "model": {"preprocess", "modelfiles", "runtime", "tfgraph", "litert"},
}


def _imported_siblings(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nsfw_core."):
            found.add(node.module.rsplit(".", 1)[1])
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("nsfw_core."))
    return found & set(LAYERS)


def _module_path(module: str):
    found = [p for p in (ROOT / "nsfw_core").rglob(f"{module}.py")]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_the_model_modules_import_in_one_direction(module):
    assert _imported_siblings(_module_path(module)) <= LAYERS[module]


def test_resize_bilinear_align_corners_matches_hand_computation():
    img = np.array([[0, 10, 20], [30, 40, 50], [60, 70, 80]], dtype=np.uint8)[:, :, None]
    out = resize_bilinear(img, 5)[:, :, 0]
    # align_corners: output i samples input i * (3 - 1) / (5 - 1) = i / 2; corners are kept exactly
    assert out[0, 0] == 0 and out[0, 4] == 20 and out[4, 0] == 60 and out[4, 4] == 80
    assert out[0, 1] == pytest.approx(5.0)
    assert out[1, 1] == pytest.approx(20.0)  # midway between 0, 10, 30, 40
    assert out[2, 2] == pytest.approx(40.0)
    assert out.dtype == np.float32


@pytest.mark.parametrize("shape", [(37, 53, 3), (1, 300, 3), (300, 1, 3), (1, 1, 3), (1000, 1500, 3), (224, 224, 1)])
def test_resize_bilinear_matches_tensorflow_legacy_op(shape):
    tf = pytest.importorskip("tensorflow", reason="the runtime install has no TensorFlow (requirements-convert.txt)")

    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    ours = resize_bilinear(img, 224)
    theirs = tf.compat.v1.image.resize_bilinear(img[None].astype(np.float32), [224, 224], align_corners=True)[0]
    # TF computes the sampling coordinates in float32, we in float64: on a 1500-pixel axis their
    # fractional parts differ by ~1e-4, i.e. up to 0.03 on the 0-255 scale of the pixel values.
    np.testing.assert_allclose(ours, theirs.numpy(), atol=0.05)


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model"):
        load_model("ResNet", ROOT / "model")


def _copy_models(tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(ROOT / "model", dest)
    return dest


def test_missing_weights_file_is_a_clear_model_error(tmp_path):
    model_dir = _copy_models(tmp_path)
    (model_dir / "MobileNetV2" / "weights.bin").unlink()
    with pytest.raises(ModelError, match="missing or unreadable"):
        load_model("MobileNetV2", model_dir)


def test_corrupt_weights_file_is_detected_by_sha256(tmp_path):
    model_dir = _copy_models(tmp_path)
    path = model_dir / "MobileNetV2" / "weights.bin"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_model("MobileNetV2", model_dir)


def test_missing_manifest(tmp_path):
    model_dir = _copy_models(tmp_path)
    (model_dir / "manifest.json").unlink()
    with pytest.raises(ModelError, match="manifest not found"):
        load_model("MobileNetV2", model_dir)


def test_manifest_lists_every_file_and_licence():
    manifest = json.loads((ROOT / "model" / "manifest.json").read_text())
    files = {p.relative_to(ROOT / "model").as_posix() for p in (ROOT / "model").rglob("*") if p.is_file()}
    shipped = {f"compiled/{name}" for name in ("manifest.json", *(f"{m}.tflite.xz" for m in MODEL_NAMES))}
    assert files - {"manifest.json"} - shipped == set(manifest["files"])  # compiled/ has its own manifest
    assert manifest["source"]["package"] == "nsfwjs" and manifest["source"]["version"] == "4.4.0"
    assert "MIT" in (ROOT / "model" / "LICENSE").read_text()
    total = sum(p.stat().st_size for p in (ROOT / "model").rglob("*") if p.is_file() and p.parent.name != "compiled")
    assert total < 40 * 1024 * 1024
    assert sum((ROOT / "model" / p).stat().st_size for p in shipped) < 32 * 1024 * 1024
