"""The human review queue: images the model could not decide, waiting for a person.

An image whose verdict is in ``NSFW_REVIEW_VERDICTS`` (``unknown`` by default,
see :func:`should_queue`) is put in the queue with its sha256, its source (URL
or ``upload:<name>``), the model's five scores and the model's name; its bytes
are kept too when ``NSFW_REVIEW_STORE_UPLOADS`` is on.  Reviewers *claim* the
oldest pending item for a lease (``NSFW_REVIEW_LEASE_SECONDS``), then *decide*
a label (``adult``/``safe`` or one of the five classes), *skip* it (back to
the end of the queue) or let the lease run out (it is pending again).  The
reviewed items feed the calibration page (:meth:`ReviewQueue.reviewed_items`,
stored scores, no re-scoring) and a manifest CSV (:meth:`ReviewQueue.export_csv`).

The queue takes the review part of the settings, :class:`~nsfw_core.base.settings.ReviewConfig`
(:meth:`ReviewQueue.from_config`, :func:`should_queue`).

Modules, one job each (everything public is importable from here):

- :mod:`.errors`: the queue's errors and their HTTP statuses;
- :mod:`.items`: the item records, their statuses, the checks on reviewer ids and scores;
- :mod:`.store`: SQLite and PostgreSQL backends, the connection pool, which backend a URL means;
- :mod:`.migrations`: the schema and its versions;
- :mod:`.queue`: :class:`ReviewQueue` (enqueue, claim, decide, skip, undo, purge, reads) and
  :func:`should_queue`;
- :mod:`.export`: the decided items as a manifest CSV or a ZIP with the stored images;
- :mod:`.audit`: audit items (a random sample of the automatic verdicts, reviewed blind, with the
  probability that chose them) and double review (votes, agreement, escalation to an admin).

Labels (what a reviewer may decide, and their adult/safe truth) are :mod:`nsfw_core.base.labels`'.
"""

from __future__ import annotations

from nsfw_core.base.labels import BINARY_LABELS, InvalidLabel, check_label, normalise_label
from nsfw_core.state.db import DB_FILE, backend_for, redact_url
from nsfw_core.state.errors import ItemNotFound, ReviewConfigError, ReviewConflict, ReviewError, ReviewUnavailable
from nsfw_core.state.migrations import LATEST_VERSION, MIGRATIONS, TABLE, VERSION_TABLE, Migration, migrate
from nsfw_core.state.review.export import CSV_COLUMNS, image_suffix
from nsfw_core.state.review.items import (
    CLAIMED,
    DECIDED,
    MAX_REVIEWER_LENGTH,
    MAX_SOURCE_LENGTH,
    PENDING,
    SKIPPED,
    STATUSES,
    Item,
    ReviewedItem,
    iso,
)
from nsfw_core.state.review.queue import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_RETENTION_DAYS,
    PURGE_INTERVAL,
    ReviewQueue,
    should_queue,
)

__all__ = [
    "BINARY_LABELS",
    "CLAIMED",
    "CSV_COLUMNS",
    "DB_FILE",
    "DECIDED",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_RETENTION_DAYS",
    "LATEST_VERSION",
    "MAX_REVIEWER_LENGTH",
    "MAX_SOURCE_LENGTH",
    "MIGRATIONS",
    "PENDING",
    "PURGE_INTERVAL",
    "SKIPPED",
    "STATUSES",
    "TABLE",
    "VERSION_TABLE",
    "InvalidLabel",
    "Item",
    "ItemNotFound",
    "Migration",
    "ReviewConfigError",
    "ReviewConflict",
    "ReviewError",
    "ReviewQueue",
    "ReviewUnavailable",
    "ReviewedItem",
    "backend_for",
    "check_label",
    "image_suffix",
    "iso",
    "migrate",
    "normalise_label",
    "redact_url",
    "should_queue",
]
