"""All settings of the service, read from environment variables.

``SETTINGS`` is the single table (name, default, help); the settings page of the
docs (``docs/settings.md``) holds the table generated from it (``python -m
nsfw_core.base.settings --write`` rewrites it) and a test checks that the page
matches.  ``load_settings()`` parses the environment into an immutable
:class:`Settings`; bad values raise :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from nsfw_core.base.emails import ascii_lower, entry_problem
from nsfw_core.base.labels import CLASS_NAMES as CLASS_NAMES  # re-exported: settings name the classes too
from nsfw_core.base.labels import VERDICTS

ROOT = Path(__file__).resolve().parents[2]  # the checkout: nsfw_core/base/settings.py -> ../../..
MODEL_NAMES = ("MobileNetV2Mid", "MobileNetV2", "InceptionV3")
RUNTIMES = ("litert", "tensorflow")


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
    if any(v not in VERDICTS for v in items):
        raise ValueError(f"must be a comma-separated subset of {', '.join(VERDICTS)}")
    return items


def _model(raw: str) -> str:
    if raw not in MODEL_NAMES:
        raise ValueError(f"must be one of {', '.join(MODEL_NAMES)}")
    return raw


def _runtime(raw: str) -> str:
    if raw not in RUNTIMES:
        raise ValueError(f"must be one of {', '.join(RUNTIMES)}")
    return raw


def _emails(raw: str) -> tuple[str, ...]:
    """Addresses and @domains, held to the form a provider's address must have to match one
    (:mod:`nsfw_core.base.emails`: ASCII, no spaces or control characters, one @), ASCII-lowercased."""
    items = _list(raw)
    for item in items:
        problem = entry_problem(item)
        if problem is not None:
            raise ValueError(f"{item!r} is neither an e-mail address nor an @domain ({problem})")
    return tuple(ascii_lower(item) for item in items)


LOG_FORMATS = ("text", "json")


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
    return value


MIN_SECRET_LENGTH = 16


def _rate(raw: str) -> Any:
    from nsfw_core.base.rates import parse_rate

    return parse_rate(raw)


def _secret(raw: str) -> str:
    if raw and len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
    return raw


def _keys(raw: str) -> tuple[str, ...]:
    keys = _list(raw)
    if any(len(k) < MIN_SECRET_LENGTH for k in keys):
        raise ValueError(f"each key must be at least {MIN_SECRET_LENGTH} characters (one is shorter)")
    return keys


def _share(raw: str) -> float:
    value = float(raw.strip())
    if not 0.0 < value <= 1.0:
        raise ValueError("must be a fraction above 0 and at most 1")
    return value


AUDITED = ("adult", "safe")  # the automatic verdicts NSFW_AUDIT_RATE samples


def _audit_rates(raw: str) -> tuple[tuple[str, float], ...]:
    """``0.01`` (both automatic verdicts), ``adult=0.02,safe=0.005``, or ``0`` / empty: off; as
    ``(("adult", rate), ("safe", rate))``."""
    text = raw.strip()
    out = {v: 0.0 for v in AUDITED}
    if text and "=" not in text:
        rate = _float(0.0, 1.0)(text)
        out = {v: rate for v in AUDITED}
    elif text:
        for part in _list(text):
            verdict, _, value = part.partition("=")
            verdict = verdict.strip().lower()
            if verdict not in AUDITED:
                raise ValueError(f"{verdict!r}: only the automatic verdicts ({', '.join(AUDITED)}) are audited")
            out[verdict] = _float(0.0, 1.0)(value)
    return tuple(out.items())


def _auto_bool(raw: str) -> bool | None:
    if raw.strip().lower() == "auto":
        return None
    return _bool(raw)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the settings table: environment variable, attribute, default, help, parser."""

    name: str  # environment variable
    attr: str  # attribute of Settings
    default: str  # as it would be written in the environment
    help: str
    parse: Callable[[str], Any]
    secret: bool = False  # never shown: not in repr(settings), not in error messages


def setting(env: str, default: str, parse: Callable[[str], Any], help: str, *, secret: bool = False) -> Any:
    """A field of :class:`Settings` whose metadata carries its row of the settings table."""
    return dataclasses.field(repr=not secret, metadata={"setting": Setting(env, "", default, help, parse, secret)})


