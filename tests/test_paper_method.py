"""The paper's method: entropy metric, reductions, answer spans, end-of-turn scoring, dense per-token values across
tokenizers, TRL extras. Every value is checked against a naive fp32 reference (one pair, full log_softmax)."""

import math
import re

import pytest
import torch
from tiny_models import build_tokenizer, save_verifier
from transformers import AutoModelForCausalLM, AutoTokenizer

from cme_reward import CMEConfig, CrossModelEntropyReward

PAIRS = [
    ("What is 2 + 2?", "The answer is \\boxed{4}. Done."),
    ("Héllo wörld 東京", " Привет мир 🙂🚀 naïve café \\boxed{\\frac{1}{2}}"),
    ("Write a poem about the sea.", "The sea is blue and deep and wide, " * 5),
    ("def add(a, b):", "\n    return a + b\n"),
]


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma3"])
def verifier_dir(request, tmp_path_factory):
    arch = request.param
    return save_verifier(tmp_path_factory.mktemp(arch), arch, seed=5, bos=arch != "llama")


@pytest.fixture(scope="module")
def arch_disk(verifier_dir):
    return AutoModelForCausalLM.from_pretrained(verifier_dir).eval(), AutoTokenizer.from_pretrained(verifier_dir)


def naive(arch_disk, prompt, response, *, extra=()):
    """(log-probs, negated entropies) of the response tokens (+ `extra` ids), one pair, full fp32 log_softmax."""
    model, tok = arch_disk
    context = tok(prompt).input_ids or [tok.bos_token_id or tok.eos_token_id]
    response_ids = tok(response, add_special_tokens=False).input_ids + list(extra)
    ids = torch.tensor([context + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], -1)[len(context) - 1 :]  # (R, V)
    picked = logp.gather(1, torch.tensor(response_ids)[:, None]).squeeze(1)
    return picked, (logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_entropy_metric_matches_reference(verifier_dir, arch_disk, prefix_sharing):
    reward = CrossModelEntropyReward(
        verifier_dir, metric="entropy", prefix_sharing=prefix_sharing, min_shared_tokens=0
    )
    prompts = [p for p, _ in PAIRS] + [PAIRS[0][0]] * 3  # a group that shares its context
    responses = [r for _, r in PAIRS] + [" 4", " four", " It is 4."]
    for (p, r), ts in zip(zip(prompts, responses), reward.score_tokens(prompts, responses)):
        logprobs, neg_entropy = naive(arch_disk, p, r)
        assert ts.metric == "entropy"
        torch.testing.assert_close(torch.tensor(ts.values), neg_entropy, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(ts.logprobs), logprobs, atol=1e-4, rtol=1e-4)
        assert ts.score == pytest.approx(neg_entropy.mean().item(), abs=1e-4)
        assert all(v <= 1e-6 for v in ts.values)  # -H <= 0


@pytest.mark.parametrize(
    "reduction, quantile, expected",
    [
        ("mean", 0.1, lambda v: v.mean()),
        ("sum", 0.1, lambda v: v.sum()),
        ("min", 0.1, lambda v: v.min()),
        ("perplexity", 0.1, lambda v: -math.exp(-v.double().mean().item())),
        ("quantile", 0.1, lambda v: torch.quantile(v.double(), 0.1)),
        ("quantile", 0.5, lambda v: torch.quantile(v.double(), 0.5)),
        ("quantile", 0.0, lambda v: v.min()),
    ],
)
def test_reductions(verifier_dir, arch_disk, reduction, quantile, expected):
    reward = CrossModelEntropyReward(verifier_dir, reduction=reduction, quantile=quantile)
    scores = reward.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    for (p, r), s in zip(PAIRS, scores):
        assert s == pytest.approx(float(expected(naive(arch_disk, p, r)[0])), rel=1e-4, abs=1e-4)


def _span_reference(arch_disk, prompt, response, span, weight=1.0):
    """Mean log-prob over the verifier tokens whose characters overlap `span`, found by decoding prefixes."""
    _, tok = arch_disk
    ids = tok(response, add_special_tokens=False).input_ids
    logprobs, _ = naive(arch_disk, prompt, response)
    ends = [len(tok.decode(ids[: k + 1]).encode()) for k in range(len(ids))]
    starts = [0] + ends[:-1]
    lo, hi = len(response[: span[0]].encode()), len(response[: span[1]].encode())
    inside = torch.tensor([s < hi and e > lo and e > s for s, e in zip(starts, ends)])
    return weight * logprobs[inside].mean().item() + (1 - weight) * logprobs.mean().item()


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_boxed_span_and_blend(verifier_dir, arch_disk, weight):
    reward = CrossModelEntropyReward(verifier_dir, score_span="boxed", span_weight=weight, missing_span_value=-5.0)
    prompts, responses = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    for (p, r), s in zip(PAIRS, reward.score(prompts, responses)):
        if "\\boxed{" not in r:
            assert s == -5.0  # the authors' no_box_penalty
            continue
        start = r.rindex("\\boxed{") + len("\\boxed{")
        assert s == pytest.approx(
            _span_reference(arch_disk, p, r, (start, len(r) - r[::-1].index("}") - 1), weight), abs=1e-4
        )


def test_regex_and_callable_spans(verifier_dir, arch_disk):
    prompt, response = PAIRS[0]
    by_regex = CrossModelEntropyReward(verifier_dir, score_span=r"answer is (.*?)\.").score([prompt], [response])[0]
    match = re.search(r"answer is (.*?)\.", response)
    assert by_regex == pytest.approx(_span_reference(arch_disk, prompt, response, match.span(1)), abs=1e-4)
    by_callable = CrossModelEntropyReward(verifier_dir, score_span=lambda text: (0, 3)).score([prompt], [response])[0]
    assert by_callable == pytest.approx(_span_reference(arch_disk, prompt, response, (0, 3)), abs=1e-4)
    missing = CrossModelEntropyReward(verifier_dir, score_span=r"zzz(\d)").score([prompt], [response])
    assert missing == [None]


def test_score_eos_adds_the_end_of_turn_token(verifier_dir, arch_disk):
    _, tok = arch_disk
    reward = CrossModelEntropyReward(verifier_dir, score_eos=True)
    prompt, response = PAIRS[0]
    ended, clipped = reward.score_tokens([prompt, prompt], [response, response], ended=[True, False])
    assert ended.token_ids[-1] == tok.eos_token_id and clipped.token_ids[-1] != tok.eos_token_id
    assert len(ended) == len(clipped) + 1
    want, _ = naive(arch_disk, prompt, response, extra=[tok.eos_token_id])
    torch.testing.assert_close(torch.tensor(ended.logprobs), want, atol=1e-4, rtol=1e-4)
    chat = [{"role": "user", "content": prompt}]
    if tok.chat_template:  # ChatML: the end of an assistant turn is <|im_end|>, not EOS
        (chat_ended,) = reward.score_tokens([chat], [response])
        assert chat_ended.token_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_dense_identity_and_conservation_across_tokenizers(verifier_dir, arch_disk, tmp_path):
    _, tok = arch_disk
    reward = CrossModelEntropyReward(verifier_dir)
    prompts, completions = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    token_scores = reward.score_tokens(prompts, completions)
    own_ids = [tok(r, add_special_tokens=False).input_ids for r in completions]
    dense = reward.score_dense(prompts, completions, own_ids, tok)
    assert dense == [ts.logprobs for ts in token_scores]  # exactly, with the verifier's own tokenizer

    policy = build_tokenizer(vocab_size=300)  # other merges: other token boundaries
    policy_ids = [policy(r, add_special_tokens=False).input_ids + [policy.eos_token_id] for r in completions]
    dense = reward.score_dense(prompts, completions, policy_ids, policy)
    for values, ids, ts in zip(dense, policy_ids, token_scores):
        assert len(values) == len(ids) and values[-1] is None  # the EOS covers no text: no value
        assert sum(values[:-1]) == pytest.approx(sum(ts.logprobs), abs=1e-4)
    means = CrossModelEntropyReward(verifier_dir, alignment="overlap_mean").score_dense(
        prompts, completions, policy_ids, policy
    )
    assert [len(v) for v in means] == [len(i) for i in policy_ids]


def test_dense_with_score_eos_gives_the_end_value_to_the_policy_eos(verifier_dir, arch_disk):
    _, tok = arch_disk
    reward = CrossModelEntropyReward(verifier_dir, score_eos=True)
    policy = build_tokenizer(vocab_size=300)
    prompt, response = PAIRS[0]
    ids = policy(response, add_special_tokens=False).input_ids
    ended, clipped = reward.score_dense([prompt] * 2, [response] * 2, [ids + [policy.eos_token_id], ids], policy)
    eos_value = naive(arch_disk, prompt, response, extra=[tok.eos_token_id])[0][-1].item()
    assert ended[-1] == pytest.approx(eos_value, abs=1e-4)
    assert sum(ended) == pytest.approx(sum(clipped) + eos_value, abs=1e-4)


def test_trl_call_verifier_prompt_column_and_log_extra(verifier_dir):
    reward = CrossModelEntropyReward(verifier_dir, verifier_prompt_column="question")
    extra, metrics = {}, {}
    got = reward(
        prompts=["SYSTEM: answer in one word.\nWhat is 2 + 2?"] * 2,
        completions=[" 4", ""],
        completion_ids=[[1], [2]],
        question=["What is 2 + 2?"] * 2,
        log_extra=lambda column, values: extra.setdefault(column, values),
        log_metric=lambda name, value: metrics.setdefault(name, value),
    )
    assert got == [reward.score(["What is 2 + 2?"], [" 4"])[0], None]
    assert extra["cross_model_entropy/verifier_tokens"][1] == 0
    assert extra["cross_model_entropy/least_likely_token"][0].startswith("'")
    with pytest.raises(ValueError, match="verifier_prompt_column='question'"):
        reward(prompts=["a"], completions=["b"], completion_ids=[[1]])


def test_score_eos_in_a_trainer_needs_the_policy_tokenizer(verifier_dir, arch_disk):
    _, tok = arch_disk
    reward = CrossModelEntropyReward(verifier_dir, score_eos=True)
    with pytest.raises(ValueError, match="policy_tokenizer"):
        reward(prompts=["a"], completions=["b"], completion_ids=[[5]])
    reward.policy_tokenizer = tok
    ended, clipped = reward(prompts=["a", "a"], completions=["b", "b"], completion_ids=[[5, tok.eos_token_id], [5]])
    assert ended != clipped


@pytest.mark.parametrize(
    "options, match",
    [
        ({"metric": "surprise"}, "metric must be one of"),
        ({"reduction": "median"}, "reduction must be one of"),
        ({"quantile": 1.5}, r"quantile must be a float in \[0, 1\]"),
        ({"score_span": "("}, "not a valid regular expression"),
        ({"score_span": 3}, "score_span must be"),
        ({"span_weight": -0.1}, "span_weight"),
        ({"missing_span_value": math.nan}, "missing_span_value"),
        ({"alignment": "words"}, "alignment must be one of"),
        ({"score_eos": "yes"}, "score_eos must be a bool"),
        ({"verifier_prompt_column": ""}, "verifier_prompt_column"),
    ],
)
def test_options_checked_at_construction(options, match):
    with pytest.raises(ValueError, match=match):
        CMEConfig(**options)


def test_ensemble_of_verifiers_the_trl_way(tmp_path):
    """Two verifiers in `reward_funcs` with `reward_weights`: TRL sums weighted rewards; names keep logs apart."""
    from trl.trainer.utils import get_callable_name

    a = CrossModelEntropyReward(save_verifier(tmp_path / "a", "qwen2", seed=7), name="cme_qwen")
    b = CrossModelEntropyReward(save_verifier(tmp_path / "b", "llama", seed=8, bos=False), name="cme_llama")
    assert {get_callable_name(a), get_callable_name(b)} == {"cme_qwen", "cme_llama"}
    prompts, completions = ["Say hi."] * 2, [" hi", " hello there"]
    weights = [0.7, 0.3]
    combined = [0.7 * x + 0.3 * y for x, y in zip(a(prompts=prompts, completions=completions),
                                                  b(prompts=prompts, completions=completions))]  # fmt: skip
    assert combined == pytest.approx([sum(w * r.score(prompts, completions)[i] for w, r in zip(weights, (a, b)))
                                      for i in range(2)])  # fmt: skip
