"""Admission control: how many images may be in flight at once; the rest get 503 overloaded."""

from __future__ import annotations

import contextlib
from typing import Iterator

from .errors import Overloaded


class Admission:
    """Counts images admitted by the API and not answered yet (fetch, decode, inference).

    Used on the event loop only, so plain counters are enough.  The micro-batcher's
    queue bounds inference; this bounds everything before it (slow upstreams,
    uploads held in memory).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.rejected = 0  # requests refused here or by the isolated lane's queue

    @contextlib.contextmanager
    def admit(self, images: int) -> Iterator[None]:
        """Count ``images`` as in flight or refuse with :class:`~nsfw_core.errors.Overloaded`.

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
