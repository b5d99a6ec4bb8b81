"""Every fast path of the scoring engine against the one-pair-at-a-time float32 reference, its stats, its
out-of-memory handling and `reset()`."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from conftest import VOCAB, assert_matches_reference, random_pairs

from cme_reward import CMEConfig
from cme_reward.engine import OutOfMemoryError, ScoringEngine
from cme_reward.scorer import ScorerStats


def engine(model, **options) -> ScoringEngine:
    return ScoringEngine(model, CMEConfig(**options))


def assert_same(got, expected, atol=1e-5):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_new_engine_has_the_configured_budget_and_zero_stats(engine_model):
    scorer = engine(engine_model, max_tokens_per_batch=123, pack_tokens=64)
    assert scorer.budget == 123 and scorer.stats == ScorerStats()  # the load-time probes count nothing
    assert ScoringEngine(engine_model).config == CMEConfig()


@pytest.mark.parametrize("prefix_sharing, min_shared", [(False, 32), (True, 32), (True, 0)])
@pytest.mark.parametrize("budget, max_padding", [(1, math.inf), (64, 0.3), (100_000, 0.0), (100_000, math.inf)])
def test_matches_reference(engine_model, prefix_sharing, min_shared, budget, max_padding):
    pairs = random_pairs(12, seed=budget, groups=3)
    random.Random(1).shuffle(pairs)
    scorer = engine(engine_model, max_tokens_per_batch=budget, prefix_sharing=prefix_sharing,
                    max_padding=max_padding, min_shared_tokens=min_shared)  # fmt: skip
    assert scorer.split_head
    assert_matches_reference(engine_model, pairs, scorer.score(pairs))


def test_invariant_to_batch_composition_and_order(engine_model):
    pairs = random_pairs(16, seed=5, groups=2)
    base = engine(engine_model, max_tokens_per_batch=1).score(pairs)  # one pair per pass, no padding
    for budget, seed, padding in [(50, 1, math.inf), (300, 2, 0.5), (10_000, 3, math.inf), (10_000, 4, 0.0)]:
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        got = engine(engine_model, max_tokens_per_batch=budget, max_padding=padding).score([pairs[i] for i in order])
        assert_same(got, [base[i] for i in order])


def test_max_rows_caps_each_pass(engine_model):
    pairs = [([1, 2, 3], [4 + k, 5]) for k in range(7)]  # same length, distinct: one pass without a cap
    scorer = engine(engine_model, prefix_sharing=False)
    assert_matches_reference(engine_model, pairs, scorer.score(pairs, max_rows=3))
    assert scorer.stats.passes == 3  # 3 + 3 + 1 rows


def test_progress_reports_every_response_token(engine_model):
    pairs = random_pairs(6, seed=8, groups=2)
    pairs += [pairs[0], pairs[-1]]  # duplicates are scored once and counted each time, as the bar's total does
    seen = []
    engine(engine_model, min_shared_tokens=0).score(pairs, progress=seen.append)
    assert sum(seen) == sum(len(r) for _, r in pairs) and all(n > 0 for n in seen)


def test_single_token_responses_and_contexts(engine_model):
    pairs = [([5], [7]), ([5], [9]), ([5], [7, 8]), ([1, 2, 3], [4]), ([9], [1])]
    assert_matches_reference(engine_model, pairs, ScoringEngine(engine_model).score(pairs))


def test_prefix_sharing_encodes_context_once(engine_model):
    context = list(range(10, 60))
    pairs = [(context, [i, i + 1, i + 2]) for i in range(8)]
    shared = engine(engine_model, prefix_sharing=True)
    plain = engine(engine_model, prefix_sharing=False)
    assert_matches_reference(engine_model, pairs, shared.score(pairs))
    plain.score(pairs)
    assert shared.stats.tokens_forward == len(context) + 8 * 2
    assert plain.stats.tokens_forward == 8 * (len(context) + 2)


@pytest.mark.parametrize("context_len, responses, shared", [(4, 8, 0), (5, 8, 1), (16, 2, 0), (16, 3, 1)])
def test_context_shared_only_when_it_saves_enough(engine_model, context_len, responses, shared):
    """Sharing costs one more forward pass: it is used only when it saves >= min_shared_tokens forwarded tokens."""
    context = list(range(1, 1 + context_len))
    pairs = [(context, [7, k, k + 1]) for k in range(responses)]
    scorer = engine(engine_model, min_shared_tokens=32)
    assert_matches_reference(engine_model, pairs, scorer.score(pairs))
    plain_tokens = responses * (context_len + 2)
    assert scorer.stats.tokens_forward == (context_len + 2 * responses if shared else plain_tokens)


def test_duplicates_scored_once(engine_model):
    pairs = [([1, 2, 3], [4, 5])] * 5 + [([1, 2], [3])] * 3
    scorer = engine(engine_model, deduplicate=True, prefix_sharing=False)
    got = scorer.score(pairs)
    assert scorer.stats.tokens_forward == 4 + 2
    assert_matches_reference(engine_model, pairs, got)
    assert got[0] is not got[1] or torch.equal(got[0], got[1])
    nodedup = engine(engine_model, deduplicate=False, prefix_sharing=False)
    nodedup.score(pairs)
    assert nodedup.stats.tokens_forward == 5 * 4 + 3 * 2


@pytest.mark.parametrize("prefix_sharing, pack_tokens", [(False, 0), (True, 0), (False, 64)])
def test_oom_splits_retries_and_reset_restores_the_budget(engine_model, prefix_sharing, pack_tokens, monkeypatch):
    """An injected CUDA out-of-memory error on any pass with more than 2 sequences: same scores, smaller budget;
    `reset()` brings the configured budget back."""
    pairs = random_pairs(10, seed=9, groups=4, group_size=6)  # 4 contexts: their batched pass splits too
    expected = engine(engine_model, prefix_sharing=prefix_sharing).score(pairs)
    scorer = engine(engine_model, max_tokens_per_batch=100_000, prefix_sharing=prefix_sharing,
                    max_padding=math.inf, pack_tokens=pack_tokens)  # fmt: skip
    real_forward = scorer._forward

    def flaky_forward(ids, mask, *, real, cache=None, position_ids=None):
        sequences = ids.shape[0] if position_ids is None else int((position_ids == 0).sum())  # packed rows
        if sequences > 2:
            raise OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(ids, mask, real=real, cache=cache, position_ids=position_ids)

    monkeypatch.setattr(scorer, "_forward", flaky_forward)
    got = scorer.score(pairs)
    assert scorer.stats.retries > 0
    assert scorer.budget < 100_000
    assert_same(got, expected)
    monkeypatch.undo()
    scorer.reset()
    assert scorer.budget == 100_000 and scorer.stats == ScorerStats()
    assert_same(scorer.score(pairs), expected)
    assert scorer.stats.retries == 0 and scorer.budget == 100_000


def test_oom_on_single_row_raises_clear_error(engine_model, monkeypatch):
    scorer = ScoringEngine(engine_model)

    def always_oom(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(scorer, "_forward", always_oom)
    with pytest.raises(OutOfMemoryError, match="single sequence"):
        scorer.score([([1, 2], [3, 4])])


def test_head_chunks_do_not_change_results(engine_model):
    pairs = random_pairs(6, seed=11)
    whole = engine(engine_model, head_chunk_tokens=100_000).score(pairs)
    assert_same(engine(engine_model, head_chunk_tokens=3).score(pairs), whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocab_blocked_head_matches_chunked_head(engine_model, dtype):
    """Several vocabulary blocks, the last one partial (VOCAB=300, blocks of 64), both dtypes, both engine paths;
    soft-capped heads (Gemma) keep the chunked head."""
    pairs = random_pairs(6, seed=7, groups=2)
    m = copy.deepcopy(engine_model).to(dtype)
    blocked = engine(m, head_vocab_block=64, min_shared_tokens=0)
    chunked = engine(m, head_vocab_block=0, min_shared_tokens=0)
    assert (blocked.head_vocab_block == 64) == (not getattr(m.config, "final_logit_softcapping", None))
    assert chunked.head_vocab_block == 0
    assert_same(blocked.score(pairs), chunked.score(pairs), atol=1e-5 if dtype == torch.float32 else 2e-2)


def test_empty_context_rejected(engine_model):
    with pytest.raises(ValueError, match="context"):
        ScoringEngine(engine_model).score([([], [1, 2])])


def test_padding_bound_and_budget(engine_model):
    """Batches hold at most `max_padding` padding and at most the token budget; the context cache is reused."""
    lengths = [30, 29, 20, 10, 10, 10, 3]
    pairs = [([1] * 5, [2 + k] * n) for k, n in enumerate(lengths)]  # distinct pairs: no deduplication
    tight = engine(engine_model, prefix_sharing=False, max_padding=0.0, pack_tokens=0)
    tight.score(pairs)
    assert tight.stats.padded_tokens == tight.stats.tokens_forward  # no padding at all
    assert tight.stats.passes == len(set(lengths))  # equal lengths still share a pass
    loose = engine(
        engine_model, prefix_sharing=False, max_padding=math.inf, max_tokens_per_batch=10_000, pack_tokens=0
    )
    loose.score(pairs)
    assert loose.stats.passes == 1 and loose.stats.padded_tokens == 7 * 34
    shared = engine(engine_model, prefix_sharing=True, max_padding=0.0, min_shared_tokens=0, pack_tokens=0)
    assert_matches_reference(engine_model, pairs, shared.score(pairs))
    assert shared.stats.passes == 1 + len(set(lengths))  # the context is encoded once for all sub-batches
    assert shared.stats.tokens_forward == 5 + sum(n - 1 for n in lengths)


def test_short_pairs_are_packed_without_padding(engine_model):
    """Pairs of 9-39 tokens go end to end into rows of at most 64 tokens; each attends only to itself."""
    pairs = random_pairs(10, seed=21, max_len=20)
    lengths = [len(c) + len(r) - 1 for c, r in pairs]
    scorer = engine(engine_model, pack_tokens=64, prefix_sharing=False)
    assert scorer.pack_tokens == 64
    assert_matches_reference(engine_model, pairs, scorer.score(pairs))
    assert scorer.stats.padded_tokens == scorer.stats.tokens_forward == sum(lengths)  # no padding, nothing twice
    assert scorer.stats.passes >= math.ceil(sum(lengths) / 64)
    assert scorer.stats.passes < len(set(lengths))  # fewer passes than same-length batching needs
    assert_same(scorer.score(pairs), engine(engine_model, pack_tokens=0, prefix_sharing=False).score(pairs))


@pytest.mark.parametrize("padding", [0.0, math.inf])
def test_several_groups_share_a_context_pass(engine_model, padding):
    """Contexts of several GRPO groups are right-padded into one pass where padding is allowed (GPU default); models
    with sliding-window layers only batch contexts of one length. Responses of every length, one-token ones too."""
    rng = random.Random(5)
    contexts = [[rng.randrange(VOCAB) for _ in range(n)] for n in (30, 12, 30, 21)]
    pairs = [(c, [rng.randrange(VOCAB) for _ in range(n)]) for c in contexts for n in (1, 4, 9, 17)]
    random.Random(2).shuffle(pairs)
    scorer = engine(engine_model, max_padding=padding, max_tokens_per_batch=100_000, min_shared_tokens=0)
    assert_matches_reference(engine_model, pairs, scorer.score(pairs))
    context_tokens = sum(len(c) for c in contexts)
    assert scorer.stats.tokens_forward == context_tokens + sum(len(r) - 1 for _, r in pairs)
    response_passes = 1 if padding else 3  # response inputs of 3, 8 and 16 tokens (one-token responses need none)
    context_passes = 1 if padding and not scorer.sliding_window else 3  # else one per context length (30, 21, 12)
    assert scorer.stats.passes == context_passes * (1 + response_passes)
    assert scorer.sliding_window == (engine_model.config.model_type.startswith("gemma"))
