"""What Pillow itself reads from an image, for tests to compare the service's own readers against."""

from __future__ import annotations

import io

from PIL import Image
from PIL.GifImagePlugin import GifImageFile
from PIL.MpoImagePlugin import MpoImageFile
from PIL.PngImagePlugin import PngImageFile
from PIL.TiffImagePlugin import TiffImageFile
from PIL.WebPImagePlugin import WebPImageFile


def frame_count(data: bytes) -> int:
    """Pillow's count of the frames of a GIF, PNG (APNG), WebP, MPO or the pages of a TIFF."""
    img = Image.open(io.BytesIO(data))
    assert isinstance(img, (GifImageFile, MpoImageFile, PngImageFile, TiffImageFile, WebPImageFile)), img.format
    return img.n_frames
