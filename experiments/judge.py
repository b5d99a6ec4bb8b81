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
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from .metrics import bootstrap_ci

__all__ = ["ChatJudge", "JUDGE_SYSTEM", "compare", "parse_verdict", "win_rate"]

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
_RETRY_STATUS = {429, 500, 502, 503, 504}


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
        retries (`int`, *optional*, defaults to `3`): extra attempts on connection errors, 429 and 5xx.
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
        retries: int = 3,
        backoff: float = 1.0,
        max_tokens: int = 512,
        workers: int = 8,
    ):
        self.endpoint = _endpoint(url)
        if not isinstance(model, str) or not model:
            raise ValueError(f"`model` must be the served model id (a non-empty string), got {model!r}")
        for name, value in (("retries", retries), ("max_tokens", max_tokens), ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "retries" else 1):
                raise ValueError(f"`{name}` must be an integer >= {0 if name == 'retries' else 1}, got {value!r}")
        if not timeout > 0 or backoff < 0:
            raise ValueError(f"`timeout` must be > 0 and `backoff` >= 0, got {timeout!r}, {backoff!r}")
        self.model, self._api_key = model, api_key
        self.timeout, self.retries, self.backoff = float(timeout), retries, float(backoff)
        self.max_tokens, self.workers = max_tokens, workers

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

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(payload).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                body = err.read().decode("utf-8", errors="replace")[:300]
                if err.code not in _RETRY_STATUS or attempt == self.retries:
                    raise RuntimeError(f"judge {self.endpoint} answered HTTP {err.code}: {body}") from err
                reason = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    raise RuntimeError(f"judge {self.endpoint} unreachable: {err}") from err
                reason = str(err)
            delay = self.backoff * 2**attempt
            logger.warning("judge request failed (%s); retry %d/%d in %.1fs", reason, attempt + 1, self.retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

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
        reply = self._post(payload)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise RuntimeError(f"judge reply is not a chat completion: {str(reply)[:300]}") from err

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


def main(argv: list[str] | None = None) -> None:
    from .replicate import DEFAULT_OUT, judge_run

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
