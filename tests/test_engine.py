"""Every fast path of the engine against the one-pair-at-a-time float32 reference."""

import copy
import math
import random

import pytest
import torch
from tiny_models import build_model

from cme_reward.engine import OutOfMemoryError, ScoringEngine
from cme_reward.head import blocked_token_logprobs, token_logprobs
from cme_reward.reference import reference_token_logprobs

VOCAB = 300


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma3"])
def model(request):
    return build_model(request.param, VOCAB, seed=3, layers=2)


def random_pairs(n, *, seed=0, groups=0, group_size=4, max_len=40):
    """Independent pairs, plus `groups` GRPO-style groups of `group_size` responses sharing one context."""
    rng = random.Random(seed)

    def ids(lo, hi):
        return [rng.randrange(VOCAB) for _ in range(rng.randint(lo, hi))]

    pairs = [(ids(1, max_len), ids(1, max_len)) for _ in range(n)]
    for _ in range(groups):
        context = ids(1, max_len)
        pairs += [(context, ids(1, max_len)) for _ in range(group_size)]
    return pairs


def assert_matches_reference(model, pairs, got, atol=1e-4):
    assert len(got) == len(pairs)
    for (c, r), lp in zip(pairs, got):
        ref = reference_token_logprobs(model, c, r)
        assert lp.dtype == torch.float32 and lp.shape == (len(r),)
        torch.testing.assert_close(lp, ref, atol=atol, rtol=0)


@pytest.mark.parametrize("prefix_sharing, min_shared", [(False, 32), (True, 32), (True, 0)])
@pytest.mark.parametrize("budget, max_padding", [(1, math.inf), (64, 0.3), (100_000, 0.0), (100_000, math.inf)])
def test_matches_reference(model, prefix_sharing, min_shared, budget, max_padding):
    pairs = random_pairs(12, seed=budget, groups=3)
    random.Random(1).shuffle(pairs)
    engine = ScoringEngine(
        model,
        max_tokens_per_batch=budget,
        prefix_sharing=prefix_sharing,
        max_padding=max_padding,
        min_shared_tokens=min_shared,
    )
    assert engine.split_head
    assert_matches_reference(model, pairs, engine.score(pairs))


def test_invariant_to_batch_composition_and_order(model):
    pairs = random_pairs(16, seed=5, groups=2)
    base = ScoringEngine(model, max_tokens_per_batch=1).score(pairs)  # one pair per pass, no padding
    for budget, seed, padding in [(50, 1, math.inf), (300, 2, 0.5), (10_000, 3, math.inf), (10_000, 4, 0.0)]:
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        engine = ScoringEngine(model, max_tokens_per_batch=budget, max_padding=padding)
        got = engine.score([pairs[i] for i in order])
        for k, i in enumerate(order):
            torch.testing.assert_close(got[k], base[i], atol=1e-5, rtol=0)


def test_single_token_responses_and_contexts(model):
    pairs = [([5], [7]), ([5], [9]), ([5], [7, 8]), ([1, 2, 3], [4]), ([9], [1])]
    assert_matches_reference(model, pairs, ScoringEngine(model).score(pairs))


def test_prefix_sharing_encodes_context_once(model):
    context = list(range(10, 60))
    pairs = [(context, [i, i + 1, i + 2]) for i in range(8)]
    shared = ScoringEngine(model, prefix_sharing=True)
    plain = ScoringEngine(model, prefix_sharing=False)
    assert_matches_reference(model, pairs, shared.score(pairs))
    plain.score(pairs)
    assert shared.stats.tokens_forward == len(context) + 8 * 2
    assert plain.stats.tokens_forward == 8 * (len(context) + 2)


@pytest.mark.parametrize("context_len, responses, shared", [(4, 8, 0), (5, 8, 1), (16, 2, 0), (16, 3, 1)])
def test_context_shared_only_when_it_saves_enough(model, context_len, responses, shared):
    """Sharing costs one more forward pass: it is used only when it saves >= min_shared_tokens forwarded tokens."""
    context = list(range(1, 1 + context_len))
    pairs = [(context, [7, k, k + 1]) for k in range(responses)]
    engine = ScoringEngine(model, min_shared_tokens=32)
    assert_matches_reference(model, pairs, engine.score(pairs))
    plain_tokens = responses * (context_len + 2)
    assert engine.stats.tokens_forward == (context_len + 2 * responses if shared else plain_tokens)


