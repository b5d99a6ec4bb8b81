"""Scoring options in one frozen dataclass: every option of the reward, the engine and the CLI, each default once."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["REDUCTIONS", "CMEConfig"]

REDUCTIONS = ("mean", "sum", "min")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    "head_vocab_block": (_optional(lambda v: _is_int(v) and v >= 0), "an int >= 0 (0 = off) or None"),
}


@dataclass(frozen=True)
class CMEConfig:
    """How [`CrossModelEntropyReward`] scores: the reduction and the engine's batching knobs. How the verifier is
    loaded (source, device, dtype, revision...) lives in [`VerifierSpec`].

    Args:
        max_tokens_per_batch (`int`, defaults to `8192`):
            Budget of one forward pass, counted as padded tokens (rows x longest row). Pairs longer than the budget
            still run, alone. Lower it if the verifier runs out of memory; on CUDA an out-of-memory error also
            splits the batch and lowers the budget automatically.
        max_length (`int`, *optional*):
            Longest sequence (context + response tokens) fed to the verifier; `None` uses the verifier's context size
            (`max_position_embeddings`). Longer pairs keep the response and lose the start of the context.
        reduction (`str`, defaults to `"mean"`):
            How token log-probs become one score: `"mean"` (Cross-Model Entropy), `"sum"` or `"min"`.
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

    def __post_init__(self) -> None:
        for name in _CHECKS:
            allowed = self.problem(name, getattr(self, name))
            if allowed:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

    @staticmethod
    def problem(name: str, value: Any) -> str | None:
        """`None` when `value` is allowed for option `name`, else what is allowed (e.g. `"a positive int"`)."""
        ok, allowed = _CHECKS[name]
        return None if ok(value) else allowed

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def with_options(self, **options: Any) -> CMEConfig:
        """A copy with `options` replaced (validated again)."""
        return replace(self, **options) if options else self
