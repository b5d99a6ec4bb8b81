"""Benchmark teacher-forced scoring on a GRPO-shaped workload: naive loop, lm-eval HFLM, cme_reward without and with
prefix sharing, on the same pairs in one run.

    python benchmarks/bench_scoring.py --preset smollm2-135m --prompts 24 --group-size 4 \
        --prompt-len 50 300 --response-len 50 300 --methods a,b,c,d,d:bfloat16 --out benchmarks/results/NAME.json

Methods are `KEY` or `KEY:DTYPE` (KEY in a, b, c, d; DTYPE float32 | bfloat16, default `--dtype`). Writes a JSON with
machine info and every number, and a PNG chart next to it. Not a test: nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_measure import (  # noqa: E402
    ForeignLoad,
    gpu_spec_peak,
    machine_info,
    matmul_peak,
    setup_malloc,
    timed,
    wait_idle,
)
from bench_methods import FACTORIES, Method, pair_means  # noqa: E402
from bench_presets import PRESETS, build_config, build_model, converted_copy, flop_model  # noqa: E402
from bench_workload import Workload, flop_summary, make_workload  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUICK = dict(prompts=3, group_size=4, prompt_len=(8, 24), response_len=(8, 24), repeats=1)
DEFAULTS = dict(prompts=24, group_size=4, prompt_len=(50, 300), response_len=(50, 300), repeats=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="smollm2-135m", choices=sorted(PRESETS))
    p.add_argument("--prompts", type=int, help="P (default 24; 3 with --quick)")
    p.add_argument("--group-size", type=int, help="G completions per prompt (default 4)")
    p.add_argument("--prompt-len", type=int, nargs=2, metavar=("LO", "HI"), help="default 50 300")
    p.add_argument("--response-len", type=int, nargs=2, metavar=("LO", "HI"), help="default 50 300")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of methods without :DTYPE")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--methods",
        default="a,b,c,d",
        help="comma list of KEY or KEY:DTYPE; KEY: a naive, b lm-eval, c no prefix sharing, d full, "
        "e chunked head, g packing",
    )
    p.add_argument("--budget", type=int, default=8192, help="cme max_tokens_per_batch")
    p.add_argument(
        "--lm-eval-batch-size",
        type=int,
        default=None,
        help="HFLM batch size (default 1 on CPU, its fastest there; 16 on GPU)",
    )
    p.add_argument("--repeats", type=int, help="timed runs per method (the best is reported; default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="CPU: before each timed run, wait up to S seconds for other processes to leave the CPUs",
    )
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.1,
        metavar="CPUS",
        help="CPU: a run during which other processes used more CPUs than this is retried",
    )
    p.add_argument("--retries", type=int, default=2, help="CPU: retries of a disturbed run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--logit-std",
        type=float,
        default=2.0,
        help="scale random-init logits to this std (0: raw init, nearly uniform). 2.0 gives bf16 drift "
        "close to real SmolLM2 weights' (benchmarks/bf16_real_check.py)",
    )
    p.add_argument("--attn", default=None, help="attn_implementation (default: transformers' choice, sdpa)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<preset>.json)")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny workload, one repeat, small matmul probe")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = torch.device(args.device)
    if args.lm_eval_batch_size is None:
        args.lm_eval_batch_size = 16 if args.device.type == "cuda" else 1
    if args.out is None:
        args.out = Path(__file__).resolve().parent / "results" / f"{args.preset}.json"
    return args


def parse_methods(spec: str, default_dtype: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, dtype = item.partition(":")
        if key not in FACTORIES or (dtype or default_dtype) not in DTYPES:
            raise SystemExit(
                f"bad method {item!r}: use KEY[:DTYPE], KEY in {sorted(FACTORIES)}, DTYPE in {list(DTYPES)}"
            )
        out.append((key, dtype or default_dtype))
    return out


def method_name(key: str, dtype: str, default_dtype: str) -> str:
    return key if dtype == default_dtype else f"{key}:{dtype}"


def build_models(args, dtypes: set[str]) -> dict[str, torch.nn.Module]:
    """One random init (float32), converted to each dtype the methods need: every dtype scores the same weights."""
    base = build_model(args.preset, device=args.device, seed=args.seed, logit_std=args.logit_std or None,
                       attn_implementation=args.attn)  # fmt: skip
    models = {}
    for name in sorted(dtypes, key=lambda d: d != "float32"):
        if name == "float32":
            models[name] = base
        else:
            keep_base = "float32" in dtypes
            models[name] = converted_copy(base, DTYPES[name]) if keep_base else base.to(DTYPES[name])
    return models


def setup_methods(args, specs, models) -> tuple[dict[str, Method], dict[str, str]]:
    methods, skipped = {}, {}
    for key, dtype in specs:
        name = method_name(key, dtype, args.dtype)
        made = FACTORIES[key](models[dtype], budget=args.budget, lm_eval_batch_size=args.lm_eval_batch_size)
        if isinstance(made, str):
            skipped[name] = made
            print(f"skipping {name}: {made}", file=sys.stderr)
        else:
            methods[name] = made
    return methods, skipped


def timed_run(args, method: Method, pairs) -> tuple[object, dict]:
    """One timed run; on CPU, waits for a quiet machine first and retries a run that other processes disturbed."""
    cpu = args.device.type == "cpu"
    for attempt in range(1 + (args.retries if cpu else 0)):  # noqa: B007 - reported below
        waited = wait_idle(args.max_foreign, args.wait_idle) if cpu and args.wait_idle else 0.0
        out, seconds, peak, foreign = timed(lambda: method.run(pairs), args.device)
        if foreign <= args.max_foreign or not cpu:
            break
        print(f"  {method.key}: {seconds:.2f} s disturbed (other processes {foreign:.2f} CPUs), retrying",
              file=sys.stderr)  # fmt: skip
    return out, dict(seconds=seconds, peak_bytes=peak, foreign_cpus=foreign, waited_s=waited, attempts=attempt + 1)


def run_all(args, methods: dict[str, Method], work: Workload) -> dict[str, dict]:
    warm = work.pairs[: work.group_size]
    for method in methods.values():
        method.run(warm)
    keys = ("seconds", "peak_bytes", "foreign_cpus", "waited_s", "attempts")
    runs = {name: {key: [] for key in keys} for name in methods}
    for rep in range(args.repeats):
        for name, method in methods.items():
            out, record = timed_run(args, method, work.pairs)
            for key in keys:
                runs[name][key].append(record[key])
            if rep == 0:
                runs[name]["out"] = out
            print(f"  {name:>12}: {record['seconds']:8.2f} s  peak +{(record['peak_bytes'] or 0) / 2**20:8.1f} MiB  "
                  f"other processes {record['foreign_cpus']:.2f} CPUs", file=sys.stderr)  # fmt: skip
    return runs


def reference_name(runs: dict, default_dtype: str) -> str | None:
    for name in ("a:float32", "a") if default_dtype != "float32" else ("a",):
        if name in runs:
            return name
    return next((n for n in runs if n.startswith("a")), None)


def diffs(runs: dict, ref: str | None) -> dict[str, dict]:
    if ref is None:
        return {name: {} for name in runs}
    ref_out = runs[ref]["out"]
    ref_means = pair_means(ref_out)
    out = {}
    for name, run in runs.items():
        d = {"max_abs_score_diff": float((pair_means(run["out"]) - ref_means).abs().max())}
        if run["out"][0].dim() == 1:
            d["max_abs_token_diff"] = max(
                float((x.double() - y.double()).abs().max()) for x, y in zip(run["out"], ref_out)
            )
        out[name] = d
    return out


def summarize(args, specs, methods, runs, work, flops, peaks) -> dict[str, dict]:
    ref = reference_name(runs, args.dtype)
    diff = diffs(runs, ref)
    dtype_of = {method_name(k, d, args.dtype): d for k, d in specs}
    base_a = min(runs[ref]["seconds"]) if ref else None
    base_b = min(runs["b"]["seconds"]) if "b" in runs else None
    results = {}
    for name, run in runs.items():
        t = min(run["seconds"])
        useful = flops["useful"]["total"] / t
        spec = gpu_spec_peak(args.device, DTYPES[dtype_of[name]])
        results[name] = {
            "label": methods[name].label,
            "dtype": dtype_of[name],
            "notes": methods[name].notes,
            "seconds": t,
            "seconds_all": run["seconds"],
            "foreign_cpus_all": run["foreign_cpus"],  # CPUs other processes used during each run (contention)
            "attempts_all": run["attempts"],
            "scored_tokens_per_s": work.scored_tokens / t,
            "total_tokens_per_s": work.total_tokens / t,
            "speedup_vs_a": base_a / t if base_a else None,
            "speedup_vs_b": base_b / t if base_b else None,
            "peak_mem_mib": max(run["peak_bytes"]) / 2**20 if None not in run["peak_bytes"] else None,
            "useful_flops_per_s": useful,
            "frac_fp32_matmul_peak": useful / peaks["float32"]["flops_per_s"],
            "frac_bf16_matmul_peak": useful / peaks["bfloat16"]["flops_per_s"],
            "mfu_spec": useful / spec if spec else None,
            **diff[name],
            "engine_stats": methods[name].stats(),
        }
    return results


def markdown_table(results: dict[str, dict]) -> str:
    head = "| method | dtype | s | scored tok/s | total tok/s | vs (a) | vs (b) | peak MiB | max abs diff | useful FLOP/s | % fp32 peak | % bf16 peak | MFU |"  # noqa: E501
    lines = [head, "|" + "---|" * 13]
    for name, r in results.items():
        ratio = lambda x: f"{x:.2f}x" if x else "-"  # noqa: E731
        pct = lambda x: f"{100 * x:.0f} %" if x else "-"  # noqa: E731
        diff = r.get("max_abs_score_diff")
        lines.append(
            f"| {name} {r['label']} | {r['dtype']} | {r['seconds']:.2f} | {r['scored_tokens_per_s']:,.0f} | "
            f"{r['total_tokens_per_s']:,.0f} | {ratio(r['speedup_vs_a'])} | {ratio(r['speedup_vs_b'])} | "
            f"{r['peak_mem_mib'] or 0:,.0f} | {'-' if diff is None else f'{diff:.1e}'} | "
            f"{r['useful_flops_per_s'] / 1e9:,.1f} G | {pct(r['frac_fp32_matmul_peak'])} | "
            f"{pct(r['frac_bf16_matmul_peak'])} | {pct(r['mfu_spec'])} |"
        )
    return "\n".join(lines)


def chart(path: Path, results: dict[str, dict], title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bars = ax1.bar(names, [results[n]["scored_tokens_per_s"] for n in names], color="tab:blue")
    for bar, n in zip(bars, names):
        s = results[n]["speedup_vs_a"]
        ax1.annotate(f"{s:.2f}x" if s else "", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                     va="bottom", fontsize=8)  # fmt: skip
    ax1.set_ylabel("scored response tokens / s")
    ax1.set_title("throughput (label: speed-up vs (a))", fontsize=9)
    ax2.bar(names, [100 * results[n]["frac_fp32_matmul_peak"] for n in names], color="tab:orange", label="fp32")
    ax2.set_ylabel("useful FLOP/s, % of measured fp32 matmul peak")
    ax2.set_title("efficiency", fontsize=9)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def model_shapes(preset: str) -> list[tuple[int, int, int]]:
    """(m, k, n) of the verifier's own matmuls at 512 rows: MLP up and down, and a 2048-row slice of the LM head."""
    cfg = build_config(preset)
    h, i = cfg.hidden_size, cfg.intermediate_size
    return [(512, h, i), (512, i, h), (512, h, 2048)]


