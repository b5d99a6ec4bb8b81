"""vLLM scoring backend: per-token log-probs of responses from a `vllm serve` process (OpenAI-compatible server).

Each `(context_ids, response_ids)` pair is sent as the token-id prompt `context + response` to
`POST {base_url}/v1/completions` with `max_tokens=1, prompt_logprobs=0, temperature=0`. vLLM answers, for every prompt
token but the first, the log-prob of that token given the tokens before it (`choices[i].prompt_logprobs`: entry 0 is
null, the others map token-id strings to `{"logprob", "rank", "decoded_token"}` and always hold the actual token), so
the response span is read off exactly. vLLM clamps `-inf` to `-9999.0`; it is mapped back to `-inf`.

Requests carry at most `pairs_per_request` prompts and `tokens_per_request` prompt tokens; up to `max_concurrency` of
them are in flight at once over one reused connection pool (a sync `httpx.Client` driven by a thread pool, so scoring
also works from a thread whose event loop is running, e.g. TRL's async reward path). Connection errors, timeouts, HTTP
5xx and 429 are retried with exponential backoff and jitter; other 4xx answers raise at once with the server's message.
"""

from __future__ import annotations

import logging
import math
import operator
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import torch

__all__ = ["VLLMBackend", "VLLMRequestError", "VLLMStats"]

logger = logging.getLogger(__name__)

Pair = tuple[Sequence[int], Sequence[int]]  # (context ids, response ids); context non-empty
CLAMPED = -9999.0  # vLLM's JSON stand-in for -inf (clamp_prompt_logprobs)
PROBE_TEXT = "The quick brown fox, 2 + 2 = 4.\n  def f(x):\n\treturn x ** 2  # Héllo wörld, 東京, Привет 🙂\n"


def _httpx():
    try:
        import httpx
    except ImportError as err:
        raise ImportError('The vLLM backend needs httpx: pip install "cme-reward[vllm]"') from err
    return httpx


def normalize_base_url(base_url: Any) -> str:
    """`http(s)://host[:port]`, with an optional trailing `/` or `/v1`, -> `http(s)://host[:port]`."""
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


@dataclass
class VLLMStats:
    """Cumulative cost of a [`VLLMBackend`]."""

    requests: int = 0  # scoring requests answered (POST /v1/completions)
    retries: int = 0  # attempts sent again after a connection error, timeout, 5xx or 429 (probes included)
    prompt_tokens: int = 0  # prompt tokens sent for scoring: every prompt's whole context + response
    tokens_scored: int = 0  # response tokens whose log-probs came back
    seconds: float = 0.0  # wall time spent in `score`

    @property
    def tokens_forward(self) -> int:
        """Tokens the verifier ran (the engine's name): vLLM recomputes each prompt's whole prefill."""
        return self.prompt_tokens


def _error_message(response) -> str:
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


