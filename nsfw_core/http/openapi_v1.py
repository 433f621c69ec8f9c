"""The v1 part of the OpenAPI document, generated from the typed contract (:mod:`nsfw_core.http.contract`).

:func:`extend` adds the ``/v1/...`` and ``/docs`` paths and the contract's schemas (from
``msgspec.json.schema_components``, with this server's limits) to
:func:`nsfw_core.http.openapi.openapi_document`'s hand-written ``/predict`` part.
"""

from __future__ import annotations

from typing import Any

from nsfw_core.base.requestid import HEADER as REQUEST_ID
from nsfw_core.base.settings import MODEL_NAMES, Settings
from nsfw_core.http.contract import base64_text_cap, schemas

RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _headers(limited: bool) -> dict[str, Any]:
    out: dict[str, Any] = {REQUEST_ID: {"$ref": "#/components/headers/RequestId"}}
    if limited:
        for name in RATE_HEADERS:
            out[name] = {"description": "with NSFW_RATE_LIMIT: the IETF draft's rate limit headers",
                         "required": False, "schema": {"type": "string"}}
    return out


def _json(schema: dict[str, Any], description: str, limited: bool = True) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}},
            "headers": _headers(limited)}


def _errors(*statuses: int) -> dict[str, Any]:
    out = {str(s): _json(_ref("ErrorOut"), "Error, see code", limited=s != 401) for s in statuses}
    if "429" in out:
        out["429"]["description"] = "Rate limited (NSFW_RATE_LIMIT): retry after Retry-After seconds"
        out["429"]["headers"]["Retry-After"] = {"required": True, "schema": {"type": "string"}}
    return out


def extend(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``doc`` with API v1's paths and schemas."""
    auth: list[dict[str, list[str]]] = [{}, {"bearer": []}]
    rid = {"name": REQUEST_ID, "in": "header", "required": False, "schema": {"type": "string"},
           "description": f"Your id for this request, echoed in {REQUEST_ID} and request_id when sane"}
    model_param = {"name": "model", "in": "query", "required": False, "schema": {"enum": list(MODEL_NAMES)},
                   "description": "the model (raw bodies only; in JSON use \"model\"); default NSFW_MODEL"}
    paths = {
        "/v1/classify": {"post": {
            "summary": "Classify one image: a URL or base64 in JSON, or the bytes as the body",
            "description": ("JSON: {\"image\": {\"url\": ...} or {\"base64\": ...}, \"model\", \"thresholds\", "
                            "\"id\"}. base64 longer than "
                            f"{base64_text_cap(settings.max_bytes)} characters is refused (413) before it is "
                            "decoded; invalid base64 is 400 invalid_base64; a body that does not match the "
                            "contract is 400 invalid_request with the JSON path in 'field'. The image bytes may "
                            "also be the body itself (any other Content-Type, or multipart/form-data with a 'file' "
                            "field, as /predict), with ?model=; not listed as a media type here because "
                            "OpenAPI tools pair the two bodies' examples with the wrong Content-Type."),
            "operationId": "v1Classify", "security": auth, "parameters": [model_param, rid],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ClassifyRequest")}}},
            "responses": {"200": _json(_ref("ClassifyResult"), "The rich answer"),
                          **_errors(400, 401, 403, 405, 408, 413, 415, 422, 429, 500, 502, 503, 504)}}},
        "/v1/classify/batch": {"post": {
            "summary": "Classify many images (URLs and base64 mixed); errors per item, in order",
            "description": (f"At most {settings.max_batch_items} items (NSFW_MAX_BATCH_ITEMS, 413 too_many_items "
                            "beyond); base64 images of at most NSFW_MAX_BYTES in all. A body that does not match "
                            "is 400 for the whole request, naming the field."),
            "operationId": "v1ClassifyBatch", "security": auth, "parameters": [rid],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BatchRequest")}}},
            "responses": {"200": _json(_ref("BatchResponse"), "One result or error per item, in order"),
                          **_errors(400, 401, 405, 408, 413, 429, 500, 503)}}},
        "/v1/reviews/{id}": {"get": {
            "summary": "A review item: pending, claimed or decided (label, who, when)",
            "operationId": "v1Review", "security": auth,
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
                            "description": "the review_id a classification answered"}, rid],
            "responses": {"200": _json(_ref("Review"), "The item"),
                          **_errors(401, 404, 405, 429, 500, 503)}}},
        "/docs": {"get": {
            "summary": "This document as a readable page (no asset from the network)",
            "operationId": "docs", "parameters": [rid],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}},
                                  "headers": _headers(False)}}}},
    }
    doc["paths"].update(paths)
    from nsfw_core.http.openapi import URL_PATTERN  # the documented subset of URLs, as for /predict?url=

    v1_schemas = schemas(max_bytes=settings.max_bytes, max_url_length=settings.max_url_length,
                         max_batch_items=settings.max_batch_items)
    v1_schemas["Image"]["properties"]["url"]["anyOf"][0]["pattern"] = URL_PATTERN
    for name, schema in v1_schemas.items():
        doc["components"]["schemas"].setdefault(name, schema)  # Scores: the same as /predict's
    return doc