@dataclasses.dataclass(frozen=True)
class Settings:
    """The parsed settings; build with :func:`load_settings`. Each field's metadata is its table row.

    Modules take the narrow part they need (:attr:`fetch_policy`, :attr:`decode_limits`, ...),
    not the whole object.
    """

    port: int = setting(
        "PORT", "8080", _int(1, 65535),
        "Port the server listens on.")
    host: str = setting(
        "NSFW_HOST", "0.0.0.0", str,
        "Interface the server binds to (0.0.0.0: all; ./run.sh uses 127.0.0.1 unless it is set).")
    model: str = setting(
        "NSFW_MODEL", "MobileNetV2Mid", _model,
        "Default model: MobileNetV2Mid, MobileNetV2 or InceptionV3.")
    model_dir: str = setting(
        "NSFW_MODEL_DIR", "model", str,
        "Folder holding the converted models (relative to the project root).")
    max_bytes: int = setting(
        "NSFW_MAX_BYTES", "10485760", _int(1),
        "Largest image accepted, in bytes (fetched or uploaded); 413 above it.")
    max_upload_store_bytes: int = setting(
        "NSFW_MAX_UPLOAD_STORE_BYTES", "134217728", _int(1),
        "Most bytes the browser app's uploaded files may hold in memory, all sessions together (Streamlit keeps "
        "each upload in memory while its page uses it); an upload past it is refused with 503 "
        "upload_store_full, one larger than it with 413 upload_too_large (docs/security.md).")
    max_pixels: int = setting(
        "NSFW_MAX_PIXELS", "50000000", _int(1),
        "Largest image accepted, in pixels (width x height); 413 above it, checked before decoding. Also "
        "bounds the decoder's largest buffer (a TIFF tile or strip, progressive JPEG coefficients), counted "
        "in 4-byte pixels.")
    fetch_timeout: float = setting(
        "NSFW_FETCH_TIMEOUT", "10", _float(0.001),
        "Total deadline for fetching one URL, in seconds (connect, redirects and body).")
    connect_timeout: float = setting(
        "NSFW_CONNECT_TIMEOUT", "3", _float(0.001),
        "Timeout for one TCP/TLS connect, in seconds (capped by the total deadline).")
    fetch_keepalive: bool = setting(
        "NSFW_FETCH_KEEPALIVE", "true", _bool,
        "Keep connections to image hosts open for the next fetch (at most 4 idle per host, 32 in all, 5 s); "
        "each reuse is checked against a fresh DNS answer. false: one connection per fetch.")
    body_timeout: float = setting(
        "NSFW_BODY_TIMEOUT", "30", _float(0.001),
        "Longest time a client may take to send a request body (an upload or a batch), in seconds; 408 "
        "request_timeout after it. A stalled upload holds an in-flight slot until then.")
    max_redirects: int = setting(
        "NSFW_MAX_REDIRECTS", "5", _int(0, 20),
        "Most redirects followed for one URL; each hop is checked like the first.")
    max_url_length: int = setting(
        "NSFW_MAX_URL_LENGTH", "2048", _int(16),
        "Longest URL accepted, in characters.")
    allow_private_hosts: tuple[str, ...] = setting(
        "NSFW_ALLOW_PRIVATE_HOSTS", "", _list,
        "Comma-separated host or host:port entries that may be fetched although loopback or private; * allows"
        " all. For development and tests only.")
    api_keys: tuple[str, ...] = setting(
        "NSFW_API_KEYS", "", _keys,
        "Comma-separated API keys, each at least 16 characters (the server refuses to start otherwise); when set, "
        "/predict and /v1 require 'Authorization: Bearer <key>'. Wrong keys are limited per client address "
        "(NSFW_WRONG_KEY_LIMIT).", secret=True)
    wrong_key_limit: Any = setting(
        "NSFW_WRONG_KEY_LIMIT", "30/m;burst=30", _rate,
        "Wrong keys allowed per client address (the peer; a reverse proxy's own address behind one), of every "
        "kind together (NSFW_API_KEYS, NSFW_METRICS_TOKEN, the reviewer API's keys): beyond it a request with a "
        "wrong or missing key is answered 429 rate_limited instead of 401 (a right key still passes). "
        "Shared by replicas through NSFW_DATABASE_URL. Empty: no limit.")
    metrics_token: str = setting(
        "NSFW_METRICS_TOKEN", "", _secret,
        "A bearer token for GET /metrics alone (at least 16 characters), for the Prometheus scraper. When it "
        "or NSFW_API_KEYS is set, /metrics requires 'Authorization: Bearer <token or API key>'; with neither, "
        "/metrics is public like the rest of the API.", secret=True)
    log_format: str = setting(
        "NSFW_LOG_FORMAT", "text", _log_format,
        "Log lines as plain text (text) or one JSON object a line (json), each with the request id when it "
        "is about a request; image URLs are logged as host#hash, never with their query string "
        "(docs/operations.md).")
    local_mode: bool = setting(
        "NSFW_LOCAL_MODE", "false", _bool,
        "Every visitor of the browser app acts as admin, as 'local', without signing in. For one person on "
        "their own machine: refused unless NSFW_HOST is a loopback address; ./run.sh turns it on when "
        "NSFW_HOST is not set (docs/security.md).")
    public_demo: bool = setting(
        "NSFW_PUBLIC_DEMO", "false", _bool,
        "Let visitors who are not signed in use the Classify page although NSFW_API_KEYS is set (without API "
        "keys the API is public, and so is that page).")
    admin_emails: tuple[str, ...] = setting(
        "NSFW_ADMIN_EMAILS", "", _emails,
        "Comma-separated e-mail addresses (alice@example.com) or domains (@example.com) whose OpenID Connect "
        "sign-in makes them admins: calibration, thresholds, labelled sets on the server, exports, review.")
    reviewer_emails: tuple[str, ...] = setting(
        "NSFW_REVIEWER_EMAILS", "", _emails,
        "Comma-separated e-mail addresses or @domains whose OpenID Connect sign-in makes them reviewers "
        "(the review queue and the Classify page).")
    admin_secret: str = setting(
        "NSFW_ADMIN_SECRET", "", _secret,
        "Sign-in secret for the admin role, for deployments without an identity provider (at least 16 "
        "characters; compared in constant time, failed attempts rate-limited, never logged).", secret=True)
    reviewer_secret: str = setting(
        "NSFW_REVIEWER_SECRET", "", _secret,
        "Sign-in secret for the reviewer role (as NSFW_ADMIN_SECRET).", secret=True)
    oidc_metadata_url: str = setting(
        "NSFW_OIDC_METADATA_URL", "", str,
        "OpenID Connect discovery URL of the identity provider (https://.../.well-known/openid-configuration);"
        " with NSFW_OIDC_CLIENT_ID and NSFW_OIDC_CLIENT_SECRET it turns on 'Sign in with' (Streamlit's "
        "st.login). An [auth] section in .streamlit/secrets.toml works too and wins.")
    oidc_client_id: str = setting(
        "NSFW_OIDC_CLIENT_ID", "", str,
        "Client id registered with the identity provider.")
    oidc_client_secret: str = setting(
        "NSFW_OIDC_CLIENT_SECRET", "", _secret,
        "Client secret registered with the identity provider (at least 16 characters like every secret: with "
        "NSFW_OIDC_COOKIE_SECRET empty, the key that signs the sign-in cookie is derived from it).", secret=True)
    oidc_redirect_uri: str = setting(
        "NSFW_OIDC_REDIRECT_URI", "", str,
        "The service's public URL followed by /oauth2callback, as registered with the provider (empty: "
        "APP_URL + /oauth2callback, else http://localhost:PORT/oauth2callback).")
    oidc_cookie_secret: str = setting(
        "NSFW_OIDC_COOKIE_SECRET", "", _secret,
        "Key that signs the sign-in cookie (at least 16 characters like every secret, 32 random ones recommended; "
        "the same on every instance). "
        "Empty: derived from NSFW_OIDC_CLIENT_SECRET. Changing it ends every OpenID Connect sign-in "
        "(README \"Security model\").", secret=True)
    oidc_revalidate_seconds: int = setting(
        "NSFW_OIDC_REVALIDATE_SECONDS", "300", _int(0, 86400),
        "How often an OpenID Connect sign-in is checked again with the provider (its userinfo endpoint, with "
        "the sign-in's access token), at the session's next action: a token the provider refuses (revoked, "
        "expired) or claims that no longer give the role end the session. A provider that cannot be reached "
        "is allowed twice this long. 0: never (a user disabled at the provider keeps access until the "
        "session's lifetime ends).")
    session_idle_minutes: float = setting(
        "NSFW_SESSION_IDLE_MINUTES", "30", _float(0.01, 10080),
        "A sign-in (OpenID Connect or secret) ends after this many minutes without any action in the browser "
        "app (README \"Security model\").")
    session_max_hours: float = setting(
        "NSFW_SESSION_MAX_HOURS", "12", _float(0.001, 8760),
        "A sign-in ends this many hours after it began, however active (then sign in again).")
    adult_classes: tuple[str, ...] = setting(
        "NSFW_ADULT_CLASSES", "porn,sexy", _classes,
        "Classes whose scores add up to the adult score.")
    safe_classes: tuple[str, ...] = setting(
        "NSFW_SAFE_CLASSES", "neutral,drawings", _classes,
        "Classes whose scores add up to the safe score.")
    adult_threshold: float = setting(
        "NSFW_ADULT_THRESHOLD", "0.7", _float(0.0, 1.0),
        "Default adult threshold: adult score at or above it gives 'adult' (a saved thresholds version "
        "overrides it).")
    safe_threshold: float = setting(
        "NSFW_SAFE_THRESHOLD", "0.9", _float(0.0, 1.0),
        "Default safe threshold: safe score at or above it gives 'safe' (a saved thresholds version "
        "overrides it).")
    data_dir: str = setting(
        "NSFW_DATA_DIR", "var", str,
        "Folder for files the service writes: thresholds, score cache, review queue (relative to the project "
        "root).")
    labelsets_dir: str = setting(
        "NSFW_LABELSETS_DIR", "data", str,
        "The only folder labelled sets are read from on the server (relative to the project root): the "
        "calibrate page's folders and manifests, and the paths an uploaded manifest names, must resolve "
        "inside it, symbolic links included.")
    labelsets_quota_bytes: int = setting(
        "NSFW_LABELSETS_QUOTA_BYTES", "1073741824", _int(1),
        "Disk that ZIP archives uploaded on the calibrate page may fill once extracted (under "
        "<NSFW_DATA_DIR>/labelsets), in bytes; the least recently used are deleted to make room, and an "
        "archive that cannot fit is refused. The default equals the largest one archive may expand to, so "
        "any allowed archive fits alone.")
    runtime: str = setting(
        "NSFW_RUNTIME", "litert", _runtime,
        "Inference runtime: litert (the model compiled for LiteRT, shipped in model/compiled/ and unpacked into "
        "NSFW_COMPILED_DIR, run by LiteRT with XNNPACK: less CPU per image than TensorFlow (BENCHMARKS.md), and "
        "no TensorFlow installed) or tensorflow (needs requirements-convert.txt).")
    compiled_dir: str = setting(
        "NSFW_COMPILED_DIR", "", str,
        "Folder for the models unpacked (or compiled) for litert (empty: <NSFW_DATA_DIR>/compiled); python -m "
        "nsfw_core.inference.litert fills it ahead of time, e.g. in a build step.")
    model_threads: int = setting(
        "NSFW_MODEL_THREADS", "0", _int(0, 256),
        "Threads one forward pass uses (0: the CPUs this process may use, counting a container's cgroup CPU "
        "quota); litert splits them between the lanes that run a batch's images in parallel.")
    max_batch: int = setting(
        "NSFW_MAX_BATCH", "8", _int(1, 512),
        "Most images handed to the model at once. The tensorflow runtime runs them as one forward pass "
        "(larger batches cost activation memory; BENCHMARKS.md); litert runs them one by one, shared out "
        "among its lanes.")
    batch_wait_ms: float = setting(
        "NSFW_BATCH_WAIT_MS", "4", _float(0.0, 1000.0),
        "tensorflow runtime only: how long the batcher waits for more images before a forward pass, in "
        "milliseconds (not at all when no other image is being fetched or decoded). litert never waits: a "
        "lone image already runs on all threads, about as fast per image as a batch on the lanes.")
    queue_size: int = setting(
        "NSFW_QUEUE_SIZE", "512", _int(1),
        "Images waiting for inference before new requests get 503 with Retry-After.")
    decode_pixel_budget: int = setting(
        "NSFW_DECODE_PIXEL_BUDGET", "50000000", _int(1),
        "Most pixels decoded at once across all threads (bounds memory; one image larger than this still "
        "decodes, alone).")
    decode_timeout: float = setting(
        "NSFW_DECODE_TIMEOUT", "5", _float(0.1, 600.0),
        "Deadline for decoding one expensive image, in seconds: images whose declared structure makes them "
        "costly (large, progressive, TIFF) decode in separate processes, killed at the deadline (422 "
        "decode_timeout). Cheap images decode in the worker threads, small enough by construction to finish "
        "well within it.")
    decode_processes: int = setting(
        "NSFW_DECODE_PROCESSES", "2", _int(1, 64),
        "Expensive images decoded at once, each in its own process (the rest wait); the worker threads stay "
        "free for cheap images meanwhile.")
    max_frames: int = setting(
        "NSFW_MAX_FRAMES", "16", _int(1, 256),
        "Most frames of an animated GIF, WebP or PNG (or pages of a TIFF) classified: the first, the last and "
        "those shown at evenly spaced instants; the image gets its worst frame's scores and verdict. Each "
        "frame costs one inference and counts as an image in flight.")
    video_fps: float = setting(
        "NSFW_VIDEO_FPS", "1", _float(0.01, 30.0),
        "Frames of a video (MP4, MOV, WebM, MKV) judged per second of its length: the first frame, then one "
        "at an unpredictable point of each interval; the video gets its worst frame's scores and verdict, "
        "and its timeline (segments) in the detailed answer.")
    max_video_frames: int = setting(
        "NSFW_MAX_VIDEO_FRAMES", "1800", _int(1, 100000),
        "Most frames of one video judged; a longer video's frames are spread further apart (1800: 30 minutes "
        "at NSFW_VIDEO_FPS=1). Each frame costs one inference (and the video's decoding is charged too: "
        "docs/http-api.md#rate-limits).")
    max_video_seconds: float = setting(
        "NSFW_MAX_VIDEO_SECONDS", "60", _float(0.1, 86400.0),
        "Longest video a synchronous request (/predict, /v1/classify) takes, in seconds of its frames; a "
        "longer one is 413 video_too_long: send it as a job (POST /v1/jobs). Its frames count as images in "
        "flight while it is judged.")
    max_video_bytes: int = setting(
        "NSFW_MAX_VIDEO_BYTES", "67108864", _int(1),
        "Largest video a synchronous request takes, in bytes (uploaded, base64 or fetched); the cap that "
        "applies is chosen from the first bytes (an image stays under NSFW_MAX_BYTES). A body without "
        "Content-Length is counted at this size in NSFW_MAX_BODY_BYTES_IN_FLIGHT while it arrives.")
    max_video_pixels: int = setting(
        "NSFW_MAX_VIDEO_PIXELS", "8847360", _int(1),
        "Largest video frame accepted, in pixels (width x height, as the container declares it; 4096x2160 by "
        "default); 413 above it. The decoding process may use about 96 bytes per pixel of it.")
    video_timeout: float = setting(
        "NSFW_VIDEO_TIMEOUT", "60", _float(0.1, 3600.0),
        "Deadline for decoding a video, in seconds: all of it in a synchronous request, each sampled frame in "
        "a job (422 decode_timeout: the decoding process is killed).")
    job_max_bytes: int = setting(
        "NSFW_JOB_MAX_BYTES", "268435456", _int(1),
        "Largest video a job (POST /v1/jobs) fetches, in bytes; it is held in memory while the job runs.")
    job_fetch_timeout: float = setting(
        "NSFW_JOB_FETCH_TIMEOUT", "120", _float(0.001, 3600.0),
        "Deadline for fetching a job's video, in seconds.")
    job_workers: int = setting(
        "NSFW_JOB_WORKERS", "1", _int(0, 64),
        "Jobs one instance runs at once (0: this instance runs none; it still accepts them for the others). "
        "Replicas share the jobs in the database, each job run by one instance at a time.")
    job_lease_seconds: float = setting(
        "NSFW_JOB_LEASE_SECONDS", "30", _float(1.0, 3600.0),
        "How long an instance holds a running job without renewing its lease (it renews every third of it); a "
        "job whose instance died is taken over by another (or by the same one restarted) after it, and goes "
        "on from the frames already judged.")
    job_retention_days: int = setting(
        "NSFW_JOB_RETENTION_DAYS", "7", _int(0),
        "Finished jobs (and their frames' scores) older than this many days are deleted; 0 keeps them.")
    job_max_queued: int = setting(
        "NSFW_JOB_MAX_QUEUED", "10000", _int(1),
        "Most video jobs queued or running on the service at once, all clients together (each client has at "
        "most 100 of them); beyond it POST /v1/jobs is 503 overloaded with Retry-After. Without API keys every "
        "address is a client: this bounds the queue, and what each claim scans, whatever their number.")
    job_max_kept: int = setting(
        "NSFW_JOB_MAX_KEPT", "1000", _int(1),
        "Finished jobs (done or failed) kept per client (API key, else address), whatever their age: when one "
        "of its jobs ends, that client's older finished jobs beyond this many are deleted with their frames, "
        "so jobs that fail at once cannot fill the database within NSFW_JOB_RETENTION_DAYS. Without API keys, "
        "everyone behind one address (a proxy, a NAT) is one client and shares this count.")
    max_jpeg_scans: int = setting(
        "NSFW_MAX_JPEG_SCANS", "100", _int(1, 100000),
        "Most scans a progressive JPEG may have (413 image_too_large above it): each scan is decoded over the"
        " whole image, and ordinary encoders write about 10.")
    max_in_flight: int = setting(
        "NSFW_MAX_IN_FLIGHT", "128", _int(1),
        "Work being fetched, decoded or classified at once, in cost units (a photo on the default model is 1; "
        "batch items count each, each frame one, and what an expensive model adds up to half of this limit; "
        "docs/http-api.md#rate-limits); above it requests get 503 with Retry-After, before their body is read "
        "when they can be counted then.")
    key_share: float = setting(
        "NSFW_KEY_SHARE", "0.5", _share,
        "The share of the machine one API key may take while others want it: at most this fraction of "
        "NSFW_MAX_IN_FLIGHT in flight, and of the cost units a second the machine measured it can serve at "
        "start-up (used only while another key is active: a key alone may use it all); beyond it 429 "
        "rate_limited. Applies with NSFW_API_KEYS only (without keys every client behind a proxy has one "
        "address). 1: no share limit.")
    max_body_bytes_in_flight: int = setting(
        "NSFW_MAX_BODY_BYTES_IN_FLIGHT", "134217728", _int(1),
        "Request bodies (uploads, batches) held in memory at once, in bytes, counted at their declared or "
        "largest allowed size before they are read; above it requests get 503 with Retry-After. Bounds what "
        "slow uploads can hold (the default leaves room in a 1 GB instance).")
    workers: int = setting(
        "NSFW_WORKERS", "4", _int(1, 256),
        "Threads that fetch and decode images concurrently (BENCHMARKS.md compares counts).")
    max_batch_items: int = setting(
        "NSFW_MAX_BATCH_ITEMS", "64", _int(1, 10000),
        "Most URLs accepted in one batch request.")
    database_url: str = setting(
        "NSFW_DATABASE_URL", "", str,
        "The one database (review queue and thresholds history): a postgresql:// URL (psycopg 3), "
        "sqlite:///path, or empty for SQLite <data_dir>/review.sqlite.")
    ephemeral_disk: bool | None = setting(
        "NSFW_EPHEMERAL_DISK", "auto", _auto_bool,
        "Whether the local disk is lost on redeploy: true, false, or auto (true when APP_URL is set, which "
        ".do/app.yaml binds on App Platform). With SQLite on such a disk, /health and the start-up log warn "
        "that the review queue, decisions and saved thresholds will be lost.")
    review_verdicts: tuple[str, ...] = setting(
        "NSFW_REVIEW_VERDICTS", "unknown", _verdicts,
        "Comma-separated verdicts the API sends to human review: unknown, or unknown,adult to review adult "
        "ones too; empty turns the queue off.")
    review_store_uploads: bool = setting(
        "NSFW_REVIEW_STORE_UPLOADS", "false", _bool,
        "Keep queued uploads' bytes in the review database, purged with their items. Without them the reviewer "
        "decides from the scores and the decision is not remembered for later copies. A URL item's bytes (at "
        "most NSFW_MAX_BYTES) are always kept: the reviewer sees what was classified, never the URL fetched "
        "again.")
    review_quota: int = setting(
        "NSFW_REVIEW_QUOTA", "100", _int(0),
        "Items one API key (without keys: one client address, so behind a proxy every client shares one budget) "
        "may add to the human review queue per hour; "
        "beyond it images are answered with their verdict and review_error, not queued. 0: no limit. An item "
        "queued only because of the request's own thresholds protects only that key once decided. Audit items "
        "(NSFW_AUDIT_RATE: sampled by the server, not asked for) count against no key.")
    review_retention_days: int = setting(
        "NSFW_REVIEW_RETENTION_DAYS", "30", _int(0),
        "Review items (and stored images) older than this many days are deleted; 0 keeps them forever.")
    review_lease_seconds: int = setting(
        "NSFW_REVIEW_LEASE_SECONDS", "300", _int(1),
        "How long a reviewer holds a claimed item before another reviewer may get it.")
    review_max_held: int = setting(
        "NSFW_REVIEW_MAX_HELD", "24", _int(1, 10000),
        "Most items one reviewer API key holds claimed at once (POST /v1/reviews/claim); a claim beyond it is "
        "429 too_many_claims until the key decides one or a lease runs out, so one key cannot hold the whole "
        "queue away from the other reviewers.")
    audit_rate: tuple[tuple[str, float], ...] = setting(
        "NSFW_AUDIT_RATE", "adult=0.01,safe=0.002", _audit_rates,
        "Share of the API's automatic verdicts sent to the review queue as audit items, to measure how often "
        "they are wrong (the Evaluate page, GET /v1/evaluation): one rate for both (0.01) or per verdict "
        "(adult=0.02,safe=0.005); 0 turns it off. The client's answer is unchanged; reviewers see audit items "
        "blind (no verdict, no scores), their bytes are kept whatever NSFW_REVIEW_STORE_UPLOADS says, and "
        "their decisions protect every client (docs/review.md).")
    double_review_rate: float = setting(
        "NSFW_DOUBLE_REVIEW_RATE", "0", _float(0.0, 1.0),
        "Share of queued items that two different reviewers decide independently, to measure how much "
        "reviewers agree (Cohen's kappa); when they disagree on adult/safe an admin decides. Needs at least "
        "two reviewers.")
    reviewer_api_keys: tuple[str, ...] = setting(
        "NSFW_REVIEWER_API_KEYS", "", _keys,
        "Comma-separated keys (at least 16 characters each) of the reviewer API (POST /v1/reviews/claim, "
        "/v1/reviews/{id}/decision, /v1/reviews/undo) and GET /v1/evaluation; separate from NSFW_API_KEYS. "
        "A decision records the key's id (a hash), never the key.", secret=True)
    admin_api_keys: tuple[str, ...] = setting(
        "NSFW_ADMIN_API_KEYS", "", _keys,
        "Keys of the reviewer API with the admin role: everything a reviewer key may do, and deciding the "
        "items two reviewers disagreed on.", secret=True)
    explain_grid: int = setting(
        "NSFW_EXPLAIN_GRID", "8", _int(2, 16),
        "Cells per side of the evidence heat-maps (POST /v1/explain and the Review page). An explanation costs "
        "grid^2 + 1 forward passes, each charged at the model's cost in flight and against the rate limit: 65 for 8 "
        "(docs/performance.md has the time).")
    review_grid_size: int = setting(
        "NSFW_REVIEW_GRID_SIZE", "24", _int(1, 96),
        "Items one page of the review grid claims and shows at once (blurred thumbnails decided in one action).")
    evidence_ahead: int = setting(
        "NSFW_EVIDENCE_AHEAD", "2", _int(0, 32),
        "Review items whose evidence heat-maps are computed in the background ahead of the reviewers, while "
        "the Review page is open (0: only when an item is claimed).")
    match_distance: int = setting(
        "NSFW_MATCH_DISTANCE", "31", _int(0, 63),
        "Largest PDQ distance (bits of 256) at which an image counts as a copy of a reviewer-decided or "
        "hash-listed one and gets its verdict (verdict_source review or list); 31 is PDQ's published "
        "default (BENCHMARKS.md has the distances measured here).")
    jpeg_draft: bool = setting(
        "NSFW_JPEG_DRAFT", "true", _bool,
        "Decode large JPEGs at a reduced scale (shorter side kept at least 4x the model input); faster, "
        "within the fidelity bound.")
    model_memory_mb: int = setting(
        "NSFW_MODEL_MEMORY_MB", "512", _int(1),
        "Memory the models loaded on demand by API v1 requests (\"model\") may take together with the default "
        "one, each counted at three times its compiled file (MobileNetV2Mid 52, MobileNetV2 31, InceptionV3 268 "
        "MB: measured RSS); beyond it the least recently used is unloaded (never the default model).")
    rate_limit: Any = setting(
        "NSFW_RATE_LIMIT", "", _rate,
        "Cost units per API key (per client address without keys) to /v1 and /predict, one budget for both: "
        "e.g. 20/s;burst=40 (units s, m, h; burst defaults to the rate per second); 429 with Retry-After beyond "
        "it. A photo on the default model costs 1, a request at least 1, an animation its frames times the "
        "model's relative cost, a video its sampled frames so and its decoding beyond them, POST /v1/explain "
        "its forward passes (65 by default) times the model's relative cost (docs/security.md). Shared by "
        "replicas when NSFW_DATABASE_URL is set, per instance otherwise. Empty: none.")
    webhook_url: str = setting(
        "NSFW_WEBHOOK_URL", "", str,
        "Each review decision, and each undo of one, is POSTed here as JSON (signed, retried with backoff, kept "
        "in the database's "
        "outbox until delivered); fetched like images, so private addresses need NSFW_ALLOW_PRIVATE_HOSTS.")
    webhook_secret: str = setting(
        "NSFW_WEBHOOK_SECRET", "", _secret,
        "Key of the webhooks' HMAC-SHA256 signature (header NSFW-Signature: t=<unix time>,v1=<hex>), at least 16 "
        "characters.", secret=True)
    webhook_concurrency: int = setting(
        "NSFW_WEBHOOK_CONCURRENCY", "4", _int(1, 64),
        "Webhook deliveries in progress at once (per instance): a receiver that hangs on one event holds one of "
        "them, the others go on; events not tried yet go before retries.")

    @property
    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            max_bytes=self.max_bytes, timeout=self.fetch_timeout, connect_timeout=self.connect_timeout,
            keepalive=self.fetch_keepalive, max_redirects=self.max_redirects,
            max_url_length=self.max_url_length, allow_private_hosts=self.allow_private_hosts,
            max_video_bytes=self.max_video_bytes)

    @property
    def job_fetch_policy(self) -> FetchPolicy:
        """A job's fetch: its video under NSFW_JOB_MAX_BYTES and NSFW_JOB_FETCH_TIMEOUT (images as usual)."""
        return dataclasses.replace(self.fetch_policy, timeout=self.job_fetch_timeout,
                                   max_video_bytes=self.job_max_bytes)

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_bytes=self.max_bytes, max_pixels=self.max_pixels, max_jpeg_scans=self.max_jpeg_scans,
            jpeg_draft=self.jpeg_draft, pixel_budget=self.decode_pixel_budget, timeout=self.decode_timeout,
            processes=self.decode_processes, max_frames=self.max_frames, video_fps=self.video_fps,
            max_video_frames=self.max_video_frames, max_video_seconds=self.max_video_seconds,
            max_video_pixels=self.max_video_pixels, video_timeout=self.video_timeout)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(name=self.model, model_dir=self.model_dir, runtime=self.runtime,
                           compiled_dir=self.compiled_dir, threads=self.model_threads)

    @property
    def threshold_config(self) -> ThresholdConfig:
        return ThresholdConfig(adult_classes=self.adult_classes, safe_classes=self.safe_classes,
                               adult_threshold=self.adult_threshold, safe_threshold=self.safe_threshold,
                               data_dir=self.data_dir)

    @property
    def review_config(self) -> ReviewConfig:
        return ReviewConfig(database_url=self.database_url, data_dir=self.data_dir,
                            verdicts=self.review_verdicts, store_uploads=self.review_store_uploads,
                            retention_days=self.review_retention_days, lease_seconds=self.review_lease_seconds,
                            quota=self.review_quota, audit_rates=self.audit_rate,
                            double_review_rate=self.double_review_rate)

    @property
    def reviewer_keys(self) -> ReviewerKeys:
        return ReviewerKeys(reviewer=self.reviewer_api_keys, admin=self.admin_api_keys)

    @property
    def access_config(self) -> AccessConfig:
        return AccessConfig(
            local_mode=self.local_mode, public_demo=self.public_demo, api_keyed=bool(self.api_keys),
            admin_emails=self.admin_emails, reviewer_emails=self.reviewer_emails,
            admin_secret=self.admin_secret, reviewer_secret=self.reviewer_secret,
            oidc=OIDCConfig(metadata_url=self.oidc_metadata_url, client_id=self.oidc_client_id,
                            client_secret=self.oidc_client_secret, redirect_uri=self.oidc_redirect_uri,
                            cookie_secret=self.oidc_cookie_secret, port=self.port))

    @property
    def session_config(self) -> SessionConfig:
        return SessionConfig(idle_s=self.session_idle_minutes * 60, max_s=self.session_max_hours * 3600,
                             revalidate_s=float(self.oidc_revalidate_seconds))

    @property
    def labelset_config(self) -> LabelSetConfig:
        return LabelSetConfig(root=self.labelsets_dir, uploads_dir=str(Path(self.data_dir) / "labelsets"),
                              quota_bytes=self.labelsets_quota_bytes, max_bytes=self.max_bytes)

    @property
    def serving_limits(self) -> ServingLimits:
        return ServingLimits(
            max_bytes=self.max_bytes, max_url_length=self.max_url_length, body_timeout=self.body_timeout,
            max_in_flight=self.max_in_flight, max_body_bytes_in_flight=self.max_body_bytes_in_flight,
            key_share=self.key_share,
            max_batch_items=self.max_batch_items, workers=self.workers,
            max_batch=self.max_batch, batch_wait_ms=self.batch_wait_ms, queue_size=self.queue_size,
            api_keys=self.api_keys, max_video_bytes=self.max_video_bytes, explain_grid=self.explain_grid)


