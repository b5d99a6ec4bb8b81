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
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .batching import pack_batches, pack_rows
from .head import blocked_token_logprobs, token_logprobs

logger = logging.getLogger(__name__)

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

Pair = tuple[Sequence[int], Sequence[int]]  # (context ids, response ids); context non-empty
HEAD_ROWS = 2048  # prefix-shared responses' rows go through the LM head in passes of about this many rows


def uses_sliding_window(config) -> bool:
    """True when some attention layer of `config` may look back only a window of positions (Mistral, Gemma 2/3,
    Qwen2 with `use_sliding_window`...). In doubt, True."""
    if not getattr(config, "sliding_window", None) or getattr(config, "use_sliding_window", True) is False:
        return False
    layer_types = getattr(config, "layer_types", None)
    return layer_types is None or any("sliding" in t or "chunk" in t for t in layer_types)


@dataclass
class EngineStats:
    forward_passes: int = 0
    tokens_forward: int = 0  # tokens run through the model body (cached context tokens counted once)
    padded_tokens: int = 0  # tokens including padding
    oom_splits: int = 0


class ScoringEngine:
    """Scores token-id pairs with a frozen causal LM (see the module docstring).

    Args:
        model: a `transformers` causal LM, already on its device, in eval mode.
        max_tokens_per_batch: padded-token budget of one forward pass.
        head_chunk_tokens: response positions per LM-head chunk (`None`: about 256 MiB of float32 logits).
        prefix_sharing: reuse the KV cache of a context shared by several responses.
        deduplicate: score identical pairs once.
        max_padding: a batch grows only while its padding stays under this fraction of its real tokens; `None`:
            0 on CPU (same-length rows only), unbounded elsewhere (the token budget alone decides).
        min_shared_tokens: share a context only when that saves at least this many forwarded tokens
            ((responses - 1) x context length): encoding it apart costs one more forward pass, which on a 2-core CPU
            costs about as much as 30 tokens of a 135M model.
        pack_tokens: short pairs are packed end to end into padding-free rows of at most this many tokens, with
            restarted position ids (the model's own packed-sequence masking keeps them apart); 0 (default) turns it
            off. Turned off, with a warning, when the model does not keep packed sequences apart (checked on a probe).
        head_vocab_block: vocabulary block of a bias-free, uncapped LM head (see `blocked_token_logprobs`); 0 turns
            it off; `None`: 1024 on CPU, off elsewhere (on GPU the chunked head is already bandwidth-efficient).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_tokens_per_batch: int = 8192,
        head_chunk_tokens: int | None = None,
        prefix_sharing: bool = True,
        deduplicate: bool = True,
        max_padding: float | None = None,
        min_shared_tokens: int = 32,
        pack_tokens: int = 0,
        head_vocab_block: int | None = None,
    ):
        self.model = model
        self.max_tokens_per_batch = max_tokens_per_batch
        self.max_rows: int | None = None  # optional cap on rows per forward pass
        self.prefix_sharing = prefix_sharing
        self.deduplicate = deduplicate
        self.min_shared_tokens = min_shared_tokens
        self.sliding_window = uses_sliding_window(model.config)
        self.stats = EngineStats()
        self.device = next(model.parameters()).device
        if max_padding is None:  # CPU: padding is pure waste and batching gains little; GPU: big batches keep it busy
            max_padding = 0.0 if self.device.type == "cpu" else math.inf
        self.max_padding = max_padding
        vocab = model.get_output_embeddings().weight.shape[0]
        self.head_chunk = head_chunk_tokens or max(1, (256 << 20) // (4 * vocab))
        self.body = model.get_decoder()
        self._cache_kw = "cache" if "cache" in inspect.signature(self.body.forward).parameters else "past_key_values"
        self.split_head = self._head_matches_model()
        plain_head = self.split_head and getattr(model.get_output_embeddings(), "bias", None) is None
        plain_head = plain_head and not getattr(model.config, "final_logit_softcapping", None)
        if head_vocab_block is None:
            head_vocab_block = 1024 if self.device.type == "cpu" else 0
        self.head_vocab_block = head_vocab_block if plain_head else 0
        self.pack_tokens = pack_tokens if pack_tokens >= 2 and self._packing_matches_rows() else 0
        if not self.split_head:
            logger.warning(
                "%s does not produce logits as lm_head(hidden states); scoring through the full model forward "
                "(correct, but (batch, seq, vocab) logits are materialized in the model dtype).",
                type(model).__name__,
            )

    # ---- model pieces -------------------------------------------------------------------------------------------

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (or logits, without a split head) -> logits."""
        if not self.split_head:
            return hidden
        logits = self.model.get_output_embeddings()(hidden)
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    def _logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states (logits without a split head), (N,) targets -> (N,) float32 log-probs."""
        if self.head_vocab_block:
            weight = self.model.get_output_embeddings().weight
            return blocked_token_logprobs(hidden, targets, weight, vocab_block=self.head_vocab_block)
        return token_logprobs(hidden, targets, self._project, self.head_chunk)

    def _forward(self, input_ids, attention_mask, cache=None, position_ids=None) -> torch.Tensor:
        """(B, T) ids -> (B, T, H) last hidden states, or (B, T, V) logits without a split head. A packed row has
        no attention mask and position ids that restart at each sequence."""
        self.stats.forward_passes += 1
        kwargs = {"attention_mask": attention_mask, "use_cache": cache is not None}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if self.split_head:
            return self.body(input_ids=input_ids, **kwargs).last_hidden_state
        return self.model(input_ids=input_ids, **kwargs).logits

    def _close(self, expected: torch.Tensor, got: torch.Tensor) -> bool:
        """The probes' test: equal up to the rounding of the weights' dtype."""
        tol = 1e-4 if next(self.model.parameters()).dtype == torch.float32 else 2e-2
        return bool((expected - got).abs().max() <= tol * (1 + expected.abs().max()))

    @torch.inference_mode()
    def _head_matches_model(self) -> bool:
        """True when `lm_head(body(x))` (+ soft-capping) reproduces the model's own logits on a probe input."""
        ids = torch.arange(1, 9, device=self.device)[None] % self.model.get_output_embeddings().weight.shape[0]
        mask = torch.ones_like(ids)
        try:
            full = self.model(input_ids=ids, attention_mask=mask).logits.float()
            self.split_head = True
            split = self._project(self._forward(ids, mask)).float()
        except Exception as err:  # noqa: BLE001 - any failure means: do not split this model
            logger.debug("split-head probe failed: %s", err)
            return False
        finally:
            self.stats = EngineStats()
        return self._close(full, split)

    @torch.inference_mode()
    def _packing_matches_rows(self) -> bool:
        """True when two sequences packed in one row (restarted position ids, no mask) give the hidden states they
        give alone: the model builds a packed-sequence mask from the position ids (transformers >= 4.54 does)."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        a, b = torch.arange(3, 10, device=self.device) % vocab, torch.arange(20, 25, device=self.device) % vocab
        try:
            alone = torch.cat([self._forward(x[None], torch.ones_like(x[None]))[0] for x in (a, b)]).float()
            pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None].to(self.device)
            packed = self._forward(torch.cat([a, b])[None], None, position_ids=pos)[0].float()
        except Exception as err:  # noqa: BLE001 - any failure means: do not pack for this model
            logger.debug("packing probe failed: %s", err)
            ok = False
        else:
            ok = self._close(alone, packed)
        finally:
            self.stats = EngineStats()
        if not ok:
            logger.warning("%s does not keep packed sequences apart: packing is off", type(self.model).__name__)
        return ok

    def _right_padded(self, seqs: list[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists -> (B, T) ids and attention mask on the device, right-padded to the longest. The pad id is
        irrelevant: padded positions are masked and never read."""
        ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, seq in enumerate(seqs):
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()

    # ---- public entry -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, pairs: Sequence[Pair], progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Per-token log-probs, one float32 CPU tensor of shape (len(response),) per pair, in input order.

        `progress(n)` is called with the number of response tokens finished after each batch.
        """
        keys = [(tuple(c), tuple(r)) for c, r in pairs]
        if any(not c for c, _ in keys):
            raise ValueError("every pair needs at least one context token")
        unique: dict[tuple, int] = {}
        slot = [unique.setdefault(k if self.deduplicate else (i, k), len(unique)) for i, k in enumerate(keys)]
        todo = [k if self.deduplicate else k[1] for k in unique]  # unique pairs
        results: list[torch.Tensor | None] = [None] * len(todo)

        singles = list(range(len(todo)))
        if self.prefix_sharing:
            by_context: dict[tuple, list[int]] = {}
            for i, (c, r) in enumerate(todo):
                if r:
                    by_context.setdefault(c, []).append(i)
            saved = self.min_shared_tokens  # forwarded tokens a group must save to be worth its extra pass
            groups = [g for c, g in by_context.items() if len(g) > 1 and (len(g) - 1) * len(c) >= saved]
            grouped = {i for g in groups for i in g}
            singles = [i for i in singles if i not in grouped]
            self._score_groups(todo, groups, results, progress)

        singles.sort(key=lambda i: -(len(todo[i][0]) + len(todo[i][1])))  # longest first: OOM shows at once
        if self.pack_tokens:
            rows = pack_rows(singles, lambda i: len(todo[i][0]) + len(todo[i][1]) - 1, self.pack_tokens)
            for row in (r for r in rows if len(r) > 1):
                self._score_rows(todo, row, results, progress, packed=True)
            singles = [r[0] for r in rows if len(r) == 1]
        for batch in self._pack(singles, lambda i: len(todo[i][0]) + len(todo[i][1]) - 1):
            self._score_rows(todo, batch, results, progress)
        return [results[s] for s in slot]

    # ---- batching -----------------------------------------------------------------------------------------------

    def _pack(
        self, order: list[int], length: Callable[[int], int], extra: int = 0, max_padding: float | None = None
    ) -> list[list[int]]:
        """`pack_batches` under this engine's budget, row cap and (unless given) padding bound."""
        max_padding = self.max_padding if max_padding is None else max_padding
        return pack_batches(order, length, self.max_tokens_per_batch, max_padding, max_rows=self.max_rows, extra=extra)

    def _on_oom(self, padded: int, rows: int) -> None:
        if rows <= 1:
            raise OutOfMemoryError(
                f"the verifier ran out of memory on a single sequence of {padded} tokens; lower max_length "
                "or use a smaller dtype"
            )
        self.stats.oom_splits += 1
        self.max_tokens_per_batch = max(1, min(self.max_tokens_per_batch, padded // 2))
        logger.warning(
            "Out of memory on %d padded tokens: splitting the batch, budget now %d", padded, self.max_tokens_per_batch
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _score_rows(self, todo, rows: list[int], results, progress, packed: bool = False) -> None:
        """Independent pairs, right-padded into one batch (or, `packed`, end to end in one padding-free row); splits
        in two on out-of-memory."""
        lengths = [len(todo[i][0]) + len(todo[i][1]) - 1 for i in rows]  # the last token is never an input
        size = sum(lengths) if packed else len(rows) * max(lengths)
        try:
            out = (self._packed_forward if packed else self._rows_forward)(todo, rows, lengths)
        except OutOfMemoryError:
            self._on_oom(size, len(rows))
            half = len(rows) // 2
            self._score_rows(todo, rows[:half], results, progress, packed)
            self._score_rows(todo, rows[half:], results, progress, packed)
            return
        for i, lp in zip(rows, out):
            results[i] = lp
        if progress:
            progress(sum(len(todo[i][1]) for i in rows))

    def _packed_forward(self, todo, rows: list[int], lengths: list[int]) -> list[torch.Tensor]:
        ids, pos, pos_idx, targets, sizes = [], [], [], [], []
        for i, n in zip(rows, lengths):
            c, r = todo[i]
            pos_idx += range(len(ids) + len(c) - 1, len(ids) + n)  # position t predicts token t + 1
            ids += (c + r)[:n]
            pos += range(n)  # restarting position ids mark where each sequence starts
            targets += r
            sizes.append(len(r))
        self.stats.tokens_forward += len(ids)
        self.stats.padded_tokens += len(ids)
        ids_t, pos_t = torch.tensor([ids], device=self.device), torch.tensor([pos], device=self.device)
        hidden = self._forward(ids_t, None, position_ids=pos_t)  # (1, T, H)
        return self._gathered_logprobs(hidden, [0] * len(targets), pos_idx, targets, sizes)

    def _gathered_logprobs(self, hidden, row_idx, pos_idx, targets, sizes) -> list[torch.Tensor]:
        """Log-probs of `targets` predicted at `hidden[row_idx, pos_idx]`, split into one CPU tensor per pair."""
        dev = self.device
        picked = hidden[torch.tensor(row_idx, device=dev), torch.tensor(pos_idx, device=dev)]  # (N, H)
        return list(self._logprobs(picked, torch.tensor(targets, device=dev)).cpu().split(sizes))

    def _rows_forward(self, todo, rows: list[int], lengths: list[int]) -> list[torch.Tensor]:
        B, T = len(rows), max(lengths)
        row_idx, pos_idx, targets, sizes = [], [], [], []
        for b, (i, n) in enumerate(zip(rows, lengths)):
            c, r = todo[i]
            row_idx += [b] * len(r)
            pos_idx += range(len(c) - 1, n)  # position t predicts token t + 1
            targets += r
            sizes.append(len(r))
        self.stats.tokens_forward += sum(lengths)
        self.stats.padded_tokens += B * T
        ids, mask = self._right_padded([(todo[i][0] + todo[i][1])[:n] for i, n in zip(rows, lengths)])
        hidden = self._forward(ids, mask)  # (B, T, H)
        return self._gathered_logprobs(hidden, row_idx, pos_idx, targets, sizes)

    # ---- prefix sharing -----------------------------------------------------------------------------------------

    def _score_groups(self, todo, groups: list[list[int]], results, progress) -> None:
        """Groups of responses sharing a context. Contexts are packed like rows (several groups per pass on GPU,
        where padding is allowed; one group per pass on CPU) and right-padded; on models with sliding-window layers
        only contexts of one length share a pass (the window is measured in cache slots, which padding would
        shift)."""
        groups = sorted(groups, key=lambda g: -len(todo[g[0]][0]))  # longest context first
        bound = 0.0 if self.sliding_window else None
        for batch in self._pack(list(range(len(groups))), lambda k: len(todo[groups[k][0]][0]), max_padding=bound):
            self._score_context_batch(todo, [groups[k] for k in batch], results, progress)

    def _score_context_batch(self, todo, groups: list[list[int]], results, progress) -> None:
        """Encode the groups' contexts in one pass, run their responses on copies of that KV cache, and the LM head
        over all of their rows in big passes."""
        lengths = [len(todo[g[0]][0]) for g in groups]
        Bg, Tc = len(groups), max(lengths)
        ids, ctx_mask = self._right_padded([todo[g[0]][0] for g in groups])  # (Bg, Tc)
        cache = self._new_cache()
        try:
            hidden = self._forward(ids, ctx_mask, cache)  # (Bg, Tc, H)
        except OutOfMemoryError:
            self._on_oom(Bg * Tc, Bg)
            half = Bg // 2
            self._score_context_batch(todo, groups[:half], results, progress)
            self._score_context_batch(todo, groups[half:], results, progress)
            return
        self.stats.tokens_forward += sum(lengths)
        self.stats.padded_tokens += Bg * Tc
        last = hidden[torch.arange(Bg, device=self.device), torch.tensor(lengths, device=self.device) - 1]  # (Bg, H)
        del hidden
        row = {i: b for b, g in enumerate(groups) for i in g}  # pair -> its context's cache row
        order = sorted((i for g in groups for i in g), key=lambda i: -len(todo[i][1]))
        pending: list[tuple[int, torch.Tensor]] = []  # (pair, (len(response), H) rows: row t predicts token t)
        pending_rows = 0
        # response inputs: every response token but the last; attention also reads the cached context
        for batch in self._pack(order, lambda i: len(todo[i][1]) - 1, extra=Tc):
            rests = self._group_batch(todo, batch, [row[i] for i in batch], cache, ctx_mask)
            for i, rest in zip(batch, rests):
                first = last[row[i], None]  # (1, H): predicts the response's first token
                pending.append((i, first if rest is None else torch.cat([first, rest])))
                pending_rows += len(todo[i][1])
            if pending_rows >= HEAD_ROWS:
                self._head(todo, pending, results, progress)
                pending, pending_rows = [], 0
        self._head(todo, pending, results, progress)

    def _head(self, todo, pending: list[tuple[int, torch.Tensor]], results, progress) -> None:
        """One LM-head pass over the rows of several responses (big head matmuls even when each response ran alone)."""
        if not pending:
            return
        rows = torch.cat([rows for _, rows in pending])  # (N, H)
        targets = torch.tensor([t for i, _ in pending for t in todo[i][1]], device=self.device)
        for (i, _), lp in zip(pending, self._logprobs(rows, targets).cpu().split([len(r) for _, r in pending])):
            results[i] = lp
        if progress:
            progress(len(targets))

    def _group_batch(self, todo, batch: list[int], cache_rows: list[int], cache, ctx_mask) -> list:
        """Hidden states (len(response) - 1, H) of the batch's response inputs (None for one-token responses);
        splits in two on out-of-memory."""
        responses = [todo[i][1] for i in batch]
        T = max(len(r) for r in responses) - 1
        if T == 0:  # one-token responses: only the context's last position predicts anything
            return [None] * len(batch)
        try:
            return self._group_forward(responses, cache_rows, cache, ctx_mask)
        except OutOfMemoryError:
            self._on_oom(len(batch) * (ctx_mask.shape[1] + T), len(batch))
            half = len(batch) // 2
            return self._group_batch(todo, batch[:half], cache_rows[:half], cache, ctx_mask) + self._group_batch(
                todo, batch[half:], cache_rows[half:], cache, ctx_mask
            )

    def _group_forward(self, responses, cache_rows: list[int], context_cache, ctx_mask) -> list[torch.Tensor]:
        """Responses (each >= 2 tokens long but for padding) on their contexts' rows of the KV cache -> per response,
        the (len - 1, H) hidden states (logits without a split head) of its inputs."""
        B, T = len(responses), max(len(r) for r in responses) - 1
        rows = torch.tensor(cache_rows, device=self.device)
        cache = copy.deepcopy(context_cache)  # the forward appends to the cache: keep the contexts' own intact
        cache.batch_select_indices(rows)  # (B, ...) one cache row per response
        ids, mask = self._right_padded([r[:-1] for r in responses])  # (B, T)
        mask = torch.cat([ctx_mask[rows], mask], 1)  # (B, Tc + T): context padding stays masked
        # positions continue each context (its padding is skipped): row b's token t sits at len(context_b) + t
        position_ids = ctx_mask[rows].sum(1, keepdim=True) + torch.arange(T, device=self.device)  # (B, T)
        self.stats.tokens_forward += sum(len(r) - 1 for r in responses)
        self.stats.padded_tokens += B * T
        hidden = self._forward(ids, mask, cache, position_ids=position_ids)  # (B, T, H)
        return [hidden[b, : len(r) - 1] for b, r in enumerate(responses)]
