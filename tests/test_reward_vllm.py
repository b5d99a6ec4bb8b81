"""`CrossModelEntropyReward(..., backend="vllm")`: the same scores as the in-process engine, through a loopback fake
vLLM server that answers in vLLM's format."""

import logging

import pytest

pytest.importorskip("httpx")

from cme_reward import CrossModelEntropyReward  # noqa: E402

PROMPTS = ["The capital of France is", "Héllo wörld 東京", [{"role": "user", "content": "2 + 2?"}]] * 2
RESPONSES = [" Paris.", " Привет мир 🙂", "4, of course."] + [" Lyon?", " naïve café", "Five."]


def test_same_scores_as_in_process(fake_vllm, qwen_dir, reward):
    remote = CrossModelEntropyReward(qwen_dir, backend="vllm", base_url=fake_vllm.url)
    local = reward.score(PROMPTS, RESPONSES)
    assert remote.score(PROMPTS, RESPONSES) == pytest.approx(local, abs=1e-5)
    assert remote(prompts=PROMPTS, completions=RESPONSES) == pytest.approx(local, abs=1e-5)
    assert remote.model is None and "base_url=" in repr(remote)


def test_entropy_is_refused_with_a_reason(fake_vllm, qwen_dir):
    with pytest.raises(ValueError, match="metric='entropy'.*prompt_logprobs"):
        CrossModelEntropyReward(qwen_dir, backend="vllm", base_url=fake_vllm.url, metric="entropy")


def test_backend_needs_a_url(qwen_dir):
    with pytest.raises(ValueError, match="needs base_url"):
        CrossModelEntropyReward(qwen_dir, backend="vllm")


def test_options_the_server_decides_are_warned_once(fake_vllm, qwen_dir, monkeypatch, caplog):
    from cme_reward.backends import factory

    monkeypatch.setattr(factory, "_warned", set())  # once per process: start this test from none
    with caplog.at_level(logging.WARNING, logger="cme_reward.backends.factory"):
        for _ in range(2):
            CrossModelEntropyReward(
                qwen_dir, backend="vllm", base_url=fake_vllm.url, device="cpu", prefix_sharing=False
            )
        CrossModelEntropyReward(qwen_dir, backend="vllm", base_url=fake_vllm.url)  # nothing ignored: no warning
        CrossModelEntropyReward(qwen_dir, backend="vllm", base_url=fake_vllm.url, dtype="float32")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "backend='vllm' ignores prefix_sharing, device: the vLLM server batches and places the model itself",
        "backend='vllm' ignores dtype: the vLLM server batches and places the model itself",
    ]
