"""From an encoded pair and its per-token verifier values to what the reward returns: the score (whole response or a
span of it), and dense values on the policy's tokens. Pure functions over tensors and token offsets."""

from __future__ import annotations

import logging
import math
from bisect import bisect_left, bisect_right
from typing import Any

import torch

from ..alignment.token_spans import token_byte_spans
from ..alignment.transfer import dense_values
from ..config import CMEConfig
from .formatting import EncodedPair
from .paper import char_offsets, paper_dense, paper_score, paper_transform
from .spans import char_to_byte_span, find_span, tokens_in_span

__all__ = ["pair_score", "policy_char_spans", "policy_values", "reduce_values", "verifier_byte_spans"]

logger = logging.getLogger(__name__)
_WARNED: set[str] = set()


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
    whole response by `span_weight`); `empty_value` with no token (empty or blank), `missing_span_value` with no
    span; the authors' rules under `config.paper`."""
    if not values.numel():
        return config.empty_value
    if config.paper is not None:
        return paper_score(values, pair.text, list(pair.text_ids), pair.offset, config.paper, config.reduction,
                           tokenizer)  # fmt: skip
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
    config: CMEConfig,
) -> list[float | None]:
    """One value per policy token of `policy_ids` from the verifier's per-token `values` (`None`: no value reaches
    it, e.g. the policy's EOS), aligned by `config.alignment`; an empty or blank response gives `empty_value` to
    every policy token (`None` rows stay `None` upstream)."""
    if not values.numel():
        return [config.empty_value] * len(policy_ids)
    if config.paper is not None:
        values = paper_dense(values, pair.text, list(pair.text_ids), config.paper, config.reduction, tokenizer)
    if config.alignment == "chars":
        n = pair.text_tokens
        first = 0 if config.paper is not None else pair.offset  # the authors read the first offsets, even after an
        source = char_offsets(tokenizer, pair.text, list(pair.text_ids))[first : first + n]  # unscored first token
        out = dense_values(source, values[:n].tolist(), policy_char_spans(policy_tokenizer, pair.text, policy_ids),
                           alignment="chars")  # fmt: skip
    else:
        policy_spans = token_byte_spans(policy_tokenizer, list(policy_ids), pair.text)
        out = dense_values(verifier_byte_spans(tokenizer, pair), values.tolist(), policy_spans,
                           alignment=config.alignment)  # fmt: skip
    if config.paper is not None:
        out = [paper_transform(v, config.reduction) for v in out]
    return out


def policy_char_spans(policy_tokenizer: Any, text: str, policy_ids: list[int]) -> list[tuple[int, int] | None]:
    """Character span of each policy token, as the authors read them: the policy tokenizer's own offsets of its
    tokenization of `text`, position by position, when `policy_ids` is that tokenization (followed by special tokens
    only, such as TRL's EOS, which get `None`); otherwise (a sampled, non-canonical tokenization) the tokens' byte
    spans widened to whole characters, so each token still meets the text it spells (a warning, once)."""
    special = set(getattr(policy_tokenizer, "all_special_ids", ()) or ())
    enc = policy_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, n = list(enc["input_ids"]), len(enc["input_ids"])
    if list(policy_ids[:n]) == ids and all(t in special for t in policy_ids[n:]):
        return [tuple(o) for o in enc["offset_mapping"]] + [None] * (len(policy_ids) - n)
    _warn_once(
        "alignment='chars': completion_ids are not the policy tokenizer's own tokenization of the text; their byte "
        "spans, widened to whole characters, stand in for its offsets (the authors' lookup would shift positions)"
    )
    starts = [0]  # byte offset of each character
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8", "surrogatepass")))
    spans: list[tuple[int, int] | None] = []
    for tid, (s, e) in zip(policy_ids, token_byte_spans(policy_tokenizer, list(policy_ids), text)):
        if e == s:
            spans.append(None if tid in special else (bisect_right(starts, s) - 1,) * 2)
        else:
            spans.append((bisect_right(starts, s) - 1, bisect_left(starts, e)))
    return spans


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)
