"""Where a method's time goes: torch.profiler op table of one method on a GRPO workload (CPU or GPU).

python -m benchmarks.profile_engine --preset smollm2-135m --method d --prompts 4 [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch

from .lib.cli import entry_parser
from .lib.machine import DTYPES
from .lib.methods import FACTORIES
from .lib.presets import PRESETS, build_model
from .lib.workload import make_workload

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.profile_engine`."""
    p = entry_parser("profile_engine", __doc__)
    p.add_argument("--preset", default="smollm2-135m", choices=sorted(PRESETS))
    p.add_argument("--method", default="d", choices=sorted(FACTORIES))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(50, 300))
    p.add_argument("--response-len", type=int, nargs=2, default=(50, 300))
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--budget", type=int, default=8192)
    p.add_argument("--attn", default=None)
    p.add_argument("--rows", type=int, default=25, help="rows of the op table")
    return p


def main(argv: list[str] | None = None) -> None:
    """Profile one method once (after a warm-up on one group) and print the op table."""
    args = build_parser().parse_args(argv)
    model = build_model(args.preset, attn_implementation=args.attn).to(DTYPES[args.dtype])
    work = make_workload(args.prompts, args.group_size, tuple(args.prompt_len), tuple(args.response_len),
                         model.config.vocab_size, 0)  # fmt: skip
    method = FACTORIES[args.method](model, budget=args.budget, lm_eval_batch_size=4)
    if isinstance(method, str):
        raise SystemExit(f"--method {args.method} cannot run here: {method}")
    method.run(work.pairs[: args.group_size])
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        method.run(work.pairs)
    print(f"{args.method} {args.preset} {args.dtype}: {time.perf_counter() - start:.2f} s (profiled)", method.stats())
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
