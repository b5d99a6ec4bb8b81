"""Reductions from per-token values to one score. The mean of log-probs is Cross-Model Entropy (negated)."""

from __future__ import annotations

import math

import torch

__all__ = ["reduce_values"]


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
