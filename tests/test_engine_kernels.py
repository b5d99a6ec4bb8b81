"""LM-head kernels: target log-probs (and the negated predictive entropy) chunked over rows, or blocked over rows
and vocabulary, against a full log_softmax."""

from __future__ import annotations

import pytest
import torch

from cme_reward.engine.kernels import blocked_token_logprobs, token_logprobs


def naive_logprobs(hidden, weight, targets):
    return torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("rows, block", [(2, 3), (7, 11), (1024, 4)])
def test_blocked_token_logprobs_matches_log_softmax(rows, block):
    torch.manual_seed(1)
    hidden, weight = torch.randn(7, 5), torch.randn(11, 5)
    targets = torch.randint(0, 11, (7,))
    got = blocked_token_logprobs(hidden, targets, weight, rows=rows, vocab_block=block)
    torch.testing.assert_close(got, naive_logprobs(hidden, weight, targets))


@pytest.mark.parametrize("chunk", [1, 2, 7, 100])
def test_token_logprobs_matches_log_softmax(chunk):
    torch.manual_seed(0)
    hidden, weight = torch.randn(7, 5), torch.randn(11, 5)
    targets = torch.randint(0, 11, (7,))
    got = token_logprobs(hidden, targets, lambda h: h @ weight.T, chunk=chunk)
    assert got.dtype == torch.float32 and got.shape == (7,)
    torch.testing.assert_close(got, naive_logprobs(hidden, weight, targets))


def test_kernels_entropy_matches_full_softmax():
    torch.manual_seed(0)
    hidden, weight = torch.randn(37, 16), torch.randn(2500, 16) * 3
    targets = torch.randint(0, 2500, (37,))
    logp = torch.log_softmax(hidden @ weight.T, -1)
    want = torch.stack([logp.gather(1, targets[:, None]).squeeze(1), (logp.exp() * logp).sum(-1)], -1)
    chunked = token_logprobs(hidden, targets, lambda h: h @ weight.T, 10, entropy=True)
    blocked = blocked_token_logprobs(hidden, targets, weight, rows=16, vocab_block=300, entropy=True)
    torch.testing.assert_close(chunked, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(blocked, want, atol=1e-4, rtol=1e-4)
    plain = blocked_token_logprobs(hidden, targets, weight, rows=16, vocab_block=300)
    torch.testing.assert_close(blocked[:, 0], plain, atol=1e-5, rtol=1e-6)
