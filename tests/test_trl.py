"""Real TRL trainers with the reward in `reward_funcs` (tiny policy with its own tokenizer, CPU, a few steps)."""

import math

import pytest
import torch
from conftest import trainer_args
from datasets import Dataset
from tiny_models import build_model, build_tokenizer

from cme_reward import CrossModelEntropyReward

pytestmark = pytest.mark.slow

PROBE = (["The capital of France is", "Write a poem."], [" Paris.", " The sea is blue."])


def conversational_dataset(n=8):
    questions = ["What is 2 + 2?", "Name a colour.", "Write a poem about the sea.", "Capital of France?"]
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": questions[i % 4]}] for i in range(n)]})


def tiny_policy():
    tok = build_tokenizer(vocab_size=300, bos=False)  # not the verifier's tokenizer: different vocabulary
    model = build_model("llama", len(tok), seed=7)
    model.config.pad_token_id, model.config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def check_run(trainer, reward, before):
    policy_before = [p.detach().clone() for p in trainer.model.parameters()]
    verifier_weights = [p.detach().clone() for p in reward.model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/cme/mean" in h]
    assert len(logs) == 2
    assert all(math.isfinite(h["rewards/cme/mean"]) for h in logs)
    assert all(h["cme/verifier_tokens"] > 0 for h in logs)
    # the policy learned, the verifier did not move and is not in the optimizer
    assert any(not torch.equal(a, b) for a, b in zip(policy_before, trainer.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(verifier_weights, reward.model.parameters()))
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in reward.model.parameters()}
    assert reward.score(*PROBE) == before


@pytest.mark.parametrize(("kind", "extra"), [("GRPO", {}), ("RLOO", {"beta": 0.0})], ids=["grpo", "rloo"])
def test_trainer_with_the_reward(qwen_dir, tmp_path, kind, extra):
    import trl

    reward = CrossModelEntropyReward(qwen_dir, name="cme")
    before = reward.score(*PROBE)
    model, tok = tiny_policy()
    config = getattr(trl, f"{kind}Config")(**trainer_args(tmp_path, **extra))
    trainer = getattr(trl, f"{kind}Trainer")(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=conversational_dataset(),
        processing_class=tok,
    )
    check_run(trainer, reward, before)
