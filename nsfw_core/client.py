"""A Python client for the service's API v1 (synchronous, on requests).

::

    from nsfw_core.client import Client

    with Client("https://nsfw.example.com", api_key="...") as client:
        result = client.classify_url("https://example.com/cat.jpg")
        result = client.classify_bytes(open("cat.jpg", "rb").read(), model="InceptionV3")
        results = client.classify_batch([{"id": 1, "url": "https://..."}, {"id": 2, "bytes": b"..."}])
        review = client.review(result["review_id"])

Every call returns the answer's JSON (``ClassifyResult``, ``Review``; a batch: its list of results,
each a result or ``{"id", "error"}``).  An error answer raises :class:`ApiError` (``status``,
``code``, ``message``, ``body``).  429 (rate limited) and 503 (overloaded, not ready, model loading
room) are retried up to ``retries`` times, waiting what ``Retry-After`` says (seconds or an HTTP
date; 1 s, 2 s, 4 s ... without it), at most ``max_wait_s`` each; connection errors are retried the
same way.  ``nsfw-classify --server URL`` uses it to classify a folder on a remote service.
"""

from __future__ import annotations

import base64
import email.utils
import time
from typing import Any, Callable, Iterable, Mapping

import requests

RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = "nsfw-client/1"


class ApiError(Exception):
    """An error answer (or no answer): ``status`` (0 without one), ``code``, ``message``, ``body``."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


class Client:
    """The API at ``base_url`` (``http(s)://host:port``), with ``api_key`` as a Bearer token when given."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0, retries: int = 4,
                 max_wait_s: float = 60.0, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------ calls

    def classify_url(self, url: str, *, model: str | None = None, thresholds: Mapping[str, float] | None = None,
                     id: Any = None) -> dict[str, Any]:
        return self._request("POST", "/v1/classify", _body({"url": url}, model, thresholds, id))

    def classify_bytes(self, data: bytes, *, model: str | None = None,
                       thresholds: Mapping[str, float] | None = None, id: Any = None) -> dict[str, Any]:
        image = {"base64": base64.b64encode(data).decode("ascii")}
        return self._request("POST", "/v1/classify", _body(image, model, thresholds, id))

    def classify_batch(self, items: Iterable[Mapping[str, Any]], *, model: str | None = None,
                       thresholds: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        """``items``: ``{"id": ..., "url": ...}`` or ``{"id": ..., "bytes": b"..."}``; results in order."""
        out = []
        for item in items:
            image = ({"url": item["url"]} if "url" in item
                     else {"base64": base64.b64encode(item["bytes"]).decode("ascii")})
            out.append({"id": item.get("id"), "image": image})
        body: dict[str, Any] = {"items": out}
        if model is not None:
            body["model"] = model
        if thresholds is not None:
            body["thresholds"] = dict(thresholds)
        return list(self._request("POST", "/v1/classify/batch", body)["results"])

    def review(self, review_id: str) -> dict[str, Any]:
        """The review item a classification's ``review_id`` names (only the key that got it may ask)."""
        from urllib.parse import quote

        return self._request("GET", f"/v1/reviews/{quote(str(review_id), safe='')}")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    # ------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                response = self.session.request(method, self.base_url + path, json=body, timeout=self.timeout)
            except requests.RequestException as exc:
                if attempt >= self.retries:
                    raise ApiError(0, "unreachable", f"{method} {path}: {exc}") from exc
                self.sleep(self._backoff(attempt, None))
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                self.sleep(self._backoff(attempt, retry_after(response.headers.get("Retry-After"))))
                attempt += 1
                continue
            try:
                doc = response.json()
            except ValueError:
                doc = None
            if response.status_code >= 400:
                code = doc.get("code", "error") if isinstance(doc, dict) else "error"
                message = doc.get("message", response.reason) if isinstance(doc, dict) else response.text[:200]
                raise ApiError(response.status_code, str(code), str(message), doc)
            if not isinstance(doc, dict):
                raise ApiError(response.status_code, "bad_response", "the answer is not a JSON object")
            return doc

    def _backoff(self, attempt: int, advised: float | None) -> float:
        wait = advised if advised is not None else float(2 ** attempt)
        return min(self.max_wait_s, wait)


def _body(image: dict[str, str], model: str | None, thresholds: Mapping[str, float] | None,
          ident: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"image": image}
    if model is not None:
        body["model"] = model
    if thresholds is not None:
        body["thresholds"] = dict(thresholds)
    if ident is not None:
        body["id"] = ident
    return body


# ---------------------------------------------------------------- the CLI's --server


def classify_sources(client: Client, sources: list[str], *, model: str | None = None, workers: int = 4,
                     read: Callable[[str], bytes] | None = None,
                     progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Classify files and URLs on the server, ``workers`` requests at a time; one row per source, in order:
    ``{"source", "scores", "verdict"}`` or ``{"source", "error": {"code", "message"}}`` (the CLI's lines).

    A URL is fetched by the server; a file is read here and sent as base64."""
    from concurrent.futures import ThreadPoolExecutor

    from nsfw_core.images.fetch import is_url

    def load(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    reader = read or load

    def one(source: str) -> dict[str, Any]:
        try:
            if is_url(source):
                result = client.classify_url(source, model=model)
            else:
                result = client.classify_bytes(reader(source), model=model)
        except ApiError as exc:
            return {"source": source, "error": exc.to_dict()}
        except OSError as exc:
            return {"source": source, "error": {"code": "unreadable", "message": str(exc)}}
        finally:
            if progress is not None:
                progress(1)
        return {"source": source, "scores": result["scores"], "verdict": result["verdict"]}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, sources))
