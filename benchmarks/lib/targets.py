"""The benchmark's CPU targets: the runs that measure them and their pass/fail checks."""

from __future__ import annotations

from pathlib import Path

from .report import own_peak_fraction

__all__ = ["RUNS", "TARGETS", "check_targets", "targets_markdown"]

COMMON = ["--prompt-len", "50", "300", "--response-len", "50", "300", "--wait-idle", "90", "--repeats", "2"]
G4 = "a,b,c,d,e,d:bfloat16"
G8 = "a,c,d"
# Run name (the JSON's stem) -> `python -m benchmarks.scoring` arguments.
RUNS: dict[str, list[str]] = {
    "cpu-smollm2-135m-g4": ["--preset", "smollm2-135m", "--group-size", "4", "--prompts", "12", *COMMON,
                            "--methods", G4],
    "cpu-small-152k-g4": ["--preset", "small-152k", "--group-size", "4", "--prompts", "16", *COMMON,
                          "--methods", G4 + ",h"],
    "cpu-smollm2-135m-g8": ["--preset", "smollm2-135m", "--group-size", "8", "--prompts", "6", *COMMON,
                            "--methods", G8],
    "cpu-smollm2-135m-g8-long-prompts": ["--preset", "smollm2-135m", "--group-size", "8", "--prompts", "3",
                                         "--prompt-len", "300", "900", "--response-len", "50", "300",
                                         "--wait-idle", "90", "--repeats", "2", "--methods", G8],
}  # fmt: skip

# (run, description, methods, metric, op, threshold); metric "X/Y" = seconds of X / seconds of the method. Each target
# is checked on the engine: (d) full, (c) without prefix sharing.
TARGETS = [
    ("cpu-smollm2-135m-g4", "SmolLM2 fp32: {m} >= 1.6x (a)", "d", "speedup_vs_a", ">=", 1.6),
    ("cpu-smollm2-135m-g4", "SmolLM2 fp32: {m} >= 1.6x (b)", "d", "speedup_vs_b", ">=", 1.6),
    ("cpu-smollm2-135m-g4", "SmolLM2 fp32: {m} useful FLOP/s >= 75 % of fp32 matmul peak", "d",
     "frac_matmul_peak", ">=", 0.75),
    ("cpu-smollm2-135m-g4", "SmolLM2 fp32: {m} scores within 1e-4 of (a)", "c|d", "max_abs_score_diff", "<=", 1e-4),
    ("cpu-smollm2-135m-g4", "SmolLM2 bf16: {m} >= 2.5x fp32 (a)", "d:bfloat16", "speedup_vs_a", ">=", 2.5),
    ("cpu-smollm2-135m-g4", "SmolLM2 bf16: {m} within 5e-3 of fp32 (a)", "d:bfloat16",
     "max_abs_score_diff", "<=", 5e-3),
    ("cpu-small-152k-g4", "small-152k fp32: {m} >= 2.5x (a)", "d", "speedup_vs_a", ">=", 2.5),
    ("cpu-small-152k-g4", "small-152k fp32: {m} scores within 1e-4 of (a)", "d", "max_abs_score_diff", "<=", 1e-4),
    ("cpu-small-152k-g4", "small-152k fp32: {m} metric='entropy' costs <= 1.3x (d): speed >= 0.77x (d)", "h", "d/h",
     ">=", 1 / 1.3),
    ("cpu-smollm2-135m-g8", "SmolLM2 G=8, prompts as long as responses: (d) >= 2x (c)", "d", "c/d", ">=", 2.0),
    ("cpu-smollm2-135m-g8-long-prompts", "SmolLM2 G=8, prompts 300-900: (d) >= 2x (c)", "d", "c/d", ">=", 2.0),
]  # fmt: skip
BOUNDS = {"speedup_vs_a": "d_vs_a", "c/d": "d_vs_c"}  # FLOP-count bounds (lib.workload.flop_summary)


def metric(report: dict, key: str, name: str) -> float | None:
    """Value of metric `name` for result `key` of `report` (`None` where it has no such result)."""
    results = report["results"]
    if key not in results:
        return None
    if "/" in name:
        other = name.split("/")[0]
        return results[other]["seconds"] / results[key]["seconds"] if other in results else None
    if name == "frac_matmul_peak":
        return own_peak_fraction(results[key])  # older files: the key of the run's dtype
    return results[key].get(name)


def check_targets(reports: list[dict]) -> list[dict]:
    """Check every target whose run is among `reports` (each with its `file` name).

    Returns:
        `list[dict]`: one check per target and method: `run`, `target`, `value`, `threshold`, `op`, `passed`,
        `flop_bound` (the speed-up the FLOP counts alone allow, where one applies).
    """
    by_run = {Path(r["file"]).stem: r for r in reports if "file" in r}
    checks = []
    for run, text, keys, name, op, threshold in TARGETS:
        if run not in by_run:
            continue
        for key in keys.split("|"):
            value = metric(by_run[run], key, name)
            bound = by_run[run]["flops"]["flop_ratio_bounds"].get(BOUNDS.get(name, ""))
            if name == "speedup_vs_a" and ":" in key:
                bound = None  # another dtype: the FLOP bound does not apply
            passed = value is not None and (value >= threshold if op == ">=" else value <= threshold)
            checks.append(dict(run=run, target=text.format(m=f"({key})"), value=value, threshold=threshold, op=op,
                               passed=passed, flop_bound=bound))  # fmt: skip
    return checks


def _fmt(x: float | None, op: str) -> str:
    if x is None:
        return "-"
    return f"{x:.1e}" if op == "<=" else f"{x:.2f}"


def targets_markdown(checks: list[dict]) -> str:
    """The checks as a markdown table."""
    lines = ["| target | measured | pass | FLOP-count bound at equal FLOP/s | run |", "|---|---|---|---|---|"]
    for c in checks:
        bound = f"{c['flop_bound']:.2f}x" if c["flop_bound"] else "-"
        lines.append(
            f"| {c['target']} | {_fmt(c['value'], c['op'])} | {'PASS' if c['passed'] else 'FAIL'} | {bound} | "
            f"{c['run']} |"
        )
    return "\n".join(lines)
