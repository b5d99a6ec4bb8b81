"""Dense per-token values across tokenizers: verifier-token values -> policy-token values through UTF-8 byte spans.

The verifier scores a response with its own tokenizer (one value per verifier token, e.g. its log-prob); the policy
tokenized the same response with another tokenizer. `token_byte_spans` (`cme_reward.alignment.token_spans`) places
each token of either side on the bytes of the response, and `dense_values` moves the values from one segmentation to
the other:

- `"bytes"` (default, conservation): each source value is spread evenly over its bytes and each target token gets
  the sum over its bytes, so the total is kept.
- `"overlap_mean"`: each target token gets the mean value of the source tokens overlapping it, else the value of the
  nearest source token (the authors' rule, on bytes).
- `"chars"` (the paper authors' exact rule): the same on the tokenizers' own *character* offsets (byte pieces of one
  character all cover that character), nearest by token midpoints, zero-width targets 0.

A target that no value reaches (a special token such as the policy's EOS, unless a scored end-of-turn token lands
there) gets `None`: it carries no verifier value, and dense advantages leave it out of the normalisation.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

__all__ = ["ALIGNMENTS", "dense_values"]

ALIGNMENTS = ("bytes", "overlap_mean", "chars")


def _check_spans(spans: Any, name: str) -> tuple[list[int], list[int]]:
    starts, ends, prev = [], [], 0
    for i, span in enumerate(spans):
        try:
            s, e = span
            ok = int(s) == s and int(e) == e
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"`{name}[{i}]` must be a (start, end) pair of ints, got {span!r:.60}")
        s, e = int(s), int(e)
        if not prev <= s <= e:
            problem = "has end < start" if s > e else f"starts before {prev} (the previous end, or 0)"
            raise ValueError(
                f"`{name}` must hold ordered, non-overlapping byte spans with 0 <= start <= end; "
                f"`{name}[{i}]` = {(s, e)} {problem}"
            )
        starts.append(s)
        ends.append(e)
        prev = e
    return starts, ends


def _spread_bytes(ss, se, vals, ts, te) -> list[float | None]:
    n, m = len(ss), len(ts)
    out: list[float | None] = [None] * m
    j = 0  # first target that may overlap the current source (ends after its start)
    for i in range(n):
        s, e = ss[i], se[i]
        if e == s:
            continue
        width, v = e - s, vals[i]
        while j < m and te[j] <= s:
            j += 1
        k = j
        while k < m and ts[k] < e:
            overlap = min(e, te[k]) - max(s, ts[k])
            if overlap > 0:
                out[k] = (out[k] or 0.0) + (v if overlap == width else v * overlap / width)  # whole token: exact
            k += 1
    # Zero-width sources (e.g. a scored EOS): to the zero-width target at the same byte (paired in order), else the
    # target containing that byte, else the nearest target (ties -> the earlier one).
    zero_targets: dict[int, list[int]] = {}
    for k in range(m):
        if ts[k] == te[k]:
            zero_targets.setdefault(ts[k], []).append(k)
    used: dict[int, int] = {}
    ptr, before, before_end = 0, -1, -1
    for i in range(n):
        p = ss[i]
        if se[i] != p:
            continue
        group = zero_targets.get(p)
        if group:
            count = used.get(p, 0)
            used[p] = count + 1
            k = group[min(count, len(group) - 1)]
            out[k] = (out[k] or 0.0) + vals[i]
            continue
        while ptr < m and te[ptr] <= p and ts[ptr] < p:  # targets wholly before p
            if te[ptr] > before_end:
                before, before_end = ptr, te[ptr]
            ptr += 1
        if ptr < m and ts[ptr] <= p < te[ptr]:
            k = ptr
        elif before >= 0 and (ptr >= m or p - before_end <= ts[ptr] - p):
            k = before
        elif ptr < m:
            k = ptr
        else:
            continue
        out[k] = (out[k] or 0.0) + vals[i]
    return out


def _overlap_mean(ss, se, vals, ts, te) -> list[float | None]:
    n, m = len(ss), len(ts)
    positive = [i for i in range(n) if se[i] > ss[i]]
    out: list[float | None] = [None] * m
    a = 0  # into positive: first source ending after the target start
    b, before, before_end = 0, -1, -1  # into all sources, for the nearest one
    for k in range(m):
        t0, t1 = ts[k], te[k]
        if t1 == t0:  # a special token: no text, no value
            continue
        if t1 > t0:
            while a < len(positive) and se[positive[a]] <= t0:
                a += 1
            total, count, q = 0.0, 0, a
            while q < len(positive) and ss[positive[q]] < t1:
                total += vals[positive[q]]
                count += 1
                q += 1
            if count:
                out[k] = total / count
                continue
        while b < n and se[b] <= t0 and ss[b] < t0:  # sources wholly before the target
            if se[b] > before_end:
                before, before_end = b, se[b]
            b += 1
        after_gap = max(0, ss[b] - t1, t0 - se[b]) if b < n else None
        if before >= 0 and (after_gap is None or t0 - before_end <= after_gap):
            out[k] = vals[before]
        elif after_gap is not None:
            out[k] = vals[b]
    return out


def _char_overlap_mean(source: list[tuple[int, int]], vals: list[float], target) -> list[float | None]:
    """The authors' rule on character spans (which may share characters): the mean of the positive-width sources
    overlapping a target, else the one whose midpoint is nearest the target's (the first on a tie); a zero-width
    target gets 0.0, a `None` target `None`."""
    keep = [i for i, (s, e) in enumerate(source) if e > s]
    starts, ends = [source[i][0] for i in keep], [source[i][1] for i in keep]
    sums = [0.0, *accumulate(vals[i] for i in keep)]
    mids = [(s + e) / 2 for s, e in zip(starts, ends)]
    ordered = all(a <= b for a, b in zip(starts, starts[1:])) and all(a <= b for a, b in zip(ends, ends[1:]))
    out: list[float | None] = []
    for span in target:
        if span is None:
            out.append(None)
            continue
        a, b = span
        if b == a:
            out.append(0.0)
            continue
        if ordered:  # sources ending after a and starting before b: one contiguous run
            lo, hi = bisect_right(ends, a), bisect_left(starts, b)
            hits = range(lo, hi) if hi > lo else ()
        else:
            hits = [j for j in range(len(keep)) if ends[j] > a and starts[j] < b]
        if hits:
            out.append((sums[hits[-1] + 1] - sums[hits[0]]) / len(hits) if ordered else
                       sum(vals[keep[j]] for j in hits) / len(hits))  # fmt: skip
        elif keep:
            mid = (a + b) / 2
            j = min(range(len(keep)), key=lambda j: (abs(mids[j] - mid), j))
            out.append(vals[keep[j]])
        else:
            out.append(vals[0] if vals else 0.0)
    return out


def dense_values(
    source_spans: Sequence[tuple[int, int]],
    source_values: Sequence[float],
    target_spans: Sequence[tuple[int, int] | None],
    *,
    alignment: str = "bytes",
) -> list[float | None]:
    """Move one value per source token onto target tokens of another segmentation of the same bytes.

    For `"bytes"` and `"overlap_mean"` both span lists are byte spans in order and non-overlapping (as
    `token_byte_spans` returns them; linear time, two pointers over the sorted spans); for `"chars"` they are the
    tokenizers' character offsets, and a target span may be `None` (no value).

    - `"bytes"`: each source value is spread evenly over its bytes; each target gets the sum over its bytes, so
      `sum(target) == sum(source)` when the targets cover the source bytes. A target covering a whole source token
      gets exactly its value, so identical spans give identical values. A zero-width source token gives its value to
      the zero-width target at the same byte (paired in order), else to the target containing that byte, else to the
      nearest target (ties -> the earlier one). A target no source reaches (a special token, or bytes past a
      truncated source) gets `None`.
    - `"overlap_mean"`: each target gets the mean value of the positive-width source tokens overlapping it; a
      target with no overlap gets the value of the nearest source token by byte distance (ties -> the earlier one),
      so targets past a truncated source take the last source value; a zero-width target gets `None`.
    - `"chars"`: the authors' `_align_ce_to_generator` on character spans (see `_char_overlap_mean`).

    Args:
        source_spans (`Sequence[tuple[int, int]]`): byte span of each source (verifier) token.
        source_values (`Sequence[float]`): one value per source token (a list, or anything with `.tolist()`).
        target_spans (`Sequence[tuple[int, int]]`): byte span of each target (policy) token.
        alignment (`str`, *optional*, defaults to `"bytes"`): `"bytes"`, `"overlap_mean"` or `"chars"`.

    Returns:
        `list[float | None]`: one value per target token, `None` where no value reaches it.

    Example:
        ```python
        >>> dense_values([(0, 2), (2, 4)], [-1.0, -3.0], [(0, 1), (1, 4), (4, 4)])
        [-0.5, -3.5, None]
        >>> dense_values([(0, 2), (2, 4)], [-1.0, -3.0], [(0, 1), (1, 4), (4, 4)], alignment="overlap_mean")
        [-1.0, -2.0, None]
        ```
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"`alignment` must be one of {', '.join(map(repr, ALIGNMENTS))}, got {alignment!r}")
    values = source_values.tolist() if hasattr(source_values, "tolist") else source_values
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError("`source_values` must be a sequence of numbers") from None
    if len(values) != len(source_spans):
        raise ValueError(
            f"`source_values` must have one value per source span, got {len(values)} values "
            f"for {len(source_spans)} spans"
        )
    if alignment == "chars":
        source = [tuple(map(int, span)) for span in source_spans]
        return _char_overlap_mean(source, values, [None if t is None else tuple(map(int, t)) for t in target_spans])
    ss, se = _check_spans(source_spans, "source_spans")
    ts, te = _check_spans(target_spans, "target_spans")
    if alignment == "bytes":
        return _spread_bytes(ss, se, values, ts, te)
    return _overlap_mean(ss, se, values, ts, te)
