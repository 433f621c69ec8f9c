"""nsfw_core.images.decode: formats, modes, orientation, transparency, limits and errors.

Every fixture is generated here with Pillow (or by hand, byte by byte, where
Pillow refuses to write it), except the reference JPEGs in tests/fixtures.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import time
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageFile

from nsfw_core.base.errors import ImageTooLarge, NotAnImage, NSFWError, UndecodableImage
from nsfw_core.images import decode as decode_module
from nsfw_core.images.decode import DEFAULT_MAX_PIXELS, FORMATS, decode, plan, sniff
from tests.helpers.paths import ROOT
from tests.helpers.pillow import frame_count

REFERENCE_JPEGS = sorted((ROOT / "tests" / "fixtures" / "reference").glob("*.jpg"))
RED = (200, 30, 60)
ORIENTATION = 0x0112


def image_info(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, str | int]:
    """What :func:`plan` reads from the header alone: the format and the displayed size (EXIF orientation applied)."""
    found = plan(data, max_pixels=max_pixels)
    return {"format": found.format, "width": found.width, "height": found.height}


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def handmade_png(width: int, height: int, *, depth: int = 8, colour_type: int = 2, rows: bytes = b"") -> bytes:
    """A PNG written byte by byte: IHDR with any size, IDAT with the given (filtered) rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def assert_rgb_array(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)
    assert arr.flags.c_contiguous
    assert arr.flags.writeable


def assert_close(actual: object, expected: tuple[int, int, int], tolerance: int) -> None:
    diff = np.abs(np.asarray(actual, dtype=int) - np.asarray(expected, dtype=int))
    assert diff.max() <= tolerance, f"{tuple(np.asarray(actual))} != {expected} (±{tolerance})"


def exif_with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = value
    return exif


def left_red_right_blue(width: int, height: int) -> Image.Image:
    img = Image.new("RGB", (width, height), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, width // 2, height))
    return img


# --- sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"\xff\xd8\xff\xe0rest", "jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "png"),
        (b"GIF87a....", "gif"),
        (b"GIF89a....", "gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "webp"),
        (b"BM\x00\x00", "bmp"),
        (b"II*\x00\x08\x00", "tiff"),
        (b"MM\x00*\x00\x00", "tiff"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"GIF90a", None),
        (b"\xff\xd8", None),
        (b"", None),
        (b"<html>", None),
    ],
)
def test_sniff_uses_magic_bytes_only(prefix: bytes, expected: str | None) -> None:
    assert sniff(prefix) == expected


def test_formats_table() -> None:
    assert FORMATS == {
        "jpeg": "image/jpeg",
        "png": "image/png",
        "gif": "image/gif",
        "webp": "image/webp",
        "bmp": "image/bmp",
        "tiff": "image/tiff",
    }


# --- every format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 4),
        ("PNG", {}, 0),
        ("GIF", {}, 0),
        ("WEBP", {"quality": 95}, 6),
        ("WEBP", {"lossless": True}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("TIFF", {"compression": "tiff_adobe_deflate"}, 0),
        ("TIFF", {"compression": "jpeg"}, 4),
    ],
)
def test_each_format_decodes_to_shape_and_colour(fmt: str, params: dict[str, Any], tolerance: int) -> None:
    data = encode(Image.new("RGB", (24, 16), RED), fmt, **params)
    arr = decode(data)
    assert_rgb_array(arr, (16, 24))
    assert_close(arr[8, 12], RED, tolerance)
    assert_close(arr.reshape(-1, 3).mean(axis=0).round(), RED, tolerance)


def test_greyscale_jpeg() -> None:
    arr = decode(encode(Image.new("L", (16, 16), 90), "JPEG", quality=95))
    assert_rgb_array(arr, (16, 16))
    assert_close(arr[4, 4], (90, 90, 90), 2)


def test_progressive_jpeg() -> None:
    arr = decode(encode(Image.new("RGB", (64, 48), RED), "JPEG", quality=95, progressive=True))
    assert_rgb_array(arr, (48, 64))
    assert_close(arr[20, 20], RED, 4)


