"""Teacher-forced scoring engine: per-token log-probs of responses under a causal LM. Pure tensor code.

The engine takes token-id pairs `(context_ids, response_ids)` and returns, for each pair, the float32 log-prob of every
response token given the context and the previous response tokens. How it stays fast:

- identical pairs are scored once (`deduplicate`);
- a context shared by several responses (a GRPO group) is encoded once and its KV cache is reused (`prefix_sharing`),
  when that saves enough tokens to pay for the extra forward pass; where padding is allowed (GPU) the contexts of
  several groups share one right-padded pass and their responses share passes too, each reading its own context's
  cache row; the responses' rows go through the LM head in big passes;
- the other pairs are sorted longest first and packed into batches under a padded-token budget and a padding bound
  (none on CPU, where padding is pure waste), then put back in order; optionally (`pack_tokens`) short pairs are
  first packed end to end into padding-free rows, each attending only to itself;
- the LM head and log-softmax run only on response positions, in chunks (on CPU also blocked over the vocabulary, so
  each logits block is reduced while it is in cache), so float32 `(batch, seq, vocab)` logits never exist;
- a CUDA out-of-memory error splits the batch in two and lowers the budget for the rest of the run.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch

from ..config import CMEConfig
from ..scorer import Capabilities, Pair, ScorerStats
from .kernels import blocked_token_logprobs, token_logprobs
from .model import ModelParts, head_matches_model, packing_keeps_sequences_apart, uses_sliding_window
from .planning import pack_batches, pack_rows, plan_pairs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["OutOfMemoryError", "ScoringEngine"]

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
HEAD_ROWS = 2048  # prefix-shared responses' rows go through the LM head in passes of about this many rows
T = TypeVar("T")
Indexed = list[tuple[int, torch.Tensor]]  # (pair index, its (len(response),) values)


class ScoringEngine:
    """The in-process [`Scorer`](cme_reward.scorer.Scorer): scores token-id pairs with a frozen causal LM (see the
    module docstring).

    Args:
        model (`PreTrainedModel`): a causal LM, already on its device, in eval mode.
        config (`CMEConfig`, *optional*): the batching options (`max_tokens_per_batch`, `prefix_sharing`,
            `deduplicate`, `max_padding`, `pack_tokens`, `min_shared_tokens`, `head_chunk_tokens`,
            `head_vocab_block`); `None` uses the defaults.

    Example:

    ```python
    >>> engine = ScoringEngine(model, CMEConfig(max_tokens_per_batch=4096))
    >>> engine.score([([1, 2, 3], [4, 5])])  # one (2,) float32 tensor of log-probs per pair
    ```
    """

    def __init__(self, model: PreTrainedModel, config: CMEConfig | None = None):
        self.config = config = config or CMEConfig()
        self.parts = parts = ModelParts(model)
        self.device = parts.device
        placed = set(getattr(model, "hf_device_map", None) or {None: None}.values())
        # dispatched by accelerate over devices or offloaded: only module forwards see the weights, so the engine runs
        # the model whole and never reads the head's weight itself
        dispatched = len(placed) > 1 or "disk" in placed
        self.split_head = not dispatched and head_matches_model(parts)
        if dispatched:
            logger.info("%s is dispatched over %s: scoring through the full model forward", type(model).__name__,
                        sorted(map(str, placed)))  # fmt: skip
        elif not self.split_head:
            logger.warning(
                "%s does not produce logits as lm_head(hidden states); scoring through the full model forward "
                "(correct, but (batch, seq, vocab) logits are materialized in the model dtype).",
                type(model).__name__,
            )
        self.capabilities = Capabilities(entropy=True)
        self.sliding_window = uses_sliding_window(model.config)
        on_cpu = self.device.type == "cpu"
        # CPU: padding is pure waste and batching gains little; GPU: big batches keep it busy
        self.max_padding = config.max_padding if config.max_padding is not None else (0.0 if on_cpu else math.inf)
        self.head_chunk = config.head_chunk_tokens or max(1, (256 << 20) // (4 * parts.vocab_size))
        block = config.head_vocab_block if config.head_vocab_block is not None else (1024 if on_cpu else 0)
        self.head_vocab_block = block if self.split_head and parts.plain_head else 0
        self.pack_tokens = config.pack_tokens
        if self.pack_tokens and not packing_keeps_sequences_apart(parts, split=self.split_head):
            logger.warning("%s does not keep packed sequences apart: packing is off", type(model).__name__)
            self.pack_tokens = 0
        self.reset()

    def reset(self) -> None:
        """Back to the configured token budget (an out-of-memory error lowers it) and zero stats."""
        self.budget = self.config.max_tokens_per_batch
        self.stats = ScorerStats()

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""

    # ---- entry -------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(
        self,
        pairs: Sequence[Pair],
        *,
        max_rows: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor]:
        """Per-token log-probs, one float32 CPU tensor of shape (len(response),) per pair, in input order; with
        `metric="entropy"` of shape (len(response), 2): the log-prob and the negated predictive entropy.

        Args:
            pairs: `(context_ids, response_ids)` token-id pairs; every context has at least one token.
            max_rows: at most this many rows per forward pass (the token budget still applies).
            progress: called with the number of response tokens finished after each batch.
        """
        if any(not c for c, _ in pairs):
            raise ValueError("every pair needs at least one context token")
        start = time.perf_counter()
        cfg = self.config
        plan = plan_pairs(pairs, deduplicate=cfg.deduplicate, prefix_sharing=cfg.prefix_sharing,
                          min_shared_tokens=cfg.min_shared_tokens)  # fmt: skip
        todo = plan.pairs
        results: dict[int, torch.Tensor] = {}
        copies = Counter(plan.slot)  # a duplicate pair's tokens count each time it stands in `pairs`

        def report(scored: Indexed) -> None:
            results.update(scored)
            if progress:
                progress(sum(len(lp) * copies[i] for i, lp in scored))

        shared_limit = 0.0 if self.sliding_window else self.max_padding  # windows count cache slots: no padding
        for batch in self._batches(plan.groups, lambda g: len(todo[g[0]][0]), max_rows, max_padding=shared_limit):
            report(self._split_on_oom(lambda b: self._score_contexts(todo, b, max_rows), batch,
                                      lambda b: len(b) * len(todo[b[0][0]][0])))  # fmt: skip
        singles = plan.singles
        length = lambda i: len(todo[i][0]) + len(todo[i][1]) - 1  # noqa: E731 - the last token is never an input
        if self.pack_tokens:
            rows = pack_rows(singles, length, self.pack_tokens)
            for row in (r for r in rows if len(r) > 1):
                report(self._split_on_oom(lambda b: self._packed_forward(todo, b), row,
                                          lambda b: sum(map(length, b))))  # fmt: skip
            singles = [r[0] for r in rows if len(r) == 1]
        for batch in self._batches(singles, length, max_rows):
            report(self._split_on_oom(lambda b: self._rows_forward(todo, b), batch,
                                      lambda b: len(b) * max(map(length, b))))  # fmt: skip
        out = [results[s] for s in plan.slot]
        self.stats.calls += 1
        self.stats.pairs += len(pairs)
        self.stats.tokens_scored += sum(len(r) for _, r in pairs)
        self.stats.seconds += time.perf_counter() - start
        return out

    # ---- shared machinery ----------------------------------------------------------------------------------------

    def _batches(self, order: list[T], length: Callable[[T], int], max_rows: int | None, *, extra: int = 0,
                 max_padding: float | None = None) -> list[list[T]]:  # fmt: skip
        """`pack_batches` of `order` under the current budget, the row cap and (unless given) the padding bound."""
        bound = self.max_padding if max_padding is None else max_padding
        index = pack_batches(list(range(len(order))), lambda k: length(order[k]), self.budget, bound,
                             max_rows=max_rows, extra=extra)  # fmt: skip
        return [[order[k] for k in batch] for batch in index]

    def _split_on_oom(self, run: Callable[[list[T]], list], items: list[T], size: Callable[[list[T]], int]) -> list:
        """`run(items)`; on a CUDA out-of-memory error, lower the budget and run each half (recursively)."""
        try:
            return run(items)
        except OutOfMemoryError:
            padded = size(items)
            if len(items) <= 1:
                raise OutOfMemoryError(
                    f"the verifier ran out of memory on a single sequence of {padded} tokens; lower max_length "
                    "or use a smaller dtype"
                ) from None
            self.stats.retries += 1
            self.budget = max(1, min(self.budget, padded // 2))
            logger.warning(
                "Out of memory on %d padded tokens: splitting the batch, budget now %d", padded, self.budget
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(items) // 2
            return self._split_on_oom(run, items[:half], size) + self._split_on_oom(run, items[half:], size)

    def _forward(self, ids, mask, *, real: int, cache=None, position_ids=None) -> torch.Tensor:
        """The one place the model runs and is counted: (B, T) ids -> (B, T, H) hidden states, or (B, T, V) logits
        without a split head. `real` = the non-padding input tokens."""
        self.stats.passes += 1
        self.stats.tokens_forward += real
        self.stats.padded_tokens += ids.numel()
        return self.parts.run(ids, mask, split=self.split_head, cache=cache, position_ids=position_ids)

    def _logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states (logits without a split head), (N,) targets -> (N,) float32 log-probs, or (N, 2) with
        the negated predictive entropy too (`metric="entropy"`)."""
        entropy = self.config.metric == "entropy"
        if self.head_vocab_block:
            weight = self.parts.head.weight
            return blocked_token_logprobs(hidden, targets, weight, vocab_block=self.head_vocab_block, entropy=entropy)
        project = self.parts.project if self.split_head else (lambda x: x)
        return token_logprobs(hidden, targets, project, self.head_chunk, entropy=entropy)

    def _right_padded(self, seqs: list[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists -> (B, T) ids and attention mask on the device, right-padded to the longest. The pad id is
        irrelevant: padded positions are masked and never read."""
        ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, seq in enumerate(seqs):
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    # ---- independent pairs ---------------------------------------------------------------------------------------

    def _rows_forward(self, todo, rows: list[int]) -> Indexed:
        """Pairs right-padded into one batch."""
        lengths = [len(todo[i][0]) + len(todo[i][1]) - 1 for i in rows]  # the last token is never an input
        row_idx, pos_idx, targets = [], [], []
        for b, (i, n) in enumerate(zip(rows, lengths)):
            c, r = todo[i]
            row_idx += [b] * len(r)
            pos_idx += range(len(c) - 1, n)  # position t predicts token t + 1
            targets += r
        ids, mask = self._right_padded([(todo[i][0] + todo[i][1])[:n] for i, n in zip(rows, lengths)])
        hidden = self._forward(ids, mask, real=sum(lengths))  # (B, T, H)
        return self._split(rows, todo, self._pick(hidden, row_idx, pos_idx, targets))

    def _packed_forward(self, todo, rows: list[int]) -> Indexed:
        """Pairs end to end in one padding-free row, position ids restarting per pair."""
        ids, pos, pos_idx, targets = [], [], [], []
        for i in rows:
            c, r = todo[i]
            n = len(c) + len(r) - 1
            pos_idx += range(len(ids) + len(c) - 1, len(ids) + n)  # position t predicts token t + 1
            ids += (c + r)[:n]
            pos += range(n)  # restarting position ids mark where each sequence starts
            targets += r
        ids_t, pos_t = torch.tensor([ids], device=self.device), torch.tensor([pos], device=self.device)
        hidden = self._forward(ids_t, None, real=len(ids), position_ids=pos_t)  # (1, T, H)
        return self._split(rows, todo, self._pick(hidden, [0] * len(targets), pos_idx, targets))

    def _pick(self, hidden, row_idx, pos_idx, targets) -> torch.Tensor:
        """(N,) float32 CPU log-probs of `targets` predicted at `hidden[row_idx, pos_idx]`."""
        dev = self.device
        picked = hidden[torch.tensor(row_idx, device=dev), torch.tensor(pos_idx, device=dev)]  # (N, H)
        return self._logprobs(picked, torch.tensor(targets, device=dev)).cpu()

    @staticmethod
    def _split(rows: list[int], todo, logprobs: torch.Tensor) -> Indexed:
        return list(zip(rows, logprobs.split([len(todo[i][1]) for i in rows])))

    # ---- prefix sharing -------------------------------------------------------------------------------------------

    def _score_contexts(self, todo, groups: list[list[int]], max_rows: int | None) -> Indexed:
        """Encode the groups' contexts in one right-padded pass, run their responses on copies of that KV cache, and
        the LM head over all of their rows in big passes."""
        lengths = [len(todo[g[0]][0]) for g in groups]
        Bg, Tc = len(groups), max(lengths)
        ids, ctx_mask = self._right_padded([todo[g[0]][0] for g in groups])  # (Bg, Tc)
        cache = self.parts.new_cache()
        hidden = self._forward(ids, ctx_mask, real=sum(lengths), cache=cache)  # (Bg, Tc, H)
        last = hidden[torch.arange(Bg, device=self.device), torch.tensor(lengths, device=self.device) - 1]  # (Bg, H)
        del hidden
        row = {i: b for b, g in enumerate(groups) for i in g}  # pair -> its context's cache row
        order = sorted((i for g in groups for i in g), key=lambda i: -len(todo[i][1]))
        pending: list[tuple[int, torch.Tensor]] = []  # (pair, (len(response), H) rows: row t predicts token t)
        pending_rows = 0
        scored: Indexed = []
        # response inputs: every response token but the last; attention also reads the cached context
        for batch in self._batches(order, lambda i: len(todo[i][1]) - 1, max_rows, extra=Tc):
            size = lambda b: len(b) * (Tc + max(len(todo[i][1]) for i in b) - 1)  # noqa: E731
            rests = self._split_on_oom(lambda b: self._responses_forward(todo, b, row, cache, ctx_mask), batch, size)
            for i, rest in zip(batch, rests):
                first = last[row[i], None]  # (1, H): predicts the response's first token
                pending.append((i, first if rest is None else torch.cat([first, rest])))
                pending_rows += len(todo[i][1])
            if pending_rows >= HEAD_ROWS:
                scored += self._head(todo, pending)
                pending, pending_rows = [], 0
        return scored + self._head(todo, pending)

    def _head(self, todo, pending: list[tuple[int, torch.Tensor]]) -> Indexed:
        """One LM-head pass over the rows of several responses (big head matmuls even when each response ran alone)."""
        if not pending:
            return []
        rows = torch.cat([rows for _, rows in pending])  # (N, H)
        targets = torch.tensor([t for i, _ in pending for t in todo[i][1]], device=self.device)
        return self._split([i for i, _ in pending], todo, self._logprobs(rows, targets).cpu())

    def _responses_forward(self, todo, batch: list[int], row: dict[int, int], context_cache, ctx_mask) -> list:
        """Responses on their contexts' rows of the KV cache -> per response, the (len - 1, H) hidden states (logits
        without a split head) of its inputs; `None` for one-token responses (only the context predicts)."""
        responses = [todo[i][1] for i in batch]
        B, T = len(responses), max(len(r) for r in responses) - 1
        if T == 0:
            return [None] * B
        rows = torch.tensor([row[i] for i in batch], device=self.device)
        cache = copy.deepcopy(context_cache)  # the forward appends to the cache: keep the contexts' own intact
        cache.batch_select_indices(rows)  # (B, ...) one cache row per response
        ids, mask = self._right_padded([r[:-1] for r in responses])  # (B, T)
        mask = torch.cat([ctx_mask[rows], mask], 1)  # (B, Tc + T): context padding stays masked
        # positions continue each context (its padding is skipped): row b's token t sits at len(context_b) + t
        position_ids = ctx_mask[rows].sum(1, keepdim=True) + torch.arange(T, device=self.device)  # (B, T)
        real = sum(len(r) - 1 for r in responses)
        hidden = self._forward(ids, mask, real=real, cache=cache, position_ids=position_ids)  # (B, T, H)
        return [hidden[b, : len(r) - 1] if len(r) > 1 else None for b, r in enumerate(responses)]
