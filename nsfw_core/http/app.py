"""The HTTP API's route table and lifespan, served beside the Streamlit UI (``app.py`` mounts them in ``st.App``).

The routes, each in the module of its concern:

* the original API, ``POST /predict`` and ``POST /predict/batch`` (:mod:`nsfw_core.http.predict`);
* API v1, ``POST /v1/classify``, ``POST /v1/classify/batch``, ``GET /v1/reviews/{id}`` and ``GET /docs``
  (:mod:`nsfw_core.http.v1`);
* video jobs, ``POST /v1/jobs`` and ``GET /v1/jobs/{id}`` (:mod:`nsfw_core.http.jobs`);
* the reviewer API, ``POST /v1/reviews/claim``, ``POST /v1/reviews/{id}/decision``, ``POST /v1/reviews/undo``,
  and ``GET /v1/evaluation`` (:mod:`nsfw_core.http.reviews`);
* ``GET /health``, ``GET /metrics``, ``GET /openapi.json`` (:mod:`nsfw_core.http.ops`).

Every path is an :class:`~nsfw_core.http.routing.ApiRoute`: each HTTP method answered in JSON, errors
included (:mod:`nsfw_core.http.errors`), with ``X-Request-ID``, an access line and metrics; unknown paths
under ``/predict/`` and ``/v1/`` and paths that only look like the API's get a JSON 404.  Each handler is
handed the request and the process :class:`~nsfw_core.context.Context` that the lifespan built.

Startup: the lifespan builds the context and starts loading the model in the background, and returns
at once, so the server answers ``/health`` with 503 ``not_ready`` while it loads (a few seconds) and
for good, with the reason, if loading fails.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from starlette.routing import BaseRoute

from nsfw_core.base.settings import Settings, load_settings
from nsfw_core.context import Context, current, install
from nsfw_core.http import jobs, ops, predict, reviews, v1
from nsfw_core.http.routing import ApiLookalike, ApiRoute

LOOKALIKE_PREFIXES = ("/predict", "/v1", "/health", "/metrics", "/openapi.json", "/docs")


def api_routes(context: Callable[[], Context] = current) -> list[ApiRoute]:
    """Every route of the API, its handlers handed the context ``context()`` gives."""
    table: list[ApiRoute] = [
        ApiRoute("/predict", {"POST": predict.predict}, context=context),
        ApiRoute("/predict/batch", {"POST": predict.predict_batch}, context=context),
        ApiRoute("/predict/{rest:path}", context=context),
        ApiRoute("/v1/classify", {"POST": v1.classify}, context=context),
        ApiRoute("/v1/classify/batch", {"POST": v1.classify_batch}, context=context),
        # the reviewer API (issue 25): its fixed paths before /v1/reviews/{id}
        ApiRoute("/v1/reviews/claim", {"POST": reviews.claim}, context=context),
        ApiRoute("/v1/reviews/undo", {"POST": reviews.undo}, context=context),
        ApiRoute("/v1/reviews/{id}/decision", {"POST": reviews.decision}, context=context),
        ApiRoute("/v1/evaluation", {"GET": reviews.evaluation}, context=context),
        ApiRoute("/v1/reviews/{id}", {"GET": v1.reviews}, context=context),
        ApiRoute("/v1/jobs", {"POST": jobs.create}, context=context),
        ApiRoute("/v1/jobs/{id}", {"GET": jobs.get}, context=context),
        ApiRoute("/docs", {"GET": v1.docs}, context=context),
        ApiRoute("/v1", context=context),
        ApiRoute("/v1/{rest:path}", context=context),
        ApiRoute("/health", {"GET": ops.health}, context=context),
        ApiRoute("/openapi.json", {"GET": ops.openapi}, context=context),
        ApiRoute("/metrics", {"GET": ops.metrics}, context=context),
    ]
    paths = frozenset(r.path for r in table if "{" not in r.path)
    # last: whatever only looks like an API path (case, trailing slash, ;params) is a JSON 404, not Streamlit's
    table.append(ApiLookalike(LOOKALIKE_PREFIXES, paths, context=context))
    return table


routes: list[BaseRoute] = list(api_routes())
_API_PATHS = frozenset(r.path for r in routes if isinstance(r, ApiRoute) and "{" not in r.path)
_API_PREFIXES = tuple(r.path.split("{")[0] for r in routes if isinstance(r, ApiRoute) and "{" in r.path)
lookalike = next(r for r in routes if isinstance(r, ApiLookalike))


def is_api_path(path: str) -> bool:
    """True for the paths this API answers (the log keeps uvicorn's access lines for the others only)."""
    return path in _API_PATHS or path.startswith(_API_PREFIXES) or lookalike.looks_like_api(path)


def make_lifespan(settings: Settings | None = None) -> Callable[[Any], Any]:
    """A lifespan that builds and installs the process :class:`~nsfw_core.context.Context`
    (settings from the environment by default).

    On shutdown it stops the context and puts back the one it replaced, so
    apps nested in tests each serve with their own settings.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        ctx = Context(settings if settings is not None else load_settings())
        previous = install(ctx)
        await ctx.start()
        try:
            yield
        finally:
            await ctx.stop()
            install(previous)

    return lifespan


lifespan = make_lifespan()
