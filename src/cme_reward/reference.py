"""The plain reference: one pair at a time, full float32 logits, `log_softmax` + gather.

Slow on purpose. Every fast path of the engine is tested against it, and the benchmark uses it as the naive baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["reference_token_logprobs"]


@torch.inference_mode()
def reference_token_logprobs(model, context_ids: Sequence[int], response_ids: Sequence[int]) -> torch.Tensor:
    """(len(response_ids),) float32 log-probs of the response tokens given the context, computed the obvious way."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(context_ids) + list(response_ids)], device=device)  # (1, T)
    logits = model(input_ids=ids).logits.float()  # (1, T, V)
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1)  # (T - 1, V): position t predicts token t + 1
    targets = ids[0, 1:]  # (T - 1,)
    picked = logprobs.gather(1, targets[:, None]).squeeze(1)
    return picked[len(context_ids) - 1 :].cpu()
