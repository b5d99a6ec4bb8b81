"""How pairs are grouped into forward passes: which pairs are scored at all (duplicates once), which share a
context's KV cache, padded batches under a token budget, and padding-free packed rows. Pure bookkeeping on token ids
and lengths; `order` holds item ids sorted longest first, `length(i)` gives item i's tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..scorer import Pair

__all__ = ["PairPlan", "pack_batches", "pack_rows", "plan_pairs"]


@dataclass(frozen=True)
class PairPlan:
    """What to score for a list of pairs. `pairs[slot[i]]` is input i's pair; every index of `pairs` is in exactly one
    of `groups` (responses sharing one context, longest context first) or `singles` (longest pair first)."""

    pairs: list[tuple[list[int], list[int]]]
    slot: list[int]
    groups: list[list[int]]
    singles: list[int]


def plan_pairs(pairs: Sequence[Pair], *, deduplicate: bool, prefix_sharing: bool, min_shared_tokens: int) -> PairPlan:
    """Deduplicate pairs and pick the GRPO groups worth a shared context: a group shares its context's KV cache when
    that saves at least `min_shared_tokens` forwarded tokens ((responses - 1) x context length)."""
    unique: dict[tuple, int] = {}
    slot = []
    for i, (c, r) in enumerate(pairs):
        key = (tuple(c), tuple(r))
        slot.append(unique.setdefault(key if deduplicate else (i, key), len(unique)))
    todo = [(list(k[0]), list(k[1])) if deduplicate else (list(k[1][0]), list(k[1][1])) for k in unique]
    groups: list[list[int]] = []
    if prefix_sharing:
        by_context: dict[tuple, list[int]] = {}
        for i, (c, r) in enumerate(todo):
            if r:
                by_context.setdefault(tuple(c), []).append(i)
        groups = [g for c, g in by_context.items() if len(g) > 1 and (len(g) - 1) * len(c) >= min_shared_tokens]
        groups.sort(key=lambda g: -len(todo[g[0]][0]))
    grouped = {i for g in groups for i in g}
    singles = sorted((i for i in range(len(todo)) if i not in grouped), key=lambda i: -sum(map(len, todo[i])))
    return PairPlan(todo, slot, groups, singles)


def pack_batches(
    order: list[int],
    length: Callable[[int], int],
    budget: int,
    max_padding: float,
    *,
    max_rows: int | None = None,
    extra: int = 0,
) -> list[list[int]]:
    """Greedy batches of `order`. A batch grows while its padded size (rows x its longest row, plus `extra` cached
    tokens per row) fits `budget`, it has at most `max_rows` rows, and its padding stays within `max_padding` of its
    real tokens. An item longer than the budget still gets a batch of its own."""
    batches: list[list[int]] = []
    real = 0
    for i in order:
        last = batches[-1] if batches else None
        if last:
            n, width = len(last) + 1, length(last[0])
            fits = (max_rows is None or n <= max_rows) and n * (width + extra) <= budget
            if fits and n * width <= (1 + max_padding) * (real + length(i)):
                last.append(i)
                real += length(i)
                continue
        batches.append([i])
        real = length(i)
    return batches


def pack_rows(order: list[int], length: Callable[[int], int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing rows of `order`, each holding at most `capacity` tokens (a longer item gets its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = length(i)
        k = next((k for k, free in enumerate(room) if free >= n), None)
        if k is None:
            rows.append([i])
            room.append(capacity - n)
        else:
            rows[k].append(i)
            room[k] -= n
    return rows
