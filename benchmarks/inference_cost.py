"""Print (and save) the README "Inference cost" section from benchmark JSONs plus a cost model.

    python -m benchmarks.inference_cost [--results benchmarks/results] [--prompts 64 --group-size 8 \\
        --prompt-tokens 200 --response-tokens 300] [--out benchmarks/results/inference_cost.md]

Measured rows come from `python -m benchmarks.scoring` JSONs (quick runs are skipped). The cost model prices one GRPO
step and 1M scored tokens for 0.5B / 1.5B / 7B verifiers: from our own GPU measurement of that preset when a JSON has
one, else from H100 anchor rates (earlier measurements of a scorer without prefix sharing, labelled as such).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .lib.cli import entry_parser
from .lib.presets import build_config, flop_model
from .lib.report import own_peak_fraction
from .lib.results import RESULTS, load_reports, results_path, write_result
from .lib.targets import check_targets, targets_markdown

__all__ = ["build_parser", "main", "render"]

H100_BF16 = 989e12
# H100 anchor rates, bfloat16: a sorted, selective-log-prob scorer without prefix sharing, 256 pairs, prompt 30-300 /
# response 20-700 tokens. Their quoted MFU matches tok/s x 2 x params, so tok/s counts context + response tokens.
ANCHORS = {
    "qwen2-0.5b": {"tok_s": 187e3, "naive_tok_s": 27e3},
    "qwen2-1.5b": {"tok_s": 96e3, "naive_tok_s": 23e3},
    "qwen2-7b": {"tok_s": 30e3, "naive_tok_s": 14e3},
}
ANCHOR_SOURCE = "H100 anchor (earlier measurement, no prefix sharing), not measured here"
VERIFIERS = {"qwen2-0.5b": "Qwen2-0.5B", "qwen2-1.5b": "Qwen2-1.5B", "qwen2-7b": "Qwen2-7B"}
REAL_CHECK = "real SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"


def load_results(folder: Path) -> list[dict]:
    """Non-quick reports of `folder`, SmolLM2 first, then by group size and file name."""
    order = lambda r: (r["preset"] != "smollm2-135m", r["workload"]["group_size"], r["file"])  # noqa: E731
    return sorted(load_reports(folder, include_quick=False), key=order)


def machine_label(report: dict) -> str:
    m = report["machine"]
    if m.get("gpu"):
        return m["gpu"]
    return f"{m['cpu']}, {m['torch_threads']} threads"


def run_title(rep: dict) -> str:
    w, m = rep["workload"], rep["machine"]
    dtypes = sorted({r["dtype"] for r in rep["results"].values()})
    return (
        f"**{rep['preset']}** on {machine_label(rep)} ({', '.join(dtypes)}): {w['pairs']} pairs = {w['prompts']} "
        f"prompts x G={w['group_size']}, prompt {w['prompt_len_min_max'][0]}-{w['prompt_len_min_max'][1]} "
        f"(mean {w['prompt_len_mean']:.0f}) / response {w['response_len_min_max'][0]}-"
        f"{w['response_len_min_max'][1]} (mean {w['response_len_mean']:.0f}) tokens; torch {m['torch']}, "
        f"`{rep['file']}`"
    )


def measured_table(rep: dict, methods: set[str] | None) -> str:
    """One run's table; each run's FLOP rate is given against the measured matmul peak of its own dtype."""
    peaks = rep["matmul_peak"]
    peak_text = " / ".join(f"{d} {p['flops_per_s'] / 1e9:,.0f} G" for d, p in peaks.items())
    lines = [
        run_title(rep),
        "",
        "| method | dtype | scored tok/s | total tok/s | vs (a) | vs (b) | max abs score diff vs (a) | useful FLOP/s "
        f"(% of the measured matmul peak of its dtype: {peak_text}) | MFU (spec) | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratio = lambda x: f"{x:.2f}x" if x else "-"  # noqa: E731
    for name, r in rep["results"].items():
        if methods is not None and name.split(":")[0] not in methods:
            continue
        foreign = max(r.get("foreign_cpus_all") or [0.0])
        disturbed = foreign > 0.1 and not r.get("remote")  # a server's own work is not a disturbance
        flag = f" (disturbed: other processes used {foreign:.1f} CPUs)" if disturbed else ""
        diff = r.get("max_abs_score_diff")
        frac = own_peak_fraction(r)
        mfu = f"{100 * r['mfu_spec']:.0f} %" if r.get("mfu_spec") else "-"
        mem = "-" if r.get("peak_mem_mib") is None else f"+{r['peak_mem_mib']:,.0f} MiB"
        lines.append(
            f"| {r['label']}{flag} | {r['dtype']} | {r['scored_tokens_per_s']:,.0f} | "
            f"{r['total_tokens_per_s']:,.0f} | "
            f"{ratio(r['speedup_vs_a'])} | {ratio(r['speedup_vs_b'])} | {'-' if diff is None else f'{diff:.1e}'} | "
            f"{r['useful_flops_per_s'] / 1e9:,.0f} G ({'-' if frac is None else f'{100 * frac:.0f} %'}) | {mfu} | "
            f"{mem} |"
        )
    return "\n".join(lines)


def step_flops(preset: str, prompts: int, group: int, prompt_tokens: int, response_tokens: int) -> dict[str, float]:
    """Useful FLOPs of one GRPO step's scoring, with and without prefix sharing."""
    fm = flop_model(build_config(preset))
    ctx = fm.body_span(0, prompt_tokens)
    resp = fm.body_span(prompt_tokens, prompt_tokens + response_tokens - 1) + fm.head * response_tokens
    return {"shared": prompts * (ctx + group * resp), "unshared": prompts * group * (ctx + resp)}


