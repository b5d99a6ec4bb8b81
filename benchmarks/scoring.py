"""Benchmark teacher-forced scoring on a GRPO-shaped workload: naive loop, lm-eval HFLM, cme_reward without and with
prefix sharing, a vLLM server, on the same pairs in one run.

    python -m benchmarks.scoring --preset smollm2-135m --prompts 24 --group-size 4 \\
        --prompt-len 50 300 --response-len 50 300 --methods a,b,c,d,d:bfloat16 --out benchmarks/results/NAME.json
    python -m benchmarks.scoring --model-dir DIR --vllm-url http://127.0.0.1:PORT --methods a,c,d,v   # real weights
    python -m benchmarks.scoring --replot benchmarks/results/NAME.json     # redraw a saved run's chart

Methods are `KEY` or `KEY:DTYPE` (KEY in a, b, c, d, e, g, h, v; DTYPE float32 | bfloat16, default `--dtype`). The
verifier is a random-init preset of a real shape, or with `--model-dir` a saved model's real weights; method v scores
the pairs on the vLLM server at `--vllm-url` (skipped without one), which must serve the same weights for its scores
to match. Every float32 method's per-pair means are checked against (a)'s (1e-4). Writes a JSON with machine info and
every number, and a PNG chart next to it. Not a test: nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from .lib.chart import chart
from .lib.cli import entry_parser
from .lib.machine import DTYPES, gpu_spec_peak, machine_info, measure_peaks
from .lib.measure import setup_malloc, timed, wait_idle
from .lib.methods import FACTORIES, Method
from .lib.presets import PRESETS, build_config, build_model, converted_copy, flop_model, load_model_dir, shape_of
from .lib.report import markdown_table, mismatches, reference_name, summarize
from .lib.results import portable_name, portable_path, results_path, write_result
from .lib.workload import Pair, Workload, flop_summary, make_workload

__all__ = ["build_parser", "main", "parse_args", "parse_methods"]

logger = logging.getLogger(__name__)
QUICK = dict(prompts=3, group_size=4, prompt_len=(8, 24), response_len=(8, 24), repeats=1)
DEFAULTS = dict(prompts=24, group_size=4, prompt_len=(50, 300), response_len=(50, 300), repeats=1)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.scoring` (checked further by [`parse_args`])."""
    p = entry_parser("scoring", __doc__)
    p.add_argument("--preset", default="smollm2-135m", choices=sorted(PRESETS))
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="score a saved model's real weights (a transformers directory, e.g. the one a vLLM server serves) "
        "instead of a random-init preset",
    )
    p.add_argument("--vllm-url", default=None, metavar="URL", help="method v: a vLLM server, http://HOST:PORT")
    p.add_argument("--vllm-model", default=None, metavar="ID", help="method v: served model id (default: the only)")
    p.add_argument("--prompts", type=int, help="P (default 24; 3 with --quick)")
    p.add_argument("--group-size", type=int, help="G completions per prompt (default 4)")
    p.add_argument("--prompt-len", type=int, nargs=2, metavar=("LO", "HI"), help="default 50 300")
    p.add_argument("--response-len", type=int, nargs=2, metavar=("LO", "HI"), help="default 50 300")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of methods without :DTYPE")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--methods",
        default="a,b,c,d,v",
        help="comma list of KEY or KEY:DTYPE; KEY: a naive, b lm-eval, c no prefix sharing, d full, "
        "e chunked head, g packing, h entropy metric, v the vLLM server at --vllm-url",
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
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/<preset or DIR name>.json)"
    )
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny workload, one repeat, small matmul probe")
    p.add_argument("--replot", type=Path, default=None, metavar="JSON", help="only redraw the chart of a saved run")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; `--quick` fills unset workload options with a tiny workload."""
    p = build_parser()
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
    if args.model_dir is not None and not (args.model_dir / "config.json").is_file():
        p.error(f"--model-dir: {args.model_dir} is not a saved model (no config.json)")
    args.name = args.model_dir.resolve().name if args.model_dir else args.preset
    if args.out is None:
        args.out = results_path(f"{args.name}.json")
    args.method_specs = parse_methods(args.methods, args.dtype, error=p.error)
    if args.vllm_url and "v" not in {key for key, _ in args.method_specs}:
        p.error("--vllm-url is given but --methods lists no v")
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


def verifier_config(args: argparse.Namespace):
    """The verifier's `transformers` config: the saved model's (`--model-dir`) or the preset's."""
    if args.model_dir is None:
        return build_config(args.preset)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(args.model_dir)


def build_models(args: argparse.Namespace, dtypes: set[str]) -> dict[str, torch.nn.Module]:
    """One float32 model (random init, or `--model-dir`'s weights), converted to each dtype the methods need: every
    dtype scores the same weights."""
    if args.model_dir is not None:
        base = load_model_dir(args.model_dir, device=args.device, attn_implementation=args.attn)
    else:
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


