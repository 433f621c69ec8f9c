"""The OpenAPI 3.1 description of the HTTP API (``GET /openapi.json``).

The ``Detail`` schema is derived from :class:`~nsfw_core.classify.Classification` (its
nested dataclasses give the ``model`` and ``timings`` objects); a test checks that real
answers validate against it, ``additionalProperties`` false, and
``tests/test_openapi_conformance.py`` runs schemathesis against a real server with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nsfw_core.base.labels import VERDICTS
from nsfw_core.base.requestid import HEADER as REQUEST_ID
from nsfw_core.base.requestid import MAX_LENGTH as REQUEST_ID_LENGTH
from nsfw_core.base.settings import CLASS_NAMES, RUNTIMES, Settings, load_settings
from nsfw_core.classify import ModelInfo, Timings
from nsfw_core.http.contract import MAX_ID_LENGTH, MAX_ID_NUMBER

_JSON_TYPES = {"str": "string", "float": "number", "int": "integer", "bool": "boolean"}


def _fields_schema(cls: type) -> dict[str, Any]:
    """An object schema with one property per field of the dataclass ``cls`` (scalar fields)."""
    props = {f.name: {"type": _JSON_TYPES[str(f.type)]} for f in dataclasses.fields(cls)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A response: JSON of ``schema``, with the request id header (every API response carries it)."""
    return {"description": description, "content": {"application/json": {"schema": schema}},
            "headers": {REQUEST_ID: {"$ref": "#/components/headers/RequestId"}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), "Error, see code") for s in statuses}


