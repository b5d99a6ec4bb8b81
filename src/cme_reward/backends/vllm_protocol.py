"""The vLLM backend's side of vLLM's completions protocol: what its requests carry and how the answers are read.

Requests: each unique `(context_ids, response_ids)` pair is sent once, as the token-id prompt `context + response`, to
`POST /v1/completions` with `max_tokens=1, prompt_logprobs=0, temperature=0`, several prompts per request under caps on
prompts and prompt tokens. Answers: the served model list, the tokenizer probe, and `prompt_logprobs`.

`POST /v1/completions` with `prompt_logprobs=0` answers, for every prompt token but the first, the log-prob of that
token given the tokens before it (`choices[i].prompt_logprobs`: entry 0 is null, the others map token-id strings to
`{"logprob", "rank", "decoded_token"}` and always hold the actual token), so a response span is read off exactly. vLLM
clamps `-inf` to `-9999.0`; it is mapped back to `-inf`. A malformed answer raises a clear error.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "CLAMPED",
    "PROBE_TEXT",
    "UniquePairs",
    "check_model_len",
    "check_tokenization",
    "choose_model",
    "completion_logprobs",
    "completion_payload",
    "probe_text",
    "split_requests",
    "unique_pairs",
]

CLAMPED = -9999.0  # vLLM's JSON stand-in for -inf (clamp_prompt_logprobs)
PROBE_TEXT = "The quick brown fox, 2 + 2 = 4.\n  def f(x):\n\treturn x ** 2  # Héllo wörld, 東京, Привет 🙂\n"


TokenPair = tuple[tuple[int, ...], tuple[int, ...]]  # (context ids, response ids), checked


@dataclass
class UniquePairs:
    """Input pairs, each distinct one once: input `i` is `pairs[slot[i]]`; unique pair `u` first stands at input
    `first[u]` (named in errors) and `count[u]` times in all."""

    pairs: list[TokenPair]
    slot: list[int]
    first: list[int]
    count: list[int]


def unique_pairs(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> UniquePairs:
    """Check the token ids of `(context_ids, response_ids)` pairs and keep each distinct pair once, in input order.

    Raises:
        `ValueError`: a pair that is not two lists of token ids (ints >= 0), or an empty context.
    """
    keys: list[TokenPair] = []
    for i, pair in enumerate(pairs):
        try:
            context, response = pair
            key = (tuple(map(_token_id, context)), tuple(map(_token_id, response)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"pairs[{i}] must be (context_ids, response_ids) lists of token ids: {err}") from None
        if not key[0]:
            raise ValueError(f"pairs[{i}] has an empty context; every pair needs at least one context token")
        keys.append(key)
    unique: dict[TokenPair, int] = {}
    slot = [unique.setdefault(k, len(unique)) for k in keys]
    count = [0] * len(unique)
    first = [-1] * len(unique)
    for i, s in enumerate(slot):
        count[s] += 1
        first[s] = i if first[s] < 0 else first[s]
    return UniquePairs(list(unique), slot, first, count)


def split_requests(
    pairs: Sequence[TokenPair], order: Sequence[int], *, pairs_per_request: int, tokens_per_request: int
) -> list[list[int]]:
    """The pairs `order` names, in order, into requests of at most `pairs_per_request` prompts and `tokens_per_request`
    prompt tokens (a longer pair goes alone)."""
    batches: list[list[int]] = []
    tokens = 0
    for u in order:
        n = len(pairs[u][0]) + len(pairs[u][1])
        if not batches or len(batches[-1]) >= pairs_per_request or tokens + n > tokens_per_request:
            batches.append([])
            tokens = 0
        batches[-1].append(u)
        tokens += n
    return batches


def check_model_len(
    pairs: Sequence[TokenPair], order: Sequence[int], indices: Sequence[int], max_model_len: int | None
) -> None:
    """Raise `ValueError` when a pair `order` names does not fit `max_model_len` (`None`: unknown, no check) with the
    one position kept for the generated token; `indices[u]` is pair `u`'s input index, named in the error."""
    if max_model_len is None:
        return
    for u in order:
        n = len(pairs[u][0]) + len(pairs[u][1])
        if n + 1 > max_model_len:
            raise ValueError(
                f"pairs[{indices[u]}] has {n} tokens; the vLLM server's max_model_len {max_model_len} "
                f"leaves room for {max_model_len - 1} (one position is kept for the generated token)"
            )


def completion_payload(model: str, prompts: list[list[int]]) -> dict[str, Any]:
    """The `POST /v1/completions` body that asks the log-prob of every prompt token."""
    return {"model": model, "prompt": prompts, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}


