"""The litert runtime: compiling in a child process, the compiled-model cache, and agreement with TensorFlow."""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nsfw_core.base.cpus import available_cpus
from nsfw_core.base.errors import ModelError
from nsfw_core.base.settings import MODEL_NAMES, load_settings
from nsfw_core.inference import litert
from nsfw_core.inference.model import load_model
from nsfw_core.inference.modelfiles import read_verified
from nsfw_core.inference.pipeline import Decoder, FrameInputs
from tests.helpers.models import model_named
from tests.helpers.paths import COMPILED_DIR, REFERENCE_IMAGES, ROOT

MODEL_DIR = ROOT / "model"


@pytest.fixture(scope="module")
def compiled_mid(tmp_path_factory):
    """A cache folder holding a fresh compilation of MobileNetV2Mid (not the shipped file), and that file's path."""
    cache = tmp_path_factory.mktemp("compiled")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(litert, "shipped", lambda *args: None)
        model = load_model("MobileNetV2Mid", MODEL_DIR, cache_dir=cache)
    doc, blob = read_verified(MODEL_DIR, "MobileNetV2Mid")
    return cache, litert.compiled_path(cache, "MobileNetV2Mid", doc, blob), model


def still(prepared: np.ndarray | FrameInputs) -> np.ndarray:
    """The model input of a still image (not an animation's frames)."""
    assert isinstance(prepared, np.ndarray)
    return prepared


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_litert_agrees_with_the_tensorflow_runtime(name):
    decoder = Decoder(load_settings(environ={}).decode_limits)
    lite = model_named(name)
    tf = model_named(name, "tensorflow")
    assert (lite.runtime, lite.batches, tf.runtime, tf.batches) == ("litert", False, "tensorflow", True)
    try:
        batch = np.stack([still(decoder.prepare(lite, p.read_bytes())) for p in REFERENCE_IMAGES])
    finally:
        decoder.close()
    np.testing.assert_allclose(lite.predict(batch), tf.predict(batch), atol=1e-4)


def test_compiled_file_is_cached_under_a_key_of_the_model_bytes(compiled_mid):
    cache, path, model = compiled_mid
    assert [p.name for p in cache.iterdir()] == [path.name]
    assert path.name.startswith("MobileNetV2Mid-") and path.name.endswith(".tflite")
    assert path.read_bytes()[4:8] == b"TFL3"  # the TensorFlow Lite flatbuffer identifier
    assert path.stat().st_mode & 0o777 == 0o644
    assert model.runtime == "litert" and model.threads == available_cpus()


def test_a_cached_compilation_is_reused_without_compiling(compiled_mid, monkeypatch):
    cache, path, _ = compiled_mid
    before = path.stat().st_mtime_ns

    def refuse(*args):
        raise AssertionError("compiled again although the cache holds the file")

    monkeypatch.setattr(litert, "_compile_in_child", refuse)
    model = load_model("MobileNetV2Mid", MODEL_DIR, cache_dir=cache)
    assert model.predict(np.zeros((2, 224, 224, 3), np.float32)).shape == (2, 5)
    assert path.stat().st_mtime_ns == before


@pytest.fixture
def no_shipped(monkeypatch):
    """Models compile as if the repository shipped no compiled files."""
    monkeypatch.setattr(litert, "shipped", lambda *args: None)


def test_a_corrupt_compiled_file_is_compiled_again(compiled_mid, tmp_path, no_shipped):
    _, good, _ = compiled_mid
    bad = tmp_path / good.name
    bad.write_bytes(b"not a flatbuffer" * 100)
    stale = tmp_path / "MobileNetV2Mid-0123456789abcdef.tflite"
    stale.write_bytes(b"an older compilation")
    other = tmp_path / "MobileNetV2-0123456789abcdef.tflite"
    other.write_bytes(b"another model's compilation")
    model = load_model("MobileNetV2Mid", MODEL_DIR, cache_dir=tmp_path)
    assert bad.read_bytes() == good.read_bytes()  # the conversion is deterministic
    assert stale.exists() and other.exists()  # a repair touches only the broken file
    x = np.random.default_rng(3).random((1, 224, 224, 3), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x), model_named("MobileNetV2Mid").predict(x), atol=1e-6)


