"""Reductions from per-token log-probs to one score. Mean log-likelihood is Cross-Model Entropy (negated)."""

from __future__ import annotations

import torch

__all__ = ["reduce_logprobs"]


def reduce_logprobs(logprobs: torch.Tensor, reduction: str) -> float:
    """(T,) float32 log-probs, T >= 1 -> one float: `"mean"` (CME), `"sum"` or `"min"`."""
    if reduction == "mean":
        return logprobs.mean().item()
    if reduction == "sum":
        return logprobs.sum().item()
    if reduction == "min":
        return logprobs.min().item()
    raise ValueError(f"unknown reduction {reduction!r}")