@pytest.mark.parametrize("path", REFERENCE_JPEGS, ids=lambda p: p.name)
def test_reference_jpegs(path: Path) -> None:
    expected = {
        "glasses.jpg": (880, 1330),
        "house.jpg": (1024, 1536),
        "nsfwjs_logo.jpg": (382, 953),
        "smile.jpg": (418, 480),
    }
    data = path.read_bytes()
    arr = decode(data)
    assert_rgb_array(arr, expected[path.name])
    assert 10 < arr.mean() < 245  # real content, not a blank frame
    assert image_info(data) == {"format": "jpeg", "width": arr.shape[1], "height": arr.shape[0]}


def test_reference_jpegs_are_present() -> None:
    assert len(REFERENCE_JPEGS) == 4


# --- modes ------------------------------------------------------------------------------------


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    # C=0 M=255 Y=255 K=0 is red; Pillow writes (and reads back) Adobe inverted CMYK.
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    arr = decode(data)
    assert_rgb_array(arr, (16, 16))
    assert_close(arr[8, 8], (255, 0, 0), 4)


def test_cmyk_tiff() -> None:
    arr = decode(encode(Image.new("CMYK", (4, 2), (0, 0, 255, 0)), "TIFF"))
    assert arr[0, 0].tolist() == [255, 255, 0]


def test_ycbcr_tiff() -> None:
    img = Image.new("RGB", (4, 2), RED).convert("YCbCr")
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    assert_close(decode(data)[1, 3], RED, 3)


def test_lab_tiff() -> None:
    data = encode(Image.new("LAB", (4, 2), (255, 128, 128)), "TIFF")  # L=100, a=b=0: white
    assert_close(decode(data)[0, 0], (255, 255, 255), 3)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_one_bit(fmt: str) -> None:
    img = Image.new("1", (8, 2), 0)
    img.putpixel((1, 0), 1)
    arr = decode(encode(img, fmt))
    assert_rgb_array(arr, (2, 8))
    assert arr[0, 1].tolist() == [255, 255, 255]
    assert arr[0, 0].tolist() == [0, 0, 0]
    assert arr[1, 1].tolist() == [0, 0, 0]


def test_palette_png_without_transparency() -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    assert decode(encode(img, "PNG"))[2, 2].tolist() == list(RED)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([[65535, 32768, 256, 255, 0]], dtype=np.uint16)
    data = encode(Image.fromarray(values), fmt)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    arr = decode(data)
    assert_rgb_array(arr, (1, 5))
    assert arr[0, :, 0].tolist() == [255, 128, 1, 0, 0]
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_16_bit_greyscale_png_written_by_hand() -> None:
    rows = b"\x00" + struct.pack(">HH", 65535, 32768)
    arr = decode(handmade_png(2, 1, depth=16, colour_type=0, rows=rows))
    assert arr[0, :, 0].tolist() == [255, 128]


def test_16_bit_big_endian_tiff() -> None:
    img = Image.new("I;16B", (2, 1))
    img.putpixel((0, 0), 65535)
    img.putpixel((1, 0), 32768)
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    assert decode(data)[0, :, 0].tolist() == [255, 128]


def test_32_bit_integer_tiff_is_treated_as_16_bit_range() -> None:
    values = np.array([[65535, 32768, -7, 1_000_000]], dtype=np.int32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert decode(data)[0, :, 0].tolist() == [255, 128, 0, 255]


def test_float_tiff_is_clipped() -> None:
    values = np.array([[-5.0, 0.4, 127.6, 300.0, np.nan, np.inf]], dtype=np.float32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert decode(data)[0, :, 0].tolist() == [0, 0, 128, 255, 0, 255]


def test_16_bit_rgb_png() -> None:
    rows = b"\x00" + struct.pack(">HHH", 65535, 32768, 256)
    arr = decode(handmade_png(1, 1, depth=16, colour_type=2, rows=rows))
    assert arr[0, 0].tolist() == [255, 128, 1]


def test_16_bit_rgba_png_is_composited() -> None:
    rows = b"\x00" + struct.pack(">HHHH", 0, 0, 0, 0)  # fully transparent black
    assert decode(handmade_png(1, 1, depth=16, colour_type=6, rows=rows))[0, 0].tolist() == [255, 255, 255]


# --- transparency ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_fully_transparent_red_becomes_white(fmt: str) -> None:
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), fmt, **params)
    assert decode(data)[1, 1].tolist() == [255, 255, 255]