def measure_peaks(args, sizes, previous: dict | None = None) -> dict[str, dict]:
    """Measured dense-matmul peak per dtype (on CPU, on a quiet machine when `--wait-idle` allows); with `previous`,
    the better of the two measurements."""
    peaks = dict(previous or {})
    shapes = None if args.quick else model_shapes(args.preset)
    for name, dt in DTYPES.items():
        for _ in range(1 + args.retries):
            if args.wait_idle and args.device.type == "cpu":
                wait_idle(args.max_foreign, args.wait_idle)
            with ForeignLoad() as load:
                peak = matmul_peak(dt, args.device, sizes, shapes)
            if peaks.get(name) is None or peak["flops_per_s"] > peaks[name]["flops_per_s"]:
                peaks[name] = dict(peak, foreign_cpus=load.cpus)
            if load.cpus <= args.max_foreign or args.device.type != "cpu":
                break
    return peaks


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_malloc()
    specs = parse_methods(args.methods, args.dtype)
    vocab = build_config(args.preset).vocab_size
    work = make_workload(args.prompts, args.group_size, tuple(args.prompt_len), tuple(args.response_len), vocab,
                         args.seed)  # fmt: skip
    sizes = (256, 512) if args.quick and args.device.type == "cpu" else None
    peaks = measure_peaks(args, sizes)
    models = build_models(args, {d for _, d in specs})
    fm = flop_model(build_config(args.preset))
    flops = flop_summary(work, fm)
    methods, skipped = setup_methods(args, specs, models)
    print(f"{args.preset}: {work.summary()}", file=sys.stderr)
    runs = run_all(args, methods, work)
    peaks = measure_peaks(args, sizes, peaks)  # again after the runs: the better of the two
    results = summarize(args, specs, methods, runs, work, flops, peaks)
    report = {
        "preset": args.preset,
        "config": {k: v for k, v in PRESETS[args.preset].items()},
        "args": {k: str(v) if isinstance(v, (Path, torch.device)) else v for k, v in vars(args).items()},
        "machine": machine_info(args.device),
        "matmul_peak": peaks,
        "gpu_spec_peak": {n: gpu_spec_peak(args.device, dt) for n, dt in DTYPES.items()},
        "workload": work.summary(),
        "flops": flops,
        "reference": reference_name(runs, args.dtype),
        "timing": "no sampler thread; CPU peak memory from VmHWM",  # earlier runs had a 2 ms RSS sampler thread
        "skipped": skipped,
        "results": results,
        "table": markdown_table(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_chart:
        title = f"{args.preset} on {report['machine']['gpu'] or report['machine']['cpu']}: {len(work.pairs)} pairs "
        title += f"({args.prompts} prompts x G={args.group_size})"
        report["chart"] = chart(args.out.with_suffix(".png"), results, title)
    args.out.write_text(json.dumps(report, indent=1))
    print(report["table"])
    print(f"wrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
