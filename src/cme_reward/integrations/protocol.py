"""Wire formats shared by the reward server (`cme_reward.tools.server`) and the trainer adapters, plus a small
retrying JSON client. Standard library only (httpx is used by `async_post_json` when installed).

OpenRLHF query -> (context, response):
    OpenRLHF sends `query[i] = decode(prompt_ids + response_ids, skip_special_tokens=False)` and `prompts[i]`, the
    prompt already rendered by the *policy's* chat template. The response is `query[i]` minus its `prompts[i]` prefix,
    then minus trailing end-of-sequence / end-of-turn text (see [`strip_special_suffixes`]). The verifier's context
    is `prompts[i]` as PLAIN TEXT: it is tokenized like any plain prompt (the verifier's own BOS, no verifier chat
    template), because it already carries the policy's template markup.

Missing rewards:
    A pair with no score (an empty response, or non-finite verifier log-probs) gets `missing_reward` in the OpenRLHF
    answer, because OpenRLHF needs a float. The default, -20.0, sits below any fluent text under the `"mean"`
    reduction (the mean log-prob of uniformly random tokens over a 150k vocabulary is -11.9), so an empty answer is
    never the best answer. `extra_logs["cme_scored"]` is 1.0 for a scored pair, 0.0 for a missing one: its logged mean
    is the fraction scored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DEFAULT_MISSING_REWARD",
    "DEFAULT_STRIP_SUFFIXES",
    "RewardServerError",
    "async_post_json",
    "endpoint_url",
    "env_missing_reward",
    "env_reward",
    "openrlhf_answer",
    "post_json",
    "split_query",
    "strip_special_suffixes",
]

logger = logging.getLogger(__name__)

DEFAULT_MISSING_REWARD = -20.0

# end-of-sequence / end-of-turn text of common chat models (Qwen/ChatML, Llama 2/3/4, Mistral, Gemma, Phi, DeepSeek,
# gpt-oss), as `decode(..., skip_special_tokens=False)` writes it
DEFAULT_STRIP_SUFFIXES: tuple[str, ...] = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eot|>",
    "<|end|>",
    "<|return|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
    "<｜end▁of▁sentence｜>",
)

RETRY_STATUS = (502, 503, 504)  # a proxy or a server still starting: worth another try


def strip_special_suffixes(text: str, suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES) -> str:
    """Remove trailing special-token text, repeatedly, with the whitespace that follows each one.

    Whitespace is removed only where a suffix follows it away from the end: `"Hi<|im_end|>\\n"` -> `"Hi"`,
    `"Hi <|im_end|>"` -> `"Hi "` (the space belongs to the response), `"Hi \\n"` -> `"Hi \\n"` (no suffix: unchanged).

    Args:
        text (`str`): the decoded response.
        suffixes (`Sequence[str]`, *optional*, defaults to `DEFAULT_STRIP_SUFFIXES`): the texts to remove.

    Returns:
        `str`: the response without its trailing special tokens.

    Example:

    ```python
    >>> strip_special_suffixes("Paris.<|im_end|>\\n<|endoftext|>")
    'Paris.'
    ```
    """
    suffixes = [s for s in suffixes if s]
    while True:
        stripped = text.rstrip()
        for suffix in suffixes:
            if stripped.endswith(suffix):
                text = stripped[: -len(suffix)]
                break
        else:
            return text


def split_query(
    query: str, prompt: str, *, index: int = 0, strip_suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES
) -> str:
    """The response inside an OpenRLHF `query`: `query` minus its `prompt` prefix, minus trailing special tokens.

    Args:
        query (`str`): templated prompt + response, decoded with special tokens.
        prompt (`str`): the templated prompt.
        index (`int`, *optional*, defaults to `0`): the pair's index, for the error message.
        strip_suffixes (`Sequence[str]`, *optional*): see [`strip_special_suffixes`].

    Returns:
        `str`: the response text.

    Raises:
        `ValueError`: `query` does not start with `prompt` (e.g. OpenRLHF cut an over-long prompt from the left:
        raise `--max_len` or shorten prompts).

    Example:

    ```python
    >>> split_query("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>",
    ...             "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n")
    'Hello!'
    ```
    """
    if not query.startswith(prompt):
        raise ValueError(
            f"query[{index}] does not start with prompts[{index}] (query starts {query[:60]!r}, prompt starts "
            f"{prompt[:60]!r}); OpenRLHF sends query = prompt + response, so the prompt was probably truncated: "
            "raise --max_len or shorten the prompts"
        )
    return strip_special_suffixes(query[len(prompt) :], strip_suffixes)


def openrlhf_answer(scores: Sequence[float | None], *, missing_reward: float = DEFAULT_MISSING_REWARD) -> dict:
    """The OpenRLHF reward answer for scores from `CrossModelEntropyReward.score`.

    Returns:
        `dict`: `{"rewards": [...], "scores": [...], "extra_logs": {"cme": [...], "cme_scored": [...]}}`, every list
        of floats (`missing_reward` where a score is `None`; `scores` equals `rewards`).
    """
    rewards = [missing_reward if s is None else float(s) for s in scores]
    scored = [0.0 if s is None else 1.0 for s in scores]
    return {"rewards": rewards, "scores": list(rewards), "extra_logs": {"cme": list(rewards), "cme_scored": scored}}


class RewardServerError(RuntimeError):
    """The reward server refused a request (4xx or 500) or could not be reached after every retry."""


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _server_error(url: str, status: int, body: bytes) -> RewardServerError:
    try:
        message = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        message = body[:200].decode("utf-8", "replace")
    return RewardServerError(f"{url} answered HTTP {status}: {message}")


def _api_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else os.environ.get("CME_API_KEY") or None


def post_json(
    url: str,
    payload: dict,
    *,
    api_key: str | None = None,
    timeout: float = 180.0,
    retries: int = 5,
    backoff: float = 1.0,
) -> dict:
    """POST `payload` as JSON with `urllib`; retry connection errors and HTTP 502/503/504.

    Args:
        url (`str`): the endpoint, e.g. `http://127.0.0.1:8000/score`.
        payload (`dict`): the JSON body.
        api_key (`str`, *optional*): sent as `Authorization: Bearer ...`; `None` reads env `CME_API_KEY`.
        timeout (`float`, *optional*, defaults to `180.0`): seconds per try.
        retries (`int`, *optional*, defaults to `5`): tries in all.
        backoff (`float`, *optional*, defaults to `1.0`): seconds before the second try, doubled after each.

    Returns:
        `dict`: the decoded JSON answer.

    Raises:
        `RewardServerError`: a 4xx/500 answer (with the server's message), or no answer after `retries` tries.
    """
    data = json.dumps(payload).encode("utf-8")
    headers = _headers(_api_key(api_key))
    last: Exception | None = None
    for attempt in range(max(1, retries)):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            if err.code not in RETRY_STATUS:
                raise _server_error(url, err.code, err.read()) from None
            last = err
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            last = err
        logger.info("POST %s failed (try %d of %d): %s", url, attempt + 1, retries, last)
    raise RewardServerError(f"no answer from {url} after {retries} tries: {last}")


async def async_post_json(url: str, payload: dict, **options: Any) -> dict:
    """[`post_json`] (same options) in a worker thread, so an event loop (verl's reward loop) keeps running."""
    return await asyncio.to_thread(post_json, url, payload, **options)


def endpoint_url(base: str, path: str) -> str:
    """`base` (e.g. `http://127.0.0.1:8000`, from env `CME_REWARD_URL`) joined with `path` unless it ends with it."""
    base = base.rstrip("/")
    return base if base.endswith(path) else base + path


_env_reward: Any = None
_env_reward_lock = threading.Lock()


def env_reward() -> Any:
    """The in-process reward of the adapters, built once from env `CME_VERIFIER` (a path, hub id or alias such as
    `smollm2`) and `CME_DEVICE` (optional). Thread-safe: concurrent first calls load the verifier once."""
    global _env_reward
    with _env_reward_lock:
        if _env_reward is None:
            source = os.environ.get("CME_VERIFIER")
            if not source:
                raise RuntimeError(
                    "set CME_REWARD_URL to the URL of `cme-reward serve`, or CME_VERIFIER to a verifier (path, hub id "
                    "or alias) to score in this process"
                )
            from cme_reward import CrossModelEntropyReward

            kwargs: dict[str, Any] = {}
            try:
                from cme_reward.tools.assets import resolve_verifier
            except ImportError:  # aliases are optional
                resolve_verifier = None
            if resolve_verifier is not None:
                source, kwargs = resolve_verifier(source)
            if os.environ.get("CME_DEVICE"):
                kwargs["device"] = os.environ["CME_DEVICE"]
            logger.info("Loading the CME verifier %s in process", source)
            _env_reward = CrossModelEntropyReward(source, **kwargs)
        return _env_reward


def env_missing_reward() -> float:
    """`missing_reward` of the in-process adapters: env `CME_MISSING_REWARD`, default `DEFAULT_MISSING_REWARD`."""
    text = os.environ.get("CME_MISSING_REWARD")
    if not text:
        return DEFAULT_MISSING_REWARD
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"CME_MISSING_REWARD must be a float, got {text!r}") from None
    if value != value:
        raise ValueError("CME_MISSING_REWARD must not be NaN")
    return value
