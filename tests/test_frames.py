"""nsfw_core.images.frames and animated images end to end: every sampled frame judged, the worst one decides."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from nsfw_core.base.errors import ImageTooLarge, UndecodableImage
from nsfw_core.images import decode
from nsfw_core.images.frames import GIF_DEFAULT_DELAY_MS, MAX_FRAMES_READ, FrameRef, Timeline, sample, timeline
from tests.helpers.apiclient import make_settings, running
from tests.helpers.paths import ROOT
from tests.helpers.pillow import frame_count

DEMO = ROOT / "data" / "demo" / "photos"
SIDE = 128
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
DURATIONS = [10, 500, 3000, 40, 200]


def animated(fmt: str, data: bytes, img: Any = None) -> Timeline:
    """The timeline of an animated image (:func:`timeline` gives None for a still one)."""
    found = timeline(fmt, data, img)
    assert found is not None
    return found


def photo(name: str) -> Image.Image:
    return Image.open(DEMO / name).convert("RGB").resize((SIDE, SIDE))


def animation(fmt: str, frames: list[Image.Image], durations: list[int], **options) -> bytes:
    buf = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=durations, loop=0, **extra, **options)
    return buf.getvalue()


def flat(n: int = 5) -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), c) for c in COLOURS[:n]]


# ---------------------------------------------------------------- timelines


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_timeline_reads_every_frame_and_its_display_time(fmt):
    tl = timeline(fmt.lower(), animation(fmt, flat(), DURATIONS))
    assert tl is not None
    durations = [f.duration_ms for f in tl.frames]
    # browsers show a GIF delay of 10 ms for 100 ms, and so does the timeline
    assert durations == ([GIF_DEFAULT_DELAY_MS, *DURATIONS[1:]] if fmt == "GIF" else DURATIONS)
    assert [f.index for f in tl.frames] == [0, 1, 2, 3, 4]
    assert [f.start_ms for f in tl.frames] == [sum(durations[:i]) for i in range(5)]
    assert all(f.area == 64 * 48 for f in tl.frames)


def test_an_apng_default_image_outside_the_animation_is_frame_0():
    data = animation("PNG", flat(), DURATIONS[1:] + [100], default_image=True)
    assert frame_count(data) == 5
    tl = animated("png", data)
    assert [(f.index, f.start_ms, f.duration_ms) for f in tl.frames] == \
        [(0, 0, 0), (1, 0, 500), (2, 500, 3000), (3, 3500, 40), (4, 3540, 200)]


def test_tiff_pages_are_frames():
    data = animation("TIFF", flat(3), [0, 0, 0])
    tl = animated("tiff", data, decode._open(data, "tiff"))
    assert [(f.index, f.start_ms) for f in tl.frames] == [(0, 0), (1, 1000), (2, 2000)]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG", "JPEG", "TIFF"])
def test_still_images_have_no_timeline(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buf, fmt)
    data = buf.getvalue()
    assert timeline(fmt.lower(), data, decode._open(data, fmt.lower())) is None
    assert decode.plan(data).timeline is None


def _gif_of_many_frames(frames: int, side: int = 4) -> bytes:
    """A GIF of ``frames`` frames of ``side`` x ``side`` pixels, 100 ms each, alternating two colours."""
    def blocks(colour: int) -> tuple[bytes, bytes]:
        buf = io.BytesIO()
        image = Image.new("P", (side, side), colour)
        image.putpalette([0, 0, 0, 255, 255, 255])
        image.save(buf, "GIF", optimize=False)
        data = buf.getvalue()
        flags = data[10]
        pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        while data[pos] == 0x21:  # extensions before the image: skip their sub-blocks
            pos += 2
            while data[pos]:
                pos += 1 + data[pos]
            pos += 1
        return data[:pos], data[pos:-1]  # header, then descriptor + image data (without the trailer)

    head, dark = blocks(0)
    _, light = blocks(1)
    control = b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # 10/100 s, no transparency
    return head + b"".join(control + (dark if i % 2 == 0 else light) for i in range(frames)) + b"\x3b"


def test_too_many_frames_are_refused_before_decoding():
    assert len(animated("gif", _gif_of_many_frames(MAX_FRAMES_READ))) == MAX_FRAMES_READ
    with pytest.raises(ImageTooLarge, match=f"more than {MAX_FRAMES_READ} frames"):
        decode.plan(_gif_of_many_frames(MAX_FRAMES_READ + 1))


# ---------------------------------------------------------------- sampling


def test_sampling_takes_first_last_and_the_frames_on_screen_longest():
    tl = animated("png", animation("PNG", flat(), DURATIONS))
    assert sample(tl, 16) == tuple(FrameRef(i, s) for i, s in [(0, 0), (1, 10), (2, 510), (3, 3510), (4, 3550)])
    assert [r.index for r in sample(tl, 3)] == [0, 2, 4]  # the 3 s frame, besides the first and the last
    assert [r.index for r in sample(tl, 1)] == [0]


def test_a_long_frame_among_many_short_ones_is_sampled():
    durations = [20] * 300
    durations[137] = 6000  # shown for 6 s among 300 frames of 20 ms
    frames = [Image.new("RGB", (8, 8), (i % 256, 0, 0)) for i in range(300)]
    tl = animated("png", animation("PNG", frames, durations))
    picked = [r.index for r in sample(tl, 4)]
    assert picked[0] == 0 and picked[-1] == 299 and 137 in picked and len(picked) <= 4


def test_a_10_ms_frame_between_long_ones_is_sampled():
    frames = [photo("skimage_coffee.jpg"), photo("skimage_chelsea.jpg"), photo("skimage_coffee.jpg")]
    tl = animated("webp", animation("WEBP", frames, [2000, 10, 2000]))
    assert [r.index for r in sample(tl, 16)] == [0, 1, 2]


# ---------------------------------------------------------------- decoding frames


def test_decode_frames_returns_the_frames_asked_for():
    for fmt in ("GIF", "WEBP", "PNG"):
        data = animation(fmt, flat(), DURATIONS)
        out = decode.decode_frames(data, (0, 2, 4))
        assert [tuple(int(v) for v in o[10, 10]) for o in out] == [COLOURS[0], COLOURS[2], COLOURS[4]], fmt
    with pytest.raises(ValueError):
        decode.decode_frames(data, (2, 1))


def test_an_animations_cost_counts_every_frame():
    small = decode.plan(animation("GIF", flat(2), [100, 100]))
    many = decode.plan(_gif_of_many_frames(3000))
    assert small.cost.inline and "2 frames" in small.cost.why
    assert many.cost.work >= 3000 * 4096 and "3000 frames" in many.cost.why


# ---------------------------------------------------------------- the API


CLASSIFY_DRAWINGS_AS_ADULT = {"adult_classes": ("drawings",), "safe_classes": ("neutral",), "adult_threshold": 0.5}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """Drawings count as "adult" here: the repository has no adult image, and a benign photo of a cat
    (skimage's chelsea) scores 0.79 drawings, so it plays the part of the frame a filter must not miss."""
    settings = make_settings(tmp_path_factory.mktemp("frames"), max_in_flight=64, **CLASSIFY_DRAWINGS_AS_ADULT)
    with running(settings) as client:
        yield client


def _alone(client, frame: Image.Image, fmt: str) -> dict[str, Any]:
    """The detail answer for one frame, as the same format decodes it."""
    buf = io.BytesIO()
    frame.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    body: dict[str, Any] = client.post("/predict?detail=1", content=buf.getvalue()).json()
    return body


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_a_benign_first_frame_does_not_decide(api, fmt):
    benign, hidden = photo("skimage_coffee.jpg"), photo("skimage_chelsea.jpg")
    data = animation(fmt, [benign, hidden, hidden.rotate(90), benign], [10, 1000, 1000, 1000])
    first_only = _alone(api, benign, fmt)
    assert first_only["verdict"] == "safe"
    body = api.post("/predict?detail=1", content=data).json()
    assert body["verdict"] == "adult" and body["deciding_frame"] in (1, 2), body
    assert [f["index"] for f in body["frames"]] == [0, 1, 2, 3]
    assert [f["time_ms"] for f in body["frames"]] == ([0, 100, 1100, 2100] if fmt == "GIF" else [0, 10, 1010, 2010])
    deciding = next(f for f in body["frames"] if f["index"] == body["deciding_frame"])
    assert body["scores"] == deciding["scores"]
    assert body["adult_score"] == max(f["scores"]["drawings"] for f in body["frames"])
    # the seed-compatible answer is the worst frame's five scores
    assert api.post("/predict", content=data).json() == body["scores"]


def test_a_still_image_has_no_frames(api):
    buf = io.BytesIO()
    photo("skimage_coffee.jpg").save(buf, "PNG")
    body = api.post("/predict?detail=1", content=buf.getvalue()).json()
    assert "frames" not in body and "deciding_frame" not in body and body["verdict_source"] == "model"


def test_near_identical_frames_are_classified_once(api):
    benign, other = photo("skimage_coffee.jpg"), photo("skimage_chelsea.jpg")
    # not byte-identical (an encoder would merge those): one step brighter, then one pixel changed
    brighter = benign.point(lambda v: min(255, v + 1))
    dotted = benign.copy()
    dotted.putpixel((5, 5), (255, 0, 0))
    data = animation("PNG", [benign, brighter, dotted, other], [500, 500, 500, 500])
    assert len(animated("png", data)) == 4
    body = api.post("/predict?detail=1", content=data).json()
    assert [f["index"] for f in body["frames"]] == [0, 3]


def test_a_3000_frame_gif_costs_at_most_max_frames_inferences(api):
    before = api.get("/health").json()["batcher"]["items"]
    response = api.post("/predict?detail=1", content=_gif_of_many_frames(3000))
    assert response.status_code == 200, response.json()
    body = response.json()
    after = api.get("/health").json()["batcher"]["items"]
    assert len(body["frames"]) <= 16 and after - before == len(body["frames"])
    assert body["frames"][0]["index"] == 0 and body["frames"][-1]["index"] == 2999


def test_frames_count_as_images_in_flight(tmp_path):
    frames = [photo(n) for n in ("skimage_coffee.jpg", "skimage_chelsea.jpg", "skimage_camera.jpg",
                                 "skimage_rocket.jpg", "skimage_astronaut.jpg")]
    data = animation("PNG", frames, [100] * 5)
    with running(make_settings(tmp_path, max_in_flight=3)) as client:
        response = client.post("/predict", content=data)
        assert response.status_code == 503 and response.json()["code"] == "overloaded"
        assert client.post("/predict", content=animation("PNG", frames[:3], [100] * 3)).status_code == 200


def test_max_frames_caps_the_frames_classified(tmp_path):
    frames = [Image.new("RGB", (32, 32), (i * 40, 255 - i * 40, 0)) for i in range(6)]
    with running(make_settings(tmp_path, max_frames=2)) as client:
        body = client.post("/predict?detail=1", content=animation("GIF", frames, [100] * 6)).json()
    assert [f["index"] for f in body["frames"]] == [0, 5]


def test_a_multi_page_tiff_is_judged_on_its_pages(api):
    benign, hidden = photo("skimage_coffee.jpg"), photo("skimage_chelsea.jpg")
    buf = io.BytesIO()
    benign.save(buf, "TIFF", save_all=True, append_images=[hidden])
    body = api.post("/predict?detail=1", content=buf.getvalue()).json()
    assert _alone(api, benign, "TIFF")["verdict"] == "safe"
    assert body["verdict"] != "safe" and body["deciding_frame"] == 1
    assert [(f["index"], f["time_ms"]) for f in body["frames"]] == [(0, 0), (1, 1000)]
    assert body["scores"] == body["frames"][1]["scores"]


def test_worst_frame_is_rejudged_under_other_thresholds():
    from nsfw_core.base.verdict import Thresholds
    from nsfw_core.classify import FrameScore, ModelInfo, Timings, judge

    a = {"drawings": 0.8, "hentai": 0.0, "neutral": 0.1, "porn": 0.05, "sexy": 0.05}
    b = {"drawings": 0.0, "hentai": 0.0, "neutral": 0.6, "porn": 0.3, "sexy": 0.1}
    frames = [FrameScore(0, 0, a), FrameScore(1, 100, b)]
    result = judge(a, Thresholds(), ModelInfo("m", "v"), Timings.of(0, 0, 0, 0), "0" * 64, frames=frames)
    assert (result.deciding_frame, result.scores) == (1, b)  # porn + sexy: 0.4 against 0.1
    drawings = Thresholds(adult_classes=("drawings",), safe_classes=("neutral",))
    again = result.under(drawings)
    assert (again.deciding_frame, again.scores, again.verdict) == (0, a, "adult")
    assert np.isclose(again.adult_score, 0.8)


# ---------------------------------------------------------------- the walk agrees with the decoder


def _hide_next_frame(data: bytes, descriptor: int) -> bytes:
    """An extension whose first sub-block is empty, right before the image descriptor at ``descriptor``.

    Pillow then reads on, sub-block after sub-block, up to the next empty one: a walker that stops at the
    empty block (as this service's did) lands inside the next frame's data and never sees the frame.
    """
    packed = data[descriptor + 9]
    table = 3 << ((packed & 7) + 1) if packed & 0x80 else 0
    skip = 35 + 10 + table + 1 - 3
    assert skip <= 255
    trick = b"\x21\xf9\x00" + bytes([33]) + bytes([0x01, skip]) + b"\x00" * 31 + b"\x00"
    return data[:descriptor] + trick + data[descriptor:]


def _descriptors(data: bytes) -> list[int]:
    """Offsets of the image descriptors of a well-formed GIF."""
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    found = []
    while pos < len(data) and data[pos] != 0x3B:
        if data[pos] == 0x21:
            pos += 2
            while data[pos]:
                pos += 1 + data[pos]
            pos += 1
        else:
            found.append(pos)
            packed = data[pos + 9]
            pos += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0) + 1
            while data[pos]:
                pos += 1 + data[pos]
            pos += 1
    return found


