"""The ``cme-reward`` command line: ``score`` files resumably, ``inspect`` token heatmaps, run the ``demo``.

``cme-reward score`` writes JSON Lines: every input row (in input order) plus ``cme``, its Cross-Model Entropy score
(mean verifier log-prob of the response tokens; higher is better). An empty response has no token to score: its
``cme`` is ``null``. ``--per-token`` adds ``cme_tokens`` (token strings) and ``cme_logprobs``. A killed run resumes
when the same command is run again (see :mod:`cme_reward.resumable` for the files it keeps next to the output).

Exit codes: 0 success, 2 usage or input error (one line on stderr), 1 unexpected error (with a traceback), 130
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROG = "cme-reward"
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


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


# ---- arguments ------------------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _max_length(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {value}")
    return value


def _add_verifier_args(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    group = parser.add_argument_group("verifier")
    group.add_argument(
        "--verifier",
        required=default is None,
        default=default,
        help="hub id, local model directory, .gguf file, or an alias such as 'smollm2' (see cme_reward.assets)",
    )
    group.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: this process's GPU if any, else cpu)")
    group.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto", help="default auto: bfloat16 on GPU, else float32"
    )
    group.add_argument("--batch-tokens", type=_positive, help="padded tokens per forward pass (default 8192)")


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
    group.add_argument("--limit", type=_positive, help="use only the first N usable rows")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cme-reward`` and its subcommands."""
    parser = argparse.ArgumentParser(prog=PROG, description="Cross-Model Entropy scores from a frozen verifier LM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{score,inspect,demo}")

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
    score.add_argument("--output", type=Path, required=True, help="the .jsonl file to write")
    score.add_argument("--max-length", type=_max_length, help="longest context + response in verifier tokens")
    score.add_argument("--per-token", action="store_true", help="also write cme_tokens and cme_logprobs")
    score.add_argument("--chunk-rows", type=_positive, default=256, help="rows per checkpointed chunk (default 256)")
    score.add_argument("--overwrite", action="store_true", help="replace an existing output / a mismatched checkpoint")
    score.add_argument("--gguf-file", help="GGUF file name inside a --verifier directory")
    score.add_argument("--revision", help="hub revision of the verifier")
    score.add_argument("--trust-remote-code", action="store_true", help="allow the verifier's own Python code to run")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=cmd_score)

    inspect = sub.add_parser("inspect", help="write an HTML page colouring each response token by its log-prob")
    _add_verifier_args(inspect)
    _add_input_args(inspect)
    inspect.set_defaults(limit=50)
    inspect.add_argument("--output", type=Path, required=True, help="the .html file to write")
    inspect.add_argument("--max-length", type=_max_length, help="longest context + response in verifier tokens")
    inspect.add_argument("--gguf-file", help="GGUF file name inside a --verifier directory")
    inspect.add_argument("--revision", help="hub revision of the verifier")
    inspect.add_argument(
        "--trust-remote-code", action="store_true", help="allow the verifier's own Python code to run"
    )
    inspect.add_argument("--title", help="page title")
    inspect.set_defaults(func=cmd_inspect)

    demo = sub.add_parser("demo", help="MT-Bench reference answers vs word-shuffled copies with a real verifier")
    _add_verifier_args(demo, default="smollm2")
    demo.add_argument("--limit", type=_positive, help="score only the first N pairs")
    demo.add_argument("--output-dir", type=Path, default=Path("cme_demo_out"), help="default: cme_demo_out")
    demo.set_defaults(func=cmd_demo)
    return parser


# ---- shared pieces --------------------------------------------------------------------------------------------------


