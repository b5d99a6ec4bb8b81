"""`CrossModelEntropyReward`: options, the scoring convention, the unit call, the TRL call, pickling, threads,
processes, numerics and bad input."""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import pickle
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import build_model, build_tokenizer

from cme_reward import CMEConfig, CrossModelEntropyReward, TokenScores, VerifierSpec
from cme_reward.reference import reference_token_logprobs

TEXT_PAIRS = [
    ("The capital of France is", " Paris."),
    ("Write a poem about the sea.", "The sea is blue and deep and wide, " * 12),
    ("Héllo wörld 東京", " Привет мир 🙂🚀 naïve café"),
    ("", "A response without a prompt."),
    ("def add(a, b):", "\n    return a + b\n"),
]


def reference_text(disk, prompt, response):
    model, tok = disk
    lp = reference_token_logprobs(model, tok(prompt).input_ids, tok(response, add_special_tokens=False).input_ids)
    return lp.mean().item()


def reference_chat(disk, messages, content):
    model, tok = disk
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    context = tok(text, add_special_tokens=False).input_ids
    return reference_token_logprobs(model, context, tok(content, add_special_tokens=False).input_ids).mean().item()


# ---- options: one CMEConfig, one VerifierSpec ------------------------------------------------------------------


@pytest.fixture
def unloaded(monkeypatch):
    """Rewards built without loading a model: for tests of how options are split and merged."""
    monkeypatch.setattr(CrossModelEntropyReward, "_load", lambda self: None)


@pytest.mark.parametrize(
    ("flat", "config", "overrides"),
    [
        ({}, CMEConfig(), {}),
        ({"max_tokens_per_batch": 64, "reduction": "sum"}, CMEConfig(max_tokens_per_batch=64), {"reduction": "sum"}),
        ({"empty_value": -3.0, "pack_tokens": 16}, CMEConfig(empty_value=-1.0, pack_tokens=16), {"empty_value": -3.0}),
    ],
)
def test_flat_options_equal_config_plus_overrides(unloaded, qwen_dir, flat, config, overrides):
    from_flat = CrossModelEntropyReward(qwen_dir, **flat)
    from_config = CrossModelEntropyReward(qwen_dir, config=config, **overrides)
    assert from_flat.config == from_config.config == CMEConfig(**flat)
    assert from_flat.spec == from_config.spec == VerifierSpec(qwen_dir)


def test_spec_fields_are_options_too(unloaded, qwen_dir):
    expected = VerifierSpec(qwen_dir, device="cpu", dtype="bfloat16", revision="v1")
    assert CrossModelEntropyReward(qwen_dir, device="cpu", dtype="bfloat16", revision="v1").spec == expected
    from_spec = CrossModelEntropyReward(VerifierSpec(qwen_dir, device="cpu"), dtype="bfloat16", revision="v1")
    assert from_spec.spec == expected and from_spec.config == CMEConfig()
    mixed = CrossModelEntropyReward(qwen_dir, device="cpu", reduction="min")
    assert mixed.spec == VerifierSpec(qwen_dir, device="cpu") and mixed.config == CMEConfig(reduction="min")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_token_per_batch": 64}, r"\['max_token_per_batch'\].*Did you mean 'max_tokens_per_batch' for "),
        ({"devise": "cpu"}, r"unknown option\(s\) \['devise'\] for CrossModelEntropyReward.*Did you mean 'device'"),
        ({"show_progress": True}, r"Did you mean 'show_progress_bar' for 'show_progress'\?"),
    ],
)
def test_unknown_option_is_a_type_error_with_a_hint(qwen_dir, options, match):
    with pytest.raises(TypeError, match=match):
        CrossModelEntropyReward(qwen_dir, **options)


def test_config_and_name_are_checked(unloaded, qwen_dir):
    with pytest.raises(TypeError, match="`config` must be a CMEConfig, got dict"):
        CrossModelEntropyReward(qwen_dir, config={"reduction": "sum"})
    with pytest.raises(ValueError, match="`name` must be a non-empty string"):
        CrossModelEntropyReward(qwen_dir, name="")


