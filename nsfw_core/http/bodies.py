"""Reading a request: its query flags and choices (``?model=``, ``?adapter=``, each agreeing with the body),
its body under a byte cap and a deadline, an upload.

The same for every route of both API generations.  A body is refused with 413 as soon as it
passes its cap (its declared Content-Length first, before a byte is read), and must arrive whole
within NSFW_BODY_TIMEOUT (408), however slowly it trickles in.
"""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from nsfw_core.base.errors import BadRequest, InvalidURL, RequestTimeout, TooLarge
from nsfw_core.base.settings import MODEL_NAMES
from nsfw_core.http.contract import ContractError
from nsfw_core.images.sniff import sniff_video

MULTIPART_SLACK = 64 * 1024  # room for the multipart headers and boundaries around the file
BATCH_ITEM_BYTES = 512  # JSON room per batch item besides its URL
UPLOAD_FIELDS = ("file", "image")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def flag(request: Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter (1/0, true/false, yes/no, on/off; absent is ``default``, empty is 400)."""
    if name not in request.query_params:
        return default
    value = request.query_params[name].strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise BadRequest(f"query parameter {name} must be true or false, got {value!r}")


def query_model(request: Request, body: str | None = None) -> str | None:
    """The model asked for: ``?model=`` (one of the models, else 400 whatever the body) or the JSON body's
    ``model`` (``body``); both must agree (400).  None: the default model."""
    _once(request, "model")
    name = request.query_params.get("model")
    if name is not None and name not in MODEL_NAMES:
        raise ContractError(f"model must be one of {', '.join(MODEL_NAMES)}", field="model")
    if name is not None and body is not None and name != body:
        raise ContractError(f"?model={name} contradicts the body's model {body}; send one", field="model")
    return body if body is not None else name


def adapter_wanted(request: Request, body: bool | None) -> bool:
    """``"adapter": false`` in the body, or ``?adapter=false``: the base model judges (they must agree)."""
    _once(request, "adapter")
    queried = flag(request, "adapter", default=True) if "adapter" in request.query_params else None
    if queried is not None and body is not None and queried != body:
        raise ContractError(f"?adapter={str(queried).lower()} contradicts the body's adapter "
                            f"{str(body).lower()}; send one", field="adapter")
    return queried if queried is not None else (True if body is None else body)


def _once(request: Request, name: str) -> None:
    """A choice given twice (``?model=a&model=b``) is 400: which one counts would be this server's guess."""
    if len(request.query_params.getlist(name)) > 1:
        raise ContractError(f"?{name}= is given more than once; send it once", field=name)


def expected_body(request: Request, limit: int) -> int:
    """The bytes a body may take: its declared Content-Length when valid and smaller, else ``limit``."""
    declared = request.headers.get("content-length", "")
    return min(int(declared), limit) if declared.isdigit() and len(declared) < 20 else limit


def has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


async def read_body(request: Request, max_bytes: int, timeout: float, *, slack: int = 0) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_bytes + slack``.

    The whole body must arrive within ``timeout`` seconds (408), however it
    trickles in: a client that stalls would otherwise hold its in-flight slot
    for as long as it keeps the connection open.
    """
    limit = max_bytes + slack
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("the Content-Length header is not a number")
        if int(declared) > limit:
            raise TooLarge(f"the request body is {declared} bytes; the limit is {max_bytes}", limit=max_bytes)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise TooLarge(f"the request body is over the limit of {max_bytes} bytes", limit=max_bytes)
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s ({len(body)} bytes came)",
                             timeout_s=timeout) from exc
    except ClientDisconnect as exc:
        raise BadRequest("the client disconnected while sending the body") from exc
    return bytes(body)


def within_cap(data: bytes, max_bytes: int, max_video_bytes: int, field: str | None = None) -> bytes:
    """``data`` when it is an image of at most ``max_bytes`` or a video (its first bytes say so) of at most
    ``max_video_bytes``; 413 ``too_large`` otherwise."""
    if sniff_video(data) is not None:
        if len(data) <= max_video_bytes:
            return data
        raise TooLarge(f"the video is {len(data)} bytes; the limit is {max_video_bytes} (NSFW_MAX_VIDEO_BYTES)",
                       limit=max_video_bytes, field=field)
    if len(data) <= max_bytes:
        return data
    raise TooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes, field=field)


async def uploaded_image(request: Request, max_bytes: int, timeout: float, *, max_video_bytes: int = 0) -> bytes:
    """The image sent in the body: raw bytes, or the ``file``/``image`` field of a multipart form.

    A video may take up to ``max_video_bytes`` (its first bytes say it is one), an image ``max_bytes``."""
    if max_video_bytes > 0:
        data = await uploaded_image(request, max(max_bytes, max_video_bytes), timeout)
        return within_cap(data, max_bytes, max_video_bytes)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        data = await read_body(request, max_bytes, timeout)
        if not data:
            raise InvalidURL("missing url: pass ?url=<image URL> or send the image in the request body")
        return data
    body = await read_body(request, max_bytes, timeout, slack=MULTIPART_SLACK)

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, chunks(), max_files=4, max_fields=16).parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        upload = next((u for u in (form.get(f) for f in UPLOAD_FIELDS) if isinstance(u, UploadFile)), None)
        if upload is None:
            raise BadRequest("the multipart body needs a file field named 'file' or 'image'")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise TooLarge(f"the uploaded file is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes)
    return data


# ---------------------------------------------------------------- endpoints
