"""Scoring options in one frozen dataclass: every option of the reward, the engine and the CLI, each default once."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .alignment.transfer import ALIGNMENTS
from .scoring.paper import PaperRules

if TYPE_CHECKING:
    from .scoring.spans import SpanRule

__all__ = ["METRICS", "PAPER_METRICS", "REDUCTIONS", "CMEConfig"]

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
    "paper": (_optional(lambda v: isinstance(v, PaperRules)), "None or a PaperRules (use CMEConfig.from_paper)"),
    "repetition_guard": (lambda v: isinstance(v, bool), "a bool"),
}
# the authors' reward_metric -> (metric, reduction)
PAPER_METRICS = {
    "entropy": ("logprob", "mean"),  # misnamed by the authors: the mean cross-entropy of the written tokens
    "perplexity": ("logprob", "perplexity"),
    "predictive_entropy": ("entropy", "mean"),
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
            each policy token the mean of the verifier tokens it overlaps, `"chars"` does so on the tokenizers'
            own character offsets with the authors' nearest-token rule (exact replication; fast tokenizers only).
            A policy token no value reaches (its EOS, unless `score_eos`) gets `None`.
        repetition_guard (`bool`, defaults to `False`):
            Tokens that repeat a 6-gram already written in the response, copy an n-gram of the prompt, or write a
            special token (a fake end of turn) into the text earn no credit: their value becomes a floor (`-ln V` for
            `"logprob"`, `min(first value, -2)` for `"entropy"`), in scores and dense values alike. Closes repetition,
            echo and injection hacks under `"mean"` and `"perplexity"` (`cme_reward.scoring.guard`,
            `docs/reward-hacking.md`); flags about 6 % of fluent tokens. Off by default: default scores are unchanged.
        paper (`PaperRules`, *optional*):
            The authors' own scoring rules (no-box penalty, answer-only, blend), set by [`from_paper`]; they replace
            `score_span`, `span_weight` and `missing_span_value`.

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
    repetition_guard: bool = False
    paper: PaperRules | None = None

    def __post_init__(self) -> None:
        for name in _CHECKS:
            allowed = self.problem(name, getattr(self, name))
            if allowed:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        if self.paper is not None and (self.score_span, self.span_weight, self.missing_span_value) != (
            None,
            1.0,
            None,
        ):
            raise ValueError("`paper` rules replace score_span, span_weight and missing_span_value: leave them unset")
        if self.alignment == "chars" and self.score_eos:
            raise ValueError(
                "alignment='chars' (the authors' rule) drops zero-width tokens: use score_eos with 'bytes'"
            )

    @classmethod
    def from_paper(
        cls,
        reward_metric: str = "entropy",
        token_level: bool = False,
        answer_only: bool = False,
        answer_weight: float | None = None,
        no_box_penalty: float = 5.0,
        **options: Any,
    ) -> CMEConfig:
        """The paper authors' reward, with their own argument names (`CMERewardModel.score` of mattgorb/cme-grpo):
        under the returned config `score` equals theirs, and `score_dense` their `token_level=True` values on the
        policy's tokens (see `cme_reward.scoring.paper` for the rules and the two differences that remain).

        Args:
            reward_metric (`str`, defaults to `"entropy"`): `"entropy"` (their name for the mean cross-entropy of the
                written tokens), `"perplexity"` (its exp) or `"predictive_entropy"` (the verifier's own entropy).
            token_level (`bool`, defaults to `False`): their dense reward; `False` marks the reward scalar for
                `DenseGRPOTrainer`.
            answer_only (`bool`, defaults to `False`): score only the tokens inside the last `\\boxed{...}`.
            answer_weight (`float`, *optional*): blend of the box and the whole response (sequence level only).
            no_box_penalty (`float`, defaults to `5.0`): added to the loss of a response without a box; their
                open-ended (UltraFeedback) runs pass `0.0`.
            **options: other [`CMEConfig`] fields (engine knobs...); `max_length` defaults to their 2048.

        Example:

        ```python
        >>> config = CMEConfig.from_paper(reward_metric="perplexity", no_box_penalty=0.0)
        >>> config.metric, config.reduction, config.empty_value, config.alignment
        ('logprob', 'perplexity', -50.0, 'chars')
        ```
        """
        if reward_metric not in PAPER_METRICS:
            raise ValueError(f"`reward_metric` must be one of {tuple(PAPER_METRICS)}, got {reward_metric!r}")
        metric, reduction = PAPER_METRICS[reward_metric]
        rules = PaperRules(answer_only=answer_only, answer_weight=answer_weight, no_box_penalty=no_box_penalty,
                           token_level=token_level)  # fmt: skip
        defaults = {"metric": metric, "reduction": reduction, "empty_value": -50.0, "alignment": "chars",
                    "max_length": 2048}  # the authors' CMERewardModel default  # fmt: skip
        return cls(**{**defaults, **options, "paper": rules})

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
