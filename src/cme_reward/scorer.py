"""The one scorer interface: what the in-process engine and the vLLM backend both implement.

A scorer turns token-id pairs `(context_ids, response_ids)` into per-token values of the responses:

```python
scorer.score(pairs, *, max_rows=None, progress=None) -> list[torch.Tensor]
```

one float32 CPU tensor per pair, in input order: `(len(response),)` log-probs, or `(len(response), 2)` [log-prob,
negated predictive entropy] when it scores `metric="entropy"` (which needs `capabilities.entropy`). Every scorer keeps
its cumulative cost in the same [`ScorerStats`] and declares what it can do in [`Capabilities`]; `reset()` zeroes the
stats (and restores any budget lowered at run time), `close()` releases connections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = ["Capabilities", "Pair", "Scorer", "ScorerStats"]

Pair = tuple[
    Sequence[int], Sequence[int]
]  # (context ids, response ids) in the verifier's vocabulary; context non-empty


@dataclass(frozen=True)
class Capabilities:
    """What a scorer can do.

    Attributes:
        entropy (`bool`): it returns the negated predictive entropy next to each log-prob (`metric="entropy"`); this
            needs the verifier's whole distribution at each position.
        max_length (`int | None`): the longest context + response it accepts, in verifier tokens (`None`: no limit of
            its own; the model's context size applies).
    """

    entropy: bool
    max_length: int | None = None


@dataclass
class ScorerStats:
    """Cumulative cost of a scorer, the same fields for every backend.

    Attributes:
        calls (`int`): `score` calls.
        pairs (`int`): pairs scored (duplicates included).
        tokens_scored (`int`): response tokens whose values came back.
        tokens_forward (`int`): tokens the verifier ran, each distinct pair once: in process a shared context once
            and never a pair's last token; vLLM recomputes every prompt's whole prefill, its last token included (to
            sample the one token it must generate).
        padded_tokens (`int`): tokens including padding (vLLM pads nothing: equal to `tokens_forward`).
        passes (`int`): forward passes in process; scoring requests to a vLLM server.
        retries (`int`): work sent again: batches split after an out-of-memory error in process, HTTP requests
            retried with vLLM.
        seconds (`float`): wall time spent in `score`.
    """

    calls: int = 0
    pairs: int = 0
    tokens_scored: int = 0
    tokens_forward: int = 0
    padded_tokens: int = 0
    passes: int = 0
    retries: int = 0
    seconds: float = 0.0


@runtime_checkable
class Scorer(Protocol):
    """Scores token-id pairs with a frozen verifier (see the module docstring)."""

    capabilities: Capabilities
    stats: ScorerStats

    def score(
        self,
        pairs: Sequence[Pair],
        *,
        max_rows: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor]:
        """Per-token values of each pair's response, in input order.

        Args:
            pairs (`Sequence[tuple[Sequence[int], Sequence[int]]]`): `(context_ids, response_ids)`; every context has
                at least one token.
            max_rows (`int`, *optional*): at most this many pairs per forward pass or request.
            progress (`Callable[[int], None]`, *optional*): called with the number of response tokens finished.
        """
        ...

    def reset(self) -> None:
        """Zero the stats (and restore any budget lowered at run time)."""
        ...

    def close(self) -> None:
        """Release connections or other resources (a later `score` reopens them)."""
        ...
