"""A verifier placed by accelerate (`model_kwargs={"device_map": ...}`, here with layers and the LM head offloaded to
disk) is not moved again and scores like the reference: the engine runs the dispatched model whole."""

import pytest

from cme_reward import CrossModelEntropyReward

OFFLOADED = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
             "model.rotary_emb": "cpu", "lm_head": "disk"}  # fmt: skip


def test_offloaded_verifier_scores_like_the_plain_one(qwen_dir, tmp_path):
    pytest.importorskip("accelerate")
    plain = CrossModelEntropyReward(qwen_dir)
    kwargs = {"device_map": OFFLOADED, "offload_folder": str(tmp_path)}
    dispatched = CrossModelEntropyReward(qwen_dir, model_kwargs=kwargs)
    assert dispatched.model.hf_device_map["lm_head"] == "disk" and not dispatched.scorer.split_head
    prompts, responses = ["Hello there", "2 + 2 =", "2 + 2 ="], [" friend of mine", " 4", " four"]
    assert dispatched.score(prompts, responses) == pytest.approx(plain.score(prompts, responses), abs=1e-5)