# ---------------------------------------------------------------- the narrow parts
# Small explicit objects, each passed to exactly the code that needs it (as HTTPX passes Timeout and
# Limits): the fetcher never sees the review database's URL, the review queue never sees fetch limits.
# They carry no defaults of their own: the defaults are the table's, ``load_settings({}).fetch_policy``.


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """What the URL fetcher may do: sizes, deadlines, redirects, which private hosts it may reach."""

    max_bytes: int
    timeout: float
    connect_timeout: float
    keepalive: bool
    max_redirects: int
    max_url_length: int
    allow_private_hosts: tuple[str, ...]
    max_video_bytes: int = 0  # a video's cap, chosen from its first bytes (0: videos under max_bytes too)


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """What decoding one image may cost, and how much decoding runs at once."""

    max_bytes: int
    max_pixels: int
    max_jpeg_scans: int
    jpeg_draft: bool
    pixel_budget: int
    timeout: float
    processes: int
    max_frames: int = 16
    video_fps: float = 1.0
    max_video_frames: int = 1800
    max_video_seconds: float = 60.0  # a synchronous request's longest video
    max_video_pixels: int = 8847360
    video_timeout: float = 60.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model to load, from where, on which runtime, with how many threads."""

    name: str
    model_dir: str
    runtime: str
    compiled_dir: str
    threads: int


@dataclasses.dataclass(frozen=True)
class ThresholdConfig:
    """The default thresholds and classes, and the folder where saved thresholds live."""

    adult_classes: tuple[str, ...]
    safe_classes: tuple[str, ...]
    adult_threshold: float
    safe_threshold: float
    data_dir: str


@dataclasses.dataclass(frozen=True)
class ReviewConfig:
    """The review queue: where it lives, what it takes in, how long it keeps it."""

    database_url: str
    data_dir: str
    verdicts: tuple[str, ...]
    store_uploads: bool
    retention_days: int
    lease_seconds: int
    quota: int = 0  # items per client per hour (NSFW_REVIEW_QUOTA; 0: no limit)
    audit_rates: tuple[tuple[str, float], ...] = ()  # (verdict, NSFW_AUDIT_RATE's rate) pairs
    double_review_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class ReviewerKeys:
    """The reviewer API's keys, by role (NSFW_REVIEWER_API_KEYS, NSFW_ADMIN_API_KEYS)."""

    reviewer: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    admin: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.reviewer or self.admin)


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """What the HTTP API admits: body sizes and deadlines, images in flight, batch sizes, API keys."""

    max_bytes: int
    max_url_length: int
    body_timeout: float
    max_in_flight: int
    max_body_bytes_in_flight: int
    key_share: float
    max_batch_items: int
    workers: int
    max_batch: int
    batch_wait_ms: float
    queue_size: int
    api_keys: tuple[str, ...]
    explain_grid: int = 8  # NSFW_EXPLAIN_GRID: cells per side of /v1/explain's heat-maps
    max_video_bytes: int = 0  # a video's byte cap in a request (0: videos under max_bytes too)

    @property
    def max_body(self) -> int:
        """The most bytes one image or video in a request may take."""
        return max(self.max_bytes, self.max_video_bytes)


