"""`CMEConfig.from_paper`: the authors' scoring rules (no-box penalty, answer-only, blend, perplexity, token level with
character-offset alignment), checked against a plain one-pair reference written here from the rules as the authors
state them (one unbatched forward, full float32 log_softmax, HF offsets, O(n * m) alignment loops)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tiny_models import build_tokenizer, load_tokenizer
from transformers import AutoModelForCausalLM

from cme_reward import CMEConfig, CrossModelEntropyReward, dense_advantages
from cme_reward.scoring.paper import PaperRules, paper_box

PROMPTS = ["What is 2 + 2?", "Héllo wörld 東京", "Compute 1/2 + 1/4."]
RESPONSES = [
    "2 + 2 = \\boxed{4}.",
    "First \\boxed{1} then \\boxed{2",  # an unbalanced last box: no box at all (no fall back to the first)
    "The answer is \\boxed{}.",  # an empty box: a span no token overlaps
    "Nested \\boxed{a \\boxed{b} c} end.",
    "No box here, just words: the sea is deep.",
    " Привет 🙂🚀 naïve café \\boxed{\\frac{3}{4}}",
    "",
    "   \n\t",
]
METRICS = ("entropy", "perplexity", "predictive_entropy")


@pytest.fixture(scope="module")
def verifier(qwen_dir):
    return AutoModelForCausalLM.from_pretrained(qwen_dir).eval(), load_tokenizer(qwen_dir)


def box(text: str):
    key = "\\boxed{"
    i = text.rfind(key)
    if i < 0:
        return None
    depth = 1
    for j in range(i + len(key), len(text)):
        depth += (text[j] == "{") - (text[j] == "}")
        if depth == 0:
            return i + len(key), j
    return None


def losses(verifier, prompt: str, response: str, metric: str) -> tuple[list[float], list[tuple[int, int]]]:
    """Per-token loss (cross-entropy, or predictive entropy) of the response and its tokens' character offsets."""
    model, tok = verifier
    context = tok(prompt).input_ids
    enc = tok(response, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([context + enc.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], -1)[len(context) - 1 :]  # (R, V)
    if metric == "predictive_entropy":
        out = -(logp.exp() * logp).sum(-1)
    else:
        out = -logp.gather(1, torch.tensor(enc.input_ids)[:, None])[:, 0]
    return out.tolist(), [tuple(o) for o in enc.offset_mapping]


def reference_score(verifier, prompt, response, metric, answer_only, weight, penalty) -> float:
    if not response.strip():
        return -50.0
    loss, offsets = losses(verifier, prompt, response, metric)
    f = math.exp if metric == "perplexity" else (lambda x: x)
    span = box(response)
    full = sum(loss) / len(loss)
    inside = [x for x, (s, e) in zip(loss, offsets) if span and e > s and e > span[0] and s < span[1]]
    if weight is not None:
        answer = penalty if span is None or not inside else sum(inside) / len(inside)
        return -f((1 - weight) * (full + (penalty if span is None else 0)) + weight * answer)
    if answer_only:
        if span is None:
            return -f(penalty)
        return -f(sum(inside) / len(inside) if inside else full)
    return -f(full + (penalty if span is None else 0))


def reference_dense(verifier, prompt, response, policy_tok, metric, answer_only, penalty) -> list[float]:
    loss, v_off = losses(verifier, prompt, response, metric)
    span = box(response)
    if answer_only and span is None:
        loss = [penalty] * len(loss)
    elif not answer_only and span is None:
        loss = [x + penalty for x in loss]
    elif answer_only:
        loss = [x if e > s and e > span[0] and s < span[1] else 0.0 for x, (s, e) in zip(loss, v_off)]
    g_off = policy_tok(response, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    out = []
    for a, b in g_off:
        if a == b:
            out.append(0.0)
            continue
        hits = [x for x, (s, e) in zip(loss, v_off) if e > s and e > a and s < b]
        if hits:
            out.append(sum(hits) / len(hits))
        else:
            mids = [(abs((s + e) / 2 - (a + b) / 2), j) for j, (s, e) in enumerate(v_off) if e > s]
            out.append(loss[min(mids)[1]] if mids else loss[0])
    f = math.exp if metric == "perplexity" else (lambda x: x)
    return [-f(x) for x in out]


def close(a: float, b: float, metric: str, tol: float = 2e-5) -> bool:
    if metric == "perplexity" and a < 0 and b < 0:  # compared in log space, as the rewards span orders of magnitude
        return abs(math.log(-a) - math.log(-b)) <= tol
    return abs(a - b) <= tol


CASES = [
    c for c in itertools.product(METRICS, (False, True), (None, 0.3), (5.0, 0.0)) if not (c[1] and c[2] is not None)
]


@pytest.mark.parametrize(("metric", "answer_only", "weight", "penalty"), CASES)
def test_scores_equal_the_reference(verifier, qwen_dir, metric, answer_only, weight, penalty):
    config = CMEConfig.from_paper(reward_metric=metric, answer_only=answer_only, answer_weight=weight,
                                  no_box_penalty=penalty)  # fmt: skip
    reward = CrossModelEntropyReward(qwen_dir, config=config, show_progress_bar=False)
    pairs = list(itertools.product(PROMPTS, RESPONSES))
    got = reward.score([p for p, _ in pairs], [r for _, r in pairs])
    for (prompt, response), score in zip(pairs, got):
        want = reference_score(verifier, prompt, response, metric, answer_only, weight, penalty)
        assert close(score, want, metric), (prompt, response, score, want)


@pytest.fixture(scope="module")
def policy_tok():
    return build_tokenizer(vocab_size=300, bos=False)  # another vocabulary: alignment by character offsets


@pytest.mark.parametrize(
    ("metric", "answer_only", "penalty"), list(itertools.product(METRICS, (False, True), (5.0, 0.0)))
)
def test_dense_values_equal_the_reference(verifier, qwen_dir, policy_tok, metric, answer_only, penalty):
    config = CMEConfig.from_paper(
        reward_metric=metric, answer_only=answer_only, no_box_penalty=penalty, token_level=True
    )
    reward = CrossModelEntropyReward(qwen_dir, config=config, show_progress_bar=False)
    pairs = list(itertools.product(PROMPTS[:2], RESPONSES))
    ids = [policy_tok(r, add_special_tokens=False).input_ids + [policy_tok.eos_token_id] for _, r in pairs]
    dense = reward.score_dense([p for p, _ in pairs], [r for _, r in pairs], ids, policy_tok)
    for (prompt, response), row, row_ids in zip(pairs, dense, ids):
        if not response.strip():  # empty and blank: empty_value (-50) at every token, the EOS included
            assert row == [-50.0] * len(row_ids)
            continue
        assert len(row) == len(row_ids) and row[-1] is None  # the EOS: no value (the authors' advantage there is 0)
        want = reference_dense(verifier, prompt, response, policy_tok, metric, answer_only, penalty)
        assert all(close(a, b, metric) for a, b in zip(row[:-1], want)), (response, row, want)


def test_non_canonical_completion_ids_still_align(qwen_dir, policy_tok, caplog):
    """Sampled ids that are not the tokenizer's own tokenization keep their values on the text they spell."""
    reward = CrossModelEntropyReward(qwen_dir, config=CMEConfig.from_paper(token_level=True), show_progress_bar=False)
    text = "the sea is deep"
    canonical = policy_tok(text, add_special_tokens=False).input_ids
    pieces = [i for ch in text for i in policy_tok(ch, add_special_tokens=False).input_ids]  # one char at a time
    assert pieces != canonical and policy_tok.decode(pieces) == text
    (row,) = reward.score_dense(["Hi"], [text], [pieces], policy_tok)
    (whole,) = reward.score_dense(["Hi"], [text], [canonical], policy_tok)
    assert len(row) == len(pieces) and all(v is not None for v in row)
    assert min(whole) - 1e-6 <= sum(row) / len(row) <= max(whole) + 1e-6  # each char takes the values around it
    assert "not the policy tokenizer's own tokenization" in caplog.text


def test_from_paper_maps_the_authors_names():
    config = CMEConfig.from_paper(reward_metric="predictive_entropy", no_box_penalty=0.0)
    assert (config.metric, config.reduction, config.empty_value, config.alignment) == (
        "entropy",
        "mean",
        -50.0,
        "chars",
    )
    assert config.paper == PaperRules(no_box_penalty=0.0) and config.max_length == 2048
    assert CMEConfig.from_paper(reward_metric="perplexity").reduction == "perplexity"
    assert CMEConfig.from_paper(max_length=512).max_length == 512
    for kwargs, match in [({"reward_metric": "ce"}, "reward_metric"), ({"answer_weight": 1.5}, "answer_weight"),
                          ({"answer_weight": 0.5, "token_level": True}, "sequence-level"),
                          ({"no_box_penalty": math.inf}, "no_box_penalty"),
                          ({"answer_only": 1}, "answer_only")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            CMEConfig.from_paper(**kwargs)
    with pytest.raises(ValueError, match="replace score_span"):
        CMEConfig(paper=PaperRules(), score_span="boxed")
    with pytest.raises(ValueError, match="score_eos"):
        CMEConfig(alignment="chars", score_eos=True)


def test_the_authors_box():
    assert paper_box("x \\boxed{1} y \\boxed{2}") == (21, 22)
    assert paper_box("\\boxed{1} then \\boxed{2") is None  # the last opener decides, unbalanced: none
    assert paper_box("\\boxed{}") == (7, 7)
    assert paper_box("\\boxed{a \\boxed{b} c}") == (16, 17)  # the last opener: the inner box
    assert paper_box("no box") is None


def test_token_level_false_is_a_scalar_reward(qwen_dir):
    sequence = CrossModelEntropyReward(qwen_dir, config=CMEConfig.from_paper(), show_progress_bar=False)
    dense = CrossModelEntropyReward(qwen_dir, config=CMEConfig.from_paper(token_level=True), show_progress_bar=False)
    plain = CrossModelEntropyReward(qwen_dir, show_progress_bar=False)
    assert sequence.dense is False and dense.dense is True and plain.dense is True


def test_population_std_is_the_authors_normalisation():
    """The authors normalise per position by the population std of the call's completions (one group of G)."""
    values = [[-1.0, -2.0, -3.0], [-2.0, -1.0], [-4.0, -1.5, -2.5], [-50.0]]
    got = dense_advantages(values, 4, std="population")
    for t in range(3):
        column = [row[t] for row in values if t < len(row)]
        mean = sum(column) / len(column)
        sigma = math.sqrt(sum((x - mean) ** 2 for x in column) / len(column))
        for row, adv in zip(values, got):
            if t < len(row):
                assert adv[t] == pytest.approx((row[t] - mean) / (sigma + 1e-4) if len(column) > 1 else 0.0, abs=1e-5)
