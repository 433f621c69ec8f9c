"""The HTTP API: Starlette routes and lifespan, served beside the Streamlit UI.

Endpoints (see :func:`nsfw_core.http.openapi.openapi_document` for the schemas):

* ``POST /predict?url=<image URL>``: the five class probabilities,
  ``{"drawings", "hentai", "neutral", "porn", "sexy"}``.  Instead of ``url``
  the body may carry the image (raw bytes, or ``multipart/form-data`` with a
  ``file`` or ``image`` field).  ``detail=1`` gives the rich answer (verdict,
  scores, thresholds, model, timings, sha256).
* ``POST /predict/batch``: ``{"items": [{"id", "url"}, ...], "detail": bool}``
  or a plain list of URLs -> ``{"results": [...]}`` in order, errors per item.
* ``GET /health``: 200 once the model is loaded and warmed up, else 503.
* ``GET /openapi.json``: this API as OpenAPI 3.1.
* ``GET /metrics``: Prometheus metrics (:mod:`nsfw_core.metrics`); behind a key when
  ``NSFW_API_KEYS`` or ``NSFW_METRICS_TOKEN`` is set.

Every error, whatever the path, is JSON ``{"code", "message", "request_id", ...details}``
with the status of the core's error class; :func:`error_response` is the one
place where errors become responses.  Every API response carries ``X-Request-ID``
(the client's when sane, else a new one, :mod:`nsfw_core.base.requestid`), and every API
request gets one access line in the log (route, status, duration, verdict, timings,
the image URL as host#hash) and its counts in the metrics.  Each API path answers every HTTP method
itself (:class:`ApiRoute`), so a wrong method gets JSON 405 instead of falling
through to Streamlit's HTML catch-all; unknown paths under ``/predict/`` and
``/v1/`` get JSON 404.

Startup: the lifespan starts loading the model in the background and returns
at once, so the server answers ``/health`` with 503 ``not_ready`` while it
loads (a few seconds) and for good, with the reason, if loading fails.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route, get_route_path

from nsfw_core.base import requestid
from nsfw_core.base.errors import (
    BadRequest,
    InputError,
    InvalidURL,
    NSFWError,
    Overloaded,
    RequestTimeout,
    TooLarge,
    Unauthorized,
)
from nsfw_core.base.logs import extra_fields, url_for_log
from nsfw_core.base.settings import Settings, load_settings
from nsfw_core.classify import Classification, Timings, classify_bytes, classify_url
from nsfw_core.context import Context, current, install
from nsfw_core.http.openapi import MAX_ID_LENGTH, MAX_ID_NUMBER, openapi_document

log = logging.getLogger(__name__)
access_log = logging.getLogger("nsfw_core.http.app.access")  # one line per API request

Handler = Callable[[Request], Awaitable[Response]]

MULTIPART_SLACK = 64 * 1024  # room for the multipart headers and boundaries around the file
BATCH_ITEM_BYTES = 512  # JSON room per batch item besides its URL
UPLOAD_FIELDS = ("file", "image")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


# ---------------------------------------------------------------- errors -> HTTP


class NotFound(InputError):
    status = 404
    code = "not_found"


class MethodNotAllowed(InputError):
    status = 405
    code = "method_not_allowed"


class TooManyItems(InputError):
    status = 413
    code = "too_many_items"


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The JSON shape of every error: ``{"code", "message", "request_id", ...details}``."""
    return {"code": code, "message": message, **_request_id(), **details}


def _request_id() -> dict[str, str]:
    rid = requestid.current()
    return {"request_id": rid} if rid is not None else {}


def as_error(exc: Exception) -> NSFWError:
    """The core error for ``exc``; anything unexpected is logged and becomes a 500 ``internal_error``."""
    if isinstance(exc, NSFWError):
        return exc
    log.error("unexpected error in the API", exc_info=exc)
    return NSFWError("internal server error (see the server log)")


def error_response(exc: Exception) -> JSONResponse:
    """The single place where errors become HTTP responses."""
    err = as_error(exc)
    headers: dict[str, str] = {}
    if isinstance(err, Overloaded):
        headers["Retry-After"] = "1"
    elif isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(err, MethodNotAllowed):
        headers["Allow"] = ", ".join(err.details["allow"])
    headers.update(getattr(err, "http_headers", None) or {})  # e.g. a 429's Retry-After and RateLimit-*
    return JSONResponse({**err.to_dict(), **_request_id()}, status_code=err.status, headers=headers)