@dataclasses.dataclass(frozen=True)
class OIDCConfig:
    """Sign-in through an OpenID Connect provider, from the environment (secrets.toml's [auth] also works)."""

    metadata_url: str
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    redirect_uri: str
    cookie_secret: str = dataclasses.field(repr=False)
    port: int

    @property
    def configured(self) -> bool:
        return bool(self.metadata_url and self.client_id and self.client_secret)


@dataclasses.dataclass(frozen=True)
class AccessConfig:
    """Who may do what in the browser app: local mode, the public demo, allow-lists, secrets, OIDC."""

    local_mode: bool
    public_demo: bool
    api_keyed: bool
    admin_emails: tuple[str, ...]
    reviewer_emails: tuple[str, ...]
    admin_secret: str = dataclasses.field(repr=False)
    reviewer_secret: str = dataclasses.field(repr=False)
    oidc: OIDCConfig


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """How long a sign-in lives (nsfw_core.state.sessions), in seconds; revalidate_s 0: never re-checked."""

    idle_s: float
    max_s: float
    revalidate_s: float


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclasses.dataclass(frozen=True)
class LabelSetConfig:
    """Where labelled sets may be read from on the server, where uploads are extracted and in how much disk."""

    root: str  # NSFW_LABELSETS_DIR, absolute
    uploads_dir: str  # <data_dir>/labelsets: extracted ZIP uploads
    quota_bytes: int
    max_bytes: int  # the byte cap on one image


