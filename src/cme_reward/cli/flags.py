"""The verifier and scoring flags every `cme-reward` command shares, declared once, each bound to a field of
[`VerifierSpec`] or [`CMEConfig`]: defaults and validation come from those dataclasses."""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..config import METRICS, PAPER_METRICS, REDUCTIONS, CMEConfig
from ..errors import UsageError
from ..verifier.spec import BACKENDS, VerifierSpec

__all__ = ["CONFIG_FLAGS", "PAPER_FLAGS", "PROG", "VERIFIER_FLAGS", "add_input_args", "add_verifier_args",
           "non_negative_float", "positive_int", "spec_and_config"]  # fmt: skip

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
    "--backend": (
        "backend",
        {"choices": BACKENDS, "help": "where the verifier runs: in this process, or a running `vllm serve`"},
    ),  # fmt: skip
    "--base-url": ("base_url", {"help": "the vLLM server, http://host:port (with --backend vllm)"}),
    "--served-model": ("served_model", {"help": "served model id on the vLLM server (default: the --verifier's)"}),
}
# the vLLM server's bearer token: not in VERIFIER_FLAGS because `serve` has an --api-key of its own
VLLM_API_KEY_HELP = "bearer token of the vLLM server (default: $VLLM_API_KEY)"
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
    "--repetition-guard": (
        "repetition_guard",
        {
            "action": "store_true",
            "default": None,
            "help": "tokens that repeat a 6-gram of the response, copy the prompt or write special tokens earn no "
            "credit (closes the reward hacks of docs/reward-hacking.md)",
        },
    ),  # fmt: skip
}
# the paper authors' reward (`CMEConfig.from_paper`), with their argument names: flag -> (argument, argparse options)
PAPER_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--paper-metric": (
        "reward_metric",
        {"choices": tuple(PAPER_METRICS), "help": "their reward_metric (default entropy: the mean cross-entropy)"},
    ),
    "--answer-only": ("answer_only", {"action": "store_true", "default": None, "help": "score the last \\boxed{}"}),
    "--answer-weight": (
        "answer_weight",
        {"type": float, "metavar": "W", "help": "blend of the box and the whole response, in [0, 1]"},
    ),
    "--no-box-penalty": (
        "no_box_penalty",
        {"type": float, "metavar": "P", "help": "added to the loss of a box-less answer (default 5; open-ended: 0)"},
    ),
}
# scoring flags that --paper sets itself (from --paper-metric and --answer-only)
PAPER_SETS = ("--metric", "--reduction", "--quantile", "--score-span", "--span-weight", "--missing-span-value")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated verifiers (A,B,...), got {text!r}")
    return names


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


def add_verifier_args(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = None,
    scoring: bool = True,
    api_key_flag: str = "--api-key",
    several: bool = False,
) -> None:
    """The verifier and scoring flags (`scoring=False`: only `--batch-tokens` of the scoring ones); the vLLM
    server's bearer token is `api_key_flag`. `several=True` takes `--verifiers A,B,...` (a list in `args.verifiers`)
    instead of `--verifier`."""
    group = parser.add_argument_group("verifier and scoring")
    what = "hub id, local model directory, .gguf file, or an alias: smollm2, gemma3-270m"
    if several:
        group.add_argument("--verifiers", required=True, type=_names, metavar="A,B,...", help=f"each a {what}")
    else:
        group.add_argument("--verifier", required=default is None, default=default, help=what)
    _add_flags(group, VERIFIER_FLAGS, VerifierSpec)
    group.add_argument(api_key_flag, dest="vllm_api_key", default=None, help=VLLM_API_KEY_HELP)
    parser.set_defaults(vllm_api_key_flag=api_key_flag)  # named in errors
    _add_flags(group, CONFIG_FLAGS if scoring else {"--batch-tokens": CONFIG_FLAGS["--batch-tokens"]}, CMEConfig)
    if scoring:
        paper = parser.add_argument_group("the paper authors' reward (CMEConfig.from_paper)")
        paper.add_argument("--paper", action="store_true", help="score as the authors' CMERewardModel.score: their "
                           "metric, box rules, -50 for empty answers, max length 2048")  # fmt: skip
        for flag, (name, options) in PAPER_FLAGS.items():
            paper.add_argument(flag, dest=f"paper_{name}", **{"default": None, **options})


