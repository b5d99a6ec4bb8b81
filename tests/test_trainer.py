"""DenseGRPOTrainer: per-position group normalisation (pure functions) and real TRL GRPO steps on a tiny CPU policy."""

from __future__ import annotations

import inspect
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_models import build_model, build_tokenizer, load_tokenizer, save_verifier
from torchrun import torchrun
from trl import GRPOConfig, GRPOTrainer

from cme_reward.training.advantages import (
    check_dense_values,
    dense_advantages,
    normalize_dense,
    pad_dense,
    scalar_advantages,
)
from cme_reward.training.trainer import DENSE_LOSS_TYPES, DenseGRPOConfig, DenseGRPOTrainer, is_dense_reward

# ---- test rewards (module-level, picklable) ---------------------------------------------------------------------


def token_value(token: int) -> float:
    return ((token * 7919) % 17) / 4.0 - 2.0


class IdDense:
    """Dense reward whose value of a token is a fixed function of its id; `None` for local indices in `none_at`."""

    __name__ = "id_dense"

    def __init__(self, none_at: tuple[int, ...] = (), extra: int = 0):
        self.none_at, self.extra, self.calls = set(none_at), extra, []

    def values(self, completion_ids):
        return [
            None if j in self.none_at else [token_value(t) for t in ids] + [0.0] * self.extra
            for j, ids in enumerate(completion_ids)
        ]

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        return [sum(v) / len(v) for v in self.values(completion_ids)]

    def score_dense(self, prompts, completions, completion_ids, policy_tokenizer, **kwargs):
        self.calls.append({"tokenizer": policy_tokenizer, "kwargs": set(kwargs), "n": len(completion_ids)})
        return self.values(completion_ids)


class ConstantDense:
    """Every token of a completion gets the completion's scalar reward."""

    __name__ = "constant_dense"

    @staticmethod
    def scalar(ids) -> float:
        return (sum(ids) % 13) / 3.0

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        return [self.scalar(ids) for ids in completion_ids]

    def score_dense(self, prompts, completions, completion_ids, policy_tokenizer, **kwargs):
        return [[self.scalar(ids)] * len(ids) for ids in completion_ids]


def first_token(completion_ids, **kwargs):
    return [float(ids[0] % 5) for ids in completion_ids]


def length_reward(completion_ids, **kwargs):
    return [len(ids) / 4.0 for ids in completion_ids]


# ---- naive references -------------------------------------------------------------------------------------------


def naive_dense(values, group_size, normalization, eps, std="sample"):
    """Per-position loops over ragged rows; `None` rows stay `None`, `None` values get 0 and are left out."""
    out = [None if v is None else [0.0] * len(v) for v in values]
    width = max((len(v) for v in values if v is not None), default=0)
    for start in range(0, len(values), group_size):
        for t in range(width):
            members = [i for i in range(start, start + group_size)
                       if values[i] is not None and t < len(values[i]) and values[i][t] is not None]  # fmt: skip
            if len(members) < 2:
                continue
            xs = [values[i][t] for i in members]
            mean = sum(xs) / len(xs)
            dof = len(xs) - 1 if std == "sample" else len(xs)
            spread = math.sqrt(sum((x - mean) ** 2 for x in xs) / dof)
            for i in members:
                centered = values[i][t] - mean
                out[i][t] = centered / (spread + eps) if normalization == "group_std" else centered
    return out


