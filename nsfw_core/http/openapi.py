"""The one OpenAPI 3.1 document of every route (``GET /openapi.json``), generated from the typed contract.

Every schema, of both API generations, request and answer, comes from the contract's structs
(:mod:`nsfw_core.http.contract`) through ``msgspec.json.schema_components``, with the limits that are
settings (URL length, items per batch, the base64 length of NSFW_MAX_BYTES) filled in.  The paths come
from :data:`OPERATIONS`, one entry per route and method (a test checks they are exactly the routes);
``tests/test_openapi_conformance.py`` runs schemathesis against a real server with this document.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from nsfw_core.base.labels import CLASS_NAMES
from nsfw_core.base.requestid import HEADER as REQUEST_ID
from nsfw_core.base.requestid import MAX_LENGTH as REQUEST_ID_LENGTH
from nsfw_core.base.settings import MODEL_NAMES, Settings, load_settings
from nsfw_core.http import contract as c

REF = c.REF_TEMPLATE
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
# The form of URL that /predict?url= documents: http(s), a host name (the last label starts with a
# letter, so it is not a numeric IPv4 spelling; no '--', so no xn-- label), an optional port 1-65535,
# an ASCII path and query.  Every such URL passes the API's syntax checks (a test draws them with
# hypothesis); whether it can be fetched is another matter (403, 502, 504).  The API accepts more (IP
# literals, international names): the fetcher is the authority, the pattern the documented subset.
URL_PATTERN = (r"^https?://(?:[A-Za-z0-9_](?:-?[A-Za-z0-9_]){0,29}\.){0,3}[A-Za-z](?:-?[A-Za-z0-9_]){0,29}"
               r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
               r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?(?:\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$")
SCHEMA_TYPES: tuple[Any, ...] = (c.Scores, c.Detail, c.Error, c.BatchResult, c.BatchResults, c.Health,
                                 c.PredictBatchBody, *c.REQUESTS, *c.RESPONSES)
IMAGE_ERRORS = (400, 401, 403, 405, 408, 413, 415, 422, 429, 500, 502, 503, 504)


@dataclasses.dataclass(frozen=True)
class Operation:
    """One route and method: what it takes and what it answers (schema names of the contract's structs)."""

    path: str
    method: str
    operation_id: str
    summary: str
    answer: str | dict[str, Any] | None  # a schema name, a schema, or None for a non-JSON answer
    errors: tuple[int, ...]
    params: tuple[str, ...] = ()  # of PARAMS
    body: str | None = None  # a request schema name (JSON), "image" (raw/multipart image) or None
    body_required: bool = True
    keyed: bool = True  # Authorization: Bearer when NSFW_API_KEYS is set
    limited: bool = True  # counted against NSFW_RATE_LIMIT (RateLimit-* headers)
    description: str = ""
    media: str = "application/json"  # the 200 answer's media type
    alternative: dict[str, Any] | None = None  # other media types the 200 answer may take (by a parameter)
    status: int = 200  # the success status (202: accepted, judged later)
    reviewer: bool = False  # needs a reviewer API key (NSFW_REVIEWER_API_KEYS / NSFW_ADMIN_API_KEYS), always


OPERATIONS: tuple[Operation, ...] = (
    Operation("/predict", "post", "predict", "Classify one image (by URL or uploaded)",
              {"oneOf": [{"$ref": REF.format(name="Scores")}, {"$ref": REF.format(name="Detail")}]},
              IMAGE_ERRORS, params=("url", "detail", "adapter"), body="image", body_required=False,
              description="The five probabilities, or Detail with detail=true. Send ?url= or the image as the "
                          "body (raw bytes, or multipart/form-data with a 'file' part), not both (400)."),
    Operation("/predict/batch", "post", "predictBatch", "Classify many image URLs; errors are reported per item",
              "BatchResults", (400, 401, 403, 405, 408, 413, 429, 500, 503), params=("detail", "adapter"),
              body="PredictBatchBody",
              description="A list of URLs, or {\"items\": [{\"id\", \"url\"} or URL, ...], \"detail\": bool}. An "
                          "item that does not match (an id of another type, a url that is not a non-empty string) "
                          "makes the whole request 400 bad_request, with the item's index in 'item'; over "
                          "NSFW_MAX_BATCH_ITEMS items is 413 too_many_items. A URL that cannot be fetched is "
                          "that item's error, not the request's."),
    Operation("/v1/classify", "post", "v1Classify",
              "Classify one image: a URL or base64 in JSON, or the bytes as the body",
              "ClassifyResult", IMAGE_ERRORS, params=("model", "adapter"), body="ClassifyRequest",
              description="JSON: {\"image\": {\"url\": ...} or {\"base64\": ...}, \"model\", \"thresholds\", "
                          "\"id\"}. base64 longer than NSFW_MAX_BYTES allows is refused (413) before it is "
                          "decoded; invalid base64 is 400 invalid_base64; a body that does not match the contract "
                          "is 400 invalid_request with the JSON path in 'field'. The image bytes may also be the "
                          "body itself (any other Content-Type, or multipart/form-data with a 'file' field, as "
                          "/predict), with ?model=; not listed as a media type here because OpenAPI tools pair the "
                          "two bodies' examples with the wrong Content-Type. A ?model= that is not a model, or "
                          "that contradicts the body's, is 400."),
    Operation("/v1/classify/batch", "post", "v1ClassifyBatch",
              "Classify many images (URLs and base64 mixed); errors per item, in order",
              "BatchResponse", (400, 401, 403, 405, 408, 413, 429, 500, 503), params=("model", "adapter"),
              body="BatchRequest",
              description="At most NSFW_MAX_BATCH_ITEMS items (413 too_many_items beyond); base64 images of at "
                          "most NSFW_MAX_BYTES in all. A body that does not match is 400 for the whole request, "
                          "naming the field."),
    Operation("/v1/explain", "post", "v1Explain",
              "Where the model found each class: a heat-map per class over a grid, or the overlay as PNG",
              "ExplainResult", IMAGE_ERRORS, params=("model", "format", "class"), body="ExplainRequest",
              description="The same image forms as /v1/classify (JSON with image.url or image.base64, or the "
                          "bytes as the body with ?model=). Occlusion with the image's median colour, in log-odds "
                          "(docs/http-api.md): NSFW_EXPLAIN_GRID cells a side, grid^2 + 1 forward passes (65 for "
                          "8), charged as that many images on its model (cost units: the passes times the "
                          "model's relative cost), in flight and against the key's budgets. "
                          "An animation is explained on its deciding frame (frame). ?format=png answers the "
                          "overlay of one class's map (?class=, default the deciding class) as image/png, with "
                          "the class in X-Explain-Class.",
              alternative={"image/png": {"schema": {"type": "string", "format": "binary"}}}),
    Operation("/v1/reviews/{id}", "get", "v1Review",
              "A review item of this API key: pending, claimed or decided (label, when)",
              "Review", (401, 403, 404, 405, 429, 500, 503), params=("review_id",)),
    Operation("/v1/jobs", "post", "v1CreateJob", "Judge a video in the background (a long one): 202 with the job",
              "Job", (400, 401, 403, 405, 408, 409, 413, 429, 500, 503), params=("model", "adapter"), body="JobRequest",
              status=202,
              description="JSON: {\"video\": {\"url\": ...}, \"model\", \"thresholds\", \"id\", \"adapter\"}. "
                          "The answer is at once (202, Location: /v1/jobs/{id}); the video is fetched (at most "
                          "NSFW_JOB_MAX_BYTES), sampled at NSFW_VIDEO_FPS and judged by one instance, resumed "
                          "after a crash; GET /v1/jobs/{id} gives its progress and result, and with "
                          "NSFW_WEBHOOK_URL a job.completed event (JobEvent) is POSTed, signed like the review "
                          "events. A client may have 100 jobs queued or running (429 too_many_jobs beyond). The "
                          "same client id and URL again: 200 with the job already made (409 job_conflict when "
                          "that job has another model or thresholds). The job is judged by the adapter in force "
                          "for its model when its frames are all judged (the result's 'adapter' names it), as a "
                          "request's video is; \"adapter\": false asks for the base model."),
    Operation("/v1/jobs/{id}", "get", "v1Job", "A video job: queued, running (progress), done (result) or failed",
              "Job", (401, 403, 404, 405, 429, 500, 503), params=("job_id",),
              description="With API keys a job is visible to the key that created it only (404 for others)."),
    Operation("/v1/reviews/claim", "post", "v1ReviewClaim",
              "Reviewer API: claim the next item under a lease (an audit item without the model's verdict or scores)",
              "Claim", (401, 403, 405, 429, 500, 503), reviewer=True, body=None,
              description="The item this key now holds until lease_until (NSFW_REVIEW_LEASE_SECONDS): its review id "
                          "(rv_..., the id its client got and the webhooks' id), its image (the bytes that were "
                          "classified, in base64; only a review item queued before URL bytes were kept gives its "
                          "URL), and, unless it is an audit item (reviewed blind), the model's verdict and scores; "
                          "{\"item\": null} when nothing is left for this key. Needs a key of "
                          "NSFW_REVIEWER_API_KEYS or NSFW_ADMIN_API_KEYS (a client key is 403). A key that holds "
                          "NSFW_REVIEW_MAX_HELD items (24) gets 429 too_many_claims until it decides one or a "
                          "lease runs out."),
    Operation("/v1/reviews/undo", "post", "v1ReviewUndo",
              "Reviewer API: undo this key's latest decision (the item comes back to this key)", "Claim",
              (401, 403, 405, 409, 429, 500, 503), reviewer=True, body=None,
              description="{\"item\": null} when this key has nothing to undo; 409 when another reviewer holds "
                          "the item (or an admin has decided the disagreement it was part of)."),
    Operation("/v1/reviews/{id}/decision", "post", "v1ReviewDecision",
              "Reviewer API: decide an item this key holds (or a pending one)", "DecisionResult",
              (400, 401, 403, 404, 405, 408, 409, 413, 429, 500, 503), params=("review_id",),
              body="DecisionRequest", reviewer=True,
              description="Any of the item's review ids names it. The label is sent to the webhook, and "
                          "remembered (later copies of the image get it) when this API handed the item's own "
                          "bytes. The answer names who decided (reviewer and admin keys only). "
                          "Under double review the label is this key's vote: outcome second_review (another "
                          "reviewer decides too) or escalated (the two disagree: an admin key decides). 409 when "
                          "another reviewer holds the item or it is decided already."),
    Operation("/v1/evaluation", "get", "v1Evaluation",
              "How the automatic decisions fare in production: precision from audits, wrong decisions per day, "
              "reviewer agreement, score drift", "Evaluation", (400, 401, 403, 405, 429, 500, 503),
              params=("since", "until"), reviewer=True,
              description="For items queued in [since, until) (default: the last 28 days) and the traffic counted "
                          "on those UTC days; since must be before until (now when absent) and the window at most "
                          "366 days, else 400 invalid_request. Reviewer and admin keys only. Figures without data "
                          "are null and 'missing' says what is missing."),
    Operation("/docs", "get", "docs", "This document as a readable page (no asset from the network)", None,
              (), keyed=False, limited=False, media="text/html"),
    Operation("/health", "get", "health", "Readiness: 200 once the model is loaded and warmed up", "Health",
              (503,), keyed=False, limited=False,
              description="503 not_ready while the model loads or when it failed to load (status, reason)."),
    Operation("/openapi.json", "get", "openapi", "This document", {"type": "object"}, (), keyed=False,
              limited=False),
    Operation("/metrics", "get", "metrics",
              "Prometheus metrics (text format); needs a key when NSFW_API_KEYS or NSFW_METRICS_TOKEN is set", None,
              (401, 429), limited=False, media="text/plain",
              description="The Prometheus text exposition format (docs/operations.md)."),
)

PARAMS: dict[str, dict[str, Any]] = {
    "detail": {"name": "detail", "in": "query", "schema": {"type": "boolean", "default": False},
               "description": "true: the rich answer (Detail) instead of the five scores"},
    "model": {"name": "model", "in": "query", "required": False, "schema": {"enum": list(MODEL_NAMES)},
              "description": "the model for a raw body (in JSON, \"model\"; both: they must agree); default "
                             "NSFW_MODEL"},
    "format": {"name": "format", "in": "query", "required": False,
               "schema": {"enum": ["json", "png"], "default": "json"},
               "description": "json: the heat-maps; png: the overlay of one class's map on the image (image/png)"},
    "class": {"name": "class", "in": "query", "required": False, "schema": {"enum": list(CLASS_NAMES)},
              "description": "the class whose map ?format=png draws; default the deciding class"},
    "adapter": {"name": "adapter", "in": "query", "required": False, "schema": {"type": "boolean", "default": True},
                "description": "false: judge with the base model even when an adapter is in force (the five scores "
                               "are the base model's either way; with an adapter, adult_score is the adapter's); "
                               "in v1's JSON, \"adapter\": false (both: they must agree)"},
    "job_id": {"name": "id", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": c.JOB_ID_PATTERN},
               "description": "the id POST /v1/jobs answered"},
    "since": {"name": "since", "in": "query", "required": False, "schema": {"type": "string", "format": "date"},
              "description": "start of the window: a UTC date, YYYY-MM-DD (default: 28 days before until)"},
    "until": {"name": "until", "in": "query", "required": False, "schema": {"type": "string", "format": "date"},
              "description": "end of the window, excluded (default: now)"},
    "review_id": {"name": "id", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": "^rv_[A-Za-z0-9_-]{22}$"},
                  "description": "the review_id a classification answered (shown only to the same API key)"},
}


def _url_param(settings: Settings) -> dict[str, Any]:
    return {"name": "url", "in": "query",
            "schema": {"type": "string", "minLength": 1, "maxLength": settings.max_url_length,
                       "pattern": URL_PATTERN},
            "description": "http(s) URL of the image (at most NSFW_MAX_URL_LENGTH characters, no credentials); "
                           "omit it to send the image in the body instead (not both: 400)"}


def _headers(limited: bool) -> dict[str, Any]:
    out: dict[str, Any] = {REQUEST_ID: {"$ref": "#/components/headers/RequestId"}}
    if limited:
        for name in RATE_HEADERS:
            out[name] = {"description": "with NSFW_RATE_LIMIT: the IETF draft's rate limit headers",
                         "required": False, "schema": {"type": "string"}}
    return out


def _json(schema: dict[str, Any], description: str, limited: bool) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}},
            "headers": _headers(limited)}


