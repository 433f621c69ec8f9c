"""nsfw_core.images.sandbox: isolated decodes with a deadline, a memory cap and a pickle-free reply."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfw_core.base.errors import DecodeTimeout, ImageTooLarge, NotAnImage, UndecodableImage
from nsfw_core.images import decode
from nsfw_core.images.sandbox import PREVIEW_SIDE, Sandbox, _Child
from nsfw_core.inference.model import resize_bilinear
from tests.helpers import hostile
from tests.helpers.rss import tree_pids

LIMITS = {"max_pixels": 50_000_000, "max_scans": 100, "draft_size": None}


@pytest.fixture
def lane():
    box = Sandbox(processes=1, timeout=1.0)
    yield box
    box.close()


def _png(size: tuple[int, int], colour=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_prepare_gives_the_same_model_input_as_in_process(lane: Sandbox) -> None:
    data = (hostile.progressive_scans(300, 0))
    expected = resize_bilinear(decode.decode(data), 224) * np.float32(1 / 255)
    out = lane.prepare(data, size=224, limits=LIMITS, cost_pixels=90_000)
    assert out.dtype == np.float32 and out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, expected)


def test_decode_sends_back_a_bounded_preview(lane: Sandbox) -> None:
    out = lane.decode(_png((5000, 100)), limits=LIMITS, cost_pixels=500_000)
    assert out.dtype == np.uint8 and out.shape == (41, PREVIEW_SIDE, 3)
    assert tuple(out[20, 1000]) == (200, 30, 60)
    small = lane.decode(_png((30, 20)), limits=LIMITS, cost_pixels=600)
    assert small.shape == (20, 30, 3)


def test_typed_errors_cross_the_boundary(lane: Sandbox) -> None:
    with pytest.raises(NotAnImage):
        lane.decode(b"hello", limits=LIMITS, cost_pixels=1)
    with pytest.raises(UndecodableImage):
        lane.decode(_png((64, 64))[:60], limits=LIMITS, cost_pixels=4096)
    with pytest.raises(ImageTooLarge) as info:
        lane.decode(_png((64, 64)), limits={**LIMITS, "max_pixels": 100}, cost_pixels=1)
    assert info.value.details["max_pixels"] == 100
    assert lane.decode(_png((8, 8)), limits=LIMITS, cost_pixels=64).shape == (8, 8, 3)
    # a typed error is a clean answer: the same child goes on (no new process per corrupt file)
    assert len(lane._idle) == 1
    pid = lane._idle[0].proc.pid
    with pytest.raises(UndecodableImage):
        lane.decode(_png((64, 64))[:60], limits=LIMITS, cost_pixels=4096)
    assert [c.proc.pid for c in lane._idle] == [pid]


def test_a_decode_past_the_deadline_is_killed_and_the_next_call_gets_a_new_child(lane: Sandbox) -> None:
    slow = hostile.progressive_scans(6144, 90)  # about 2.7 s on a quiet CI core: well past the 1 s deadline
    started = time.monotonic()
    with pytest.raises(DecodeTimeout) as info:
        lane.prepare(slow, size=224, limits=LIMITS, cost_pixels=18_874_368)
    assert 1.0 <= time.monotonic() - started < 2.0
    assert info.value.status == 422 and info.value.details["timeout_s"] == 1.0
    assert lane.killed == 1
    assert lane.prepare(_png((64, 64)), size=224, limits=LIMITS, cost_pixels=4096).shape == (224, 224, 3)


def test_a_decode_that_allocates_more_than_declared_is_413(lane: Sandbox) -> None:
    # Declared cost 1 pixel (256 MB of headroom); the real image needs 50 M pixels x ~5 bytes.
    with pytest.raises(ImageTooLarge):
        lane.decode(hostile.png(50_000_000, 1, colour_type=2), limits=LIMITS, cost_pixels=1)
    assert lane.decode(_png((8, 8)), limits=LIMITS, cost_pixels=64).shape == (8, 8, 3)


def test_a_crashed_child_is_a_422_and_replaced(lane: Sandbox) -> None:
    lane.warm()
    child = lane._idle[0]
    child.proc.kill()
    child.proc.wait()
    # the dead idle child is noticed and replaced before the call
    assert lane.decode(_png((8, 8)), limits=LIMITS, cost_pixels=64).shape == (8, 8, 3)
    # a child that dies mid-call (here: killed from outside): the caller gets a typed error at once
    fresh = _Child.start()
    threading.Timer(0.5, fresh.proc.kill).start()
    started = time.monotonic()
    with pytest.raises(UndecodableImage, match="crashed"):
        fresh.call({"op": "decode", **LIMITS, "headroom": 1 << 28}, hostile.progressive_scans(4096, 90), 30.0)
    assert time.monotonic() - started < 5
    fresh.kill()


def test_malformed_replies_are_refused() -> None:
    class Fake(_Child):
        def __init__(self, reply: bytes) -> None:
            import subprocess
            import sys

            proc = subprocess.Popen([sys.executable, "-c", f"import sys; sys.stdin.buffer.read(1); "
                                     f"sys.stdout.buffer.write({reply!r}); sys.stdout.flush()"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            super().__init__(proc)

    import json
    import struct

    header = json.dumps({"ok": True, "dtype": "float32", "shape": [2, 2, 3]}).encode()
    short = struct.pack("<II", len(header), 4) + header + b"\0" * 4  # 4 bytes for 48 announced
    object_dtype = json.dumps({"ok": True, "dtype": "object", "shape": [1, 1, 1]}).encode()
    for reply in (short, struct.pack("<II", len(object_dtype), 8) + object_dtype + b"\0" * 8,
                  struct.pack("<II", 1 << 30, 0)):
        fake = Fake(reply)
        with pytest.raises(UndecodableImage):
            fake.call({"op": "decode"}, b"x", 5.0)
        fake.kill()


def test_a_child_dies_with_its_server_even_mid_decode(tmp_path) -> None:
    """A server killed with SIGKILL while a child decodes: the child goes too (PR_SET_PDEATHSIG)."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    slow = tmp_path / "slow.jpg"
    slow.write_bytes(hostile.progressive_scans(6000, 90))  # about 10 s of decoding
    script = ("import sys, threading, time\n"
              "from nsfw_core.images.sandbox import Sandbox\n"
              "box = Sandbox(1, 60.0)\n"
              "threading.Thread(target=box.decode, args=(open(sys.argv[1], 'rb').read(),), "
              f"kwargs={{'limits': {LIMITS!r}, 'cost_pixels': 18_000_000}}, daemon=True).start()\n"
              "time.sleep(1.0)\n"
              "print('decoding', flush=True)\n"
              "time.sleep(60)\n")
    server = subprocess.Popen([sys.executable, "-c", script, str(slow)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None  # a pipe
        assert server.stdout.readline().strip() == "decoding"
        children = tree_pids(server.pid)[1:]  # started from a thread: any task's children
        assert len(children) == 1

        def running(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
            except OSError:
                return False

        assert running(children[0])
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        deadline = time.monotonic() + 2  # the decode alone would run for several seconds more
        while running(children[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(children[0]), "the decode child outlived its server"
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.parametrize("reply", [b"{not json", b'["a list"]', b'{"ok": true, "dtype": "uint8", "shape": ["x"]}'])
def test_a_malformed_reply_from_the_child_is_undecodable_not_a_crash(reply):
    """A child that answers garbage (a decoder it ran was subverted) is UndecodableImage, which the caller
    kills it for; before, call() parsed the header itself and a bad one raised a bare ValueError (a 500)."""
    import struct
    import subprocess
    import sys

    frame = struct.pack("<II", len(reply), 0) + reply
    script = f"import sys; sys.stdin.buffer.read(1); sys.stdout.buffer.write({frame!r}); sys.stdout.flush()"
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        with pytest.raises(UndecodableImage, match="malformed"):
            _Child(proc).call({"op": "decode"}, b"x", 10.0)
    finally:
        proc.kill()
        proc.wait()
