"""LM head + float32 log-softmax of target tokens only, without materializing (N, vocab) float32 logits at once.
Pure tensor code."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["blocked_token_logprobs", "token_logprobs"]


def token_logprobs(hidden: torch.Tensor, targets: torch.Tensor, project: Callable, chunk: int) -> torch.Tensor:
    """Log-prob of `targets` under `project(hidden)`, in float32, `chunk` rows at a time.

    hidden: (N, H) rows that each predict one token; targets: (N,) token ids. Returns (N,) float32.
    """
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], chunk):
        logits = project(hidden[start : start + chunk]).float()  # (n, V)
        picked = logits.gather(1, targets[start : start + chunk, None]).squeeze(1)  # (n,)
        out[start : start + chunk] = picked - torch.logsumexp(logits, dim=-1)
    return out


def blocked_token_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, rows: int = 512, vocab_block: int = 1024
) -> torch.Tensor:
    """`token_logprobs` for a bias-free linear head `weight` (V, H), blocked over rows and vocabulary.

    The float32 log-sum-exp of each (rows, vocab_block) logits block is taken in place while the block is still in
    cache, then the blocks' log-sum-exps are combined; the target logit is the same dot product, rounded to the
    weights' dtype like a matmul output. On CPU this avoids writing and re-reading (rows, V) float32 logits through
    memory. hidden: (N, H); targets: (N,). Returns (N,) float32.
    """
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], rows):
        h, t = hidden[start : start + rows], targets[start : start + rows]  # (n, H), (n,)
        picked = (h.float() * weight[t].float()).sum(-1).to(weight.dtype).float()  # (n,)
        lse = []
        for v in range(0, weight.shape[0], vocab_block):
            logits = (h @ weight[v : v + vocab_block].T).float()  # (n, block), a fresh tensor: safe to overwrite
            top = logits.amax(-1, keepdim=True)  # (n, 1)
            lse.append(logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1)))  # (n,)
        out[start : start + rows] = picked - torch.logsumexp(torch.stack(lse, -1), -1)  # (n, blocks) -> (n,)
    return out
