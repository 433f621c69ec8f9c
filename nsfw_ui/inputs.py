"""What the user gives the classify page, and reading its bytes under the service's limits.

- :func:`collect_inputs`: the submitted URLs (one per line, ``#`` starts a comment),
  uploads and camera snapshot, in that order, as :class:`Input`\\ s;
- :func:`upload_bytes`: an upload's bytes under the byte cap (the API applies the same cap);
- :func:`url_bytes`: a typed URL's bytes through the context's SSRF-safe fetcher, refusing
  anything that is not an http(s) URL (it is never read as a local path);
- :func:`input_loader`: a ``loader(source) -> bytes`` for
  :meth:`nsfw_core.classify.Classifier.sources` over the page's inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Literal, Mapping, Protocol

from nsfw_core.base.errors import InvalidURL, TooLarge
from nsfw_core.context import Context
from nsfw_core.images.fetch import is_url
from nsfw_core.images.sniff import sniff_video

CAMERA_NAME = "camera.jpg"
CAMERA_MIME = "image/jpeg"


class UploadedFile(Protocol):
    """What Streamlit's file uploader and camera input hand back (``UploadedFile``)."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    def getvalue(self) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Input:
    """One image to classify: a URL typed by the user, an upload or the camera snapshot."""

    kind: Literal["url", "upload", "camera"]
    name: str  # the URL, or the file name
    value: str | bytes  # the URL, or the bytes
    mime: str | None = None  # uploads and snapshots

    @property
    def file(self) -> tuple[str, str | None] | None:
        """``(file name, mime type)`` of an upload or snapshot (for curl examples); None for a URL."""
        return None if self.kind == "url" else (self.name, self.mime)


def url_lines(text: str | None) -> list[str]:
    """The URLs of the text area: one per line, blank lines and ``#`` comments left out."""
    lines = (line.strip() for line in (text or "").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def collect_inputs(urls_text: str | None, uploads: Iterable[UploadedFile] | None,
                   camera: UploadedFile | None) -> list[Input]:
    """The submitted inputs in order: URLs (one per line, # starts a comment), uploads, the snapshot."""
    items = [Input("url", url, url) for url in url_lines(urls_text)]
    items += [Input("upload", f.name, f.getvalue(), f.type) for f in uploads or []]
    if camera is not None:
        items.append(Input("camera", camera.name or CAMERA_NAME, camera.getvalue(), camera.type or CAMERA_MIME))
    return items


def upload_bytes(data: bytes, max_bytes: int, max_video_bytes: int = 0) -> bytes:
    """Bytes of an uploaded file under the service's byte cap (the API applies the same cap; a video's is
    ``max_video_bytes``)."""
    if max_video_bytes and sniff_video(data) is not None:
        max_bytes = max_video_bytes
    if len(data) > max_bytes:
        raise TooLarge(f"the upload is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes)
    return data


def url_bytes(ctx: Context, url: str) -> bytes:
    """Bytes behind a URL typed by the user, through the context's SSRF-safe fetcher.

    Only URLs reach the fetcher: a line that is not a URL is refused instead of
    being read as a local path (``ctx.load_bytes`` would read files).
    """
    if not is_url(url):
        raise InvalidURL(f"not a URL: {url[:200]!r} (only http and https URLs are fetched)")
    return ctx.fetch(url)


def input_loader(ctx: Context, items: Mapping[str, str | bytes],
                 keep: dict[str, bytes] | None = None) -> Callable[[str], bytes]:
    """A ``loader(source)`` for ``Classifier.sources`` over page inputs.

    ``items`` maps a source key to either the uploaded ``bytes`` or a URL ``str``.
    When ``keep`` is given, the loaded bytes are stored in it by key (for previews).
    """
    def load(source: str) -> bytes:
        value = items[source]
        if isinstance(value, (bytes, bytearray)):
            data = upload_bytes(bytes(value), ctx.serving.max_bytes, ctx.serving.max_video_bytes)
        else:
            data = url_bytes(ctx, value)
        if keep is not None:
            keep[source] = data
        return data

    return load
