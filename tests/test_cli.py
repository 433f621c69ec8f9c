"""The command line: python -m nsfw_core PATH|URL|DIR ..."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from nsfw_core.cli import main
from tests.helpers.paths import REFERENCE, REFERENCE_IMAGES, ROOT

NSFWJS_CLASSES = {"Drawing": "drawings", "Hentai": "hentai", "Neutral": "neutral", "Porn": "porn", "Sexy": "sexy"}


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_json_for_a_folder_matches_nsfwjs(default_model, reference_outputs):
    code, out, err = run(["--format", "json", str(REFERENCE)])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in rows] == [str(p) for p in REFERENCE_IMAGES]
    for row in rows:
        name = row["source"].rsplit("/", 1)[-1]
        expected = {NSFWJS_CLASSES[k]: v for k, v in reference_outputs["MobileNetV2Mid"][name].items()}
        assert set(row["scores"]) == set(expected)
        for cls, p in expected.items():
            assert row["scores"][cls] == pytest.approx(p, abs=0.01)
        assert row["verdict"] in ("adult", "unknown", "safe")


def test_bad_inputs_are_reported_per_input_and_exit_1(tmp_path, default_model):
    html = tmp_path / "page.jpg"
    html.write_bytes(b"<!doctype html><html><body>hi</body></html>")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(REFERENCE_IMAGES[0].read_bytes()[:2000])
    good = str(REFERENCE_IMAGES[0])
    code, out, err = run([str(html), good, str(truncated), str(tmp_path / "missing.jpg")])
    assert code == 1
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r.get("error", {}).get("code") for r in rows] == ["not_an_image", None, "undecodable_image", "invalid_url"]
    assert "scores" in rows[1]
    assert "3 of 4 inputs failed" in err


def test_fifos_devices_and_proc_files_neither_block_nor_read_without_end(tmp_path, default_model):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "labels.csv").write_text(f"path,label\n{fifo},neutral\n/dev/zero,neutral\n")
    os.mkfifo(tmp_path / "pipe.csv")
    done: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: done.update(result=run([str(fifo), "/dev/zero", "/proc/self/environ",
                                                                      "--manifest", str(tmp_path / "labels.csv")])),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the command line blocked"
    code, out, err = done["result"]
    assert code == 1
    rows = [json.loads(line) for line in out.splitlines()]
    fifo_error = ("invalid_url", f"cannot read {fifo}: it is not a regular file (a FIFO)")
    zero_error = ("invalid_url", "cannot read /dev/zero: it is not a regular file (a character device)")
    assert [(r["source"], r.get("label"), r["error"]["code"], r["error"]["message"]) for r in rows] == [
        (str(fifo), "neutral", *fifo_error),  # the label: the manifest names the same file
        ("/dev/zero", "neutral", *zero_error),
        ("/proc/self/environ", None, "not_an_image", rows[2]["error"]["message"]),  # regular: read under the cap
        (str(fifo), "neutral", *fifo_error),  # the manifest's rows
        ("/dev/zero", "neutral", *zero_error),
    ]
    assert "PATH=" not in out + err  # the file's contents are never echoed
    worker = threading.Thread(target=lambda: done.update(result=run(["--manifest", str(tmp_path / "pipe.csv")])),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the command line blocked on a FIFO manifest"
    code, out, err = done["result"]
    assert (code, out) == (2, "")
    assert err == f"error: cannot read manifest {tmp_path / 'pipe.csv'}: it is not a regular file (a FIFO)\n"


def test_table_format(default_model):
    code, out, _ = run(["--format", "table", str(REFERENCE_IMAGES[1])])
    assert code == 0
    header, rule, row = out.splitlines()
    assert header.split()[:6] == ["source", "drawings", "hentai", "neutral", "porn", "sexy"]
    assert set(rule) == {"-"}
    assert row.startswith(str(REFERENCE_IMAGES[1]))


def test_refused_url_is_an_error_row(default_model):
    code, out, _ = run(["http://127.0.0.1:9/x.jpg"])
    assert code == 1
    assert json.loads(out)["error"]["code"] == "forbidden_address"


def test_entry_point_exit_codes_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    proc = subprocess.run([sys.executable, "-m", "nsfw_core", "--format", "json", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["code"] == "not_an_image"
    assert "Traceback" not in proc.stderr
    usage = subprocess.run([sys.executable, "-m", "nsfw_core", "--model", "Nope", "x"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_for_many_files(default_model, tmp_path):
    from nsfw_core.cli import PROGRESS_MIN_ITEMS, _progress

    assert _progress(PROGRESS_MIN_ITEMS, io.StringIO()) is None  # not a terminal
    assert _progress(PROGRESS_MIN_ITEMS - 1, _Terminal()) is None  # too few files
    for i in range(PROGRESS_MIN_ITEMS):
        (tmp_path / f"{i}.jpg").write_bytes(REFERENCE_IMAGES[i % len(REFERENCE_IMAGES)].read_bytes())
    out, err = io.StringIO(), _Terminal()
    assert main(["--format", "table", str(tmp_path)], stdout=out, stderr=err) == 0
    assert f"{PROGRESS_MIN_ITEMS}/{PROGRESS_MIN_ITEMS}" in err.getvalue()  # tqdm's final count
    assert len(out.getvalue().splitlines()) == PROGRESS_MIN_ITEMS + 2


def test_manifest_rows_are_classified_with_their_labels(default_model, tmp_path):
    from nsfw_core.state.review import ReviewQueue

    # The review queue's CSV export is a manifest the CLI reads.
    image = tmp_path / "smile.jpg"
    image.write_bytes((REFERENCE / "smile.jpg").read_bytes())
    scores = {"drawings": 0.6, "hentai": 0.04, "neutral": 0.35, "porn": 0.005, "sexy": 0.005}
    with ReviewQueue(None, data_dir=tmp_path / "data") as queue:
        item = queue.enqueue("ab" * 32, str(image), scores, "MobileNetV2Mid", "unknown")
        queue.claim("r")
        queue.decide(item, "r", "safe")
        export = tmp_path / "reviewed.csv"
        export.write_text(queue.export_csv())
    demo = ROOT / "data" / "demo" / "manifest.csv"
    code, out, err = run(["--manifest", str(export), "--manifest", str(demo)])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["source"] == str(image) and rows[0]["label"] == "safe" and "scores" in rows[0]
    assert len(rows) == 1 + len(demo.read_text().strip().splitlines()) - 1
    assert {r["label"] for r in rows[1:]} <= {"neutral", "drawings"}


def test_no_inputs_at_all_is_a_usage_error(default_model):
    code, _, err = run([])
    assert code == 2 and "--manifest" in err


def test_first_use_of_a_model_says_it_is_unpacked(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSFW_")}
    env["NSFW_COMPILED_DIR"] = str(tmp_path / "compiled")
    args = [sys.executable, "-m", "nsfw_core", "--model", "MobileNetV2", "--format", "json", str(REFERENCE_IMAGES[0])]
    first = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "unpacked the shipped MobileNetV2 compiled for LiteRT" in first.stderr
    assert "compiling" not in first.stderr  # the shipped file, not TensorFlow
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "unpacked" not in again.stderr
    assert json.loads(again.stdout)["scores"] == json.loads(first.stdout)["scores"]


@pytest.mark.slow
def test_a_long_video_file_is_judged_over_its_whole_length_in_process(default_model, tmp_path, monkeypatch):
    from tests.helpers import videos

    for name in [k for k in os.environ if k.startswith("NSFW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NSFW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NSFW_MAX_VIDEO_SECONDS", "5")  # a request's limit: not the command line's
    clip = tmp_path / "long.webm"
    clip.write_bytes(videos.make("webm", "vp8", seconds=12, fps=2, size=(64, 48)))
    code, out, err = run(["--format", "json", str(clip)])
    assert code == 0, err
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["source"] == str(clip) and row["verdict"] in ("adult", "unknown", "safe") and "error" not in row
