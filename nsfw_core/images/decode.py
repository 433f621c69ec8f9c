"""Turn untrusted image bytes into an RGB ``uint8`` array, or a typed error.

The only entry points are :func:`sniff`, :func:`plan`, :func:`decode` and :func:`decode_frames`.

* The format comes from the magic bytes (never from a Content-Type) and must be
  one of :data:`FORMATS`; anything else is :class:`NotAnImage` (415).
* Only the Pillow plugin of the sniffed format is used.  The declared size is
  checked against ``max_pixels`` *before* any pixel memory is allocated
  (:class:`ImageTooLarge`, 413, with ``width``/``height`` details).
* What the decoder will allocate on the way (tile and strip buffers, progressive
  JPEG coefficients) is estimated from the declared structure
  (:mod:`nsfw_core.images.structure`) and checked against ``max_pixels`` too, and
  progressive JPEGs with more than ``max_scans`` scans are refused (413).
* Truncated or corrupt data of a supported format is :class:`UndecodableImage`
  (422); every exception Pillow, zlib or numpy may raise is converted at this
  boundary (``raise ... from exc``), so callers only ever see ``NSFWError``.
* :func:`decode`'s output is the first frame, turned by its EXIF orientation, with any
  transparency composited on white, 16-bit and float greyscale scaled to 8 bits.
  An animation's plan carries its :class:`~nsfw_core.images.frames.Timeline`, and its cost
  counts walking every frame; :func:`decode_frames` returns the frames asked for, each
  as :func:`decode` would return a still image (a TIFF page's size checked before it is
  loaded).

Why not ``Image.open(..., formats=[...])``: it runs Pillow's process-global
decompression-bomb check (``Image.MAX_IMAGE_PIXELS``) before we see the size,
which warns (a ``DecompressionBombWarning`` in the logs) or raises without the
dimensions, and cannot be tuned per call without racing other threads.  So
:func:`_open` calls the same registered plugin factory that ``Image.open`` would
call for the sniffed format, and our own limit runs first.  WebP and GIF are
checked even earlier, from their bytes, because Pillow allocates the WebP
canvas and grows a GIF to its first frame while opening.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import struct
from collections.abc import Callable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

from nsfw_core.base.errors import ImageTooLarge, NotAnImage, NSFWError, UndecodableImage
from nsfw_core.images import frames as _frames
from nsfw_core.images import structure
from nsfw_core.images.sniff import FORMATS as FORMATS  # re-exported: the entry points of decoding
from nsfw_core.images.sniff import describe
from nsfw_core.images.sniff import sniff as sniff

# A plugin that refuses a file logs it at ERROR ("More samples per pixel than can be decoded"); that
# is the client's file, answered 415/422, not a server error.
logging.getLogger("PIL").setLevel(logging.CRITICAL)

try:  # libjpeg-turbo without Pillow's copies; optional: Pillow decodes every JPEG without it
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - pinned in requirements.txt
    _simplejpeg = None

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_SCANS = 100  # libjpeg's simple progression has 10 scans; encoders that tune scans stay far below 100

ANIMATED_FORMATS = frozenset({"gif", "webp", "png", "tiff"})
ANIMATION_CANVASES = 3
_PILLOW_NAMES = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_WHITE = (255, 255, 255, 255)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`decode` will produce and what it will cost, known from the headers alone."""

    format: str
    width: int  # displayed size (EXIF orientation applied), before any JPEG draft
    height: int
    cost: structure.Cost
    orientation: int = 1  # EXIF orientation read from the header (1: upright or none)
    timeline: _frames.Timeline | None = None  # an animation's frames (None: a still image)


def plan(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_scans: int = DEFAULT_MAX_SCANS,
         draft_size: int | None = None) -> Plan:
    """Format, size and decoding cost from the headers; raises what :func:`decode` would for them.

    415 for an unsupported format, 422 for an unreadable header, 413 when the
    declared size or the decoder's working set exceeds ``max_pixels`` or a
    progressive JPEG has more than ``max_scans`` scans.  No pixel is decoded.
    """
    fmt = _require_format(data)
    with _typed_errors(fmt):
        return _open_checked(data, fmt, max_pixels, max_scans, draft_size)[1]


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_scans: int = DEFAULT_MAX_SCANS,
           draft_size: int | None = None) -> np.ndarray:
    """Decode ``data`` to a C-contiguous RGB ``uint8`` array of shape ``(H, W, 3)``.

    ``draft_size``: for JPEG only, let libjpeg decode at 1/2, 1/4 or 1/8 scale
    as long as both sides stay >= ``draft_size``; ignored for other formats.
    """
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be >= 1, got {draft_size}")
    fmt = _require_format(data)
    with _typed_errors(fmt):
        img, found = _open_checked(data, fmt, max_pixels, max_scans, draft_size)
        if fmt == "jpeg":
            fast = _decode_jpeg_fast(data, img, draft_size, found.orientation)
            if fast is not None:
                return fast
            if draft_size is not None:
                img.draft("RGB", (draft_size, draft_size))
        _load(img)
        _apply_orientation(img)
        rgb = _to_rgb_array(img)
        if fmt in ANIMATED_FORMATS and found.timeline is None:
            _no_frame_after(img, 0, fmt)
        return rgb


