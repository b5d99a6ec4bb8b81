"""Scoring one verifier on a [`ComparisonData`], resumably: its scores are cached on disk, keyed by the responses,
the verifier and the scoring options, so a killed comparison does not score a finished verifier again.

For a cache directory `D`, verifier `smollm2` and key `K` (a hash of the prompts and responses, the resolved
[`VerifierSpec`] and the [`CMEConfig`] apart from its batch budget):

- `D/smollm2-K.jsonl`: one line per response, `{"i", "location", "label", "score"}`, written through
  [`ResumableWriter`] (`.partial` + checkpoint while running), so a run killed mid-verifier resumes at its last
  chunk;
- `D/smollm2-K.stats.json`: the scoring cost so far (tokens, seconds, load time, peak memory), rewritten atomically
  after every chunk; a run killed between a chunk and this file loses that chunk's cost, not its scores.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files.atomic import write_atomic
from ..files.resumable import ResumableWriter
from .memory import PeakMemory

if TYPE_CHECKING:
    from ..config import CMEConfig
    from ..reward import CrossModelEntropyReward
    from ..verifier.spec import VerifierSpec
    from .inputs import ComparisonData

__all__ = ["VerifierRun", "cache_key", "load_verifier", "score_verifier"]

logger = logging.getLogger(__name__)

# config fields that do not change the scores (they may differ between a run and its resumption)
NEUTRAL_OPTIONS = ("max_tokens_per_batch",)


@dataclass
class VerifierRun:
    """One verifier's scores of every response of a [`ComparisonData`] (`None`: unscorable) and their cost.

    `seconds` is the time inside the verifier's `score` calls, `load_seconds` the model load; both sum the sessions
    that scored (a resumed run). `peak_memory_mib` is the largest peak of those sessions, measured as `memory_method`
    says. `cached` is true when every score came from an earlier run.
    """

    name: str
    scores: list[float | None]
    tokens: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    peak_memory_mib: float | None = None
    memory_method: str = "unavailable"
    device: str = ""
    dtype: str = ""
    cached: bool = False

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def cache_key(spec: VerifierSpec, config: CMEConfig, data: ComparisonData) -> str:
    """16 hex digits naming one verifier's scores of one set of responses under one scoring configuration."""
    described = spec.resolved().describe()
    options = {k: v for k, v in asdict(config).items() if k not in NEUTRAL_OPTIONS}
    blob = json.dumps(_plain({"prompts": data.prompts, "responses": data.responses, "labels": data.labels,
                              "verifier": described, "config": options}), sort_keys=True)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.rstrip("/")).name or name)[:48] or "verifier"


def load_verifier(spec: VerifierSpec, config: CMEConfig) -> CrossModelEntropyReward:
    """The default loader of [`score_verifier`]."""
    from ..reward import CrossModelEntropyReward

    return CrossModelEntropyReward(spec, config=config, show_progress_bar=False)


