"""The `cme-reward` command line: `score` files resumably, `inspect` token heatmaps, `compare-verifiers`, run the
`demo`, `serve`.

The verifier and scoring flags every command shares are declared once in `cme_reward.cli.flags`. Exit codes: 0
success, 2 usage or input error (one line on stderr), 1 unexpected error (with a traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import CheckpointError, InputError, UsageError
from .flags import PROG, add_input_args, add_verifier_args, non_negative_float, positive_int
from .score import Interrupted

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "main"]

SCORE_EPILOG = """\
output:
  JSON Lines, one line per usable input row, in input order: the row's columns plus
  "cme" (mean natural-log prob of the response's verifier tokens; null for an empty
  response) and, with --per-token, "cme_tokens" and "cme_logprobs".
resuming:
  While running, OUT.partial (rows so far), OUT.ckpt.json (checkpoint) and OUT.lock sit
  next to OUT. A checkpoint is written every --chunk-rows rows or --checkpoint-seconds
  of scoring, whichever comes first, and on Ctrl-C. Rerun the same command to continue;
  another input or other options are refused unless --overwrite. --batch-tokens,
  --device, --chunk-rows and --checkpoint-seconds may change.
exit status:
  0 done, 2 usage or input error, 1 unexpected error, 130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `cme-reward` and its subcommands."""
    from . import compare, demo, serve
    from . import score as score_job

    parser = argparse.ArgumentParser(prog=PROG, description="Cross-Model Entropy scores from a frozen verifier LM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{score,inspect,compare-verifiers,demo,serve}")

    score = sub.add_parser(
        "score",
        help="score a file of (prompt, response) rows into JSON Lines, resumably",
        description="Write every input row plus 'cme' (null for an empty response) to --output. Rerunning the same "
        "command after an interruption continues where it stopped; the output appears only when complete.",
        epilog=SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verifier_args(score)
    add_input_args(score)
    output = score.add_argument_group("output")
    output.add_argument("--output", type=Path, required=True, help="the .jsonl file to write")
    output.add_argument("--per-token", action="store_true", help="also write cme_tokens and cme_logprobs")
    output.add_argument(
        "--chunk-rows", type=positive_int, default=256, help="most rows per checkpointed chunk (default 256)"
    )
    output.add_argument(
        "--checkpoint-seconds",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="also checkpoint once S seconds of scoring have passed since the last checkpoint (default 30)",
    )
    output.add_argument(
        "--overwrite", action="store_true", help="replace an existing output / a mismatched checkpoint"
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=score_job.cmd_score)

    inspect = sub.add_parser("inspect", help="write an HTML page colouring each response token by its log-prob")
    add_verifier_args(inspect)
    add_input_args(inspect)
    inspect.set_defaults(limit=50)
    inspect.add_argument("--output", type=Path, required=True, help="the .html file to write")
    inspect.add_argument("--title", help="page title")
    inspect.set_defaults(func=score_job.cmd_inspect)

    compare_parser = sub.add_parser(
        "compare-verifiers",
        help="which verifier separates good responses from bad best: AUROC / pairwise accuracy with intervals",
        description="Score labelled responses or preference pairs with every --verifiers entry (one loaded at a "
        "time) and write a JSON report, a Markdown table and a ROC plot. Rerun after an interruption to resume.",
        epilog=compare.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_arguments(compare_parser)
    compare_parser.set_defaults(func=compare.cmd_compare)

    demo_parser = sub.add_parser("demo", help="MT-Bench reference answers vs word-shuffled copies, a real verifier")
    add_verifier_args(demo_parser, default="smollm2", scoring=False)
    demo_parser.add_argument("--limit", type=positive_int, help="score only the first N pairs")
    demo_parser.add_argument("--output-dir", type=Path, default=Path("cme_demo_out"), help="default: cme_demo_out")
    demo_parser.set_defaults(func=demo.cmd_demo)

    serve_parser = sub.add_parser("serve", help="an HTTP reward server (/score, OpenRLHF /get_reward, /health)")
    add_verifier_args(serve_parser, api_key_flag="--vllm-api-key")  # --api-key is the reward server's own
    serve.add_arguments(serve_parser)
    serve_parser.set_defaults(func=serve.cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `cme-reward`; returns the exit code (0 ok, 2 usage/input error, 1 unexpected, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, message already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s"
        )
    try:
        return args.func(args)
    except (UsageError, InputError, CheckpointError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # `score` says how many rows it saved
        detail = err if isinstance(err, Interrupted) else "interrupted; rerun the same command to resume"
        print(f"{PROG}: {detail}", file=sys.stderr)
        return 130
    except Exception:
        logger.exception("unexpected error")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
