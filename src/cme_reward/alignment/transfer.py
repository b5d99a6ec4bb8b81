"""Dense per-token values across tokenizers: verifier-token values -> policy-token values through UTF-8 byte spans.

The verifier scores a response with its own tokenizer (one value per verifier token, e.g. its log-prob); the policy
tokenized the same response with another tokenizer. `token_byte_spans` (`cme_reward.alignment.token_spans`) places
each token of either side on the bytes of the response, and `dense_values` moves the values from one segmentation to
the other:

- `"bytes"` (default, conservation): each source value is spread evenly over its bytes and each target token gets
  the sum over its bytes, so the total is kept.
- `"overlap_mean"` (the paper authors' rule, for replication): each target token gets the mean value of the source
  tokens overlapping it, else the value of the nearest source token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["ALIGNMENTS", "dense_values"]

ALIGNMENTS = ("bytes", "overlap_mean")


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


def _spread_bytes(ss, se, vals, ts, te) -> list[float]:
    n, m = len(ss), len(ts)
    out = [0.0] * m
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
                out[k] += v if overlap == width else v * overlap / width  # whole source token: exact value
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
            out[group[min(count, len(group) - 1)]] += vals[i]
            continue
        while ptr < m and te[ptr] <= p and ts[ptr] < p:  # targets wholly before p
            if te[ptr] > before_end:
                before, before_end = ptr, te[ptr]
            ptr += 1
        if ptr < m and ts[ptr] <= p < te[ptr]:
            out[ptr] += vals[i]
        elif before >= 0 and (ptr >= m or p - before_end <= ts[ptr] - p):
            out[before] += vals[i]
        elif ptr < m:
            out[ptr] += vals[i]
    return out


def _overlap_mean(ss, se, vals, ts, te) -> list[float]:
    n, m = len(ss), len(ts)
    positive = [i for i in range(n) if se[i] > ss[i]]
    out = [0.0] * m
    a = 0  # into positive: first source ending after the target start
    b, before, before_end = 0, -1, -1  # into all sources, for the nearest one
    for k in range(m):
        t0, t1 = ts[k], te[k]
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


def dense_values(
    source_spans: Sequence[tuple[int, int]],
    source_values: Sequence[float],
    target_spans: Sequence[tuple[int, int]],
    *,
    alignment: str = "bytes",
) -> list[float]:
    """Move one value per source token onto target tokens of another segmentation of the same bytes.

    Both span lists are byte spans in order and non-overlapping (as `token_byte_spans` returns them). Linear time:
    two pointers over the sorted spans.

    - `"bytes"`: each source value is spread evenly over its bytes; each target gets the sum over its bytes, so
      `sum(target) == sum(source)` when the targets cover the source bytes. A target covering a whole source token
      gets exactly its value, so identical spans give identical values. A zero-width source token gives its value to
      the zero-width target at the same byte (paired in order), else to the target containing that byte, else to the
      nearest target (ties -> the earlier one); targets that cover no bytes otherwise get 0. Bytes that no source
      covers (e.g. the verifier scored only the first N tokens) carry 0.
    - `"overlap_mean"`: each target gets the mean value of the positive-width source tokens overlapping it; a
      target with no overlap (zero-width ones included) gets the value of the nearest source token by byte distance
      (ties -> the earlier one), so targets past a truncated source take the last source value. No sources: 0.

    Args:
        source_spans (`Sequence[tuple[int, int]]`): byte span of each source (verifier) token.
        source_values (`Sequence[float]`): one value per source token (a list, or anything with `.tolist()`).
        target_spans (`Sequence[tuple[int, int]]`): byte span of each target (policy) token.
        alignment (`str`, *optional*, defaults to `"bytes"`): `"bytes"` or `"overlap_mean"`.

    Returns:
        `list[float]`: one value per target token.

    Example:
        ```python
        >>> dense_values([(0, 2), (2, 4)], [-1.0, -3.0], [(0, 1), (1, 4), (4, 4)])
        [-0.5, -3.5, 0.0]
        >>> dense_values([(0, 2), (2, 4)], [-1.0, -3.0], [(0, 1), (1, 4), (4, 4)], alignment="overlap_mean")
        [-1.0, -2.0, -3.0]
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
    ss, se = _check_spans(source_spans, "source_spans")
    ts, te = _check_spans(target_spans, "target_spans")
    if alignment == "bytes":
        return _spread_bytes(ss, se, values, ts, te)
    return _overlap_mean(ss, se, values, ts, te)
