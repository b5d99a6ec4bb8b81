"""Data-parallel GRPO with the reward: 2 torchrun processes (CPU, gloo), each scoring only its own completions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny_models import save_verifier
from torchrun import torchrun

from cme_reward import CrossModelEntropyReward

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("dist_grpo_worker.py")
NPROC = 2
TIMEOUT_S = 75  # the whole module must stay under 90 s on 2 shared cores


def key(prompt, completion) -> str:
    return json.dumps([prompt, completion], sort_keys=True)


def close(a: float | None, b: float | None, tol: float = 1e-5) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, abs_tol=tol))


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    """Launch the worker under torchrun once; returns (verifier dir, {rank: calls}, {rank: summary})."""
    root = tmp_path_factory.mktemp("dist")
    verifier = save_verifier(root / "verifier", "qwen2", seed=0)
    policy = save_verifier(root / "policy", "llama", seed=7, bos=False)  # own tokenizer settings, own weights
    out = root / "out"
    out.mkdir()
    args = ["--policy", str(policy), "--verifier", str(verifier), "--out", str(out), "--workdir", str(root / "work")]
    torchrun(WORKER, args, nproc=NPROC, timeout=TIMEOUT_S)
    calls = {r: json.loads((out / f"calls_rank{r}.json").read_text()) for r in range(NPROC)}
    summaries = {r: json.loads((out / f"summary_rank{r}.json").read_text()) for r in range(NPROC)}
    return verifier, calls, summaries


def test_two_processes_ran_with_gloo_on_cpu(dist_run):
    _, calls, summaries = dist_run
    assert sorted(summaries) == list(range(NPROC))
    assert len({s["pid"] for s in summaries.values()}) == NPROC
    for rank, summary in summaries.items():
        assert summary["rank"] == summary["local_rank"] == rank
        assert summary["world_size"] == NPROC
        assert summary["backend"] == "gloo"
        assert summary["reward_device"] == "cpu"
        assert len(calls[rank]) == 1  # max_steps=1, one generation batch
        for call in calls[rank]:
            assert call["rank"] == call["local_rank"] == rank
            assert call["pid"] == summary["pid"]  # the reward ran inside this rank's process
            assert call["device"] == "cpu"


def test_each_rank_scores_only_its_own_completions(dist_run):
    _, calls, summaries = dist_run
    gathered = summaries[0]["gathered"]
    assert summaries[1]["gathered"] == gathered  # every rank sees the same gathered step
    n = len(gathered["prompts"])
    assert n == 4 * NPROC  # per_device_train_batch_size * processes
    per_rank = {
        r: [key(p, c) for call in calls[r] for p, c in zip(call["prompts"], call["completions"])] for r in calls
    }
    assert all(len(pairs) == n // NPROC for pairs in per_rank.values())
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint: no completion is scored twice
    # together they are the step's completions, in TRL's gather order (rank 0's slice, then rank 1's)
    assert per_rank[0] + per_rank[1] == [key(p, c) for p, c in zip(gathered["prompts"], gathered["completions"])]
    # and the rewards TRL gathered for group normalisation are the ones each rank returned
    local_rewards = [r for rank in range(NPROC) for call in calls[rank] for r in call["rewards"]]
    assert all(close(a, b) for a, b in zip(local_rewards, gathered["rewards"], strict=True))


def test_rank_rewards_match_single_process_scores(dist_run):
    verifier, calls, _ = dist_run
    pairs = [(p, c, r) for rank in range(NPROC) for call in calls[rank] for p, c, r in zip(*(call[k] for k in (
        "prompts", "completions", "rewards")))]  # fmt: skip
    reference = CrossModelEntropyReward(verifier).score([p for p, _, _ in pairs], [c for _, c, _ in pairs])
    assert sum(r is not None for _, _, r in pairs) > 0
    for (_, completion, got), want in zip(pairs, reference, strict=True):
        assert close(got, want), (completion, got, want)
