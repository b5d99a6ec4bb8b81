"""`cme-reward compare-verifiers`: score labelled responses (or preference pairs) with several verifiers and write
which separates good from bad best: a JSON result, a Markdown table and a ROC plot, side by side.

The order of work keeps refusals cheap: the report paths, the input and every verifier's source are checked before
the first verifier loads. Verifiers are scored one at a time (each freed before the next), their scores cached in
`<output stem>.scores/` (`cme_reward.selection.runs`); rerunning the same command after an interruption reuses every
finished verifier and resumes the unfinished one at its last chunk.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import UsageError
from .flags import PROG, add_input_args, add_verifier_args, positive_int, spec_and_config

__all__ = ["EPILOG", "add_arguments", "cmd_compare"]

logger = logging.getLogger(__name__)

EPILOG = f"""\
input:
  labelled responses: a label column (--label-column, default label) holding 1 / true
  (good) or 0 / false (bad), with the prompt and response columns of `{PROG} score`; or
  preference pairs: chosen and rejected columns, each a response string or a list of
  messages ending with the assistant's turn, plus the prompt column (optional when the
  chosen messages hold the conversation). The format is detected from the first row;
  --pairs or --labelled force it.
output:
  OUT.json (every statistic, and each verifier's score of every response), OUT.md (a
  table) and OUT.svg (ROC curves) beside it. Responses without a score (empty, or no
  span under --score-span) are reported and left out of that verifier's statistics.
resuming:
  scores are cached per verifier in OUT.scores/ (keyed by the responses, the verifier
  and the scoring options); rerun the same command to continue after an interruption.
  Delete OUT.scores/ to score again.
exit status:
  0 done, 2 usage or input error, 1 unexpected error, 130 interrupted
"""


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `compare-verifiers`: the scoring flags of `score` with `--verifiers`, its input flags, and the
    labels, report and bootstrap options."""
    add_verifier_args(parser, several=True)
    add_input_args(parser)
    labels = parser.add_argument_group("labels or preference pairs")
    labels.add_argument("--label-column", default="label", help="labelled input: 1/true good, 0/false bad (default "
                        "label)")  # fmt: skip
    kind = labels.add_mutually_exclusive_group()
    kind.add_argument(
        "--pairs", dest="kind", action="store_const", const="pairs", help="the input is preference pairs"
    )
    kind.add_argument("--labelled", dest="kind", action="store_const", const="labelled", help="the input is labelled")
    labels.add_argument("--chosen-column", default="chosen", help="preference pairs (default chosen)")
    labels.add_argument("--rejected-column", default="rejected", help="preference pairs (default rejected)")
    output = parser.add_argument_group("report")
    output.add_argument("--output", type=Path, required=True, help="the .json report (.md and .svg written beside)")
    output.add_argument("--overwrite", action="store_true", help="replace existing report files")
    output.add_argument("--cache-dir", type=Path, help="where scores are cached (default: OUT.scores beside the "
                        "report)")  # fmt: skip
    output.add_argument("--chunk-rows", type=positive_int, default=64, help="responses per cached chunk (default 64)")
    output.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap resamples (default 2000)")
    output.add_argument("--confidence", type=_confidence, default=0.95, help="interval coverage (default 0.95)")
    output.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    output.add_argument("--no-progress", action="store_true", help="no progress bars")


def _for(args: argparse.Namespace, verifier: str) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "verifier": verifier})


def _specs(args: argparse.Namespace):
    """`{name: VerifierSpec}` and the one `CMEConfig`; every source is resolved now, so a missing package or file
    stops the run before anything is scored."""
    from ..verifier.spec import check_hub_source

    if len(set(args.verifiers)) != len(args.verifiers):
        raise UsageError(f"--verifiers names a verifier twice: {','.join(args.verifiers)}")
    specs, config = {}, None
    for name in args.verifiers:
        spec, config = spec_and_config(_for(args, name))
        try:
            resolved = spec.resolved()
            if resolved.backend == "transformers":
                check_hub_source(resolved)
        except (ModuleNotFoundError, FileNotFoundError, OSError) as err:
            raise UsageError(f"cannot load verifier {name!r}: {str(err).strip().splitlines()[0]}") from None
        specs[name] = spec
    return specs, config