@dataclasses.dataclass
class AccessNote:
    """What a handler tells the access line and the metrics about its request (``request.state.access``)."""

    code: str | None = None  # the error answered, if any
    verdict: str | None = None
    timings: Timings | None = None
    url: str | None = None  # as url_for_log gives it
    items: int | None = None  # batch: items, failed items and verdicts
    item_errors: int | None = None
    verdicts: str | None = None


def note(request: Request) -> AccessNote:
    found = getattr(request.state, "access", None)
    if found is None:
        found = request.state.access = AccessNote()
    return found


class ApiRoute(Route):
    """A path that answers every HTTP method itself, errors included, always in JSON.

    ``handlers`` maps methods to handlers (HEAD follows GET); other methods get
    405.  With no handlers the path is a JSON 404 (for catch-all prefixes).
    """

    def __init__(self, path: str, handlers: Mapping[str, Handler] | None = None) -> None:
        self.handlers = dict(handlers or {})
        if "GET" in self.handlers:
            self.handlers.setdefault("HEAD", self.handlers["GET"])
        super().__init__(path, self.dispatch, name=path)
        self.methods = None  # match every method; dispatch() answers the unsupported ones

    async def dispatch(self, request: Request) -> Response:
        started = time.perf_counter()
        with requestid.bound(requestid.choose(request.headers.get(requestid.HEADER))) as rid:
            try:
                handler = self.handlers.get(request.method)
                if handler is None:
                    raise self._no_handler(request)
                response = await handler(request)
            except Exception as exc:  # every error is answered in JSON
                err = as_error(exc)
                note(request).code = err.code
                response = error_response(err)
            response.headers[requestid.HEADER] = rid
            self._account(request, response.status_code, time.perf_counter() - started)
        return response

    def _account(self, request: Request, status: int, seconds: float) -> None:
        """The request's metrics and its access line."""
        info = note(request)
        metrics = current().metrics
        metrics.observe_request(self.path, status, seconds)
        if info.code is not None:
            metrics.observe_error(info.code)
        timings = dataclasses.asdict(info.timings) if info.timings is not None else {}
        if info.url is None:
            timings.pop("fetch_ms", None)  # an upload: nothing was fetched
        fields = extra_fields(route=self.path, method=request.method, status=status,
                              duration_ms=round(seconds * 1000.0, 2), code=info.code, verdict=info.verdict,
                              **{k: v for k, v in timings.items() if k != "total_ms"}, url=info.url,
                              items=info.items, item_errors=info.item_errors, verdicts=info.verdicts)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("route", "method", "status", "duration_ms"))
        access_log.info("%s %s %d %.1f ms%s", request.method, self.path, status, seconds * 1000.0,
                        f" {text}" if text else "", extra=fields)

    def _no_handler(self, request: Request) -> NSFWError:
        if not self.handlers:
            return NotFound(f"no API endpoint at {request.url.path}")
        allow = sorted(self.handlers)
        return MethodNotAllowed(f"{request.method} is not allowed on {self.path}; use {', '.join(allow)}",
                                allow=allow)


class ApiLookalike(ApiRoute):
    """A JSON 404 for paths that look like the API's but are not one of its paths: another case
    (``/PREDICT``), a trailing slash (``/health/``), ``;parameters`` (``/predict;x``).

    Without it Starlette answered ``/health/`` with a bare redirect (no JSON, no X-Request-ID) and
    ``/PREDICT`` fell through to Streamlit's HTML page.  Listed after the API's routes, so it only
    sees what none of them matched; its ``path`` is one example of what it answers.
    """

    def __init__(self, paths: tuple[str, ...]) -> None:
        super().__init__("/health/")
        self.api_paths = paths

    def looks_like_api(self, path: str) -> bool:
        canonical = path.split(";", 1)[0].rstrip("/").lower() or "/"
        return any(canonical == p or canonical.startswith(p + "/") for p in self.api_paths)

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        if scope["type"] == "http" and self.looks_like_api(get_route_path(scope)):
            return Match.FULL, {"endpoint": self.endpoint, "path_params": {}}
        return Match.NONE, {}

    def _no_handler(self, request: Request) -> NSFWError:
        path = request.url.path
        canonical = path.split(";", 1)[0].rstrip("/").lower()
        known = [p for p in _API_PATHS if p.lower() == canonical]
        hint = f"; did you mean {known[0]}?" if known else " (API paths are case-sensitive, without a trailing " \
            "slash or ;parameters)"
        return NotFound(f"no API endpoint at {path[:200]}{hint}")


# ---------------------------------------------------------------- request helpers


