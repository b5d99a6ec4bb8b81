"""The ``cme-reward`` command line: ``score`` files resumably, ``inspect`` token heatmaps, run the ``demo``, ``serve``.

Verifier and scoring flags are declared once, here, each bound to a field of
:class:`~cme_reward.VerifierSpec` or :class:`~cme_reward.CMEConfig`: defaults and validation come from those
dataclasses. Exit codes: 0 success, 2 usage or input error (one line on stderr), 1 unexpected error (with a
traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..config import METRICS, REDUCTIONS, CMEConfig
from ..verifier import VerifierSpec

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_FLAGS", "PROG", "VERIFIER_FLAGS", "UsageError", "build_parser", "main"]

PROG = "cme-reward"

# flag -> (field, argparse options). Values left unset fall back to the dataclass default.
VERIFIER_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--device": ("device", {"help": "e.g. cpu, cuda, cuda:1 (default: this process's GPU if any, else cpu)"}),
    "--dtype": (
        "dtype",
        {"choices": ("auto", "float32", "bfloat16", "float16"), "help": "default auto: bfloat16 on GPU, else float32"},
    ),  # fmt: skip
    "--revision": ("revision", {"help": "hub revision of the verifier"}),
    "--gguf-file": ("gguf_file", {"help": "GGUF file name inside a --verifier directory"}),
    "--trust-remote-code": (
        "trust_remote_code",
        {"action": "store_true", "default": None, "help": "allow the verifier's own Python code to run"},
    ),  # fmt: skip
}
CONFIG_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--batch-tokens": ("max_tokens_per_batch", {"help": "padded tokens per forward pass"}),
    "--max-length": ("max_length", {"help": "longest context + response in verifier tokens"}),
    "--metric": ("metric", {"choices": METRICS, "help": "per-token value: log-prob, or negated predictive entropy"}),
    "--reduction": ("reduction", {"choices": REDUCTIONS, "help": "how per-token values become one score"}),
    "--quantile": ("quantile", {"type": float, "help": "the quantile of --reduction quantile"}),
    "--score-span": (
        "score_span",
        {"type": str, "help": "score only 'boxed' (the last \\boxed{...}) or a regex's last match"},
    ),
    "--span-weight": ("span_weight", {"type": float, "help": "weight of the span score against the whole response"}),
    "--missing-span-value": (
        "missing_span_value",
        {"type": float, "help": "score when no span is found (default null)"},
    ),
    "--score-eos": (
        "score_eos",
        {
            "action": "store_true",
            "default": None,
            "help": "also score the verifier's end-of-turn token after each response",
        },
    ),  # fmt: skip
}

SCORE_EPILOG = """\
output:
  JSON Lines, one line per usable input row, in input order: the row's columns plus
  "cme" (mean natural-log prob of the response's verifier tokens; null for an empty
  response) and, with --per-token, "cme_tokens" and "cme_logprobs".
resuming:
  While running, OUT.partial (rows so far), OUT.ckpt.json (checkpoint) and OUT.lock sit
  next to OUT. Rerun the same command to continue; another input or other options are
  refused unless --overwrite. --batch-tokens, --device and --chunk-rows may change.
exit status:
  0 done, 2 usage or input error, 1 unexpected error, 130 interrupted
