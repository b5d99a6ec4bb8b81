"""Per-method result records of one benchmark run: score differences against the reference, speed-ups, FLOP rates
against the measured matmul peak of each run's own dtype, and the markdown table."""

from __future__ import annotations

import torch

from .methods import Method, pair_means
from .workload import Workload

__all__ = ["SCORE_TOLERANCE", "diffs", "markdown_table", "mismatches", "own_peak_fraction", "reference_name",
           "summarize"]  # fmt: skip

# Largest |per-pair mean log-prob - the reference's| of an exact method, by dtype; bfloat16 runs are only reported.
SCORE_TOLERANCE = {"float32": 1e-4}

# Older result files recorded every run against both peaks; the one of the run's own dtype is the meaningful one.
_OLD_PEAK_KEYS = {"float32": "frac_fp32_matmul_peak", "bfloat16": "frac_bf16_matmul_peak"}


def own_peak_fraction(result: dict) -> float | None:
    """Useful FLOP/s of a result as a fraction of the measured matmul peak of its own dtype.

    Reads `frac_matmul_peak` and, in older result files, the key of the result's dtype (`frac_fp32_matmul_peak` or
    `frac_bf16_matmul_peak`).

    Example:
        ```python
        >>> own_peak_fraction({"dtype": "bfloat16", "frac_fp32_matmul_peak": 1.66, "frac_bf16_matmul_peak": 0.38})
        0.38
        ```
    """
    if result.get("frac_matmul_peak") is not None:
        return result["frac_matmul_peak"]
    old = _OLD_PEAK_KEYS.get(result.get("dtype", ""))
    return result.get(old) if old else None


def reference_name(runs: dict, default_dtype: str) -> str | None:
    """The exact reference among the runs: (a) in float32 when there is one, else the first (a)."""
    for name in ("a:float32", "a") if default_dtype != "float32" else ("a",):
        if name in runs:
            return name
    return next((n for n in runs if n.startswith("a")), None)


def diffs(outputs: dict[str, list[torch.Tensor]], ref: str | None) -> dict[str, dict]:
    """Max |difference| of each run's per-pair mean log-probs (and per-token log-probs, where it has them) from
    the reference run's."""
    if ref is None:
        return {name: {} for name in outputs}
    ref_out = outputs[ref]
    ref_means = pair_means(ref_out)  # (pairs,)
    out = {}
    for name, got in outputs.items():
        d = {"max_abs_score_diff": float((pair_means(got) - ref_means).abs().max())}
        if got[0].dim() == 1:
            d["max_abs_token_diff"] = max(float((x.double() - y.double()).abs().max()) for x, y in zip(got, ref_out))
        out[name] = d
    return out


def summarize(
    runs: dict[str, dict],
    methods: dict[str, Method],
    *,
    dtypes: dict[str, str],
    work: Workload,
    useful_flops: int,
    peaks: dict[str, dict],
    spec_peaks: dict[str, float | None],
    default_dtype: str,
) -> dict[str, dict]:
    """One record per run: best time, throughput, speed-ups vs (a) and (b), peak memory, useful FLOP/s against the
    measured matmul peak of the run's dtype (`frac_matmul_peak`) and the spec-sheet peak (`mfu_spec`), score diffs.

    Args:
        runs (`dict[str, dict]`): name -> `seconds`, `peak_bytes`, `foreign_cpus`, `attempts` lists and `out`.
        methods (`dict[str, Method]`): name -> the method that ran.
        dtypes (`dict[str, str]`): name -> dtype name of the run.
        work ([`Workload`]): the scored pairs.
        useful_flops (`int`): useful FLOPs of `work`.
        peaks (`dict[str, dict]`): dtype name -> measured matmul peak (`flops_per_s`).
        spec_peaks (`dict[str, float | None]`): dtype name -> spec-sheet peak (GPU only).
        default_dtype (`str`): dtype of methods named without `:DTYPE`.
    """
    ref = reference_name(runs, default_dtype)
    diff = diffs({name: run["out"] for name, run in runs.items()}, ref)
    base_a = min(runs[ref]["seconds"]) if ref else None
    base_b = min(runs["b"]["seconds"]) if "b" in runs else None
    results = {}
    for name, run in runs.items():
        t = min(run["seconds"])
        useful = useful_flops / t
        dtype = dtypes[name]
        peak = peaks[dtype]["flops_per_s"]
        spec = spec_peaks.get(dtype)
        results[name] = {
            "label": methods[name].label,
            "dtype": dtype,
            "notes": methods[name].notes,
            "seconds": t,
            "seconds_all": run["seconds"],
            "foreign_cpus_all": run["foreign_cpus"],  # CPUs other processes used during each run (contention)
            "remote": methods[name].remote,  # scored by a server: its CPUs are in foreign_cpus_all
            "attempts_all": run["attempts"],
            "scored_tokens_per_s": work.scored_tokens / t,
            "total_tokens_per_s": work.total_tokens / t,
            "speedup_vs_a": base_a / t if base_a else None,
            "speedup_vs_b": base_b / t if base_b else None,
            "peak_mem_mib": max(run["peak_bytes"]) / 2**20 if None not in run["peak_bytes"] else None,  # this process
            "useful_flops_per_s": useful,
            "matmul_peak_flops_per_s": peak,  # measured, in this run's dtype
            "frac_matmul_peak": useful / peak,
            "mfu_spec": useful / spec if spec else None,
            **diff[name],
            "score_tolerance": SCORE_TOLERANCE.get(dtype),
            "engine_stats": methods[name].stats(),
        }
    return results


def mismatches(results: dict[str, dict]) -> dict[str, float]:
    """The runs whose per-pair means differ from the reference's by more than their dtype's `score_tolerance`:
    name -> that difference."""
    out = {}
    for name, r in results.items():
        tolerance, diff = r.get("score_tolerance"), r.get("max_abs_score_diff")
        if tolerance is not None and diff is not None and diff > tolerance:
            out[name] = diff
    return out


def markdown_table(results: dict[str, dict]) -> str:
    """The results as a markdown table, each run's FLOP rate against the measured peak of its own dtype."""
    ratio = lambda x: f"{x:.2f}x" if x else "-"  # noqa: E731
    pct = lambda x: f"{100 * x:.0f} %" if x else "-"  # noqa: E731
    lines = [
        "| method | dtype | s | scored tok/s | total tok/s | vs (a) | vs (b) | peak MiB | max abs diff "
        "| useful FLOP/s | % of its dtype's matmul peak | MFU (spec) |",
        "|" + "---|" * 12,
    ]
    for name, r in results.items():
        diff = r.get("max_abs_score_diff")
        lines.append(
            f"| {name} {r['label']} | {r['dtype']} | {r['seconds']:.2f} | {r['scored_tokens_per_s']:,.0f} | "
            f"{r['total_tokens_per_s']:,.0f} | {ratio(r['speedup_vs_a'])} | {ratio(r['speedup_vs_b'])} | "
            f"{r['peak_mem_mib'] or 0:,.0f} | {'-' if diff is None else f'{diff:.1e}'} | "
            f"{r['useful_flops_per_s'] / 1e9:,.1f} G | {pct(own_peak_fraction(r))} | {pct(r['mfu_spec'])} |"
        )
    return "\n".join(lines)
