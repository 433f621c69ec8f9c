"""nsfw_core.images.structure: decoding cost read from declared structure, and decode.plan's limits."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from nsfw_core.base.errors import ImageTooLarge, UndecodableImage
from nsfw_core.images import decode, structure
from tests.helpers import hostile


def _jpeg(size: tuple[int, int], *, progressive: bool, mode: str = "RGB", subsampling: int = 2) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (10, 200, 30)).save(buf, "JPEG", progressive=progressive,
                                                                       subsampling=subsampling)
    return buf.getvalue()


def test_baseline_jpeg_has_one_scan_and_its_sampling() -> None:
    layout = structure.jpeg_layout(_jpeg((64, 48), progressive=False))
    assert layout == structure.JpegLayout(progressive=False, sampling=((2, 2), (1, 1), (1, 1)), scans=1)


def layout_of(data: bytes) -> structure.JpegLayout:
    """The layout of a JPEG whose headers can be read."""
    layout = structure.jpeg_layout(data)
    assert layout is not None
    return layout


def test_progressive_jpeg_scans_are_counted() -> None:
    grey = _jpeg((64, 48), progressive=True, mode="L")
    colour = _jpeg((64, 48), progressive=True)
    assert layout_of(grey).scans == 6  # libjpeg's simple progression for one component
    assert layout_of(colour).scans == 10  # and for three
    assert layout_of(hostile.progressive_scans(64, 500)).scans == 506


def test_jpeg_layout_of_damaged_headers_is_none() -> None:
    data = _jpeg((16, 16), progressive=False)
    assert structure.jpeg_layout(data[:20]) is None
    assert structure.jpeg_layout(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan before any frame header


def test_plan_of_a_drafted_jpeg_counts_the_drafted_pixels() -> None:
    data = _jpeg((4000, 3000), progressive=False)
    plan = decode.plan(data, draft_size=896)
    assert (plan.format, plan.width, plan.height) == ("jpeg", 4000, 3000)
    assert plan.cost == structure.Cost(pixels=2000 * 1500, work=4000 * 3000)
    assert plan.cost.inline


def test_progressive_jpeg_holds_full_resolution_coefficients_even_drafted() -> None:
    plan = decode.plan(_jpeg((4000, 3000), progressive=True), draft_size=896)
    # 4:2:0: Y at full size, Cb and Cr at half each way (rows rounded up to 8: 1504);
    # 2 bytes a coefficient, counted in 4-byte pixels
    coefficients = 4000 * 3000 + 2 * 2000 * 1504
    assert plan.cost.pixels == coefficients * 2 // 4
    assert plan.cost.scans == 10
    assert plan.cost.work == 4000 * 3000 * 10
    assert not plan.cost.inline


def test_jpeg_over_the_scan_limit_is_413_with_the_counts() -> None:
    data = hostile.progressive_scans(64, 200)
    with pytest.raises(ImageTooLarge) as info:
        decode.plan(data, max_scans=100)
    assert info.value.details["scans"] == 206 and info.value.details["max_scans"] == 100
    with pytest.raises(ImageTooLarge):
        decode.decode(data, max_scans=100)
    assert decode.decode(data, max_scans=206).shape == (64, 64, 3)


@pytest.mark.parametrize("compression", [1, 5, 8, 32773])
def test_tiff_tile_larger_than_the_limit_is_413_before_decoding(compression: int) -> None:
    data = hostile.tiff(compression=compression, data=zlib.compress(b"\0" * 256) if compression == 8 else None)
    with pytest.raises(ImageTooLarge) as info:
        decode.plan(data)
    assert info.value.details["decode_pixels"] == 46000 * 46000 // 4
    assert "46000x46000 tiles" in info.value.message


def test_tiff_strip_rows_are_capped_at_the_image_height() -> None:
    plan = decode.plan(hostile.tiff(64, 64, tile=None, rows_per_strip=10**9, samples=3))
    assert plan.cost.pixels == 64 * 64
    assert not plan.cost.inline  # every TIFF decodes in the isolated lane


def test_tiff_cost_counts_deep_samples() -> None:
    plan = decode.plan(hostile.tiff(100, 100, tile=None, bits=16, samples=1))
    assert plan.cost.pixels == 100 * 100  # 2 bytes a pixel is still under the 4-byte output pixel
    with pytest.raises(ImageTooLarge):
        decode.plan(hostile.tiff(100, 100, tile=(4096, 4096), bits=16, samples=1), max_pixels=4096 * 4096 // 4)


def test_png_cost_is_its_pixels_whatever_the_aspect_ratio() -> None:
    plan = decode.plan(hostile.png(2_000_000, 1))
    assert plan.cost == structure.Cost(pixels=2_000_000, work=2_000_000)
    assert plan.cost.inline
    assert not decode.plan(hostile.png(50_000_000, 1)).cost.inline


def test_max_pixels_exactly_the_image_still_decodes() -> None:
    for data in (hostile.png(40, 30), _jpeg((40, 30), progressive=True), hostile.tiff(40, 30, tile=None)):
        assert decode.decode(data, max_pixels=1200).shape == (30, 40, 3)


def test_sequential_jpeg_with_repeated_scans_fails_fast_and_counts_one_scan() -> None:
    buf = io.BytesIO()
    Image.new("L", (2048, 2048), 128).save(buf, "JPEG")
    data = buf.getvalue()
    scan = data[data.index(b"\xff\xda"):data.rindex(b"\xff\xd9")]
    evil = data[:-2] + scan * 200 + b"\xff\xd9"
    assert layout_of(evil).scans == 1
    import time

    started = time.perf_counter()
    with pytest.raises(UndecodableImage):  # libjpeg refuses the second scan of a sequential JPEG at once
        decode.decode(evil)
    assert time.perf_counter() - started < 1.0
