"""Routes that answer every method and every error in JSON, with a request id, an access line and metrics.

:class:`ApiRoute` is the one dispatcher of the API: it binds the request id, finds the handler for
the method (405 otherwise), hands it the request and the process :class:`~nsfw_core.context.Context`
(from the ``context`` function the route table was built with), turns any error into JSON
(:func:`~nsfw_core.http.errors.error_response`), and writes the request's access line and metrics.
:class:`ApiLookalike` answers paths that only look like the API's.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from nsfw_core import ratelimit
from nsfw_core.base import requestid
from nsfw_core.base.errors import NSFWError
from nsfw_core.base.logs import extra_fields
from nsfw_core.classify import Timings
from nsfw_core.http.errors import MethodNotAllowed, NotFound, as_error, error_response

if TYPE_CHECKING:
    from nsfw_core.context import Context

access_log = logging.getLogger("nsfw_core.http.access")  # one line per API request

Handler = Callable[[Request, "Context"], Awaitable[Response]]


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
    limit: str | None = None  # the budget that refused a 429 rate_limited


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

    def __init__(self, path: str, handlers: Mapping[str, Handler] | None = None, *,
                 context: Callable[[], Context] | None = None) -> None:
        self.handlers = dict(handlers or {})
        self.context = context
        if "GET" in self.handlers:
            self.handlers.setdefault("HEAD", self.handlers["GET"])
        super().__init__(path, self.dispatch, name=path)
        self.methods = None  # match every method; dispatch() answers the unsupported ones

    async def dispatch(self, request: Request) -> Response:
        started = time.perf_counter()
        with requestid.bound(requestid.choose(request.headers.get(requestid.HEADER))) as rid, \
                ratelimit.request_scope():
            try:
                handler = self.handlers.get(request.method)
                if handler is None:
                    raise self._no_handler(request)
                response = await handler(request, self._context())
            except Exception as exc:  # every error is answered in JSON
                err = as_error(exc)
                note(request).code = err.code
                note(request).limit = err.details.get("limit")
                response = error_response(err)
            response.headers[requestid.HEADER] = rid
            self._account(request, response.status_code, time.perf_counter() - started)
        return response

    def _context(self) -> Context:
        if self.context is None:
            from nsfw_core.context import current  # the process's, when the route table was built without one

            return current()
        return self.context()

    def _account(self, request: Request, status: int, seconds: float) -> None:
        """The request's metrics and its access line."""
        info = note(request)
        metrics = self._context().metrics
        metrics.observe_request(self.path, status, seconds)
        if info.code is not None:
            metrics.observe_error(info.code, info.limit)
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
    (``/PREDICT``), a trailing slash (``/health/``), ``;parameters`` (``/predict;x``), a doubled slash
    (``//v1/classify``: a base URL that ends in ``/``).

    Without it Starlette answered ``/health/`` with a bare redirect (no JSON, no X-Request-ID) and
    ``/PREDICT`` fell through to Streamlit's HTML page.  Listed after the API's routes, so it only
    sees what none of them matched; its ``path``, :data:`UNMATCHED`, is the route its requests are counted
    and logged under (before: ``/health/``, one example of what it answers, so every such 404 showed as
    a request to /health/ in the metrics and the access log).
    """

    UNMATCHED = "/(unmatched)"

    def __init__(self, prefixes: tuple[str, ...], paths: frozenset[str], *,
                 context: Callable[[], Context] | None = None) -> None:
        super().__init__(self.UNMATCHED, context=context)
        self.api_paths = prefixes
        self.known_paths = paths

    def looks_like_api(self, path: str) -> bool:
        canonical = _canonical(path) or "/"
        return any(canonical == p or canonical.startswith(p + "/") for p in self.api_paths)

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        if scope["type"] == "http" and self.looks_like_api(_route_path(scope)):
            return Match.FULL, {"endpoint": self.endpoint, "path_params": {}}
        return Match.NONE, {}

    def _no_handler(self, request: Request) -> NSFWError:
        path = request.url.path
        canonical = _canonical(path)
        known = [p for p in self.known_paths if p.lower() == canonical]
        hint = f"; did you mean {known[0]}?" if known else " (API paths are case-sensitive, without a trailing " \
            "slash or ;parameters)"
        return NotFound(f"no API endpoint at {path[:200]}{hint}")


_SLASHES = re.compile(r"/{2,}")


def _canonical(path: str) -> str:
    """``path`` without ``;parameters``, doubled and trailing slashes, in lower case."""
    return _SLASHES.sub("/", path.split(";", 1)[0]).rstrip("/").lower()


class StreamlitRefused:
    """ASGI middleware of ``app.py``'s ``st.App`` (outside Streamlit's own): an API path that Streamlit's path
    check refuses (a NUL byte, a ``..`` segment, a leading ``//`` or backslash: ``PathSecurityMiddleware``) goes
    to ``lookalike``, the API's JSON 404, instead of Streamlit's bare text/plain "Bad Request" (no code, no
    request id).  Other paths, the UI's, keep Streamlit's check."""

    def __init__(self, app: Any, lookalike: ApiLookalike) -> None:
        self.app = app
        self.lookalike = lookalike

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and streamlit_refuses(_route_path(scope)) \
                and self.lookalike.looks_like_api(_route_path(scope)):
            await self.lookalike.handle(scope, receive, send)
            return
        await self.app(scope, receive, send)


def streamlit_refuses(path: str) -> bool:
    """Whether Streamlit's path check refuses ``path``: a leading ``//`` or ``\\\\``, then
    ``streamlit.path_security.is_unsafe_path_pattern`` on it without its leading slashes (a NUL byte, a rooted
    backslash, a drive letter, a ``..`` segment)."""
    relative = path.lstrip("/")
    return (path.startswith(("//", "\\\\")) or "\x00" in path or relative.startswith("\\")
            or (len(relative) >= 2 and relative[0].isascii() and relative[0].isalpha() and relative[1] == ":")
            or ".." in relative.replace("\\", "/").split("/"))


def _route_path(scope: Any) -> str:
    """The request's path below the app's mount point (``root_path``), as Starlette's routes match it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root):]
    return path