def test_duplicates_scored_once(model):
    pairs = [([1, 2, 3], [4, 5])] * 5 + [([1, 2], [3])] * 3
    engine = ScoringEngine(model, deduplicate=True, prefix_sharing=False)
    got = engine.score(pairs)
    assert engine.stats.tokens_forward == 4 + 2
    assert_matches_reference(model, pairs, got)
    assert got[0] is not got[1] or torch.equal(got[0], got[1])
    nodedup = ScoringEngine(model, deduplicate=False, prefix_sharing=False)
    nodedup.score(pairs)
    assert nodedup.stats.tokens_forward == 5 * 4 + 3 * 2


@pytest.mark.parametrize("prefix_sharing, pack_tokens", [(False, 0), (True, 0), (False, 64)])
def test_oom_splits_and_retries(model, prefix_sharing, pack_tokens, monkeypatch):
    """An injected CUDA out-of-memory error on any pass with more than 2 sequences: same scores, smaller budget."""
    pairs = random_pairs(10, seed=9, groups=4, group_size=6)  # 4 contexts: their batched pass splits too
    expected = ScoringEngine(model, prefix_sharing=prefix_sharing).score(pairs)
    engine = ScoringEngine(
        model,
        max_tokens_per_batch=100_000,
        prefix_sharing=prefix_sharing,
        max_padding=math.inf,
        pack_tokens=pack_tokens,
    )
    real_forward = engine._forward

    def flaky_forward(input_ids, attention_mask, cache=None, position_ids=None):
        sequences = input_ids.shape[0] if position_ids is None else int((position_ids == 0).sum())  # packed rows
        if sequences > 2:
            raise OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(input_ids, attention_mask, cache, position_ids)

    monkeypatch.setattr(engine, "_forward", flaky_forward)
    got = engine.score(pairs)
    assert engine.stats.oom_splits > 0
    assert engine.max_tokens_per_batch < 100_000
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_oom_on_single_row_raises_clear_error(model, monkeypatch):
    engine = ScoringEngine(model)

    def always_oom(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine, "_forward", always_oom)
    with pytest.raises(OutOfMemoryError, match="single sequence"):
        engine.score([([1, 2], [3, 4])])


def test_head_chunks_do_not_change_results(model):
    pairs = random_pairs(6, seed=11)
    whole = ScoringEngine(model, head_chunk_tokens=100_000).score(pairs)
    chunked = ScoringEngine(model, head_chunk_tokens=3).score(pairs)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocab_blocked_head_matches_chunked_head(model, dtype):
    """Several vocabulary blocks, the last one partial (VOCAB=300, blocks of 64), both dtypes, both engine paths;
    soft-capped heads (Gemma) keep the chunked head."""
    pairs = random_pairs(6, seed=7, groups=2)
    m = copy.deepcopy(model).to(dtype)
    blocked = ScoringEngine(m, head_vocab_block=64, min_shared_tokens=0)
    chunked = ScoringEngine(m, head_vocab_block=0, min_shared_tokens=0)
    assert (blocked.head_vocab_block == 64) == (not getattr(m.config, "final_logit_softcapping", None))
    assert chunked.head_vocab_block == 0
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(blocked.score(pairs), chunked.score(pairs)):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("rows, block", [(2, 3), (7, 11), (1024, 4)])
def test_blocked_token_logprobs_matches_log_softmax(rows, block):
    torch.manual_seed(1)
    hidden, weight = torch.randn(7, 5), torch.randn(11, 5)
    targets = torch.randint(0, 11, (7,))
    got = blocked_token_logprobs(hidden, targets, weight, rows=rows, vocab_block=block)
    ref = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(got, ref)


def test_token_logprobs_matches_log_softmax():
    torch.manual_seed(0)
    hidden, weight = torch.randn(7, 5), torch.randn(11, 5)
    targets = torch.randint(0, 11, (7,))
    got = token_logprobs(hidden, targets, lambda h: h @ weight.T, chunk=2)
    ref = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(got, ref)


def test_model_with_unsplittable_head_falls_back_to_full_forward(model, monkeypatch):
    """A model whose logits are not lm_head(hidden) (e.g. an unknown logit scale) is scored through forward()."""

    class Scaled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def get_decoder(self):
            return self.inner.get_decoder()

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            out.logits = out.logits * 0.5
            return out

    scaled = Scaled(model)
    engine = ScoringEngine(scaled)
    assert not engine.split_head
    pairs = random_pairs(5, seed=2, groups=1)
    assert_matches_reference(scaled, pairs, engine.score(pairs))


