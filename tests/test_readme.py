"""README.md: its Python blocks are valid Python, its opening commands are what CI runs, its links resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang == language]


def test_python_blocks_parse():
    for body in blocks("python"):
        ast.parse(body)  # a block with a syntax error cannot run as pasted


def test_the_opening_commands_are_the_demo_and_what_ci_runs():
    demo, tests = blocks("bash")[:2]
    assert demo.strip().endswith("cme-reward demo") and "pip install torch==2.13.0" in demo
    command = tests.strip().rsplit("&& ", 1)[-1]
    assert command == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci and "pip install -q torch==2.13.0" in " ".join(ci)


def test_relative_links_exist():
    for target in re.findall(r"\]\(((?:docs|benchmarks|examples)/[^)#\s]+)\)", README):
        assert (ROOT / target).exists(), target
