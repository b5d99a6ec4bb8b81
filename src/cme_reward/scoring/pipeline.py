"""The loaded verifier and the scoring run: encode pairs, run the engine (or the vLLM backend), reduce each pair.
The reward's public methods are thin layers over `ScoringPipeline.run`."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from ..backends.factory import load_scorer
from ..config import CMEConfig
from ..scorer import ScorerStats
from ..verifier.spec import VerifierSpec
from .formatting import EncodedPair, PairEncoder
from .guard import flagged_tokens, guard_floor
from .scores import pair_score

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
    """A verifier loaded from `spec` (in process, or a vLLM server) with the tokenizer, encoder and scorer that
    score pairs under `config`; one run at a time (a lock: scores do not depend on interleaving)."""

    def __init__(self, spec: VerifierSpec, config: CMEConfig):
        self.spec, self.config = spec, config
        loaded = load_scorer(spec, config)
        self.scorer, self.tokenizer, self.max_length = loaded.scorer, loaded.tokenizer, loaded.max_length
        self.model, self.device, self.dtype = loaded.model, loaded.device, loaded.dtype
        self.encoder = PairEncoder(self.tokenizer, self.max_length, prompt_ids=config.repetition_guard,
                                   start_token=config.paper is None)  # fmt: skip
        self._special_ids = frozenset(getattr(self.tokenizer, "all_special_ids", ()) or ())
        self._lock = threading.Lock()

    @property
    def stats(self) -> ScorerStats:
        """The scorer's cumulative cost."""
        return self.scorer.stats

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
        with self._lock, tqdm(total=total, unit="tok", desc="CME", disable=not show_progress_bar or not todo) as bar:
            pairs = [(encoded[i].context_ids, encoded[i].response_ids) for i in todo]
            outputs = self.scorer.score(pairs, max_rows=max_rows, progress=bar.update) if pairs else []
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
            if self.config.repetition_guard and values.numel():
                values = self._guard(values, pair)
            results.append(Scored(pair, values, logprobs, pair_score(values, pair, self.config, self.tokenizer)))
        return results

    def _guard(self, values: torch.Tensor, pair: EncodedPair) -> torch.Tensor:
        """`values` with the repetition guard's floor at the flagged text tokens (`cme_reward.scoring.guard`)."""
        n = pair.text_tokens
        flags = flagged_tokens(pair.response_ids[:n], pair.prompt_ids, special_ids=self._special_ids)
        if not any(flags):
            return values
        mask = torch.tensor(flags + [False] * (len(values) - n), dtype=torch.bool)  # (T,) appended end-of-turn: kept
        return torch.where(mask, guard_floor(values, self.config.metric, len(self.tokenizer)), values)
