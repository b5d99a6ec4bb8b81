"""How pairs are grouped into forward passes: padded batches under a token budget, and padding-free packed rows.
Pure bookkeeping on lengths; `order` holds item ids sorted longest first, `length(i)` gives item i's tokens."""

from __future__ import annotations

from collections.abc import Callable


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