class VLLMBackend:
    r"""Scores token-id pairs with a verifier served by `vllm serve` (the same contract as the in-process engine).

    Entropy is not available: `prompt_logprobs` returns the actual token's log-prob (and a top-k), never the full
    distribution, so `supports_entropy` is `False`.

    Args:
        base_url (`str`): server root, `http(s)://host[:port]`; a trailing `/` or `/v1` is accepted.
        model (`str`, *optional*): served model id to use; `None` picks the verifier's id (see [`check`]) or the only
            served model.
        api_key (`str`, *optional*): sent as `Authorization: Bearer <api_key>` (`vllm serve --api-key`).
        timeout (`float`, defaults to `120.0`): seconds for one HTTP request.
        max_concurrency (`int`, defaults to `8`): requests in flight at once (and pooled connections).
        max_retries (`int`, defaults to `4`): retries after a connection error, timeout, HTTP 5xx or 429; the request
            is tried `max_retries + 1` times in all.
        pairs_per_request (`int`, defaults to `16`): prompts per request (vLLM caps a prompt list at
            `VLLM_MAX_COMPLETION_PROMPTS`, 1024 by default).
        tokens_per_request (`int`, defaults to `32768`): prompt tokens per request (a longer pair goes alone).
        backoff (`float`, defaults to `0.5`): first retry delay in seconds; doubled each retry (at most 30 s), times a
            random factor in [0.5, 1], and at least the server's `Retry-After`.

    Example:

    ```python
    >>> # vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --max-logprobs 1 --no-enable-prefix-caching
    >>> from transformers import AutoTokenizer
    >>> from cme_reward.backends import VLLMBackend
    >>> tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> backend = VLLMBackend("http://127.0.0.1:8000")
    >>> backend.check(tokenizer, "HuggingFaceTB/SmolLM2-135M-Instruct")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    >>> context = tokenizer("The capital of France is").input_ids
    >>> response = tokenizer(" Paris.", add_special_tokens=False).input_ids
    >>> [lp.shape for lp in backend.score([(context, response)])]  # one log-prob per response token
    [torch.Size([2])]
    ```
    """

    supports_entropy = False  # prompt_logprobs carry no full distribution: metric="entropy" is not available

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_concurrency: int = 8,
        max_retries: int = 4,
        pairs_per_request: int = 16,
        tokens_per_request: int = 32768,
        backoff: float = 0.5,
    ):
        _httpx()  # fail now, not at the first score
        self.base_url = normalize_base_url(base_url)
        for name, value, low in (
            ("max_concurrency", max_concurrency, 1),
            ("max_retries", max_retries, 0),
            ("pairs_per_request", pairs_per_request, 1),
            ("tokens_per_request", tokens_per_request, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"`{name}` must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"`{name}` must be >= {low}, got {value}")
        for name, value, zero_ok in (("timeout", timeout, False), ("backoff", backoff, True)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"`{name}` must be a number of seconds, got {value!r}")
            if not math.isfinite(value) or value < 0 or value == 0 and not zero_ok:
                bound = ">= 0" if zero_ok else "> 0"
                raise ValueError(f"`{name}` must be a finite number of seconds {bound}, got {value}")
        for name, value in (("model", model), ("api_key", api_key)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"`{name}` must be a non-empty string or None, got {value!r}")
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.pairs_per_request = pairs_per_request
        self.tokens_per_request = tokens_per_request
        self.backoff = float(backoff)
        self.served_model: str | None = None  # resolved by `check` (or the first `score`)
        self.max_model_len: int | None = None  # from GET /v1/models, when the server says
        self.stats = VLLMStats()
        self._client = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, model={self.served_model or self.model!r})"

    # ---- HTTP ---------------------------------------------------------------------------------------------------

    def _get_client(self):
        with self._lock:
            if self._client is None:
                httpx = _httpx()
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                limits = httpx.Limits(
                    max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
                )
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), headers=headers, limits=limits)
            return self._client

    def _request(self, method: str, path: str, payload: dict | None = None) -> Any:
        """One JSON request with retries; returns the decoded answer."""
        httpx = _httpx()
        client = self._get_client()
        url = self.base_url + path
        tries = self.max_retries + 1
        failure, retry_after = "", 0.0
        for attempt in range(tries):
            if attempt:
                delay = min(30.0, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                delay = max(delay, retry_after)
                with self._lock:
                    self.stats.retries += 1
                logger.warning("%s %s failed (%s); retry %d of %d in %.2f s", method, url, failure, attempt,
                               self.max_retries, delay)  # fmt: skip
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
                    retry_after = min(30.0, float(response.headers.get("retry-after", 0)))
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
            f"the vLLM server at {self.base_url} did not answer {method} {path} after {tries} tries "
            f"(last failure: {failure}); is `vllm serve` running and ready at that address?"
        )

    # ---- probing ------------------------------------------------------------------------------------------------

    def _pick_model(self, expected_model: str | None) -> str:
        data = self._request("GET", "/v1/models")
        cards = data.get("data") if isinstance(data, dict) else None
        if not isinstance(cards, list):
            raise RuntimeError(f"GET {self.base_url}/v1/models did not answer a model list: {str(data)[:200]}")
        cards = [c for c in cards if isinstance(c, dict) and isinstance(c.get("id"), str)]
        ids = [c["id"] for c in cards]
        if not ids:
            raise RuntimeError(f"the vLLM server at {self.base_url} serves no model")
        if self.model is not None:
            if self.model not in ids:
                raise ValueError(f"`model` {self.model!r} is not served by {self.base_url}; served models: {ids}")
            chosen = self.model
        elif expected_model is not None:
            matches = [c["id"] for c in cards if expected_model in (c["id"], c.get("root"))]
            if not matches:
                raise ValueError(
                    f"the vLLM server at {self.base_url} serves {ids}, not the verifier {expected_model!r}; pass "
                    "`model=<served id>` to score with a served model anyway (its tokenizer is still checked "
                    "against the verifier's)"
                )
            chosen = matches[0]
        elif len(ids) > 1:
            raise ValueError(f"the vLLM server at {self.base_url} serves several models {ids}; pick one with `model=`")
        else:
            chosen = ids[0]
        card = cards[ids.index(chosen)]
        length = card.get("max_model_len")
        self.max_model_len = length if isinstance(length, int) and length > 0 else None
        self.served_model = chosen
        return chosen

    def check(self, tokenizer: Any, expected_model: str | None = None) -> str:
        """Probe the server once: pick the served model and check that it tokenizes like the local verifier.

        Args:
            tokenizer (`PreTrainedTokenizerBase`): the local verifier tokenizer, whose ids are sent to the server.
            expected_model (`str`, *optional*): the verifier's name (hub id or path). Without `model`, the served
                model whose id (or `root`, its path with `--served-model-name`) equals it is chosen, and none
                matching is an error. Without either, the server must serve exactly one model.

        Returns:
            `str`: the served model id used in the scoring requests.

        Raises:
            `ValueError`: `model` not served, the verifier not served, several models and none chosen, or the server's
            tokenizer differs from the local one (checked on a probe text through vLLM's `POST /tokenize`).
            `ConnectionError`: the server did not answer.
        """
        model = self._pick_model(expected_model)
        specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if isinstance(t, str)][:8]
        probe = PROBE_TEXT + "".join(specials)
        local = [int(t) for t in tokenizer(probe)["input_ids"]]
        try:
            answer = self._request("POST", "/tokenize", {"model": model, "prompt": probe, "add_special_tokens": True})
        except VLLMRequestError as err:
            if err.status_code != 404:
                raise
            logger.warning("%s has no /tokenize endpoint: the server's tokenizer cannot be checked", self.base_url)
            return model
        remote = answer.get("tokens") if isinstance(answer, dict) else None
        if remote != local:
            if not isinstance(remote, list):
                raise RuntimeError(f"POST {self.base_url}/tokenize did not answer a token list: {str(answer)[:200]}")
            k = next((i for i, (a, b) in enumerate(zip(remote, local)) if a != b), min(len(remote), len(local)))
            raise ValueError(
                f"the vLLM server's tokenizer (model {model!r} at {self.base_url}) differs from the local verifier "
                f"tokenizer: a probe text gives {len(remote)} tokens on the server and {len(local)} locally, first "
                f"difference at token {k} (server {remote[k : k + 4]}, local {local[k : k + 4]}). Serve the verifier "
                "model itself (or pass its tokenizer with `vllm serve --tokenizer`)."
            )
        logger.info("vLLM server %s serves %r with the verifier's tokenizer", self.base_url, model)
        return model

    # ---- scoring ------------------------------------------------------------------------------------------------

    def score(self, pairs: Sequence[Pair], *, progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Per-token log-probs, one float32 CPU tensor of shape (len(response),) per pair, in input order.

        Args:
            pairs (`Sequence[tuple[Sequence[int], Sequence[int]]]`): `(context_ids, response_ids)` in the verifier's
                token ids; every context needs at least one token.
            progress (`Callable[[int], None]`, *optional*): called (in the calling thread) with the number of response
                tokens finished after each request.

        Returns:
            `list[torch.Tensor]`: `log p(response token | context, previous response tokens)`, natural log; `-inf`
            where the server clamped it to `-9999.0`.

        Raises:
            `ValueError`: an empty context, a non-integer id, or a pair longer than the server's `max_model_len`.
            `VLLMRequestError`: the server refused a request (HTTP 4xx, e.g. an id outside the vocabulary).
            `ConnectionError`: a request failed `max_retries + 1` times.
            `RuntimeError`: a malformed answer (missing token, wrong length): a server bug.
        """
        start = time.perf_counter()
        keys: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for i, pair in enumerate(pairs):
            try:
                context, response = pair
                key = (tuple(map(_token_id, context)), tuple(map(_token_id, response)))
            except (TypeError, ValueError) as err:
                raise ValueError(f"pairs[{i}] must be (context_ids, response_ids) lists of token ids: {err}") from None
            if not key[0]:
                raise ValueError(f"pairs[{i}] has an empty context; every pair needs at least one context token")
            keys.append(key)
        unique: dict[tuple, int] = {}
        slot = [unique.setdefault(k, len(unique)) for k in keys]
        todo = list(unique)  # unique pairs
        count = [0] * len(todo)
        first = [-1] * len(todo)  # input index named in errors
        for i, s in enumerate(slot):
            count[s] += 1
            first[s] = i if first[s] < 0 else first[s]
        results = [torch.empty(0, dtype=torch.float32) for _ in todo]
        scored = [u for u, (_, r) in enumerate(todo) if r]
        if scored:
            model = self.served_model or self._pick_model(None)
            if self.max_model_len is not None:
                for u in scored:
                    n = len(todo[u][0]) + len(todo[u][1])
                    if n + 1 > self.max_model_len:
                        raise ValueError(
                            f"pairs[{first[u]}] has {n} tokens; the vLLM server's max_model_len {self.max_model_len} "
                            f"leaves room for {self.max_model_len - 1} (one position is kept for the generated token)"
                        )
            batches = self._split(todo, scored)
            self._run(model, todo, batches, first, count, results, progress)
        with self._lock:
            self.stats.seconds += time.perf_counter() - start
        return [results[s] for s in slot]

    def _split(self, todo: list, scored: list[int]) -> list[list[int]]:
        """Unique pairs, in order, into requests of at most `pairs_per_request` prompts and `tokens_per_request`
        prompt tokens (a longer pair goes alone)."""
        batches: list[list[int]] = []
        tokens = 0
        for u in scored:
            n = len(todo[u][0]) + len(todo[u][1])
            if not batches or len(batches[-1]) >= self.pairs_per_request or tokens + n > self.tokens_per_request:
                batches.append([])
                tokens = 0
            batches[-1].append(u)
            tokens += n
        return batches

    def _run(self, model: str, todo, batches, first, count, results, progress) -> None:
        def done(batch: list[int], out: list[torch.Tensor]) -> None:
            for u, lp in zip(batch, out):
                results[u] = lp
            if progress:
                progress(sum(len(todo[u][1]) * count[u] for u in batch))

        if len(batches) == 1:  # no thread needed
            done(batches[0], self._score_batch(model, todo, batches[0], first))
            return
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batches))) as pool:
            pending = {pool.submit(self._score_batch, model, todo, b, first): b for b in batches}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        done(pending.pop(future), future.result())  # re-raises a request's error
            except BaseException:
                for future in pending:
                    future.cancel()
                raise

    def _score_batch(self, model: str, todo, batch: list[int], first: list[int]) -> list[torch.Tensor]:
        """One request for the batch's pairs -> their response log-probs, in batch order."""
        prompts = [list(todo[u][0] + todo[u][1]) for u in batch]
        payload = {"model": model, "prompt": prompts, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}
        answer = self._request("POST", "/v1/completions", payload)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        where = f"the vLLM answer for pairs {[first[u] for u in batch]}"
        if not isinstance(choices, list):
            raise RuntimeError(f"{where} has no `choices` list: {str(answer)[:200]}")
        by_index = {c.get("index"): c for c in choices if isinstance(c, dict)}
        if len(choices) != len(prompts) or set(by_index) != set(range(len(prompts))):
            raise RuntimeError(f"{where} has {len(choices)} choices with indices {list(by_index)[:20]} for "
                               f"{len(prompts)} prompts")  # fmt: skip
        out = [
            _response_logprobs(by_index[b].get("prompt_logprobs"), todo[u], f"pair {first[u]}")
            for b, u in enumerate(batch)
        ]
        with self._lock:
            self.stats.requests += 1
            self.stats.prompt_tokens += sum(map(len, prompts))
            self.stats.tokens_scored += sum(len(todo[u][1]) for u in batch)
        return out

    # ---- lifetime -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # the client and lock do not pickle; rebuilt on demand
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _token_id(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("token ids must be integers, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"token ids must be integers, got {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"token ids must be >= 0, got {value}")
    return value


def _response_logprobs(entries: Any, pair: tuple[tuple[int, ...], tuple[int, ...]], name: str) -> torch.Tensor:
    """The actual tokens' log-probs over the response span of one choice's `prompt_logprobs`."""
    context, response = pair
    ids = context + response
    if not isinstance(entries, list) or len(entries) != len(ids):
        got = f"{len(entries)} entries" if isinstance(entries, list) else repr(entries)[:80]
        raise RuntimeError(
            f"the vLLM server's prompt_logprobs for {name} should have {len(ids)} entries (one per prompt token), "
            f"got {got}; is the server vLLM with prompt_logprobs support?"
        )
    values = []
    for j, token in enumerate(response):
        position = len(context) + j
        entry = entries[position]
        item = entry.get(str(token)) if isinstance(entry, dict) else None
        logprob = item.get("logprob") if isinstance(item, dict) else None
        if not isinstance(logprob, (int, float)) or isinstance(logprob, bool):
            raise RuntimeError(
                f"the vLLM server's prompt_logprobs for {name} lack the actual token {token} at response position "
                f"{j} (prompt position {position}): {str(entry)[:200]}"
            )
        values.append(-math.inf if logprob == CLAMPED else float(logprob))
    return torch.tensor(values, dtype=torch.float32)