def test_engine_runs_the_reward_config(reward):
    assert reward.scorer.config is reward.config
    assert reward.config.max_tokens_per_batch == reward.scorer.budget == 256
    assert reward.spec == VerifierSpec(reward.spec.source)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"reduction": "median"}, ValueError, "reduction"),
        ({"max_tokens_per_batch": 0}, ValueError, "max_tokens_per_batch"),
        ({"pack_tokens": 1}, ValueError, r"pack_tokens must be 0 \(off\) or an int >= 2"),
        ({"dtype": "int8"}, ValueError, "dtype"),
        pytest.param(
            {"device": "cuda"},
            ValueError,
            "CUDA",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
    ],
)
def test_bad_options_raise(qwen_dir, options, error, match):
    with pytest.raises(error, match=match):
        CrossModelEntropyReward(qwen_dir, **options)


def test_bad_verifier_type_raises():
    with pytest.raises(TypeError, match="verifier"):
        CrossModelEntropyReward(42)


# ---- the scoring convention -------------------------------------------------------------------------------------


def test_plain_text_matches_reference(reward, disk):
    prompts, responses = zip(*TEXT_PAIRS)
    scores = reward.score(list(prompts), list(responses))
    for (p, r), s in zip(TEXT_PAIRS, scores):
        if p == "":  # empty prompt: the context is the BOS token alone
            model, tok = disk
            expected = reference_token_logprobs(model, [tok.bos_token_id], tok(r, add_special_tokens=False).input_ids)
            assert s == pytest.approx(expected.mean().item(), abs=1e-4)
        else:
            assert s == pytest.approx(reference_text(disk, p, r), abs=1e-4)


def test_context_uses_verifier_special_tokens(reward, disk):
    _, tok = disk
    [ts] = reward.score_tokens(["Hello"], [" world"])
    assert ts.context_length == len(tok("Hello").input_ids)
    assert tok("Hello").input_ids[0] == tok.bos_token_id
    assert ts.token_ids == tok(" world", add_special_tokens=False).input_ids


def test_conversational_matches_reference(reward, disk):
    prompts = [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    ]
    completions = [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "Blue, like the sea."}]]
    scores = reward(prompts=prompts, completions=completions)
    for p, c, s in zip(prompts, completions, scores):
        assert s == pytest.approx(reference_chat(disk, p, c[0]["content"]), abs=1e-4)
    # the unit call takes messages too, and a plain string response for a chat prompt
    assert reward.score(prompts, ["4", "Blue, like the sea."]) == pytest.approx(scores, abs=1e-6)


def test_no_chat_template_uses_documented_plain_format(llama_reward, llama_disk):
    model, tok = llama_disk
    assert not tok.chat_template and tok.bos_token_id is None
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    context = tok("system: Be brief.\nuser: Hi\nassistant: ").input_ids
    expected = reference_token_logprobs(model, context, tok("Hello!", add_special_tokens=False).input_ids)
    assert llama_reward.score([messages], ["Hello!"])[0] == pytest.approx(expected.mean().item(), abs=1e-4)


def test_empty_prompt_without_bos_starts_from_eos(llama_reward, llama_disk):
    model, tok = llama_disk
    response = tok("The sea", add_special_tokens=False).input_ids
    expected = reference_token_logprobs(model, [tok.eos_token_id], response).mean().item()
    [ts] = llama_reward.score_tokens([""], ["The sea"])
    assert ts.context_length == 1 and len(ts) == len(response)
    assert ts.score == pytest.approx(expected, abs=1e-4)


def test_empty_response_gives_empty_value(qwen_dir, reward):
    assert reward.score(["Hi", "Hi"], ["", " there"])[0] is None
    floored = CrossModelEntropyReward(qwen_dir, empty_value=-20.0)
    scores = floored.score(["Hi", "Hi"], ["", " there"])
    assert scores[0] == -20.0 and math.isfinite(scores[1])
    [ts] = floored.score_tokens(["Hi"], [""])
    assert ts.token_ids == [] and ts.logprobs == [] and ts.score == -20.0


