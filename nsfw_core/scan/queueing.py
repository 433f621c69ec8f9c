"""``--queue``: put the images a scan judged unknown, and an audit share of the rest, into the review queue.

Which rows: those the *model* judged (a known image already has a human verdict, as in the API) whose
verdict is one the service sends to review (``NSFW_REVIEW_VERDICTS``, ``unknown`` by default), plus, with
``--audit-share P``, a random share P of the model's adult and safe verdicts, for a person to check that
the thresholds hold on this catalogue.  The audit draw is a function of the image's sha256, so the same
images are drawn on every run.

At most once per image: a row that was queued keeps its ``review_id`` in the dataset and is never queued
again, and the queue itself holds one open item per sha256 (a driver killed between queueing and writing
its rows finds the open item again, :meth:`~nsfw_core.state.review.ReviewQueue.enqueue`).

The ``review_id`` kept is the item's public review id (``rv_...``, :meth:`ReviewQueue.public_id`): the id its
webhook events carry and the reviewer API names it by (a claim's ``id``, ``POST /v1/reviews/{id}/decision``),
the creator's one when an API client queued the same image first.  A row of a format-1 dataset holds the queue's
row number instead (as a decimal string, :func:`nsfw_core.scan.schema.upgrade`): rows passed here again
(``reverdict --queue``) get the public id of that item, when it still exists.

The queue's items carry the source, the scores, the model and the verdict, and the image's PDQ hashes
(its decision is remembered by them), and the bytes the queue keeps (read again here, for the queued images
alone): always for URLs and object URIs, for local files with ``NSFW_REVIEW_STORE_UPLOADS``.  A reviewer sees
and decides on those bytes only (issue 29).  A row that kept its embedding (``--embeddings``) gives it to its
item, as the service's requests do (issue 26): a decided item can then train an adapter, and its remembered
decision keeps it for the look-alike rule.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from nsfw_core.base.labels import CLASS_NAMES, UNKNOWN
from nsfw_core.images.fetch import is_url
from nsfw_core.state.review import ItemNotFound, ReviewQueue

log = logging.getLogger(__name__)

AUDIT_SALT = b"nsfw-scan audit"


def audited(sha256: str, share: float) -> bool:
    """Whether the image with this sha256 is in an audit share ``share`` (the same answer on every run)."""
    if share <= 0:
        return False
    draw = int.from_bytes(hashlib.blake2b(AUDIT_SALT + sha256.encode(), digest_size=8).digest(), "little")
    return draw < share * 2**64


def wanted(table: pa.Table, verdicts: tuple[str, ...] = (UNKNOWN,), audit_share: float = 0.0) -> np.ndarray:
    """True for the rows to queue: model-judged, not queued before, a verdict to review or audited."""
    verdict = table["verdict"].to_pylist()
    source = table["verdict_source"].to_pylist()
    review = table["review_id"].to_pylist() if "review_id" in table.column_names else [None] * table.num_rows
    sha = table["sha256"].to_pylist()
    out = np.zeros(table.num_rows, dtype=bool)
    for i in range(table.num_rows):
        if source[i] != "model" or review[i] is not None or not sha[i] or verdict[i] is None:
            continue
        out[i] = verdict[i] in verdicts or audited(sha[i], audit_share)
    return out


class Queuer:
    """Queues rows into one :class:`ReviewQueue`; ``reread(source, kind)`` gives the bytes to store."""

    def __init__(self, queue: ReviewQueue, verdicts: tuple[str, ...], audit_share: float = 0.0,
                 reread: Callable[[str, str], bytes] | None = None,
                 keep_embedding: Callable[[int, str, str, np.ndarray], None] | None = None) -> None:
        self.queue = queue
        self.keep_embedding = keep_embedding  # (item id, model, model version, embedding): Adapters.save_item_embedding
        self.verdicts = verdicts
        self.audit_share = audit_share
        self.reread = reread
        self.store_uploads = queue.store_uploads
        self.queued = 0
        self.failed = 0

    def enqueue(self, table: pa.Table, hashes: list[Any] | None = None) -> pa.Array:
        """``table``'s ``review_id`` column after queueing what :func:`wanted` picks (the others unchanged but
        for a format-1 row number, replaced by its item's public id, :meth:`public`).

        ``hashes``: each row's PDQ hashes to remember a decision by (the worker's ``review_hashes``).
        A database error is logged and leaves the row unqueued (a later reverdict --queue retries it).
        """
        ids: list[str | None] = [None if v is None else str(v) for v in (
            table["review_id"].to_pylist() if "review_id" in table.column_names else [None] * table.num_rows)]
        ids = [self.public(v) for v in ids]
        pick = wanted(table, self.verdicts, self.audit_share)
        if not pick.any():
            return pa.array(ids, pa.string())
        cols = {c: table[c].to_pylist() for c in ("sha256", "source", "kind", "model", "verdict", *CLASS_NAMES)}
        pdq = table["pdq"].to_pylist()
        versions = table["model_version"].to_pylist() if "model_version" in table.column_names else None
        embeddings = table["embedding"] if "embedding" in table.column_names else None
        for i in np.flatnonzero(pick):
            sha = cols["sha256"][i]
            data = None
            # the queue keeps a URL's (and an object URI's) bytes always, an upload's or a file's only when it stores
            # uploads: the bytes a reviewer sees and decides on (what is remembered is the sha256 of those bytes)
            if self.reread is not None and (self.store_uploads or is_url(cols["source"][i])):
                try:
                    data = self.reread(cols["source"][i], cols["kind"][i])
                except Exception as exc:  # the image is gone or unreadable now: queued without its bytes
                    log.info("could not read %s again to store it with its review item: %s", cols["source"][i], exc)
                if data is not None and hashlib.sha256(data).hexdigest() != sha:
                    data = None  # it changed since it was scored
            phash = (hashes[i] if hashes is not None and hashes[i] else None) or (pdq[i].hex() if pdq[i] else None)
            try:
                item_id = self.queue.enqueue(sha, cols["source"][i], {c: cols[c][i] for c in CLASS_NAMES},
                                             cols["model"][i], cols["verdict"][i], image_bytes=data, phash=phash)
                # the item's public id (its creator's: an API client may have queued this image first), not the
                # queue's row number, which the reviewer API answers with 404 and no webhook event carries
                ids[i] = self.queue.public_id(item_id)
                self.queued += 1
            except Exception as exc:  # any database error: the row stays unqueued, the scan goes on
                self.failed += 1
                log.error("could not queue %s for review: %r", cols["source"][i], exc)
                continue
            vector = embeddings[int(i)].as_py() if embeddings is not None else None
            if self.keep_embedding is not None and vector and versions is not None:
                try:
                    self.keep_embedding(item_id, cols["model"][i], versions[i], np.asarray(vector, np.float32))
                except Exception as exc:  # the item is queued; only its use for training an adapter is lost
                    log.warning("review item %s: its embedding could not be kept (%r)", ids[i], exc)
        return pa.array(ids, pa.string())

    def public(self, review_id: str | None) -> str | None:
        """A row's review id as the public one: a format-1 row number (ASCII digits) becomes its item's public
        id; anything else, an item that is gone (purged) or a database error leaves it as it was."""
        if review_id is None or not (review_id.isascii() and review_id.isdigit()):
            return review_id
        try:
            return self.queue.public_id(int(review_id))
        except ItemNotFound:
            return review_id  # purged: the row stays as queued once (never queued again)
        except Exception as exc:  # a database error: converted by a later run
            log.warning("review item %s: its public review id could not be read (%r)", review_id, exc)
            return review_id
