"""The process's logging: one handler, text or JSON lines, the request id on every line.

:func:`configure` (``app.py`` calls it with ``NSFW_LOG_FORMAT``) installs one handler on
the root logger and routes Streamlit's and uvicorn's loggers through it, so that every
line has the same form:

* ``text`` (default): ``2026-12-01 04:09:45,563 INFO nsfw_core.http.app [3f2a...]: message``,
  the request id in brackets when the line is about a request;
* ``json``: one JSON object a line (``python-json-logger``): ``time``, ``level``,
  ``logger``, ``message``, ``request_id`` (null outside a request), and the structured
  fields of the line (the access line's ``route``, ``status``, ``duration_ms``, ...).

Image URLs never reach the log whole: :func:`url_for_log` keeps the host and a short
hash of the rest (signed URLs carry tokens in their query strings).  uvicorn's access
line, which Streamlit turns on, is dropped for API paths (the API writes its own, with
the request id, :mod:`nsfw_core.http.app`) and loses its query string on the others.

Native libraries may still write to stderr directly (LiteRT's one ``INFO: Created
TensorFlow Lite XNNPACK delegate for CPU.`` at start-up): that line is not JSON.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from typing import IO, Any, Callable
from urllib.parse import urlsplit

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from nsfw_core.base import requestid
from nsfw_core.base.settings import LOG_FORMATS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
URL_HASH_DIGITS = 12
_HOST_RE = re.compile(r"[A-Za-z0-9._~\-\[\]:]{1,300}")


def url_for_log(url: str) -> str:
    """``host[:port]#<12 hex digits>``: the host, and the start of the SHA-256 of everything after it
    (path, query, fragment), so that one URL is recognisable across lines but its path and its query
    string (signed URLs' tokens) never appear.  Credentials and the scheme are dropped.

    Never raises (it runs in error paths): anything it cannot take apart is ``<invalid URL>#<hash of it all>``.
    """
    text = url if isinstance(url, str) else repr(url)
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:URL_HASH_DIGITS]
    try:
        return _host_and_hash(text)
    except Exception:  # a log line must never fail the request it describes
        return f"<invalid URL>#{digest}"


def _host_and_hash(url: str) -> str:
    parts = urlsplit(url)  # drops tab, CR and LF anywhere: then the netloc is not a part of ``url``
    host = parts.hostname or ""
    port = parts.port
    if parts.netloc and parts.netloc not in url:
        raise ValueError("urlsplit changed the URL")
    rest = url.split(parts.netloc, 1)[1] if parts.netloc else url
    digest = hashlib.sha256(rest.encode("utf-8", "replace")).hexdigest()[:URL_HASH_DIGITS]
    if not _HOST_RE.fullmatch(host):
        host = "<no host>" if not host else "<unprintable host>"
    return f"{host}:{port}#{digest}" if port is not None else f"{host}#{digest}"


class RequestIdFilter(logging.Filter):
    """Puts the current request id (:mod:`nsfw_core.base.requestid`) on every record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = requestid.current()
        return True


class TextFormatter(logging.Formatter):
    """The plain format, with `` [request id]`` after the logger's name when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.request_tag = f" [{rid}]" if rid else ""
        return super().format(record)


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time, level, logger, message, request_id and the record's extra fields."""
    return JsonFormatter("{asctime}{levelname}{name}{message}{request_id}", style="{",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         reserved_attrs=[*RESERVED_ATTRS, "color_message", "request_tag"],  # uvicorn's ANSI copy
                         json_ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    return json_formatter() if log_format == "json" else TextFormatter()


class AccessLineFilter(logging.Filter):
    """On ``uvicorn.access``: drops the lines of API paths (the API logs its own) and strips the query
    string from the others (``/predict?url=...`` carries image URLs; sign-in callbacks carry codes)."""

    def __init__(self, is_api_path: Callable[[str], bool]) -> None:
        super().__init__()
        self.is_api_path = is_api_path

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) < 3 or not isinstance(args[2], str):
            return True
        path, sep, _ = args[2].partition("?")
        if self.is_api_path(path):
            return False
        record.args = (*args[:2], path + ("?..." if sep else ""), *args[3:])
        return True


_handler: logging.Handler | None = None


def adopt(logger: logging.Logger) -> None:
    """Route a logger that Streamlit gave a console handler of its own (and ``propagate = False``) through
    the root handler instead.  ``app.py`` calls it for the loggers Streamlit sets up later, too."""
    own = getattr(logger, "streamlit_console_handler", None)
    if own is not None and _handler is not None:
        logger.removeHandler(own)
        logger.propagate = True


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _adopt_all() -> None:
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            adopt(logger)
    for name in UVICORN_LOGGERS:  # under `uvicorn app:app`, its own dictConfig gave them handlers
        logger = logging.getLogger(name)
        for own in list(logger.handlers):
            logger.removeHandler(own)
        logger.propagate = True


def configured() -> bool:
    """True once :func:`configure` has run in this process."""
    return _handler is not None


def configure(log_format: str = "text", *, stream: IO[str] | None = None,
              is_api_path: Callable[[str], bool] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Install the one handler on the root logger (replacing the one installed before, if any)."""
    global _handler
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    for existing in list(root.handlers):  # basicConfig's, if someone called it first
        if type(existing) is logging.StreamHandler:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
    _adopt_all()
    if is_api_path is not None:
        access = logging.getLogger("uvicorn.access")
        for old in [f for f in access.filters if isinstance(f, AccessLineFilter)]:
            access.removeFilter(old)
        access.addFilter(AccessLineFilter(is_api_path))
    return handler


def extra_fields(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the fields that JSON lines carry as keys (None values left out)."""
    return {k: v for k, v in fields.items() if v is not None}