def gpu_measurement(reports: list[dict], preset: str) -> tuple[dict, dict] | None:
    """Best measured (d) on a GPU for `preset`: (report, result)."""
    best = None
    for rep in reports:
        if rep["preset"] != preset or not rep["machine"].get("gpu"):
            continue
        for name, r in rep["results"].items():
            if name.startswith("d") and (best is None or r["useful_flops_per_s"] > best[1]["useful_flops_per_s"]):
                best = (rep, r)
    return best


def anchor_rate(preset: str) -> float:
    """Anchor FLOP/s: tok/s x 2 x params (the anchors' own MFU convention)."""
    return ANCHORS[preset]["tok_s"] * 2 * flop_model(build_config(preset)).params


def cost_rows(reports: list[dict], args: argparse.Namespace) -> list[str]:
    scored = args.prompts * args.group_size * args.response_tokens
    rows = []
    for preset, name in VERIFIERS.items():
        f = step_flops(preset, args.prompts, args.group_size, args.prompt_tokens, args.response_tokens)
        measured = gpu_measurement(reports, preset)
        if measured:
            rep, r = measured
            rate, source = r["useful_flops_per_s"], f"measured, {rep['machine']['gpu']} {r['dtype']} ({rep['file']})"
        else:
            rate, source = anchor_rate(preset), ANCHOR_SOURCE
        step_s = f["shared"] / rate
        step_unshared = f["unshared"] / rate
        per_m = step_s * 1e6 / scored
        rows.append(
            f"| {name} | {source} | {rate / 1e12:.0f} TFLOP/s ({100 * rate / H100_BF16:.0f} % of 989) | "
            f"{per_m:,.1f} s = {per_m / 3600:.4f} GPU-h | {step_s:.2f} s ({step_unshared:.2f} s without prefix "
            f"sharing) | {step_s * 1000 / 3600:.2f} GPU-h |"
        )
    return rows


def cpu_rows(reports: list[dict], args: argparse.Namespace) -> list[str]:
    rows = []
    for rep in reports:
        if rep["machine"].get("gpu") or rep["preset"] not in {"smollm2-135m", "qwen2-0.5b", "small-152k"}:
            continue
        for r in (r for n, r in rep["results"].items() if n.startswith("d")):
            f = step_flops(rep["preset"], args.prompts, args.group_size, args.prompt_tokens, args.response_tokens)
            step_s = f["shared"] / r["useful_flops_per_s"]
            per_m = step_s * 1e6 / (args.prompts * args.group_size * args.response_tokens)
            rows.append(
                f"| {rep['preset']} ({rep['file']}) | {machine_label(rep)} | {r['dtype']} | {per_m:,.0f} s | "
                f"{step_s / 60:,.1f} min |"
            )
    return rows


