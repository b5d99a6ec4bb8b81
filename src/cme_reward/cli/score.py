"""`cme-reward score` and `cme-reward inspect`: read pairs, load the verifier, score, write.

`score` writes JSON Lines: every input row (in input order) plus `cme`, its Cross-Model Entropy score (mean
verifier log-prob of the response tokens; higher is better). An empty response has no token to score: its `cme` is
`null`. `--per-token` adds `cme_tokens` (token strings) and `cme_logprobs`. The order of work keeps refusals
cheap and leaves nothing behind: the input is read and the output's state checked first (a complete output, another
run's checkpoint, an existing file), then the verifier is loaded, and only then are output files created. A killed run
resumes when the same command is run again (see `cme_reward.files.resumable`).

Checkpoints: the verifier scores the rows in calls on a fixed grid of row numbers (they end at every multiple of
`STEP_ROWS` and of `--chunk-rows`), so which rows share a call, and so every score down to the last float digit, never
depends on timing or on where an earlier run stopped. After a call, the rows scored since the last checkpoint are
saved when a `--chunk-rows` chunk is complete or `--checkpoint-seconds` have passed, whichever comes first.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..errors import RemoteError, UsageError
from ..files.jsonl import finite, input_fingerprint
from ..files.resumable import ResumableWriter
from .flags import spec_and_config
from .numbers import format_number

if TYPE_CHECKING:
    from ..files.pairs import PairSet
    from ..reward import CrossModelEntropyReward
    from ..verifier.spec import VerifierSpec

logger = logging.getLogger(__name__)

__all__ = ["STEP_ROWS", "Interrupted", "cmd_inspect", "cmd_score", "load_reward"]

# config fields that may change between a run and its resumption (they do not change the scores)
RESUMABLE_CHANGES = ("max_tokens_per_batch",)
STEP_ROWS = 32  # most rows per verifier call: the finest a time-based checkpoint can cut
_clock = time.monotonic  # the checkpoint timer


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `cme-reward score`; the message says how many rows are saved for the rerun."""


@contextlib.contextmanager
def _loading_bars(show: bool) -> Iterator[None]:
    """transformers' progress bars while the verifier loads, on or off. Its own bars ("Loading weights") follow
    `disable_progress_bar`; the GGUF one ("Converting and de-quantizing GGUF tensors...") calls tqdm directly, so
    while loading it goes through transformers' switch too."""
    from transformers.utils import logging as hf_logging

    if show:
        yield
        return
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - a transformers without GGUF support
        gguf_utils = None
    was_enabled = hf_logging.is_progress_bar_enabled()
    direct = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if direct is not None:
        gguf_utils.tqdm = hf_logging.tqdm
    try:
        yield
    finally:
        if direct is not None:
            gguf_utils.tqdm = direct
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_reward(args: argparse.Namespace) -> tuple[CrossModelEntropyReward, float]:
    """The reward the flags describe, and its load time in seconds. Load problems become one-line usage errors;
    `--no-progress` hides the loading bars too."""
    from ..reward import CrossModelEntropyReward

    spec, config = spec_and_config(args)
    start = time.perf_counter()
    try:
        with _loading_bars(not getattr(args, "no_progress", False)):
            reward = CrossModelEntropyReward(spec, config=config, show_progress_bar=False)
    except (OSError, ValueError, TypeError, ImportError, RemoteError) as err:  # RemoteError: e.g. a wrong vLLM key
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load verifier {args.verifier!r}: {first}") from None
    logger.info("loaded %r in %.1f s", reward, time.perf_counter() - start)
    return reward, time.perf_counter() - start