def authorize(request: Request, api_keys: tuple[str, ...]) -> None:
    """With API keys configured, require ``Authorization: Bearer <key>`` (constant-time compare)."""
    if not api_keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    matched = False
    for key in api_keys:  # no early exit: the time does not depend on which key matches
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if not matched:
        raise Unauthorized("the API key is not valid")


def flag(request: Request, name: str) -> bool:
    """A boolean query parameter (1/0, true/false, yes/no, on/off; absent is false, empty is 400)."""
    if name not in request.query_params:
        return False
    value = request.query_params[name].strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise BadRequest(f"query parameter {name} must be true or false, got {value!r}")


def expected_body(request: Request, limit: int) -> int:
    """The bytes a body may take: its declared Content-Length when valid and smaller, else ``limit``."""
    declared = request.headers.get("content-length", "")
    return min(int(declared), limit) if declared.isdigit() and len(declared) < 20 else limit


def has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


async def read_body(request: Request, max_bytes: int, timeout: float, *, slack: int = 0) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_bytes + slack``.

    The whole body must arrive within ``timeout`` seconds (408), however it
    trickles in: a client that stalls would otherwise hold its in-flight slot
    for as long as it keeps the connection open.
    """
    limit = max_bytes + slack
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("the Content-Length header is not a number")
        if int(declared) > limit:
            raise TooLarge(f"the request body is {declared} bytes; the limit is {max_bytes}", limit=max_bytes)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise TooLarge(f"the request body is over the limit of {max_bytes} bytes", limit=max_bytes)
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s ({len(body)} bytes came)",
                             timeout_s=timeout) from exc
    except ClientDisconnect as exc:
        raise BadRequest("the client disconnected while sending the body") from exc
    return bytes(body)


async def uploaded_image(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The image sent in the body: raw bytes, or the ``file``/``image`` field of a multipart form."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        data = await read_body(request, max_bytes, timeout)
        if not data:
            raise InvalidURL("missing url: pass ?url=<image URL> or send the image in the request body")
        return data
    body = await read_body(request, max_bytes, timeout, slack=MULTIPART_SLACK)

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, chunks(), max_files=4, max_fields=16).parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        upload = next((u for u in (form.get(f) for f in UPLOAD_FIELDS) if isinstance(u, UploadFile)), None)
        if upload is None:
            raise BadRequest("the multipart body needs a file field named 'file' or 'image'")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise TooLarge(f"the uploaded file is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes)
    return data


# ---------------------------------------------------------------- endpoints


def _rate_limit(request: Request, ctx: Context) -> dict[str, str] | None:
    from nsfw_core.http.v1 import rate_limit  # v1 builds on this module

    return rate_limit(request, ctx)


async def predict(request: Request) -> Response:
    """POST /predict: one image by ``?url=`` or in the body."""
    ctx = current()
    limits = ctx.serving
    authorize(request, limits.api_keys)
    headers = _rate_limit(request, ctx)
    ctx.require_ready()
    detail = flag(request, "detail")
    url = request.query_params.get("url")
    info = note(request)
    if url:
        info.url = url_for_log(url)
    result: Classification
    with ctx.admission.admit(1):  # before the body is read: a flood is refused, not buffered
        if url is None:
            # the body's memory is reserved before it is read and kept until the answer
            with ctx.admission.hold_body(expected_body(request, limits.max_bytes + MULTIPART_SLACK)):
                image = await uploaded_image(request, limits.max_bytes, limits.body_timeout)
                result = await classify_bytes(ctx, image)
        elif has_body(request):
            raise BadRequest("send either ?url= or an image in the body, not both")
        elif not url:
            raise InvalidURL("missing url: pass ?url=<image URL> or send the image in the request body")
        else:
            result = await classify_url(ctx, url)
    info.verdict, info.timings = result.verdict, result.timings
    return JSONResponse(result.to_dict() if detail else result.scores, headers=headers)


async def predict_batch(request: Request) -> Response:
    """POST /predict/batch: many URLs, one result (or error) each, in order."""
    ctx = current()
    limits = ctx.serving
    authorize(request, limits.api_keys)
    headers = _rate_limit(request, ctx)
    ctx.require_ready()
    limit = limits.max_batch_items * (limits.max_url_length + BATCH_ITEM_BYTES)
    with ctx.admission.hold_body(expected_body(request, limit)):
        body = await read_body(request, limit, limits.body_timeout)
    items, detail = parse_batch(body, limits.max_batch_items, flag(request, "detail"))
    info = note(request)
    info.items = len(items)
    with ctx.admission.admit(len(items)):
        results = await asyncio.gather(*(batch_item(ctx, index, ident, url, detail)
                                         for index, (ident, url) in enumerate(items)))
    info.item_errors = sum(1 for r in results if "error" in r)
    tally = collections.Counter(r["verdict"] for r in results if "verdict" in r)
    info.verdicts = ",".join(f"{v}:{n}" for v, n in sorted(tally.items())) or None
    return JSONResponse({"results": results}, headers=headers)


def parse_batch(raw: bytes, max_items: int, detail: bool) -> tuple[list[tuple[Any, str]], bool]:
    """``{"items": [...], "detail": bool}`` or ``[...]`` -> ([(id, url), ...], detail).

    The whole body is checked before any work starts, so that nothing the
    answer echoes back (ids and urls) can fail to encode after the images were
    classified: an item is a non-empty URL string, or an object with a ``url``
    (non-empty string) and an optional ``id`` (null, a string of at most
    :data:`MAX_ID_LENGTH` characters, or a number within +-:data:`MAX_ID_NUMBER`;
    not a boolean).  Anything else is 400 ``bad_request`` for the whole request,
    naming the item.  What a URL points to (or whether it can be fetched) is
    judged per item, as before.
    """
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise BadRequest("the body is JSON nested too deep") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise BadRequest("the body is not valid JSON: it is not UTF-8 text") from exc
    except ValueError as exc:  # an integer literal longer than Python converts
        raise BadRequest("the body is not valid JSON we accept: a number in it is too long") from exc
    if isinstance(doc, dict):
        if "items" not in doc:
            raise BadRequest('the body needs an "items" list')
        detail = doc.get("detail", detail)
        if not isinstance(detail, bool):
            raise BadRequest('"detail" must be true or false')
        doc = doc["items"]
    if not isinstance(doc, list):
        raise BadRequest('expected {"items": [{"id": ..., "url": ...}, ...]} or a list of URLs')
    if len(doc) > max_items:
        raise TooManyItems(f"{len(doc)} items; at most {max_items} per request", limit=max_items)
    return [_batch_entry(index, item) for index, item in enumerate(doc)], detail


def _batch_entry(index: int, item: Any) -> tuple[Any, str]:
    """One item of the batch body -> (id, url), or 400 ``bad_request`` naming the item."""
    if isinstance(item, dict):
        ident, url = item.get("id"), item.get("url")
        where = f"items[{index}]"
        if not _valid_id(ident):
            raise BadRequest(f"{where}.id must be a string of at most {MAX_ID_LENGTH} characters or a number "
                             f"between -{MAX_ID_NUMBER} and {MAX_ID_NUMBER}, got {_kind(ident)}", item=index)
        if "url" not in item:
            raise BadRequest(f'{where} needs a "url"', item=index)
    else:
        ident, url, where = None, item, f"items[{index}]"
    if not isinstance(url, str) or not url:
        what = "an empty string" if url == "" else "a number" if isinstance(url, (int, float)) \
            and not isinstance(url, bool) else _kind(url)
        raise BadRequest(f"{where}{'.url' if isinstance(item, dict) else ''} must be a non-empty URL string "
                         f"(or an object with one), got {what}", item=index)
    if not _encodable(url):
        raise BadRequest(f"{where} has a URL that is not valid Unicode (a lone surrogate)", item=index)
    return ident, url


def _valid_id(ident: Any) -> bool:
    if ident is None:
        return True
    if isinstance(ident, str):
        return len(ident) <= MAX_ID_LENGTH and _encodable(ident)
    if isinstance(ident, bool):
        return False
    if isinstance(ident, int):
        return -MAX_ID_NUMBER <= ident <= MAX_ID_NUMBER
    if isinstance(ident, float):
        return math.isfinite(ident) and -MAX_ID_NUMBER <= ident <= MAX_ID_NUMBER
    return False


def _encodable(text: str) -> bool:
    """False for strings the JSON answer could not carry as UTF-8 (lone surrogates from \\ud800 escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    """A short description of a JSON value for error messages (never the value itself: it may be huge)."""
    if isinstance(value, str):
        if len(value) > MAX_ID_LENGTH:
            return f"a string of {len(value)} characters"
        return "a string that is not valid Unicode"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    if isinstance(value, (int, float)):
        return "a number out of range"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


async def batch_item(ctx: Context, index: int, ident: Any, url: str, detail: bool) -> dict[str, Any]:
    """One checked batch entry -> ``{"id", "url", "scores", "verdict"}`` (or the detail) or
    ``{"id", "url", "error"}``.  A failed item is counted and logged (with the request's id)."""
    out: dict[str, Any] = {"id": ident, "url": url}
    try:
        result = await classify_url(ctx, url)
    except Exception as exc:  # one bad item must not fail the others
        err = as_error(exc)
        out["error"] = err.to_dict()
        ctx.metrics.observe_error(err.code)
        log.info("batch item %d: %s %d %s url=%s", index, err.code, err.status, err.message, url_for_log(url),
                 extra=extra_fields(item=index, code=err.code, status=err.status, url=url_for_log(url)))
        return out
    out.update(result.to_dict() if detail else {"scores": result.scores, "verdict": result.verdict})
    return out


async def health(request: Request) -> Response:
    """GET /health: 200 when the model is loaded and warm, 503 with the reason otherwise."""
    ctx = current()
    batcher = ctx.batcher
    if not ctx.ready or batcher is None:
        body = error_body("not_ready", ctx.reason, status="unavailable", reason=ctx.reason)
        note(request).code = "not_ready"
        return JSONResponse(body, status_code=503)
    active = ctx.thresholds.current()
    model = ctx.model()
    return JSONResponse({
        "status": "ok",
        "model": model.name,
        "version": model.version,
        "runtime": model.runtime,
        "thresholds": {**active.thresholds.to_dict(), "source": active.source, "version": active.version},
        "warnings": ([active.warning] if active.warning else []) + ctx.warnings(),
        "batcher": {**batcher.stats.to_dict(), "waiting": batcher.waiting},
        "in_flight": {"images": ctx.admission.in_flight, "limit": ctx.admission.limit,
                      "rejected": ctx.admission.rejected},
    })


async def openapi(request: Request) -> Response:
    """GET /openapi.json, with this server's limits (URL length, items per batch)."""
    return JSONResponse(openapi_document(current().settings))


async def metrics(request: Request) -> Response:
    """GET /metrics: the Prometheus text format; with NSFW_API_KEYS or NSFW_METRICS_TOKEN set, a key or the
    token is required.  Rendered off the event loop (the review queue's probe may wait for its database)."""
    ctx = current()
    token = ctx.settings.metrics_token
    authorize(request, ctx.serving.api_keys + ((token,) if token else ()))
    body = await asyncio.to_thread(ctx.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


from nsfw_core.http import v1  # noqa: E402  (API v1 builds on the helpers above)

routes: list[BaseRoute] = [
    ApiRoute("/predict", {"POST": predict}),
    ApiRoute("/predict/batch", {"POST": predict_batch}),
    ApiRoute("/predict/{rest:path}"),
    *v1.routes,
    ApiRoute("/v1"),
    ApiRoute("/v1/{rest:path}"),
    ApiRoute("/health", {"GET": health}),
    ApiRoute("/openapi.json", {"GET": openapi}),
    ApiRoute("/metrics", {"GET": metrics}),
]
_API_PATHS = frozenset(r.path for r in routes if isinstance(r, ApiRoute) and "{" not in r.path)
_API_PREFIXES = tuple(r.path.split("{")[0] for r in routes if isinstance(r, ApiRoute) and "{" in r.path)
# last: whatever only looks like an API path (case, trailing slash, ;params) is a JSON 404, not Streamlit's
lookalike = ApiLookalike(("/predict", "/v1", "/health", "/metrics", "/openapi.json", "/docs"))
routes.append(lookalike)


def is_api_path(path: str) -> bool:
    """True for the paths this API answers (the log keeps uvicorn's access lines for the others only)."""
    return path in _API_PATHS or path.startswith(_API_PREFIXES) or lookalike.looks_like_api(path)


# ---------------------------------------------------------------- lifespan and app


def make_lifespan(settings: Settings | None = None) -> Callable[[Any], Any]:
    """A lifespan that creates and installs the process :class:`~nsfw_core.context.Context`
    (settings from the environment by default).

    On shutdown it stops the context and puts back the one it replaced, so
    apps nested in tests each serve with their own settings.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        ctx = Context(settings if settings is not None else load_settings())
        previous = install(ctx)
        await ctx.start()
        await v1.start(ctx)  # webhooks' delivery
        try:
            yield
        finally:
            await v1.stop(ctx)  # models loaded on demand, webhooks' task
            await ctx.stop()
            install(previous)

    return lifespan


lifespan = make_lifespan()


def create_app(settings: Settings | None = None) -> Starlette:
    """The API alone as a Starlette app (tests; ``app.py`` mounts the same routes in ``st.App``)."""
    return Starlette(routes=routes, lifespan=make_lifespan(settings))
