"""Which part of a response is scored: span rules, character -> byte spans, and the tokens inside a span.

A span rule picks the characters `[start, end)` of a response that count (e.g. only the final `\\boxed{...}`
answer). Rules:

- `None`: the whole text.
- `"boxed"`: the content of the last balanced `\\boxed{...}` (see `find_span`).
- any other string: a regular expression, compiled at construction (see `find_span`).
- a compiled `re.Pattern` (`str` patterns only).
- a callable `text -> (start, end) | None` returning character offsets.

An empty span (`start == end`) from a box, a regex or a callable means "no span" and `find_span` returns `None`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable

__all__ = ["SpanRule", "check_span_rule", "find_span", "char_to_byte_span", "tokens_in_span"]

SpanRule = str | re.Pattern | Callable[[str], tuple[int, int] | None] | None

_BRACES = re.compile(r"[{}]")
_BOX = "\\boxed"


def check_span_rule(rule: SpanRule) -> None:
    """Validate a span rule at construction time, so a bad rule fails before any scoring.

    Args:
        rule (`SpanRule`):
            `None`, `"boxed"`, a regular expression string, a compiled `str` pattern or a callable.

    Raises:
        ValueError: a regex string that does not compile (the message names `score_span` and the regex error).
        TypeError: anything else (a bytes pattern, a number, a list, ...).

    Example:
        ```python
        >>> check_span_rule(r"Answer: (.*)")
        >>> check_span_rule("(")
        Traceback (most recent call last):
        ...
        ValueError: `score_span` is not a valid regular expression: '(' (missing ), unterminated subpattern ...)
        ```
    """
    if rule is None or rule == "boxed":
        return
    if isinstance(rule, str):
        try:
            re.compile(rule)
        except re.error as err:
            raise ValueError(f"`score_span` is not a valid regular expression: {rule!r} ({err})") from None
        return
    if isinstance(rule, re.Pattern):
        if not isinstance(rule.pattern, str):
            raise TypeError("`score_span` must be a str regular expression, got a bytes pattern")
        return
    if callable(rule):
        return
    raise TypeError(
        "`score_span` must be None (whole response), 'boxed', a regular expression (str or re.Pattern) or a callable "
        f"text -> (start, end) | None, got {type(rule).__name__}"
    )


def _last_boxed(text: str) -> tuple[int, int] | None:
    # One pass over the braces with a stack: each open brace remembers where its content starts if it opens a box.
    # A `}` closes the nearest open `{`, exactly as a forward depth count from that `{` would; stray `}` are ignored.
    stack: list[int] = []  # content start of a box opener, or -1 for a plain brace
    best: tuple[int, int] | None = None
    for match in _BRACES.finditer(text):
        pos = match.start()
        if match.group() == "{":
            stack.append(pos + 1 if pos >= len(_BOX) and text.startswith(_BOX, pos - len(_BOX)) else -1)
        elif stack:
            start = stack.pop()
            if start >= 0 and (best is None or start > best[0]):
                best = (start, pos)
    return best


def _checked_callable_span(value: object, text: str) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = isinstance(value, tuple) and len(value) == 2 and not any(isinstance(v, bool) for v in value)
    if ok:
        try:
            start, end = operator.index(value[0]), operator.index(value[1])
        except TypeError:
            ok = False
    if not ok or not 0 <= start <= end <= len(text):
        raise ValueError(
            f"`score_span` callable must return None or a tuple (start, end) of ints with "
            f"0 <= start <= end <= len(text) = {len(text)}, got {value!r:.100}"
        )
    return start, end


def find_span(text: str, rule: SpanRule) -> tuple[int, int] | None:
    """The character span `[start, end)` of `text` picked by `rule`, or `None` when there is none.

    - `None`: `(0, len(text))`, the whole text (even when it is empty).
    - `"boxed"`: the content of the balanced `\\boxed{...}` whose opening `\\boxed{` comes last. Only the exact
      spelling `\\boxed{` opens a box (`\\boxed {` does not). Braces are counted raw (`\\{` counts as a brace),
      like the usual MATH answer extractors; an unbalanced `\\boxed{` is skipped, so the previous balanced box wins.
      Nested boxes: `\\boxed{a \\boxed{b}}` gives `b` (the later opener). Linear time.
    - a regex: the last non-empty match (empty matches, such as the one `\\d*` makes at the end of any text, are
      skipped); group 1's span when the pattern has groups, else the whole match. `None` when group 1 did not
      take part in that match or is empty.
    - a callable: its return value, checked to be `None` or a tuple of two ints with
      `0 <= start <= end <= len(text)` (else `ValueError`).

    For every rule but `None` an empty span counts as no span: the result is `None`.

    Args:
        text (`str`): the response.
        rule (`SpanRule`): see `check_span_rule`.

    Returns:
        `tuple[int, int] | None`: character offsets into `text`.

    Example:
        ```python
        >>> find_span("so x = \\boxed{\\frac{1}{2}}.", "boxed")
        (14, 25)
        >>> find_span("Answer: 42", r"Answer: (\\d+)")
        (8, 10)
        ```
    """
    if rule is None:
        return 0, len(text)
    if rule == "boxed":
        span = _last_boxed(text)
    elif isinstance(rule, (str, re.Pattern)):
        pattern = re.compile(rule)  # re caches compiled patterns
        last = None
        for match in pattern.finditer(text):
            if match.end() > match.start():
                last = match
        if last is None:
            return None
        span = last.span(1) if pattern.groups else last.span()
        if span[0] < 0:  # group 1 did not take part in the match
            return None
    elif callable(rule):
        span = _checked_callable_span(rule(text), text)
    else:
        check_span_rule(rule)  # raises TypeError
        return None
    if span is None or span[0] == span[1]:
        return None
    return span


def char_to_byte_span(text: str, span: tuple[int, int]) -> tuple[int, int]:
    """Convert a character span of `text` to the matching span of `text.encode("utf-8")`.

    Lone surrogates are counted as 3 bytes (`surrogatepass`), so this never raises on odd text.

    Args:
        text (`str`): the text the span indexes.
        span (`tuple[int, int]`): character offsets `[start, end)`, `0 <= start <= end <= len(text)`.

    Returns:
        `tuple[int, int]`: byte offsets `[start, end)`.

    Example:
        ```python
        >>> char_to_byte_span("é=\\boxed{東}", (9, 10))
        (10, 13)
        ```
    """
    start, end = span
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"`span` must satisfy 0 <= start <= end <= len(text) = {len(text)}, got {span!r}")
    byte_start = len(text[:start].encode("utf-8", "surrogatepass"))
    return byte_start, byte_start + len(text[start:end].encode("utf-8", "surrogatepass"))


def tokens_in_span(token_byte_spans: list[tuple[int, int]], span_bytes: tuple[int, int] | None) -> list[bool]:
    """Which tokens lie in a byte span: a token is in it when its bytes overlap it.

    A token `[s, e)` is in `[span_start, span_end)` when `s < span_end and e > span_start`; zero-width tokens
    (special tokens, EOS) are never in it. `span_bytes=None` (no span found) or an empty span marks no token.
    Linear time.

    Args:
        token_byte_spans (`list[tuple[int, int]]`): the byte span of each token (see
            `cme_reward.alignment.token_spans.token_byte_spans`).
        span_bytes (`tuple[int, int] | None`): the byte span to test against (see `char_to_byte_span`).

    Returns:
        `list[bool]`: one flag per token.

    Example:
        ```python
        >>> tokens_in_span([(0, 3), (3, 5), (5, 9), (9, 9)], (4, 9))
        [False, True, True, False]
        ```
    """
    if span_bytes is None or span_bytes[0] >= span_bytes[1]:  # no span, or an empty one: no byte to overlap
        return [False] * len(token_byte_spans)
    span_start, span_end = span_bytes
    return [s < span_end and e > span_start and e > s for s, e in token_byte_spans]
