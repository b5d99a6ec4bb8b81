"""Scoring backends that run the verifier outside this process.

- [`VLLMBackend`] (`cme_reward.backends.vllm`): a `vllm serve` process (OpenAI-compatible server); per-token log-probs
  come from `POST /v1/completions` with `prompt_logprobs`. Needs the `vllm` extra (`pip install "cme-reward[vllm]"`).

Backends are imported lazily: importing this package does not import their optional dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VLLMBackend", "VLLMRequestError", "VLLMStats"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import vllm

        return getattr(vllm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