def load_pairs(args: argparse.Namespace) -> PairSet:
    from ..files.pairs import load_pairs as load

    if args.dataset is not None and not args.dataset.is_dir():
        raise UsageError(f"--dataset {args.dataset}: not a directory (use --input for a file)")
    if args.messages_column and (args.prompt_column or args.response_column):
        raise UsageError("--messages-column replaces --prompt-column/--response-column; give one or the other")
    if args.messages_column and args.as_chat:
        raise UsageError("--as-chat turns plain prompts into conversations; --messages-column rows already are ones")
    return load(
        args.input if args.input is not None else args.dataset,
        prompt_column=args.prompt_column or "prompt",
        response_column=args.response_column,
        messages_column=args.messages_column,
        as_chat=args.as_chat,
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
        **_backend_options(spec),
        **{k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES},
        "per_token": args.per_token,
        "prompt_column": pairs.prompt_column,
        "response_column": pairs.response_column,
        "messages_column": pairs.messages_column,
        **({"as_chat": True} if pairs.as_chat else {}),  # absent when off: checkpoints from before the flag resume
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


def _backend_options(spec: VerifierSpec) -> dict[str, Any]:
    """Where the scores come from, when not in process: the vLLM server (its root, however spelled) and model, never
    its key; a resumed run must name the same."""
    if spec.backend != "vllm":
        return {}  # checkpoints of in-process runs keep the options they always had
    from ..backends.vllm import normalize_base_url

    return {"backend": "vllm", "base_url": normalize_base_url(spec.base_url), "served_model": spec.served_model}


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
    try:
        with writer, tqdm(total=len(rows), unit="row", desc="CME", disable=True if args.no_progress else None) as bar:
            resumed = writer.rows_done
            bar.update(resumed)
            scores = [row.get("cme") for row in writer.done_rows()] if resumed else []
            scores += _score_rows(args, reward, pairs, rows, writer, bar)
            writer.finish()
    except KeyboardInterrupt:
        where = writer.output if writer.state == "complete" else writer.partial_path
        raise Interrupted(
            f"interrupted: {writer.rows_saved:,} of {len(rows):,} rows are saved in {where}; rerun the same command "
            "to resume"
        ) from None
    resumed_note = f", {resumed} from an earlier run" if resumed else ""
    print(f"wrote {output}: {len(rows)} rows ({len(rows) - resumed} scored now{resumed_note})")
    _print_summary(scores, pairs, reward, load_seconds)
    return 0


def _calls(begin: int, total: int, chunk_rows: int) -> Iterator[tuple[int, int, bool]]:
    """`(begin, end, chunk_complete)` of each verifier call from row `begin`: calls end at the multiples of
    `STEP_ROWS` and of `chunk_rows` (a grid of row numbers, the same in every run) and at `total`."""
    while begin < total:
        end = min((begin // STEP_ROWS + 1) * STEP_ROWS, (begin // chunk_rows + 1) * chunk_rows, total)
        yield begin, end, end % chunk_rows == 0 or end == total
        begin = end


def _score_rows(args, reward, pairs: PairSet, rows: list[dict], writer: ResumableWriter, bar) -> list[float | None]:
    """Score the rows the writer does not hold yet and save them: a checkpoint at the end of every `--chunk-rows`
    chunk, or earlier once `--checkpoint-seconds` have passed since the last one, and on Ctrl-C. Returns their
    scores."""
    scores: list[float | None] = []
    pending: list[dict[str, Any]] = []
    saved_at = _clock()
    for begin, end, chunk_complete in _calls(writer.rows_done, len(rows), args.chunk_rows):
        try:
            new = _score_chunk(reward, pairs.prompts[begin:end], pairs.responses[begin:end], args.per_token)
        except FloatingPointError as err:
            raise UsageError(f"{err} (rerun with --dtype float32 --overwrite)") from None
        except KeyboardInterrupt:
            if pending:  # Ctrl-C loses only the call in progress
                writer.write(pending)
            raise
        pending += [{**row, **extra} for row, extra in zip(rows[begin:end], new, strict=True)]
        scores += [finite(extra["cme"]) for extra in new]
        bar.update(end - begin)
        if chunk_complete or _clock() - saved_at >= args.checkpoint_seconds:
            writer.write(pending)
            pending, saved_at = [], _clock()
    return scores


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
