"""The corners an RL policy searches: blank answers are empty everywhere, stopping earns nothing by itself in dense
rewards, and the repetition guard takes credit from repeats, prompt copies and injected special tokens. The battery
on the real SmolLM2 verifier is `experiments.reward_hacking` (its numbers: docs/reward-hacking.md)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import read_jsonl, write_jsonl
from tiny_models import build_tokenizer

from cme_reward import CMEConfig, CrossModelEntropyReward, dense_advantages
from cme_reward.scoring.guard import RESPONSE_NGRAM, flagged_tokens, guard_floor, prompt_ngram

BLANKS = ["", " ", "   ", "\n\n", "\t \r\n", "\u3000"]  # \u3000: an ideographic space (str.strip() removes it)


@pytest.fixture(scope="module")
def floor_reward(qwen_dir):
    return CrossModelEntropyReward(qwen_dir, empty_value=-10.0, show_progress_bar=False)


@pytest.fixture(scope="module")
def policy_tok():
    return build_tokenizer(vocab_size=300, bos=False)


# ---- blank is empty ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blank", BLANKS)
def test_blank_scores_empty_value_in_every_entry_point(reward, floor_reward, blank):
    prompts = ["Say something.", [{"role": "user", "content": "Say something."}]]
    assert reward.score(prompts, [blank, blank]) == [None, None]
    assert floor_reward.score(prompts, [blank, blank]) == [-10.0, -10.0]
    assert floor_reward(prompts=prompts, completions=[blank, [{"role": "assistant", "content": blank}]]) == [-10.0] * 2
    entropy = CrossModelEntropyReward(floor_reward.model, tokenizer=floor_reward.tokenizer, metric="entropy",
                                      empty_value=-10.0, show_progress_bar=False)  # fmt: skip
    assert entropy.score(prompts, [blank, blank]) == [-10.0, -10.0]
    (tokens,) = floor_reward.score_tokens(["Hi"], [blank])
    assert tokens.score == -10.0 and tokens.token_ids == [] and tokens.values == []


def test_text_with_a_visible_character_is_scored(reward):
    scores = reward.score(["Hi"] * 3, [" .", "\u200b", "  x  "])  # a zero-width space is not whitespace
    assert all(s is not None and math.isfinite(s) for s in scores)


@pytest.mark.parametrize("blank", BLANKS)
def test_dense_blank_rows(reward, floor_reward, policy_tok, blank):
    ids = policy_tok(blank, add_special_tokens=False).input_ids + [policy_tok.eos_token_id]
    assert floor_reward.score_dense(["Hi"], [blank], [ids], policy_tok) == [[-10.0] * len(ids)]
    assert reward.score_dense(["Hi"], [blank], [ids], policy_tok) == [None]  # empty_value None: no dense row


def test_empty_completion_gets_a_negative_advantage_never_a_reward(floor_reward, reward, policy_tok):
    """A group of four with an empty completion: with a floor its tokens' advantage is negative (it used to get 0.0,
    the best log-prob, and a positive advantage); with `None` it has no dense part at all."""
    texts = ["The sea is deep.", "The sea is blue and wide.", "Deep sea.", ""]
    ids = [policy_tok(t, add_special_tokens=False).input_ids + [policy_tok.eos_token_id] for t in texts]
    rows = floor_reward.score_dense(["Describe the sea."] * 4, texts, ids, policy_tok)
    advantages = dense_advantages(rows, 4)
    assert advantages[3][0] < 0
    rows = reward.score_dense(["Describe the sea."] * 4, texts, ids, policy_tok)
    assert rows[3] is None and dense_advantages(rows, 4)[3] is None


def test_stopping_early_is_not_rewarded(reward, policy_tok):
    """The EOS carries no value: a short completion's EOS is not compared with a longer one's real tokens."""
    texts = ["Deep.", "The sea is deep and wide and blue."]
    ids = [policy_tok(t, add_special_tokens=False).input_ids + [policy_tok.eos_token_id] for t in texts]
    rows = reward.score_dense(["Describe the sea."] * 2, texts, ids, policy_tok)
    assert rows[0][-1] is None and rows[1][-1] is None
    short_eos = len(ids[0]) - 1
    assert dense_advantages(rows, 2)[0][short_eos] == 0.0


def test_blank_in_the_cli_and_the_server(qwen_dir, reward, tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from cme_reward.cli.main import main
    from cme_reward.server.app import create_app

    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Hi", "response": r} for r in ["   ", "\n", " ok"]])
    assert main(["score", "--verifier", str(qwen_dir), "--input", str(tmp_path / "in.jsonl"), "--output",
                 str(tmp_path / "out.jsonl"), "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    assert [row["cme"] is None for row in read_jsonl(tmp_path / "out.jsonl")] == [True, True, False]
    with TestClient(create_app(reward)) as client:
        assert client.post("/score", json={"prompts": ["Hi"], "responses": ["  "]}).json() == {"scores": [None]}
        answer = client.post("/get_reward", json={"query": ["Hi \n\n<|im_end|>"], "prompts": ["Hi"]}).json()
    assert answer["rewards"] == [-20.0] and answer["extra_logs"]["cme_scored"] == [0.0]


# ---- the repetition guard ---------------------------------------------------------------------------------------


def test_flags_repeats_copies_and_special_tokens():
    n = RESPONSE_NGRAM
    text = list(range(10, 10 + n))
    assert flagged_tokens(text + text, [], special_ids=set()) == [False] * (2 * n - 1) + [True]
    assert flagged_tokens([7] * (n + 3), [], special_ids=set()) == [False] * n + [True] * 3  # the first n: new
    prompt = list(range(100, 109))  # 9 tokens: copies of 3 tokens count
    assert prompt_ngram(9) == 3 and prompt_ngram(300) == 12 and prompt_ngram(1) == 3
    assert flagged_tokens([1, 100, 101, 102, 2], prompt, special_ids=set()) == [False, False, False, True, False]
    assert flagged_tokens([1, 100, 101, 5], prompt, special_ids=set()) == [False] * 4  # two tokens: a quote, no copy
    assert flagged_tokens([1, 2, 0, 3], [], special_ids={0}) == [False, False, True, False]


def test_floors():
    values = torch.tensor([-1.5, -0.5])
    assert guard_floor(values, "logprob", 49152) == pytest.approx(-math.log(49152))
    assert guard_floor(values, "entropy", 49152) == -2.0  # capped at -2
    assert guard_floor(torch.tensor([-3.5, -0.1]), "entropy", 49152) == -3.5  # the first position's uncertainty


@pytest.mark.parametrize("metric", ["logprob", "entropy"])
def test_guard_in_scores_and_dense_values(qwen_dir, policy_tok, metric):
    plain = CrossModelEntropyReward(qwen_dir, metric=metric, show_progress_bar=False)
    guarded = CrossModelEntropyReward(plain.model, tokenizer=plain.tokenizer, metric=metric, repetition_guard=True,
                                      show_progress_bar=False)  # fmt: skip
    fluent = " The sea is deep and wide."
    prompts = ["Describe the sea in one sentence."] * 3
    texts = [fluent, fluent * 3, " Describe the sea in one sentence."]  # original, repeated, echoed
    raw, safe = plain.score_tokens(prompts, texts), guarded.score_tokens(prompts, texts)
    floor = -math.log(len(plain.tokenizer)) if metric == "logprob" else None
    for r, g, text in zip(raw, safe, texts):
        assert g.logprobs == r.logprobs  # the raw log-probs are kept; only the values are guarded
        changed = [i for i, (a, b) in enumerate(zip(r.values, g.values)) if a != b]
        assert bool(changed) == (text != fluent)
        if floor is not None:
            assert all(g.values[i] == pytest.approx(floor) for i in changed)
        assert g.score == pytest.approx(sum(g.values) / len(g.values), abs=1e-6)
    assert safe[0].score == raw[0].score  # nothing to flag: the same score (lower scores: the SmolLM2 battery)
    ids = [policy_tok(t, add_special_tokens=False).input_ids for t in texts]
    dense = guarded.score_dense(prompts, texts, ids, policy_tok)
    same = plain.score_dense(prompts, texts, ids, policy_tok)
    assert dense[0] == same[0] and dense[1] != same[1]


def test_guard_keeps_the_appended_end_of_turn(qwen_dir):
    """`score_eos` appends the verifier's end-of-turn token, a special token the policy did not write: not flagged."""
    plain = CrossModelEntropyReward(qwen_dir, score_eos=True, show_progress_bar=False)
    guarded = CrossModelEntropyReward(plain.model, tokenizer=plain.tokenizer, score_eos=True, repetition_guard=True,
                                      show_progress_bar=False)  # fmt: skip
    prompt = [{"role": "user", "content": "Hi"}]
    (raw,), (safe,) = (
        plain.score_tokens([prompt], [" Hello there."]),
        guarded.score_tokens([prompt], [" Hello there."]),
    )
    assert raw.values == safe.values and raw.token_ids[-1] in plain.tokenizer.all_special_ids


def test_guard_is_off_by_default():
    assert CMEConfig().repetition_guard is False
    with pytest.raises(ValueError, match="repetition_guard must be a bool"):
        CMEConfig(repetition_guard="yes")


# ---- the battery on the real verifier -----------------------------------------------------------------------------


@pytest.mark.integration
def test_battery_on_smollm2_the_guard_makes_the_fluent_answer_win():
    from experiments.reward_hacking import run_battery, violations

    result = run_battery("smollm2", limit=3)
    for metric in ("logprob", "entropy"):
        assert violations(result, metric, False, "mean") > 0  # the hole exists without the guard
        for reduction in ("mean", "perplexity"):
            assert violations(result, metric, True, reduction) == 0, (metric, reduction)