def _without_local_table(data: bytes, descriptor: int) -> bytes:
    packed = data[descriptor + 9]
    if not packed & 0x80:
        return data
    table = 3 << ((packed & 7) + 1)
    return data[:descriptor + 9] + bytes([packed & 0x40]) + data[descriptor + 10 + table:]


def test_a_frame_behind_an_empty_extension_block_is_counted_and_judged(api):
    benign, hidden = photo("skimage_coffee.jpg"), photo("skimage_chelsea.jpg")
    data = animation("GIF", [benign, hidden], [500, 3000])
    data = _without_local_table(data, _descriptors(data)[1])
    data = _hide_next_frame(data, _descriptors(data)[1])
    assert frame_count(data) == 2
    assert len(animated("gif", data)) == 2
    body = api.post("/predict?detail=1", content=data).json()
    assert body["deciding_frame"] == 1 and body["verdict"] == "adult", body


def test_a_frame_the_walk_misses_makes_the_image_undecodable(monkeypatch):
    from nsfw_core.images import frames as frames_module

    data = animation("GIF", flat(3), [100, 100, 100])
    real = frames_module.scan

    def short(fmt, raw):  # as if the walk had stopped a frame early, or seen a still image
        found = real(fmt, raw)
        assert found.timeline is not None
        return frames_module.Scan(frames_module.Timeline(found.timeline.frames[:2]), found.junk)

    monkeypatch.setattr(frames_module, "scan", short)
    with pytest.raises(UndecodableImage, match="frames that its block structure hides"):
        decode.decode_frames(data, (0, 1))
    monkeypatch.setattr(frames_module, "scan", lambda fmt, raw: frames_module.Scan(None))
    with pytest.raises(UndecodableImage, match="frames that its block structure hides"):
        decode.decode(data)