def _resolve_verifier(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``(source, kwargs)`` for ``CrossModelEntropyReward``: aliases via ``cme_reward.assets``, explicit flags win."""
    try:
        from .assets import resolve_verifier
    except ImportError:  # pragma: no cover - the assets module is optional
        source, extra = args.verifier, {}
    else:
        try:
            source, extra = resolve_verifier(args.verifier)
        except (ModuleNotFoundError, FileNotFoundError) as err:
            raise UsageError(f"cannot resolve verifier {args.verifier!r}: {err}") from None
    if os.path.exists(source):
        source = os.path.abspath(source)
    kwargs = dict(extra)
    for key in ("gguf_file", "revision"):
        if getattr(args, key, None):
            kwargs[key] = getattr(args, key)
    if getattr(args, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    return source, kwargs


def _load_reward(args: argparse.Namespace, source: str, kwargs: dict[str, Any]):
    from .reward import CrossModelEntropyReward

    kwargs = dict(kwargs)
    if args.batch_tokens is not None:
        kwargs["max_tokens_per_batch"] = args.batch_tokens
    if getattr(args, "max_length", None) is not None:
        kwargs["max_length"] = args.max_length
    dtype = None if args.dtype == "auto" else args.dtype
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if getattr(args, "no_progress", False):
        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar
    start = time.perf_counter()
    try:
        reward = CrossModelEntropyReward(source, device=args.device, dtype=dtype, show_progress_bar=False, **kwargs)
    except (OSError, ValueError, TypeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load verifier {args.verifier!r}: {first}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    logger.info("loaded %r in %.1f s", reward, time.perf_counter() - start)
    return reward, time.perf_counter() - start


def _load_pairs(args: argparse.Namespace):
    from .io import load_pairs

    path = args.input if args.input is not None else args.dataset
    if args.dataset is not None and not args.dataset.is_dir():
        raise UsageError(f"--dataset {args.dataset}: not a directory (use --input for a file)")
    if args.messages_column and (args.prompt_column or args.response_column):
        raise UsageError("--messages-column replaces --prompt-column/--response-column; give one or the other")
    return load_pairs(
        path,
        prompt_column=args.prompt_column or "prompt",
        response_column=args.response_column,
        messages_column=args.messages_column,
        split=args.split,
        skip_bad=args.skip_bad,
        limit=args.limit,
    )


def _prompt_text(prompt: Any) -> str:
    """A prompt as display text: chat messages become ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


# ---- commands -------------------------------------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    """``cme-reward score``: see the module docstring."""
    from .resumable import input_fingerprint, write_scored

    output: Path = args.output
    if output.suffix.lower() in (".json", ".csv", ".parquet"):
        raise UsageError(f"--output {output}: the output is JSON Lines; give it a .jsonl name")
    if output.is_dir():
        raise UsageError(f"--output {output}: is a directory")
    source_path = args.input if args.input is not None else args.dataset
    if source_path.exists() and output.exists() and output.resolve() == source_path.resolve():
        raise UsageError("--output must differ from the input")
    pairs = _load_pairs(args)
    source, kwargs = _resolve_verifier(args)
    options = {
        "verifier": source,
        "gguf_file": kwargs.get("gguf_file"),
        "revision": kwargs.get("revision"),
        "dtype": args.dtype,
        "max_length": args.max_length,
        "per_token": args.per_token,
        "prompt_column": pairs.prompt_column,
        "response_column": pairs.response_column,
        "messages_column": pairs.messages_column,
        "split": args.split,
        "skip_bad": args.skip_bad,
        "limit": args.limit,
    }
    state: dict[str, Any] = {"reward": None, "bar": None, "load_seconds": 0.0}

    def on_open(done: int, total: int) -> None:
        if done < total:
            state["reward"], state["load_seconds"] = _load_reward(args, source, kwargs)
            from tqdm.auto import tqdm

            state["bar"] = tqdm(
                total=total, initial=done, unit="row", desc="CME", disable=True if args.no_progress else None
            )

    def on_progress(done: int, total: int) -> None:
        if state["bar"] is not None:
            state["bar"].update(done - state["bar"].n)

    def scorer(prompts: list[Any], responses: list[Any]) -> list[dict[str, Any]]:
        reward = state["reward"]
        if args.per_token:
            return [
                {"cme": ts.score, "cme_tokens": ts.tokens, "cme_logprobs": ts.logprobs}
                for ts in reward.score_tokens(prompts, responses)
            ]
        return [{"cme": s} for s in reward.score(prompts, responses)]

    try:
        result = write_scored(
            [r.data for r in pairs.records],
            pairs.prompts,
            pairs.responses,
            output,
            scorer=scorer,
            fingerprint=input_fingerprint(pairs.path),
            options=options,
            chunk_rows=args.chunk_rows,
            overwrite=args.overwrite,
            on_open=on_open,
            on_progress=on_progress,
        )
    except FloatingPointError as err:
        raise UsageError(f"{err} (rerun with --dtype float32 --overwrite)") from None
    finally:
        if state["bar"] is not None:
            state["bar"].close()
    _print_summary(result, pairs, state["reward"], state["load_seconds"])
    return 0


def _print_summary(result: Any, pairs: Any, reward: Any, load_seconds: float) -> None:
    scores = [s for s in result.scores if isinstance(s, (int, float)) and math.isfinite(s)]
    nulls = result.rows - len(scores)
    if result.already_complete:
        print(f"{result.output} was already complete: {result.rows} rows (nothing to do)")
    else:
        resumed = f", {result.resumed_rows} from an earlier run" if result.resumed_rows else ""
        print(f"wrote {result.output}: {result.rows} rows ({result.scored_rows} scored now{resumed})")
    if pairs.skipped:
        shown = ", ".join(str(loc) for loc, _ in pairs.skipped[:10]) + (" ..." if len(pairs.skipped) > 10 else "")
        print(f"skipped {len(pairs.skipped)} bad rows ({pairs.unit}s {shown}); see the warnings above")
    if scores:
        std = statistics.pstdev(scores) if len(scores) > 1 else 0.0
        print(f"CME mean {statistics.fmean(scores):.4f}, std {std:.4f} over {len(scores)} rows")
    if nulls:
        print(f"{nulls} {'row has' if nulls == 1 else 'rows have'} no score (empty response): cme is null")
    if reward is not None:
        seconds = reward.stats.get("seconds", 0.0)
        tokens = reward.stats.get("tokens_scored", 0)
        rate = f" ({tokens / seconds:,.0f} tokens/s)" if seconds > 0 else ""
        print(f"verifier: {seconds:.2f} s for {tokens:,} response tokens{rate}; model load {load_seconds:.1f} s")


def cmd_inspect(args: argparse.Namespace) -> int:
    """``cme-reward inspect``: score up to ``--limit`` rows token by token and write an HTML heatmap."""
    from .heatmap import write_heatmap

    pairs = _load_pairs(args)
    source, kwargs = _resolve_verifier(args)
    reward, _ = _load_reward(args, source, kwargs)
    try:
        scored = reward.score_tokens(pairs.prompts, pairs.responses)
    except FloatingPointError as err:
        raise UsageError(f"{err} (rerun with --dtype float32)") from None
    title = args.title or f"CME token heatmap: {args.verifier} on {pairs.path.name}"
    path = write_heatmap(args.output, [_prompt_text(p) for p in pairs.prompts], scored, title=title)
    print(f"wrote {path}: {len(scored)} responses, {sum(len(s) for s in scored):,} tokens")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``cme-reward demo``: see :func:`cme_reward.demo.run_demo`."""
    from .demo import run_demo

    try:
        result = run_demo(
            verifier=args.verifier,
            limit=args.limit,
            output_dir=args.output_dir,
            device=args.device,
            dtype=None if args.dtype == "auto" else args.dtype,
            batch_tokens=args.batch_tokens,
        )
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    report = result.get("report") if isinstance(result, dict) else result
    if report is not None:
        print(report)
    return 0


# ---- entry point ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run ``cme-reward``; returns the exit code (0 ok, 2 usage/input error, 1 unexpected, 130 interrupted)."""
    from .io import InputError
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