def _data(args: argparse.Namespace):
    from ..selection.inputs import load_comparison_data

    if args.dataset is not None and not args.dataset.is_dir():
        raise UsageError(f"--dataset {args.dataset}: not a directory (use --input for a file)")
    if args.messages_column and (args.prompt_column or args.response_column):
        raise UsageError("--messages-column replaces --prompt-column/--response-column; give one or the other")
    return load_comparison_data(
        args.input if args.input is not None else args.dataset,
        kind=args.kind,
        label_column=args.label_column,
        prompt_column=args.prompt_column or "prompt",
        response_column=args.response_column,
        messages_column=args.messages_column,
        as_chat=getattr(args, "as_chat", False),
        chosen_column=args.chosen_column,
        rejected_column=args.rejected_column,
        split=args.split,
        skip_bad=args.skip_bad,
        limit=args.limit,
    )


def _check_output(args: argparse.Namespace) -> dict[str, Path]:
    from ..selection.report import report_paths

    if args.output.suffix.lower() != ".json":
        raise UsageError(f"--output {args.output}: the report is JSON; give it a .json name (.md and .svg go beside)")
    paths = report_paths(args.output)
    source = args.input if args.input is not None else args.dataset
    if any(p.exists() and source.exists() and p.resolve() == source.resolve() for p in paths.values()):
        raise UsageError("--output must differ from the input (and from its .md / .svg siblings)")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.overwrite:
        raise UsageError(f"{', '.join(existing)} already exist; pass --overwrite to replace them (cached scores in "
                         f"{_cache_dir(args)} are reused)")  # fmt: skip
    return paths


def _cache_dir(args: argparse.Namespace) -> Path:
    return args.cache_dir or args.output.with_name(args.output.stem + ".scores")


def cmd_compare(args: argparse.Namespace) -> int:
    """`cme-reward compare-verifiers`: see the module docstring."""
    from ..selection.compare import compare_verifiers
    from ..selection.report import write_report
    from .score import load_reward

    _check_output(args)
    data = _data(args)
    specs, config = _specs(args)
    cache = _cache_dir(args)
    try:
        result = compare_verifiers(specs, data, config=config, cache_dir=cache, n_resamples=args.resamples,
                                   confidence=args.confidence, seed=args.seed, chunk_rows=args.chunk_rows,
                                   progress=not args.no_progress,
                                   load=lambda spec, _: load_reward(_for(args, str(spec.source)))[0])  # fmt: skip
    except FloatingPointError as err:
        raise UsageError(f"{err} (rerun with --dtype float32)") from None
    written = write_report(result, args.output)
    _print_summary(result)
    print(f"wrote {', '.join(str(p) for p in written.values())}; scores cached in {cache}")
    return 0


def _print_summary(result) -> None:
    data = result.data
    good = sum(data.labels)
    what = (f"{data.rows} preference pairs" if result.kind == "pairs"
            else f"{data.rows} labelled responses ({good} good, {data.rows - good} bad)")  # fmt: skip
    print(f"compared {len(result.verifiers)} verifiers on {what} from {data.path}")
    width = max(len(v.name) for v in result.verifiers)
    for v in result.verifiers:
        run, value = v.run, v.value
        shown = "n/a" if value is None else f"{value.estimate:.3f} [{value.low:.3f}, {value.high:.3f}]"
        gap = "n/a" if v.classes is None else f"{v.classes.gap:+.3f}"
        rate = "n/a" if run.tokens_per_second is None else f"{run.tokens_per_second:,.0f} tokens/s"
        memory = "n/a" if run.peak_memory_mib is None else f"{run.peak_memory_mib:,.0f} MiB"
        cached = " (cached scores)" if run.cached else ""
        print(f"  {v.name:<{width}}  {result.metric} {shown}  gap {gap}  scored {v.scored}/{v.scored + v.unscorable}"
              f"  {rate}  peak {memory}{cached}")  # fmt: skip
    for d in result.differences:
        value = d.value
        shown = (
            "n/a"
            if value is None
            else f"{value.estimate:+.3f} [{value.low:+.3f}, {value.high:+.3f}] p={value.p_value:.3g}"
        )
        print(f"  {d.a} - {d.b}: {shown} on {d.rows} {'pairs' if result.kind == 'pairs' else 'responses'}")
    for note in result.notes:
        print(f"note: {note}")