def test_a_large_canvas_of_tiny_frames_is_not_decoded_inline():
    bomb = bytearray(_gif_of_many_frames(16, side=1))
    bomb[6:10] = (2810).to_bytes(2, "little") * 2  # the logical screen: 2810 x 2810
    plan = decode.plan(bytes(bomb))
    assert plan.timeline is not None and len(plan.timeline) == 16 and not plan.cost.inline  # isolated lane: deadline and memory limit


def test_stray_bytes_and_fragmented_blocks_are_refused_before_pillow_walks_them():
    data = animation("GIF", flat(2), [100, 100])
    second = _descriptors(data)[1]
    stray = data[:second] + b"\x00" * (70 << 10) + data[second:]
    with pytest.raises(UndecodableImage, match="stray bytes between its blocks"):
        decode.plan(stray)
    fragmented = data[:second] + b"\x21\x01" + b"\x01\x00" * 210_000 + b"\x00" + data[second:]
    with pytest.raises(ImageTooLarge, match="more than 200000 data blocks"):
        decode.plan(fragmented)


def test_tiff_pages_are_counted_from_the_ifd_chain_alone():
    data = animation("TIFF", flat(4), [0] * 4)
    assert len(animated("tiff", data)) == frame_count(data) == 4
    # an IFD chain that loops back to its first IFD: the pages before the loop
    first = int.from_bytes(data[4:8], "little")
    looped = bytearray(data)
    entries = int.from_bytes(data[first:first + 2], "little")
    following = first + 2 + entries * 12
    looped[following:following + 4] = first.to_bytes(4, "little")
    assert timeline("tiff", bytes(looped)) is None  # one page: a still image