"""


class UsageError(Exception):
    """A problem the user can fix: reported as one line, exit code 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _checked(name: str, convert: type):
    """argparse type of a `CMEConfig` field: convert, then the config's own check."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if convert is int else 'a number'}, got {text!r}"
            ) from None
        allowed = CMEConfig.problem(name, value)
        if allowed:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {value}")
        return value

    return parse


def _field_default(cls, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name and f.default is not MISSING)


def _add_flags(group, table: dict[str, tuple[str, dict[str, Any]]], cls) -> None:
    for flag, (name, options) in table.items():
        options = {"dest": name, "default": None, **options}
        if cls is CMEConfig and "type" in options:
            options["type"] = _checked(name, options["type"])
        elif cls is CMEConfig and "choices" not in options and "action" not in options:
            options.update(type=_checked(name, int), metavar="N")
        default = _field_default(cls, name)
        if default not in (None, False):
            options["help"] = f"{options.get('help', '')} (default {default})".strip()
        group.add_argument(flag, **options)


def _add_verifier_args(parser: argparse.ArgumentParser, *, default: str | None = None, scoring: bool = True) -> None:
    group = parser.add_argument_group("verifier and scoring")
    group.add_argument(
        "--verifier",
        required=default is None,
        default=default,
        help="hub id, local model directory, .gguf file, or an alias: smollm2, gemma3-270m",
    )
    _add_flags(group, VERIFIER_FLAGS, VerifierSpec)
    _add_flags(group, CONFIG_FLAGS if scoring else {"--batch-tokens": CONFIG_FLAGS["--batch-tokens"]}, CMEConfig)


def _add_input_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="a .jsonl, .json, .csv or .parquet file")
    source.add_argument("--dataset", type=Path, help="a directory written by datasets' save_to_disk")
    group.add_argument("--split", help="split of a saved DatasetDict with several splits")
    group.add_argument("--prompt-column", help="default: prompt")
    group.add_argument("--response-column", help="default: response, or completion when there is no response column")
    group.add_argument(
        "--messages-column",
        help="take prompt and response from one list of {role, content} messages: the last assistant message is "
        "the response, the messages before it the prompt",
    )
    group.add_argument("--skip-bad", action="store_true", help="skip (and report) bad rows instead of stopping")
    group.add_argument("--limit", type=positive_int, help="use only the first N usable rows")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cme-reward`` and its subcommands."""
    from . import demo, score_job, serve_command

    parser = argparse.ArgumentParser(prog=PROG, description="Cross-Model Entropy scores from a frozen verifier LM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{score,inspect,demo,serve}")

    score = sub.add_parser(
        "score",
        help="score a file of (prompt, response) rows into JSON Lines, resumably",
        description="Write every input row plus 'cme' (null for an empty response) to --output. Rerunning the same "
        "command after an interruption continues where it stopped; the output appears only when complete.",
        epilog=SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_verifier_args(score)
    _add_input_args(score)
    output = score.add_argument_group("output")
    output.add_argument("--output", type=Path, required=True, help="the .jsonl file to write")
    output.add_argument("--per-token", action="store_true", help="also write cme_tokens and cme_logprobs")
    output.add_argument(
        "--chunk-rows", type=positive_int, default=256, help="rows per checkpointed chunk (default 256)"
    )
    output.add_argument(
        "--overwrite", action="store_true", help="replace an existing output / a mismatched checkpoint"
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=score_job.cmd_score)

    inspect = sub.add_parser("inspect", help="write an HTML page colouring each response token by its log-prob")
    _add_verifier_args(inspect)
    _add_input_args(inspect)
    inspect.set_defaults(limit=50)
    inspect.add_argument("--output", type=Path, required=True, help="the .html file to write")
    inspect.add_argument("--title", help="page title")
    inspect.set_defaults(func=score_job.cmd_inspect)

    demo_parser = sub.add_parser("demo", help="MT-Bench reference answers vs word-shuffled copies, a real verifier")
    _add_verifier_args(demo_parser, default="smollm2", scoring=False)
    demo_parser.add_argument("--limit", type=positive_int, help="score only the first N pairs")
    demo_parser.add_argument("--output-dir", type=Path, default=Path("cme_demo_out"), help="default: cme_demo_out")
    demo_parser.set_defaults(func=demo.cmd_demo)

    serve = sub.add_parser("serve", help="an HTTP reward server (/score, OpenRLHF /get_reward, /health)")
    _add_verifier_args(serve)
    serve_command.add_arguments(serve)
    serve.set_defaults(func=serve_command.cmd_serve)
    return parser


def spec_and_config(args: argparse.Namespace) -> tuple[VerifierSpec, CMEConfig]:
    """The verifier spec and scoring config the flags describe (unset flags keep the dataclass defaults)."""
    spec = {name: getattr(args, name) for name, _ in VERIFIER_FLAGS.values() if getattr(args, name, None) is not None}
    if spec.get("dtype") == "auto":
        spec["dtype"] = None
    config = {name: getattr(args, name) for name, _ in CONFIG_FLAGS.values() if getattr(args, name, None) is not None}
    return VerifierSpec(args.verifier, **spec), CMEConfig(**config)


def main(argv: list[str] | None = None) -> int:
    """Run ``cme-reward``; returns the exit code (0 ok, 2 usage/input error, 1 unexpected, 130 interrupted)."""
    from .readers import InputError
    from .resumable import CheckpointError

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
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception:
        logger.exception("unexpected error")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
