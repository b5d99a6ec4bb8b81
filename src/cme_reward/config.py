"""Options of the reward, in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

REDUCTIONS = ("mean", "sum", "min")


@dataclass(frozen=True)
class CMEConfig:
    """Scoring options of [`CrossModelEntropyReward`]; loading options (device, dtype, revision...) live elsewhere.

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
            with a warning where it does not hold). `0` (default) turns it off: on the 2-core CPU it measured no
            clear win (0.98-1.10x on 48 pairs of 40-200 tokens); it is meant for GPUs with FlashAttention-2 or flex
            attention, where a packed row costs no padding and no dense mask.
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

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens_per_batch, int) or self.max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be a positive int, got {self.max_tokens_per_batch!r}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 2):
            raise ValueError(f"max_length must be an int >= 2 or None, got {self.max_length!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.empty_value is not None:
            import math

            if not isinstance(self.empty_value, (int, float)) or not math.isfinite(self.empty_value):
                raise ValueError(f"empty_value must be a finite float or None, got {self.empty_value!r}")
        if self.head_chunk_tokens is not None and (
            not isinstance(self.head_chunk_tokens, int) or self.head_chunk_tokens < 1
        ):
            raise ValueError(f"head_chunk_tokens must be a positive int or None, got {self.head_chunk_tokens!r}")
        if self.max_padding is not None and (not isinstance(self.max_padding, (int, float)) or self.max_padding < 0):
            raise ValueError(f"max_padding must be a float >= 0 or None, got {self.max_padding!r}")
        packing = isinstance(self.pack_tokens, int) and not isinstance(self.pack_tokens, bool)
        if not packing or self.pack_tokens < 0 or self.pack_tokens == 1:
            raise ValueError(f"pack_tokens must be 0 (off) or an int >= 2, got {self.pack_tokens!r}")
