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

FORMAT = 1  # _nsfw_scan.json's "format": bumped when a reader of an older dataset would misread it

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
    pa.field("review_id", pa.int64()),  # the review item it was queued as (--queue)
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
