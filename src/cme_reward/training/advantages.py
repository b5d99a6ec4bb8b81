"""Advantage math of [`DenseGRPOTrainer`], as pure functions: dense (per-token) values checked, normalised per position
across each GRPO group ([`dense_advantages`], public), and TRL's scalar advantages of the other reward functions.

A group is `group_size` consecutive rows (completions of one prompt). `None` marks a missing value: a token that
carries no verifier value (the policy's EOS, unless the reward scores it), or a completion (row) without values;
inside the tensor code it is NaN, like a padded position. Missing values are left out of the per-position statistics
and get advantage 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "DENSE_NORMALIZATIONS",
    "DENSE_STDS",
    "check_dense_options",
    "check_dense_values",
    "dense_advantages",
    "normalize_dense",
    "pad_dense",
    "scalar_advantages",
]

DENSE_NORMALIZATIONS = ("group_std", "group_mean")
DENSE_STDS = ("sample", "population")  # TRL's scalar nanstd (Bessel) / the paper authors' code


def check_dense_options(normalization: Any, eps: Any, std: Any = "sample") -> None:
    """Raise `ValueError` unless `normalization` is one of `DENSE_NORMALIZATIONS`, `eps` a finite float > 0 and `std`
    one of `DENSE_STDS`."""
    if normalization not in DENSE_NORMALIZATIONS:
        raise ValueError(f"`dense_normalization` must be one of {DENSE_NORMALIZATIONS}, got {normalization!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"`dense_eps` must be a finite number > 0, got {eps!r}")
    if std not in DENSE_STDS:
        raise ValueError(f"`dense_std` must be one of {DENSE_STDS}, got {std!r}")


def check_dense_values(values: Any, completion_ids: Sequence[Sequence[int]], name: str) -> list[torch.Tensor | None]:
    """Validate the output of `score_dense` against `completion_ids`; returns one float32 (T_i,) tensor or `None` each.

    A `None` value inside a row (no value at that token) becomes NaN.

    Raises:
        `ValueError`: the number of rows or of values in a row differs from the completions / their token counts,
            or a value is not finite (the message names the reward `name` and the completion index).
    """
    if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"dense reward '{name}': score_dense must return a list, got {type(values).__name__}")
    if len(values) != len(completion_ids):
        raise ValueError(
            f"dense reward '{name}' returned {len(values)} rows of dense values for {len(completion_ids)} completions"
        )
    out: list[torch.Tensor | None] = []
    for i, (row, ids) in enumerate(zip(values, completion_ids)):
        if row is None:
            out.append(None)
            continue
        try:
            tensor = _row_tensor(row)
        except (TypeError, ValueError) as err:
            raise ValueError(f"dense reward '{name}': values of completion {i} are not numbers ({err})") from None
        if tensor.ndim != 1 or tensor.numel() != len(ids):
            raise ValueError(
                f"dense reward '{name}' returned {tensor.numel()} values (shape {tuple(tensor.shape)}) for "
                f"completion {i}, which has {len(ids)} policy tokens: return one value per token of completion_ids[i]"
            )
        given = [v is not None for v in row] if not isinstance(row, torch.Tensor) else [True] * tensor.numel()
        bad = (~torch.isfinite(tensor) & torch.tensor(given, dtype=torch.bool)).nonzero()
        if bad.numel():
            position = int(bad[0])
            raise ValueError(
                f"dense reward '{name}': completion {i} has a non-finite value {tensor[position].item()} at token "
                f"{position}; return None for a token without a value, or for an unscorable completion"
            )
        out.append(tensor)
    return out


def _row_tensor(row: Sequence[float | None] | torch.Tensor) -> torch.Tensor:
    """One row of dense values as a float32 CPU tensor, NaN for a `None` value."""
    if isinstance(row, torch.Tensor):
        return row.detach().to("cpu", torch.float32).flatten()
    return torch.tensor([math.nan if v is None else v for v in row], dtype=torch.float32)


def pad_dense(
    values: Sequence[Sequence[float | None] | torch.Tensor | None], width: int | None = None
) -> torch.Tensor:
    """Right-pad rows of dense values into a float32 (B, T) tensor, NaN where a row has no value (or is `None`)."""
    rows = [None if v is None else _row_tensor(v) for v in values]
    longest = max((r.numel() for r in rows if r is not None), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"`width` ({width}) is shorter than the longest row ({longest})")
    padded = torch.full((len(rows), width), float("nan"))  # (B, T)
    for i, row in enumerate(rows):
        if row is not None:
            padded[i, : row.numel()] = row
    return padded


def normalize_dense(
    values: torch.Tensor,
    group_size: int,
    *,
    normalization: str = "group_std",
    eps: float = 1e-4,
    std: str = "sample",
) -> torch.Tensor:
    """Per-position group normalisation of NaN-padded dense values (B, T) -> advantages (B, T), 0 where NaN.

    Rows `[k * group_size, (k + 1) * group_size)` form group `k`. At each position `t` the mean (and, for
    `"group_std"`, the standard deviation: `"sample"` as TRL's `nanstd`, `"population"` as the authors) are taken over
    the group's rows whose value at `t` is not NaN. Positions with fewer than two values get 0.
    """
    check_dense_options(normalization, eps, std)
    if values.ndim != 2:
        raise ValueError(f"`values` must be a (B, T) tensor, got shape {tuple(values.shape)}")
    batch, width = values.shape
    if group_size < 1 or batch % group_size:
        raise ValueError(f"`group_size` ({group_size}) must be >= 1 and divide the number of rows ({batch})")
    dtype = torch.float32 if values.device.type == "mps" else torch.float64  # MPS has no float64
    grouped = values.to(dtype).view(batch // group_size, group_size, width)  # (G, n, T)
    present = ~torch.isnan(grouped)
    count = present.sum(dim=1, keepdim=True)  # (G, 1, T)
    mean = torch.where(present, grouped, 0.0).sum(dim=1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(present, grouped - mean, 0.0)  # (G, n, T)
    if normalization == "group_std":
        dof = (count - 1).clamp(min=1) if std == "sample" else count.clamp(min=1)  # Bessel (TRL) or not (authors)
        spread = ((centered**2).sum(dim=1, keepdim=True) / dof).sqrt()
        centered = centered / (spread + eps)
    advantages = torch.where(present & (count > 1), centered, 0.0)
    return advantages.view(batch, width).to(torch.float32)


def dense_advantages(
    values: Sequence[Sequence[float | None] | None],
    group_size: int,
    *,
    normalization: str = "group_std",
    eps: float = 1e-4,
    std: str = "sample",
) -> list[list[float] | None]:
    """Per-token advantages of dense values, normalised per position across each group: what `DenseGRPOTrainer`
    trains on (before it adds the other rewards' scalar part).

    At each position `t` of a group, the values present there (rows long enough, values not `None`) give a mean and
    a standard deviation; `"group_std"` returns `(r_t - mean_t) / (std_t + eps)`, `"group_mean"` returns
    `r_t - mean_t`. A position with fewer than two values, and every `None` value, gets 0: a token without a verifier
    value (the policy's EOS, unless the reward scores it) is never compared with real tokens, so stopping is not
    rewarded by itself. An empty completion scored `empty_value` below its group gets a negative advantage where its
    tokens are.

    Args:
        values (`list[list[float | None] | None]`): one row per completion, as `score_dense` returns them
            (consecutive groups of `group_size`); a `None` row has no dense values (its result row is `None`).
        group_size (`int`): completions per prompt (`num_generations`).
        normalization (`str`, *optional*, defaults to `"group_std"`): `"group_std"` or `"group_mean"`.
        eps (`float`, *optional*, defaults to `1e-4`): added to the per-position std.
        std (`str`, *optional*, defaults to `"sample"`): `"sample"` (Bessel's correction, as TRL's scalar
            advantages) or `"population"` (the paper authors' rule: 0.935x the sample std's advantages for G=8).

    Returns:
        `list[list[float] | None]`: one row per completion, the same lengths as `values`.

    Example:

    ```python
    >>> from cme_reward import dense_advantages
    >>> dense_advantages([[1.0, 2.0, None], [3.0, None]], 2, normalization="group_mean")
    [[-1.0, 0.0, 0.0], [1.0, 0.0]]
    ```
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"`values` must be a list of rows (lists of floats or None), got {type(values).__name__}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"`group_size` must be an int >= 1, got {group_size!r}")
    rows = []
    for i, row in enumerate(values):
        try:
            rows.append(None if row is None else _row_tensor(row))
        except (TypeError, ValueError):
            raise ValueError(f"`values[{i}]` must be a list of floats or None, got {row!r:.80}") from None
    advantages = normalize_dense(pad_dense(rows), group_size, normalization=normalization, eps=eps, std=std)
    return [None if row is None else advantages[i, : row.numel()].tolist() for i, row in enumerate(rows)]


def scalar_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    group_size: int,
    *,
    scale_rewards: str = "group",
    aggregation: str = "sum_then_normalize",
) -> torch.Tensor:
    """TRL 1.16's scalar GRPO advantages (B,) of rewards (B, K) (NaN = None), as `_generate_and_score_completions`.

    `sum_then_normalize`: weighted `nansum`, then centred per group and scaled by the group (`"group"`), batch
    (`"batch"`) or no (`"none"`) sample std + 1e-4. `normalize_then_sum`: each function normalised per group, weighted
    sum, then normalised over the batch. Rows where every function is NaN get 0. `K == 0` gives zeros.
    """
    from trl.trainer.utils import nanstd  # TRL's own, so the scalar part matches TRL exactly

    batch = rewards_per_func.size(0)
    if rewards_per_func.size(1) == 0:
        return torch.zeros(batch, device=rewards_per_func.device)
    weights = weights.to(rewards_per_func.device, torch.float32)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)  # (B,)
    if aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        mean = torch.nanmean(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size)
        if scale_rewards in ("group", "none"):
            std = nanstd(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size)
            std = std if group_size > 1 else torch.zeros_like(rewards)
        elif scale_rewards == "batch":
            std = nanstd(rewards).expand_as(rewards) if batch > 1 else torch.zeros_like(rewards)
        else:
            raise ValueError(f"`scale_rewards` must be 'group', 'batch' or 'none', got {scale_rewards!r}")
        advantages = rewards - mean
        if scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
    elif aggregation == "normalize_then_sum":
        grouped = rewards_per_func.view(-1, group_size, rewards_per_func.size(1))  # (G, n, K)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean_k)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, rewards_per_func.size(1))
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        std = nanstd(rewards).expand_as(rewards) if batch > 1 else torch.zeros_like(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std + 1e-4)
    else:
        raise ValueError(
            f"`multi_objective_aggregation` must be 'sum_then_normalize' or 'normalize_then_sum', got {aggregation!r}"
        )
    return torch.nan_to_num(advantages, nan=0.0)
