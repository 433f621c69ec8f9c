"""Videos (issue 27): formats, sampling by time, the timeline in the answer, hostile videos bounded.

Every video is made here by PyAV from the images the project ships (tests/helpers/videos.py); the
decoding runs in the real isolated lane (child processes), so this module is marked slow.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nsfw_core.base.errors import ImageTooLarge, NotAnImage, NSFWError, UndecodableImage, VideoTooLong
from nsfw_core.images import video
from nsfw_core.images.sandbox import Sandbox
from nsfw_core.images.sniff import sniff, sniff_video
from nsfw_core.state.review import evidence as evidence_store
from tests.helpers import videos
from tests.helpers.apiclient import make_settings, running
from tests.helpers.servers import image

pytestmark = pytest.mark.slow

FORMATS = [("mp4", "h264"), ("mov", "h264"), ("mp4", "hevc"), ("mkv", "hevc"), ("webm", "vp8"), ("webm", "vp9"),
           ("mkv", "av1"), ("webm", "av1"), ("mkv", "h264")]
REQUEST = {"max_pixels": 8847360, "fps": 1.0, "max_frames": 1800, "seed": 7, "max_ms": None, "size": 224,
           "thumb": 0}


@pytest.fixture(scope="module")
def clip() -> bytes:
    """5 s of 320x240 H.264 at 10 frames a second, a shipped image a second."""
    return videos.make("mp4", "h264", seconds=5, fps=10)


def _frames(data: bytes, **kw: Any) -> tuple[video.Declared, video.Plan, list[tuple[video.Sample, Any]]]:
    args = {"max_pixels": 8847360, "fps": 1.0, "max_frames": 1800, "seed": 3, "each": lambda rgb: rgb, **kw}
    container = sniff_video(data)
    assert container is not None
    items = list(video.frames(data, container, **args))
    head = items[0]
    assert isinstance(head[0], video.Declared) and isinstance(head[1], video.Plan)
    return head[0], head[1], items[1:]  # type: ignore[return-value]


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(("container", "codec"), FORMATS)
def test_each_container_and_codec_decodes_in_the_isolated_lane(container, codec):
    data = videos.make(container, codec, seconds=3, fps=10)
    assert sniff_video(data) == container and sniff(data) is None
    with Sandbox(1, 30).video(data, {**REQUEST, "container": container}, timeout=60) as stream:
        replies = list(stream)
    info, frames = replies[0], replies[1:]
    assert info.kind == "info"
    assert (info.meta["codec"], info.meta["width"], info.meta["height"]) == (codec, 320, 240)
    assert 2900 <= info.meta["duration_ms"] <= 3100 and info.meta["packets"] == 30
    # one frame a second: the first, then one in each later second
    assert [f.meta["time_ms"] // 1000 for f in frames] == [0, 1, 2]
    for f in frames:
        assert f.x is not None and f.x.shape == (224, 224, 3) and f.x.dtype == np.float32
        assert 0.0 <= float(f.x.min()) and float(f.x.max()) <= 1.0 and float(f.x.std()) > 0.05  # a picture


def test_sniffing_tells_videos_from_heif_images_and_other_files():
    assert sniff_video(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00") == "mp4"
    assert sniff_video(b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00") == "mov"
    assert sniff_video(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") is None
    assert sniff_video(b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00") is None
    assert sniff_video(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm") == "webm"
    assert sniff_video(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska") == "mkv"
    assert sniff_video(b"GIF89a") is None and sniff_video(b"") is None


# ---------------------------------------------------------------- sampling by time


def test_instants_one_a_second_spread_to_the_frame_cap_and_unpredictable_without_the_seed():
    ten = video.instants(10_000, 1.0, 1800, seed=1)
    assert len(ten) == 10 and ten[0] == 0
    assert all(k * 1000 <= t < (k + 1) * 1000 for k, t in enumerate(ten))  # one in each second
    hour = video.instants(3_600_000, 1.0, 600, seed=1)
    assert len(hour) == 600 and all(k * 6000 <= t < (k + 1) * 6000 for k, t in enumerate(hour))
    assert video.instants(10_000, 1.0, 1800, seed=1) == ten  # the same seed, the same instants
    others = [video.instants(10_000, 1.0, 1800, seed=s) for s in range(2, 6)]
    assert all(o[1:] != ten[1:] for o in others)  # another seed, other instants


def test_the_frame_judged_is_the_one_on_screen_at_each_instant_b_frames_included():
    # frame i is a flat grey of level 2*i: the decoded picture tells which frame it is
    frames = [np.full((64, 64, 3), 2 * i, np.uint8) for i in range(100)]
    data = videos.make("mp4", "h264", fps=10, size=(64, 64), frames=frames,
                       options={"preset": "medium", "bf": "3", "g": "30"})
    _, plan, got = _frames(data, each=lambda rgb: float(rgb.mean()))
    assert len(got) == 10
    for sample, level in got:
        assert abs(level - 2 * sample.index) < 1.5, (sample, level)
        assert sample.time_ms == sample.index * 100
    assert [s.index for s, _ in got] == [s.index for s in plan.samples]


def test_one_frame_is_decoded_alone_at_its_time_in_the_isolated_lane(tmp_path: Path, default_model):
    """A review item's deciding frame (issue 30): the frame on screen at its time, and only its group of pictures
    decoded; through the isolated lane for a video longer than a request may be (its packets are only indexed)."""
    from nsfw_core.inference.pipeline import Decoder

    frames = [np.full((64, 64, 3), 2 * i, np.uint8) for i in range(100)]
    data = videos.make("mp4", "h264", fps=10, size=(64, 64), frames=frames,
                       options={"preset": "medium", "bf": "3", "g": "30"})
    _, plan, got = _frames(data, at_ms=4250, each=lambda rgb: float(rgb.mean()))
    [(sample, level)] = got
    assert (sample.index, sample.time_ms) == (42, 4200) and abs(level - 84) < 1.5
    assert plan.decoded <= 30  # the group of pictures that holds it, no other
    decoder = Decoder(make_settings(tmp_path, max_video_seconds=2.0).decode_limits)  # the video is 10 s long
    try:
        ref, x = decoder.video_frame(default_model, data, 7330)
    finally:
        decoder.close()
    assert (ref.index, ref.time_ms) == (73, 7300) and x.shape == (224, 224, 3)
    assert abs(float(x.mean()) * 255 - 146) < 1.5


def test_groups_of_pictures_without_a_sample_are_never_decoded():
    data = videos.make("mp4", "h264", seconds=30, fps=10, size=(96, 64), options={"g": "10"})
    _, plan, got = _frames(data, fps=0.2)  # one frame in 5 s; a keyframe every second
    assert plan.packets == 300 and plan.keyframes >= 30 and len(got) == 6
    assert plan.decoded <= 6 * 10  # from the keyframe before each sample to it: at most a group each
    _, dense, _ = _frames(data, fps=1.0)
    assert dense.decoded > plan.decoded


def test_a_turned_video_is_judged_upright():
    data = videos.make("mp4", "h264", seconds=1, fps=5, size=(96, 64), rotation=90)
    _, _, got = _frames(data, each=lambda rgb: rgb.shape)
    assert got and all(shape == (96, 64, 3) for _, shape in got)


def test_a_job_resumed_skips_the_frames_it_judged_and_gets_the_same_instants(clip):
    _, whole, _ = _frames(clip, seed=11)
    _, rest, got = _frames(clip, seed=11, skip=2)
    assert rest.samples == whole.samples[2:] and [s for s, _ in got] == list(whole.samples[2:])


# ---------------------------------------------------------------- hostile videos


def test_a_frame_size_over_the_limit_is_refused_before_decoding():
    data = videos.make("mp4", "h264", seconds=0.2, fps=5, size=(1280, 720))
    with pytest.raises(ImageTooLarge, match="1280x720"):
        _frames(data, max_pixels=640 * 480)


def test_a_stream_whose_frames_outgrow_its_header_is_refused_and_the_lane_goes_on(clip):
    data = videos.outgrowing()  # declares 64x48, then carries 1024x1024 frames
    sandbox = Sandbox(1, 30)
    try:
        with pytest.raises(ImageTooLarge, match="larger than the 64x48"):
            with sandbox.video(data, {**REQUEST, "container": "mkv", "fps": 5.0}, timeout=30) as stream:
                list(stream)
        with sandbox.video(clip, {**REQUEST, "container": "mp4"}, timeout=30) as stream:
            assert len([r for r in stream if r.kind == "frame"]) == 5
    finally:
        sandbox.close()


def test_too_many_streams_are_refused():
    import io

    import av

    buf = io.BytesIO()
    out = av.open(buf, "w", format="matroska")
    streams: list[Any] = []
    for _ in range(video.MAX_STREAMS + 4):
        s: Any = out.add_stream("libx264", rate=5)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        streams.append(s)
    for s in streams:
        for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    out.close()
    with pytest.raises(ImageTooLarge, match="streams"):
        _frames(buf.getvalue())


def test_a_declared_hours_long_duration_in_a_small_file_costs_what_its_frames_are():
    # the Matroska Duration element (ms, a float) patched to 10 hours: the packets say 5 s, and 5 s is judged
    data = bytearray(videos.make("webm", "vp8", seconds=5, fps=10))
    at = data.find(b"\x44\x89")
    assert at > 0 and data[at + 2] in (0x84, 0x88)
    if data[at + 2] == 0x88:
        struct.pack_into(">d", data, at + 3, 36_000_000.0)
    else:
        struct.pack_into(">f", data, at + 3, 36_000_000.0)
    import io

    import av

    with av.open(io.BytesIO(bytes(data)), "r") as box:
        assert box.duration is not None and box.duration >= 36_000 * 1_000_000 - 10**6  # what the header claims...
    _, plan, got = _frames(bytes(data), max_ms=60_000)
    assert plan.duration_ms == 5000 and len(got) == 5  # ...is not what it costs


def test_a_video_longer_than_a_request_takes_is_refused_while_its_container_is_read():
    data = videos.make("webm", "vp8", seconds=70, fps=1, size=(32, 32))
    with pytest.raises(VideoTooLong) as err:
        _frames(data, max_ms=60_000)
    assert err.value.code == "video_too_long" and err.value.status == 413 and "/v1/jobs" in err.value.message


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_truncated_and_damaged_videos_are_typed_errors_or_what_their_frames_give(container):
    data = videos.make(container, "h264" if container == "mp4" else "vp9", seconds=4, fps=10)
    rng = np.random.default_rng(27)
    variants = [data[: len(data) // 2], data[: len(data) // 10], data[:200]]
    for _ in range(12):
        flipped = bytearray(data)
        for at in rng.integers(16, len(data), 8):
            flipped[int(at)] ^= 0xFF
        variants.append(bytes(flipped))
    outcomes: set[tuple[str, object]] = set()
    sandbox = Sandbox(1, 30)
    try:
        for variant in variants:
            try:
                with sandbox.video(variant, {**REQUEST, "container": container}, timeout=30) as stream:
                    frames = [r for r in stream if r.kind == "frame"]
                outcomes.add(("ok", bool(frames)))
            except NSFWError as exc:
                assert isinstance(exc, (UndecodableImage, ImageTooLarge, NotAnImage)), exc
                assert exc.status in (413, 415, 422)
                outcomes.add(("error", exc.code))
    finally:
        sandbox.close()
    assert ("error", "undecodable_image") in outcomes  # the cut files at least


def test_a_decoder_past_its_deadline_is_killed_and_the_lane_goes_on(clip):
    big = videos.make("mp4", "hevc", seconds=6, fps=25, size=(1280, 720), options={"preset": "medium"})
    sandbox = Sandbox(1, 30)
    try:
        with pytest.raises(NSFWError) as err:
            with sandbox.video(big, {**REQUEST, "container": "mp4", "fps": 25}, timeout=0.3, total=0.3) as stream:
                list(stream)
        assert err.value.code == "decode_timeout" and sandbox.killed == 1
        with sandbox.video(clip, {**REQUEST, "container": "mp4"}, timeout=30) as stream:
            assert len([r for r in stream if r.kind == "frame"]) == 5
    finally:
        sandbox.close()


def test_a_stream_closed_mid_way_kills_its_child_and_frees_its_slot(clip):
    sandbox = Sandbox(1, 30)
    try:
        stream = sandbox.video(clip, {**REQUEST, "container": "mp4"}, timeout=30)
        first = next(stream)
        assert first.kind == "info"
        stream.close()
        assert not sandbox._idle  # the child was mid-stream: killed, not reused
        with sandbox.video(clip, {**REQUEST, "container": "mp4"}, timeout=30) as again:  # the slot is free
            assert len(list(again)) == 6
        assert len(sandbox._idle) == 1  # a stream read to its end leaves its child for the next
    finally:
        sandbox.close()


# ---------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def alternating() -> bytes:
    """6 s: drawings and photographs, two seconds each (so its frames do not all get one verdict)."""
    drawings = videos.pictures([p for p in videos.DEMO if p.parent.name == "drawings"][:1])
    photos = videos.pictures([p for p in videos.DEMO if p.parent.name == "photos"][2:3])
    return videos.make("mp4", "h264", seconds=6, fps=5, hold=2.0, images=drawings + photos)


def test_the_api_answers_a_video_by_upload_base64_and_url(tmp_path: Path, clip, local_server):
    url = local_server.route("/clip.mp4", image(clip, "video/mp4"))
    with running(make_settings(tmp_path, allow_private_hosts=("*",))) as client:
        plain = client.post("/predict", content=clip)
        detail = client.post("/predict?detail=1", content=clip)
        by_url = client.post("/v1/classify", json={"image": {"url": url}})
        by_b64 = client.post("/v1/classify", json={"image": {"base64": base64.b64encode(clip).decode()}})
        cut = client.post("/predict", content=clip[: len(clip) // 2])  # the MP4's index (moov) is at its end
        other = client.post("/predict", content=b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    assert cut.status_code == 422 and cut.json()["code"] == "undecodable_image"
    assert other.status_code == 422 and other.json()["code"] == "undecodable_image"
    assert plain.status_code == detail.status_code == by_url.status_code == by_b64.status_code == 200
    d = detail.json()
    assert d["video"] == {"container": "mp4", "codec": "h264", "width": 320, "height": 240, "duration_ms": 5000,
                          "frames": 50}
    assert len(d["frames"]) == 5 and d["segments"][0]["start_ms"] == 0 and d["segments"][-1]["end_ms"] == 5000
    deciding = next(f for f in d["frames"] if f["index"] == d["deciding_frame"])
    assert d["deciding_time_ms"] == deciding["time_ms"] and d["scores"] == deciding["scores"]
    assert plain.json() == d["scores"]  # /predict's five scores: the deciding frame's
    for answer in (by_url.json(), by_b64.json()):
        assert answer["sha256"] == d["sha256"] and answer["video"] == d["video"] and len(answer["frames"]) == 5


def test_segments_merge_consecutive_frames_of_one_verdict(tmp_path: Path, alternating):
    with running(make_settings(tmp_path)) as client:
        probe = client.post("/predict?detail=1", content=alternating).json()
        adult = [f["scores"]["porn"] + f["scores"]["sexy"] for f in probe["frames"]]
        safe = [f["scores"]["neutral"] + f["scores"]["drawings"] for f in probe["frames"]]
        # a safe threshold between the two kinds of frames: the drawings safe, the photograph unknown
        cut = (min(safe[:2]) + max(safe[2:4])) / 2
        answer = client.post("/v1/classify", json={"image": {"base64": base64.b64encode(alternating).decode()},
                                                   "thresholds": {"safe": cut, "adult": 0.999}}).json()
    assert len(adult) == 6
    verdicts = ["safe" if s >= cut else "unknown" for s in safe]
    runs = [v for i, v in enumerate(verdicts) if i == 0 or verdicts[i - 1] != v]
    assert [s["verdict"] for s in answer["segments"]] == runs and len(runs) >= 2
    times = [f["time_ms"] for f in answer["frames"]]
    for seg in answer["segments"]:
        inside = [f for f in answer["frames"] if seg["start_ms"] <= f["time_ms"] < seg["end_ms"]]
        assert inside and all(("safe" if f["scores"]["neutral"] + f["scores"]["drawings"] >= cut else "unknown")
                              == seg["verdict"] for f in inside)
        assert seg["max_scores"] == {c: max(f["scores"][c] for f in inside) for c in seg["max_scores"]}
    assert answer["segments"][0]["start_ms"] == times[0] and answer["segments"][-1]["end_ms"] == 6000
    assert answer["verdict"] == "unknown"  # the worst frame decides


def test_video_byte_cap_and_duration_limit_in_a_request(tmp_path: Path, clip):
    long = videos.make("webm", "vp8", seconds=8, fps=2, size=(32, 32))
    settings = make_settings(tmp_path, max_video_bytes=len(clip) - 1, max_video_seconds=5.0)
    with running(settings) as client:
        too_big = client.post("/predict", content=clip)
        too_long = client.post("/predict", content=long)
        b64 = client.post("/v1/classify", json={"image": {"base64": base64.b64encode(clip).decode()}})
    assert too_big.status_code == 413 and too_big.json()["code"] == "too_large"
    assert b64.status_code == 413 and b64.json()["code"] == "too_large"
    assert too_long.status_code == 413 and too_long.json()["code"] == "video_too_long"


def test_an_image_keeps_its_own_cap_when_videos_may_be_larger(tmp_path: Path, local_server):
    png = (Path(__file__).parent / "fixtures").glob("*.png")
    body = next(png, None)
    data = body.read_bytes() if body is not None else videos.pictures()[0].tobytes()
    url = local_server.route("/big.bin", image(data + b"\0" * 5000, "image/png"))
    settings = make_settings(tmp_path, max_bytes=4000, max_video_bytes=10_000_000, allow_private_hosts=("*",))
    with running(settings) as client:
        upload = client.post("/predict", content=b"\x89PNG\r\n\x1a\n" + b"\0" * 5000)
        fetched = client.post("/v1/classify", json={"image": {"url": url}})
    assert upload.status_code == 413 and upload.json()["code"] == "too_large"
    assert fetched.status_code == 413 and fetched.json()["code"] == "too_large"


def test_the_cli_path_judges_a_video_with_its_timeline(tmp_path: Path, clip):
    from nsfw_core.context import Context

    path = tmp_path / "clip.mp4"
    path.write_bytes(clip)
    ctx = Context(make_settings(tmp_path))
    try:
        [outcome] = ctx.classifier.sources([str(path)])
    finally:
        ctx.close()
    assert outcome.ok and outcome.classification is not None
    result = outcome.classification.to_dict()
    assert result["video"]["duration_ms"] == 5000 and len(result["frames"]) == 5 and result["segments"]


# ---------------------------------------------------------------- remembered decisions for videos


def test_a_decision_on_a_video_is_remembered_by_its_frames_and_a_reencoded_copy_gets_it(tmp_path: Path):
    import nsfw_core.context

    scenes = videos.pictures(videos.DEMO[8:10])
    original = videos.make("mp4", "h264", seconds=10, fps=10, size=(320, 240), hold=5.0, pan=False, images=scenes)
    copy = videos.make("webm", "vp9", seconds=10, fps=10, size=(256, 192), hold=5.0, pan=False, images=scenes)
    other = videos.make("mp4", "h264", seconds=10, fps=10, size=(320, 240), hold=5.0, pan=False,
                        images=videos.pictures(videos.DEMO[2:4]))
    with running(make_settings(tmp_path, safe_threshold=0.99999, adult_threshold=0.99999)) as client:
        first = client.post("/predict?detail=1", content=original).json()
        assert first["verdict"] == "unknown" and first["verdict_source"] == "model"
        ctx = nsfw_core.context.current()
        found = ctx.review_queue.ticket(first["review_id"])
        assert found is not None
        item_id = found[0]
        hashes = ctx.review_queue.phash(item_id)
        assert hashes is not None and len(hashes.split(",")) >= 8  # one PDQ hash a sampled frame
        # the item keeps when its deciding frame is shown: its evidence is computed on that frame (issue 30)
        assert evidence_store.deciding_ms(ctx.review_queue.pool, item_id) == first["deciding_time_ms"]
        before = client.post("/predict?detail=1", content=copy).json()
        ctx.review_queue.decide(item_id, "alice", "safe", seen=first["sha256"])  # shown the video's own bytes
        ctx.known.refresh()
        again = client.post("/predict?detail=1", content=copy).json()
        unrelated = client.post("/predict?detail=1", content=other).json()
        still = client.post("/predict?detail=1", content=_png(scenes[0])).json()
    assert before["verdict_source"] == "model"
    assert again["verdict"] == "safe" and again["verdict_source"] == "review", again.get("match")
    # the client learns how it matched and nothing more (issue 29: no distance, no share, no ids)
    assert again["match"] == {"source": "review", "by": "vpdq", "label": "safe"} and again["sha256"] != first["sha256"]
    assert unrelated["verdict_source"] == "model"
    assert still["verdict_source"] == "model"  # a still image of one of its frames is no copy of the video


def test_hash_lists_take_video_entries_and_give_them_back(tmp_path: Path):
    from nsfw_core.state.db import open_pool
    from nsfw_core.state.known import KnownImages, ListError, parse_list

    rng = np.random.default_rng(5)
    clip = [rng.bytes(32).hex() for _ in range(5)]  # far apart: random 256-bit hashes differ by ~128 bits
    frames = " ".join(clip)
    text = f"sha256,pdq,label,note,media\n,{'ab' * 32},deny,still,\n,{frames},deny,a clip,video\n"
    entries = parse_list(text)
    assert [e.media for e in entries] == ["image", "video"] and entries[1].pdq == frames.replace(" ", ",")
    with pytest.raises(ListError, match="row 2"):
        parse_list("sha256,pdq,label,note,media\n,abc,deny,,video\n")
    pool = open_pool(None, tmp_path)
    known = KnownImages(pool)
    try:
        known.import_list(entries, by="admin")
        exported = known.export_list()
        assert exported.splitlines()[0] == "sha256,pdq,label,note,media"
        assert parse_list(exported) == entries
        query = [bytes.fromhex(h) for h in clip]
        match = known.lookup_video("0" * 64, query)
        assert match is not None and match.kind == "list" and match.by == "vpdq" and match.verdict == "adult"
        assert known.lookup("0" * 64, query[0]) is None  # a video entry's frame never matches a still image
        assert known.lookup_video("0" * 64, query[:3]) is None  # 3 of its 5 frames: not the video
    finally:
        known.close()
        pool.close()


def test_a_frame_majority_match_clears_an_unknown_video_only_when_the_model_sees_it_alike_and_for_its_audience(
        tmp_path: Path):
    """Issue 29's look-alike rule and audiences in vPDQ form: the decided video's scores (its worst frame's)
    are remembered with its frames' hashes; a copy matching most frames gets the decision only when its worst
    frame's adult score is at most MATCH_ADULT_MARGIN above them, never when the model calls it adult, and a
    decision made for one client's own thresholds matches only that client's videos."""
    import hashlib

    from nsfw_core.base.verdict import Thresholds
    from nsfw_core.classify import MATCH_ADULT_MARGIN, FrameScore, ModelInfo, Timings, judge
    from nsfw_core.inference.pipeline import VideoInfo
    from nsfw_core.state.known import KnownImages
    from nsfw_core.state.review import ReviewQueue

    rng = np.random.default_rng(11)
    clip_hashes = [rng.bytes(32) for _ in range(6)]
    data = b"\x00\x00\x00\x18ftypisom the decided video's bytes"
    sha = hashlib.sha256(data).hexdigest()
    decided = {"drawings": 0.05, "hentai": 0.02, "neutral": 0.6, "porn": 0.13, "sexy": 0.2}  # adult 0.35
    thresholds = Thresholds(adult=0.7, safe=0.9, adult_classes=("hentai", "porn", "sexy"),
                            safe_classes=("drawings", "neutral"))
    model = ModelInfo("MobileNetV2Mid", "1")
    queue = ReviewQueue(data_dir=tmp_path)
    known = KnownImages(queue.pool)
    try:
        item_id, _ = queue.enqueue_for("client-a", sha, "upload", decided, model.name, "unknown", image_bytes=data,
                                       phash=",".join(h.hex() for h in clip_hashes), audience="client-a",
                                       media="video")
        queue.decide(item_id, "alice", "safe", seen=sha)
        known.refresh()
        other_bytes = "1" * 64  # a copy: other bytes, the same frames
        assert known.lookup_video(other_bytes, clip_hashes, "client-b") is None  # not its audience
        assert known.lookup_video(other_bytes, clip_hashes) is None
        match = known.lookup_video(other_bytes, clip_hashes, "client-a")
        assert match is not None and match.by == "vpdq" and match.verdict == "safe"
        assert match.scores == decided and match.model == model.name  # what the rule compares with
    finally:
        known.close()
        queue.close()

    def copy(worst_adult: float) -> Any:
        calm = {"drawings": 0.05, "hentai": 0.0, "neutral": 0.75, "porn": 0.1, "sexy": 0.1}
        worst = {"drawings": 0.0, "hentai": 0.0, "neutral": 1.0 - worst_adult, "porn": worst_adult / 2,
                 "sexy": worst_adult / 2}
        frames = [FrameScore(0, 0, calm), FrameScore(30, 1000, worst), FrameScore(60, 2000, calm)]
        info = VideoInfo("mp4", "h264", 320, 240, 3000, 90, 1, 3)
        return judge(calm, thresholds, model, Timings.of(0, 0, 0, 0), other_bytes, frames=frames, match=match,
                     video=info)

    alike = copy(0.35 + MATCH_ADULT_MARGIN - 0.005)
    assert alike.verdict == "safe" and alike.verdict_source == "review" and alike.deciding_time_ms == 1000
    assert alike.to_dict()["match"] == {"source": "review", "by": "vpdq", "label": "safe"} and alike.segments
    more_adult = copy(0.35 + MATCH_ADULT_MARGIN + 0.1)  # the model leaves it unknown, and sees it more adult
    assert more_adult.verdict == "unknown" and more_adult.verdict_source == "model" and more_adult.match is None
    assert more_adult.near == match and "match" not in more_adult.to_dict()  # the reviewer's, never the client's
    adult = copy(0.9)
    assert adult.verdict == "adult" and adult.match is None and adult.near is None


def test_a_video_s_automatic_verdict_is_audited_with_its_bytes_and_its_decision_remembered(tmp_path: Path):
    """Issue 25's audit sample takes videos too: the audit item keeps the video (the reviewer API hands it as a
    video, blind), its frames' hashes, and a decision on it clears a re-encoded copy for every client."""
    scenes = videos.pictures(videos.DEMO[8:10])
    original = videos.make("mp4", "h264", seconds=10, fps=10, size=(320, 240), hold=5.0, pan=False, images=scenes)
    copy = videos.make("webm", "vp9", seconds=10, fps=10, size=(256, 192), hold=5.0, pan=False, images=scenes)
    client_key, other_key, reviewer = "client-key-0123456789", "other-key-0123456789", "reviewer-key-0123456789"
    settings = make_settings(tmp_path, adult_threshold=0.99999, safe_threshold=0.0,  # every video automatic safe
                             audit_rate=(("adult", 1.0), ("safe", 1.0)), api_keys=(client_key, other_key),
                             reviewer_api_keys=(reviewer,))
    as_client = {"Authorization": f"Bearer {client_key}"}
    as_reviewer = {"Authorization": f"Bearer {reviewer}"}
    with running(settings) as client:
        first = client.post("/predict?detail=1", content=original, headers=as_client).json()
        held = client.post("/v1/reviews/claim", headers=as_reviewer).json()["item"]
        decision = client.post(f"/v1/reviews/{held['id']}/decision", json={"label": "safe"}, headers=as_reviewer)
        import nsfw_core.context

        nsfw_core.context.current().known.refresh()
        again = client.post("/predict?detail=1", content=copy,
                            headers={"Authorization": f"Bearer {other_key}"}).json()
    assert first["verdict"] == "safe" and "review_id" not in first and "review_error" not in first  # unchanged
    assert held["kind"] == "audit" and "verdict" not in held and "scores" not in held  # blind
    assert held["image"]["media_type"] == "video/mp4" and base64.b64decode(held["image"]["base64"]) == original
    assert decision.status_code == 200 and decision.json()["outcome"] == "decided"
    assert again["verdict_source"] == "review" and again["match"] == {"source": "review", "by": "vpdq",
                                                                      "label": "safe"}


