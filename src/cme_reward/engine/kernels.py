"""LM head + float32 log-softmax of target tokens only, without materializing (N, vocab) float32 logits at once.
Optionally the predictive entropy at the same positions, in the same pass. Pure tensor code."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["blocked_token_logprobs", "token_logprobs"]


def token_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, project: Callable, chunk: int, *, entropy: bool = False
) -> torch.Tensor:
    """Log-prob of `targets` under `project(hidden)`, in float32, `chunk` rows at a time.

    hidden: (N, H) rows that each predict one token; targets: (N,) token ids. Returns (N,) float32, or with `entropy`
    (N, 2): the log-prob and the negated predictive entropy `sum_v p_v log p_v` of each row.
    """
    out = torch.empty(targets.shape[0], 2 if entropy else 1, dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], chunk):
        logits = project(hidden[start : start + chunk]).float()  # (n, V)
        picked = logits.gather(1, targets[start : start + chunk, None]).squeeze(1)  # (n,)
        lse = torch.logsumexp(logits, dim=-1)  # (n,)
        out[start : start + chunk, 0] = picked - lse
        if entropy:
            logp = logits.sub_(lse[:, None])  # (n, V) log-probs, in place
            out[start : start + chunk, 1] = (logp.exp() * logp).sum(-1)
    return out if entropy else out[:, 0]


def blocked_token_logprobs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    rows: int = 512,
    vocab_block: int = 1024,
    *,
    entropy: bool = False,
) -> torch.Tensor:
    """`token_logprobs` for a bias-free linear head `weight` (V, H), blocked over rows and vocabulary.

    The float32 log-sum-exp of each (rows, vocab_block) logits block is taken in place while the block is still in
    cache, then the blocks' log-sum-exps are combined; the target logit is the same dot product, rounded to the
    weights' dtype like a matmul output. On CPU this avoids writing and re-reading (rows, V) float32 logits through
    memory. With `entropy`, each block also yields `sum exp(l - top) * (l - top)`, so the mean logit under the
    softmax, hence the entropy `H = lse - E_p[logit]`, comes out of the same pass. hidden: (N, H); targets: (N,).
    Returns (N,) float32, or (N, 2) with the negated entropy as the second column.
    """
    out = torch.empty(targets.shape[0], 2 if entropy else 1, dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], rows):
        h, t = hidden[start : start + rows], targets[start : start + rows]  # (n, H), (n,)
        picked = (h.float() * weight[t].float()).sum(-1).to(weight.dtype).float()  # (n,)
        tops, sums, dots = [], [], []
        for v in range(0, weight.shape[0], vocab_block):
            logits = (h @ weight[v : v + vocab_block].T).float()  # (n, block), a fresh tensor: safe to overwrite
            top = logits.amax(-1, keepdim=True)  # (n, 1)
            tops.append(top.squeeze(-1))
            if entropy:
                shifted = logits.sub_(top)  # (n, block): l - top
                e = shifted.exp()  # (n, block)
                sums.append(e.sum(-1))
                dots.append(torch.linalg.vecdot(e, shifted))  # (n,) sum e * (l - top)
            else:
                sums.append(logits.sub_(top).exp_().sum(-1))
        if not entropy:  # the plain path: each block's log-sum-exp, then theirs
            lse = torch.logsumexp(torch.stack([s.log() + m for s, m in zip(sums, tops)], -1), -1)  # (n,)
            out[start : start + rows, 0] = picked - lse
            continue
        top_b, sum_b, dot_b = torch.stack(tops, -1), torch.stack(sums, -1), torch.stack(dots, -1)  # (n, blocks)
        peak = top_b.amax(-1, keepdim=True)  # (n, 1)
        w = sum_b * (top_b - peak).exp()  # (n, blocks): each block's share of the partition function, scaled
        total = w.sum(-1)  # (n,)
        lse = peak.squeeze(-1) + total.log()
        mean_logit = (w * (top_b + dot_b / sum_b)).sum(-1) / total  # E_p[logit]
        out[start : start + rows, 0] = picked - lse
        out[start : start + rows, 1] = mean_logit - lse  # -H = E_p[log p] = E_p[logit] - lse
    return out if entropy else out[:, 0]
