"""From an encoded pair and its per-token verifier values to what the reward returns: the score (whole response or a
span of it), and dense values on the policy's tokens. Pure functions over tensors and token offsets."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..alignment.token_spans import token_byte_spans
from ..alignment.transfer import dense_values
from ..config import CMEConfig
from .formatting import EncodedPair
from .spans import char_to_byte_span, find_span, tokens_in_span

__all__ = ["pair_score", "policy_values", "reduce_values", "verifier_byte_spans"]


def reduce_values(values: torch.Tensor, reduction: str, *, quantile: float = 0.1) -> float:
    """(T,) float32 per-token values, T >= 1 -> one float, higher = better.

    `"mean"` (CME for log-probs), `"sum"`, `"min"`, `"perplexity"` (`-exp(-mean)`: minus the perplexity for
    log-probs, the authors' "perplexity" metric) or `"quantile"` (the `quantile`-th quantile, linear interpolation).

    Example:

    ```python
    >>> reduce_values(torch.tensor([-1.0, -3.0]), "perplexity")
    -7.38905...
    ```
    """
    if reduction == "mean":
        return values.mean().item()
    if reduction == "sum":
        return values.sum().item()
    if reduction == "min":
        return values.min().item()
    if reduction == "perplexity":
        return -math.exp(-values.double().mean().item())
    if reduction == "quantile":
        return torch.quantile(values.double(), quantile).item()
    raise ValueError(f"unknown reduction {reduction!r}")


def verifier_byte_spans(tokenizer: Any, pair: EncodedPair) -> list[tuple[int, int]]:
    """UTF-8 byte span, inside the response text, of each scored verifier token; end-of-turn tokens sit at the end
    with zero width."""
    spans = token_byte_spans(tokenizer, list(pair.text_ids), pair.text)
    n_text = pair.text_tokens
    end = len(pair.text.encode("utf-8"))
    return spans[pair.offset : pair.offset + n_text] + [(end, end)] * (len(pair.response_ids) - n_text)


def pair_score(values: torch.Tensor, pair: EncodedPair, config: CMEConfig, tokenizer: Any) -> float | None:
    """The configured reduction of a pair's (T,) values, over the span when `score_span` is set (blended with the
    whole response by `span_weight`); `empty_value` with no token, `missing_span_value` with no span."""
    if not values.numel():
        return config.empty_value
    reduce = lambda v: reduce_values(v, config.reduction, quantile=config.quantile)  # noqa: E731
    if config.score_span is None:
        return reduce(values)
    span = find_span(pair.text, config.score_span)
    if span is None:
        return config.missing_span_value
    inside = tokens_in_span(verifier_byte_spans(tokenizer, pair), char_to_byte_span(pair.text, span))
    mask = torch.tensor(inside, dtype=torch.bool)
    if not bool(mask.any()):  # the span lies in a part cut off at max_length
        return config.missing_span_value
    span_score = reduce(values[mask])
    if config.span_weight == 1.0:
        return span_score
    return config.span_weight * span_score + (1 - config.span_weight) * reduce(values)


def policy_values(
    values: torch.Tensor,
    pair: EncodedPair,
    policy_ids: list[int],
    policy_tokenizer: Any,
    tokenizer: Any,
    alignment: str,
) -> list[float]:
    """One value per policy token of `policy_ids` from the verifier's per-token `values`, aligned by byte offsets
    into the response text (`alignment`: "bytes" conserves the sum, "overlap_mean" is the authors' rule)."""
    policy_spans = token_byte_spans(policy_tokenizer, list(policy_ids), pair.text)
    return dense_values(verifier_byte_spans(tokenizer, pair), values.tolist(), policy_spans, alignment=alignment)
