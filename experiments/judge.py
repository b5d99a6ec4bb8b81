"""Pairwise LLM judge over any OpenAI-compatible chat endpoint, with the paper's protocol: the two responses are shown
in random A/B order, and the tie-adjusted win rate `(wins + 0.5 ties) / total` gets a bootstrap confidence interval.

The endpoint can be a local `vllm serve <strong open model>`, or any server speaking `POST /v1/chat/completions`.
From the environment: `CME_JUDGE_URL` (`http://host:port`, with or without `/v1`), `CME_JUDGE_MODEL` (the served
model id), `CME_JUDGE_API_KEY` (optional bearer token; never written anywhere).

Judge a finished run (writes `<run>/judge/<arm>.json`; then regenerate the report):

    CME_JUDGE_URL=http://127.0.0.1:8000 CME_JUDGE_MODEL=Qwen/Qwen2.5-72B-Instruct python -m experiments.judge
    python -m experiments.report
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cme_reward.errors import RemoteError
from cme_reward.http import JSONClient

from .metrics import bootstrap_ci
from .settings import DEFAULT_OUT, write_json

__all__ = ["ChatJudge", "JUDGE_SYSTEM", "compare", "judge_run", "parse_verdict", "win_rate"]

logger = logging.getLogger(__name__)

JUDGE_SYSTEM = (
    "You are an impartial judge. Compare the two AI assistant responses to the user question below and decide which "
    "one follows the instructions and answers the question better, considering helpfulness, relevance, accuracy, "
    "depth and clarity. The order of the responses and their length must not influence you. Explain briefly, then "
    'end with your verdict in exactly this format: "[[A]]" if response A is better, "[[B]]" if response B is '
    'better, "[[C]]" for a tie.'
)
JUDGE_TEMPLATE = (
    "[User Question]\n{question}\n\n[The Start of Response A]\n{answer_a}\n[The End of Response A]\n\n"
    "[The Start of Response B]\n{answer_b}\n[The End of Response B]"
)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_verdict(text: str) -> str | None:
    """The last `[[A]]`, `[[B]]` or `[[C]]` in a judge's reply -> `"A"`, `"B"`, `"tie"`; `None` when there is none."""
    found = _VERDICT.findall(text or "")
    if not found:
        return None
    return "tie" if found[-1] == "C" else found[-1]


def _endpoint(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"the judge URL must look like 'http://host:port' (optionally ending in /v1), got {url!r}")
    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class ChatJudge:
    """A pairwise judge behind an OpenAI-compatible `POST /v1/chat/completions` endpoint.

    Args:
        url (`str`): `http://host:port`, `http://host:port/v1` or the full `/chat/completions` URL.
        model (`str`): the served model id sent as `model`.
        api_key (`str`, *optional*): bearer token (never logged or recorded).
        timeout (`float`, *optional*, defaults to `120.0`): seconds per request.
        max_retries (`int`, *optional*, defaults to `3`): retries after the first try (`cme_reward.http`'s rule:
            connection errors, timeouts, HTTP 408/425/429/502/503/504).
        backoff (`float`, *optional*, defaults to `1.0`): seconds before the first retry, doubled each time.
        max_tokens (`int`, *optional*, defaults to `512`): room for the judge's explanation and verdict.
        workers (`int`, *optional*, defaults to `8`): concurrent requests in `compare`.

    Example:
        ```python
        >>> judge = ChatJudge("http://127.0.0.1:8000", model="Qwen/Qwen2.5-72B-Instruct")
        >>> judge.verdict("What is 2 + 2?", "4", "5")
        'A'
        ```
    """

    def __init__(
        self,
        url: str,
        *,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_tokens: int = 512,
        workers: int = 8,
    ):
        self.endpoint = _endpoint(url)
        if not isinstance(model, str) or not model:
            raise ValueError(f"`model` must be the served model id (a non-empty string), got {model!r}")
        for name, value in (("max_tokens", max_tokens), ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        self.model, self.max_tokens, self.workers = model, max_tokens, workers
        self.client = JSONClient(self.endpoint, api_key=api_key, timeout=timeout, max_retries=max_retries,
                                 backoff=backoff, max_connections=workers, name="the judge")  # fmt: skip

    @classmethod
    def from_env(cls, **kwargs: Any) -> ChatJudge | None:
        """The judge named by `CME_JUDGE_URL` / `CME_JUDGE_MODEL` / `CME_JUDGE_API_KEY`; `None` without a URL."""
        url = os.environ.get("CME_JUDGE_URL")
        if not url:
            return None
        model = os.environ.get("CME_JUDGE_MODEL")
        if not model:
            raise ValueError("CME_JUDGE_URL is set but CME_JUDGE_MODEL is not: set it to the served model id")
        return cls(url, model=model, api_key=os.environ.get("CME_JUDGE_API_KEY") or None, **kwargs)

    def describe(self) -> dict[str, Any]:
        """What a result file records about the judge (no key)."""
        return {"endpoint": self.endpoint, "model": self.model, "system_prompt": JUDGE_SYSTEM}

    def ask(self, question: str, answer_a: str, answer_b: str) -> str:
        """The judge's raw reply for one ordered pair."""
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_TEMPLATE.format(question=question, answer_a=answer_a,
                                                                   answer_b=answer_b)},
            ],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }  # fmt: skip
        reply = self.client.request("POST", "", payload)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise RemoteError(f"judge reply is not a chat completion: {str(reply)[:300]}") from err

    def verdict(self, question: str, answer_a: str, answer_b: str) -> str | None:
        """`"A"`, `"B"`, `"tie"`, or `None` when the reply holds no verdict."""
        return parse_verdict(self.ask(question, answer_a, answer_b))


