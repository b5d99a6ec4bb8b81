"""`cme-reward score` and `cme-reward inspect`: read pairs, load the verifier, score, write.

`score` writes JSON Lines: every input row (in input order) plus `cme`, its Cross-Model Entropy score (mean
verifier log-prob of the response tokens; higher is better). An empty response has no token to score: its `cme` is
`null`. `--per-token` adds `cme_tokens` (token strings) and `cme_logprobs`. The order of work keeps refusals
cheap and leaves nothing behind: the input is read and the output's state checked first (a complete output, another
run's checkpoint, an existing file), then the verifier is loaded, and only then are output files created. A killed run
resumes when the same command is run again (see `cme_reward.files.resumable`).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..files.jsonl import finite, input_fingerprint
from ..files.resumable import ResumableWriter
from .flags import spec_and_config
from .numbers import format_number

if TYPE_CHECKING:
    from ..files.pairs import PairSet
    from ..reward import CrossModelEntropyReward

logger = logging.getLogger(__name__)

__all__ = ["cmd_inspect", "cmd_score", "load_reward"]

# config fields that may change between a run and its resumption (they do not change the scores)
RESUMABLE_CHANGES = ("max_tokens_per_batch",)


def load_reward(args: argparse.Namespace) -> tuple[CrossModelEntropyReward, float]:
    """The reward the flags describe, and its load time in seconds. Load problems become one-line usage errors."""
    from transformers.utils import logging as hf_logging

    from ..reward import CrossModelEntropyReward

    spec, config = spec_and_config(args)
    bars = hf_logging.is_progress_bar_enabled()
    if getattr(args, "no_progress", False):
        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar
    start = time.perf_counter()
    try:
        reward = CrossModelEntropyReward(spec, config=config, show_progress_bar=False)
    except (OSError, ValueError, TypeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load verifier {args.verifier!r}: {first}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    logger.info("loaded %r in %.1f s", reward, time.perf_counter() - start)
    return reward, time.perf_counter() - start


def load_pairs(args: argparse.Namespace) -> PairSet:
    from ..files.pairs import load_pairs as load

    if args.dataset is not None and not args.dataset.is_dir():
        raise UsageError(f"--dataset {args.dataset}: not a directory (use --input for a file)")
    if args.messages_column and (args.prompt_column or args.response_column):
        raise UsageError("--messages-column replaces --prompt-column/--response-column; give one or the other")
    return load(
        args.input if args.input is not None else args.dataset,
        prompt_column=args.prompt_column or "prompt",
        response_column=args.response_column,
        messages_column=args.messages_column,
        split=args.split,
        skip_bad=args.skip_bad,
        limit=args.limit,
    )


def _writer(args: argparse.Namespace, pairs: PairSet) -> ResumableWriter:
    """The output writer; its options are what shapes the output and must match on resume."""
    spec, config = spec_and_config(args)
    try:
        described = spec.resolved().describe()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise UsageError(f"cannot load verifier {args.verifier!r}: {err}") from None
    source = described["source"]
    options = {
        "verifier": os.path.abspath(source) if os.path.exists(source) else source,
        "gguf_file": described["gguf_file"],
        "revision": described["revision"],
        "dtype": args.dtype or "auto",
        **{k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES},
        "per_token": args.per_token,
        "prompt_column": pairs.prompt_column,
        "response_column": pairs.response_column,
        "messages_column": pairs.messages_column,
        "split": args.split,
        "skip_bad": args.skip_bad,
        "limit": args.limit,
    }
    return ResumableWriter(
        args.output,
        fingerprint=input_fingerprint(pairs.path),
        options=options,
        rows_total=len(pairs),
        overwrite=args.overwrite,
        chunk_rows=args.chunk_rows,
        info={"config": asdict(config)},
    )


def cmd_score(args: argparse.Namespace) -> int:
    """`cme-reward score`: see the module docstring."""
    from tqdm.auto import tqdm

    output = args.output
    if output.suffix.lower() in (".json", ".csv", ".parquet"):
        raise UsageError(f"--output {output}: the output is JSON Lines; give it a .jsonl name")
    if output.is_dir():
        raise UsageError(f"--output {output}: is a directory")
    source_path = args.input if args.input is not None else args.dataset
    if source_path.exists() and output.exists() and output.resolve() == source_path.resolve():
        raise UsageError("--output must differ from the input")
    pairs = load_pairs(args)
    writer = _writer(args, pairs)
    if writer.preview() == "complete":
        with writer:  # opening removes what an earlier run left after publishing the output (its checkpoint)
            pass
        print(f"{output} was already complete: {len(pairs)} rows (nothing to do)")
        return 0
    reward, load_seconds = load_reward(args)
    rows = [r.data for r in pairs.records]
    new_keys = {"cme", "cme_tokens", "cme_logprobs"} if args.per_token else {"cme"}
    clash = sorted({key for row in rows for key in new_keys if key in row})
    if clash:
        logger.warning("input rows already have %s: replaced by the new values", clash)
    with writer, tqdm(total=len(rows), unit="row", desc="CME", disable=True if args.no_progress else None) as bar:
        resumed = writer.rows_done
        bar.update(resumed)
        scores = [row.get("cme") for row in writer.done_rows()] if resumed else []
        for begin in range(resumed, len(rows), args.chunk_rows):
            end = min(begin + args.chunk_rows, len(rows))
            try:
                new = _score_chunk(reward, pairs.prompts[begin:end], pairs.responses[begin:end], args.per_token)
            except FloatingPointError as err:
                raise UsageError(f"{err} (rerun with --dtype float32 --overwrite)") from None
            writer.write([{**row, **extra} for row, extra in zip(rows[begin:end], new, strict=True)])
            scores += [finite(extra["cme"]) for extra in new]
            bar.update(end - begin)
        writer.finish()
    resumed_note = f", {resumed} from an earlier run" if resumed else ""
    print(f"wrote {output}: {len(rows)} rows ({len(rows) - resumed} scored now{resumed_note})")
    _print_summary(scores, pairs, reward, load_seconds)
    return 0


def _score_chunk(reward, prompts: list[Any], responses: list[Any], per_token: bool) -> list[dict[str, Any]]:
    if per_token:
        return [{"cme": ts.score, "cme_tokens": ts.tokens, "cme_logprobs": ts.logprobs}
                for ts in reward.score_tokens(prompts, responses)]  # fmt: skip
    return [{"cme": s} for s in reward.score(prompts, responses)]


def _print_summary(scores: list[float | None], pairs: PairSet, reward, load_seconds: float) -> None:
    valid = [s for s in scores if s is not None]
    if pairs.skipped:
        shown = ", ".join(str(loc) for loc, _ in pairs.skipped[:10]) + (" ..." if len(pairs.skipped) > 10 else "")
        print(f"skipped {len(pairs.skipped)} bad rows ({pairs.unit}s {shown}); see the warnings above")
    if valid:
        std = statistics.pstdev(valid) if len(valid) > 1 else 0.0
        mean = format_number(statistics.fmean(valid), 4)
        print(f"CME mean {mean}, std {format_number(std, 4)} over {len(valid)} rows")
    nulls = len(scores) - len(valid)
    if nulls:
        print(f"{nulls} {'row has' if nulls == 1 else 'rows have'} no score (empty response): cme is null")
    seconds, tokens = reward.stats.seconds, reward.stats.tokens_scored
    rate = f" ({tokens / seconds:,.0f} tokens/s)" if seconds > 0 else ""
    print(f"verifier: {seconds:.2f} s for {tokens:,} response tokens{rate}; model load {load_seconds:.1f} s")


def cmd_inspect(args: argparse.Namespace) -> int:
    """`cme-reward inspect`: score up to `--limit` rows token by token and write an HTML heatmap."""
    from .heatmap import write_heatmap

    pairs = load_pairs(args)
    reward, _ = load_reward(args)
    try:
        scored = reward.score_tokens(pairs.prompts, pairs.responses)
    except FloatingPointError as err:
        raise UsageError(f"{err} (rerun with --dtype float32)") from None
    title = args.title or f"CME token heatmap: {args.verifier} on {pairs.path.name}"
    texts = [p if isinstance(p, str) else "\n".join(f"{m.get('role')}: {m.get('content')}" for m in p)
             for p in pairs.prompts]  # fmt: skip
    path = write_heatmap(args.output, texts, scored, title=title)
    print(f"wrote {path}: {len(scored)} responses, {sum(len(s) for s in scored):,} tokens")
    return 0
