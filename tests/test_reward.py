"""`CrossModelEntropyReward`: the scoring convention, the unit call, the TRL call, pickling, bad input."""

import logging
import math
import pickle

import pytest
import torch
from tiny_models import build_model, build_tokenizer, load_tokenizer
from transformers import AutoModelForCausalLM

from cme_reward import CrossModelEntropyReward, TokenScores
from cme_reward.reference import reference_token_logprobs


@pytest.fixture(scope="module")
def reward(qwen_dir):
    return CrossModelEntropyReward(qwen_dir, max_tokens_per_batch=256)


@pytest.fixture(scope="module")
def disk(qwen_dir):
    """The verifier and tokenizer as reloaded from disk (the reference must use these, not the saved objects)."""
    return AutoModelForCausalLM.from_pretrained(qwen_dir).eval(), load_tokenizer(qwen_dir)


def reference_text(disk, prompt, response):
    model, tok = disk
    lp = reference_token_logprobs(model, tok(prompt).input_ids, tok(response, add_special_tokens=False).input_ids)
    return lp.mean().item()


def reference_chat(disk, messages, content):
    model, tok = disk
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    context = tok(text, add_special_tokens=False).input_ids
    return reference_token_logprobs(model, context, tok(content, add_special_tokens=False).input_ids).mean().item()


TEXT_PAIRS = [
    ("The capital of France is", " Paris."),
    ("Write a poem about the sea.", "The sea is blue and deep and wide, " * 12),
    ("Héllo wörld 東京", " Привет мир 🙂🚀 naïve café"),
    ("", "A response without a prompt."),
    ("def add(a, b):", "\n    return a + b\n"),
]


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


def test_no_chat_template_uses_documented_plain_format(llama_dir):
    reward = CrossModelEntropyReward(llama_dir)
    model, tok = AutoModelForCausalLM.from_pretrained(llama_dir).eval(), load_tokenizer(llama_dir)
    assert not tok.chat_template and tok.bos_token_id is None
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    context = tok("system: Be brief.\nuser: Hi\nassistant: ").input_ids
    expected = reference_token_logprobs(model, context, tok("Hello!", add_special_tokens=False).input_ids)
    assert reward.score([messages], ["Hello!"])[0] == pytest.approx(expected.mean().item(), abs=1e-4)


def test_empty_prompt_without_bos_starts_from_eos(llama_dir):
    reward = CrossModelEntropyReward(llama_dir)
    model, tok = AutoModelForCausalLM.from_pretrained(llama_dir).eval(), load_tokenizer(llama_dir)
    response = tok("The sea", add_special_tokens=False).input_ids
    expected = reference_token_logprobs(model, [tok.eos_token_id], response).mean().item()
    [ts] = reward.score_tokens([""], ["The sea"])
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
    assert reward.stats["tokens_forward"] > 0 and reward.stats["tokens_scored"] > 0 and reward.stats["seconds"] > 0


def test_model_object_construction(qwen_dir, disk):
    model, tok = disk
    with pytest.raises(ValueError, match="tokenizer"):
        CrossModelEntropyReward(model)
    from_object = CrossModelEntropyReward(model, tokenizer=tok)
    from_path = CrossModelEntropyReward(qwen_dir)
    pairs = ["Hello", "Capital?"], [" world", " Paris"]
    assert from_object.score(*pairs) == pytest.approx(from_path.score(*pairs), abs=1e-6)


def test_verifier_is_frozen(reward):
    assert not reward.model.training
    assert not any(p.requires_grad for p in reward.model.parameters())
    with torch.enable_grad():
        before = [p.detach().clone() for p in reward.model.parameters()]
        reward(prompts=["Hi"], completions=["there"])
    assert all(torch.equal(a, b) for a, b in zip(before, reward.model.parameters()))


def test_reward_is_picklable(qwen_dir):
    reward = CrossModelEntropyReward(qwen_dir, name="cme_custom", empty_value=-5.0, max_tokens_per_batch=64)
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "cme_custom" and clone.config == reward.config
    assert clone.model is not reward.model
    assert clone.score(["Hi", "Yo"], [" there", ""]) == reward.score(["Hi", "Yo"], [" there", ""])
    default = pickle.loads(pickle.dumps(CrossModelEntropyReward(qwen_dir)))
    assert default.__name__ == "cross_model_entropy"


def test_not_a_module_and_has_name(reward):
    from trl.trainer.utils import get_callable_name

    assert not isinstance(reward, torch.nn.Module)
    assert CrossModelEntropyReward.__dict__["__name__"] == "cross_model_entropy"  # class attribute, like TRL's
    assert reward.__name__ == "cross_model_entropy"
    assert get_callable_name(reward) == "cross_model_entropy"


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


def test_lone_surrogates_are_scored(reward):
    [score] = reward.score(["bad \ud800 text"], [" and \udfff more"])
    assert math.isfinite(score)


def test_bad_options_raise(qwen_dir):
    with pytest.raises(ValueError, match="reduction"):
        CrossModelEntropyReward(qwen_dir, reduction="median")
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        CrossModelEntropyReward(qwen_dir, max_tokens_per_batch=0)
    for bad in (1, -5, 2.5, True):
        with pytest.raises(ValueError, match=r"pack_tokens must be 0 \(off\) or an int >= 2"):
            CrossModelEntropyReward(qwen_dir, pack_tokens=bad)
    with pytest.raises(ValueError, match="dtype"):
        CrossModelEntropyReward(qwen_dir, dtype="int8")
    with pytest.raises(ValueError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        CrossModelEntropyReward(qwen_dir, device="cuda")
    with pytest.raises(TypeError, match="verifier"):
        CrossModelEntropyReward(42)


def test_bfloat16_close_to_float32(qwen_dir, reward):
    bf16 = CrossModelEntropyReward(qwen_dir, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    prompts, responses = [p for p, _ in TEXT_PAIRS], [r for _, r in TEXT_PAIRS]
    assert bf16.score(prompts, responses) == pytest.approx(reward.score(prompts, responses), abs=0.1)


def test_different_architectures_load_by_path(llama_dir):
    reward = CrossModelEntropyReward(llama_dir)
    assert type(reward.model).__name__ == "LlamaForCausalLM"
    model = build_model("llama", 10)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_token_strings_keep_multibyte_characters_whole(reward):
    text = " Héllo 東京 🙂🚀 ∪ naïve"
    [ts] = reward.score_tokens(["Hi"], [text])
    assert "".join(ts.tokens) == text
    assert "\ufffd" not in "".join(ts.tokens)
    assert len(ts.tokens) == len(ts.token_ids) > len(text.split())


def test_packing_gives_the_same_scores(qwen_dir, reward):
    packed = CrossModelEntropyReward(qwen_dir, pack_tokens=48)
    assert packed.engine.pack_tokens == 48
    prompts, responses = [p for p, _ in TEXT_PAIRS], [r for _, r in TEXT_PAIRS]
    assert packed.score(prompts, responses) == pytest.approx(reward.score(prompts, responses), abs=1e-5)
    assert packed.engine.stats.padded_tokens == packed.engine.stats.tokens_forward  # packed rows have no padding