def test_a_new_compilation_removes_older_ones_of_the_same_model(tmp_path, no_shipped):
    stale = tmp_path / "MobileNetV2-0123456789abcdef.tflite"
    stale.write_bytes(b"an older compilation")
    other = tmp_path / "MobileNetV2Mid-0123456789abcdef.tflite"
    other.write_bytes(b"another model's compilation")
    load_model("MobileNetV2", MODEL_DIR, cache_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not stale.exists() and other.exists() and len(names) == 2


def test_an_unwritable_cache_compiles_into_a_temporary_folder(tmp_path, caplog, no_shipped):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    model = load_model("MobileNetV2", MODEL_DIR, cache_dir=blocker / "compiled")
    assert model.predict(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 5)
    assert blocker.read_text() == "a file where the cache folder would go"
    assert "temporary folder" in caplog.text


def test_an_unwritable_cache_runs_the_shipped_file_from_memory(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(litert, "_compile_in_child", refuse_to_compile)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    model = load_model("MobileNetV2", MODEL_DIR, cache_dir=blocker / "compiled")
    assert model.predict(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 5)
    assert "running the shipped MobileNetV2 from memory" in caplog.text


# ---------------------------------------------------------------- shipped compilations


SHIPPED = json.loads((MODEL_DIR / "compiled" / "manifest.json").read_text())


def refuse_to_compile(*args):
    raise AssertionError("compiled although a shipped file should have been used")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_shipped_files_are_current_and_agree_with_tensorflow(name):
    """What ``--ship`` wrote is for today's model files and compiler, and checks out against TensorFlow."""
    from nsfw_core.inference.modelfiles import dequantise
    from nsfw_core.inference.tfgraph import build_function

    doc, blob = read_verified(MODEL_DIR, name)
    entry = SHIPPED["models"][name]
    assert entry["key"] == litert.cache_key(doc, blob), "stale: run python -m nsfw_core.inference.litert --ship --all"
    content = litert.shipped(name, MODEL_DIR, entry["key"])
    assert content is not None and len(content) == entry["bytes"] and content[4:8] == b"TFL3"
    size = int(doc["input_size"])
    x = np.random.default_rng(7).random((2, size, size, 3), dtype=np.float32)
    expected = build_function(doc, dequantise(doc, blob))(x).numpy()
    got = litert.LiteRTForward(content=content, threads=1, input_size=size)(x)
    assert float(np.abs(got - expected).max()) <= litert.MAX_COMPILE_DIFF


def test_an_empty_cache_gets_the_shipped_file_without_compiling(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="nsfw_core.inference.litert")
    monkeypatch.setattr(litert, "_compile_in_child", refuse_to_compile)
    model = load_model("MobileNetV2Mid", MODEL_DIR, cache_dir=tmp_path)
    [path] = tmp_path.iterdir()
    assert path.name == f"MobileNetV2Mid-{SHIPPED['models']['MobileNetV2Mid']['key']}.tflite"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHIPPED["models"]["MobileNetV2Mid"]["sha256"]
    assert path.stat().st_mode & 0o777 == 0o644
    assert model.predict(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 5)
    assert "unpacked the shipped MobileNetV2Mid" in caplog.text


def _model_dir_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(MODEL_DIR, copy)
    return copy


@pytest.mark.parametrize("damage", ["other key", "flipped byte", "truncated", "not xz", "missing file",
                                    "bad manifest"])
def test_a_shipped_file_that_does_not_match_is_not_used(tmp_path, monkeypatch, damage):
    model_dir = _model_dir_copy(tmp_path)
    folder = model_dir / "compiled"
    manifest = json.loads((folder / "manifest.json").read_text())
    packed = folder / "MobileNetV2.tflite.xz"
    if damage == "other key":
        manifest["models"]["MobileNetV2"]["key"] = "0" * 16
        (folder / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "flipped byte":
        raw = bytearray(lzma.decompress(packed.read_bytes()))
        raw[len(raw) // 2] ^= 1
        packed.write_bytes(lzma.compress(bytes(raw)))
    elif damage == "truncated":
        packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    elif damage == "not xz":
        packed.write_bytes(b"plain text")
    elif damage == "missing file":
        packed.unlink()
    else:
        (folder / "manifest.json").write_text("{not json")
    compiled = []

    def compile_instead(name, model_dir, out):
        compiled.append(name)
        raise ModelError("compiled instead")

    monkeypatch.setattr(litert, "_compile_in_child", compile_instead)
    doc, blob = read_verified(model_dir, "MobileNetV2")
    with pytest.raises(ModelError, match="compiled instead"):
        litert.load_forward("MobileNetV2", model_dir, doc, blob, cache_dir=tmp_path / "cache")
    assert compiled == ["MobileNetV2"] and list((tmp_path / "cache").iterdir()) == []


def test_without_tensorflow_and_without_a_shipped_file_the_error_names_the_fix(tmp_path, monkeypatch):
    model_dir = _model_dir_copy(tmp_path)
    shutil.rmtree(model_dir / "compiled")
    fake = tmp_path / "no-tensorflow" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'tensorflow'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    doc, blob = read_verified(model_dir, "MobileNetV2")
    with pytest.raises(ModelError, match=r"no shipped compiled file matches this MobileNetV2, and compiling one "
                                         r"needs TensorFlow: pip install -r requirements-convert.txt"):
        litert.load_forward("MobileNetV2", model_dir, doc, blob, cache_dir=tmp_path / "cache")


def test_a_failed_compilation_is_a_model_error_with_the_childs_reason(tmp_path):
    doc, blob = read_verified(MODEL_DIR, "MobileNetV2")
    with pytest.raises(ModelError, match=r"compiling MobileNetV2 for LiteRT failed: .*manifest not found"):
        litert.load_forward("MobileNetV2", tmp_path / "nowhere", doc, blob, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_a_missing_litert_package_names_the_fix(compiled_mid, monkeypatch):
    cache, _, _ = compiled_mid
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ModelError, match="ai-edge-litert package .* NSFW_RUNTIME=tensorflow"):
        load_model("MobileNetV2Mid", MODEL_DIR, cache_dir=cache)


def test_unknown_runtime_is_refused():
    with pytest.raises(ModelError, match="unknown runtime 'onnx'"):
        load_model("MobileNetV2Mid", MODEL_DIR, runtime="onnx")


def test_precompile_command_and_a_server_process_without_tensorflow(tmp_path):
    """``python -m nsfw_core.inference.litert`` fills <data dir>/compiled; a later load never imports TensorFlow."""
    env = dict(os.environ, NSFW_DATA_DIR=str(tmp_path), NSFW_MODEL="MobileNetV2")
    done = subprocess.run([sys.executable, "-m", "nsfw_core.inference.litert"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MobileNetV2: ready for LiteRT in ")
    assert [p.suffix for p in (tmp_path / "compiled").iterdir()] == [".tflite"]
    script = ("import json, sys\n"
              "from nsfw_core.inference.registry import Batching, ModelRegistry\n"
              "from nsfw_core.base.settings import load_settings\n"
              "m = ModelRegistry(load_settings().model_config, Batching(8, 2.0, 64), 2**30).get()\n"
              "print(json.dumps([m.runtime, 'tensorflow' in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["litert", False]


def test_importing_the_model_layer_never_imports_tensorflow(tmp_path):
    """A server on LiteRT imports these modules; TensorFlow stays out (from any working directory)."""
    script = ("import json, sys\n"
              "import nsfw_core.inference.model, nsfw_core.inference.litert, nsfw_core.inference.tfgraph, nsfw_core.inference.runtime\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_compiler_child_runs_from_any_working_directory(tmp_path, monkeypatch, no_shipped):
    """The child finds the installed package without PYTHONPATH; relative paths mean what they mean here."""
    children: list[dict[str, Any]] = []
    real_run = subprocess.run

    def spy(cmd, **kwargs):
        children.append(kwargs)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)  # the module litert runs the conversion with
    monkeypatch.delenv("PYTHONPATH", raising=False)
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copytree(MODEL_DIR, work / "model")
    monkeypatch.chdir(work)
    doc, blob = read_verified(Path("model"), "MobileNetV2")
    forward = litert.load_forward("MobileNetV2", Path("model"), doc, blob, cache_dir=Path("compiled"))
    assert forward(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 5)
    assert len(children) == 1 and "PYTHONPATH" not in children[0]["env"]
    assert [p.suffix for p in (work / "compiled").iterdir()] == [".tflite"]


def test_precompile_command_reports_an_unknown_model(tmp_path):
    env = dict(os.environ, NSFW_DATA_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "nsfw_core.inference.litert", "ResNet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: unknown model 'ResNet'; choose one of MobileNetV2Mid, MobileNetV2, "
                                   "InceptionV3")


def test_a_compiler_killed_by_the_kernel_suggests_memory(tmp_path, monkeypatch, no_shipped):
    """The OOM killer's SIGKILL gets a hint; the child runs a stand-in that kills itself the same way."""
    doc, blob = read_verified(MODEL_DIR, "MobileNetV2")
    suicide = tmp_path / "python"
    suicide.write_text("#!/bin/sh\nkill -9 $$\n")
    suicide.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(suicide))  # what litert starts the conversion with
    with pytest.raises(ModelError, match=r"killed by signal 9 \(out of memory\? .*python -m nsfw_core.inference.litert\)"):
        litert.load_forward("MobileNetV2", MODEL_DIR, doc, blob, cache_dir=tmp_path / "c")


def test_precompile_all_models_into_the_shared_folder():
    env = dict(os.environ, NSFW_COMPILED_DIR=COMPILED_DIR)
    done = subprocess.run([sys.executable, "-m", "nsfw_core.inference.litert", "--all"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == list(MODEL_NAMES)
    for name in MODEL_NAMES:
        doc, blob = read_verified(MODEL_DIR, name)
        assert litert.compiled_path(COMPILED_DIR, name, doc, blob).is_file()


# --- lanes: a batch shared out among parallel single-threaded interpreters ----------------------


def distinct_inputs(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 224, 224, 3), dtype=np.float32)


@pytest.mark.parametrize(("threads", "lanes", "split"), [
    (2, 4, [1, 1]), (1, 4, []), (3, 4, [1, 1, 1]), (8, 4, [2, 2, 2, 2]), (8, 0, []), (5, 2, [3, 2]),
])
def test_lanes_split_the_threads(compiled_mid, threads, lanes, split):
    _cache, path, _model = compiled_mid
    forward = litert.LiteRTForward(path=path, threads=threads, input_size=224, lanes=lanes)
    assert (forward.lanes, forward.lane_threads, forward.threads) == (len(split), split, threads)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_lanes_give_each_image_its_own_row(compiled_mid, n):
    """Rows come back in input order, equal to one image at a time on the multi-threaded interpreter."""
    _cache, path, _model = compiled_mid
    forward = litert.LiteRTForward(path=path, threads=2, input_size=224, lanes=2)
    x = distinct_inputs(n)
    one_by_one = np.concatenate([forward(x[i:i + 1]) for i in range(n)])  # n == 1: the wide interpreter
    np.testing.assert_allclose(forward(x), one_by_one, atol=1e-6)
    assert len({tuple(np.round(row, 6)) for row in one_by_one}) == n  # the inputs really differ


def test_lanes_run_in_parallel_and_each_takes_a_share(compiled_mid, monkeypatch):
    import threading

    _cache, path, _model = compiled_mid
    forward = litert.LiteRTForward(path=path, threads=2, input_size=224, lanes=2)
    seen: list[tuple[int, int, str]] = []
    real = litert.LiteRTForward._run

    def spy(lane, batch, out):
        seen.append((forward._lanes.index(lane), batch.shape[0], threading.current_thread().name))
        real(lane, batch, out)

    monkeypatch.setattr(litert.LiteRTForward, "_run", staticmethod(spy))
    forward(distinct_inputs(5))
    assert sorted((lane, size) for lane, size, _ in seen) == [(0, 2), (1, 3)]
    assert len({name for _, _, name in seen}) == 2  # two threads ran them


def test_concurrent_callers_get_their_own_answers(compiled_mid):
    from concurrent.futures import ThreadPoolExecutor

    _cache, path, _model = compiled_mid
    forward = litert.LiteRTForward(path=path, threads=2, input_size=224, lanes=2)
    inputs = [distinct_inputs(n) for n in (1, 2, 3, 4, 5, 6)]
    expected = [forward(x) for x in inputs]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(forward, inputs * 3))
    for want, have in zip(expected * 3, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-6)


def test_the_served_model_gets_lanes_and_the_others_do_not():
    from nsfw_core.inference.registry import Batching, ModelRegistry

    settings = load_settings(environ={"NSFW_COMPILED_DIR": str(COMPILED_DIR)})
    registry = ModelRegistry(settings.model_config, Batching(8, 2.0, 64), 2**30)
    served, other = registry.get(), registry.get("MobileNetV2")
    expected = min(available_cpus(), litert.MAX_LANES) if available_cpus() > 1 else 0
    assert (served.name, served.lanes) == (settings.model, expected)
    assert (other.name, other.lanes) == ("MobileNetV2", 0)
    assert registry.get(settings.model) is served  # the pages share the API's copy


def test_a_failing_lane_fails_the_call_only_after_every_lane_is_done(compiled_mid, monkeypatch):
    import time

    _cache, path, _model = compiled_mid
    forward = litert.LiteRTForward(path=path, threads=2, input_size=224, lanes=2)
    finished: list[int] = []
    real = litert.LiteRTForward._run

    def first_lane_fails(lane, batch, out):
        if lane is forward._lanes[0]:
            raise RuntimeError("lane 0 broke")
        time.sleep(0.2)
        real(lane, batch, out)
        finished.append(1)

    monkeypatch.setattr(litert.LiteRTForward, "_run", staticmethod(first_lane_fails))
    with pytest.raises(RuntimeError, match="lane 0 broke"):
        forward(distinct_inputs(4))
    assert finished == [1]  # the other lane had finished before the lock was released
    monkeypatch.undo()
    np.testing.assert_allclose(forward(distinct_inputs(2)).sum(axis=1), 1.0, atol=1e-5)
