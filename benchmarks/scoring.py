"""Benchmark teacher-forced scoring on a GRPO-shaped workload: naive loop, lm-eval HFLM, cme_reward without and with
prefix sharing, on the same pairs in one run.

    python -m benchmarks.scoring --preset smollm2-135m --prompts 24 --group-size 4 \\
        --prompt-len 50 300 --response-len 50 300 --methods a,b,c,d,d:bfloat16 --out benchmarks/results/NAME.json
    python -m benchmarks.scoring --replot benchmarks/results/NAME.json     # redraw a saved run's chart

Methods are `KEY` or `KEY:DTYPE` (KEY in a, b, c, d, e, g; DTYPE float32 | bfloat16, default `--dtype`). Writes a
JSON with machine info and every number, and a PNG chart next to it. Not a test: nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from cme_reward.files.atomic import write_atomic

from .lib.chart import chart
from .lib.machine import DTYPES, gpu_spec_peak, machine_info, measure_peaks
from .lib.measure import setup_malloc, timed, wait_idle
from .lib.methods import FACTORIES, Method
from .lib.presets import PRESETS, build_config, build_model, converted_copy, flop_model
from .lib.report import markdown_table, reference_name, summarize
from .lib.results import portable_path
from .lib.workload import Pair, Workload, flop_summary, make_workload

__all__ = ["main", "parse_args", "parse_methods"]

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).resolve().parent / "results"
QUICK = dict(prompts=3, group_size=4, prompt_len=(8, 24), response_len=(8, 24), repeats=1)
DEFAULTS = dict(prompts=24, group_size=4, prompt_len=(50, 300), response_len=(50, 300), repeats=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; `--quick` fills unset workload options with a tiny workload."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scoring", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        "close to real SmolLM2 weights' (python -m benchmarks.bf16_real_check)",
    )
    p.add_argument("--attn", default=None, help="attn_implementation (default: transformers' choice, sdpa)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<preset>.json)")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny workload, one repeat, small matmul probe")
    p.add_argument("--replot", type=Path, default=None, metavar="JSON", help="only redraw the chart of a saved run")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("prompts", "group_size", "repeats", "budget"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.retries < 0 or args.wait_idle < 0 or args.max_foreign < 0:
        p.error("--retries, --wait-idle and --max-foreign must not be negative")
    args.device = torch.device(args.device)
    if args.lm_eval_batch_size is None:
        args.lm_eval_batch_size = 16 if args.device.type == "cuda" else 1
    if args.out is None:
        args.out = RESULTS / f"{args.preset}.json"
    args.method_specs = parse_methods(args.methods, args.dtype, error=p.error)
    return args


def parse_methods(spec: str, default_dtype: str, *, error=None) -> list[tuple[str, str]]:
    """`"a,d:bfloat16"` -> `[("a", default_dtype), ("d", "bfloat16")]`.

    Raises:
        `ValueError` (or calls `error`, argparse's) on an unknown key or dtype, or an empty list.
    """
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, dtype = item.partition(":")
        if key not in FACTORIES or (dtype or default_dtype) not in DTYPES:
            msg = (
                f"bad method {item!r} in --methods: use KEY[:DTYPE], KEY in {sorted(FACTORIES)}, "
                f"DTYPE in {list(DTYPES)}"
            )
            if error is not None:
                error(msg)
            raise ValueError(msg)
        out.append((key, dtype or default_dtype))
    if not out:
        msg = f"--methods lists no method, got {spec!r}"
        if error is not None:
            error(msg)
        raise ValueError(msg)
    return out


def method_name(key: str, dtype: str, default_dtype: str) -> str:
    return key if dtype == default_dtype else f"{key}:{dtype}"


def build_models(args: argparse.Namespace, dtypes: set[str]) -> dict[str, torch.nn.Module]:
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


def setup_methods(args, models: dict[str, torch.nn.Module]) -> tuple[dict[str, Method], dict[str, str]]:
    methods, skipped = {}, {}
    for key, dtype in args.method_specs:
        name = method_name(key, dtype, args.dtype)
        made = FACTORIES[key](models[dtype], budget=args.budget, lm_eval_batch_size=args.lm_eval_batch_size)
        if isinstance(made, str):
            skipped[name] = made
            logger.warning("skipping %s: %s", name, made)
        else:
            methods[name] = made
    return methods, skipped


def timed_run(args, name: str, method: Method, pairs: list[Pair]) -> tuple[object, dict]:
    """One timed run; on CPU, waits for a quiet machine first and retries a run that other processes disturbed."""
    cpu = args.device.type == "cpu"
    for attempt in range(1 + (args.retries if cpu else 0)):  # noqa: B007 - reported below
        waited = wait_idle(args.max_foreign, args.wait_idle) if cpu and args.wait_idle else 0.0
        out, seconds, peak, foreign = timed(lambda: method.run(pairs), args.device)
        if foreign <= args.max_foreign or not cpu:
            break
        logger.warning("  %s: %.2f s disturbed (other processes %.2f CPUs), retrying", name, seconds, foreign)
    return out, dict(seconds=seconds, peak_bytes=peak, foreign_cpus=foreign, waited_s=waited, attempts=attempt + 1)


def run_all(args, methods: dict[str, Method], work: Workload) -> dict[str, dict]:
    """Warm every method up on one group, then `--repeats` rounds of one timed run per method."""
    warm = work.pairs[: work.group_size]
    for method in methods.values():
        method.run(warm)
    keys = ("seconds", "peak_bytes", "foreign_cpus", "waited_s", "attempts")
    runs = {name: {key: [] for key in keys} for name in methods}
    for rep in range(args.repeats):
        for name, method in methods.items():
            out, record = timed_run(args, name, method, work.pairs)
            for key in keys:
                runs[name][key].append(record[key])
            if rep == 0:
                runs[name]["out"] = out
            logger.info("  %12s: %8.2f s  peak +%8.1f MiB  other processes %.2f CPUs", name, record["seconds"],
                        (record["peak_bytes"] or 0) / 2**20, record["foreign_cpus"])  # fmt: skip
    return runs


def model_shapes(preset: str) -> list[tuple[int, int, int]]:
    """(m, k, n) of the verifier's own matmuls at 512 rows: MLP up and down, and a 2048-row slice of the LM head."""
    cfg = build_config(preset)
    h, i = cfg.hidden_size, cfg.intermediate_size
    return [(512, h, i), (512, i, h), (512, h, 2048)]


def peaks_of(args, previous: dict | None = None) -> dict[str, dict]:
    """Measured matmul peak of both dtypes (the better of this and `previous`)."""
    sizes = (256, 512) if args.quick and args.device.type == "cpu" else None
    return measure_peaks(args.device, sizes=sizes, shapes=None if args.quick else model_shapes(args.preset),
                         retries=args.retries, max_foreign=args.max_foreign, wait_idle_s=args.wait_idle,
                         previous=previous)  # fmt: skip


def chart_title(report: dict) -> str:
    w, m = report["workload"], report["machine"]
    return (
        f"{report['preset']} on {m['gpu'] or m['cpu']}: {w['pairs']} pairs "
        f"({w['prompts']} prompts x G={w['group_size']})"
    )


def replot(path: Path) -> Path | None:
    """Redraw the chart of the saved run `path` next to it (older result files included)."""
    report = json.loads(path.read_text())
    if "results" not in report:
        raise SystemExit(f"--replot: {path} is not a result file of this benchmark (no 'results')")
    return chart(path.with_suffix(".png"), report["results"], title=chart_title(report), peaks=report["matmul_peak"])


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the report written to `--out`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.replot:
        png = replot(args.replot)
        logger.info("wrote %s", png)
        return {"chart": str(png) if png else None}
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_malloc()
    specs = args.method_specs
    config = build_config(args.preset)
    work = make_workload(args.prompts, args.group_size, tuple(args.prompt_len), tuple(args.response_len),
                         config.vocab_size, args.seed)  # fmt: skip
    peaks = peaks_of(args)
    models = build_models(args, {d for _, d in specs})
    flops = flop_summary(work, flop_model(config))
    methods, skipped = setup_methods(args, models)
    logger.info("%s: %s", args.preset, work.summary())
    runs = run_all(args, methods, work)
    peaks = peaks_of(args, peaks)  # again after the runs: the better of the two
    spec_peaks = {n: gpu_spec_peak(args.device, dt) for n, dt in DTYPES.items()}
    dtypes = {method_name(k, d, args.dtype): d for k, d in specs}
    results = summarize(runs, methods, dtypes=dtypes, work=work, useful_flops=flops["useful"]["total"], peaks=peaks,
                        spec_peaks=spec_peaks, default_dtype=args.dtype)  # fmt: skip
    recorded = {k: v for k, v in vars(args).items() if k not in ("method_specs", "replot")}
    recorded["out"] = portable_path(args.out)
    report = {
        "preset": args.preset,
        "config": dict(PRESETS[args.preset]),
        "args": {k: str(v) if isinstance(v, (Path, torch.device)) else v for k, v in recorded.items()},
        "machine": machine_info(args.device),
        "matmul_peak": peaks,
        "gpu_spec_peak": spec_peaks,
        "workload": work.summary(),
        "flops": flops,
        "reference": reference_name(runs, args.dtype),
        "timing": "no sampler thread; CPU peak memory from VmHWM",
        "peak_convention": "frac_matmul_peak: useful FLOP/s / measured matmul peak of the run's own dtype",
        "skipped": skipped,
        "results": results,
        "table": markdown_table(results),
    }
    if not args.no_chart:
        png = chart(args.out.with_suffix(".png"), results, title=chart_title(report), peaks=peaks)
        report["chart"] = png.name if png else None  # next to the JSON
    write_atomic(args.out, json.dumps(report, indent=1))
    print(report["table"])
    logger.info("wrote %s", args.out)
    return report


if __name__ == "__main__":
    main()
