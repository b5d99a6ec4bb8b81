"""Held-out proxies of response quality and collapse: diversity, repetition, length, reference likelihood, and a
bootstrap confidence interval for any of them.

Words are lower-cased runs of letters and digits, or single punctuation marks (`words`). Diversity and repetition are
pooled over all responses of an arm, so a few long responses weigh more than many short ones.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "bootstrap_ci",
    "distinct_n",
    "length_stats",
    "ngrams",
    "reference_loglik",
    "repeated_ngram_rate",
    "words",
]

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w+|[^\w\s]")


def _check_texts(texts: Any, name: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"`{name}` must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"`{name}[{i}]` must be a string, got {type(text).__name__}")
    return list(texts)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be an integer >= 1, got {n!r}")
    return n


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of `text`: `"Hi, you!"` -> `["hi", ",", "you", "!"]`."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The contiguous `n`-grams of `tokens`, in order (none when there are fewer than `n` tokens)."""
    _check_n(n)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n (Li et al., 2016): distinct `n`-grams over all `n`-grams, pooled over `texts`.

    Args:
        texts (`list[str]`): the responses of one arm.
        n (`int`): the n-gram order (1 or 2 in the report).

    Returns:
        `float` in (0, 1], or `None` when the texts hold no `n`-gram at all.

    Example:
        ```python
        >>> distinct_n(["a b a", "a c"], 1)  # {a, b, c} over 5 words
        0.6
        ```
    """
    grams = [g for text in _check_texts(texts) for g in ngrams(words(text), _check_n(n))]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_rate(texts: Sequence[str], n: int = 3) -> float | None:
    """Share of `n`-gram occurrences that repeat an earlier `n`-gram of the *same* response, pooled over `texts`.

    0 means no response repeats itself; a response stuck in a loop drives it towards 1 (the degeneration that
    likelihood rewards can cause).

    Args:
        texts (`list[str]`): the responses of one arm.
        n (`int`, *optional*, defaults to `3`): the n-gram order.

    Returns:
        `float` in [0, 1), or `None` when the texts hold no `n`-gram at all.

    Example:
        ```python
        >>> repeated_ngram_rate(["go go go go"], n=2)  # (go go) x3, the last two repeat
        0.6666666666666666
        ```
    """
    total = repeats = 0
    for text in _check_texts(texts):
        grams = ngrams(words(text), _check_n(n))
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else None


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    position = q * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def length_stats(lengths: Sequence[int], *, max_length: int | None = None) -> dict[str, float | None]:
    """Summary of response lengths (in generator tokens): the collapse check.

    Args:
        lengths (`list[int]`): one length per response.
        max_length (`int`, *optional*): the generation cap; adds `frac_at_max`, the share of responses cut there.

    Returns:
        `dict`: `mean`, `median`, `p10`, `p90`, `min`, `max`, `frac_empty` (and `frac_at_max`); all `None` for no
        lengths.

    Example:
        ```python
        >>> length_stats([0, 10, 20], max_length=20)["frac_at_max"]
        0.3333333333333333
        ```
    """
    if isinstance(lengths, str) or not isinstance(lengths, Sequence):
        raise TypeError(f"`lengths` must be a list of integers, got {type(lengths).__name__}")
    for i, length in enumerate(lengths):
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"`lengths[{i}]` must be an integer >= 0, got {length!r}")
    keys = ["mean", "median", "p10", "p90", "min", "max", "frac_empty"] + (["frac_at_max"] if max_length else [])
    if not lengths:
        return dict.fromkeys(keys)
    values = sorted(float(v) for v in lengths)
    stats: dict[str, float | None] = {
        "mean": sum(values) / len(values),
        "median": _quantile(values, 0.5),
        "p10": _quantile(values, 0.1),
        "p90": _quantile(values, 0.9),
        "min": values[0],
        "max": values[-1],
        "frac_empty": sum(v == 0 for v in values) / len(values),
    }
    if max_length:
        stats["frac_at_max"] = sum(v >= max_length for v in values) / len(values)
    return stats


def reference_loglik(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | list[dict[str, str]]],
    references: Sequence[str],
) -> dict[str, Any]:
    """The generator's own log-likelihood of reference answers nobody trained on (MT-Bench's GPT-4 answers).

    The library scores the references with the generator as the verifier (its chat template, teacher forcing,
    float32 log-softmax). The model object is frozen in place (`eval()`, no gradients): call this after training.

    Args:
        model (`PreTrainedModel`): the generator.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        prompts (`list[str]` or `list[list[dict]]`): the questions (chat messages are formatted by its template).
        references (`list[str]`): one reference answer per question.

    Returns:
        `dict`: `per_token` (total log-likelihood over total tokens, nats per token; `None` with no tokens),
        `tokens` (reference tokens scored) and `per_response` (each reference's mean, `None` if it has no tokens).

    Example:
        ```python
        >>> reference_loglik(model, tokenizer, ["What is 2 + 2?"], ["4"])["tokens"]
        1
        ```
    """
    from cme_reward import CrossModelEntropyReward

    if len(prompts) != len(references):
        raise ValueError(f"`prompts` has {len(prompts)} entries for {len(references)} `references`")
    _check_texts(references, "references")
    if not references:
        return {"per_token": None, "tokens": 0, "per_response": []}
    scorer = CrossModelEntropyReward(model, tokenizer=tokenizer, show_progress_bar=False)
    scores = scorer.score_tokens(list(prompts), list(references))
    total = sum(sum(s.logprobs) for s in scores)
    tokens = sum(len(s.logprobs) for s in scores)
    return {
        "per_token": total / tokens if tokens else None,
        "tokens": tokens,
        "per_response": [s.score for s in scores],
    }


def bootstrap_ci(
    values: Sequence[float],
    *,
    statistic: Callable[[Sequence[float]], float] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of `statistic` (the mean by default) over `values`.

    Args:
        values (`list[float]`): independent per-prompt observations (win outcomes 1 / 0.5 / 0, score differences).
        statistic (`callable`, *optional*): maps a resample to a number; defaults to the mean.
        n_boot (`int`, *optional*, defaults to `2000`): resamples.
        level (`float`, *optional*, defaults to `0.95`): coverage of the interval.
        seed (`int`, *optional*, defaults to `0`): the resampling seed (same seed, same interval).

    Returns:
        `(low, high)`, or `None` for no values.

    Example:
        ```python
        >>> bootstrap_ci([1.0, 1.0, 1.0])
        (1.0, 1.0)
        ```
    """
    import numpy as np

    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"`n_boot` must be an integer >= 1, got {n_boot!r}")
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}")
    data = np.asarray(list(values), dtype=np.float64)
    if data.ndim != 1 or not np.isfinite(data).all():
        raise ValueError("`values` must be a flat list of finite numbers")
    if data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    samples = data[rng.integers(0, data.size, size=(n_boot, data.size))]  # (n_boot, n)
    stats = samples.mean(axis=1) if statistic is None else np.array([statistic(s.tolist()) for s in samples])
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)