def assert_rows_close(got, want, tol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert len(g) == len(w) and all(math.isfinite(x) for x in g)
            assert g == pytest.approx(w, abs=tol, rel=tol)


def naive_scalar(rewards, weights, group_size):
    """TRL's default (sum_then_normalize, scale_rewards="group") written as loops."""
    out = []
    for start in range(0, len(rewards), group_size):
        rows = rewards[start : start + group_size]
        summed = [
            None if all(math.isnan(x) for x in row) else sum(w * x for w, x in zip(weights, row) if not math.isnan(x))
            for row in rows
        ]
        xs = [s for s in summed if s is not None]
        mean = sum(xs) / len(xs) if xs else 0.0
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
        out += [0.0 if s is None or math.isnan(std) else (s - mean) / (std + 1e-4) for s in summed]
    return torch.tensor(out)


def random_values(rng, batch, max_len, none_rate=0.15, missing_rate=0.0):
    """Rows of float32-representable values (the dtype dense values travel in), some `None`, some empty; with
    `missing_rate`, some values `None` (tokens without a value)."""

    def value():
        return None if rng.random() < missing_rate else float(np.float32(rng.uniform(-3, 3)))

    return [None if rng.random() < none_rate else [value() for _ in range(rng.randint(0, max_len))]
            for _ in range(batch)]  # fmt: skip


# ---- pure functions (fast) --------------------------------------------------------------------------------------


@pytest.mark.parametrize("std", ["sample", "population"])
@pytest.mark.parametrize("normalization", ["group_std", "group_mean"])
@pytest.mark.parametrize("group_size", [2, 3, 4])
def test_dense_advantages_match_per_position_loop(normalization, group_size, std):
    rng = random.Random(group_size)
    for _ in range(20):
        values = random_values(rng, group_size * rng.randint(1, 4), max_len=7, missing_rate=0.2)
        if rng.random() < 0.3:  # ties at a position: std 0 -> advantage 0, never NaN
            for v in values:
                if v:
                    v[0] = 1.5
        got = dense_advantages(values, group_size, normalization=normalization, eps=1e-4, std=std)
        assert_rows_close(got, naive_dense(values, group_size, normalization, 1e-4, std))


def test_dense_advantages_edge_cases():
    # position 2 is covered by a single completion, row 3 is None: both get 0 from the dense part
    values = [[1.0, 2.0, 9.0], [3.0, 4.0], [5.0, 0.0], None]
    adv = dense_advantages(values, 4, normalization="group_std", eps=1e-4)
    assert adv[0][2] == 0 and adv[3] is None
    # position 0: values 1, 3, 5 -> mean 3, sample std 2 (Bessel, like TRL's nanstd), population std 1.633
    assert [row[0] for row in adv[:3]] == pytest.approx([-2.0 / (2.0 + 1e-4), 0.0, 2.0 / (2.0 + 1e-4)])
    population = dense_advantages(values, 4, std="population")
    sigma = math.sqrt(8 / 3)
    assert [row[0] for row in population[:3]] == pytest.approx([-2.0 / (sigma + 1e-4), 0.0, 2.0 / (sigma + 1e-4)])
    adv = dense_advantages(values, 4, normalization="group_mean")
    assert [row[1] for row in adv[:3]] == pytest.approx([0.0, 2.0, -2.0])
    assert dense_advantages([None, None], 2) == [None, None]
    # a token without a value (None: the policy's EOS) is not compared with real tokens and gets 0
    adv = dense_advantages([[-1.0, None], [-3.0, -2.0], [-2.0, -4.0, -1.0]], 3, normalization="group_mean")
    assert adv == [[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0, 0.0]]
    # an empty completion scored empty_value below its group: a negative advantage; None: no dense part at all
    adv = dense_advantages([[-10.0, -10.0], [-2.0, -1.0, None], [-3.0, -2.5, -2.0, None]], 3)
    assert adv[0][0] < 0 and adv[0][1] < 0
    for bad, match in (([[1.0]], "group_size"), ("abc", "values"), ([["x"]], r"values\[0\]")):
        with pytest.raises(ValueError, match=match):
            dense_advantages(bad, 2 if bad != [[1.0]] else 0)
    with pytest.raises(ValueError, match="dense_std"):
        dense_advantages([[1.0], [2.0]], 2, std="bessel")


def test_normalize_dense_rejects_bad_input():
    values = pad_dense([[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="group_size"):
        normalize_dense(values, 2)
    with pytest.raises(ValueError, match="dense_normalization"):
        normalize_dense(values, 3, normalization="batch")
    with pytest.raises(ValueError, match="dense_eps"):
        normalize_dense(values, 3, eps=0.0)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        normalize_dense(values[0], 1)
    with pytest.raises(ValueError, match="width"):
        pad_dense([[1.0, 2.0]], width=1)


def test_scalar_advantages_match_loop_reference():
    rng = random.Random(0)
    for _ in range(10):
        rewards = [[rng.uniform(-2, 2) if rng.random() > 0.2 else float("nan") for _ in range(3)] for _ in range(12)]
        weights = [0.5, 1.0, 2.0]
        got = scalar_advantages(torch.tensor(rewards), torch.tensor(weights), 4)
        torch.testing.assert_close(got, naive_scalar(rewards, weights, 4), rtol=1e-4, atol=1e-5)
    assert torch.equal(scalar_advantages(torch.zeros(4, 0), torch.zeros(0), 2), torch.zeros(4))
    with pytest.raises(ValueError, match="scale_rewards"):
        scalar_advantages(torch.ones(2, 1), torch.ones(1), 2, scale_rewards="token")
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        scalar_advantages(torch.ones(2, 1), torch.ones(1), 2, aggregation="max")


def test_check_dense_values():
    ids = [[5, 6, 7], [8], [9, 10]]
    rows = check_dense_values([[1, 2, 3], None, np.array([0.5, 1.5])], ids, "cme")
    assert rows[1] is None and rows[0].dtype == torch.float32 and rows[2].tolist() == [0.5, 1.5]
    with pytest.raises(ValueError, match=r"'cme' returned 2 values .* completion 0, which has 3 policy tokens"):
        check_dense_values([[1, 2], [1], [1, 2]], ids, "cme")
    with pytest.raises(ValueError, match=r"'cme' returned 2 rows of dense values for 3 completions"):
        check_dense_values([[1, 2, 3], [1]], ids, "cme")
    with pytest.raises(ValueError, match=r"'cme': completion 2 has a non-finite value nan at token 1"):
        check_dense_values([[1, 2, 3], [1], [0.0, float("nan")]], ids, "cme")
    with pytest.raises(ValueError, match="must return a list"):
        check_dense_values(None, ids, "cme")
    with pytest.raises(ValueError, match="completion 1 are not numbers"):
        check_dense_values([[1, 2, 3], ["a"], [1, 2]], ids, "cme")


def test_is_dense_reward():
    class NotCallable:
        score_dense = 3

    assert is_dense_reward(IdDense()) and is_dense_reward(ConstantDense())
    assert not is_dense_reward(OptedOut()) and not is_dense_reward(NotCallable()) and not is_dense_reward(first_token)


def test_config_validation(tmp_path):
    config = DenseGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert (config.dense_normalization, config.dense_eps) == ("group_std", 1e-4)
    with pytest.raises(ValueError, match=r"`dense_normalization` must be one of \('group_std', 'group_mean'\)"):
        DenseGRPOConfig(output_dir=str(tmp_path), use_cpu=True, dense_normalization="std")
    for eps in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="`dense_eps` must be a finite number > 0"):
            DenseGRPOConfig(output_dir=str(tmp_path), use_cpu=True, dense_eps=eps)


def test_unsupported_loss_type_is_refused_before_loading(tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", loss_type="ppo")
    with pytest.raises(ValueError, match=r"does not support `loss_type='ppo'`"):
        DenseGRPOTrainer(model=str(tmp_path / "never-loaded"), reward_funcs=[IdDense()], args=args)


def test_trl_loss_accepts_per_token_advantages():
    """Guards a TRL upgrade: `_compute_loss` must keep (B, T) advantages and know every loss type we allow."""
    source = inspect.getsource(GRPOTrainer._compute_loss)
    assert "if advantages.dim() == 1:" in source
    assert all(f'"{loss_type}"' in source for loss_type in DENSE_LOSS_TYPES)


# ---- real GRPO steps (slow) -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny Qwen2 policy saved to disk (loaded by path like a user would) and its EOS id."""
    path = save_verifier(tmp_path_factory.mktemp("policy"), "qwen2", seed=3)
    return path, load_tokenizer(path).eos_token_id


def prompts_dataset(n=8):
    prompts = ["The capital of France is", "Write a poem.", "2 + 2 =", "Hello there"]
    return Dataset.from_dict({"prompt": [prompts[i % 4] for i in range(n)], "topic": [f"t{i}" for i in range(n)]})


def grpo_args(path, eos, config_cls=GRPOConfig, *, eos_bias=None, equal_length=False, **extra):
    generation = {}
    if eos_bias is not None:  # make EOS likely so completions in a group have different lengths
        generation["sequence_bias"] = [[[eos], eos_bias]]
    if equal_length:
        generation["min_new_tokens"] = 8
    settings = dict(
        output_dir=str(path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=8,  # two prompts x num_generations per step
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=1e-3,
        seed=0,
        generation_kwargs=generation or None,
    )
    settings.update(extra)
    return config_cls(**settings)


def recorder(cls):
    """`cls` that records, per generation batch, TRL's gathered rewards and the tensors handed to the loss."""

    class Recorder(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.records = []

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self.records.append(
                {"rewards": rewards.clone(), "ids": [[int(t) for t in x] for x in completion_ids_list]}
            )
            return rewards

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            self.records[-1].update({k: out[k].clone() for k in ("advantages", "completion_ids", "completion_mask")})
            return out

    return Recorder


def train(cls, policy_path, reward_funcs, args):
    trainer = recorder(cls)(
        model=str(policy_path), reward_funcs=reward_funcs, args=args, train_dataset=prompts_dataset()
    )
    trainer.train()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("normalization", ["group_std", "group_mean"])
def test_constant_dense_values_reproduce_trl_scalar_advantages(policy, tmp_path, normalization):
    """Equal lengths, every token = the scalar reward: DenseGRPOTrainer's (B, T) advantages are GRPOTrainer's (B,)."""
    path, eos = policy
    if normalization == "group_std":  # a plain GRPOConfig: the dense defaults apply
        dense_args, scale = grpo_args(tmp_path / "dense", eos, equal_length=True), "group"
    else:
        dense_args = grpo_args(
            tmp_path / "dense", eos, DenseGRPOConfig, equal_length=True, dense_normalization="group_mean"
        )
        scale = "none"
    dense = train(DenseGRPOTrainer, path, [ConstantDense()], dense_args)
    plain = train(
        GRPOTrainer,
        path,
        [ConstantDense()],
        grpo_args(tmp_path / "plain", eos, equal_length=True, scale_rewards=scale),
    )
    d, p = dense.records[0], plain.records[0]
    assert torch.equal(d["completion_ids"], p["completion_ids"])  # same seed, same completions
    assert d["completion_mask"].all()  # equal lengths
    assert p["advantages"].ndim == 1 and d["advantages"].shape == d["completion_ids"].shape
    assert p["advantages"].abs().max() > 0.1  # a real signal, not all zeros
    torch.testing.assert_close(
        d["advantages"], p["advantages"].unsqueeze(1).expand_as(d["advantages"]), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(d["rewards"], p["rewards"])  # TRL's scalar column = mean of the dense values


@pytest.mark.slow
@pytest.mark.parametrize(
    "scale, aggregation",
    [("group", "sum_then_normalize"), ("batch", "sum_then_normalize"), ("none", "normalize_then_sum")],
)
def test_dense_plus_weighted_scalar_rewards(policy, tmp_path, caplog, scale, aggregation):
    """Dense part (weight 0.5, per position) + the other rewards' scalar advantages as GRPOTrainer computes them."""
    path, eos = policy
    reward = IdDense(none_at=(1, 6))
    options = dict(eos_bias=5.0, scale_rewards=scale, multi_objective_aggregation=aggregation)
    args = grpo_args(tmp_path / "dense", eos, DenseGRPOConfig, reward_weights=[0.5, 1.0, 2.0], **options)
    with caplog.at_level(logging.WARNING, logger="cme_reward.training.trainer"):
        dense = train(DenseGRPOTrainer, path, [reward, first_token, length_reward], args)
    plain_args = grpo_args(tmp_path / "plain", eos, reward_weights=[1.0, 2.0], **options)
    plain = train(GRPOTrainer, path, [first_token, length_reward], plain_args)
    d, p = dense.records[0], plain.records[0]
    assert torch.equal(d["completion_ids"], p["completion_ids"])
    lengths = torch.tensor([len(ids) for ids in d["ids"]])
    assert len(set(lengths.tolist())) > 2  # unequal lengths inside groups are exercised
    values = reward.values(d["ids"])
    dense_adv = pad_dense(dense_advantages(values, 4)).nan_to_num(0.0)  # (B, T_max)
    width = d["advantages"].size(1)
    expected = p["advantages"].unsqueeze(1) + 0.5 * torch.nn.functional.pad(dense_adv, (0, width - dense_adv.size(1)))
    expected = torch.where(torch.arange(width) < lengths.unsqueeze(1), expected, 0.0)
    torch.testing.assert_close(d["advantages"], expected, rtol=1e-4, atol=1e-4)
    # None rows: scalar part only, with a warning
    for row in (1, 6):
        torch.testing.assert_close(d["advantages"][row, : lengths[row]], p["advantages"][row].expand(lengths[row]))
    assert "'id_dense' returned None for 2 of 8 completions" in caplog.text
    # score_dense got the policy tokenizer and TRL's reward keyword arguments
    call = reward.calls[0]
    assert call["tokenizer"] is dense.processing_class and call["n"] == 8
    assert {"topic", "trainer_state", "log_metric", "log_extra"} <= call["kwargs"]
    # TRL's scalar columns: the dense reward's is its token mean (NaN for None), the others are untouched
    means = [float("nan") if v is None else sum(v) / len(v) for v in values]
    torch.testing.assert_close(d["rewards"][:, 0], torch.tensor(means), equal_nan=True)
    torch.testing.assert_close(d["rewards"][:, 1:], p["rewards"])


@pytest.mark.slow
def test_two_steps_log_dense_metrics_and_learn(policy, tmp_path):
    path, eos = policy
    args = grpo_args(tmp_path, eos, DenseGRPOConfig, eos_bias=5.0, max_steps=2, log_completions=True)
    trainer = recorder(DenseGRPOTrainer)(
        model=str(path), reward_funcs=[IdDense(), first_token], args=args, train_dataset=prompts_dataset()
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print("\n".join(str(h) for h in logs))  # the log excerpt (pytest -s)
    assert len(logs) == 2
    for h in logs:
        for key in ("mean", "std", "tokens", "frac_scored", "advantage_abs_mean"):
            assert math.isfinite(h[f"dense/id_dense/{key}"])
        assert h["dense/id_dense/frac_scored"] == 1.0
        assert math.isfinite(h["rewards/id_dense/mean"]) and math.isfinite(h["rewards/first_token/mean"])
        assert math.isfinite(h["loss"]) and "reward" in h and "entropy" in h
    for h, record in zip(logs, trainer.records):
        assert h["dense/id_dense/tokens"] == sum(len(ids) for ids in record["ids"])
        scored = [token_value(t) for ids in record["ids"] for t in ids]
        assert h["dense/id_dense/mean"] == pytest.approx(sum(scored) / len(scored), abs=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    # the completions table shows each completion's mean token advantage
    record = trainer.records[-1]
    lengths = record["completion_mask"].sum(1)
    table = list(trainer._logs["advantages"])
    torch.testing.assert_close(torch.tensor(table), record["advantages"].sum(1) / lengths, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_type, extra",
    [
        ("grpo", {"beta": 0.05}),
        ("bnpo", {}),
        ("dr_grpo", {}),
        ("cispo", {}),
        ("sapo", {}),
        ("vespo", {}),
        ("luspo", {"importance_sampling_level": "sequence"}),
    ],
)
def test_loss_types_train_on_token_advantages(policy, tmp_path, loss_type, extra):
    path, eos = policy
    args = grpo_args(tmp_path, eos, eos_bias=5.0, loss_type=loss_type, **extra)
    trainer = recorder(DenseGRPOTrainer)(
        model=str(path), reward_funcs=[IdDense(), length_reward], args=args, train_dataset=prompts_dataset()
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    assert math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    if loss_type == "grpo":  # first iteration: ratio 1, so the loss is -mean_i(mean_t A_it) (+ beta * KL, 0 here)
        record = trainer.records[0]
        mask = record["completion_mask"]
        expected = -((record["advantages"] * mask).sum(1) / mask.sum(1)).mean().item()
        assert loss == pytest.approx(expected, abs=1e-5)
        assert abs(expected) > 1e-3  # per-token advantages make this non-zero (sequence ones would cancel)


class OptedOut(IdDense):
    """Has `score_dense` but opts out: a plain scalar reward that wants the policy tokenizer (like CME's score_eos)."""

    __name__ = "opted_out"
    dense = False
    policy_tokenizer = None


@pytest.mark.slow
def test_opted_out_reward_trains_like_grpo_trainer(policy, tmp_path):
    path, eos = policy
    reward = OptedOut()
    dense = train(DenseGRPOTrainer, path, [reward, first_token], grpo_args(tmp_path / "dense", eos, eos_bias=5.0))
    plain = train(GRPOTrainer, path, [OptedOut(), first_token], grpo_args(tmp_path / "plain", eos, eos_bias=5.0))
    assert reward.calls == [] and reward.policy_tokenizer is dense.processing_class
    d, p = dense.records[0], plain.records[0]
    assert torch.equal(d["completion_ids"], p["completion_ids"]) and d["advantages"].ndim == 1
    torch.testing.assert_close(d["advantages"], p["advantages"])


@pytest.mark.slow
def test_wrong_number_of_dense_values_raises(policy, tmp_path):
    path, eos = policy
    with pytest.raises(ValueError, match=r"'id_dense' returned \d+ values .* for completion 0, which has"):
        train(DenseGRPOTrainer, path, [IdDense(extra=1)], grpo_args(tmp_path, eos))


@pytest.mark.slow
def test_cross_model_entropy_reward_dense(qwen_dir, tmp_path):
    """The real CME reward as a dense reward (its `score_dense` lands separately; skipped until then)."""
    from cme_reward import CrossModelEntropyReward

    # a policy with its own, different tokenizer (300-token vocabulary, no BOS), saved and loaded by path
    tok = build_tokenizer(vocab_size=300, bos=False)
    model = build_model("llama", len(tok), seed=7)
    model.config.pad_token_id, model.config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    policy_path = tmp_path / "policy"
    model.save_pretrained(policy_path)
    tok.save_pretrained(policy_path)
    reward = CrossModelEntropyReward(qwen_dir, name="cme")
    verifier = [p.detach().clone() for p in reward.model.parameters()]
    args = grpo_args(tmp_path / "out", tok.eos_token_id, DenseGRPOConfig, eos_bias=5.0, max_steps=2)
    trainer = train(DenseGRPOTrainer, policy_path, [reward, length_reward], args)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["dense/cme/frac_scored"] > 0 and h["dense/cme/tokens"] > 0
        assert math.isfinite(h["dense/cme/mean"]) and h["dense/cme/mean"] < 0  # log-probs
        assert math.isfinite(h["rewards/cme/mean"]) and math.isfinite(h["loss"])
    for record in trainer.records:
        assert record["advantages"].shape == record["completion_ids"].shape
        assert torch.isfinite(record["advantages"]).all()
    assert all(torch.equal(a, b) for a, b in zip(verifier, reward.model.parameters()))


TWO_PROCESS_SCRIPT = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import torch
from test_trainer import IdDense, first_token, grpo_args, prompts_dataset, recorder
from cme_reward.training.trainer import DenseGRPOConfig, DenseGRPOTrainer
from tiny_models import load_tokenizer

out, policy = Path(sys.argv[1]), Path(sys.argv[2])
eos = load_tokenizer(policy).eos_token_id
bias = 10.0 if os.environ["RANK"] == "0" else None  # rank 0: 1-2 token completions, rank 1: 8 tokens (other widths)
args = grpo_args(out, eos, DenseGRPOConfig, eos_bias=bias, per_device_train_batch_size=6, reward_weights=[0.5, 1.0])
reward = IdDense(none_at=(1,))
trainer = recorder(DenseGRPOTrainer)(
    model=str(policy), reward_funcs=[reward, first_token], args=args, train_dataset=prompts_dataset(12)
)
trainer.train()
torch.save(trainer.records, out / f"records{trainer.accelerator.process_index}.pt")
"""


@pytest.mark.slow
def test_groups_spanning_two_processes(policy, tmp_path):
    """2 CPU processes (gloo), 6 completions each, groups of 4: the middle group spans both ranks."""
    path, _ = policy
    script = tmp_path / "two_process.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    torchrun(script, [str(tmp_path), str(path), str(Path(__file__).parent)], timeout=300)
    ranks = [torch.load(tmp_path / f"records{rank}.pt")[0] for rank in range(2)]
    torch.testing.assert_close(ranks[0]["rewards"], ranks[1]["rewards"], equal_nan=True)  # TRL's gathered rewards
    ids = ranks[0]["ids"] + ranks[1]["ids"]
    lengths = torch.tensor([len(x) for x in ids])
    assert lengths[:6].max() < lengths[6:].max()  # the ranks padded to different local widths
    reward = IdDense(none_at=(1,))
    dense = pad_dense(dense_advantages(reward.values(ranks[0]["ids"]) + reward.values(ranks[1]["ids"]), 4))
    dense = dense.nan_to_num(0.0)  # (12, T)
    scalar = scalar_advantages(ranks[0]["rewards"][:, 1:], torch.tensor([1.0]), 4)  # (12,)
    width = dense.size(1)
    expected = torch.where(torch.arange(width) < lengths.unsqueeze(1), scalar.unsqueeze(1) + 0.5 * dense, 0.0)
    for rank, record in enumerate(ranks):
        local = record["advantages"]
        assert local.shape == (6, int(lengths[6 * rank : 6 * rank + 6].max()))
        torch.testing.assert_close(local, expected[6 * rank : 6 * rank + 6, : local.size(1)], rtol=1e-4, atol=1e-5)
    assert expected[4:8].abs().sum() > 0  # the spanning group carries signal
