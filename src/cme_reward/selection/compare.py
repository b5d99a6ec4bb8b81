"""Which verifier separates good responses from bad ones best: [`compare_verifiers`] scores the same labelled
responses (or preference pairs) with each verifier in turn and compares them with bootstrap intervals.

Per verifier: AUROC (labelled) or pairwise accuracy (pairs) with a percentile bootstrap interval, the mean score of
each class and their gap, how many responses were scored and how many could not be (`None` scores: an empty
response, or no span under `score_span`; those are left out of that verifier's statistics), and the cost of scoring.
Between every two verifiers: the paired bootstrap of the difference, on the rows both could score, with its interval
and two-sided p-value.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import CMEConfig
from ..verifier.spec import VerifierSpec
from .inputs import ComparisonData, load_comparison_data
from .runs import VerifierRun, load_verifier, score_verifier
from .stats import (
    ClassSummary,
    Interval,
    auroc_interval,
    class_summary,
    paired_difference,
    paired_pairwise_difference,
    pairwise_interval,
    roc_curve,
)

__all__ = ["Comparison", "Difference", "VerifierResult", "compare_verifiers", "difference", "summarize"]

logger = logging.getLogger(__name__)

METRICS = {"labelled": "AUROC", "pairs": "pairwise accuracy"}


@dataclass
class VerifierResult:
    """One verifier's statistics on a [`ComparisonData`].

    `value` is the AUROC (labelled) or pairwise accuracy (pairs) with its interval, `None` with a `problem` when it
    cannot be computed (e.g. every response of one class unscorable). `classes` holds the mean score of the good and
    bad responses (pairs: chosen and rejected) and their gap. `scored` / `unscorable` count responses; `used` counts
    what the statistics use (responses, or pairs with both scores). `roc` is the ROC curve (pairs: chosen against
    rejected responses, unpaired).
    """

    name: str
    value: Interval | None
    classes: ClassSummary | None
    scored: int
    unscorable: int
    used: int
    run: VerifierRun
    roc: list[tuple[float, float]] | None = None
    problem: str | None = None


@dataclass
class Difference:
    """`a`'s statistic minus `b`'s on the `rows` both scored (rows, or pairs), with its paired bootstrap interval and
    p-value (`None` with a `problem` when it cannot be computed)."""

    a: str
    b: str
    value: Interval | None
    rows: int
    problem: str | None = None


@dataclass
class Comparison:
    """The result of [`compare_verifiers`]; `to_dict()` is what `cme-reward compare-verifiers` writes as JSON."""

    kind: str
    metric: str
    data: ComparisonData
    config: CMEConfig
    verifiers: list[VerifierResult]
    differences: list[Difference]
    n_resamples: int
    confidence: float
    seed: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (intervals as dicts, scores per response included)."""
        labels = self.data.labels
        return {
            "input": {
                "path": str(self.data.path),
                "kind": self.kind,
                "rows": self.data.rows,
                "responses": len(labels),
                "good": sum(labels),
                "bad": len(labels) - sum(labels),
                "skipped": len(self.data.skipped),
                "columns": self.data.columns,
            },
            "metric": self.metric,
            "config": {
                k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
                for k, v in asdict(self.config).items()
            },
            "bootstrap": {"n_resamples": self.n_resamples, "confidence": self.confidence, "seed": self.seed},
            "verifiers": [_result_dict(v) for v in self.verifiers],
            "differences": [asdict(d) for d in self.differences],
            "notes": self.notes,
        }


