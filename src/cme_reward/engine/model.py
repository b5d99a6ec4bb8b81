"""The verifier model as the engine sees it: its body, LM head and cache, and probes that say which fast paths it
supports. Probes are pure: they run the model and return a verdict, changing nothing."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["ModelParts", "head_matches_model", "packing_keeps_sequences_apart", "uses_sliding_window"]


def uses_sliding_window(config) -> bool:
    """True when some attention layer of `config` may look back only a window of positions (Mistral, Gemma 2/3,
    Qwen2 with `use_sliding_window`...). In doubt, True."""
    if not getattr(config, "sliding_window", None) or getattr(config, "use_sliding_window", True) is False:
        return False
    layer_types = getattr(config, "layer_types", None)
    return layer_types is None or any("sliding" in t or "chunk" in t for t in layer_types)


class ModelParts:
    """A causal LM split into body (hidden states) and head (logits), plus its KV cache type."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.head = model.get_output_embeddings()
        self.body = model.get_decoder()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = self.head.weight.shape[0]
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.plain_head = getattr(self.head, "bias", None) is None and not self.softcap  # logits = hidden @ W.T
        params = inspect.signature(self.body.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states -> (..., V) logits, soft-capped like the model's own."""
        logits = self.head(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def run(self, input_ids, attention_mask, *, split: bool, cache=None, position_ids=None) -> torch.Tensor:
        """(B, T) ids -> (B, T, H) last hidden states (`split`) or (B, T, V) logits. A packed row has no mask and
        position ids that restart at each sequence; a `cache` is extended in place."""
        kwargs = {"attention_mask": attention_mask, "use_cache": cache is not None}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if split:
            return self.body(input_ids=input_ids, **kwargs).last_hidden_state
        return self.model(input_ids=input_ids, **kwargs).logits

    def new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()


def _close(parts: ModelParts, expected: torch.Tensor, got: torch.Tensor) -> bool:
    """The probes' test: equal up to the rounding of the weights' dtype."""
    tol = 1e-4 if parts.dtype == torch.float32 else 2e-2
    return bool((expected - got).abs().max() <= tol * (1 + expected.abs().max()))


@torch.inference_mode()
def head_matches_model(parts: ModelParts) -> bool:
    """True when `lm_head(body(x))` (+ soft-capping) reproduces the model's own logits on a probe input."""
    ids = torch.arange(1, 9, device=parts.device)[None] % parts.vocab_size
    mask = torch.ones_like(ids)
    try:
        full = parts.model(input_ids=ids, attention_mask=mask).logits.float()
        split = parts.project(parts.run(ids, mask, split=True)).float()
    except Exception as err:  # noqa: BLE001 - any failure means: do not split this model
        logger.debug("split-head probe failed: %s", err)
        return False
    return _close(parts, full, split)


@torch.inference_mode()
def packing_keeps_sequences_apart(parts: ModelParts, *, split: bool) -> bool:
    """True when two sequences packed in one row (restarted position ids, no mask) give the outputs they give alone:
    the model builds a packed-sequence mask from the position ids (transformers >= 4.54 does)."""
    a = torch.arange(3, 10, device=parts.device) % parts.vocab_size
    b = torch.arange(20, 25, device=parts.device) % parts.vocab_size
    try:
        alone = torch.cat([parts.run(x[None], torch.ones_like(x[None]), split=split)[0] for x in (a, b)]).float()
        pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None].to(parts.device)
        packed = parts.run(torch.cat([a, b])[None], None, split=split, position_ids=pos)[0].float()
    except Exception as err:  # noqa: BLE001 - any failure means: do not pack for this model
        logger.debug("packing probe failed: %s", err)
        return False
    return _close(parts, alone, packed)
