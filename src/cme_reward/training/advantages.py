"""Advantage math of [`DenseGRPOTrainer`], as pure tensor functions: dense (per-token) values checked, padded to (B, T)
and normalised per position across each GRPO group, and TRL's scalar advantages of the other reward functions.

A group is `group_size` consecutive rows (completions of one prompt). NaN marks a missing value: a padded position,
or a completion (row) without values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "DENSE_NORMALIZATIONS",
    "check_dense_options",
    "check_dense_values",
    "dense_advantages",
    "normalize_dense",
    "pad_dense",
    "scalar_advantages",
]

DENSE_NORMALIZATIONS = ("group_std", "group_mean")


def check_dense_options(normalization: Any, eps: Any) -> None:
    """Raise `ValueError` unless `normalization` is one of `DENSE_NORMALIZATIONS` and `eps` a finite float > 0."""
    if normalization not in DENSE_NORMALIZATIONS:
        raise ValueError(f"`dense_normalization` must be one of {DENSE_NORMALIZATIONS}, got {normalization!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"`dense_eps` must be a finite number > 0, got {eps!r}")


def check_dense_values(values: Any, completion_ids: Sequence[Sequence[int]], name: str) -> list[torch.Tensor | None]:
    """Validate the output of `score_dense` against `completion_ids`; returns one float32 (T_i,) tensor or `None` each.

    Raises:
        `ValueError` naming the reward `name` (and the completion index) when the number of rows or of values in a
        row differs from the completions / their token counts, or when a value is not finite.
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
            tensor = torch.as_tensor(row, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError) as err:
            raise ValueError(f"dense reward '{name}': values of completion {i} are not numbers ({err})") from None
        if tensor.ndim != 1 or tensor.numel() != len(ids):
            raise ValueError(
                f"dense reward '{name}' returned {tensor.numel()} values (shape {tuple(tensor.shape)}) for "
                f"completion {i}, which has {len(ids)} policy tokens: return one value per token of completion_ids[i]"
            )
        bad = (~torch.isfinite(tensor)).nonzero()
        if bad.numel():
            position = int(bad[0])
            raise ValueError(
                f"dense reward '{name}': completion {i} has a non-finite value {tensor[position].item()} at token "
                f"{position}; return None for an unscorable completion instead"
            )
        out.append(tensor)
    return out


def pad_dense(values: Sequence[Sequence[float] | torch.Tensor | None], width: int | None = None) -> torch.Tensor:
    """Right-pad rows of dense values into a float32 (B, T) tensor, NaN where a row has no value (or is `None`)."""
    rows = [None if v is None else torch.as_tensor(v, dtype=torch.float32).flatten() for v in values]
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
    values: torch.Tensor, group_size: int, *, normalization: str = "group_std", eps: float = 1e-4
) -> torch.Tensor:
    """Per-position group normalisation of NaN-padded dense values (B, T) -> advantages (B, T), 0 where NaN.

    Rows `[k * group_size, (k + 1) * group_size)` form group `k`. At each position `t` the mean (and, for
    `"group_std"`, the sample standard deviation, as TRL's `nanstd`) are taken over the group's rows whose value at
    `t` is not NaN. Positions with fewer than two values get 0.
    """
    check_dense_options(normalization, eps)
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
        std = ((centered**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # Bessel, as TRL
        centered = centered / (std + eps)
    advantages = torch.where(present & (count > 1), centered, 0.0)
    return advantages.view(batch, width).to(torch.float32)


def dense_advantages(
    values: Sequence[Sequence[float] | None], group_size: int, *, normalization: str = "group_std", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages (B, T) of per-token values, normalised per position across each group, and the (B, T) value mask.

    Args:
        values (`list[list[float] | None]`): one list per completion (consecutive groups of `group_size`); `None`
            for a completion without dense values (its advantages are 0).
        group_size (`int`): completions per prompt (`num_generations`).
        normalization (`str`, *optional*, defaults to `"group_std"`): `"group_std"` or `"group_mean"`.
        eps (`float`, *optional*, defaults to `1e-4`): added to the per-position std.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: float32 advantages (B, T) with `T` the longest row, and a bool mask
        (B, T) of the positions that carry a value.

    Example:

    ```python
    >>> adv, mask = dense_advantages([[1.0, 2.0], [3.0]], 2, normalization="group_mean")
    >>> adv
    tensor([[-1.,  0.],
            [ 1.,  0.]])
    ```
    """
    padded = pad_dense(values)  # (B, T)
    return normalize_dense(padded, group_size, normalization=normalization, eps=eps), ~torch.isnan(padded)


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
