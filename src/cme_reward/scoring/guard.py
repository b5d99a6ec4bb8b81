"""The repetition guard (`CMEConfig(repetition_guard=True)`): tokens that repeat or copy earn no credit.

A likelihood reward pays for predictability, and a verifier finds repeats and copies easy to predict: the fluent
answer written three times, the prompt echoed back, or an end-of-turn marker written into the answer all beat a fluent
answer under CME (`docs/reward-hacking.md`). The guard flags a response token when

- it completes a 6-gram of verifier token ids that already occurred earlier in the response (a repeat), or
- it completes an n-gram that occurs in the prompt's own text tokens (a plain prompt, or its messages' contents),
  `n = min(12, max(3, prompt tokens // 3))` (a copy:
  short enough to catch an echo of a short prompt, long enough that a long prompt's phrases can be quoted), or
- it is a special token of the verifier written inside the text (`<|im_end|>`, `<|endoftext|>`...: a fake end of
  turn).

A flagged token's value is replaced by a floor, in both the scalar score and the dense values:

- `metric="logprob"`: `-ln V` (V = the verifier's vocabulary): the log-prob of a verifier that knows nothing;
- `metric="entropy"`: `min(v_0, -2)`, `v_0` the negated entropy at the response's first position (the same for
  every response to a prompt): a flagged token is worth no more than the verifier's uncertainty before the answer
  started. The harsher `-ln V` would push fluent answers with a few legitimate repeats below a one-token answer.

Measured on SmolLM2 (16 chat prompts, 16 degenerate strategies, `docs/reward-hacking.md`): with the guard the fluent
answer outranks every strategy under `reduction="mean"` and `"perplexity"`, for both metrics; 6.1 % of the fluent
answers' tokens are flagged (4.3 % repeats, 1.8 % prompt copies; prose answers 0 %). `"sum"`, `"min"` and
`"quantile"` cannot be guarded this way (a sum favours the shortest answer; a minimum ties a copy with its original).
The end-of-turn token that `score_eos` appends is never flagged. Off by default: default scores stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["RESPONSE_NGRAM", "flagged_tokens", "guard_floor", "prompt_ngram"]

RESPONSE_NGRAM = 6  # a repeat: the n-gram ending at a token already occurred earlier in the response
ENTROPY_CAP = -2.0  # the entropy floor is at most this (nats)


def prompt_ngram(prompt_tokens: int) -> int:
    """The n-gram length of a copy from a prompt of `prompt_tokens` tokens."""
    return min(12, max(3, prompt_tokens // 3))


def _ngrams(ids: Sequence[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


def flagged_tokens(
    response: Sequence[int], prompt: Sequence[int], *, special_ids: set[int] | frozenset[int]
) -> list[bool]:
    """Which of `response`'s tokens repeat the response, copy the prompt, or are special (see the module docstring).

    Args:
        response (`Sequence[int]`): the response's text tokens (verifier ids).
        prompt (`Sequence[int]`): the prompt's own text tokens (no chat template, no special tokens).
        special_ids (`set[int]`): the verifier tokenizer's special token ids.

    Returns:
        `list[bool]`: one flag per response token.

    Example:

    ```python
    >>> flagged_tokens([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6], [], special_ids=set())
    [False, False, False, False, False, False, False, False, False, False, False, True]
    ```
    """
    n, n_p = RESPONSE_NGRAM, prompt_ngram(len(prompt))
    copies = _ngrams(prompt, n_p)
    seen: set[tuple[int, ...]] = set()
    flags = []
    for t, token in enumerate(response):
        repeat = t >= n - 1 and tuple(response[t - n + 1 : t + 1]) in seen
        copy = t >= n_p - 1 and tuple(response[t - n_p + 1 : t + 1]) in copies
        flags.append(repeat or copy or token in special_ids)
        if t >= n - 1:
            seen.add(tuple(response[t - n + 1 : t + 1]))
    return flags


def guard_floor(values: torch.Tensor, metric: str, vocab_size: int) -> float:
    """The value of a flagged token: `-ln V` for log-probs, `min(values[0], -2)` for negated entropies."""
    if metric == "entropy":
        return min(float(values[0]), ENTROPY_CAP)
    return -math.log(vocab_size)
