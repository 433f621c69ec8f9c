"""The one path from an error to an HTTP answer: JSON ``{"code", "message", "request_id", ...details}``.

Every API error, whatever raised it, becomes an answer here (:func:`error_response`), with the
status of its class in the exception tree (:mod:`nsfw_core.base.errors`) and the headers it calls
for (``Retry-After`` on 503 and 429, ``WWW-Authenticate`` on 401, ``Allow`` on 405).  Anything that is
not one of the core's errors is logged and answered 500 ``internal_error``, never a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse

from nsfw_core.base import requestid
from nsfw_core.base.errors import InputError, NSFWError, Overloaded, Unauthorized

log = logging.getLogger("nsfw_core.http")


class NotFound(InputError):
    status = 404
    code = "not_found"


class MethodNotAllowed(InputError):
    status = 405
    code = "method_not_allowed"


class TooManyItems(InputError):
    """A batch with more items than NSFW_MAX_BATCH_ITEMS (``/predict/batch``, ``/v1/classify/batch``)."""

    status = 413
    code = "too_many_items"


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The JSON shape of every error: ``{"code", "message", "request_id", ...details}``."""
    return {"code": code, "message": message, **_request_id(), **details}


def _request_id() -> dict[str, str]:
    rid = requestid.current()
    return {"request_id": rid} if rid is not None else {}


def as_error(exc: Exception) -> NSFWError:
    """The core error for ``exc``; anything unexpected is logged and becomes a 500 ``internal_error``."""
    if isinstance(exc, NSFWError):
        return exc
    log.error("unexpected error in the API", exc_info=exc)
    return NSFWError("internal server error (see the server log)")


def error_response(exc: Exception) -> JSONResponse:
    """The single place where errors become HTTP responses."""
    err = as_error(exc)
    headers: dict[str, str] = {}
    if isinstance(err, Overloaded):
        headers["Retry-After"] = "1"
    elif isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(err, MethodNotAllowed):
        headers["Allow"] = ", ".join(err.details["allow"])
    headers.update(getattr(err, "http_headers", None) or {})  # e.g. a 429's Retry-After and RateLimit-*
    return JSONResponse({**err.to_dict(), **_request_id()}, status_code=err.status, headers=headers)