def _result_dict(result: VerifierResult) -> dict[str, Any]:
    run = result.run
    return {
        "name": result.name,
        "value": None if result.value is None else asdict(result.value),
        "classes": None if result.classes is None else asdict(result.classes),
        "scored": result.scored,
        "unscorable": result.unscorable,
        "used": result.used,
        "problem": result.problem,
        "cost": {
            "tokens": run.tokens,
            "seconds": run.seconds,
            "tokens_per_second": run.tokens_per_second,
            "load_seconds": run.load_seconds,
            "peak_memory_mib": run.peak_memory_mib,
            "memory_method": run.memory_method,
            "device": run.device,
            "dtype": run.dtype,
            "cached": run.cached,
        },
        "roc": result.roc,
        "scores": run.scores,
    }


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _pairs_scored(*runs: list[float | None]) -> list[int]:
    """Pair indices k whose chosen (2k) and rejected (2k + 1) responses every run scored."""
    return [
        k for k in range(len(runs[0]) // 2) if all(r[2 * k] is not None and r[2 * k + 1] is not None for r in runs)
    ]


def summarize(run: VerifierRun, data: ComparisonData, **bootstrap: Any) -> VerifierResult:
    """The statistics of one verifier's scores (`bootstrap`: `n_resamples`, `confidence`, `seed`)."""
    scored = sum(s is not None for s in run.scores)
    common = {"name": run.name, "scored": scored, "unscorable": len(run.scores) - scored, "run": run}
    if data.kind == "pairs":
        keep = _pairs_scored(run.scores)
        if not keep:
            return VerifierResult(value=None, classes=None, used=0, problem="no pair has both responses scored",
                                  **common)  # fmt: skip
        chosen, rejected = [run.scores[2 * k] for k in keep], [run.scores[2 * k + 1] for k in keep]
        gap = _mean(chosen) - _mean(rejected)
        classes = ClassSummary(len(keep), len(keep), _mean(chosen), _mean(rejected), gap)
        roc = roc_curve(chosen + rejected, [True] * len(keep) + [False] * len(keep))
        return VerifierResult(value=pairwise_interval(chosen, rejected, **bootstrap), classes=classes, roc=roc,
                              used=len(keep), **common)  # fmt: skip
    keep = [i for i, s in enumerate(run.scores) if s is not None]
    xs, ys = [run.scores[i] for i in keep], [data.labels[i] for i in keep]
    if sum(ys) in (0, len(ys)):
        problem = f"only {sum(ys)} good and {len(ys) - sum(ys)} bad responses were scored"
        return VerifierResult(value=None, classes=None, used=len(keep), problem=problem, **common)
    return VerifierResult(value=auroc_interval(xs, ys, **bootstrap), classes=class_summary(xs, ys),
                          roc=roc_curve(xs, ys), used=len(keep), **common)  # fmt: skip


def difference(a: VerifierRun, b: VerifierRun, data: ComparisonData, **bootstrap: Any) -> Difference:
    """`a`'s AUROC (or pairwise accuracy) minus `b`'s on the rows both scored, paired bootstrap."""
    if data.kind == "pairs":
        keep = _pairs_scored(a.scores, b.scores)
        if not keep:
            return Difference(a.name, b.name, None, 0, "no pair scored by both")
        four = [[run.scores[2 * k + side] for k in keep] for run in (a, b) for side in (0, 1)]
        return Difference(a.name, b.name, paired_pairwise_difference(*four, **bootstrap), len(keep))
    keep = [i for i in range(len(a.scores)) if a.scores[i] is not None and b.scores[i] is not None]
    ys = [data.labels[i] for i in keep]
    if sum(ys) in (0, len(ys)):
        return Difference(a.name, b.name, None, len(keep), "the responses both scored hold one class only")
    xa, xb = [a.scores[i] for i in keep], [b.scores[i] for i in keep]
    return Difference(a.name, b.name, paired_difference(xa, xb, ys, **bootstrap), len(keep))


def _named(verifiers: Sequence[str | VerifierSpec] | dict[str, str | VerifierSpec]) -> dict[str, VerifierSpec]:
    items = verifiers.items() if isinstance(verifiers, dict) else [(None, v) for v in verifiers]
    named: dict[str, VerifierSpec] = {}
    for name, verifier in items:
        spec = verifier if isinstance(verifier, VerifierSpec) else VerifierSpec(verifier)
        name = name or (str(spec.source) if not spec.is_object else type(spec.source).__name__)
        if name in named:
            raise ValueError(f"`verifiers` names {name!r} twice; give each verifier once (or a dict of unique names)")
        named[name] = spec
    if len(named) < 1:
        raise ValueError("`verifiers` is empty; give at least one verifier (two or more to compare)")
    return named


def _notes(data: ComparisonData, results: list[VerifierResult]) -> list[str]:
    notes = []
    for r in results:
        if r.unscorable:
            what = "pairs with an unscored response are" if data.kind == "pairs" else "they are"
            notes.append(f"{r.name}: {r.unscorable} of {len(r.run.scores)} responses have no score (an empty "
                         f"response, or no span under score_span); {what} left out of its {METRICS[data.kind]}, "
                         "class means and differences")  # fmt: skip
        if r.problem:
            notes.append(f"{r.name}: no {METRICS[data.kind]}: {r.problem}")
    if data.skipped:
        notes.append(f"{len(data.skipped)} bad input rows were skipped (--skip-bad)")
    if data.kind == "pairs":
        notes.append("the ROC curves of preference pairs rank chosen against rejected responses unpaired")
    return notes


def compare_verifiers(
    verifiers: Sequence[str | VerifierSpec] | dict[str, str | VerifierSpec],
    data: ComparisonData | str | Path,
    *,
    config: CMEConfig | None = None,
    cache_dir: str | Path | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk_rows: int = 64,
    progress: bool = True,
    load: Callable[[VerifierSpec, CMEConfig], Any] = load_verifier,
    **spec_options: Any,
) -> Comparison:
    """Score the same responses with each verifier (one loaded at a time, freed before the next) and compare how well
    their scores separate good responses from bad ones.

    Args:
        verifiers (`list[str | VerifierSpec]` or `dict[str, str | VerifierSpec]`): aliases, paths, hub ids or specs
            (a dict names them); each is named by its source otherwise.
        data (`ComparisonData`, `str` or `Path`): what to score, or a file read by [`load_comparison_data`] with its
            defaults (labelled or pairs, detected).
        config (`CMEConfig`, *optional*): how every verifier scores (one config for all).
        cache_dir (`str` or `Path`, *optional*): cache each verifier's scores there, so a rerun after an
            interruption does not score a finished verifier again (`cme_reward.selection.runs`).
        n_resamples (`int`, *optional*, defaults to `2000`): bootstrap resamples of every interval.
        confidence (`float`, *optional*, defaults to `0.95`): coverage of the intervals.
        seed (`int`, *optional*, defaults to `0`): seed of the bootstrap.
        chunk_rows (`int`, *optional*, defaults to `64`): responses per cached chunk.
        progress (`bool`, *optional*, defaults to `True`): tqdm bars.
        load (`Callable`, *optional*): `(spec, config) -> reward` (the default builds a [`CrossModelEntropyReward`]).
        **spec_options: fields of [`VerifierSpec`] applied to every verifier (`device`, `dtype`, ...).

    Returns:
        [`Comparison`]

    Raises:
        `ValueError`: duplicate or missing verifiers (loading and scoring raise their own errors).
        `InputError`: bad input.

    Example:
        ```python
        >>> from cme_reward.selection import compare_verifiers
        >>> result = compare_verifiers(["smollm2", "gemma3-270m"], "labelled.jsonl", device="cpu")
        >>> [(v.name, round(v.value.estimate, 3)) for v in result.verifiers]
        [('smollm2', 0.612), ('gemma3-270m', 0.655)]
        ```
    """
    from dataclasses import replace

    named = {name: replace(spec, **spec_options) for name, spec in _named(verifiers).items()}
    if not isinstance(data, ComparisonData):
        data = load_comparison_data(data)
    config = config or CMEConfig()
    bootstrap = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    runs = []
    for i, (name, spec) in enumerate(named.items(), 1):
        logger.info("verifier %d of %d: %s", i, len(named), name)
        runs.append(score_verifier(name, spec, config, data, cache_dir=cache_dir, chunk_rows=chunk_rows,
                                   progress=progress, load=load))  # fmt: skip
    results = [summarize(run, data, **bootstrap) for run in runs]
    differences = [difference(a, b, data, **bootstrap) for a, b in itertools.combinations(runs, 2)]
    return Comparison(kind=data.kind, metric=METRICS[data.kind], data=data, config=config, verifiers=results,
                      differences=differences, notes=_notes(data, results), **bootstrap)  # fmt: skip
