"""The paper authors' scoring rules (github mattgorb/cme-grpo, `reward.py`), for exact replication.

`CMEConfig.from_paper(...)` sets `paper=PaperRules(...)`; under it a pair's score and dense values follow the authors'
`CMERewardModel.score` number for number (the principled defaults elsewhere in the library differ on purpose). In the
authors' terms, with `loss_t = -value_t` the per-token loss (cross-entropy, or predictive entropy for
`metric="entropy"`), `f = exp` for `reduction="perplexity"` (else the identity), `p` = `no_box_penalty` and the box =
the content of the LAST `\\boxed{` when it is balanced (an unbalanced last box means no box):

- sequence level: `-f(mean(loss) + p * [no box])`; with `answer_only`: `-f(p)` without a box, else `-f(mean over
  the verifier tokens overlapping the box)` (the whole response when none does, e.g. an empty box); with
  `answer_weight` w: `-f((1 - w) * (mean(loss) + p * [no box]) + w * a)`, `a` the box mean (`p` when there is no box
  or no token in it);
- token level (`score_dense`): every token's loss plus `p` without a box (`answer_only`: `p` everywhere without a box,
  0 outside the box with one), mapped onto the policy's tokens by character offsets (`alignment="chars"`), then
  `-f(.)` per policy token.

Empty and blank responses score `empty_value` (-50 from `from_paper`). Two differences remain, both measured in
README's "Reproducing the paper" table: the authors feed a chat prompt rendered as text through a BOS-adding tokenizer
(BOS twice; the library once), and an over-long response keeps its last tokens there, its first ones here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PaperRules", "char_offsets", "paper_box", "paper_dense", "paper_score", "paper_transform"]

BOX = "\\boxed{"


@dataclass(frozen=True)
class PaperRules:
    """The authors' own options that have no principled counterpart in [`CMEConfig`] (see the module docstring).

    Args:
        answer_only (`bool`, defaults to `False`): score only the verifier tokens inside the last `\\boxed{...}`.
        answer_weight (`float`, *optional*): blend `w * box + (1 - w) * whole response` (sequence level only).
        no_box_penalty (`float`, defaults to `5.0`): added to the loss of a response without a box.
        token_level (`bool`, defaults to `False`): the authors' dense (per-token) reward; `score_dense` gives it
            either way, but a reward built with `token_level=False` tells `DenseGRPOTrainer` it is scalar.
    """

    answer_only: bool = False
    answer_weight: float | None = None
    no_box_penalty: float = 5.0
    token_level: bool = False

    def __post_init__(self) -> None:
        for name in ("answer_only", "token_level"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}")
        w, p = self.answer_weight, self.no_box_penalty
        if w is not None and not (_is_real(w) and 0.0 <= w <= 1.0):
            raise ValueError(f"`answer_weight` must be None or a float in [0, 1], got {w!r}")
        if not _is_real(p):
            raise ValueError(f"`no_box_penalty` must be a finite float, got {p!r}")
        if w is not None and self.token_level:
            raise ValueError("`answer_weight` is sequence-level only: the authors refuse it with token_level=True")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def paper_box(text: str) -> tuple[int, int] | None:
    """Character span of the content of the last `\\boxed{` when its braces balance, else `None` (no earlier box is
    tried: the authors' rule)."""
    start = text.rfind(BOX)
    if start < 0:
        return None
    depth, begin = 1, start + len(BOX)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return begin, i
    return None


def char_offsets(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """The tokenizer's own character offsets of `ids`, its tokenization of `text` without special tokens (what the
    authors read). Raises `ValueError` when the tokenizer has no offsets or `ids` is another tokenization."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as err:
        name = type(tokenizer).__name__
        raise ValueError(f"alignment='chars' needs a fast tokenizer with offsets ({name}: {err})") from None
    if list(enc["input_ids"][: len(ids)]) != list(ids):
        raise ValueError("alignment='chars': the token ids are not the tokenizer's tokenization of the text")
    return [tuple(o) for o in enc["offset_mapping"][: len(ids)]]


def _in_box(offsets: list[tuple[int, int]], box: tuple[int, int]) -> torch.Tensor:
    a, b = box
    return torch.tensor([e > s and e > a and s < b for s, e in offsets], dtype=torch.bool)


def paper_score(values: torch.Tensor, text: str, text_ids: list[int], offset: int, rules: PaperRules,
                reduction: str, tokenizer: Any) -> float:  # fmt: skip
    """The authors' sequence-level reward of one scored pair: (T,) values (log-probs, or negated entropies) of the
    text tokens `text_ids[offset : offset + T]`, T >= 1."""
    loss = -values.double()  # (T,)
    f = math.exp if reduction == "perplexity" else float
    p = float(rules.no_box_penalty)
    box = paper_box(text) if rules.answer_only or rules.answer_weight is not None or p else None
    full = loss.mean().item()

    def box_mean() -> float | None:
        mask = _in_box(char_offsets(tokenizer, text, text_ids)[offset : offset + len(loss)], box)  # (T,)
        return loss[mask].mean().item() if bool(mask.any()) else None

    if rules.answer_weight is not None:
        w = float(rules.answer_weight)
        answer = p if box is None else box_mean()
        combined = (1 - w) * (full + (p if box is None else 0.0)) + w * (p if answer is None else answer)
        return -f(combined)
    if rules.answer_only:
        if box is None:
            return -f(p)
        inside = box_mean()
        return -f(full if inside is None else inside)
    return -f(full + (p if box is None and p else 0.0))


def paper_dense(values: torch.Tensor, text: str, text_ids: list[int], rules: PaperRules, reduction: str,
                tokenizer: Any) -> torch.Tensor:  # fmt: skip
    """The authors' per-verifier-token values before alignment: (T,) values with the penalty / box rules applied
    (in value space: higher = better). The perplexity transform comes after alignment (see `paper_transform`). Like
    the authors, the box mask reads the first T offsets of `text_ids`."""
    values = values.double()
    p = float(rules.no_box_penalty)
    box = paper_box(text)
    if rules.answer_only and box is None:
        return torch.full_like(values, -p)
    if not rules.answer_only and box is None:
        return values - p
    if rules.answer_only:
        return torch.where(_in_box(char_offsets(tokenizer, text, text_ids)[: len(values)], box), values, 0.0)
    return values


def paper_transform(value: float | None, reduction: str) -> float | None:
    """`-f(loss)` of one aligned policy-token value (value = `-loss`)."""
    if value is None or reduction != "perplexity":
        return value
    return -math.exp(-value)
