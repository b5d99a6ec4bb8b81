"""The verifier as the engine sees it: body/head split, sliding windows, and the load-time probes (pure: they change
nothing), with the engine's fallbacks when a probe says no."""

from __future__ import annotations

import types

import pytest
import torch
from conftest import assert_matches_reference, random_pairs

from cme_reward import CMEConfig
from cme_reward.engine import ScoringEngine
from cme_reward.engine.model import ModelParts, head_matches_model, packing_keeps_sequences_apart, uses_sliding_window


def test_probes_have_no_side_effects(engine_model):
    parts = ModelParts(engine_model)
    weights = {k: v.clone() for k, v in engine_model.state_dict().items()}
    training, grad = engine_model.training, torch.is_grad_enabled()
    verdicts = [(head_matches_model(parts), packing_keeps_sequences_apart(parts, split=True)) for _ in range(2)]
    assert verdicts == [(True, True)] * 2  # the same verdict twice: nothing was left behind to change it
    assert all(torch.equal(v, weights[k]) for k, v in engine_model.state_dict().items())
    assert engine_model.training == training and torch.is_grad_enabled() == grad
    assert not torch.is_inference_mode_enabled()


def test_split_head_reproduces_the_model_logits(engine_model):
    parts = ModelParts(engine_model)
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        split = parts.project(parts.run(ids, torch.ones_like(ids), split=True))
        full = parts.run(ids, torch.ones_like(ids), split=False)
    torch.testing.assert_close(split, full, atol=1e-4, rtol=1e-4)
    assert parts.plain_head == (not engine_model.config.model_type.startswith("gemma"))  # Gemma soft-caps its logits


@pytest.mark.parametrize(
    ("config", "sliding"),
    [
        ({}, False),
        ({"sliding_window": None}, False),
        ({"sliding_window": 4096, "use_sliding_window": False}, False),  # Qwen2 default: the window is off
        ({"sliding_window": 4096}, True),  # Mistral: every layer
        ({"sliding_window": 512, "layer_types": ["full_attention"] * 2}, False),
        ({"sliding_window": 512, "layer_types": ["sliding_attention", "full_attention"]}, True),
        ({"sliding_window": 512, "layer_types": ["chunked_attention"]}, True),
    ],
)
def test_uses_sliding_window(config, sliding):
    assert uses_sliding_window(types.SimpleNamespace(**config)) is sliding


def test_model_with_unsplittable_head_falls_back_to_full_forward(engine_model):
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

    scaled = Scaled(engine_model)
    assert not head_matches_model(ModelParts(scaled))
    scorer = ScoringEngine(scaled)
    assert not scorer.split_head
    pairs = random_pairs(5, seed=2, groups=1)
    assert_matches_reference(scaled, pairs, scorer.score(pairs))


def test_packing_turned_off_when_the_model_mixes_packed_sequences(engine_model, monkeypatch, caplog):
    """A model that ignores position ids would let packed sequences attend to each other: the probe catches it."""
    real = ModelParts.run

    def no_position_ids(self, input_ids, attention_mask, *, split, cache=None, position_ids=None):
        return real(self, input_ids, attention_mask, split=split, cache=cache)

    monkeypatch.setattr(ModelParts, "run", no_position_ids)
    assert not packing_keeps_sequences_apart(ModelParts(engine_model), split=True)
    with caplog.at_level("WARNING"):
        scorer = ScoringEngine(engine_model, CMEConfig(pack_tokens=64))
    assert scorer.pack_tokens == 0
    assert "packing is off" in caplog.text
    pairs = random_pairs(6, seed=4, max_len=12)
    assert_matches_reference(engine_model, pairs, scorer.score(pairs))
