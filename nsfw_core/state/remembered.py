"""The log of known images in the database: remembered decisions and hash-list entries.

``known_images`` (:mod:`.migrations`, version 4) is append-only: a row either adds an entry (``op``
'add', ``kind`` 'review' for a reviewer's decision, 'list' for a hash-list entry) or removes one
(``op`` 'remove', ``removes`` = the entry's id).  Every process reads it forward by id
(:class:`nsfw_core.state.known.KnownImages`), so whatever one process writes, the others see at their next
refresh.  Writers take the database's advisory lock first (PostgreSQL; SQLite serialises writers
anyway) so that ids become visible in order and a reader going forward by id never skips one.

The queue writes here in the same transaction as the decision or its undo: a decided image is
remembered exactly when it is decided.
"""

from __future__ import annotations

from typing import Any, Sequence

from nsfw_core.base.labels import to_binary
from nsfw_core.state.db import Backend, Tx
from nsfw_core.state.migrations import KNOWN_TABLE, REVIEW_EMBEDDINGS_TABLE, TABLE

REVIEW, LIST = "review", "list"
ADD, REMOVE = "add", "remove"
COLUMNS = ("id", "op", "kind", "sha256", "hashes", "verdict", "label", "note", "review_id", "removes",
           "added_by", "added_at", "scores", "model", "audience", "media", "model_version", "embedded")
# every process holds the entries in memory: a decided image's embedding (3.5 KB) stays in the database, read
# when a look-alike needs it (KnownImages.lookup); the memory holds whether there is one
SELECT = (f"SELECT {', '.join(COLUMNS[:-1])}, CASE WHEN embedding = '' THEN 0 ELSE 1 END AS embedded "
          f"FROM {KNOWN_TABLE}")


def remember_decision(backend: Backend, tx: Tx, item_id: int, label: str, by: str, now: float,
                      hashes: str | None = None) -> None:
    """Add the decided item ``item_id`` (its sha256 and perceptual hashes) with the verdict its label means.

    ``hashes`` (hex, comma-separated) replaces what the item kept from its request (``phash``) when given.
    The entry keeps the item's scores and model, and the embedding its request kept (issue 26, with the model
    version that made it): a look-alike inherits the decision only when the model sees it alike,
    :func:`nsfw_core.classify.judge`; and its audience (everyone, or the one client whose own thresholds
    queued it).  The caller checked that the reviewer saw the item's own bytes.
    """
    backend.lock_migrations(tx)
    if hashes:  # the item keeps them too (a later decision after an undo needs no image)
        tx.run(f"UPDATE {TABLE} SET phash = ? WHERE id = ?", (hashes, int(item_id)))
    tx.run(f"INSERT INTO {KNOWN_TABLE} (op, kind, sha256, hashes, verdict, label, note, review_id, added_by, "
           f"added_at, scores, model, audience, media, embedding, model_version) SELECT '{ADD}', '{REVIEW}', "
           f"r.sha256, COALESCE(?, r.phash, ''), ?, ?, '', r.id, ?, ?, r.scores, r.model, r.audience, r.media, "
           f"COALESCE(e.embedding, ''), COALESCE(e.model_version, '') FROM {TABLE} r "
           f"LEFT JOIN {REVIEW_EMBEDDINGS_TABLE} e ON e.item_id = r.id AND e.model = r.model WHERE r.id = ?",
           (hashes, to_binary(label), label, by, now, int(item_id)))


def forget_decision(backend: Backend, tx: Tx, item_id: int, by: str, now: float) -> None:
    """Remove the remembered decision of ``item_id`` (its decision was undone)."""
    backend.lock_migrations(tx)
    for (entry_id,) in live_entries(tx, "a.review_id = ?", (int(item_id),)):
        remove(tx, entry_id, REVIEW, by, now)


def live_entries(tx: Tx, where: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The ids of entries added and not removed, matching ``where`` (on the adding row ``a``)."""
    return tx.run(f"SELECT a.id FROM {KNOWN_TABLE} a WHERE a.op = '{ADD}' AND {where} AND NOT EXISTS "
                  f"(SELECT 1 FROM {KNOWN_TABLE} r WHERE r.op = '{REMOVE}' AND r.removes = a.id) ORDER BY a.id",
                  params)


def remove(tx: Tx, entry_id: int, kind: str, by: str, now: float) -> None:
    tx.run(f"INSERT INTO {KNOWN_TABLE} (op, kind, removes, added_by, added_at) VALUES ('{REMOVE}', ?, ?, ?, ?)",
           (kind, int(entry_id), by, now))


def decided_embedding(tx: Tx, entry_id: int) -> tuple[str, str]:
    """A remembered decision's embedding (float16, base64: :func:`nsfw_core.inference.embeddings.decode_embedding`)
    and the model version that made it; ``("", "")`` when it keeps none."""
    row = tx.one(f"SELECT embedding, model_version FROM {KNOWN_TABLE} WHERE id = ?", (int(entry_id),))
    return ("", "") if row is None else (row[0] or "", row[1] or "")