def test_a_video_costs_its_sampled_frames_against_its_key_s_rate_limit(tmp_path: Path, clip):
    """Issue 29's cost units for videos: once its container is read, a request's video is charged its sampled
    frames times the model's cost (1 for the default model) and its decoding beyond them (here 45 packets fed
    beyond the 5 judged: 0.32), before a frame is decoded: two such videos fit a burst of 12, the third is 429."""
    from nsfw_core.base.rates import parse_rate

    key = "client-key-0123456789"
    settings = make_settings(tmp_path, api_keys=(key,), rate_limit=parse_rate("1/h;burst=12"))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "video/mp4"}
    with running(settings) as client:
        answers = [client.post("/v1/classify", content=clip, headers=headers) for _ in range(3)]
    first, second, third = answers
    assert first.status_code == 200 and len(first.json()["frames"]) == 5
    assert [first.headers["ratelimit-remaining"], second.headers["ratelimit-remaining"]] == ["6", "1"]
    assert third.status_code == 429 and third.json()["code"] == "rate_limited"


def test_a_video_s_decoding_beyond_its_sampled_frames_is_charged(tmp_path: Path):
    """5 s of 320x240 at 300 frames a second with a single keyframe: 6 frames judged (the last one always), but
    the decoder goes through all 1,500.  Before, the request cost its 6 sampled frames whatever it made the
    decoder do; now what decoding takes beyond them is charged (nsfw_core.ratelimit.video_decode_cost): at
    least (1,500 x 76,800 - 6 x 2 M) pixels / 10 M a unit = 10.3, and 1,494 packets / 140 a unit = 10.7."""
    from nsfw_core import ratelimit
    from nsfw_core.base.rates import parse_rate

    fast = videos.make("mp4", "h264", seconds=5, fps=300, size=(320, 240),
                       options={"preset": "ultrafast", "g": "100000", "keyint_min": "100000", "sc_threshold": "0"})
    found, chosen, _ = _frames(fast)
    assert (found.width, found.height, chosen.keyframes, len(chosen.samples), chosen.decoded) == (320, 240, 1, 6, 1500)
    assert 0 < chosen.decoded_bytes <= len(fast)  # the bitstream fed to the decoder: every packet here
    cost = 6 + ratelimit.video_decode_cost(6, 1500, 320 * 240, chosen.decoded_bytes, "h264")
    assert cost >= 6 + 10.32 + 10.67
    key = "client-key-0123456789"
    settings = make_settings(tmp_path, api_keys=(key,), rate_limit=parse_rate("1/h;burst=100"))
    with running(settings) as client:
        answer = client.post("/v1/classify", content=fast,
                             headers={"Authorization": f"Bearer {key}", "Content-Type": "video/mp4"})
    # charged on the plan (6 samples) before a frame is decoded; once in about ten runs the answer had 5 frames
    # (a frame left out, not reproduced in 240 direct decodes): the charge is the plan's either way
    assert answer.status_code == 200 and len(answer.json()["frames"]) in (5, 6)
    assert answer.headers["ratelimit-remaining"] == str(int(100 - cost))  # 94 before: its 6 frames only