def test_half_transparent_black_becomes_mid_grey() -> None:
    arr = decode(encode(Image.new("RGBA", (2, 2), (0, 0, 0, 128)), "PNG"))
    assert arr[0, 0].tolist() in ([127, 127, 127], [128, 128, 128])


def test_alpha_blend_is_numerically_correct() -> None:
    alpha = np.arange(256, dtype=np.uint8)
    rgba = np.zeros((1, 256, 4), dtype=np.uint8)
    rgba[0, :, 0] = 200  # red channel 200, green/blue 0
    rgba[0, :, 3] = alpha
    arr = decode(encode(Image.fromarray(rgba), "PNG")).astype(int)
    a = alpha / 255.0
    expected_red = 200 * a + 255 * (1 - a)
    expected_other = 255 * (1 - a)
    assert np.abs(arr[0, :, 0] - expected_red).max() <= 1
    assert np.abs(arr[0, :, 1] - expected_other).max() <= 1
    assert arr[0, 255].tolist() == [200, 0, 0]
    assert arr[0, 0].tolist() == [255, 255, 255]


def test_opaque_rgba_keeps_colour() -> None:
    assert decode(encode(Image.new("RGBA", (2, 2), (*RED, 255)), "PNG"))[0, 0].tolist() == list(RED)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_becomes_white(fmt: str) -> None:
    img = Image.new("P", (4, 2), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    img.putpixel((3, 1), 1)
    arr = decode(encode(img, fmt, transparency=0))
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[1, 3].tolist() == [0, 255, 0]


def test_rgb_png_with_colour_key_becomes_white() -> None:
    img = Image.new("RGB", (2, 1), (255, 0, 0))
    img.putpixel((1, 0), (0, 0, 255))
    arr = decode(encode(img, "PNG", transparency=(255, 0, 0)))
    assert arr[0].tolist() == [[255, 255, 255], [0, 0, 255]]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_la(fmt: str) -> None:
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (0, 255))
    arr = decode(encode(img, fmt))
    assert arr[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_pa_tiff() -> None:
    img = Image.new("PA", (2, 1), (0, 0))
    img.putpalette([*RED] + [0, 0, 0] * 255)
    img.putpixel((1, 0), (0, 255))
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "PA"
    assert decode(data)[0].tolist() == [[255, 255, 255], list(RED)]


def test_premultiplied_rgba_tiff() -> None:
    # An RGBA TIFF re-labelled as associated alpha (ExtraSamples=1); Pillow un-premultiplies it
    # while decoding (rawmode RGBa), so the colour must come out as half-transparent pure red.
    data = encode(Image.new("RGBA", (2, 1), (128, 0, 0, 128)), "TIFF")
    unassociated = b"\x52\x01\x03\x00\x01\x00\x00\x00\x02\x00"
    assert data.count(unassociated) == 1
    data = data.replace(unassociated, unassociated[:-2] + b"\x01\x00")
    args = Image.open(io.BytesIO(data)).tile[0].args
    assert isinstance(args, tuple) and args[0] == "RGBa"
    assert_close(decode(data)[0, 0], (255, 127, 127), 1)  # premultiplied red at 50%: pink on white


# --- frames and orientation ------------------------------------------------------------------


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert frame_count(data) == 3
    assert decode(data)[4, 4].tolist() == [255, 0, 0]


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=50)
    assert frame_count(data) == 2
    assert decode(data)[4, 4].tolist() == [255, 0, 0]


