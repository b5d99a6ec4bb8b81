"""A labelled set for choosing a verifier, built from what ships offline: MT-Bench questions and their GPT-4 reference
answers (good, label 1) against three kinds of bad answers (label 0), plus SmolLM2's own answers judged by the
reference where a final number decides.

    python -m experiments.verifier_data --out data/verifier_labelled.jsonl

Rows (`question_id`, `category`, `source`, `label`, `prompt`, `response`, `note`), by `source`:

- `reference` (1): the GPT-4 reference answer to the question (first turn);
- `other_question` (0): the reference answer of another question of the same category (a seeded derangement);
- `perturbed_number` (0): the reference answer with its final number (below) moved by a plausible, seeded offset at the
  number's own precision (`38` -> `37`, `12000` -> `14000`, `94.4` -> `94.6`); `perturbed_word` (0) where the answer
  has no number: its last direction / ordinal / number word / truth value swapped (`west` -> `east`);
- `smollm2_correct` (1) / `smollm2_wrong` (0): SmolLM2-135M-Instruct's greedy answer (chat template, at most 200 new
  tokens) to a math question, kept only when it ended on its own and holds a number: its last number is compared
  with the reference's final answer: in the reference's last sentence holding a number, the last number that the
  question does not hold (list markers such as `3.` are not numbers). Answers cut at the token limit or without a
  number are left out.

Everything is deterministic (seeded); SmolLM2's answers are cached in `outputs/verifier_data/` (minutes to generate on
2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

from cme_reward.files.atomic import write_atomic

from .settings import read_json, write_json

__all__ = ["build_rows", "final_answer", "generate_answers", "last_number", "main", "perturb"]

logger = logging.getLogger(__name__)

SEED = 0
MAX_NEW_TOKENS = 200
GENERATOR = "smollm2"
CACHE = Path("outputs/verifier_data/smollm2_answers.json")
# a number (commas as thousands separators) with its sign; group "digits" is the unsigned part
NUMBER = re.compile(r"(?<![\w.])-?(?P<digits>\d+(?:,\d{3})*(?:\.\d+)?)(?![\w])")
LIST_MARKER = re.compile(r"^[ \t]*$")  # what precedes a "3." / "3)" list marker on its line
SWAPS = {
    "first": "second", "second": "third", "third": "first", "fourth": "third", "last": "first",
    "east": "west", "west": "east", "north": "south", "south": "north",
    "true": "false", "false": "true", "one": "two", "two": "three", "three": "four", "four": "five",
    "grandfather": "uncle", "brother": "sister", "sister": "brother",
}  # fmt: skip
WORD = re.compile(r"\b(" + "|".join(SWAPS) + r")\b", re.IGNORECASE)


def _numbers(text: str) -> list[re.Match]:
    """The numbers of `text`, list markers (`3.` or `3)` opening a line) left out."""
    found = []
    for match in NUMBER.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if LIST_MARKER.match(text[line_start : match.start()]) and text[match.end() : match.end() + 1] in (".", ")"):
            continue
        found.append(match)
    return found


def _value(match: re.Match) -> float:
    return float(match.group().replace(",", ""))


def last_number(text: str) -> float | None:
    """The last number written in `text` (list markers left out), or `None`."""
    found = _numbers(text)
    return _value(found[-1]) if found else None


def _answer_match(question: str, reference: str) -> re.Match | None:
    """The reference's final answer: in the last sentence that holds a number, the last number that the question does
    not hold (else that sentence's last number)."""
    asked = {_value(m) for m in _numbers(question)}
    found = _numbers(reference)
    for sentence in reversed(list(re.finditer(r"[^\n]+?(?:[.!?](?=\s|$)|$)", reference, re.M))):
        inside = [m for m in found if sentence.start() <= m.start() < sentence.end()]
        if inside:
            return next((m for m in reversed(inside) if _value(m) not in asked), inside[-1])
    return None


def final_answer(question: str, reference: str) -> float | None:
    """The value of the reference's final answer (see [`_answer_match`]), or `None` when it holds no number."""
    match = _answer_match(question, reference)
    return None if match is None else _value(match)


def _same(answer: float, expected: float) -> bool:
    close = lambda a, b: abs(a - b) <= 1e-6 * max(1.0, abs(b))  # noqa: E731
    return close(answer, expected) or close(answer * 100, expected) or close(answer, expected * 100)  # 0.19 ~ 19%


def _moved(number: str, rng: random.Random) -> str:
    """`number` moved by 1 or 2 units of its own precision (tens for 280, thousands for 12000), never below 0."""
    whole, _, decimals = number.partition(".")
    digits = whole + decimals
    zeros = 0 if decimals else len(whole) - len(whole.rstrip("0")) if whole.strip("0") else 0
    value, unit = int(digits), 10**zeros
    steps = [d for d in (-2, -1, 1, 2) if value + d * unit >= 0]
    moved = str(value + rng.choice(steps) * unit).rjust(len(digits), "0")
    return f"{moved[: len(moved) - len(decimals)]}.{moved[len(moved) - len(decimals) :]}" if decimals else moved


def perturb(question: str, answer: str, rng: random.Random) -> tuple[str, str, str] | None:
    """`(text, source, note)`: `answer` with its final number moved (see [`final_answer`]), or, without a number, its
    last swappable word swapped; `None` when it has neither."""
    match = _answer_match(question, answer)
    if match is not None and "," not in match.group("digits"):
        old = match.group("digits")
        new = _moved(old, rng)
        start, end = match.span("digits")
        return answer[:start] + new + answer[end:], "perturbed_number", f"{old} -> {new}"
    words = list(WORD.finditer(answer))
    if not words:
        return None
    word = words[-1]
    old = word.group()
    new = SWAPS[old.lower()]
    new = new.capitalize() if old[0].isupper() else new
    return answer[: word.start()] + new + answer[word.end() :], "perturbed_word", f"{old} -> {new}"


def generate_answers(questions: dict[int, str], *, cache: Path = CACHE) -> dict[int, dict[str, Any]]:
    """SmolLM2's greedy answer to each question: `{question_id: {"text", "ended"}}`, cached in `cache`."""
    import torch

    from cme_reward.training.policy import load_trainable_policy

    key = json.dumps({"generator": GENERATOR, "max_new_tokens": MAX_NEW_TOKENS, "ids": sorted(questions)})
    cached = read_json(cache, key)
    if cached is not None:
        return {int(k): v for k, v in cached["answers"].items()}
    model, tokenizer = load_trainable_policy(GENERATOR)
    model.eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    answers, start = {}, time.perf_counter()
    for qid, question in sorted(questions.items()):
        chat = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=False)  # fmt: skip
        batch = tokenizer(chat, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        row = out[0, batch["input_ids"].shape[1] :].tolist()
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        text = tokenizer.decode(row if stop is None else row[:stop], skip_special_tokens=True).strip()
        answers[qid] = {"text": text, "ended": stop is not None}
        logger.info("question %d: %d tokens, ended=%s (%.0f s so far)", qid, len(row), stop is not None,
                    time.perf_counter() - start)  # fmt: skip
    write_json(cache, {"fingerprint": key, "answers": answers, "seconds": time.perf_counter() - start})
    return answers


def _derangement(ids: list[int], rng: random.Random) -> dict[int, int]:
    while True:
        shuffled = ids[:]
        rng.shuffle(shuffled)
        if all(a != b for a, b in zip(ids, shuffled)):
            return dict(zip(ids, shuffled))


def build_rows(references: list[dict[str, Any]], answers: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The labelled rows, grouped by question in `question_id` order (see the module docstring)."""
    by_id = {r["question_id"]: r for r in references}
    others: dict[int, int] = {}
    for category in sorted({r["category"] for r in references}):
        ids = sorted(r["question_id"] for r in references if r["category"] == category)
        others |= _derangement(ids, random.Random(f"{SEED}:other:{category}"))
    rows = []
    for qid, ref in sorted(by_id.items()):
        base = {"question_id": qid, "category": ref["category"], "prompt": ref["prompt"]}
        rows.append({**base, "source": "reference", "label": 1, "response": ref["response"], "note": ""})
        other = others[qid]
        rows.append({**base, "source": "other_question", "label": 0, "response": by_id[other]["response"],
                     "note": f"reference answer of question {other}"})  # fmt: skip
        changed = perturb(ref["prompt"], ref["response"], random.Random(f"{SEED}:perturb:{qid}"))
        if changed is not None:
            text, source, note = changed
            rows.append({**base, "source": source, "label": 0, "response": text, "note": note})
        answer = answers.get(qid)
        expected = final_answer(ref["prompt"], ref["response"])
        if answer is None or expected is None or not answer["ended"]:
            continue
        got = last_number(answer["text"])
        if got is None:
            continue
        good = _same(got, expected)
        rows.append({**base, "source": f"{GENERATOR}_{'correct' if good else 'wrong'}", "label": int(good),
                     "response": answer["text"], "note": f"final number {got:g}, reference {expected:g}"})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/verifier_labelled.jsonl"), help="default: %(default)s")
    parser.add_argument("--cache", type=Path, default=CACHE, help="SmolLM2's answers (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from cme_reward.data.mtbench import mtbench_reference_pairs

    references = mtbench_reference_pairs()
    decidable = {r["question_id"]: r["prompt"] for r in references
                 if r["category"] == "math" and final_answer(r["prompt"], r["response"]) is not None}  # fmt: skip
    rows = build_rows(references, generate_answers(decidable, cache=args.cache))
    write_atomic(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    print(f"wrote {args.out}: {len(rows)} rows, {sum(r['label'] for r in rows)} good; {counts}")


if __name__ == "__main__":
    main()
