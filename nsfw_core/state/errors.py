"""The review queue's errors, each with its HTTP status and code (see :mod:`nsfw_core.base.errors`).

A label that is not one is :class:`nsfw_core.base.labels.InvalidLabel` (400 ``invalid_label``), re-exported
by the package.
"""

from __future__ import annotations

from nsfw_core.base.errors import NSFWError


class ReviewError(NSFWError):
    """Base class of the review queue's errors."""

    status = 500
    code = "review_error"


class ReviewConfigError(ReviewError):
    """``NSFW_DATABASE_URL`` is not usable, or the database schema is newer than this code."""

    status = 500
    code = "review_config"


class ReviewUnavailable(ReviewError):
    """The database cannot be reached or stays locked; retry later."""

    status = 503
    code = "review_unavailable"


class ItemNotFound(ReviewError):
    status = 404
    code = "not_found"


class TooManyClaims(ReviewError):
    """A reviewer API key already holds NSFW_REVIEW_MAX_HELD claimed items."""

    status = 429
    code = "too_many_claims"


class ReviewConflict(ReviewError):
    """The item is claimed by someone else, already decided, or not claimed by you."""

    status = 409
    code = "review_conflict"
