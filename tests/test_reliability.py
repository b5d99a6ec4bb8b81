"""Reliability: numerics, properties over random input, concurrency, process boundaries, safe loading."""

import logging
import math
import multiprocessing as mp
import pickle
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import load_tokenizer
from transformers import AutoModelForCausalLM

from cme_reward import CrossModelEntropyReward
from cme_reward.reference import reference_token_logprobs


@pytest.fixture(scope="module")
def reward(qwen_dir):
    return CrossModelEntropyReward(qwen_dir, max_tokens_per_batch=128)


@pytest.fixture(scope="module")
def disk(qwen_dir):
    return AutoModelForCausalLM.from_pretrained(qwen_dir).eval(), load_tokenizer(qwen_dir)


# ---- numerics ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_are_caught(qwen_dir, bad, monkeypatch, caplog):
    reward = CrossModelEntropyReward(qwen_dir)
    real = reward.engine._logprobs

    def poisoned(hidden, targets):  # every head pass yields one non-finite log-prob, like a float16 overflow
        logprobs = real(hidden, targets).clone()
        logprobs[0] = bad
        return logprobs

    monkeypatch.setattr(reward.engine, "_logprobs", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite"):
        reward.score(["Hi"], [" there"])
    with caplog.at_level(logging.WARNING):
        scores = reward(prompts=["Hi", "Hi"], completions=[" there", ""])
    assert scores == [None, None]
    assert "non-finite" in caplog.text


# ---- properties --------------------------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
odd_text = st.text(max_size=30)  # includes lone surrogates


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pairs=st.lists(st.tuples(text, text), min_size=1, max_size=6),
    repeats=st.integers(1, 3),
    budget=st.sampled_from([1, 16, 64, 4096]),
)
def test_random_unicode_matches_reference(reward, disk, pairs, repeats, budget):
    model, tok = disk
    prompts = [p for p, _ in pairs] * repeats  # repeated prompts exercise prefix sharing and dedup
    responses = [r for _, r in pairs] * repeats
    reward.engine.max_tokens_per_batch = budget
    scores = reward.score(prompts, responses)
    for p, r, s in zip(prompts, responses, scores):
        resp = tok(r, add_special_tokens=False).input_ids
        if not resp:
            assert s is None
            continue
        expected = reference_token_logprobs(model, tok(p).input_ids, resp).mean().item()
        assert math.isfinite(s) and s == pytest.approx(expected, abs=1e-4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(odd_text, odd_text), min_size=1, max_size=4))
def test_any_string_gives_finite_or_none(reward, pairs):
    scores = reward(prompts=[p for p, _ in pairs], completions=[r for _, r in pairs])
    assert all(s is None or math.isfinite(s) for s in scores)


# ---- concurrency -------------------------------------------------------------------------------------------------


def test_threads_give_serial_results(reward):
    batches = [([f"Question {i}?"] * 4, [f" answer {j} of {i}" for j in range(4)]) for i in range(6)]
    serial = [reward.score(*b) for b in batches]
    results: dict[int, list] = {}

    def work(i):
        results[i] = reward.score(*batches[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(batches))] == serial


# ---- process boundary (TRL AsyncGRPO pickles rewards into a CPU-only child) ---------------------------------------


def _child_score(payload, queue):
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    reward = pickle.loads(payload)
    queue.put((str(reward.device), reward.__name__, reward.score(["Hi"], [" there"])))


@pytest.mark.slow
def test_reward_survives_spawned_child_process(qwen_dir):
    reward = CrossModelEntropyReward(qwen_dir, name="cme")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_score, args=(pickle.dumps(reward), queue))
    proc.start()
    device, name, scores = queue.get(timeout=120)
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert device == "cpu" and name == "cme"
    assert scores == reward.score(["Hi"], [" there"])


# ---- safe loading ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pickle_only_dir(qwen_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("pickle_only")
    model = AutoModelForCausalLM.from_pretrained(qwen_dir)
    model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # an old-style checkpoint: pickle weights only
    load_tokenizer(qwen_dir).save_pretrained(path)
    assert not list(path.glob("*.safetensors")) and list(path.glob("*.bin"))
    return path


def test_pickle_weights_refused_by_default(pickle_only_dir):
    with pytest.raises(ValueError, match="use_safetensors=False"):
        CrossModelEntropyReward(pickle_only_dir)


def test_pickle_weights_load_on_opt_in(pickle_only_dir, reward):
    trusted = CrossModelEntropyReward(pickle_only_dir, use_safetensors=False)
    assert trusted.score(["Hi"], [" there"]) == pytest.approx(reward.score(["Hi"], [" there"]), abs=1e-6)


def test_trust_remote_code_is_off_by_default_and_logged(qwen_dir, caplog, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append((kwargs.get("trust_remote_code"), kwargs.get("use_safetensors"), kwargs.get("revision")))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    CrossModelEntropyReward(qwen_dir)
    assert seen[-1] == (False, True, None)
    with caplog.at_level(logging.WARNING):
        CrossModelEntropyReward(qwen_dir, trust_remote_code=True, revision="main")
    assert seen[-1] == (True, True, "main")
    assert "trust_remote_code=True" in caplog.text
