"""The magic-byte sniffer (``nsfw_core.images.sniff``), shared by the decoder and the review queue's export."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsfw_core.images import decode, sniff
from nsfw_core.state.review import image_suffix

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"

CASES = [
    (b"\xff\xd8\xff\xe0rest", "jpeg", ".jpg"),
    (b"\x89PNG\r\n\x1a\nrest", "png", ".png"),
    (b"GIF87a....", "gif", ".gif"),
    (b"GIF89a....", "gif", ".gif"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "webp", ".webp"),
    (b"BM\x00\x00", "bmp", ".bmp"),
    (b"II*\x00\x08\x00", "tiff", ".tif"),
    (b"MM\x00*\x00\x00", "tiff", ".tif"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", None, None),
    (b"GIF90a", None, None),
    (b"\xff\xd8", None, None),
    (b"", None, None),
    (b"<html>", None, None),
]


@pytest.mark.parametrize(("data", "fmt", "suffix"), CASES)
def test_sniff_and_suffix(data: bytes, fmt: str | None, suffix: str | None) -> None:
    assert sniff.sniff(data) == fmt
    assert sniff.suffix(data) == suffix
    assert image_suffix(data) == (suffix or ".jpg")  # the export names unknown bytes .jpg, as before


def test_tables() -> None:
    assert list(sniff.FORMATS) == ["jpeg", "png", "gif", "webp", "bmp", "tiff"]
    assert sniff.SUFFIXES == {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "webp": ".webp", "bmp": ".bmp",
                              "tiff": ".tif"}


def test_a_real_file() -> None:
    data = (REFERENCE / "house.jpg").read_bytes()
    assert (sniff.sniff(data), sniff.suffix(data)) == ("jpeg", ".jpg")


@pytest.mark.parametrize(("data", "what"), [
    (b"", "empty body"),
    (b"%PDF-1.7", "PDF document"),
    (b"\x1f\x8b\x08\x00", "gzip stream"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"II+\x00", "BigTIFF image"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", "RIFF file (not WebP)"),
    (b"\x00\x00\x00\x18ftypheic", "ISO media file (HEIC/AVIF/MP4)"),
    (b"\xef\xbb\xbf  <!DOCTYPE html><html>", "HTML page"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG image"),
    (b"<?xml version='1.0'?><a/>", "XML document"),
    (b"hello, world\n", "text"),
    (b"\x00\x01\x02\x03\x04", "unknown binary data"),
])
def test_describe(data: bytes, what: str) -> None:
    assert sniff.describe(data) == what


def test_the_decoder_uses_it() -> None:
    assert decode.sniff is sniff.sniff and decode.FORMATS is sniff.FORMATS
