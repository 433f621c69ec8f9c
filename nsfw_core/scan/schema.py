"""The scan dataset's columns: one row per image (per model version), Parquet, readable by any Parquet reader.

Part files (``part-*.parquet``) all have :data:`SCHEMA`.  A row is either classified (the five scores,
the verdict) or an error (``error_code`` from :mod:`nsfw_core.base.errors`, scores null).  Readers that
skip files starting with ``_`` or ``.`` (pyarrow, pandas, Ray Data, Spark, DuckDB do) read the whole
folder as one table; :func:`nsfw_core.scan.dataset.ScanDataset.view` keeps the latest row per source.
"""

from __future__ import annotations

import pyarrow as pa

from nsfw_core.base.errors import ImageTooLarge, NotAnImage, UndecodableImage
from nsfw_core.base.labels import CLASS_NAMES

# _nsfw_scan.json's "format": bumped when a reader of an older format would misread the parts written now.
# 1: review_id was the queue's internal row number (int64); 2: it is the public review id, rv_... (a string),
# the one the webhooks and the reviewer API name the item by.  A part of an older format is read through
# :func:`upgrade` (its columns as this format has them); the first part written into an older dataset raises
# its format (ScanDataset), so an older nsfw-scan refuses the dataset instead of misreading the new parts.
FORMAT = 2

FILE, URL, OBJECT = "file", "url", "object"  # a source's kind
# How images were decoded: the service's way, or --fast-decode (large JPEGs decoded by libjpeg at the scale
# nearest the model's input, not at least 4x it): scores differ slightly, so each mode has its own rows.
DEFAULT_DECODE, FAST_DECODE = "default", "fast"
DECODE_MODES = (DEFAULT_DECODE, FAST_DECODE)
KINDS = (FILE, URL, OBJECT)

FRAME = pa.struct([("index", pa.int32()), ("time_ms", pa.int64()),
                   ("scores", pa.list_(pa.float32(), len(CLASS_NAMES)))])

SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),  # a path, a URL or an object URI (s3://bucket/key)
    pa.field("kind", pa.string(), nullable=False),  # file, url or object
    pa.field("label", pa.string()),  # a manifest's label, else null
    pa.field("size", pa.int64()),  # bytes read (null when unreadable)
    pa.field("sha256", pa.string()),
    pa.field("model", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("decode", pa.string(), nullable=False),  # default, or fast (--fast-decode: JPEGs drafted further)
    *(pa.field(c, pa.float32()) for c in CLASS_NAMES),  # the deciding frame's for an animation
    pa.field("adult_score", pa.float64()),
    pa.field("safe_score", pa.float64()),
    pa.field("frames", pa.list_(FRAME)),  # an animation's sampled frames (null for a still image)
    pa.field("deciding_frame", pa.int32()),
    pa.field("pdq", pa.binary(32)),  # PDQ of the model input (a still image whose hash has quality), for lists
    pa.field("embedding", pa.list_(pa.float32())),  # penultimate features with --embeddings (null: none)
    pa.field("verdict", pa.string()),  # adult, safe, unknown (null for an error)
    pa.field("verdict_source", pa.string()),  # model, review (a remembered decision) or list (a hash list)
    pa.field("match_by", pa.string()),  # sha256 or pdq, when verdict_source is review or list
    pa.field("match_distance", pa.int32()),
    pa.field("match_entry", pa.int64()),  # the known_images entry matched
    pa.field("thresholds_version", pa.int64()),  # the thresholds history's version (null: the defaults)
    pa.field("thresholds", pa.string()),  # the thresholds judged under, as JSON (Thresholds.to_dict())
    pa.field("error_code", pa.string()),  # nsfw_core.base.errors codes: not_an_image, image_too_large, ...
    pa.field("error_message", pa.string()),
    pa.field("review_id", pa.string()),  # the public review id (rv_...) of the item it was queued as (--queue)
    pa.field("scanned_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("judged_at", pa.timestamp("ms", tz="UTC")),
    pa.field("run_id", pa.string(), nullable=False),
])
COLUMNS = tuple(SCHEMA.names)
SCORE_COLUMNS = tuple(CLASS_NAMES)
# What reverdict rewrites; everything else in a row is what the scan saw and stays as it was.
VERDICT_COLUMNS = ("adult_score", "safe_score", "deciding_frame", *SCORE_COLUMNS, "verdict", "verdict_source",
                   "match_by", "match_distance", "match_entry", "thresholds_version", "thresholds", "judged_at",
                   "review_id")



def upgrade(table: pa.Table) -> pa.Table:
    """A part as :data:`SCHEMA` types its columns, whatever format wrote it (the columns it has, no others).

    Format 1's ``review_id`` (the queue's row number, int64) is read as is, as its decimal string ("17"): a
    row queued then stays queued (never queued again), and ``reverdict --queue`` replaces the number with the
    item's public review id (:class:`~nsfw_core.scan.queueing.Queuer`).  The number is not a public id: the
    reviewer API answers it with 404.
    """
    index = table.schema.get_field_index("review_id")
    if index >= 0 and table.schema.field(index).type != SCHEMA.field("review_id").type:
        table = table.set_column(index, SCHEMA.field("review_id"), table.column(index).cast(pa.string()))
    return table


def outdated(schema: pa.Schema) -> bool:
    """Whether a part file with this schema was written in an older format (a column typed otherwise than
    :data:`SCHEMA` types it): ``reverdict`` rewrites such a part in this format, so that any Parquet reader
    sees one schema across the folder."""
    return any(f.name in SCHEMA.names and f.type != SCHEMA.field(f.name).type for f in schema)


# Errors that the same bytes under the same limits give again: such a row counts as done (a rescan skips
# it; --retry-errors scans it again).  Reading and fetching errors, timeouts and the rest are retried.
FINAL_ERRORS = frozenset({NotAnImage.code, UndecodableImage.code, ImageTooLarge.code})

# What a worker hands the driver per image (the driver judges, queues and writes SCHEMA rows).
SCORED, SKIPPED, FAILED = "scored", "skipped", "error"
WORKER_SCHEMA = pa.schema([
    ("source", pa.string()), ("kind", pa.string()), ("label", pa.string()),
    ("status", pa.string()),  # scored, skipped (already in the dataset) or error
    ("size", pa.int64()), ("sha256", pa.string()),
    ("scores", pa.list_(pa.float32(), len(CLASS_NAMES))),  # a still image's (null for an animation)
    ("frames", pa.list_(FRAME)),
    ("pdq", pa.binary(32)),
    ("review_hashes", pa.string()),  # with --queue: the PDQ hashes a decision is remembered by (phash.join_hex)
    ("embedding", pa.list_(pa.float32())),
    ("error_code", pa.string()), ("error_message", pa.string()),
    ("model_rows", pa.int32()),  # inputs this image sent through the model (frames count one each)
    ("read_ms", pa.float32()), ("decode_ms", pa.float32()),
    ("worker", pa.string()),  # host:pid of the actor
    ("model_loads", pa.int32()),  # models this actor has loaded so far (1: loaded once, not per batch)
])
LISTING_SCHEMA = pa.schema([("source", pa.string()), ("kind", pa.string()), ("label", pa.string())])
