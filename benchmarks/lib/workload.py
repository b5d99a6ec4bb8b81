"""GRPO-shaped, tokenizer-free workload: P prompts x G completions of random token ids, seeded; useful FLOPs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .presets import FlopModel

__all__ = ["Pair", "Workload", "flop_summary", "lengths", "make_workload", "naive_flops", "no_sharing_flops",
           "useful_flops"]  # fmt: skip

Pair = tuple[list[int], list[int]]


@dataclass
class Workload:
    """Prompt-major pairs: `pairs[p * group_size + g]` is completion g of prompt p (all G share one context list)."""

    pairs: list[Pair]
    prompts: int
    group_size: int

    @property
    def scored_tokens(self) -> int:
        return sum(len(r) for _, r in self.pairs)

    @property
    def total_tokens(self) -> int:
        """Context + response tokens of every pair (what a per-pair loop runs)."""
        return sum(len(c) + len(r) for c, r in self.pairs)

    @property
    def unique_tokens(self) -> int:
        """Each prompt once, plus every response."""
        return sum(len(self.pairs[p * self.group_size][0]) for p in range(self.prompts)) + self.scored_tokens

    def groups(self) -> list[list[Pair]]:
        g = self.group_size
        return [self.pairs[i : i + g] for i in range(0, len(self.pairs), g)]

    def summary(self) -> dict:
        ctx = [len(c) for c, _ in self.pairs[:: self.group_size]]
        resp = [len(r) for _, r in self.pairs]
        return {
            "pairs": len(self.pairs),
            "prompts": self.prompts,
            "group_size": self.group_size,
            "scored_tokens": self.scored_tokens,
            "total_tokens": self.total_tokens,
            "unique_tokens": self.unique_tokens,
            "prompt_len_mean": sum(ctx) / len(ctx),
            "prompt_len_min_max": [min(ctx), max(ctx)],
            "response_len_mean": sum(resp) / len(resp),
            "response_len_min_max": [min(resp), max(resp)],
        }


def lengths(n: int, lo: int, hi: int, gen: torch.Generator) -> list[int]:
    """Right-skewed lengths in [lo, hi]: log-normal with its median at the geometric mean of lo and hi and the range
    covering about +-2 sigma (completion lengths in RL are right-skewed), clipped."""
    mu = 0.5 * (math.log(lo) + math.log(hi))
    sigma = max((math.log(hi) - math.log(lo)) / 4, 1e-6)
    x = torch.randn(n, generator=gen, dtype=torch.float64) * sigma + mu  # (n,)
    return [int(v) for v in x.exp().round().clamp(lo, hi)]


def make_workload(
    prompts: int, group_size: int, prompt_len: tuple[int, int], response_len: tuple[int, int], vocab: int, seed: int
) -> Workload:
    """P prompts x G completions of random token ids below `vocab`, lengths drawn by [`lengths`].

    Args:
        prompts (`int`): P, at least 1.
        group_size (`int`): G completions per prompt, at least 1.
        prompt_len (`tuple[int, int]`): (lo, hi) prompt lengths, 1 <= lo <= hi.
        response_len (`tuple[int, int]`): (lo, hi) response lengths, 1 <= lo <= hi.
        vocab (`int`): token ids are drawn from [0, vocab).
        seed (`int`): seed of every draw.

    Returns:
        [`Workload`].

    Example:
        ```python
        >>> work = make_workload(2, 4, (8, 24), (8, 24), vocab=1024, seed=0)
        >>> len(work.pairs)
        8
        ```
    """
    for name, value in (("prompts", prompts), ("group_size", group_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, (lo, hi) in (("prompt_len", prompt_len), ("response_len", response_len)):
        if not 1 <= lo <= hi:
            raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)!r}")
    gen = torch.Generator().manual_seed(seed)
    ctx_lens = lengths(prompts, *prompt_len, gen)
    resp_lens = lengths(prompts * group_size, *response_len, gen)
    pairs: list[Pair] = []
    for p, n in enumerate(ctx_lens):
        ctx = torch.randint(0, vocab, (n,), generator=gen).tolist()
        for g in range(group_size):
            m = resp_lens[p * group_size + g]
            pairs.append((ctx, torch.randint(0, vocab, (m,), generator=gen).tolist()))
    return Workload(pairs=pairs, prompts=prompts, group_size=group_size)


def useful_flops(work: Workload, fm: FlopModel) -> dict[str, int]:
    """The least work any exact method must do: the body over each prompt once and over every response token that is
    an input (all but the last), attending to its own prompt and response only; the head over response tokens."""
    body = 0
    for group in work.groups():
        n_ctx = len(group[0][0])
        body += fm.body_span(0, n_ctx)
        body += sum(fm.body_span(n_ctx, n_ctx + len(r) - 1) for _, r in group)
    head = fm.head * work.scored_tokens
    return {"body": body, "head": head, "total": body + head}


def naive_flops(work: Workload, fm: FlopModel) -> int:
    """FLOPs a per-pair loop with full logits executes (body and head over every context + response token)."""
    return sum(fm.body_span(0, len(c) + len(r)) + fm.head * (len(c) + len(r)) for c, r in work.pairs)


def no_sharing_flops(work: Workload, fm: FlopModel) -> int:
    """FLOPs of an exact scorer that runs every pair's context itself (body over context + response inputs, head over
    response tokens only): what (c) needs at best."""
    return sum(fm.body_span(0, len(c) + len(r) - 1) + fm.head * len(r) for c, r in work.pairs)


def flop_summary(work: Workload, fm: FlopModel) -> dict:
    """Useful, no-sharing and naive FLOPs of `work`, and the speed-ups the FLOP counts alone allow at equal FLOP/s."""
    useful = useful_flops(work, fm)
    naive, no_sharing = naive_flops(work, fm), no_sharing_flops(work, fm)
    return {
        "useful": useful,
        "no_sharing": no_sharing,
        "naive_executed": naive,
        "per_token": vars(fm),
        "flop_ratio_bounds": {
            "d_vs_a": naive / useful["total"],
            "c_vs_a": naive / no_sharing,
            "d_vs_c": no_sharing / useful["total"],
        },
    }