def cost_section(reports: list[dict], args: argparse.Namespace) -> str:
    step = (
        f"{args.prompts} prompts x G={args.group_size}, prompt {args.prompt_tokens} / response {args.response_tokens}"
    )
    scored = args.prompts * args.group_size * args.response_tokens
    out = [
        f"Cost model for one GRPO step ({step} tokens: {scored:,} scored tokens), verifier in bfloat16 on one "
        "H100/H200. Seconds = useful FLOPs of the step (body over each prompt once and over the responses, LM head "
        "over response tokens) / the verifier's FLOP rate. Where we have no GPU measurement the rate is the H100 "
        "anchor's (sorted + selective log-probs, measured *without* prefix sharing, so the prefix-shared figure "
        "assumes prefix sharing keeps that FLOP rate).",
        "",
        "| verifier | FLOP rate from | rate (MFU) | per 1M scored tokens (step's shape) | per GRPO step | "
        "per 1,000 steps |",
        "|---|---|---|---|---|---|",
        *cost_rows(reports, args),
    ]
    cpu = cpu_rows(reports, args)
    if cpu:
        out += [
            "",
            "Our CPU measurements, same step (engine (d) at its measured useful FLOP rate; per 1M scored tokens "
            "in the step's shape):",
            "",
            "| verifier | machine | dtype | per 1M scored tokens | per GRPO step |",
            "|---|---|---|---|---|",
            *cpu,
        ]
    return "\n".join(out)


def real_check_paragraph(path: Path) -> list[str]:
    """The bf16-drift paragraph from `bf16_real_check.json` (nothing when the file is missing)."""
    if not path.exists():
        return []
    r = json.loads(path.read_text()).get(REAL_CHECK)
    if r is None:
        return []
    return [
        f"bfloat16 scores drift from float32 by the weights' precision, not the engine's: on real "
        f"SmolLM2-135M-Instruct weights and {r['pairs']} MT-Bench answers the bf16 engine's mean log-prob differs "
        f"from the float32 reference by {r['bf16_mean_abs_diff']:.1e} on average (max {r['bf16_max_abs_diff']:.1e}"
        f"; mean score {r['mean_score']:.2f}); a float32 LM head on the bf16 body does not reduce it "
        f"(`python -m benchmarks.bf16_real_check`). In float32 the engine matches the reference within "
        f"{r['fp32_engine_max_abs_diff']:.0e}.",
        "",
    ]


def render(reports: list[dict], args: argparse.Namespace) -> str:
    """The whole section as markdown."""
    methods = None if args.all_methods else {"a", "b", "c", "d"}
    parts = [
        "## Inference cost",
        "",
        "Scoring cost of `cme_reward` against a naive one-pair-at-a-time loop (a, full logits, float32 "
        "log-softmax: `cme_reward.reference`), lm-evaluation-harness `HFLM` (b, driven with the same token ids), "
        "the engine without prefix sharing (c) and the full engine (d), on the same GRPO-shaped pairs in one run. "
        "Random-init verifiers of the real shapes (cost equals real weights). Reproduce with "
        "`python -m benchmarks.scoring --help`; useful FLOPs = body FLOPs of unique tokens + LM-head FLOPs of "
        "response tokens, given against the measured dense-matmul peak of each run's own dtype.",
        "",
        *(measured_table(rep, methods) + "\n" for rep in reports),
    ]
    if not reports:
        parts.append("(no benchmark results found)")
    parts += real_check_paragraph(args.results / "bf16_real_check.json")
    checks = check_targets(reports)
    if checks:
        parts += ["CPU targets of the benchmark (`python -m benchmarks.targets`):", "", targets_markdown(checks), ""]
    parts += [cost_section(reports, args), ""]
    return "\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.inference_cost`."""
    p = entry_parser("inference_cost", __doc__)
    p.add_argument("--results", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--response-tokens", type=int, default=300)
    p.add_argument("--out", type=Path, default=results_path("inference_cost.md"))
    p.add_argument("--all-methods", action="store_true", help="also list (e) and (g), the engine ablations")
    return p


def main(argv: list[str] | None = None) -> str:
    """Render the section, write it to `--out` and print it; returns the text."""
    p = build_parser()
    args = p.parse_args(argv)
    for key in ("prompts", "group_size", "prompt_tokens", "response_tokens"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if not args.results.is_dir():
        p.error(f"--results: {args.results} is not a folder")
    text = render(load_results(args.results), args)
    write_result(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