def test_multipage_tiff_gives_first_page() -> None:
    pages = [Image.new("RGB", (6, 4), (0, 0, 255)), Image.new("RGB", (3, 3), (0, 255, 0))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    arr = decode(data)
    assert_rgb_array(arr, (4, 6))
    assert arr[0, 0].tolist() == [0, 0, 255]


def test_exif_orientation_6_rotates_png_exactly() -> None:
    # Stored 2 wide, 1 tall: red | blue.  Orientation 6 = rotate 90° clockwise to display.
    data = encode(left_red_right_blue(2, 1), "PNG", exif=exif_with_orientation(6))
    arr = decode(data)
    assert_rgb_array(arr, (2, 1))
    assert arr[:, 0].tolist() == [[255, 0, 0], [0, 0, 255]]
    assert image_info(data) == {"format": "png", "width": 1, "height": 2}


@pytest.mark.parametrize(
    ("orientation", "shape", "red_at"),
    [
        (1, (16, 32), (8, 4)),
        (3, (16, 32), (8, 28)),  # 180°: red moves right
        (6, (32, 16), (4, 8)),  # 90° clockwise: red (left) moves to the top
        (8, (32, 16), (28, 8)),  # 90° counter-clockwise: red moves to the bottom
    ],
)
def test_exif_orientation_jpeg(orientation: int, shape: tuple[int, int], red_at: tuple[int, int]) -> None:
    data = encode(left_red_right_blue(32, 16), "JPEG", quality=95, exif=exif_with_orientation(orientation))
    arr = decode(data)
    assert_rgb_array(arr, shape)
    assert_close(arr[red_at], (255, 0, 0), 12)
    assert image_info(data)["width"] == shape[1]


def test_exif_orientation_keeps_palette_and_transparency() -> None:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    img.putpixel((1, 0), 1)
    data = encode(img, "PNG", exif=exif_with_orientation(6), transparency=1)
    assert decode(data)[:, 0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_mpo_gives_first_frame_and_honours_draft() -> None:
    frames = [Image.new("RGB", (800, 600), (255, 0, 0)), Image.new("RGB", (800, 600), (0, 255, 0))]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert frame_count(data) == 2
    assert_close(decode(data)[300, 400], (255, 0, 0), 2)
    assert decode(data, draft_size=100).shape == (150, 200, 3)
    assert image_info(data) == {"format": "jpeg", "width": 800, "height": 600}


def test_exif_orientation_tiff_tag() -> None:
    data = encode(left_red_right_blue(2, 1), "TIFF", tiffinfo={ORIENTATION: 8})
    arr = decode(data)
    assert arr[:, 0].tolist() == [[0, 0, 255], [255, 0, 0]]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_broken_exif_is_ignored() -> None:
    data = encode(Image.new("RGB", (8, 4), RED), "JPEG", quality=95, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7fjunk")
    arr = decode(data)
    assert_rgb_array(arr, (4, 8))
    assert image_info(data)["width"] == 8


def test_exif_with_nonsense_orientation_value_is_ignored() -> None:
    data = encode(Image.new("RGB", (8, 4), RED), "JPEG", exif=exif_with_orientation(77))
    assert decode(data).shape == (4, 8, 3)


# --- not images --------------------------------------------------------------------------------


def _ico() -> bytes:
    return encode(Image.new("RGB", (16, 16)), "ICO")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.png", encode(Image.new("RGB", (2, 2)), "PNG"))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (b"", "empty body"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "HTML page"),
        (b"\xef\xbb\xbf\n  <html lang=en>", "HTML page"),
        (b"just some text\n", "text"),
        ("caf\u00e9 \u2014 ok\n".encode(), "text"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF document"),
        (gzip.compress(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "gzip stream"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG image"),
        (b"<svg width='10'/>", "SVG image"),
        (_ico(), "ICO icon"),
        (_zip(), "ZIP archive"),
        (b"\x00\x01\x02\x03\xfe", "unknown binary data"),
        (b" \xff\xd8\xff\xe0", "unknown binary data"),  # a JPEG after a leading space is not a JPEG
    ],
)
def test_not_an_image(data: bytes, detected: str) -> None:
    with pytest.raises(NotAnImage) as info:
        decode(data)
    assert info.value.status == 415
    assert info.value.code == "not_an_image"
    assert info.value.details["detected"] == detected
    assert detected in info.value.message
    with pytest.raises(NotAnImage):
        image_info(data)


# --- truncated and corrupt -------------------------------------------------------------------


def _assert_undecodable(data: bytes) -> UndecodableImage:
    with pytest.raises(UndecodableImage) as info:
        decode(data)
    assert info.value.status == 422
    assert info.value.code == "undecodable_image"
    return info.value


@pytest.mark.parametrize("path", REFERENCE_JPEGS, ids=lambda p: p.name)
def test_truncated_reference_jpeg(path: Path) -> None:
    data = path.read_bytes()
    error = _assert_undecodable(data[: len(data) // 2])
    assert error.details == {"format": "jpeg"}
    assert isinstance(error.__cause__, Exception)


def test_truncated_jpeg_fails_even_if_someone_enabled_truncated_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    data = REFERENCE_JPEGS[0].read_bytes()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _assert_undecodable(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_truncated_generated_images(fmt: str) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    for cut in (len(data) // 2, len(data) - 40, 20):
        _assert_undecodable(data[:cut])


def test_header_only_jpeg() -> None:
    _assert_undecodable(b"\xff\xd8\xff")


def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk of a PNG."""
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((pos, data[pos + 4 : pos + 8], length))
        pos += 12 + length
    return chunks


def _noise_png() -> bytes:
    return encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)), "PNG")


def test_corrupt_png_crc() -> None:
    data = bytearray(_noise_png())
    offset, kind, length = _png_chunks(bytes(data))[0]
    assert kind == b"IHDR"
    data[offset + 8 + length] ^= 0xFF  # first byte of the IHDR CRC
    _assert_undecodable(bytes(data))


def test_corrupt_png_idat_stream() -> None:
    data = bytearray(_noise_png())
    offset, kind, length = next(c for c in _png_chunks(bytes(data)) if c[1] == b"IDAT")
    data[offset + 8 : offset + 8 + 2] = b"\xff\xff"  # zlib header of the pixel stream
    _assert_undecodable(bytes(data))


def test_corrupt_png_idat_payload_garbage() -> None:
    data = bytearray(_noise_png())
    offset, kind, length = next(c for c in _png_chunks(bytes(data)) if c[1] == b"IDAT")
    start = offset + 8 + 2
    data[start : start + 64] = bytes(range(64))
    _assert_undecodable(bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        handmade_png(0, 5, rows=b""),
        handmade_png(5, 0, rows=b""),
        b"BM" + b"\x00" * 12 + struct.pack("<IiiHH", 40, 0, 1, 1, 24) + b"\x00" * 24,
    ],
    ids=["png-zero-width", "png-zero-height", "bmp-zero-width"],
)
def test_zero_sized_images(data: bytes) -> None:
    _assert_undecodable(data)


# --- size limits -----------------------------------------------------------------------------


def _huge_png() -> bytes:
    return handmade_png(50_000, 50_000, rows=b"\x00" * 16)


def test_huge_declared_png_is_rejected_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pixels(self: object) -> None:
        raise AssertionError("pixels were loaded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        decode(_huge_png())
    assert time.perf_counter() - start < 1.0
    assert info.value.status == 413
    assert info.value.code == "image_too_large"
    assert info.value.details == {"width": 50_000, "height": 50_000, "max_pixels": 50_000_000}
    assert info.value.__cause__ is None  # our check, not Pillow's DecompressionBombError


def test_huge_declared_png_keeps_memory_small() -> None:
    script = (
        "import resource, sys\n"
        "from nsfw_core.images.decode import decode\n"
        "from nsfw_core.base.errors import ImageTooLarge\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    decode(sys.stdin.buffer.read())\n"
        "except ImageTooLarge:\n"
        "    pass\n"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=_huge_png(), capture_output=True, check=True, cwd=ROOT, timeout=60
    )
    before_kib, after_kib = map(int, done.stdout.split())
    assert after_kib - before_kib < 20_000  # under 20 MB, where 50k x 50k RGB would be 7.5 GB


def _gif_with_first_frame(side: int) -> bytes:
    """A 1x1 GIF whose only frame claims to be side x side (Pillow grows the image to fit it)."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    descriptor = data.index(b",")
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", side, side)
    return bytes(data)


def _webp_with_canvas(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


@pytest.mark.parametrize(
    "build",
    [lambda side: handmade_png(side, side), _gif_with_first_frame, lambda side: _webp_with_canvas(side, side)],
    ids=["png", "gif-frame-larger-than-screen", "webp"],
)
@pytest.mark.parametrize("side", [10_000, 13_000])
def test_pillow_bomb_check_neither_warns_nor_fires_first(build: object, side: int) -> None:
    # 10,000^2 is over Pillow's warning threshold (~89 Mpx), 13,000^2 over its error one (~179 Mpx).
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLarge) as info:
            decode(build(side))  # type: ignore[operator]
    assert [str(w.message) for w in caught] == []
    assert (info.value.details["width"], info.value.details["height"]) == (side, side)
    assert info.value.__cause__ is None
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # untouched: other threads rely on it


def test_pillow_bomb_error_still_maps_to_413_when_our_limit_is_higher() -> None:
    # With max_pixels above Pillow's own limit, Pillow's check inside the GIF plugin fires first.
    with pytest.raises(ImageTooLarge) as info:
        decode(_gif_with_first_frame(60_000), max_pixels=10**10)
    assert info.value.details == {"format": "gif"}
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)


def test_gif_frame_size_is_read_like_pillow_reads_it() -> None:
    frames = [Image.new("P", (30, 20), i) for i in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0, comment=b"hello")
    assert decode_module._gif_first_frame_size(data) == (30, 20)
    assert decode_module._gif_first_frame_size(_gif_with_first_frame(77)) == (77, 77)


def test_huge_declared_webp_canvas_is_rejected_before_opening(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's WebP plugin would allocate the 16,000 x 16,000 canvas while opening.
    monkeypatch.setattr(decode_module, "_open", lambda *_: pytest.fail("opened"))
    with pytest.raises(ImageTooLarge) as info:
        decode(_webp_with_canvas(16_000, 16_000))
    assert (info.value.details["width"], info.value.details["height"]) == (16_000, 16_000)


@pytest.mark.parametrize("params", [{}, {"lossless": True}], ids=["lossy", "lossless"])
def test_webp_header_size_matches_pillow(params: dict[str, Any]) -> None:
    data = encode(Image.new("RGB", (123, 45), RED), "WEBP", **params)
    with pytest.raises(ImageTooLarge) as info:
        decode(data, max_pixels=123 * 45 - 1)
    assert (info.value.details["width"], info.value.details["height"]) == (123, 45)


def test_huge_declared_gif_screen() -> None:
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen size
    with pytest.raises(ImageTooLarge) as info:
        decode(bytes(data))
    assert info.value.details["width"] == 65535


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_max_pixels_smaller_than_image(fmt: str) -> None:
    data = encode(Image.new("RGB", (40, 30), RED), fmt)
    with pytest.raises(ImageTooLarge) as info:
        decode(data, max_pixels=1199)
    assert info.value.status == 413
    assert info.value.details == {"width": 40, "height": 30, "max_pixels": 1199}
    assert decode(data, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ImageTooLarge):
        image_info(data, max_pixels=1199)


# --- draft -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(Image.new("RGB", (4000, 3000), RED), "JPEG", quality=90)


def test_draft_size_reduces_large_jpeg(big_jpeg: bytes) -> None:
    arr = decode(big_jpeg, draft_size=448)
    assert 448 <= min(arr.shape[:2]) < 3000
    assert arr.shape == (750, 1000, 3)  # 1/4 scale; 1/8 would be 375 < 448
    assert_close(arr[100, 100], RED, 4)
    assert decode(big_jpeg).shape == (3000, 4000, 3)


@pytest.mark.parametrize(
    ("size", "draft_size"),
    [((4000, 500), 62), ((4000, 500), 63), ((500, 4000), 63), ((999, 1001), 124), ((64, 64), 448), ((3000, 3000), 1)],
)
def test_draft_keeps_both_sides_at_least_draft_size(size: tuple[int, int], draft_size: int) -> None:
    arr = decode(encode(Image.new("RGB", size, RED), "JPEG"), draft_size=draft_size)
    height, width = arr.shape[:2]
    assert min(height, width) >= min(draft_size, *size)
    assert width * 8 >= size[0] and height * 8 >= size[1]


def test_draft_with_exif_rotation() -> None:
    data = encode(Image.new("RGB", (4000, 3000), RED), "JPEG", exif=exif_with_orientation(6))
    assert decode(data, draft_size=448).shape == (1000, 750, 3)


def test_draft_on_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (2000, 1600), (0, 255, 255, 0)), "JPEG")
    arr = decode(data, draft_size=448)
    assert arr.shape == (800, 1000, 3)
    assert_close(arr[10, 10], (255, 0, 0), 4)


def test_draft_is_ignored_for_other_formats() -> None:
    data = encode(Image.new("RGB", (1200, 900), RED), "PNG")
    assert decode(data, draft_size=100).shape == (900, 1200, 3)


def test_draft_size_must_be_positive(big_jpeg: bytes) -> None:
    with pytest.raises(ValueError):
        decode(big_jpeg, draft_size=0)


# --- image_info -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_image_info(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("RGB", (37, 21), RED), fmt)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded pixels"))
    info = image_info(data)
    assert info == {"format": fmt.lower(), "width": 37, "height": 21}
    assert json.loads(json.dumps(info)) == info


def test_image_info_of_huge_image() -> None:
    with pytest.raises(ImageTooLarge) as info:
        image_info(_huge_png())
    assert info.value.details["height"] == 50_000


def test_image_info_of_corrupt_header() -> None:
    with pytest.raises(UndecodableImage):
        image_info(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)


# --- concurrency ----------------------------------------------------------------------------


def test_concurrent_decodes_are_independent(big_jpeg: bytes) -> None:
    good = encode(Image.new("RGBA", (30, 20), (0, 0, 0, 0)), "PNG")
    truncated = REFERENCE_JPEGS[0].read_bytes()[:5000]
    cases = [(good, None), (truncated, None), (_huge_png(), None), (big_jpeg, 448), (b"<html>", None)] * 8

    def outcome(case: tuple[bytes, int | None]) -> object:
        try:
            arr = decode(case[0], draft_size=case[1])
        except NSFWError as exc:
            return exc.status
        return (arr.shape, arr[0, 0].tolist())

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(outcome, cases))
    expected = [((20, 30, 3), [255, 255, 255]), 422, 413, ((750, 1000, 3), list(decode(big_jpeg, draft_size=448)[0, 0])), 415]
    assert results == expected * 8


# --- JPEG fast path (simplejpeg) ----------------------------------------------------------------


def photo_like(width: int, height: int, *, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: every DCT coefficient and chroma sample matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=2)
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(noisy, "RGB")
    return img.convert(mode) if mode != "RGB" else img


def decode_both(data: bytes, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fast path, Pillow path) for the same bytes; fails if the fast path did not run."""
    calls = []
    real = simplejpeg.decode_jpeg  # the module decode's fast path calls

    def counting(*args: object, **kw: object) -> np.ndarray:
        calls.append(1)
        out: np.ndarray = real(*args, **kw)
        return out

    monkeypatch.setattr(simplejpeg, "decode_jpeg", counting)
    fast = decode(data, **kwargs)
    assert calls, "the fast path did not run"
    monkeypatch.setattr(decode_module, "_simplejpeg", None)
    slow = decode(data, **kwargs)
    monkeypatch.undo()
    return fast, slow


JPEG_VARIANTS: dict[str, dict[str, Any]] = {
    "4:2:0": {"subsampling": 2},
    "4:2:2": {"subsampling": 1},
    "4:4:4": {"subsampling": 0},
    "progressive": {"progressive": True},
    "rgb-coded": {"keep_rgb": True, "subsampling": 0},
    "quality-30": {"quality": 30},
}


@pytest.mark.parametrize("variant", JPEG_VARIANTS, ids=str)
@pytest.mark.parametrize("size", [(97, 61), (640, 480), (1283, 803)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("draft_size", [None, 224, 896], ids=lambda d: f"draft-{d}")
def test_fast_jpeg_path_gives_pillows_pixels(variant: str, size: tuple[int, int], draft_size: int | None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(photo_like(*size), "JPEG", **JPEG_VARIANTS[variant])
    fast, slow = decode_both(data, monkeypatch, draft_size=draft_size)
    assert fast.shape == slow.shape
    assert np.array_equal(fast, slow)
    assert_rgb_array(fast, fast.shape[:2])


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("draft_size", [None, 100])
def test_fast_jpeg_path_orients_like_pillow(orientation: int, draft_size: int | None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(photo_like(450, 250, seed=orientation), "JPEG", exif=exif_with_orientation(orientation))
    fast, slow = decode_both(data, monkeypatch, draft_size=draft_size)
    assert np.array_equal(fast, slow)
    assert_rgb_array(fast, fast.shape[:2])
    if orientation >= 5:
        assert fast.shape[0] > fast.shape[1]  # portrait after turning


def test_fast_jpeg_path_greyscale(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = decode_both(encode(photo_like(300, 200, mode="L"), "JPEG"), monkeypatch)
    assert np.array_equal(fast, slow)
    assert np.array_equal(fast[..., 0], fast[..., 2])


@pytest.mark.parametrize("path", REFERENCE_JPEGS, ids=lambda p: p.name)
def test_fast_jpeg_path_reference_images(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for draft_size in (None, 896):
        fast, slow = decode_both(path.read_bytes(), monkeypatch, draft_size=draft_size)
        assert np.array_equal(fast, slow)


def test_cmyk_jpeg_takes_the_pillow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("simplejpeg must not see a CMYK JPEG")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    arr = decode(encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG"))
    assert_close(arr[5, 10], (255, 0, 0), 8)


def test_truncated_jpeg_still_fails_with_422_after_the_fast_path() -> None:
    data = encode(photo_like(640, 480), "JPEG")
    with pytest.raises(UndecodableImage, match="truncated or corrupt"):
        decode(data[: len(data) // 2])


def test_jpeg_that_libjpeg_warns_about_decodes_like_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Junk before a marker is a libjpeg warning: the strict fast path refuses, Pillow decodes it."""
    data = encode(photo_like(64, 48), "JPEG")
    sof = data.index(b"\xff\xc0")
    junk = data[:sof] + b"\x00\x00" + data[sof:]
    assert decode_module._decode_jpeg_fast(junk, decode_module._open(junk, "jpeg"), None, 1) is None
    monkeypatch.setattr(decode_module, "_simplejpeg", None)
    expected = decode(junk)
    monkeypatch.undo()
    assert np.array_equal(decode(junk), expected)


@pytest.mark.parametrize(("width", "height", "draft_size", "scale"), [
    (4000, 3000, 896, 2), (4000, 3000, 448, 4), (4000, 3000, 224, 8), (900, 900, 896, 1),
    (100, 100, 224, 1), (1800, 900, 224, 4), (1791, 1791, 224, 4), (1792, 1792, 224, 8),
])
def test_draft_scale_matches_pillow(width: int, height: int, draft_size: int, scale: int) -> None:
    assert decode_module._draft_scale(width, height, draft_size) == scale
    img = Image.open(io.BytesIO(encode(Image.new("RGB", (width, height)), "JPEG")))
    img.draft("RGB", (draft_size, draft_size))
    assert img.size == (-(-width // scale), -(-height // scale))
