"""The one HTTP client of the library: JSON requests to one server, pooled connections, a bearer token, one retry rule.

The vLLM backend, the OpenRLHF / verl adapters (which reach `cme-reward serve`) and the experiments' judge all use
[`JSONClient`], so `max_retries` means the same everywhere: the number of retries after the first try (a request is
sent at most `max_retries + 1` times).

Retried, with exponential backoff and jitter (and at least the server's `Retry-After`): connection errors, timeouts
and the statuses that mean "try again" (408, 425, 429, 502, 503, 504). Any other 4xx or 5xx answer raises
[`RemoteError`] at once with the server's own message (retrying a refusal or a server bug only delays it); no answer
after the last try raises [`UnreachableError`].
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .errors import RemoteError, UnreachableError

__all__ = ["RETRY_STATUSES", "JSONClient", "check_url", "require_httpx"]

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429, 502, 503, 504})
MAX_DELAY = 30.0  # seconds: the longest wait between two tries (the server's Retry-After included)


def require_httpx():
    """The `httpx` module, or an `ImportError` saying how to install it."""
    try:
        import httpx
    except ImportError as err:
        raise ImportError('cme_reward talks to servers with httpx: pip install "httpx>=0.27"') from err
    return httpx


def check_url(url: Any, name: str = "url") -> str:
    """`url` without a trailing `/`, once checked to be `http(s)://host[:port][/path]` (no query or credentials).

    Raises:
        `ValueError`: naming `name`, the value and what is allowed.
    """
    allowed = "allowed: 'http(s)://host[:port]', optionally with a path"
    if not isinstance(url, str):
        raise ValueError(f"`{name}` must be a string, got {type(url).__name__}; {allowed}")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        raise ValueError(f"`{name}` {url!r} is not a valid URL ({err}); {allowed}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"`{name}` {url!r} is not an http(s) URL; {allowed}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"`{name}` {url!r} has a query, fragment or credentials; {allowed}")
    return url.strip().rstrip("/")


def _check_options(timeout: Any, max_retries: Any, backoff: Any, max_connections: Any) -> None:
    for name, value, low in (("max_retries", max_retries, 0), ("max_connections", max_connections, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    for name, value, zero_ok in (("timeout", timeout, False), ("backoff", backoff, True)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (value == 0 and not zero_ok):
            raise ValueError(
                f"`{name}` must be a finite number of seconds {'>= 0' if zero_ok else '> 0'}, got {value!r}"
            )


def _error_message(response: Any) -> str:
    """The server's error text: OpenAI/vLLM `{"error": {"message", "type"}}`, `{"error": str}`, `{"detail": ...}`."""
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


class JSONClient:
    """JSON requests to one server with pooled keep-alive connections; safe to share between threads.

    Args:
        base_url (`str`): `http(s)://host[:port]`, optionally with a path prefix that every request path extends.
        api_key (`str`, *optional*): sent as `Authorization: Bearer <api_key>`; never logged.
        timeout (`float`, defaults to `120.0`): seconds for one try.
        max_retries (`int`, defaults to `4`): retries after the first try (see the module docstring for what is
            retried).
        backoff (`float`, defaults to `0.5`): seconds before the first retry; doubled each retry (at most 30 s), times
            a random factor in [0.5, 1], and at least the server's `Retry-After`.
        max_connections (`int`, defaults to `8`): pooled connections (requests in flight at once).
        name (`str`, defaults to `"the server"`): how error messages call the server (e.g. `"the vLLM server"`).

    Example:

    ```python
    >>> with JSONClient("http://127.0.0.1:8000", max_retries=2) as client:
    ...     client.request("POST", "/score", {"prompts": ["2 + 2 ="], "responses": [" 4"]})
    {'scores': [-0.61...]}
    ```
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_connections: int = 8,
        name: str = "the server",
    ):
        require_httpx()  # fail now, not at the first request
        self.base_url = check_url(base_url, "base_url")
        _check_options(timeout, max_retries, backoff, max_connections)
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError("`api_key` must be a non-empty string or None")
        self.api_key, self.name = api_key, name
        self.timeout, self.max_retries, self.backoff = float(timeout), max_retries, float(backoff)
        self.max_connections = max_connections
        self.retries = 0  # retries sent so far, all requests together
        self._client = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, max_retries={self.max_retries})"

    def _pool(self) -> Any:
        with self._lock:
            if self._client is None:
                httpx = require_httpx()
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                limits = httpx.Limits(max_connections=self.max_connections,
                                      max_keepalive_connections=self.max_connections)  # fmt: skip
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), headers=headers, limits=limits)
            return self._client

    def request(
        self, method: str, path: str = "", payload: Any = None, *, on_retry: Callable[[], None] | None = None
    ) -> Any:
        """Send one JSON request to `base_url + path`; returns the decoded JSON answer.

        Args:
            method (`str`): `"GET"` or `"POST"`.
            path (`str`, *optional*): appended to `base_url`, e.g. `"/v1/models"`.
            payload (*optional*): the JSON body.
            on_retry (`Callable[[], None]`, *optional*): called before each retry (e.g. to count them).

        Raises:
            `RemoteError`: an HTTP error that is not retried (the server's message and `status_code` kept), or a
                successful answer that is not JSON.
            `UnreachableError`: every try failed.
        """
        httpx = require_httpx()
        url = self.base_url + path
        failure, retry_after = "", 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = max(min(MAX_DELAY, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0), retry_after)
                with self._lock:
                    self.retries += 1
                if on_retry is not None:
                    on_retry()
                logger.warning("%s %s failed (%s); retry %d of %d in %.2f s", method, url, failure, attempt,
                               self.max_retries, delay)  # fmt: skip
                time.sleep(delay)
            retry_after = 0.0
            try:
                response = self._pool().request(method, url, json=payload)
            except httpx.TransportError as err:  # refused or dropped connections, timeouts, protocol errors
                failure = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                continue
            status = response.status_code
            if status in RETRY_STATUSES:
                failure = f"HTTP {status}: {_error_message(response)}"
                try:
                    retry_after = min(MAX_DELAY, float(response.headers.get("retry-after", 0)))
                except ValueError:
                    retry_after = 0.0
                continue
            if status >= 400:
                hint = " (check the API key)" if status == 401 else ""
                raise RemoteError(
                    f"{self.name} refused {method} {url} (HTTP {status}): {_error_message(response)}{hint}", status
                )
            try:
                return response.json()
            except ValueError:
                raise RemoteError(f"{method} {url} answered HTTP {status} with non-JSON content: "
                                  f"{response.text[:200]!r}", status) from None  # fmt: skip
        raise UnreachableError(
            f"{self.name} at {self.base_url} did not answer {method} {path or '/'} after {self.max_retries + 1} tries "
            f"(last failure: {failure}); is it running and ready at that address?"
        )

    async def arequest(self, method: str, path: str = "", payload: Any = None) -> Any:
        """[`request`] in a worker thread, so the calling event loop keeps running."""
        return await asyncio.to_thread(self.request, method, path, payload)

    def close(self) -> None:
        """Close the pooled connections (a later request opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> JSONClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # the pool and the lock do not pickle; rebuilt on demand
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