def _free(reward: Any) -> None:
    """Drop the verifier so the next one loads into free memory."""
    import torch

    close = getattr(getattr(reward, "scorer", None), "close", None)
    if callable(close):
        close()
    del reward
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Cache:
    """One verifier's cache files (see the module docstring)."""

    def __init__(self, directory: str | Path, name: str, key: str, data: ComparisonData, chunk_rows: int):
        self.path = Path(directory) / f"{_slug(name)}-{key}.jsonl"
        self.stats_path = self.path.with_name(self.path.stem + ".stats.json")
        self.data, self.total = data, len(data.responses)
        fingerprint = {"path": str(data.path), "size": self.total, "sha256": key}
        self.writer = ResumableWriter(self.path, fingerprint=fingerprint, options={"key": key}, rows_total=self.total,
                                      chunk_rows=chunk_rows)  # fmt: skip

    def finished(self) -> tuple[list[float | None], dict[str, Any]] | None:
        """The scores and stats of an earlier run that scored every response, else `None`."""
        if not self.path.exists():
            return None
        scores = [json.loads(line)["score"] for line in self.path.read_text(encoding="utf-8").splitlines()]
        if len(scores) == self.total:
            return scores, self.stats()
        logger.warning("%s holds %d scores for %d responses: scoring again", self.path, len(scores), self.total)
        self.path.unlink()
        return None

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def open(self) -> tuple[list[float | None], dict[str, Any]]:
        """Take the lock; the scores written so far and their stats (none when starting afresh)."""
        resuming = self.writer.preview() == "resume"
        self.writer.open()
        scores = [row["score"] for row in self.writer.done_rows()] if self.writer.rows_done else []
        return scores, self.stats() if resuming and scores else {}

    def write(self, begin: int, scores: list[float | None], stats: dict[str, Any]) -> None:
        per = 2 if self.data.kind == "pairs" else 1
        self.writer.write([{"i": i, "location": self.data.locations[i // per], "label": self.data.labels[i],
                            "score": s} for i, s in enumerate(scores, begin)])  # fmt: skip
        self.save(stats)

    def save(self, stats: dict[str, Any]) -> None:
        write_atomic(self.stats_path, json.dumps(stats, indent=1) + "\n")


def _run_from(name: str, stats: dict[str, Any], scores: list[float | None], cached: bool) -> VerifierRun:
    fields = ("tokens", "seconds", "load_seconds", "peak_memory_mib", "memory_method", "device", "dtype")
    return VerifierRun(name=name, scores=scores, cached=cached, **{k: stats[k] for k in fields if k in stats})


def _cost(reward: Any, earlier: dict[str, Any], load_seconds: float) -> dict[str, Any]:
    return {"tokens": earlier.get("tokens", 0) + reward.stats.tokens_scored,
            "seconds": earlier.get("seconds", 0.0) + reward.stats.seconds,
            "load_seconds": earlier.get("load_seconds", 0.0) + load_seconds}  # fmt: skip


def score_verifier(
    name: str,
    spec: VerifierSpec,
    config: CMEConfig,
    data: ComparisonData,
    *,
    cache_dir: str | Path | None = None,
    chunk_rows: int = 64,
    progress: bool = True,
    load: Callable[[VerifierSpec, CMEConfig], Any] = load_verifier,
) -> VerifierRun:
    """Score every response of `data` with one verifier, loaded here and freed before returning.

    Args:
        name (`str`): how the verifier is named in reports and cache files.
        spec (`VerifierSpec`): what to load.
        config (`CMEConfig`): how to score.
        data (`ComparisonData`): the responses.
        cache_dir (`str` or `Path`, *optional*): where scores are cached (see the module docstring); `None` keeps
            them in memory only.
        chunk_rows (`int`, *optional*, defaults to `64`): responses per checkpointed chunk.
        progress (`bool`, *optional*, defaults to `True`): a tqdm bar over responses.
        load (`Callable`, *optional*): `(spec, config) -> reward`; the default builds a [`CrossModelEntropyReward`].

    Returns:
        [`VerifierRun`]

    Raises:
        `CheckpointError`: another process is scoring into the same cache file (`load` raises its own errors).
        `FloatingPointError`: the verifier yields non-finite values.

    Example:
        ```python
        >>> run = score_verifier("smollm2", VerifierSpec("smollm2"), CMEConfig(), data, cache_dir="report.scores")
        >>> len(run.scores) == len(data.responses), run.tokens_per_second > 0
        (True, True)
        ```
    """
    cache = _Cache(cache_dir, name, cache_key(spec, config, data), data, chunk_rows) if cache_dir else None
    finished = cache.finished() if cache is not None else None
    if finished is not None:
        logger.info("%s: every score from %s", name, cache.path)
        return _run_from(name, finished[1], finished[0], cached=True)
    scores, earlier = cache.open() if cache is not None else ([], {})  # the lock first: a refusal loads nothing
    try:
        if len(scores) == len(data.responses):  # killed between its last chunk and publishing the file
            cache.writer.finish()
            return _run_from(name, earlier, scores, cached=True)
        with PeakMemory() as peak:
            start = time.perf_counter()
            reward = load(spec, config)
            load_seconds = time.perf_counter() - start
            try:
                _score_rest(name, reward, data, scores, cache, earlier, chunk_rows, progress, load_seconds)
                cost = _cost(reward, earlier, load_seconds)
                device, dtype = str(reward.device), str(reward.dtype).removeprefix("torch.")
            finally:
                _free(reward)
                reward = None
    finally:
        if cache is not None:
            cache.writer.close()
    memory = peak.result(device)
    peaks = [m for m in (memory.mib, earlier.get("peak_memory_mib")) if m is not None]
    cost |= {"device": device, "dtype": dtype, "memory_method": memory.method,
             "peak_memory_mib": max(peaks) if peaks else None}  # fmt: skip
    if cache is not None:
        cache.save(cost)
    return _run_from(name, cost, scores, cached=False)


def _score_rest(name, reward, data, scores, cache, earlier, chunk_rows, progress, load_seconds) -> None:
    """Score the responses after the first `len(scores)` (appended to `scores`), chunk by chunk, and publish the
    cache file."""
    from tqdm.auto import tqdm

    total = len(data.responses)
    if scores:
        logger.info("%s: resuming at response %d of %d", name, len(scores), total)
    with tqdm(total=total, initial=len(scores), unit="resp", desc=name, disable=not progress or None) as bar:
        for begin in range(len(scores), total, chunk_rows):
            new = reward.score(data.prompts[begin : begin + chunk_rows], data.responses[begin : begin + chunk_rows])
            scores += new
            if cache is not None:
                cache.write(begin, new, _cost(reward, earlier, load_seconds))
            bar.update(len(new))
    if cache is not None:
        cache.writer.finish()