def decode_frames(data: bytes, indices: tuple[int, ...], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_scans: int = DEFAULT_MAX_SCANS, draft_size: int | None = None,
                  each: Callable[[np.ndarray], np.ndarray] | None = None) -> list[np.ndarray]:
    """Frames ``indices`` (ascending) of an animation, each an RGB ``uint8`` array as :func:`decode` gives,
    or ``each(rgb)`` of it (applied as soon as the frame is decoded, so only one full frame is held).

    Walks the frames in order up to the last one asked for (each is drawn over the previous ones).
    A frame that cannot be reached (the file ends early) is :class:`UndecodableImage`; so is a file in
    which the decoder finds a frame after the last one the container's walk found (they disagree on
    the file's structure, and the frames nobody checked could be anything).
    """
    del draft_size  # no animated format is a JPEG
    if not indices or list(indices) != sorted(set(indices)) or indices[0] < 0:
        raise ValueError(f"frame indices must be ascending and distinct, got {indices}")
    fmt = _require_format(data)
    with _typed_errors(fmt):
        img, found = _open_checked(data, fmt, max_pixels, max_scans)
        wanted = set(indices)
        out = []
        for index in range(indices[-1] + 1):
            if index:
                img.seek(index)
                _check_size(*img.size, fmt=fmt, max_pixels=max_pixels)  # a TIFF page has its own size
            if index in wanted:
                _load(img)
                frame = img.copy()  # turned upright on its own: the next frame is drawn on the canvas as stored
                _apply_orientation(frame)
                rgb = _to_rgb_array(frame)
                out.append(rgb if each is None else each(rgb))
                del rgb, frame
        if found.timeline is not None and indices[-1] == len(found.timeline) - 1:
            _no_frame_after(img, indices[-1], fmt)
        return out


def _no_frame_after(img: ImageFile.ImageFile, index: int, fmt: str) -> None:
    """:class:`UndecodableImage` when the decoder can go past frame ``index``: the walk of the container
    (:mod:`nsfw_core.images.frames`) ended there, so any later frame would go unchecked."""
    try:
        img.seek(index + 1)
    except Exception:  # EOFError, or data the decoder cannot read: no frame it would show
        return
    raise UndecodableImage(f"the {fmt} image has frames that its block structure hides (malformed blocks)",
                           format=fmt)


