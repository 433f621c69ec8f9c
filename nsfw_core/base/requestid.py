"""Request ids: one per API request, from the client's ``X-Request-ID`` when it is sane.

The id lives in a context variable for the duration of the request
(:func:`bound`), so that every log line written while serving it carries it
(:class:`nsfw_core.base.logs.RequestIdFilter`), batch items included: asyncio tasks
copy the context they are created in, and :func:`in_context` carries it into
worker threads.  The API returns it as the ``X-Request-ID`` response header
and in every JSON error body (``request_id``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import uuid
from typing import Any, Callable, Iterator, TypeVar

HEADER = "X-Request-ID"
MAX_LENGTH = 128
PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # what a client's id must match to be kept (OpenAPI documents it)
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % MAX_LENGTH)

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("nsfw_request_id", default=None)

T = TypeVar("T")


def sane(value: str | None) -> bool:
    """True for a client's id we keep: 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``."""
    return value is not None and _SANE.fullmatch(value) is not None


def new_id() -> str:
    """A fresh id: 32 hex digits (a random UUID)."""
    return uuid.uuid4().hex


def choose(header: str | None) -> str:
    """The client's id when :func:`sane`, else a fresh one (an unsafe id is never echoed or logged)."""
    return header if header is not None and sane(header) else new_id()


def current() -> str | None:
    """The id of the request being served in this context, or None outside a request."""
    return _current.get()


@contextlib.contextmanager
def bound(request_id: str) -> Iterator[str]:
    """Make ``request_id`` the current one for the block (and for tasks created in it)."""
    token = _current.set(request_id)
    try:
        yield request_id
    finally:
        _current.reset(token)


def in_context(fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    """``fn(*args)`` to run in another thread with this context (the request id): ``run_in_executor``
    does not copy it, unlike ``asyncio.to_thread`` and task creation."""
    return functools.partial(contextvars.copy_context().run, fn, *args)