def test_apng_frames_are_those_its_actl_declares():
    data = bytearray(animation("PNG", flat(3), [100, 100, 100]))
    actl = data.index(b"acTL")
    data[actl + 4:actl + 8] = (2).to_bytes(4, "big")  # three fcTL chunks, two frames declared
    import zlib

    data[actl + 12:actl + 16] = zlib.crc32(bytes(data[actl:actl + 12])).to_bytes(4, "big")
    assert frame_count(bytes(data)) == 2
    assert len(animated("png", bytes(data))) == 2
    assert len(decode.decode_frames(bytes(data), (0, 1))) == 2


@pytest.mark.parametrize("seed", range(40))
def test_mutated_gifs_are_walked_as_pillow_walks_them(seed):
    """Random byte changes in a 3-frame GIF: wherever Pillow counts the frames, the walk counts the same."""
    rng = np.random.default_rng(seed)
    data = bytearray(animation("GIF", flat(3), [100, 200, 300]))
    for _ in range(int(rng.integers(1, 6))):
        data[int(rng.integers(13, len(data)))] = int(rng.integers(0, 256))
    raw = bytes(data)
    try:
        expected = frame_count(raw)
    except Exception:
        pytest.skip("Pillow cannot read this mutation either")
    try:
        found = timeline("gif", raw)
    except ImageTooLarge:
        return
    assert (len(found) if found else 1) == expected