def test_video_decoding_is_charged_by_the_pixel_the_byte_and_the_packet():
    """The three ways decoding costs (bench/model_cost.py): pixels reconstructed, bytes of bitstream (by codec),
    packets; pixels and bytes overlap (the larger counts), and each sampled frame's unit includes its own."""
    from nsfw_core.ratelimit import video_decode_cost

    assert video_decode_cost(1, 1, 2_000_000, 100_000, "h264") == 0.0  # one frame, as a photo's
    assert video_decode_cost(2, 2, 11_000_000, 0) == pytest.approx((22e6 - 4e6) / 10e6)  # large frames
    assert video_decode_cost(2, 2, 1, 8_200_000, "vp9") == pytest.approx((8.2e6 - 0.2e6) / 65_000)  # dense VP9
    assert video_decode_cost(2, 2, 1, 8_200_000, "h264") == pytest.approx((8.2e6 - 0.2e6) / 150_000)
    assert video_decode_cost(10, 10_010, 1, 0) == pytest.approx(10_000 / 140)  # tiny frames at a high rate
    assert video_decode_cost(2, 2, 11_000_000, 8_200_000, "vp9") == pytest.approx(8e6 / 65_000)  # the larger


def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_a_decode_closed_while_frames_are_prefetched_stops_its_child_and_frees_the_lane(clip):
    import time

    from nsfw_core.base.settings import load_settings
    from nsfw_core.inference.pipeline import Decoder

    class Model:
        input_size = 224

    decoder = Decoder(load_settings(environ={}, decode_processes=1).decode_limits)
    try:
        long = videos.make("webm", "vp8", seconds=60, fps=5, size=(64, 48))
        decode = decoder.video(Model, long, synchronous=False)  # type: ignore[arg-type]
        info = decode.start()
        assert len(info.samples) == 60 and len(decode.take(2)) == 2
        t0 = time.monotonic()
        decode.close()  # mid-stream: the reader thread is taking frames off the child's pipe meanwhile
        assert time.monotonic() - t0 < 5 and not decoder.sandbox._idle  # killed, not kept
        assert decoder.budget.free == decoder.budget.capacity  # its share of the pixel budget is back
        with decoder.video(Model, clip) as again:  # type: ignore[arg-type]
            again.start()
            assert len(again.take()) == 5  # the lane's one slot is free again
    finally:
        decoder.close()