def _errors(statuses: tuple[int, ...], limited: bool) -> dict[str, Any]:
    out = {str(s): _json({"$ref": REF.format(name="Error")}, "Error, see code", limited and s != 401)
           for s in statuses}
    if "429" in out:
        out["429"]["description"] = ("Rate limited (NSFW_RATE_LIMIT, a key's share NSFW_KEY_SHARE, or too many wrong "
                                     "keys from this address, NSFW_WRONG_KEY_LIMIT; the error's limit says which): "
                                     "retry after Retry-After seconds")
        out["429"]["headers"]["Retry-After"] = {"required": True, "schema": {"type": "string"}}
    if "503" in out:
        out["503"]["description"] = "Not ready, overloaded or a dependency down: retry after Retry-After seconds"
    return out


def _image_body(settings: Settings) -> dict[str, Any]:
    image = {"type": "string", "format": "binary", "minLength": 1,
             "description": "JPEG, PNG, GIF, WebP, BMP or TIFF bytes, at most NSFW_MAX_BYTES "
                            f"({settings.max_bytes}), or an MP4, MOV, WebM or MKV video (H.264, H.265, VP8, VP9, "
                            f"AV1) of at most NSFW_MAX_VIDEO_BYTES ({settings.max_video_bytes}) and "
                            f"NSFW_MAX_VIDEO_SECONDS ({settings.max_video_seconds:g} s; longer: 413 video_too_long, "
                            "use POST /v1/jobs); other bytes are 415 not_an_image, damaged ones 422, too large 413"}
    binary = {"schema": image}
    multipart = {"schema": {"type": "object", "properties": {"file": image}, "required": ["file"],
                            "description": "the image as a file part named 'file' ('image' is accepted too, "
                                           "when there is no 'file')"},
                 "encoding": {"file": {"contentType": "application/octet-stream"}}}
    return {"image/*": binary, "application/octet-stream": binary, "multipart/form-data": multipart}