def test_scores_do_not_depend_on_batch_order_or_size(qwen_dir, reward):
    prompts = [p for p, _ in TEXT_PAIRS] * 3
    responses = [r for _, r in TEXT_PAIRS] * 2 + ["different", "answers", "here", "now", "!"]
    base = reward.score(prompts, responses)
    tiny_batches = CrossModelEntropyReward(qwen_dir, max_tokens_per_batch=1, prefix_sharing=False, deduplicate=False)
    assert tiny_batches.score(prompts, responses) == pytest.approx(base, abs=1e-5)
    order = list(range(len(prompts)))[::-1]
    reversed_scores = reward.score([prompts[i] for i in order], [responses[i] for i in order], batch_size=2)
    assert [reversed_scores[order.index(i)] for i in range(len(prompts))] == pytest.approx(base, abs=1e-5)


def test_packing_gives_the_same_scores(qwen_dir, reward):
    packed = CrossModelEntropyReward(qwen_dir, pack_tokens=48)
    assert packed.scorer.pack_tokens == 48
    prompts, responses = [p for p, _ in TEXT_PAIRS], [r for _, r in TEXT_PAIRS]
    assert packed.score(prompts, responses) == pytest.approx(reward.score(prompts, responses), abs=1e-5)
    assert packed.scorer.stats.padded_tokens == packed.scorer.stats.tokens_forward  # packed rows have no padding


def test_score_tokens_returns_tokens_and_logprobs(reward, disk):
    model, tok = disk
    [ts] = reward.score_tokens(["The capital of France is"], [" Paris."])
    assert isinstance(ts, TokenScores)
    assert "".join(ts.tokens) == " Paris."
    assert len(ts.tokens) == len(ts.logprobs) == len(ts.token_ids)
    ref = reference_token_logprobs(model, tok("The capital of France is").input_ids, ts.token_ids)
    assert ts.logprobs == pytest.approx(ref.tolist(), abs=1e-4)
    assert ts.score == pytest.approx(sum(ts.logprobs) / len(ts.logprobs), abs=1e-6)
    assert not ts.truncated


@pytest.mark.parametrize("reduction", ["sum", "min"])
def test_other_reductions(qwen_dir, reward, reduction):
    other = CrossModelEntropyReward(qwen_dir, reduction=reduction)
    [ts] = reward.score_tokens(["Hi"], [" the sea is blue"])
    expected = sum(ts.logprobs) if reduction == "sum" else min(ts.logprobs)
    assert other.score(["Hi"], [" the sea is blue"])[0] == pytest.approx(expected, abs=1e-4)


def test_truncation_keeps_response_and_cuts_context_left(qwen_dir, disk, caplog):
    model, tok = disk
    reward = CrossModelEntropyReward(qwen_dir, max_length=24)
    prompt, response = "The quick brown fox jumps over the lazy dog. " * 4, " Paris is the capital"
    context = tok(prompt).input_ids
    resp = tok(response, add_special_tokens=False).input_ids
    with caplog.at_level(logging.WARNING):
        [ts] = reward.score_tokens([prompt], [response])
        reward.score([prompt], [response])
    assert sum("max_length" in r.message for r in caplog.records) == 1  # warned once
    assert ts.truncated and ts.token_ids == resp and ts.context_length == 24 - len(resp)
    expected = reference_token_logprobs(model, context[-(24 - len(resp)) :], resp).mean().item()
    assert ts.score == pytest.approx(expected, abs=1e-4)
    # a response longer than max_length keeps its first max_length - 1 tokens after one context token
    long = "The sea is blue and deep and wide. " * 10
    [ts] = reward.score_tokens(["Hi"], [long])
    assert ts.truncated and len(ts) == 23 and ts.context_length == 1
    assert ts.token_ids == tok(long, add_special_tokens=False).input_ids[:23]