def add_input_args(parser: argparse.ArgumentParser) -> None:
    """The input flags of `score`, `inspect` and `compare-verifiers`."""
    group = parser.add_argument_group("input")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="a .jsonl, .json, .csv or .parquet file")
    source.add_argument("--dataset", type=Path, help="a directory written by datasets' save_to_disk")
    group.add_argument("--split", help="split of a saved DatasetDict with several splits")
    group.add_argument("--prompt-column", help="default: prompt")
    group.add_argument(
        "--response-column",
        help="default: each row's response, or its completion when it has no response; given: every row must have it",
    )
    group.add_argument(
        "--messages-column",
        help="take prompt and response from one list of {role, content} messages: the last assistant message is "
        "the response, the messages before it the prompt",
    )
    group.add_argument(
        "--as-chat",
        action="store_true",
        help="score a plain-text prompt as a conversation: one user message (the verifier's chat template applies) "
        "answered by the response; without it, a plain prompt is scored as raw text",
    )
    group.add_argument("--skip-bad", action="store_true", help="skip (and report) bad rows instead of stopping")
    group.add_argument("--limit", type=positive_int, help="use only the first N usable rows")


def _check_backend(args: argparse.Namespace, spec: dict[str, Any], metric: str) -> None:
    """One clear line for a flag combination the chosen backend cannot honour."""
    if spec.get("backend") != "vllm":
        flags = {"base_url": "--base-url", "served_model": "--served-model",
                 "vllm_api_key": getattr(args, "vllm_api_key_flag", "--api-key")}  # fmt: skip
        given = [flag for name, flag in flags.items() if getattr(args, name, None) is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --backend vllm "
                             "(a running `vllm serve`)")  # fmt: skip
        return
    if spec.get("base_url") is None:
        raise UsageError("--backend vllm needs --base-url http://host:port (the running `vllm serve` to score with)")
    from ..backends.vllm import normalize_base_url

    try:
        normalize_base_url(spec["base_url"])
    except ValueError as err:
        raise UsageError(str(err).replace("`base_url`", "--base-url")) from None
    if metric == "entropy":
        raise UsageError("--metric entropy needs the verifier's whole distribution at each position, which a vLLM "
                         "server does not return (its prompt_logprobs carry the actual token only); use --backend "
                         "transformers")  # fmt: skip


def spec_and_config(args: argparse.Namespace) -> tuple[VerifierSpec, CMEConfig]:
    """The verifier spec and scoring config the flags describe (unset flags keep the dataclass defaults)."""
    spec = {name: getattr(args, name) for name, _ in VERIFIER_FLAGS.values() if getattr(args, name, None) is not None}
    if spec.get("dtype") == "auto":
        spec["dtype"] = None
    if spec.get("backend") == "vllm":
        spec["api_key"] = getattr(args, "vllm_api_key", None) or os.environ.get("VLLM_API_KEY") or None
    config = {name: getattr(args, name) for name, _ in CONFIG_FLAGS.values() if getattr(args, name, None) is not None}
    try:
        built = _paper_config(args, config)
        _check_backend(args, spec, built.metric)
        return VerifierSpec(args.verifier, **spec), built
    except ValueError as err:
        raise UsageError(str(err).replace("base_url=", "--base-url ").replace("backend=", "--backend ")) from None


def _paper_config(args: argparse.Namespace, config: dict[str, Any]) -> CMEConfig:
    """`CMEConfig(**config)`, or with `--paper` `CMEConfig.from_paper(<paper flags>, **config)`."""
    paper = {name: getattr(args, f"paper_{name}") for name, _ in PAPER_FLAGS.values()
             if getattr(args, f"paper_{name}", None) is not None}  # fmt: skip
    if not getattr(args, "paper", False):
        if paper:
            given = [flag for flag, (name, _) in PAPER_FLAGS.items() if name in paper]
            verb = "belongs" if len(given) == 1 else "belong"
            raise UsageError(f"{', '.join(given)} {verb} to the authors' reward: add --paper")
        return CMEConfig(**config)
    clash = [flag for flag in PAPER_SETS if CONFIG_FLAGS[flag][0] in config]
    if clash:
        raise UsageError(f"--paper sets {', '.join(clash)} itself (from --paper-metric and --answer-only); drop "
                         f"{'it' if len(clash) == 1 else 'them'}")  # fmt: skip
    try:
        return CMEConfig.from_paper(**paper, **config)
    except ValueError as err:  # name the flag, not the argument
        message = str(err)
        for flag, (name, _) in PAPER_FLAGS.items():
            message = message.replace(f"`{name}`", flag)
        raise UsageError(message) from None
