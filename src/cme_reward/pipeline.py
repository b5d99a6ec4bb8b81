"""The loaded verifier and the scoring run: encode pairs, run the engine (or the vLLM backend), reduce each pair.
The reward's public methods are thin layers over `ScoringPipeline.run`."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import torch

from .config import CMEConfig
from .engine import ScoringEngine
from .formatting import EncodedPair, PairEncoder
from .loading import context_size, load_tokenizer, load_verifier
from .scoring import pair_score
from .verifier import VerifierSpec

logger = logging.getLogger(__name__)

__all__ = ["Scored", "ScoringPipeline"]


@dataclass(frozen=True)
class Scored:
    """One scored pair: its encoding, per-token metric values and log-probs (float32, CPU), and its score."""

    pair: EncodedPair
    values: torch.Tensor  # (T,)
    logprobs: torch.Tensor  # (T,)
    score: float | None


class ScoringPipeline:
    """A verifier loaded from `spec` (in process, or a vLLM server) with the tokenizer, encoder and engine that
    score pairs under `config`; one run at a time (a lock: scores do not depend on interleaving)."""

    def __init__(self, spec: VerifierSpec, config: CMEConfig):
        self.spec, self.config = spec, config
        if spec.backend == "vllm":
            self._connect()
        else:
            self.model, self.tokenizer = load_verifier(spec)
            self.device, self.dtype = next(self.model.parameters()).device, self.model.dtype
            self.max_length = config.max_length or context_size(self.model)
            self.engine = ScoringEngine(self.model, config)
        self.encoder = PairEncoder(self.tokenizer, self.max_length)
        self._lock = threading.Lock()
        # cumulative cost: calls, pairs, response tokens scored, tokens run through the verifier body, seconds
        self.stats = {"calls": 0, "pairs": 0, "tokens_scored": 0, "tokens_forward": 0, "seconds": 0.0}

    def _connect(self) -> None:
        """backend="vllm": the verifier's tokenizer here, its forward passes on a running vLLM server."""
        from .backends.vllm import VLLMBackend

        if self.config.metric == "entropy":
            raise ValueError(
                "metric='entropy' needs the verifier's whole distribution at each position, which vLLM's "
                "prompt_logprobs do not return; use backend='transformers' for it"
            )
        spec = self.spec.resolved()
        source = os.fspath(spec.source)
        tokenizer = spec.tokenizer if spec.tokenizer is not None else source
        self.tokenizer = (
            load_tokenizer(spec, os.fspath(tokenizer), gguf_file=spec.gguf_file, revision=spec.revision)
            if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
        )  # fmt: skip
        self.model, self.device, self.dtype = None, None, None
        self.engine = VLLMBackend(spec.base_url, model=spec.served_model, api_key=spec.api_key)
        self.engine.check(self.tokenizer, expected_model=source)
        served = self.engine.max_model_len - 1 if self.engine.max_model_len else 2048  # one slot for the sample
        self.max_length = min(self.config.max_length or served, served)

    def run(
        self,
        prompts: list,
        responses: list,
        *,
        ended: list[bool] | None,
        strict: bool,
        responses_name: str,
        max_rows: int | None,
        show_progress_bar: bool,
    ) -> list[Scored | None]:
        """Encode, run the verifier, reduce. `None` where a pair is unscorable (malformed input or non-finite
        values); with `strict`, those raise instead."""
        from tqdm.auto import tqdm

        encoded = self.encoder.encode(prompts, responses, strict=strict, ended=ended, responses_name=responses_name)
        todo = [i for i, p in enumerate(encoded) if p is not None and p.response_ids]
        total = sum(len(encoded[i].response_ids) for i in todo)
        start = time.perf_counter()
        with self._lock, tqdm(total=total, unit="tok", desc="CME", disable=not show_progress_bar or not todo) as bar:
            pairs = [(encoded[i].context_ids, encoded[i].response_ids) for i in todo]
            limit = {"max_rows": max_rows} if max_rows is not None else {}
            outputs = self.engine.score(pairs, progress=bar.update, **limit)
            self.stats["calls"] += 1
            self.stats["pairs"] += len(encoded)
            self.stats["tokens_scored"] += total
            self.stats["seconds"] += time.perf_counter() - start
            self.stats["tokens_forward"] = self.engine.stats.tokens_forward  # cumulative, like the others
        by_index = dict(zip(todo, outputs))
        results: list[Scored | None] = []
        for i, pair in enumerate(encoded):
            out = by_index.get(i, torch.empty(0))
            if pair is not None and not bool(torch.isfinite(out).all()):
                message = f"the verifier produced non-finite values for pair {i} (dtype {self.dtype})"
                if strict:
                    raise FloatingPointError(message + "; try dtype='float32'")
                logger.warning("%s; scoring it as None", message)
                pair = None
            if pair is None:
                results.append(None)
                continue
            logprobs, values = (out[:, 0], out[:, 1]) if out.dim() == 2 else (out, out)
            results.append(Scored(pair, values, logprobs, pair_score(values, pair, self.config, self.tokenizer)))
        return results
