"""Shared fixtures and helpers: tiny verifiers saved to disk (no hub), a loaded reward, the reloaded model and
tokenizer for reference computations, and JSON Lines read/write helpers (`from conftest import write_jsonl`)."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

# The tests' models are tiny: a second intra-op thread only adds contention on a shared machine (about 3x slower on
# 2 busy cores). OMP_NUM_THREADS, when set, wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_model, load_tokenizer, save_verifier  # noqa: E402

VOCAB = 300  # vocabulary of the engine tests' tiny models


def write_jsonl(path: Path, rows: list) -> Path:
    """`rows` as JSON Lines (UTF-8, non-ASCII kept) at `path`; returns `path`."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON Lines file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def reload(path: Path):
    """`(model, tokenizer)` of a saved verifier as reloaded from disk, the model in eval mode: what a reference
    computation must use (not the objects that were saved)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(path)


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory) -> Path:
    """A tiny random-init Qwen2 verifier with a BOS-adding, chat-templated tokenizer, saved to disk."""
    return save_verifier(tmp_path_factory.mktemp("qwen2"), "qwen2", seed=0)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny random-init Llama verifier whose tokenizer has no BOS and no chat template."""
    return save_verifier(tmp_path_factory.mktemp("llama"), "llama", seed=1, bos=False, chat_template=False)


@pytest.fixture(scope="session")
def reward(qwen_dir):
    """`CrossModelEntropyReward` on the tiny Qwen2 verifier (shared: tests must not change its settings for good)."""
    from cme_reward import CrossModelEntropyReward

    return CrossModelEntropyReward(qwen_dir, max_tokens_per_batch=256, show_progress_bar=False)


@pytest.fixture(scope="session")
def llama_reward(llama_dir):
    """`CrossModelEntropyReward` on the tiny Llama verifier (no BOS, no chat template)."""
    from cme_reward import CrossModelEntropyReward

    return CrossModelEntropyReward(llama_dir, show_progress_bar=False)


@pytest.fixture(scope="session")
def disk(qwen_dir):
    """The Qwen2 verifier and tokenizer as reloaded from disk."""
    return reload(qwen_dir)


@pytest.fixture(scope="session")
def llama_disk(llama_dir):
    """The Llama verifier and tokenizer as reloaded from disk."""
    return reload(llama_dir)


@pytest.fixture(scope="session")
def fake_vllm(qwen_dir):
    """A loopback fake of `vllm serve` (tests/fake_vllm.py) serving the tiny Qwen2 verifier; `.reset()` clears its
    counters and injected failures."""
    from fake_vllm import FakeVLLMServer

    with FakeVLLMServer(qwen_dir) as server:
        yield server


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma3"])
def engine_model(request):
    """A tiny random-init causal LM of each architecture the engine has paths for (Gemma 3: sliding windows and
    soft-capped logits), vocabulary `VOCAB`."""
    return build_model(request.param, VOCAB, seed=3, layers=2)


def random_pairs(n: int, *, seed: int = 0, groups: int = 0, group_size: int = 4, max_len: int = 40) -> list:
    """Independent token-id pairs, plus `groups` GRPO-style groups of `group_size` responses sharing one context."""
    rng = random.Random(seed)

    def ids(lo, hi):
        return [rng.randrange(VOCAB) for _ in range(rng.randint(lo, hi))]

    pairs = [(ids(1, max_len), ids(1, max_len)) for _ in range(n)]
    for _ in range(groups):
        context = ids(1, max_len)
        pairs += [(context, ids(1, max_len)) for _ in range(group_size)]
    return pairs


def assert_matches_reference(model, pairs, got, atol: float = 1e-4) -> None:
    """`got[i]` is the float32 `(len(response),)` log-probs of `pairs[i]` computed the plain way."""
    from cme_reward.reference import reference_token_logprobs

    assert len(got) == len(pairs)
    for (c, r), lp in zip(pairs, got):
        ref = reference_token_logprobs(model, c, r)
        assert lp.dtype == torch.float32 and lp.shape == (len(r),)
        torch.testing.assert_close(lp, ref, atol=atol, rtol=0)


def trainer_args(output_dir: Path | str, **overrides) -> dict:
    """Keyword arguments of a TRL trainer config for a tiny CPU run: 4 generations of 8 tokens, 2 steps, no saving,
    no reporting; `overrides` replace or add entries."""
    return {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "learning_rate": 1e-3,
        **overrides,
    }
