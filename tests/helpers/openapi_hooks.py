"""Schemathesis hooks for ``tests/test_openapi_conformance.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

OpenAPI cannot say that ``POST /predict`` takes *exactly one* of ``?url=`` and
an image in the body (both, or neither, is 400, as the document's description
of ``url`` says).  So a positive case there that carries both keeps only the
body, and a positive case with neither is not sent.  Likewise v1's ``?model=``
and a JSON body's ``"model"`` must agree when both are given (a contradiction is
400): a positive case that carries both keeps only the body's; the same for ``?adapter=`` and ``"adapter"``.
``GET /v1/evaluation``'s window must run forwards (``since`` before ``until``, which defaults to now) and span
at most 366 days (400 otherwise, as its description says): a positive case with another window is not sent.
Negative cases are left as they are: the API refuses them either way.
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis
from schemathesis.core import NOT_SET

from nsfw_core.calibration.production import DAY, MAX_DAYS
from nsfw_core.http.contract import ContractError
from nsfw_core.http.reviews import parse_time


def _positive_predict(case: Any) -> bool:
    return case.operation.path == "/predict" and case.meta is not None and case.meta.generation.mode.is_positive


def _has_url(case: Any) -> bool:
    return isinstance(case.query, dict) and "url" in case.query


def _has_body(case: Any) -> bool:
    if case.body is NOT_SET or case.body is None:
        return False
    body = getattr(case.body, "data", case.body)  # Binary(data=...) compares equal to anything
    return not (isinstance(body, (bytes, str)) and len(body) == 0)


def _positive_v1_without_an_object(case: Any) -> bool:
    """A "positive" v1 case whose JSON body is not an object (schemathesis pairs a scalar body, e.g. ``0``,
    with the JSON media type in some phases although the schema is an object): not sent."""
    return (case.operation.path.startswith("/v1/") and case.operation.method.upper() == "POST"
            and len(case.operation.body) > 0  # the reviewer API's claim and undo take no body
            and case.meta is not None and case.meta.generation.mode.is_positive and not isinstance(case.body, dict))


def _positive_evaluation_with_another_window(case: Any) -> bool:
    """A positive ``GET /v1/evaluation`` case whose ``since`` is not before ``until`` (now when absent) or whose
    window spans more than 366 days."""
    if not (case.operation.path == "/v1/evaluation" and case.meta is not None
            and case.meta.generation.mode.is_positive and isinstance(case.query, dict) and "since" in case.query):
        return False
    try:
        since = parse_time(str(case.query["since"]), "since")
        until = parse_time(str(case.query["until"]), "until") if "until" in case.query else time.time()
    except ContractError:  # a schema-valid date the API cannot read: a real failure, sent
        return False
    return not (since < until and until - since <= MAX_DAYS * DAY)


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    if _positive_v1_without_an_object(case) or _positive_evaluation_with_another_window(case):
        return False
    return not _positive_predict(case) or _has_url(case) or _has_body(case)


def _positive_v1_with_two_models(case: Any, name: str = "model") -> bool:
    return (case.operation.path.startswith(("/v1/classify", "/v1/explain", "/v1/jobs")) and case.meta is not None
            and case.meta.generation.mode.is_positive and isinstance(case.query, dict) and name in case.query
            and isinstance(case.body, dict) and name in case.body)


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    if _positive_predict(case) and _has_url(case) and _has_body(case):
        case.query = {k: v for k, v in case.query.items() if k != "url"}
    for name in ("model", "adapter"):
        if _positive_v1_with_two_models(case, name):
            case.query = {k: v for k, v in case.query.items() if k != name}
    return case
