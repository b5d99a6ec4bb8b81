"""One factory from a [`VerifierSpec`] and a [`CMEConfig`] to a ready [`Scorer`](cme_reward.scorer.Scorer) and the
verifier's tokenizer, for either backend. Options a backend cannot honour are refused (a metric it cannot compute) or
warned about once per process (options it ignores); none is dropped silently."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from ..config import CMEConfig
from ..scorer import Scorer
from ..verifier.spec import VerifierSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = ["LoadedVerifier", "load_scorer"]

logger = logging.getLogger(__name__)

# CMEConfig fields that only steer the in-process engine's batching (a vLLM server batches on its own)
ENGINE_ONLY = ("prefix_sharing", "deduplicate", "head_chunk_tokens", "max_padding", "pack_tokens",
               "min_shared_tokens", "head_vocab_block")  # fmt: skip
IN_PROCESS_ONLY = ("device", "dtype", "model_kwargs")  # VerifierSpec fields a vLLM server decides itself
_warned: set[str] = set()


@dataclass
class LoadedVerifier:
    """A verifier ready to score: the scorer, the tokenizer that makes its token ids, and the longest sequence.

    Attributes:
        scorer (`Scorer`): the in-process `ScoringEngine` or a `VLLMBackend`.
        tokenizer (`PreTrainedTokenizerBase`): the verifier's tokenizer (always loaded here).
        max_length (`int`): the longest context + response it scores, in verifier tokens.
        model (`PreTrainedModel`, *optional*): the model, in process only.
        device, dtype (*optional*): where and how the model runs, in process only.
    """

    scorer: Scorer
    tokenizer: Any
    max_length: int
    model: PreTrainedModel | None = None
    device: torch.device | None = None
    dtype: torch.dtype | None = None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _changed(obj: Any, names: tuple[str, ...]) -> list[str]:
    defaults = {f.name: f.default for f in fields(obj)}
    return [n for n in names if getattr(obj, n) != defaults[n]]


def load_scorer(spec: VerifierSpec, config: CMEConfig) -> LoadedVerifier:
    """Load (or connect to) the verifier `spec` names and build its scorer under `config`.

    Raises:
        `ValueError`: `config` asks for something the backend cannot do (e.g. `metric="entropy"` from vLLM's
            `prompt_logprobs`, which carry no full distribution).
    """
    if spec.backend == "vllm":
        return _connect(spec, config)
    from ..engine import ScoringEngine
    from ..verifier.loading import context_size, load_verifier

    model, tokenizer = load_verifier(spec)
    scorer = ScoringEngine(model, config)
    device, dtype = next(model.parameters()).device, model.dtype
    return LoadedVerifier(scorer, tokenizer, config.max_length or context_size(model), model, device, dtype)


def _connect(spec: VerifierSpec, config: CMEConfig) -> LoadedVerifier:
    """backend="vllm": the verifier's tokenizer here, its forward passes on a running vLLM server."""
    from ..verifier.loading import load_tokenizer
    from .vllm import VLLMBackend

    ignored = _changed(config, ENGINE_ONLY) + _changed(spec, IN_PROCESS_ONLY)
    if ignored:
        _warn_once(f"backend='vllm' ignores {', '.join(ignored)}: the vLLM server batches and places the model "
                   "itself")  # fmt: skip
    scorer = VLLMBackend(
        spec.base_url, model=spec.served_model, api_key=spec.api_key, timeout=spec.request_timeout,
        max_concurrency=spec.max_concurrency, max_retries=spec.max_retries, pairs_per_request=spec.pairs_per_request,
        tokens_per_request=config.max_tokens_per_batch, backoff=spec.retry_backoff,
    )  # fmt: skip
    check_capabilities(scorer, config, "backend='vllm'")
    spec = spec.resolved()
    source = os.fspath(spec.source)
    tokenizer = spec.tokenizer if spec.tokenizer is not None else source
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(spec, os.fspath(tokenizer), gguf_file=spec.gguf_file, revision=spec.revision)
    scorer.check(tokenizer, expected_model=source)
    served = scorer.capabilities.max_length or 2048
    return LoadedVerifier(scorer, tokenizer, min(config.max_length or served, served))


def check_capabilities(scorer: Scorer, config: CMEConfig, what: str) -> None:
    """Refuse a `config` that needs something `scorer` cannot do."""
    if config.metric == "entropy" and not scorer.capabilities.entropy:
        raise ValueError(
            f"metric='entropy' needs the verifier's whole distribution at each position, which {what} does not "
            "return (vLLM's prompt_logprobs carry the actual token only); use backend='transformers' for it"
        )