def compare(
    judge: ChatJudge,
    questions: Sequence[str],
    candidates: Sequence[str],
    baselines: Sequence[str],
    *,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Judge `candidates[i]` against `baselines[i]` for each question, each pair in a seeded random A/B order.

    Returns:
        `list[dict]`: per question `candidate_first` (`bool`), `verdict` (`"A"`, `"B"`, `"tie"` or `None`) and
        `outcome` for the candidate: 1 (win), 0.5 (tie), 0 (loss) or `None` (no verdict: left out of the rate).
    """
    if not len(questions) == len(candidates) == len(baselines):
        raise ValueError(
            f"questions, candidates and baselines must have equal lengths, got {len(questions)}, {len(candidates)}, "
            f"{len(baselines)}"
        )
    rng = random.Random(seed)
    first = [rng.random() < 0.5 for _ in questions]

    def one(i: int) -> dict[str, Any]:
        a, b = (candidates[i], baselines[i]) if first[i] else (baselines[i], candidates[i])
        verdict = judge.verdict(questions[i], a, b)
        if verdict is None:
            outcome = None
        elif verdict == "tie":
            outcome = 0.5
        else:
            outcome = 1.0 if (verdict == "A") == first[i] else 0.0
        return {"candidate_first": first[i], "verdict": verdict, "outcome": outcome}

    with ThreadPoolExecutor(max_workers=judge.workers) as pool:
        return list(pool.map(one, range(len(questions))))


def win_rate(outcomes: Sequence[float | None], *, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Tie-adjusted win rate `(wins + 0.5 ties) / total` over the judged pairs, with a 95 % bootstrap interval.

    Args:
        outcomes (`list`): 1 (win), 0.5 (tie), 0 (loss) or `None` (no verdict, left out and counted as `invalid`).

    Returns:
        `dict`: `win_rate` (`None` with no verdict), `ci` (`[low, high]` or `None`), `wins`, `ties`, `losses`,
        `invalid`, `n` (judged pairs).

    Example:
        ```python
        >>> win_rate([1, 0.5, 0, None])["win_rate"]
        0.5
        ```
    """
    valid = [float(o) for o in outcomes if o is not None]
    if any(o not in (0.0, 0.5, 1.0) for o in valid):
        raise ValueError("each outcome must be 1 (win), 0.5 (tie), 0 (loss) or None")
    ci = bootstrap_ci(valid, n_boot=n_boot, seed=seed)
    return {
        "win_rate": sum(valid) / len(valid) if valid else None,
        "ci": list(ci) if ci else None,
        "wins": sum(o == 1.0 for o in valid),
        "ties": sum(o == 0.5 for o in valid),
        "losses": sum(o == 0.0 for o in valid),
        "invalid": len(outcomes) - len(valid),
        "n": len(valid),
    }


def judge_run(out: str | Path, judge, *, redo: bool = False) -> dict[str, dict]:
    """Judge every evaluated arm against (a) on the held-out prompts; cached in `<out>/judge/<arm>.json`."""
    out = Path(out)
    prompts = json.loads((out / "prompts.json").read_text(encoding="utf-8"))
    questions = {r["id"]: r["prompt"] for r in prompts["heldout"]}
    evals = {p.parent.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(out.glob("arms/*/eval.json"))}
    if "a" not in evals:
        raise FileNotFoundError(f"{out}: arm (a) has no eval.json yet; run the replication first")
    baseline = {s["id"]: s["response"] for s in evals["a"]["samples"]}
    seed = int(json.loads((out / "settings.json").read_text(encoding="utf-8"))["seed"])
    results = {}
    for arm, result in evals.items():
        if arm == "a":
            continue
        path = out / "judge" / f"{arm}.json"
        key = (judge.model, result["fingerprint"], evals["a"]["fingerprint"])
        if not redo and path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            if (cached["judge"]["model"], cached["fingerprint"], cached["baseline_fingerprint"]) == key:
                results[arm] = cached
                continue
        ids = [s["id"] for s in result["samples"] if s["id"] in baseline]
        candidates = {s["id"]: s["response"] for s in result["samples"]}
        pairs = compare(judge, [questions[i] for i in ids], [candidates[i] for i in ids], [baseline[i] for i in ids],
                        seed=seed)  # fmt: skip
        results[arm] = {"judge": judge.describe(), "fingerprint": key[1], "baseline_fingerprint": key[2],
                        **win_rate([p["outcome"] for p in pairs], seed=seed),
                        "pairs": [{"id": i, **p} for i, p in zip(ids, pairs)]}  # fmt: skip
        write_json(path, results[arm])
        logger.info("arm (%s) vs (a): win rate %s", arm, results[arm]["win_rate"])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=DEFAULT_OUT, help="output directory of a replication run (%(default)s)")
    parser.add_argument("--redo", action="store_true", help="judge again even where a verdict file exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    judge = ChatJudge.from_env()
    if judge is None:
        parser.error("set CME_JUDGE_URL (and CME_JUDGE_MODEL, optionally CME_JUDGE_API_KEY) to the judge endpoint")
    judge_run(args.run, judge, redo=args.redo)


if __name__ == "__main__":
    main()
