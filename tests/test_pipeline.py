"""The shared pipeline: source expansion, batched classification, the decode pixel budget."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from nsfw_core.base.errors import InvalidURL, TooLarge
from nsfw_core.base.settings import load_settings
from nsfw_core.inference.pipeline import (
    ISOLATED_SHARE,
    Decoder,
    PixelBudget,
    iter_sources,
    load_bytes,
    read_file,
    score_sources,
)
from tests.helpers.paths import REFERENCE, REFERENCE_IMAGES
from tests.helpers.threads import within_seconds


def _peak_concurrency(budget: PixelBudget, sizes: list[int]) -> int:
    active, peak, lock = 0, 0, threading.Lock()

    def work(pixels: int) -> None:
        nonlocal active, peak
        with budget.hold(pixels):
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.05)
            with lock:
                active -= 1

    threads = [threading.Thread(target=work, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert budget.free == budget.capacity
    return peak


def test_pixel_budget_serialises_large_images_and_shares_small_ones():
    assert _peak_concurrency(PixelBudget(100), [60, 60, 60]) == 1
    assert _peak_concurrency(PixelBudget(100), [30, 30, 30]) == 3
    assert _peak_concurrency(PixelBudget(100), [500, 10]) == 1  # over the budget: runs alone, never deadlocks


@pytest.fixture
def decoder():
    decoder = Decoder(load_settings(environ={}).decode_limits)
    yield decoder
    decoder.close()


def test_decode_for_holds_the_image_pixels(default_model, decoder, monkeypatch):
    held = []
    real_hold = decoder.budget.hold

    def spy(pixels, share=1.0):
        held.append(pixels)
        return real_hold(pixels, share=share)

    monkeypatch.setattr(decoder.budget, "hold", spy)
    rgb = decoder.decode_for(default_model, (REFERENCE / "smile.jpg").read_bytes())
    assert held == [rgb.shape[0] * rgb.shape[1]]


def test_iter_sources_walks_folders_and_keeps_urls(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.PNG").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    got = iter_sources([str(tmp_path), "https://example.com/x.jpg"])
    assert got == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "b.PNG"), "https://example.com/x.jpg"]


def test_score_sources_batches_and_keeps_order(default_model, decoder, monkeypatch):
    calls = []
    real = default_model.predict

    def counting_predict(batch):
        calls.append(len(batch))
        return real(batch)

    monkeypatch.setattr(default_model, "predict", counting_predict)
    sources = [str(p) for p in REFERENCE_IMAGES] + ["missing.jpg"]
    policy = load_settings(environ={}).fetch_policy
    results = score_sources(default_model, sources, decoder, lambda s: load_bytes(s, policy), batch_size=3)
    assert [r.source for r in results] == sources
    assert calls == [3, 1]  # the missing file takes no slot in a forward pass
    error = results[4].error
    assert all(r.ok for r in results[:4]) and error is not None and error.code == "invalid_url"
    assert results[0].sha256 and len(results[0].sha256) == 64
    scores = results[0].scores
    assert scores is not None and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_an_expensive_decode_leaves_a_share_of_the_budget_to_cheap_images() -> None:
    budget = PixelBudget(1000)
    with budget.hold(5000, share=ISOLATED_SHARE):  # a huge image holds at most 3/4
        assert budget.free == 250
        held = []
        done = threading.Event()

        def cheap() -> None:
            held.append(budget.hold(200))
            held[0].__enter__()
            done.set()

        threading.Thread(target=cheap).start()
        assert done.wait(2.0)  # a cheap image does not wait for it
        assert budget.free == 50
    assert budget.free == 800


# ---------------------------------------------------------------- reading local files (the CLI's inputs)


def test_read_file_reads_only_regular_files(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InvalidURL) as err:
        within_seconds(read_file, fifo, 1000)  # a FIFO without a writer: refused, not waited on
    assert str(err.value) == f"cannot read {fifo}: it is not a regular file (a FIFO)"
    for path, kind in (("/dev/zero", "a character device"), (str(tmp_path), "a directory")):
        with pytest.raises(InvalidURL) as err:
            within_seconds(read_file, path, 1000)
        assert str(err.value) == f"cannot read {path}: it is not a regular file ({kind})"
    with pytest.raises(InvalidURL, match="No such file or directory"):
        read_file(tmp_path / "missing.jpg", 1000)
    (tmp_path / "a.jpg").write_bytes(b"x" * 1000)
    assert read_file(tmp_path / "a.jpg", 1000) == b"x" * 1000


def test_read_file_caps_the_read_not_the_stat(tmp_path, monkeypatch):
    environ = Path("/proc/self/environ")
    assert environ.stat().st_size == 0  # stat says nothing is there
    with pytest.raises(TooLarge) as err:
        read_file(environ, 4)
    assert str(err.value) == "/proc/self/environ is larger than the limit of 4 bytes"
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as f:
        os.truncate(f.fileno(), 4 << 30)  # 4 GB, no blocks on disk
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(TooLarge, match=r"huge\.jpg is larger than the limit of 67108864 bytes for a video "
                                       r"\(10485760 for an image\)"):
        load_bytes(str(sparse), load_settings({}).fetch_policy)
    assert reads == []  # refused from fstat of the opened file, nothing read
    monkeypatch.undo()
    grows = tmp_path / "grows.jpg"
    grows.write_bytes(b"x" * 10)
    reads.clear()
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: _shrunk(real_fstat(fd)))  # a size that lies, as /proc's do
    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(TooLarge):
        read_file(grows, 4)
    assert sum(reads) <= 5  # the read stops at the cap + 1


def _shrunk(st: os.stat_result) -> os.stat_result:
    return os.stat_result((*st[:6], 0, *st[7:10]))