def test_default_max_length_is_verifier_context(reward):
    assert reward.max_length == 512


def test_bfloat16_close_to_float32(qwen_dir, reward):
    bf16 = CrossModelEntropyReward(qwen_dir, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    prompts, responses = [p for p, _ in TEXT_PAIRS], [r for _, r in TEXT_PAIRS]
    assert bf16.score(prompts, responses) == pytest.approx(reward.score(prompts, responses), abs=0.1)


def test_different_architectures_load_by_path(llama_reward):
    assert type(llama_reward.model).__name__ == "LlamaForCausalLM"
    model = build_model("llama", 10)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_model_object_construction(qwen_dir, disk):
    model, tok = disk
    with pytest.raises(ValueError, match="tokenizer"):
        CrossModelEntropyReward(model)
    from_object = CrossModelEntropyReward(model, tokenizer=tok)
    from_path = CrossModelEntropyReward(qwen_dir)
    pairs = ["Hello", "Capital?"], [" world", " Paris"]
    assert from_object.score(*pairs) == pytest.approx(from_path.score(*pairs), abs=1e-6)


# ---- the TRL call -------------------------------------------------------------------------------------------------


def test_verifier_tokenizer_differs_from_policy(reward, disk):
    """completion_ids come from the policy's tokenizer and must not be used as verifier ids."""
    policy_tok = build_tokenizer(vocab_size=300, bos=False)
    completions = [" Paris is the capital", " Berlin"]
    policy_ids = [policy_tok(c, add_special_tokens=False).input_ids for c in completions]
    scores = reward(prompts=["Capital?", "Capital?"], completions=completions, completion_ids=policy_ids)
    assert scores == pytest.approx([reference_text(disk, "Capital?", c) for c in completions], abs=1e-4)
    bogus = [[0, 1, 2]] * 2  # nonsense ids change nothing
    assert reward(prompts=["Capital?", "Capital?"], completions=completions, completion_ids=bogus) == scores


def test_extra_kwargs_are_ignored(reward):
    metrics = {}
    scores = reward(
        prompts=["a", "b"],
        completions=["x", "y"],
        trainer_state=object(),
        solution=["s1", "s2"],
        log_extra=lambda *a: None,
        log_metric=lambda name, value: metrics.__setitem__(name, value),
    )
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    assert metrics["cross_model_entropy/verifier_tokens"] > 0
    assert metrics["cross_model_entropy/verifier_seconds"] >= 0
    assert reward(prompts=["a"], completions=["x"]) == scores[:1]  # completion_ids is optional
    assert reward.stats.tokens_forward > 0 and reward.stats.tokens_scored > 0 and reward.stats.seconds > 0


def test_verifier_is_frozen(reward):
    assert not reward.model.training
    assert not any(p.requires_grad for p in reward.model.parameters())
    with torch.enable_grad():
        before = [p.detach().clone() for p in reward.model.parameters()]
        reward(prompts=["Hi"], completions=["there"])
    assert all(torch.equal(a, b) for a, b in zip(before, reward.model.parameters()))


def test_not_a_module_and_has_name(reward):
    from trl.trainer.utils import get_callable_name

    assert not isinstance(reward, torch.nn.Module)
    assert CrossModelEntropyReward.__dict__["__name__"] == "cross_model_entropy"  # class attribute, like TRL's
    assert reward.__name__ == "cross_model_entropy"
    assert get_callable_name(reward) == "cross_model_entropy"


def test_bad_completion_inside_trainer_becomes_none(reward, caplog):
    with caplog.at_level(logging.WARNING):
        scores = reward(prompts=["a", "b", "c"], completions=["x", None, [{"role": "user", "content": "y"}]])
    assert math.isfinite(scores[0]) and scores[1] is None and scores[2] is None
    assert "completion 1" in caplog.text
    with pytest.raises(ValueError, match="same length"):  # a structural error still raises
        reward(prompts=["a"], completions=["x", "y"])


def test_empty_lists_give_empty_result(reward):
    assert reward.score([], []) == []
    assert reward(prompts=[], completions=[]) == []


# ---- bad input and numerics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompts, responses, error, match",
    [
        (["a", "b"], ["x"], ValueError, "same length"),
        ("abc", ["x"], TypeError, "`prompts` must be a list"),
        (["a"], "x", TypeError, "`responses` must be a list"),
        ([None], ["x"], TypeError, r"prompts\[0\]"),
        (["a", 3], ["x", "y"], TypeError, r"prompts\[1\]"),
        (["a"], [b"x"], TypeError, r"responses\[0\]"),
        ([[{"role": "user"}]], ["x"], ValueError, r"prompts\[0\]\[0\] is missing \['content'\]"),
        ([[{"content": "hi"}]], ["x"], ValueError, "missing"),
        ([[{"role": "wizard", "content": "hi"}]], ["x"], ValueError, "unknown role"),
        ([[]], ["x"], ValueError, "non-empty list"),
        ([["hi"]], ["x"], TypeError, r"prompts\[0\]\[0\] must be a dict"),
        (["a"], [[{"role": "user", "content": "x"}]], ValueError, "one assistant message"),
        (
            ["a"],
            [[{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]],
            ValueError,
            "one assistant message",
        ),
        ([[{"role": "user", "content": 5}]], ["x"], TypeError, "content must be a string"),
    ],
)
def test_bad_input_raises_naming_argument(reward, prompts, responses, error, match):
    with pytest.raises(error, match=match):
        reward.score(prompts, responses)


def test_lone_surrogates_are_scored(reward):
    [score] = reward.score(["bad \ud800 text"], [" and \udfff more"])
    assert math.isfinite(score)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_are_caught(qwen_dir, bad, monkeypatch, caplog):
    reward = CrossModelEntropyReward(qwen_dir)
    real = reward.scorer._logprobs

    def poisoned(hidden, targets):  # every head pass yields one non-finite log-prob, like a float16 overflow
        logprobs = real(hidden, targets).clone()
        logprobs[0] = bad
        return logprobs

    monkeypatch.setattr(reward.scorer, "_logprobs", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite"):
        reward.score(["Hi"], [" there"])
    with caplog.at_level(logging.WARNING):
        scores = reward(prompts=["Hi", "Hi"], completions=[" there", ""])
    assert scores == [None, None]
    assert "non-finite" in caplog.text


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
    reward.scorer.budget = budget
    try:
        scores = reward.score(prompts, responses)
    finally:
        reward.scorer.budget = reward.config.max_tokens_per_batch  # the session's reward: leave it as it was
    for p, r, s in zip(prompts, responses, scores):
        resp = tok(r, add_special_tokens=False).input_ids
        if not resp or not r.strip():  # empty or blank: nothing to score
            assert s is None
            continue
        expected = reference_token_logprobs(model, tok(p).input_ids, resp).mean().item()
        assert math.isfinite(s) and s == pytest.approx(expected, abs=1e-4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(odd_text, odd_text), min_size=1, max_size=4))
def test_any_string_gives_finite_or_none(reward, pairs):
    scores = reward(prompts=[p for p, _ in pairs], completions=[r for _, r in pairs])
    assert all(s is None or math.isfinite(s) for s in scores)


# ---- pickling, threads, processes (TRL AsyncGRPO pickles rewards into a CPU-only child) -----------------------


def test_reward_is_picklable(qwen_dir):
    reward = CrossModelEntropyReward(qwen_dir, name="cme_custom", empty_value=-5.0, max_tokens_per_batch=64)
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "cme_custom" and clone.config == reward.config and clone.spec == reward.spec
    assert clone.model is not reward.model
    assert clone.score(["Hi", "Yo"], [" there", ""]) == reward.score(["Hi", "Yo"], [" there", ""])
    default = pickle.loads(pickle.dumps(CrossModelEntropyReward(qwen_dir)))
    assert default.__name__ == "cross_model_entropy"


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