def _table() -> tuple[Setting, ...]:
    rows = []
    for f in dataclasses.fields(Settings):
        row = f.metadata["setting"]
        rows.append(dataclasses.replace(row, attr=f.name))
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _table()


def _resolve(settings: Settings) -> Settings:
    def under_root(p: str) -> str:
        path = Path(p)
        return str(path if path.is_absolute() else ROOT / path)

    data_dir = under_root(settings.data_dir)
    compiled_dir = under_root(settings.compiled_dir) if settings.compiled_dir else str(Path(data_dir) / "compiled")
    return dataclasses.replace(settings, model_dir=under_root(settings.model_dir), data_dir=data_dir,
                               compiled_dir=compiled_dir, labelsets_dir=under_root(settings.labelsets_dir))


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Parse settings from ``environ`` (default ``os.environ``); keyword overrides win."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = env.get(s.name, s.default)
        try:
            values[s.attr] = s.parse(raw)
        except ValueError as exc:
            shown = "<secret>" if s.secret else repr(raw)
            raise SettingsError(f"{s.name}={shown}: {exc}") from exc
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    values.update(overrides)
    if values["local_mode"] and values["host"] not in LOOPBACK_HOSTS:
        raise SettingsError(f"NSFW_LOCAL_MODE=true needs a loopback NSFW_HOST ({', '.join(LOOPBACK_HOSTS)}), not "
                            f"{values['host']!r}: on other interfaces every visitor would be admin")
    return _resolve(Settings(**values))


def markdown_table() -> str:
    """The settings table of the docs' settings page (``docs/settings.md``)."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        lines.append(f"| `{s.name}` | {default} | {s.help} |")
    return "\n".join(lines)


SETTINGS_PAGE = ROOT / "docs" / "settings.md"
TABLE_START = "<!-- settings:start (generated by python -m nsfw_core.base.settings --write; do not edit) -->"
TABLE_END = "<!-- settings:end -->"


def page_with_table(page: str) -> str:
    """The settings page's text with the table between its markers generated anew from ``SETTINGS``."""
    start = page.index(TABLE_START) + len(TABLE_START)
    return page[:start] + "\n" + markdown_table() + "\n" + page[page.index(TABLE_END, start):]


if __name__ == "__main__":  # pragma: no cover
    import sys

    if sys.argv[1:] == ["--write"]:
        SETTINGS_PAGE.write_text(page_with_table(SETTINGS_PAGE.read_text()))
        print(f"{SETTINGS_PAGE.relative_to(ROOT)}: settings table rewritten")
    else:
        print(markdown_table())
