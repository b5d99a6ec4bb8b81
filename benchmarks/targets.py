"""The benchmark's CPU targets: run the configs that measure them, then check the results.

python -m benchmarks.targets --run         # runs every target config (a few minutes each), then checks
python -m benchmarks.targets               # checks the JSONs already in benchmarks/results
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .lib.cli import entry_parser
from .lib.results import RESULTS, load_reports, write_result
from .lib.targets import RUNS, check_targets, targets_markdown

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.targets`."""
    p = entry_parser("targets", __doc__)
    p.add_argument(
        "--run",
        nargs="*",
        default=None,
        metavar="NAME",
        help=f"run these configs first (none given: all of {list(RUNS)})",
    )
    p.add_argument("--results", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="more `python -m benchmarks.scoring` arguments"
    )
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """Optionally run target configs, then write `targets.md` in the results folder; returns the checks."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = build_parser()
    args = p.parse_args(argv)
    unknown = [name for name in args.run or [] if name not in RUNS]
    if unknown:
        p.error(f"--run: unknown config(s) {unknown}; choose among {list(RUNS)}")
    if args.run is not None:
        from . import scoring

        for name in args.run or list(RUNS):
            logger.info("== %s", name)
            scoring.main([*RUNS[name], "--out", str(args.results / f"{name}.json"), *args.extra])
    checks = check_targets(load_reports(args.results))
    table = targets_markdown(checks)
    write_result(args.results / "targets.md", table)
    print(table)
    return checks


if __name__ == "__main__":
    main()
