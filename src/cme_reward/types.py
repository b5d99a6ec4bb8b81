"""Result types returned by the reward."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TokenScores"]


@dataclass(frozen=True)
class TokenScores:
    """Per-token verifier log-probabilities (and metric values) of one response.

    Attributes:
        token_ids (`list[int]`): verifier token ids of the scored response tokens.
        tokens (`list[str]`): display string of each token (decoded one token at a time).
        logprobs (`list[float]`): natural-log probability of each token under the verifier, given the context and the
            previous response tokens.
        score (`float | None`): the configured reduction of `logprobs` (CME = mean); the configured `empty_value`
            (default `None`) when no response token could be scored.
        context_length (`int`): number of context tokens the verifier saw (after any left truncation).
        truncated (`bool`): `True` when the context or the response was cut to fit the verifier's `max_length`.
        metric (`str`): the configured metric, `"logprob"` or `"entropy"`.
        values (`list[float]`): each token's value under `metric` (what `score` reduces): its log-prob, or the
            negated predictive entropy at its position. Equal to `logprobs` for `"logprob"`.
    """

    token_ids: list[int]
    tokens: list[str]
    logprobs: list[float]
    score: float | None
    context_length: int
    truncated: bool
    metric: str = "logprob"
    values: list[float] | None = None

    def __post_init__(self) -> None:
        if self.values is None:
            object.__setattr__(self, "values", self.logprobs)

    def __len__(self) -> int:
        return len(self.token_ids)