def load_tokenizer(args: argparse.Namespace):
    """`--model-dir`'s tokenizer when it has one (method v checks the server's against it), else `None`."""
    files = ("tokenizer.json", "tokenizer.model")
    if args.model_dir is None or not any((args.model_dir / f).is_file() for f in files):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(args.model_dir)


def setup_methods(args, models: dict[str, torch.nn.Module]) -> tuple[dict[str, Method], dict[str, str]]:
    methods, skipped = {}, {}
    options = dict(budget=args.budget, lm_eval_batch_size=args.lm_eval_batch_size, vllm_url=args.vllm_url,
                   vllm_model=args.vllm_model, tokenizer=load_tokenizer(args) if args.vllm_url else None)  # fmt: skip
    if args.vllm_url and args.model_dir is None:
        logger.warning("--vllm-url without --model-dir: (v) scores the served weights, the others a random init")
    for key, dtype in args.method_specs:
        name = method_name(key, dtype, args.dtype)
        made = FACTORIES[key](models[dtype], **options)
        if isinstance(made, str):
            skipped[name] = made
            logger.warning("skipping %s: %s", name, made)
        else:
            methods[name] = made
    return methods, skipped


def timed_run(args, name: str, method: Method, pairs: list[Pair]) -> tuple[object, dict]:
    """One timed run; on CPU, waits for a quiet machine first and retries a run that other processes disturbed. A
    remote method's server is another process: its load is the run's own work, not a disturbance (never retried),
    and this process's peak memory says nothing about it (`None`)."""
    cpu = args.device.type == "cpu"
    for attempt in range(1 + (args.retries if cpu and not method.remote else 0)):  # noqa: B007 - reported below
        waited = wait_idle(args.max_foreign, args.wait_idle) if cpu and args.wait_idle else 0.0
        out, seconds, peak, foreign = timed(lambda: method.run(pairs), args.device)
        peak = None if method.remote else peak
        if foreign <= args.max_foreign or not cpu or method.remote or attempt == args.retries:
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


def model_shapes(config) -> list[tuple[int, int, int]]:
    """(m, k, n) of the verifier's own matmuls at 512 rows: MLP up and down, and a 2048-row slice of the LM head."""
    h, i = config.hidden_size, config.intermediate_size
    return [(512, h, i), (512, i, h), (512, h, 2048)]


def peaks_of(args, config, previous: dict | None = None) -> dict[str, dict]:
    """Measured matmul peak of both dtypes (the better of this and `previous`)."""
    sizes = (256, 512) if args.quick and args.device.type == "cpu" else None
    return measure_peaks(args.device, sizes=sizes, shapes=None if args.quick else model_shapes(config),
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
    logging.getLogger("httpx").setLevel(logging.WARNING)  # method v: one line per request otherwise
    args = parse_args(argv)
    if args.replot:
        png = replot(args.replot)
        logger.info("wrote %s", png)
        return {"chart": str(png) if png else None}
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_malloc()
    specs = args.method_specs
    config = verifier_config(args)
    work = make_workload(args.prompts, args.group_size, tuple(args.prompt_len), tuple(args.response_len),
                         config.vocab_size, args.seed)  # fmt: skip
    peaks = peaks_of(args, config)
    models = build_models(args, {d for _, d in specs})
    flops = flop_summary(work, flop_model(config))
    methods, skipped = setup_methods(args, models)
    logger.info("%s: %s", args.name, work.summary())
    runs = run_all(args, methods, work)
    peaks = peaks_of(args, config, peaks)  # again after the runs: the better of the two
    spec_peaks = {n: gpu_spec_peak(args.device, dt) for n, dt in DTYPES.items()}
    dtypes = {method_name(k, d, args.dtype): d for k, d in specs}
    results = summarize(runs, methods, dtypes=dtypes, work=work, useful_flops=flops["useful"]["total"], peaks=peaks,
                        spec_peaks=spec_peaks, default_dtype=args.dtype)  # fmt: skip
    recorded = {k: v for k, v in vars(args).items() if k not in ("method_specs", "replot", "name")}
    recorded["out"] = portable_path(args.out)
    recorded["model_dir"] = portable_name(args.model_dir and str(args.model_dir))
    recorded["vllm_model"] = portable_name(args.vllm_model)
    report = {
        "preset": args.name,  # with --model-dir: the directory's name (real weights of that shape)
        "config": shape_of(config) if args.model_dir else dict(PRESETS[args.preset]),
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
    report["score_mismatches"] = mismatches(results)
    write_result(args.out, report)
    print(report["table"])
    for name, diff in report["score_mismatches"].items():
        logger.error("%s: per-pair means differ from %s's by %.1e (tolerance %.0e)", name, report["reference"], diff,
                     results[name]["score_tolerance"])  # fmt: skip
    logger.info("wrote %s", args.out)
    return report


if __name__ == "__main__":
    main()
