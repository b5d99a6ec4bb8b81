"""Where the engine's time goes: torch.profiler op table of one method on a GRPO workload (CPU or GPU).

python benchmarks/profile_engine.py --preset smollm2-135m --method d --prompts 4 [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_methods import FACTORIES  # noqa: E402
from bench_presets import PRESETS, build_model  # noqa: E402
from bench_workload import make_workload  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="smollm2-135m", choices=sorted(PRESETS))
    p.add_argument("--method", default="d", choices=sorted(FACTORIES))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(50, 300))
    p.add_argument("--response-len", type=int, nargs=2, default=(50, 300))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--budget", type=int, default=8192)
    p.add_argument("--attn", default=None)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)
    model = build_model(args.preset, attn_implementation=args.attn).to(getattr(torch, args.dtype))
    work = make_workload(args.prompts, args.group_size, tuple(args.prompt_len), tuple(args.response_len),
                         model.config.vocab_size, 0)  # fmt: skip
    method = FACTORIES[args.method](model, budget=args.budget, lm_eval_batch_size=4)
    method.run(work.pairs[: args.group_size])
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        method.run(work.pairs)
    print(f"{args.method} {args.preset} {args.dtype}: {time.perf_counter() - start:.2f} s (profiled)", method.stats())
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
