"""Admission control: how many images may be in flight at once; the rest get 503 overloaded."""

from __future__ import annotations

import contextlib
from typing import Iterator

from nsfw_core.base.errors import Overloaded


class Admission:
    """Counts images admitted by the API and not answered yet (fetch, decode, inference).

    Used on the event loop only, so plain counters are enough.  The micro-batcher's
    queue bounds inference; this bounds everything before it (slow upstreams,
    uploads held in memory).
    """

    def __init__(self, limit: int, body_bytes: int | None = None) -> None:
        self.limit = limit
        self.in_flight = 0
        self.body_limit = body_bytes
        self.body_bytes = 0  # request bodies being read or held, counted at their declared or largest size
        self.rejected = 0  # requests refused here or by the isolated lane's queue

    @contextlib.contextmanager
    def admit(self, images: int) -> Iterator[None]:
        """Count ``images`` as in flight or refuse with :class:`~nsfw_core.base.errors.Overloaded`.

        A batch larger than the limit still runs, alone.
        """
        images = min(images, self.limit)
        if self.in_flight + images > self.limit:
            self.rejected += 1
            raise Overloaded(f"too many images in flight ({self.in_flight} of {self.limit}); retry later")
        self.in_flight += images
        try:
            yield
        finally:
            self.in_flight -= images

    @contextlib.contextmanager
    def hold_body(self, nbytes: int) -> Iterator[None]:
        """Count a request body of up to ``nbytes`` as held in memory, or refuse with Overloaded.

        Reserved before the body is read, so slow uploads cannot pile up more than the limit
        (a body larger than the limit still runs, alone).
        """
        if self.body_limit is None:
            yield
            return
        nbytes = min(nbytes, self.body_limit)
        if self.body_bytes + nbytes > self.body_limit:
            self.rejected += 1
            raise Overloaded(f"too many request bodies in memory ({self.body_bytes} of {self.body_limit} bytes); "
                             "retry later")
        self.body_bytes += nbytes
        try:
            yield
        finally:
            self.body_bytes -= nbytes

    def refuse(self, message: str) -> Overloaded:
        """Count a refusal made elsewhere in the intake (the isolated lane's queue) and give its error."""
        self.rejected += 1
        return Overloaded(message)
