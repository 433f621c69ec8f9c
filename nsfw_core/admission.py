"""Admission control: how much work may be in flight at once, and how much of it one client may hold.

Work is counted in cost units (:mod:`nsfw_core.ratelimit`: a photo on the default model is 1, a 16-frame
GIF on InceptionV3 about 150); beyond ``NSFW_MAX_IN_FLIGHT`` units requests get 503 ``overloaded``, and
one API key may hold at most ``NSFW_KEY_SHARE`` of them (the context passes share 1 without API keys):
beyond its share it gets 429 ``rate_limited`` while the others are still served.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

from nsfw_core.base.errors import Overloaded
from nsfw_core.ratelimit import RateLimited

IMAGE_SHARE = 0.5  # of NSFW_MAX_IN_FLIGHT: the most one image is counted at


class Admission:
    """Counts the cost units admitted by the API and not answered yet (fetch, decode, inference).

    Used on the event loop only, so plain counters are enough.  The micro-batcher's
    queue bounds inference; this bounds everything before it (slow upstreams,
    uploads held in memory).
    """

    def __init__(self, limit: int, body_bytes: int | None = None, *, share: float = 1.0) -> None:
        self.limit = limit
        self.in_flight = 0.0
        self.share = share
        self.key_limit = max(1.0, share * limit) if share < 1.0 else float(limit)  # what one client may hold
        # what one image may count at most (its first unit included): larger ones run when half is free
        self.image_cap = max(1.0, min(self.key_limit, IMAGE_SHARE * limit))
        self.by_key: dict[str, float] = {}
        self.body_limit = body_bytes
        self.body_bytes = 0  # request bodies being read or held, counted at their declared or largest size
        self.rejected = 0  # requests refused here or by the isolated lane's queue
        self.rejected_share = 0  # refused because their client held its share

    @contextlib.contextmanager
    def admit(self, units: float, key: str | None = None, *, base: float = 0.0, frames: int | None = None
              ) -> Iterator[None]:
        """Count ``units`` as in flight (for ``key``) or refuse: :class:`Overloaded` when the total would pass
        the limit, :class:`~nsfw_core.ratelimit.RateLimited` when ``key``'s would pass its share.

        A request (its images' first units) larger than the limit (a client's share) is counted at it, and
        runs alone.  ``frames``: ``units`` is the rest of one image's cost (its first unit admitted with its
        request), an image of that many frames: each frame beyond the first counts one unit as it always did
        (more frames than the limit never fit), and what the model's cost adds beyond that is counted up to
        :attr:`image_cap` for the image, so that an expensive model's animation runs once half the limit is
        free.  An image runs even beyond its client's share while the client holds nothing but its
        request's ``base`` units.
        """
        if frames is not None:
            units = max(min(float(frames - 1), self.key_limit), min(float(units), max(0.0, self.image_cap - 1.0)))
        else:
            units = min(float(units), self.key_limit)
        if units <= 0:
            yield
            return
        held = self.by_key.get(key, 0.0) if key is not None else 0.0
        alone = held <= base + 1e-9
        if key is not None and self.share < 1.0 and not alone and held + units > self.key_limit + 1e-9:
            self.rejected_share += 1
            raise RateLimited(f"this client has {held:g} cost units in flight, its share of {self.key_limit:g} "
                              f"(NSFW_KEY_SHARE of NSFW_MAX_IN_FLIGHT); retry when they are answered",
                              {"Retry-After": "1"}, retry_after=1, limit="in_flight")
        if self.in_flight + units > self.limit + 1e-9:
            self.rejected += 1
            raise Overloaded(f"too much work in flight ({_shown(self.in_flight)} of {self.limit} cost units); "
                             "retry later")
        self.in_flight += units
        if key is not None:
            self.by_key[key] = held + units
        try:
            yield
        finally:
            self.in_flight = max(0.0, self.in_flight - units)
            if key is not None:
                left = self.by_key.get(key, 0.0) - units
                if left > 1e-9:
                    self.by_key[key] = left
                else:
                    self.by_key.pop(key, None)

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


def _shown(units: float) -> str:
    return str(int(units)) if units == math.floor(units) else f"{units:.1f}"