# The form of URL that /predict?url= documents: http(s), a host name (the last label starts with a
# letter, so it is not a numeric IPv4 spelling; no '--', so no xn-- label), an optional port 1-65535,
# an ASCII path and query.  Every such URL passes the API's syntax checks (a test draws them with
# hypothesis); whether it can be fetched is another matter (403, 502, 504).  The API accepts more (IP
# literals, international names): the fetcher is the authority, the pattern the documented subset.
URL_PATTERN = (r"^https?://(?:[A-Za-z0-9_](?:-?[A-Za-z0-9_]){0,29}\.){0,3}[A-Za-z](?:-?[A-Za-z0-9_]){0,29}"
               r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
               r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?(?:\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$")


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 description of :data:`routes` (a test checks that paths and methods match).

    Limits that are settings (URL length, items per batch) come from ``settings``
    (the defaults without it).  ``tests/test_openapi_conformance.py`` runs
    schemathesis against a real server with this document.
    """
    if settings is None:
        settings = load_settings(environ={})
    max_url = settings.max_url_length
    number = {"type": "number"}
    scores = {"type": "object", "properties": {c: number for c in CLASS_NAMES},
              "required": list(CLASS_NAMES), "additionalProperties": False}
    thresholds = {"type": "object", "properties": {
        "adult": number, "safe": number,
        "adult_classes": {"type": "array", "items": {"type": "string"}},
        "safe_classes": {"type": "array", "items": {"type": "string"}},
        "version": {"type": ["integer", "null"],
                    "description": "the thresholds history's version in force (null: the defaults)"}}}
    verdict = {"type": "string", "enum": list(VERDICTS)}
    frame = {"type": "object", "additionalProperties": False, "required": ["index", "time_ms", "scores"],
             "properties": {"index": {"type": "integer", "minimum": 0}, "time_ms": {"type": "integer", "minimum": 0},
                            "scores": _ref("Scores")}}
    detail = {"type": "object", "additionalProperties": False,
              "required": ["scores", "verdict", "adult_score", "safe_score", "thresholds", "model", "timings",
                           "sha256", "verdict_source"],
              "properties": {
                  "scores": _ref("Scores"), "verdict": verdict, "adult_score": number, "safe_score": number,
                  "thresholds": thresholds, "model": _fields_schema(ModelInfo), "timings": _fields_schema(Timings),
                  "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                  "review_id": {"type": ["integer", "null"],
                                "description": "present when the verdict is sent to human review "
                                               "(NSFW_REVIEW_VERDICTS); null when queueing failed"},
                  "review_error": {"type": "string", "description": "why queueing failed (the verdict stands)"},
                  "verdict_source": {"type": "string", "enum": ["model", "review", "list"],
                                     "description": "who decided the verdict: the model; review: a reviewer "
                                                    "decided this image or a near copy of it (match says "
                                                    "which); list: it is on an admin's allow/deny hash list"},
                  "match": {"type": "object", "additionalProperties": False,
                            "required": ["source", "by", "distance", "label", "entry_id", "review_id"],
                            "description": "the known image whose human verdict this image got (verdict_source "
                                           "review or list); the scores stay the model's",
                            "properties": {
                                "source": {"type": "string", "enum": ["review", "list"]},
                                "by": {"type": "string", "enum": ["sha256", "pdq"],
                                       "description": "the same bytes, or a PDQ hash within NSFW_MATCH_DISTANCE"},
                                "distance": {"type": "integer", "minimum": 0, "maximum": 256,
                                             "description": "PDQ distance in bits of 256 (0 for sha256)"},
                                "label": {"type": "string",
                                          "description": "the reviewer's label, or the list's (allow, deny, "
                                                         "safe, adult)"},
                                "entry_id": {"type": "integer"},
                                "review_id": {"type": ["integer", "null"],
                                              "description": "the decided review item (source review)"}}},
                  "frames": {"type": "array", "minItems": 1, "items": frame,
                             "description": "an animated GIF, WebP or PNG, or a multi-page TIFF: its sampled "
                                            "frames (at most NSFW_MAX_FRAMES); the image's scores and verdict "
                                            "are its worst frame's (highest adult score)"},
                  "deciding_frame": {"type": "integer", "minimum": 0,
                                     "description": "the index of the frame whose scores the image got"}}}
    error = {"type": "object", "required": ["code", "message"], "additionalProperties": True,
             "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                            "request_id": {"type": "string", "description": "the request's id, as in the "
                                           f"{REQUEST_ID} response header (absent in a batch item's error)"}}}
    item_id = {"type": ["string", "number", "null"], "maxLength": MAX_ID_LENGTH,
               "minimum": -MAX_ID_NUMBER, "maximum": MAX_ID_NUMBER,
               "description": f"echoed back: a string of at most {MAX_ID_LENGTH} characters or a number "
                              f"within +-{MAX_ID_NUMBER} (2^53 - 1); null or absent for none"}
    item_url = {"type": "string", "minLength": 1,
                "description": "the image URL; a URL that cannot be fetched (invalid_url, forbidden_address, "
                               "upstream_*) is that item's error, not the request's"}
    batch_request = {"oneOf": [
        {"type": "array", "items": item_url, "maxItems": settings.max_batch_items},
        {"type": "object", "required": ["items"], "properties": {
            "items": {"type": "array", "maxItems": settings.max_batch_items, "items": {"oneOf": [
                item_url,
                {"type": "object", "required": ["url"], "properties": {"id": item_id, "url": item_url}}]}},
            "detail": {"type": "boolean", "default": False}}}],
        "description": "An item that does not match (an id of another type, a url that is not a non-empty "
                       "string) makes the whole request 400 bad_request, with the item's index in 'item'; "
                       f"over {settings.max_batch_items} items (NSFW_MAX_BATCH_ITEMS) is 413 too_many_items"}
    batch_result = {"type": "object", "required": ["id", "url"], "properties": {
        "id": item_id, "url": {"type": "string", "minLength": 1}, "scores": _ref("Scores"), "verdict": verdict,
        "error": _ref("Error")}, "description": "scores and verdict (all of Detail with detail=true), or error"}
    health_ok = {"type": "object", "required": ["status", "model", "version", "thresholds", "warnings"],
                 "properties": {"status": {"const": "ok"}, "model": {"type": "string"},
                                "version": {"type": "string"}, "runtime": {"enum": list(RUNTIMES)},
                                "thresholds": thresholds,
                                "warnings": {"type": "array", "items": {"type": "string"}},
                                "batcher": {"type": "object"}}}
    image_bytes = {"type": "string", "format": "binary", "minLength": 1,
                   "description": "JPEG, PNG, GIF, WebP, BMP or TIFF bytes, at most NSFW_MAX_BYTES; other bytes "
                                  "are 415 not_an_image, damaged ones 422, too large 413"}
    binary = {"schema": image_bytes}
    multipart = {"schema": {"type": "object", "properties": {"file": image_bytes}, "required": ["file"],
                            "description": "the image as a file part named 'file' ('image' is accepted too, "
                                           "when there is no 'file')"},
                 "encoding": {"file": {"contentType": "application/octet-stream"}}}
    auth: list[dict[str, list[str]]] = [{}, {"bearer": []}]  # optional: required only when NSFW_API_KEYS is set
    url_param = {"name": "url", "in": "query",
                 "schema": {"type": "string", "minLength": 1, "maxLength": max_url, "pattern": URL_PATTERN},
                 "description": "http(s) URL of the image (at most NSFW_MAX_URL_LENGTH characters, no "
                                "credentials); omit it to send the image in the body instead (not both: 400)"}
    rid_param = {"name": REQUEST_ID, "in": "header", "required": False, "schema": {"type": "string"},
                 "description": f"Your id for this request, echoed in the {REQUEST_ID} response header when it is "
                                f"1 to {REQUEST_ID_LENGTH} characters of A-Z a-z 0-9 . _ : - (else replaced by a new "
                                "one, never refused)"}
    detail_param = {"name": "detail", "in": "query", "schema": {"type": "boolean", "default": False},
                    "description": "true: the rich answer (Detail) instead of the five scores"}
    from nsfw_core.http.openapi_v1 import (
        extend,  # API v1's part, generated from the typed contract (nsfw_core.http.contract)
    )

    return extend({
        "openapi": "3.1.0",
        "info": {"title": "NSFW image moderation API", "version": "1.0.0"},
        "paths": {
            "/predict": {"post": {
                "summary": "Classify one image (by URL or uploaded)",
                "operationId": "predict", "security": auth, "parameters": [url_param, detail_param, rid_param],
                "requestBody": {"required": False, "content": {
                    "image/*": binary, "application/octet-stream": binary, "multipart/form-data": multipart}},
                "responses": {"200": _json({"oneOf": [_ref("Scores"), _ref("Detail")]},
                                           "The five probabilities (or Detail with detail=true)"),
                              **_errors(400, 401, 403, 405, 408, 413, 415, 422, 429, 500, 502, 503, 504)}}},
            "/predict/batch": {"post": {
                "summary": "Classify many image URLs; errors are reported per item",
                "operationId": "predictBatch", "security": auth,
                "parameters": [detail_param, rid_param],
                "requestBody": {"required": True, "content": {"application/json": {"schema": batch_request}}},
                "responses": {"200": _json({"type": "object", "required": ["results"], "properties": {
                    "results": {"type": "array", "items": _ref("BatchResult")}}}, "One result per item, in order"),
                              **_errors(400, 401, 405, 408, 413, 429, 500, 503)}}},
            "/health": {"get": {
                "summary": "Readiness: 200 once the model is loaded and warmed up",
                "operationId": "health", "parameters": [rid_param],
                "responses": {"200": _json(health_ok, "Ready"),
                              "503": _json(_ref("Error"), "Not ready (status, code not_ready, reason)")}}},
            "/openapi.json": {"get": {
                "summary": "This document", "operationId": "openapi", "parameters": [rid_param],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text format); needs a key when NSFW_API_KEYS or "
                           "NSFW_METRICS_TOKEN is set",
                "operationId": "metrics", "security": auth, "parameters": [rid_param],
                "responses": {"200": {"description": "The Prometheus text exposition format (docs/operations.md)",
                                      "content": {"text/plain": {"schema": {"type": "string"}}},
                                      "headers": {REQUEST_ID: {"$ref": "#/components/headers/RequestId"}}},
                              **_errors(401)}}},
        },
        "components": {
            "schemas": {"Scores": scores, "Detail": detail, "Error": error, "BatchResult": batch_result},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            # Every operation accepts X-Request-ID; any value is accepted, and one that is not 1 to
            # REQUEST_ID_LENGTH characters of A-Z a-z 0-9 . _ : - is replaced by a new id (never refused).
            "headers": {"RequestId": {
                "description": f"The request's id: the client's {REQUEST_ID} when it is 1 to {REQUEST_ID_LENGTH} "
                               "characters of A-Z a-z 0-9 . _ : -, else a new one (32 hex digits); also in error "
                               "bodies (request_id) and on the server's log lines about the request",
                "required": True, "schema": {"type": "string", "minLength": 1,
                                             "maxLength": REQUEST_ID_LENGTH}}},
        },
    }, settings)
