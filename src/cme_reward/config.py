"""Scoring options in one frozen dataclass: every option of the reward, the engine and the CLI, each default once."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .alignment.transfer import ALIGNMENTS

if TYPE_CHECKING:
    from .scoring.spans import SpanRule

__all__ = ["METRICS", "REDUCTIONS", "CMEConfig"]

METRICS = ("logprob", "entropy")
REDUCTIONS = ("mean", "sum", "min", "perplexity", "quantile")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _span_problem(rule: Any) -> str | None:
    from .scoring.spans import check_span_rule

    try:
        check_span_rule(rule)
    except (TypeError, ValueError) as err:
        return str(err)
    return None


def _optional(check):
    return lambda value: value is None or check(value)


# option -> (check, what is allowed): one validation table for every entry point (Python API, CLI)
_CHECKS = {
    "max_tokens_per_batch": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "max_length": (_optional(lambda v: _is_int(v) and v >= 2), "an int >= 2 or None"),
    "reduction": (lambda v: v in REDUCTIONS, f"one of {REDUCTIONS}"),
    "empty_value": (_optional(_is_real), "a finite float or None"),
    "prefix_sharing": (lambda v: isinstance(v, bool), "a bool"),
    "deduplicate": (lambda v: isinstance(v, bool), "a bool"),
    "head_chunk_tokens": (_optional(lambda v: _is_int(v) and v >= 1), "a positive int or None"),
    "max_padding": (_optional(lambda v: _is_real(v) and v >= 0 or v == math.inf), "a float >= 0 or None"),
    "pack_tokens": (lambda v: _is_int(v) and (v == 0 or v >= 2), "0 (off) or an int >= 2"),
    "min_shared_tokens": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "metric": (lambda v: v in METRICS, f"one of {METRICS}"),
    "quantile": (lambda v: _is_real(v) and 0 <= v <= 1, "a float in [0, 1]"),
    "score_span": (_optional(lambda v: _span_problem(v) is None), "None, 'boxed', a regular expression or a callable"),
    "span_weight": (lambda v: _is_real(v) and 0 <= v <= 1, "a float in [0, 1]"),
    "missing_span_value": (_optional(_is_real), "a finite float or None"),
    "score_eos": (lambda v: isinstance(v, bool), "a bool"),
    "verifier_prompt_column": (_optional(lambda v: isinstance(v, str) and bool(v)), "a column name or None"),
    "alignment": (lambda v: v in ALIGNMENTS, f"one of {ALIGNMENTS}"),
    "head_vocab_block": (_optional(lambda v: _is_int(v) and v >= 0), "an int >= 0 (0 = off) or None"),
}


@dataclass(frozen=True)
class CMEConfig:
    """How [`CrossModelEntropyReward`] scores: the metric, the reduction, the span, and the engine's batching knobs.
    How the verifier is loaded (source, device, dtype, revision...) lives in [`VerifierSpec`].

    Args:
        max_tokens_per_batch (`int`, defaults to `8192`):
            Budget of one forward pass, counted as padded tokens (rows x longest row). Pairs longer than the budget
            still run, alone. Lower it if the verifier runs out of memory; on CUDA an out-of-memory error also
            splits the batch and lowers the budget automatically.
        max_length (`int`, *optional*):
            Longest sequence (context + response tokens) fed to the verifier; `None` uses the verifier's context size
            (`max_position_embeddings`). Longer pairs keep the response and lose the start of the context.
        reduction (`str`, defaults to `"mean"`):
            How per-token values become one score: `"mean"` (Cross-Model Entropy), `"sum"`, `"min"`, `"perplexity"`
            (`-exp(-mean)`, the authors' "perplexity" metric, still higher = better) or `"quantile"` (the `quantile`-th
            quantile of the values, linear interpolation).
        empty_value (`float`, *optional*):
            Score of a response with no token to score (empty string). `None` (default) tells TRL to ignore the
            sample (it becomes NaN and `nansum` skips it); a float such as `-10.0` is a floor.
        prefix_sharing (`bool`, defaults to `True`):
            Encode a context shared by several responses once (GRPO groups) and reuse its KV cache.
        deduplicate (`bool`, defaults to `True`):
            Score identical (context, response) pairs once per call.
        head_chunk_tokens (`int`, *optional*):
            Response positions per LM-head chunk; `None` sizes chunks to about 256 MiB of float32 logits.
        max_padding (`float`, *optional*):
            A batch grows only while its padding stays under this fraction of its real tokens. `None`: 0 on CPU
            (only same-length rows share a pass: padding is pure waste there and batching gains little), unbounded
            on GPU (the token budget alone decides).
        pack_tokens (`int`, defaults to `0`):
            Pack short pairs end to end into padding-free rows of at most this many tokens (position ids restart per
            pair and the model's packed-sequence masking keeps them apart; checked on a probe at load, and turned off
            with a warning where it does not hold). `0` (default) turns it off: on a 2-core CPU it measured no clear
            win (0.98-1.10x on 48 pairs of 40-200 tokens); it is meant for GPUs with FlashAttention-2 or flex
            attention, where a packed row costs no padding and no dense mask.
        min_shared_tokens (`int`, defaults to `32`):
            Share a context's KV cache only when that saves at least this many forwarded tokens ((responses - 1) x
            context length): encoding it apart costs one more forward pass, which on a 2-core CPU costs about as much
            as 30 tokens of a 135M model.
        head_vocab_block (`int`, *optional*):
            Vocabulary block of a bias-free, uncapped LM head: each (512 rows x block) logits block is reduced in
            place while it sits in cache. `0` turns it off; `None`: 1024 on CPU, off elsewhere (on GPU the chunked
            head is already bandwidth-efficient).
        metric (`str`, defaults to `"logprob"`):
            What the verifier says about each response token: `"logprob"`, its log-probability (CME), or
            `"entropy"`, the negated predictive entropy `sum_v p_v log p_v` at that position (a confident verifier
            scores higher; it does not depend on which token was written). Both are higher = better.
        quantile (`float`, defaults to `0.1`):
            The quantile of `reduction="quantile"`, in [0, 1] (0 = min).
        score_span (`str` or `callable`, *optional*):
            Score only part of the response: `"boxed"` (the content of the last balanced `\\boxed{...}`), a regular
            expression (its last match; group 1 if it has one) or a callable `text -> (start, end) | None` of
            character offsets. Only verifier tokens whose characters overlap the span are reduced. `None`: the whole
            response.
        span_weight (`float`, defaults to `1.0`):
            Score = `span_weight * span score + (1 - span_weight) * whole-response score` (1.0 = span only).
        missing_span_value (`float`, *optional*):
            Score when `score_span` finds no span (`None`: TRL ignores the sample); e.g. `-5.0` punishes a missing
            `\\boxed{}` answer as the authors' `no_box_penalty` does.
        score_eos (`bool`, defaults to `False`):
            Also score the verifier's end-of-turn token after a response that ended (not one clipped at the length
            limit), so stopping at a natural point is rewarded and stopping early is not free. See
            `CrossModelEntropyReward.__call__` for how "ended" is known.
        verifier_prompt_column (`str`, *optional*):
            In the TRL call, take the verifier's prompt from this dataset column (plain text or messages) instead of
            `prompts`, so a system prompt or format instruction meant for the policy is not scored against.
        alignment (`str`, defaults to `"bytes"`):
            How `score_dense` maps verifier-token values onto policy tokens: `"bytes"` spreads each verifier token's
            value over its UTF-8 bytes and sums them per policy token (the sum is conserved), `"overlap_mean"` gives
            each policy token the mean of the verifier tokens it overlaps (the authors' rule, for replication).

    Example:

    ```python
    >>> from cme_reward import CMEConfig, CrossModelEntropyReward
    >>> config = CMEConfig(max_tokens_per_batch=4096, reduction="sum")
    >>> reward = CrossModelEntropyReward("HuggingFaceTB/SmolLM2-135M-Instruct", config=config, reduction="min")
    >>> reward.config.reduction, reward.config.max_tokens_per_batch
    ('min', 4096)
    ```
    """

    max_tokens_per_batch: int = 8192
    max_length: int | None = None
    reduction: str = "mean"
    empty_value: float | None = None
    prefix_sharing: bool = True
    deduplicate: bool = True
    head_chunk_tokens: int | None = None
    max_padding: float | None = None
    pack_tokens: int = 0
    min_shared_tokens: int = 32
    head_vocab_block: int | None = None
    metric: str = "logprob"
    quantile: float = 0.1
    score_span: SpanRule = None
    span_weight: float = 1.0
    missing_span_value: float | None = None
    score_eos: bool = False
    verifier_prompt_column: str | None = None
    alignment: str = "bytes"

    def __post_init__(self) -> None:
        for name in _CHECKS:
            allowed = self.problem(name, getattr(self, name))
            if allowed:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

    @staticmethod
    def problem(name: str, value: Any) -> str | None:
        """`None` when `value` is allowed for option `name`, else what is allowed (e.g. `"a positive int"`)."""
        ok, allowed = _CHECKS[name]
        if ok(value):
            return None
        detail = _span_problem(value) if name == "score_span" else None
        return f"{allowed} ({detail})" if detail else allowed

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def with_options(self, **options: Any) -> CMEConfig:
        """A copy with `options` replaced (validated again)."""
        return replace(self, **options) if options else self