def _plan_of(img: ImageFile.ImageFile, data: bytes, fmt: str, draft_size: int | None,
             found: _frames.Scan) -> Plan:
    width, height = img.size
    scale = _draft_scale(width, height, draft_size) if fmt == "jpeg" else 1
    cost = structure.estimate(fmt, img, data, (-(-width // scale), -(-height // scale)))
    timeline = found.timeline
    if timeline is not None:
        # every frame up to the last is decoded (drawn over the previous ones); the canvas, the
        # previous canvas kept for disposal and one frame being converted are held at once
        walk = _frames.walk_work(timeline, width * height, len(timeline) - 1)
        cost = dataclasses.replace(cost, pixels=cost.pixels * ANIMATION_CANVASES, work=max(cost.work, walk),
                                   why=f"an animation of {len(timeline)} frames")
    orientation = _header_orientation(img)
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    return Plan(fmt, width, height, cost, orientation, timeline)


def _draft_scale(width: int, height: int, draft_size: int | None) -> int:
    """The scale Pillow's ``draft`` picks: the largest s in (8, 4, 2, 1) with s <= min(W, H) // draft_size.

    So ceil(W / s) and ceil(H / s) both stay >= ``draft_size``, whatever the aspect ratio.
    """
    if draft_size is None:
        return 1
    fit = min(width // draft_size, height // draft_size)
    return next((s for s in (8, 4, 2) if fit >= s), 1)


def _decode_jpeg_fast(data: bytes, img: ImageFile.ImageFile, draft_size: int | None,
                      orientation: int) -> np.ndarray | None:
    """libjpeg-turbo straight into an array (simplejpeg), else ``None`` and Pillow decodes.

    Same library, same settings (accurate integer IDCT, smooth chroma upsampling,
    the scale Pillow's ``draft`` would pick), hence the same pixels as the Pillow
    path (tests compare them), without Pillow's intermediate image and copies
    (faster: BENCHMARKS.md, "JPEG decoding through simplejpeg").  Only YCbCr, RGB
    and greyscale JPEGs with one tile take this path; anything libjpeg merely warns
    about (``strict``) goes to Pillow too, so errors and edge cases keep Pillow's behaviour.
    """
    if _simplejpeg is None or img.mode not in ("RGB", "L") or len(img.tile) != 1:
        return None
    width, height = img.size
    scale = _draft_scale(width, height, draft_size)
    want = (-(-height // scale), -(-width // scale), 3)
    try:
        rgb = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=scale, min_width=want[1],
                                      min_height=want[0], strict=True)
    except Exception:  # Pillow decodes it again and raises the typed error
        return None
    if rgb.shape != want:
        return None
    return np.ascontiguousarray(_ORIENT.get(orientation, _same)(rgb))


def _same(a: np.ndarray) -> np.ndarray:
    return a


# EXIF orientation -> the array view ImageOps.exif_transpose would produce (tests compare them).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],  # turned 90 degrees clockwise to be upright
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed
    8: lambda a: a.transpose(1, 0, 2)[::-1],  # turned 90 degrees counter-clockwise to be upright
}


def _require_format(data: bytes) -> str:
    fmt = sniff(data)
    if fmt is None:
        detected = describe(data)
        raise NotAnImage(
            f"not a supported image ({detected}); supported: {', '.join(FORMATS)}",
            detected=detected,
        )
    return fmt


@contextlib.contextmanager
def _typed_errors(fmt: str) -> Iterator[None]:
    """Convert whatever the libraries raise into the core's typed errors."""
    try:
        yield
    except NSFWError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
        # Pillow's checks inside plugins fire before ours only when max_pixels is above its
        # MAX_IMAGE_PIXELS (or a warnings filter turns its warning into an error).
        raise ImageTooLarge(f"the {fmt} image is too large to decode", format=fmt) from exc
    except Exception as exc:
        raise UndecodableImage(f"the {fmt} image is truncated or corrupt", format=fmt) from exc


def _open_checked(data: bytes, fmt: str, max_pixels: int, max_scans: int = DEFAULT_MAX_SCANS,
                  draft_size: int | None = None) -> tuple[ImageFile.ImageFile, Plan]:
    """Open lazily (header only) and enforce the size and cost limits; no pixel is decoded."""
    early = _EARLY_SIZE_READERS.get(fmt)
    size = early(data) if early is not None else None
    if size is not None:
        _check_size(*size, fmt=fmt, max_pixels=max_pixels)
    scanned = _frames.scan(fmt, data) if fmt in ANIMATED_FORMATS else _frames.Scan(None)
    if scanned.junk > _frames.MAX_JUNK:  # Pillow would skip them one at a time, opening included
        raise UndecodableImage(f"the {fmt} image has {scanned.junk} stray bytes between its blocks "
                               f"(at most {_frames.MAX_JUNK})", format=fmt)
    img = _open(data, fmt)
    _check_size(*img.size, fmt=fmt, max_pixels=max_pixels)
    found = _plan_of(img, data, fmt, draft_size, scanned)
    _check_cost(found.cost, img.size, fmt=fmt, max_pixels=max_pixels, max_scans=max_scans)
    return img, found


def _check_cost(cost: structure.Cost, size: tuple[int, int], *, fmt: str, max_pixels: int, max_scans: int) -> None:
    width, height = size
    if cost.scans > max_scans:
        raise ImageTooLarge(
            f"the {fmt} image has {cost.scans} progressive scans, over the limit of {max_scans}",
            width=width, height=height, scans=cost.scans, max_scans=max_scans,
        )
    if cost.pixels > max_pixels:
        raise ImageTooLarge(
            f"decoding the {width}x{height} {fmt} image would hold {cost.pixels} pixels of memory "
            f"({cost.why}), over the limit of {max_pixels}",
            width=width, height=height, decode_pixels=cost.pixels, max_pixels=max_pixels,
        )


def _open(data: bytes, fmt: str) -> ImageFile.ImageFile:
    """What ``Image.open(BytesIO(data), formats=[...])`` does, minus its global bomb check."""
    name = _PILLOW_NAMES[fmt]
    if name not in Image.OPEN:
        Image.init()
    factory, _accept = Image.OPEN[name]
    return factory(io.BytesIO(data), "")


def _check_size(width: int, height: int, *, fmt: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UndecodableImage(f"the {fmt} image has no pixels ({width}x{height})", format=fmt)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
            width=width,
            height=height,
            max_pixels=max_pixels,
        )


def _webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from the first chunk of a WebP file (simple lossy, lossless, or extended)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _gif_first_frame_size(data: bytes) -> tuple[int, int] | None:
    """Size Pillow gives a GIF after reading its first frame: the screen, grown to fit that frame.

    Walks the blocks exactly as Pillow's GIF plugin does, quirks included, so that the
    sizes agree on malformed files too (a property test checks it).
    """
    if len(data) < 13:
        return None
    width, height, flags = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"), data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos < len(data):
        marker = data[pos]
        if marker == 0x3B:  # trailer: no frame
            return None
        if marker == 0x2C:  # image descriptor: x, y, w, h
            if pos + 9 > len(data):
                return None
            x0, y0, frame_width, frame_height = struct.unpack_from("<4H", data, pos + 1)
            return max(width, x0 + frame_width), max(height, y0 + frame_height)
        if marker == 0x21:  # extension: label, then sub-blocks
            pos = _skip_gif_extension(data, pos)
        else:  # Pillow skips stray bytes, one at a time
            found = _frames.GIF_MARKERS.search(data, pos + 1)
            pos = found.start() if found is not None else len(data)
    return None


def _skip_gif_extension(data: bytes, pos: int) -> int:
    """Position after the extension at ``pos``, consumed the way Pillow's GIF plugin consumes it."""
    label = data[pos + 1 : pos + 2]
    pos, block = _gif_sub_block(data, pos + 2)
    if label == b"\xfe":  # comment: sub-blocks up to the first empty one
        while block:
            pos, block = _gif_sub_block(data, pos)
        return pos
    if label == b"\xff" and block.startswith(b"NETSCAPE2.0"):
        pos, _loop = _gif_sub_block(data, pos)
    while True:  # Pillow reads at least one more sub-block, even after an empty first one
        pos, block = _gif_sub_block(data, pos)
        if not block:
            return pos


def _gif_sub_block(data: bytes, pos: int) -> tuple[int, bytes]:
    size = data[pos] if pos < len(data) else 0
    return pos + 1 + size, data[pos + 1 : pos + 1 + size]


_EARLY_SIZE_READERS: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
    # Pillow allocates the WebP canvas, and grows a GIF to its first frame (running its
    # own bomb check), while opening; these sizes are read from the bytes beforehand.
    "webp": _webp_canvas_size,
    "gif": _gif_first_frame_size,
}


def _load(img: ImageFile.ImageFile) -> None:
    # Partial images must fail with 422, whatever another module set this process-wide flag to.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    img.load()


def _apply_orientation(img: Image.Image) -> None:
    """Turn the loaded image upright; a broken EXIF block leaves it as stored."""
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(img, in_place=True)


def _header_orientation(img: ImageFile.ImageFile) -> int:
    """EXIF orientation without decoding pixels (1 when absent or unreadable)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # Pillow would decode the whole image to look for an eXIf chunk after the pixels
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return orientation if isinstance(orientation, int) else 1


# Pixels converted at a time: converting a whole image made Pillow build an RGB copy (4 bytes a
# pixel) and numpy two more (tobytes, then the array): about 10 bytes a pixel on top of the
# decoded image (RELIABILITY.md).  In tiles the extra memory is the output array.
_CONVERT_TILE = 1 << 22


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    width, height = img.size
    if width * height <= _CONVERT_TILE:
        return _tile_to_rgb(img)
    out = np.empty((height, width, 3), dtype=np.uint8)
    tile_w = min(width, _CONVERT_TILE)
    tile_h = max(1, _CONVERT_TILE // tile_w)
    for y in range(0, height, tile_h):
        for x in range(0, width, tile_w):
            box = (x, y, min(x + tile_w, width), min(y + tile_h, height))
            out[box[1]:box[3], box[0]:box[2]] = _tile_to_rgb(img.crop(box))
    return out


def _tile_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in _WIDE_GREY_MODES or img.mode == "F":
        grey = _grey_to_uint8(np.asarray(img), img.mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, np.newaxis], 3, axis=2))
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        img = _on_white(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.array(img, dtype=np.uint8))


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit greyscale keeps its top byte; float greyscale is clipped to 0..255."""
    if mode == "F":
        rounded: np.ndarray = np.rint(np.clip(np.nan_to_num(values, nan=0.0), 0, 255)).astype(np.uint8)
        return rounded
    shifted: np.ndarray = (np.clip(values, 0, 0xFFFF) >> 8).astype(np.uint8)
    return shifted


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