def _operation(op: Operation, settings: Settings) -> dict[str, Any]:
    rid = {"name": REQUEST_ID, "in": "header", "required": False, "schema": {"type": "string"},
           "description": f"Your id for this request, echoed in the {REQUEST_ID} response header when it is 1 to "
                          f"{REQUEST_ID_LENGTH} characters of A-Z a-z 0-9 . _ : - (else replaced by a new one, "
                          "never refused)"}
    params = [_url_param(settings) if p == "url" else PARAMS[p] for p in op.params] + [rid]
    ok: dict[str, Any]
    if op.answer is None:
        ok = {"description": op.description or op.summary, "content": {op.media: {"schema": {"type": "string"}}},
              "headers": _headers(False)}
    else:
        schema = {"$ref": REF.format(name=op.answer)} if isinstance(op.answer, str) else op.answer
        ok = _json(schema, op.summary, op.limited)
        if op.alternative:
            ok["content"].update(op.alternative)
    out: dict[str, Any] = {"summary": op.summary, "operationId": op.operation_id, "parameters": params,
                           "responses": {str(op.status): ok, **_errors(op.errors, op.limited)}}
    if op.status != 200:  # accepted: 200 is the answer to an idempotent retry (the same client id and URL)
        out["responses"]["200"] = {**ok, "description": "The job made by an earlier request with the same client id "
                                                        "and URL (a retry makes no second job)"}
    if op.description:
        out["description"] = op.description
    if op.reviewer:
        out["security"] = [{"bearer": []}]  # a reviewer or admin API key, always
    elif op.keyed:
        out["security"] = [{}, {"bearer": []}]  # optional: required only when NSFW_API_KEYS is set
    if op.body == "image":
        out["requestBody"] = {"required": op.body_required, "content": _image_body(settings)}
    elif op.body is not None:
        out["requestBody"] = {"required": op.body_required,
                              "content": {"application/json": {"schema": {"$ref": REF.format(name=op.body)}}}}
    return out


