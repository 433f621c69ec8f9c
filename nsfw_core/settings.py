"""All settings of the service, read from environment variables.

``SETTINGS`` is the single table (name, default, help); the README's settings
table is generated from it (``python -m nsfw_core.settings``) and a test checks
that the README matches.  ``load_settings()`` parses the environment into an
immutable :class:`Settings`; bad values raise :class:`SettingsError` naming the
variable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAMES = ("MobileNetV2Mid", "MobileNetV2", "InceptionV3")
RUNTIMES = ("litert", "tensorflow")
CLASS_NAMES = ("drawings", "hentai", "neutral", "porn", "sexy")


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}" if high is not None else f"must be >= {low}")
        return value

    return parse


def _float(low: float, high: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not value >= low or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}" if high is not None else f"must be >= {low}")
        return value

    return parse


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _classes(raw: str) -> tuple[str, ...]:
    items = _list(raw)
    unknown = [c for c in items if c not in CLASS_NAMES]
    if unknown or not items:
        raise ValueError(f"must be a comma-separated subset of {', '.join(CLASS_NAMES)}")
    return items


def _verdicts(raw: str) -> tuple[str, ...]:
    items = _list(raw)
    if any(v not in ("adult", "unknown", "safe") for v in items):
        raise ValueError("must be a comma-separated subset of adult, unknown, safe")
    return items


def _model(raw: str) -> str:
    if raw not in MODEL_NAMES:
        raise ValueError(f"must be one of {', '.join(MODEL_NAMES)}")
    return raw


def _runtime(raw: str) -> str:
    if raw not in RUNTIMES:
        raise ValueError(f"must be one of {', '.join(RUNTIMES)}")
    return raw


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # environment variable
    attr: str  # attribute of Settings
    default: str  # as it would be written in the environment
    help: str
    parse: Callable[[str], Any]


SETTINGS: tuple[Setting, ...] = (
    Setting("PORT", "port", "8080", "Port the server listens on (all interfaces).", _int(1, 65535)),
    Setting("NSFW_HOST", "host", "0.0.0.0", "Interface the server binds to.", str),
    Setting("NSFW_MODEL", "model", "MobileNetV2Mid", "Default model: MobileNetV2Mid, MobileNetV2 or InceptionV3.", _model),
    Setting("NSFW_MODEL_DIR", "model_dir", "model", "Folder holding the converted models (relative to the project root).", str),
    Setting("NSFW_MAX_BYTES", "max_bytes", "10485760", "Largest image accepted, in bytes (fetched or uploaded); 413 above it.", _int(1)),
    Setting("NSFW_MAX_PIXELS", "max_pixels", "50000000", "Largest image accepted, in pixels (width x height); 413 above it, checked before decoding. Also bounds the decoder's largest buffer (a TIFF tile or strip, progressive JPEG coefficients), counted in 4-byte pixels.", _int(1)),
    Setting("NSFW_FETCH_TIMEOUT", "fetch_timeout", "10", "Total deadline for fetching one URL, in seconds (connect, redirects and body).", _float(0.001)),
    Setting("NSFW_CONNECT_TIMEOUT", "connect_timeout", "3", "Timeout for one TCP/TLS connect, in seconds (capped by the total deadline).", _float(0.001)),
    Setting("NSFW_FETCH_KEEPALIVE", "fetch_keepalive", "true", "Keep connections to image hosts open for the next fetch (at most 4 idle per host, 32 in all, 5 s); each reuse is checked against a fresh DNS answer. false: one connection per fetch.", _bool),
    Setting("NSFW_BODY_TIMEOUT", "body_timeout", "30", "Longest time a client may take to send a request body (an upload or a batch), in seconds; 408 request_timeout after it. A stalled upload holds an in-flight slot until then.", _float(0.001)),
    Setting("NSFW_MAX_REDIRECTS", "max_redirects", "5", "Most redirects followed for one URL; each hop is checked like the first.", _int(0, 20)),
    Setting("NSFW_MAX_URL_LENGTH", "max_url_length", "2048", "Longest URL accepted, in characters.", _int(16)),
    Setting("NSFW_ALLOW_PRIVATE_HOSTS", "allow_private_hosts", "", "Comma-separated host or host:port entries that may be fetched although loopback or private; * allows all. For development and tests only.", _list),
    Setting("NSFW_API_KEYS", "api_keys", "", "Comma-separated API keys; when set, /predict requires 'Authorization: Bearer <key>'.", _list),
    Setting("NSFW_ADULT_CLASSES", "adult_classes", "porn,sexy", "Classes whose scores add up to the adult score.", _classes),
    Setting("NSFW_SAFE_CLASSES", "safe_classes", "neutral,drawings", "Classes whose scores add up to the safe score.", _classes),
    Setting("NSFW_ADULT_THRESHOLD", "adult_threshold", "0.7", "Default adult threshold: adult score at or above it gives 'adult' (a saved thresholds file overrides it).", _float(0.0, 1.0)),
    Setting("NSFW_SAFE_THRESHOLD", "safe_threshold", "0.9", "Default safe threshold: safe score at or above it gives 'safe' (a saved thresholds file overrides it).", _float(0.0, 1.0)),
    Setting("NSFW_DATA_DIR", "data_dir", "var", "Folder for files the service writes: thresholds, score cache, review queue (relative to the project root).", str),
    Setting("NSFW_RUNTIME", "runtime", "litert", "Inference runtime: litert (the model compiled once into NSFW_COMPILED_DIR by TensorFlow in a child process, then run by LiteRT with XNNPACK: about 20 % less CPU per image, and no TensorFlow in the server) or tensorflow.", _runtime),
    Setting("NSFW_COMPILED_DIR", "compiled_dir", "", "Folder for the models compiled for litert (empty: <NSFW_DATA_DIR>/compiled); python -m nsfw_core.litert fills it ahead of time, e.g. in a build step.", str),
    Setting("NSFW_MODEL_THREADS", "model_threads", "0", "Threads one forward pass uses (0: the CPUs this process may use, counting a container's cgroup CPU quota); litert splits them between the lanes that run a batch's images in parallel.", _int(0, 256)),
    Setting("NSFW_MAX_BATCH", "max_batch", "8", "Most images handed to the model at once. The tensorflow runtime runs them as one forward pass (8 gives its full throughput here; 32 adds about 400 MB of activations); litert runs them one by one, shared out among its lanes.", _int(1, 512)),
    Setting("NSFW_BATCH_WAIT_MS", "batch_wait_ms", "4", "tensorflow runtime only: how long the batcher waits for more images before a forward pass, in milliseconds (not at all when no other image is being fetched or decoded). litert never waits: a lone image already runs on all threads, about as fast per image as a batch on the lanes.", _float(0.0, 1000.0)),
    Setting("NSFW_QUEUE_SIZE", "queue_size", "512", "Images waiting for inference before new requests get 503 with Retry-After.", _int(1)),
    Setting("NSFW_DECODE_PIXEL_BUDGET", "decode_pixel_budget", "50000000", "Most pixels decoded at once across all threads (bounds memory; one image larger than this still decodes, alone).", _int(1)),
    Setting("NSFW_DECODE_TIMEOUT", "decode_timeout", "5", "Deadline for decoding one expensive image, in seconds: images whose declared structure makes them costly (large, progressive, TIFF) decode in separate processes, killed at the deadline (422 decode_timeout). Cheap images decode in the worker threads, small enough by construction to finish well within it.", _float(0.1, 600.0)),
    Setting("NSFW_DECODE_PROCESSES", "decode_processes", "2", "Expensive images decoded at once, each in its own process (the rest wait); the worker threads stay free for cheap images meanwhile.", _int(1, 64)),
    Setting("NSFW_MAX_JPEG_SCANS", "max_jpeg_scans", "100", "Most scans a progressive JPEG may have (413 image_too_large above it): each scan is decoded over the whole image, and ordinary encoders write about 10.", _int(1, 100000)),
    Setting("NSFW_MAX_IN_FLIGHT", "max_in_flight", "128", "Images being fetched, decoded or classified at once (batch items count one each); above it requests get 503 with Retry-After before their body is read.", _int(1)),
    Setting("NSFW_WORKERS", "workers", "4", "Threads that fetch and decode images concurrently (4 kept the throughput of 8 here with about 40 MB less memory).", _int(1, 256)),
    Setting("NSFW_MAX_BATCH_ITEMS", "max_batch_items", "64", "Most URLs accepted in one batch request.", _int(1, 10000)),
    Setting("NSFW_DATABASE_URL", "database_url", "", "Review-queue database: a postgresql:// URL (psycopg 3), sqlite:///path, or empty for SQLite <data_dir>/review.sqlite.", str),
    Setting("NSFW_REVIEW_VERDICTS", "review_verdicts", "unknown", "Comma-separated verdicts the API sends to human review: unknown, or unknown,adult to review adult ones too; empty turns the queue off.", _verdicts),
    Setting("NSFW_REVIEW_STORE_UPLOADS", "review_store_uploads", "false", "Keep queued images' bytes in the review database (uploads have no URL to fetch again); purged with their items.", _bool),
    Setting("NSFW_REVIEW_RETENTION_DAYS", "review_retention_days", "30", "Review items (and stored images) older than this many days are deleted; 0 keeps them forever.", _int(0)),
    Setting("NSFW_REVIEW_LEASE_SECONDS", "review_lease_seconds", "300", "How long a reviewer holds a claimed item before another reviewer may get it.", _int(1)),
    Setting("NSFW_JPEG_DRAFT", "jpeg_draft", "true", "Decode large JPEGs at a reduced scale (shorter side kept at least 4x the model input); faster, within the fidelity bound.", _bool),
)


def _make_settings_class() -> type:
    fields = [(s.attr, Any) for s in SETTINGS]
    return dataclasses.make_dataclass("Settings", fields, frozen=True)


Settings = _make_settings_class()
Settings.__doc__ = "The parsed settings; build with load_settings()."


def _resolve(settings: Any) -> Any:
    def under_root(p: str) -> str:
        path = Path(p)
        return str(path if path.is_absolute() else ROOT / path)

    data_dir = under_root(settings.data_dir)
    compiled_dir = under_root(settings.compiled_dir) if settings.compiled_dir else str(Path(data_dir) / "compiled")
    return dataclasses.replace(settings, model_dir=under_root(settings.model_dir), data_dir=data_dir,
                               compiled_dir=compiled_dir)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Any:
    """Parse settings from ``environ`` (default ``os.environ``); keyword overrides win."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = env.get(s.name, s.default)
        try:
            values[s.attr] = s.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{s.name}={raw!r}: {exc}") from exc
    values.update(overrides)
    return _resolve(Settings(**values))


def markdown_table() -> str:
    """The README's settings table."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        lines.append(f"| `{s.name}` | {default} | {s.help} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
