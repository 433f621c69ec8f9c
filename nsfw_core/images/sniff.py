"""What image format some bytes are, from their magic bytes alone (never a Content-Type or a file name).

- :func:`sniff`: the key of :data:`FORMATS` the bytes announce, or None.  The decoder accepts only
  these formats (:mod:`nsfw_core.images.decode`); the review queue's export names stored images by them.
- :func:`suffix`: the usual file suffix for those bytes (:data:`SUFFIXES`), or None.
- :func:`sniff_video`: the key of :data:`VIDEO_FORMATS` for the video containers the service decodes
  (:mod:`nsfw_core.images.video`), or None.
- :func:`describe`: a short guess at what bytes that are no supported image are, for a 415 message.
"""

from __future__ import annotations

import codecs

#: The supported formats and their media types, in the order messages list them.
FORMATS: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}

#: The file suffix written for each format.
SUFFIXES: dict[str, str] = {
    "jpeg": ".jpg",
    "png": ".png",
    "gif": ".gif",
    "webp": ".webp",
    "bmp": ".bmp",
    "tiff": ".tif",
}

#: The video containers decoded (nsfw_core.images.video) and their media types.
VIDEO_FORMATS: dict[str, str] = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
}
# ISO base media brands of still images (HEIF, AVIF): an "ftyp" box with one of these is no video.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif",
                           b"avis", b"mif2", b"jpeg", b"avci"})
# The top-level atoms an old QuickTime file (no "ftyp") starts with.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_EBML = b"\x1a\x45\xdf\xa3"

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)

# Only used to say what an unsupported body looks like in the 415 message.
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF document"),
    (b"\x1f\x8b", "gzip stream"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x00\x00\x01\x00", "ICO icon"),
    (b"II+\x00", "BigTIFF image"),
    (b"MM\x00+", "BigTIFF image"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 image"),
    (b"RIFF", "RIFF file (not WebP)"),
)


def sniff(data: bytes) -> str | None:
    """The key of :data:`FORMATS` that the magic bytes of ``data`` announce, else ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    return None


def sniff_video(data: bytes) -> str | None:
    """The key of :data:`VIDEO_FORMATS` that the first bytes of ``data`` announce, else ``None``."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        return "mov" if brand == b"qt  " else "mp4"
    if data[4:8] in _QUICKTIME_ATOMS and int.from_bytes(data[:4], "big") >= 8:
        return "mov"
    if data.startswith(_EBML):
        return "webm" if b"webm" in data[:64] else "mkv"
    return None


def suffix(data: bytes) -> str | None:
    """The file suffix (``.jpg``, ``.png``, ...) for the format ``data`` announces, else ``None``."""
    fmt = sniff(data)
    return SUFFIXES[fmt] if fmt is not None else None


def describe(data: bytes) -> str:
    """A short guess at what a non-image body is, for the 415 message."""
    if not data:
        return "empty body"
    for magic, what in _OTHER_SIGNATURES:
        if data.startswith(magic):
            return what
    if data[4:8] == b"ftyp":
        return "ISO media file (HEIC/AVIF/MP4)"
    head = data[:1024].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if head.startswith(b"<!doctype html") or b"<html" in head:
        return "HTML page"
    if b"<svg" in head:
        return "SVG image"
    if head.startswith(b"<?xml"):
        return "XML document"
    return "text" if _looks_like_text(head) else "unknown binary data"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\n\r\f" for char in text)