def schemas(settings: Settings) -> dict[str, Any]:
    """Every schema of the document, generated from the contract, with this server's limits filled in."""
    tops, components = msgspec.json.schema_components(SCHEMA_TYPES, ref_template=REF)
    body = components["PredictBatchBody"] = tops[SCHEMA_TYPES.index(c.PredictBatchBody)]  # a union: no name of its own
    for form in body["anyOf"]:
        if form.get("type") == "array":
            form["maxItems"] = settings.max_batch_items
    body["description"] = "a list of URLs (or items), or {\"items\": [...], \"detail\": bool}"
    largest = max(settings.max_bytes, settings.max_video_bytes)  # a video's base64 may be longer than an image's
    limits = c.schema_limits(components, max_bytes=largest, max_url_length=settings.max_url_length,
                             max_batch_items=settings.max_batch_items)
    limits["Image"]["description"] = (
        f"{limits['Image']['description'].rsplit(' At most', 1)[0]} At most {settings.max_bytes} bytes for an image "
        f"(NSFW_MAX_BYTES), {settings.max_video_bytes} for a video (NSFW_MAX_VIDEO_BYTES); in a batch, "
        f"{settings.max_bytes} in all.")
    limits["Image"]["properties"]["url"]["anyOf"][0]["pattern"] = URL_PATTERN  # the documented subset
    video_url = limits["VideoSource"]["properties"]["url"]
    video_url.update(pattern=URL_PATTERN, maxLength=settings.max_url_length)
    return limits


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route (a test checks that paths and methods match).

    Limits that are settings (URL length, items per batch) come from ``settings`` (the defaults without it).
    """
    if settings is None:
        settings = load_settings(environ={})
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, settings)
    return {
        "openapi": "3.1.0",
        "info": {"title": "NSFW image moderation API", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": schemas(settings),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            # Every operation accepts X-Request-ID; any value is accepted, and one that is not 1 to
            # REQUEST_ID_LENGTH characters of A-Z a-z 0-9 . _ : - is replaced by a new id (never refused).
            "headers": {"RequestId": {
                "description": f"The request's id: the client's {REQUEST_ID} when it is 1 to {REQUEST_ID_LENGTH} "
                               "characters of A-Z a-z 0-9 . _ : -, else a new one (32 hex digits); also in error "
                               "bodies (request_id) and on the server's log lines about the request",
                "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": REQUEST_ID_LENGTH}}},
        },
    }
