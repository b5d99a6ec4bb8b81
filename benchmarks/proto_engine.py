"""Prototype engine changes, measured here before they go into src/cme_reward/engine.py.

`FastEngine` on top of the committed `ScoringEngine` (bounded padding, context encoded once per group):

1. one LM-head pass per GRPO group: the response sub-batches (one response each on CPU) return hidden states, and
   the head + log-softmax run once over all of the group's rows, so the head's matmuls are big;
2. the context's KV cache is shared as views (`expand`), not `deepcopy` + `batch_repeat_interleave` per sub-batch;
3. on CPU, a vocabulary-blocked head: the float32 log-sum-exp of each (rows, vocab_block) logits block is taken while
   the block is in cache, so the (n, V) logits never go through memory (a bias-free, uncapped head only).
"""

from __future__ import annotations

import torch

from cme_reward.engine import OutOfMemoryError, ScoringEngine, token_logprobs


def cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a DynamicCache (transformers >= 4.56 `layers`, older `key_cache`)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def blocked_token_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, rows: int, vocab_block: int
) -> torch.Tensor:
    """`token_logprobs` for a bias-free linear head, blocked over rows and vocabulary; the target logit is the same
    dot product rounded to the weights' dtype like the matmul output. hidden: (N, H); targets: (N,); weight: (V, H).
    Returns (N,) float32."""
    n, vocab = targets.shape[0], weight.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for start in range(0, n, rows):
        h = hidden[start : start + rows]
        t = targets[start : start + rows]
        picked = (h.float() * weight[t].float()).sum(-1).to(weight.dtype).float()
        lse = [torch.logsumexp((h @ weight[v : v + vocab_block].T).float(), -1) for v in range(0, vocab, vocab_block)]
        out[start : start + rows] = picked - torch.logsumexp(torch.stack(lse, -1), -1)
    return out


class FastEngine(ScoringEngine):
    def __init__(self, model: torch.nn.Module, *, vocab_block: int | None = None, head_rows: int = 1024, **kwargs):
        super().__init__(model, **kwargs)
        if vocab_block is None:
            vocab_block = 2048 if self.device.type == "cpu" else 0
        head = model.get_output_embeddings()
        plain = self.split_head and getattr(head, "bias", None) is None
        plain = plain and not getattr(model.config, "final_logit_softcapping", None)
        self.vocab_block = vocab_block if plain else 0
        self.head_rows = head_rows

    def _logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.vocab_block:
            return token_logprobs(hidden, targets, self._project, self.head_chunk)
        weight = self.model.get_output_embeddings().weight
        return blocked_token_logprobs(hidden, targets, weight, self.head_rows, self.vocab_block)

    # ---- pairs without a shared context: the committed path, with `_logprobs` -----------------------------------

    def _rows_forward(self, todo, rows: list[int], lengths: list[int]) -> list[torch.Tensor]:
        B, T = len(rows), max(lengths)
        ids = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        row_idx, pos_idx, targets, sizes = [], [], [], []
        for b, (i, n) in enumerate(zip(rows, lengths)):
            c, r = todo[i]
            ids[b, :n] = torch.tensor((c + r)[:n])
            mask[b, :n] = 1
            row_idx += [b] * len(r)
            pos_idx += range(len(c) - 1, n)
            targets += r
            sizes.append(len(r))
        self.stats.tokens_forward += sum(lengths)
        self.stats.padded_tokens += B * T
        hidden = self._forward(ids.to(self.device), mask.to(self.device))
        picked = hidden[torch.tensor(row_idx, device=self.device), torch.tensor(pos_idx, device=self.device)]
        return list(self._logprobs(picked, torch.tensor(targets, device=self.device)).cpu().split(sizes))

    # ---- prefix sharing: context once, responses on views of its cache, one head pass per group -----------------

    def _score_group(self, todo, group: list[int], results, progress) -> None:
        context = todo[group[0]][0]
        order = sorted(group, key=lambda i: -len(todo[i][1]))
        cache = self._new_cache()
        ctx = torch.tensor([context], device=self.device)
        try:
            last = self._forward(ctx, torch.ones_like(ctx), cache)[0, -1:]  # (1, H): predicts each first token
        except OutOfMemoryError:
            self._on_oom(len(context), 1)
        self.stats.tokens_forward += len(context)
        self.stats.padded_tokens += len(context)
        kv = cache_tensors(cache)
        rest = [i for i in order if len(todo[i][1]) > 1]
        hidden: dict[int, torch.Tensor] = {}
        for batch in self._pack(rest, lambda i: len(todo[i][1]) - 1, extra=len(context)):
            self._responses_hidden(todo, batch, kv, hidden)
        rows = torch.cat([last.expand(len(order), -1)] + [hidden[i] for i in rest])
        targets = [todo[i][1][0] for i in order] + [t for i in rest for t in todo[i][1][1:]]
        lp = self._logprobs(rows, torch.tensor(targets, device=self.device)).cpu()
        tails = dict(zip(rest, lp[len(order) :].split([len(todo[i][1]) - 1 for i in rest])))
        for k, i in enumerate(order):
            results[i] = torch.cat([lp[k : k + 1], tails[i]]) if i in tails else lp[k : k + 1]
        if progress:
            progress(sum(len(todo[i][1]) for i in order))

    def _responses_hidden(self, todo, batch: list[int], kv, hidden: dict) -> None:
        """Hidden states of response tokens 0..n-2 (they predict tokens 1..n-1) on the context's KV cache; splits
        the batch in two on out-of-memory."""
        responses = [todo[i][1] for i in batch]
        try:
            out = self._responses_forward(kv, responses)
        except OutOfMemoryError:
            self._on_oom(len(batch) * (kv[0][0].shape[-2] + len(responses[0])), len(batch))
            half = len(batch) // 2
            self._responses_hidden(todo, batch[:half], kv, hidden)
            self._responses_hidden(todo, batch[half:], kv, hidden)
            return
        hidden.update(zip(batch, out))

    def _responses_forward(self, kv, responses) -> list[torch.Tensor]:
        B, Tc = len(responses), kv[0][0].shape[-2]
        T = max(len(r) for r in responses) - 1
        cache = self._new_cache()
        for layer, (k, v) in enumerate(kv):  # views of the context's cache; the forward's cat makes the copy
            cache.update(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), layer)
        ids = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, Tc + T, dtype=torch.long)
        mask[:, :Tc] = 1
        for b, r in enumerate(responses):
            ids[b, : len(r) - 1] = torch.tensor(r[:-1])
            mask[b, Tc : Tc + len(r) - 1] = 1
        self.stats.tokens_forward += sum(len(r) - 1 for r in responses)
        self.stats.padded_tokens += B * T
        out = self._forward(ids.to(self.device), mask.to(self.device), cache)  # (B, T, H)
        return [out[b, : len(r) - 1] for b, r in enumerate(responses)]