def choose_model(
    answer: Any, *, base_url: str, model: str | None, expected_model: str | None
) -> tuple[str, int | None]:
    """The served model to score with, from `GET /v1/models`, and its `max_model_len` (`None` when not given).

    Args:
        answer (`Any`): the decoded `GET /v1/models` answer.
        base_url (`str`): the server root, named in errors.
        model (`str`, *optional*): the model asked for; it must be served.
        expected_model (`str`, *optional*): the verifier's name; without `model`, the served model whose id (or
            `root`) equals it. Without either, the server must serve exactly one model.

    Raises:
        `ValueError`: the model asked for (or the verifier) is not served, or several are and none is chosen.
        `RuntimeError`: no model list, or an empty one.
    """
    cards = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(cards, list):
        raise RuntimeError(f"GET {base_url}/v1/models did not answer a model list: {str(answer)[:200]}")
    cards = [c for c in cards if isinstance(c, dict) and isinstance(c.get("id"), str)]
    ids = [c["id"] for c in cards]
    if not ids:
        raise RuntimeError(f"the vLLM server at {base_url} serves no model")
    if model is not None:
        if model not in ids:
            raise ValueError(f"`model` {model!r} is not served by {base_url}; served models: {ids}")
        chosen = model
    elif expected_model is not None:
        matches = [c["id"] for c in cards if expected_model in (c["id"], c.get("root"))]
        if not matches:
            raise ValueError(
                f"the vLLM server at {base_url} serves {ids}, not the verifier {expected_model!r}; pass "
                "`model=<served id>` to score with a served model anyway (its tokenizer is still checked "
                "against the verifier's)"
            )
        chosen = matches[0]
    elif len(ids) > 1:
        raise ValueError(f"the vLLM server at {base_url} serves several models {ids}; pick one with `model=`")
    else:
        chosen = ids[0]
    length = cards[ids.index(chosen)].get("max_model_len")
    return chosen, length if isinstance(length, int) and length > 0 else None


def probe_text(tokenizer: Any) -> str:
    """`PROBE_TEXT` plus up to 8 of the tokenizer's special tokens: a text that both tokenizers must split alike."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if isinstance(t, str)][:8]
    return PROBE_TEXT + "".join(specials)


def check_tokenization(answer: Any, local: list[int], *, model: str, base_url: str) -> None:
    """Raise unless the `POST /tokenize` answer holds the same token ids as the local tokenizer's `local`.

    Raises:
        `ValueError`: the ids differ (the first difference is named).
        `RuntimeError`: the answer has no token list.
    """
    remote = answer.get("tokens") if isinstance(answer, dict) else None
    if remote == local:
        return
    if not isinstance(remote, list):
        raise RuntimeError(f"POST {base_url}/tokenize did not answer a token list: {str(answer)[:200]}")
    k = next((i for i, (a, b) in enumerate(zip(remote, local)) if a != b), min(len(remote), len(local)))
    raise ValueError(
        f"the vLLM server's tokenizer (model {model!r} at {base_url}) differs from the local verifier "
        f"tokenizer: a probe text gives {len(remote)} tokens on the server and {len(local)} locally, first "
        f"difference at token {k} (server {remote[k : k + 4]}, local {local[k : k + 4]}). Serve the verifier "
        "model itself (or pass its tokenizer with `vllm serve --tokenizer`)."
    )


def completion_logprobs(answer: Any, pairs: Sequence[TokenPair], indices: Sequence[int]) -> list[torch.Tensor]:
    """Response log-probs, one float32 (len(response),) tensor per pair, from a `POST /v1/completions` answer.

    Args:
        answer (`Any`): the decoded answer to one request whose prompts were `context + response` of `pairs`.
        pairs (`Sequence[tuple[tuple[int, ...], tuple[int, ...]]]`): `(context_ids, response_ids)`, in prompt order.
        indices (`Sequence[int]`): the input index of each pair, named in errors.

    Raises:
        `RuntimeError`: a malformed answer (no `choices`, wrong indices, a missing token, wrong length).
    """
    choices = answer.get("choices") if isinstance(answer, dict) else None
    where = f"the vLLM answer for pairs {list(indices)}"
    if not isinstance(choices, list):
        raise RuntimeError(f"{where} has no `choices` list: {str(answer)[:200]}")
    by_index = {c.get("index"): c for c in choices if isinstance(c, dict)}
    if len(choices) != len(pairs) or set(by_index) != set(range(len(pairs))):
        raise RuntimeError(f"{where} has {len(choices)} choices with indices {list(by_index)[:20]} for "
                           f"{len(pairs)} prompts")  # fmt: skip
    return [
        _response_logprobs(by_index[b].get("prompt_logprobs"), pair, f"pair {index}")
        for b, (pair, index) in enumerate(zip(pairs, indices))
    ]


def _response_logprobs(entries: Any, pair: TokenPair, name: str) -> torch.Tensor:
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
