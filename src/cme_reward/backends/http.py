"""HTTP for the vLLM backend: the server address, a pooled `httpx.Client`, and one JSON request with retries.

Connection errors, timeouts, HTTP 5xx and 429 are retried with exponential backoff and jitter (at least the server's
`Retry-After`); other 4xx answers raise [`VLLMRequestError`] at once with the server's message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["VLLMRequestError", "normalize_base_url", "open_client", "request_json", "require_httpx"]

logger = logging.getLogger(__name__)

MAX_DELAY = 30.0  # seconds: the longest wait between two tries (the server's Retry-After included)


def require_httpx():
    """The `httpx` module, or an `ImportError` naming the extra to install."""
    try:
        import httpx
    except ImportError as err:
        raise ImportError('The vLLM backend needs httpx: pip install "cme-reward[vllm]"') from err
    return httpx


def normalize_base_url(base_url: Any) -> str:
    """`http(s)://host[:port]`, with an optional trailing `/` or `/v1`, -> `http(s)://host[:port]`.

    Example:

    ```python
    >>> normalize_base_url("http://127.0.0.1:8000/v1/")
    'http://127.0.0.1:8000'
    ```
    """
    allowed = "allowed: 'http(s)://host[:port]', optionally ending in '/' or '/v1'"
    if not isinstance(base_url, str):
        raise ValueError(f"`base_url` must be a string, got {type(base_url).__name__}; {allowed}")
    try:
        parts = urlsplit(base_url.strip())
        port = parts.port  # raises ValueError on a bad port
    except ValueError as err:
        raise ValueError(f"`base_url` {base_url!r} is not a valid URL ({err}); {allowed}") from None
    path = parts.path.rstrip("/")
    if parts.scheme not in ("http", "https") or not parts.hostname or path not in ("", "/v1"):
        raise ValueError(f"`base_url` {base_url!r} is not a server root; {allowed}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"`base_url` {base_url!r} has a query, fragment or credentials; {allowed}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class VLLMRequestError(RuntimeError):
    """The server refused a request with an HTTP 4xx status (not retried)."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


def open_client(*, api_key: str | None, timeout: float, max_connections: int) -> Any:
    """A sync `httpx.Client` with `max_connections` pooled (kept-alive) connections and an optional bearer token."""
    httpx = require_httpx()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.Client(timeout=httpx.Timeout(timeout), headers=headers, limits=limits)


def _error_message(response: Any) -> str:
    """The server's error text: vLLM's `{"error": {"message", "type", ...}}`, FastAPI's `{"detail": ...}`, or text."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            kind = f"{error['type']}: " if error.get("type") else ""
            return f"{kind}{error['message']}"
        if error is not None:
            return str(error)
        if "detail" in data:
            return str(data["detail"])
    return str(data)[:500]


def request_json(
    client: Any,
    method: str,
    base_url: str,
    path: str,
    payload: dict | None = None,
    *,
    max_retries: int,
    backoff: float,
    on_retry: Callable[[], None] | None = None,
) -> Any:
    """One JSON request to `base_url + path`, tried up to `max_retries + 1` times; returns the decoded answer.

    Args:
        client (`httpx.Client`): the connection pool (see [`open_client`]).
        method (`str`): `"GET"` or `"POST"`.
        base_url (`str`): server root, as [`normalize_base_url`] returns it.
        path (`str`): e.g. `"/v1/models"`.
        payload (`dict`, *optional*): the JSON body.
        max_retries (`int`): retries after a connection error, timeout, HTTP 5xx or 429.
        backoff (`float`): first retry delay in seconds; doubled each retry (at most 30 s), times a random factor in
            [0.5, 1], and at least the server's `Retry-After`.
        on_retry (`Callable[[], None]`, *optional*): called before each retry (e.g. to count them).

    Raises:
        `VLLMRequestError`: an HTTP 4xx answer other than 429.
        `ConnectionError`: every try failed.
        `RuntimeError`: a successful answer that is not JSON.
    """
    httpx = require_httpx()
    url = base_url + path
    tries = max_retries + 1
    failure, retry_after = "", 0.0
    for attempt in range(tries):
        if attempt:
            delay = min(MAX_DELAY, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            delay = max(delay, retry_after)
            if on_retry is not None:
                on_retry()
            logger.warning("%s %s failed (%s); retry %d of %d in %.2f s", method, url, failure, attempt, max_retries,
                           delay)  # fmt: skip
            time.sleep(delay)
        retry_after = 0.0
        try:
            response = client.request(method, url, json=payload)
        except httpx.TransportError as err:  # connection refused/dropped, timeouts, protocol errors
            failure = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            continue
        status = response.status_code
        if status == 429 or status >= 500:
            failure = f"HTTP {status}: {_error_message(response)}"
            try:
                retry_after = min(MAX_DELAY, float(response.headers.get("retry-after", 0)))
            except ValueError:
                retry_after = 0.0
            continue
        if status >= 400:
            hint = " (is `api_key` the server's `--api-key`?)" if status == 401 else ""
            raise VLLMRequestError(
                f"the vLLM server refused {method} {url} (HTTP {status}): {_error_message(response)}{hint}", status
            )
        try:
            return response.json()
        except ValueError:
            raise RuntimeError(f"{method} {url} answered HTTP {status} with non-JSON content: "
                               f"{response.text[:200]!r}") from None  # fmt: skip
    raise ConnectionError(
        f"the vLLM server at {base_url} did not answer {method} {path} after {tries} tries "
        f"(last failure: {failure}); is `vllm serve` running and ready at that address?"
    )
