"""Errors raised by the core, each carrying its HTTP status and a stable code.

Hierarchy::

    NSFWError                      base class; status 500, code "internal_error"
    ├── InputError                 400 bad_request: the caller sent something we cannot use (the 4xx below)
    │   ├── InvalidURL             400 invalid_url: missing, malformed, bad scheme, credentials, too long
    │   ├── ForbiddenAddress       403 forbidden_address: resolves to loopback/private/reserved space
    │   ├── TooManyRedirects       400 too_many_redirects: redirect chain over the limit or a loop
    │   ├── TooLarge               413 too_large: body over the byte cap
    │   ├── ImageTooLarge          413 image_too_large: more pixels, decoder memory or JPEG scans than the limits
    │   │   └── VideoTooLong       413 video_too_long: longer than a synchronous request takes (use a job)
    │   ├── NotAnImage             415 not_an_image: the bytes are not a supported image format
    │   ├── UndecodableImage       422 undecodable_image: an image format, but truncated or corrupt
    │   ├── DecodeTimeout          422 decode_timeout: decoding took longer than NSFW_DECODE_TIMEOUT
    │   ├── Unauthorized           401 unauthorized: API key missing or wrong
    │   ├── Forbidden              403 forbidden: signed in (or not) without the role the action needs
    │   ├── TooManyAttempts        429 too_many_attempts: too many failed sign-ins, wait and retry
    │   ├── RequestTimeout         408 request_timeout: the client took too long to send the body
    │   └── BadRequest             400 bad_request: any other malformed request
    ├── UpstreamError              502 upstream_error: the image host answered with an error status
    │   └── UpstreamUnreachable    502 upstream_unreachable: DNS failure, refused connection, TLS error
    ├── UpstreamTimeout            504 upstream_timeout: connect/read timeout or total deadline passed
    ├── Overloaded                 503 overloaded: the inference queue is full (retry later)
    ├── NotReady                   503 not_ready: the model is not loaded or failed its warm-up
    └── ModelError                 500 model_error: model files missing, corrupt or inconsistent

Library exceptions (Pillow, sockets, TensorFlow) are converted to these at the
boundary (``raise UndecodableImage(...) from exc``); nothing else escapes the core.
"""

from __future__ import annotations

from typing import Any


class NSFWError(Exception):
    """Base class of every error the core raises."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able body used by the API, the CLI and the UI."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update({k: v for k, v in self.details.items() if v is not None})
        return body


class InputError(NSFWError):
    status = 400
    code = "bad_request"


class BadRequest(InputError):
    status = 400
    code = "bad_request"


class InvalidURL(InputError):
    status = 400
    code = "invalid_url"


class ForbiddenAddress(InputError):
    status = 403
    code = "forbidden_address"


class TooManyRedirects(InputError):
    status = 400
    code = "too_many_redirects"


class TooLarge(InputError):
    status = 413
    code = "too_large"


class ImageTooLarge(InputError):
    status = 413
    code = "image_too_large"


class VideoTooLong(ImageTooLarge):
    """A video longer than NSFW_MAX_VIDEO_SECONDS in a synchronous request: send it as a job instead."""

    code = "video_too_long"


class NotAnImage(InputError):
    status = 415
    code = "not_an_image"


class UndecodableImage(InputError):
    status = 422
    code = "undecodable_image"


class DecodeTimeout(InputError):
    status = 422
    code = "decode_timeout"


class Unauthorized(InputError):
    status = 401
    code = "unauthorized"


class Forbidden(InputError):
    status = 403
    code = "forbidden"


class TooManyAttempts(InputError):
    status = 429
    code = "too_many_attempts"


class RequestTimeout(InputError):
    status = 408
    code = "request_timeout"


class UpstreamError(NSFWError):
    status = 502
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(NSFWError):
    status = 504
    code = "upstream_timeout"


class Overloaded(NSFWError):
    status = 503
    code = "overloaded"


class NotReady(NSFWError):
    status = 503
    code = "not_ready"


class ModelError(NSFWError):
    status = 500
    code = "model_error"