def test_empty_context_rejected(model):
    with pytest.raises(ValueError, match="context"):
        ScoringEngine(model).score([([], [1, 2])])


def test_padding_bound_and_budget(model):
    """Batches hold at most `max_padding` padding and at most the token budget; the context cache is reused."""
    lengths = [30, 29, 20, 10, 10, 10, 3]
    pairs = [([1] * 5, [2 + k] * n) for k, n in enumerate(lengths)]  # distinct pairs: no deduplication
    tight = ScoringEngine(model, prefix_sharing=False, max_padding=0.0, pack_tokens=0)
    tight.score(pairs)
    assert tight.stats.padded_tokens == tight.stats.tokens_forward  # no padding at all
    assert tight.stats.forward_passes == len(set(lengths))  # equal lengths still share a pass
    loose = ScoringEngine(
        model, prefix_sharing=False, max_padding=math.inf, max_tokens_per_batch=10_000, pack_tokens=0
    )
    loose.score(pairs)
    assert loose.stats.forward_passes == 1 and loose.stats.padded_tokens == 7 * 34
    shared = ScoringEngine(model, prefix_sharing=True, max_padding=0.0, min_shared_tokens=0, pack_tokens=0)
    assert_matches_reference(model, pairs, shared.score(pairs))
    assert shared.stats.forward_passes == 1 + len(set(lengths))  # the context is encoded once for all sub-batches
    assert shared.stats.tokens_forward == 5 + sum(n - 1 for n in lengths)


def test_short_pairs_are_packed_without_padding(model):
    """Pairs of 9-39 tokens go end to end into rows of at most 64 tokens; each attends only to itself."""
    pairs = random_pairs(10, seed=21, max_len=20)
    lengths = [len(c) + len(r) - 1 for c, r in pairs]
    engine = ScoringEngine(model, pack_tokens=64, prefix_sharing=False)
    assert engine.pack_tokens == 64
    assert_matches_reference(model, pairs, engine.score(pairs))
    assert engine.stats.padded_tokens == engine.stats.tokens_forward == sum(lengths)  # no padding, nothing twice
    assert engine.stats.forward_passes >= math.ceil(sum(lengths) / 64)
    assert engine.stats.forward_passes < len(set(lengths))  # fewer passes than same-length batching needs
    off = ScoringEngine(model, pack_tokens=0, prefix_sharing=False)
    for a, b in zip(engine.score(pairs), off.score(pairs)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_packing_turned_off_when_the_model_mixes_packed_sequences(model, monkeypatch, caplog):
    """A model that ignores position ids would let packed sequences attend to each other: the probe catches it."""
    real = ScoringEngine._forward

    def no_position_ids(self, input_ids, attention_mask, cache=None, position_ids=None):
        return real(self, input_ids, attention_mask, cache)

    monkeypatch.setattr(ScoringEngine, "_forward", no_position_ids)
    with caplog.at_level("WARNING"):
        engine = ScoringEngine(model, pack_tokens=64)
    assert engine.pack_tokens == 0
    assert "packing is off" in caplog.text
    pairs = random_pairs(6, seed=4, max_len=12)
    assert_matches_reference(model, pairs, engine.score(pairs))


@pytest.mark.parametrize("padding", [0.0, math.inf])
def test_several_groups_share_a_context_pass(model, padding):
    """Contexts of several GRPO groups are right-padded into one pass where padding is allowed (GPU default); models
    with sliding-window layers only batch contexts of one length. Responses of every length, one-token ones too."""
    rng = random.Random(5)
    contexts = [[rng.randrange(VOCAB) for _ in range(n)] for n in (30, 12, 30, 21)]
    pairs = [(c, [rng.randrange(VOCAB) for _ in range(n)]) for c in contexts for n in (1, 4, 9, 17)]
    random.Random(2).shuffle(pairs)
    engine = ScoringEngine(model, max_padding=padding, max_tokens_per_batch=100_000, min_shared_tokens=0)
    assert_matches_reference(model, pairs, engine.score(pairs))
    context_tokens = sum(len(c) for c in contexts)
    assert engine.stats.tokens_forward == context_tokens + sum(len(r) - 1 for _, r in pairs)
    response_passes = 1 if padding else 3  # response inputs of 3, 8 and 16 tokens (one-token responses need none)
    context_passes = 1 if padding and not engine.sliding_window else 3  # else one per context length (30, 21, 12)
    assert engine.stats.forward_passes == context_passes * (1 + response_passes)
    assert engine.sliding_window == (model.config.model_type.startswith("gemma"))
