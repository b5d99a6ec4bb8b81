"""vLLM scoring backend: per-token log-probs of responses from a `vllm serve` process (OpenAI-compatible server).

Each `(context_ids, response_ids)` pair is scored from vLLM's `prompt_logprobs` of the token-id prompt
`context + response` (the protocol: `cme_reward.backends.vllm_protocol`).

Requests carry at most `pairs_per_request` prompts (and `max_rows`, when a call gives it) and `tokens_per_request`
prompt tokens; up to `max_concurrency` of them are in flight at once over one pooled [`JSONClient`] driven by a thread
pool, so scoring also works from a thread whose event loop is running (e.g. TRL's async reward path). Retries follow
the library's one rule (`cme_reward.http`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import torch

from ..errors import RemoteError
from ..http import JSONClient, check_url
from ..scorer import Capabilities, Pair, ScorerStats
from .vllm_protocol import (
    check_model_len,
    check_tokenization,
    choose_model,
    completion_logprobs,
    completion_payload,
    probe_text,
    split_requests,
    unique_pairs,
)

__all__ = ["VLLMBackend", "normalize_base_url"]

logger = logging.getLogger(__name__)


def normalize_base_url(base_url: Any) -> str:
    """A vLLM server root: `http(s)://host[:port]`, with an optional trailing `/` or `/v1`, -> `http(s)://host[:port]`.

    Example:

    ```python
    >>> normalize_base_url("http://127.0.0.1:8000/v1/")
    'http://127.0.0.1:8000'
    ```
    """
    url = check_url(base_url, "base_url")
    path = url.partition("://")[2].partition("/")[2]
    if path not in ("", "v1"):
        raise ValueError(
            f"`base_url` {base_url!r} is not a server root; allowed: 'http(s)://host[:port]', optionally ending in "
            "'/' or '/v1'"
        )
    return url.removesuffix("/v1")


class VLLMBackend:
    r"""The vLLM [`Scorer`](cme_reward.scorer.Scorer): scores token-id pairs with a verifier served by `vllm serve`.

    Entropy is not available: `prompt_logprobs` returns the actual token's log-prob (and a top-k), never the full
    distribution, so `capabilities.entropy` is `False`.

    Args:
        base_url (`str`): server root, `http(s)://host[:port]`; a trailing `/` or `/v1` is accepted.
        model (`str`, *optional*): served model id to use; `None` picks the verifier's id (see [`check`]) or the only
            served model.
        api_key (`str`, *optional*): sent as `Authorization: Bearer <api_key>` (`vllm serve --api-key`).
        timeout (`float`, defaults to `120.0`): seconds for one HTTP request.
        max_concurrency (`int`, defaults to `8`): requests in flight at once (and pooled connections).
        max_retries (`int`, defaults to `4`): retries after the first try (`cme_reward.http`: connection errors,
            timeouts, HTTP 408/425/429/502/503/504).
        pairs_per_request (`int`, defaults to `16`): prompts per request (vLLM caps a prompt list at
            `VLLM_MAX_COMPLETION_PROMPTS`, 1024 by default).
        tokens_per_request (`int`, defaults to `8192`): prompt tokens per request (a longer pair goes alone); the
            reward passes its `max_tokens_per_batch`.
        backoff (`float`, defaults to `0.5`): first retry delay in seconds, doubled each retry.

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
        tokens_per_request: int = 8192,
        backoff: float = 0.5,
    ):
        for name, value in (("max_concurrency", max_concurrency), ("pairs_per_request", pairs_per_request),
                            ("tokens_per_request", tokens_per_request)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"`model` must be a non-empty string or None, got {model!r}")
        self.client = JSONClient(
            normalize_base_url(base_url), api_key=api_key, timeout=timeout, max_retries=max_retries,
            backoff=backoff, max_connections=max_concurrency, name="the vLLM server",
        )  # fmt: skip
        self.base_url = self.client.base_url
        self.model = model
        self.max_concurrency = max_concurrency
        self.pairs_per_request = pairs_per_request
        self.tokens_per_request = tokens_per_request
        self.served_model: str | None = None  # resolved by `check` (or the first `score`)
        self.max_model_len: int | None = None  # from GET /v1/models, when the server says
        self.capabilities = Capabilities(entropy=False)
        self.stats = ScorerStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, model={self.served_model or self.model!r})"

    def _request(self, method: str, path: str, payload: dict | None = None) -> Any:
        return self.client.request(method, path, payload, on_retry=self._count_retry)

    def _count_retry(self) -> None:
        with self._lock:
            self.stats.retries += 1

    # ---- probing ------------------------------------------------------------------------------------------------

    def _pick_model(self, expected_model: str | None) -> str:
        answer = self._request("GET", "/v1/models")
        chosen, self.max_model_len = choose_model(answer, base_url=self.base_url, model=self.model,
                                                  expected_model=expected_model)  # fmt: skip
        self.served_model = chosen
        if self.max_model_len:
            self.capabilities = Capabilities(entropy=False, max_length=self.max_model_len - 1)  # one slot to sample
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
            `UnreachableError`: the server did not answer.
        """
        model = self._pick_model(expected_model)
        probe = probe_text(tokenizer)
        local = [int(t) for t in tokenizer(probe)["input_ids"]]
        try:
            answer = self._request("POST", "/tokenize", {"model": model, "prompt": probe, "add_special_tokens": True})
        except RemoteError as err:
            if err.status_code != 404:
                raise
            logger.warning("%s has no /tokenize endpoint: the server's tokenizer cannot be checked", self.base_url)
            return model
        check_tokenization(answer, local, model=model, base_url=self.base_url)
        logger.info("vLLM server %s serves %r with the verifier's tokenizer", self.base_url, model)
        return model

    # ---- scoring ------------------------------------------------------------------------------------------------

    def score(
        self,
        pairs: Sequence[Pair],
        *,
        max_rows: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor]:
        """Per-token log-probs, one float32 CPU tensor of shape (len(response),) per pair, in input order.

        Args:
            pairs (`Sequence[tuple[Sequence[int], Sequence[int]]]`): `(context_ids, response_ids)` in the verifier's
                token ids; every context needs at least one token.
            max_rows (`int`, *optional*): at most this many prompts per request (below `pairs_per_request`).
            progress (`Callable[[int], None]`, *optional*): called (in the calling thread) with the number of response
                tokens finished after each request.

        Returns:
            `list[torch.Tensor]`: `log p(response token | context, previous response tokens)`, natural log; `-inf`
            where the server clamped it to `-9999.0`.

        Raises:
            `ValueError`: an empty context, a non-integer id, or a pair longer than the server's `max_model_len`.
            `RemoteError`: the server refused a request (e.g. an id outside the vocabulary), or a malformed answer.
            `UnreachableError`: a request failed `max_retries + 1` times.
        """
        if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1):
            raise ValueError(f"`max_rows` must be an int >= 1 or None, got {max_rows!r}")
        start = time.perf_counter()
        unique = unique_pairs(pairs)
        todo, first = unique.pairs, unique.first
        results = [torch.empty(0, dtype=torch.float32) for _ in todo]
        scored = [u for u, (_, r) in enumerate(todo) if r]
        if scored:
            model = self.served_model or self._pick_model(None)
            check_model_len(todo, scored, first, self.max_model_len)
            per_request = min(self.pairs_per_request, max_rows or self.pairs_per_request)
            batches = split_requests(todo, scored, pairs_per_request=per_request,
                                     tokens_per_request=self.tokens_per_request)  # fmt: skip
            self._run(model, todo, batches, first, unique.count, results, progress)
        with self._lock:
            self.stats.calls += 1
            self.stats.pairs += len(pairs)
            self.stats.seconds += time.perf_counter() - start
        return [results[s] for s in unique.slot]

    def _run(self, model: str, todo, batches, first, count, results, progress) -> None:
        def done(batch: list[int], out: list[torch.Tensor]) -> None:
            for u, lp in zip(batch, out):
                results[u] = lp
            if progress:
                progress(sum(len(todo[u][1]) * count[u] for u in batch))
            with self._lock:
                self.stats.tokens_scored += sum(len(todo[u][1]) * count[u] for u in batch)

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
        answer = self._request("POST", "/v1/completions", completion_payload(model, prompts))
        out = completion_logprobs(answer, [todo[u] for u in batch], [first[u] for u in batch])
        tokens = sum(map(len, prompts))
        with self._lock:
            self.stats.passes += 1
            self.stats.tokens_forward += tokens
            self.stats.padded_tokens += tokens
        return out

    # ---- lifetime -----------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Zero the stats."""
        self.stats = ScorerStats()

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        self.client.close()

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # the lock does not pickle; the client drops its own pool
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
