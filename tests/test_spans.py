"""Span rules (which part of a response is scored), char -> byte spans and token membership vs naive references."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cme_reward.scoring.spans import char_to_byte_span, check_span_rule, find_span, tokens_in_span

FAST = settings(max_examples=200, deadline=None)

# ----------------------------------------------------------------------------------------------- naive references


def naive_boxed(text: str) -> tuple[int, int] | None:
    """Brute force: from every `\\boxed{`, count depth forward; keep the balanced box that opens last."""
    best = None
    start = text.find("\\boxed{")
    while start >= 0:
        depth, content = 1, start + len("\\boxed{")
        for i in range(content, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                best = (content, i)
                break
        start = text.find("\\boxed{", start + 1)
    return None if best is None or best[0] == best[1] else best


def naive_byte_span(text: str, span: tuple[int, int]) -> tuple[int, int]:
    sizes = [len(ch.encode("utf-8")) for ch in text]
    return sum(sizes[: span[0]]), sum(sizes[: span[1]])


def naive_in_span(spans: list[tuple[int, int]], span: tuple[int, int]) -> list[bool]:
    inside = set(range(*span))
    return [any(b in inside for b in range(s, e)) for s, e in spans]


# ------------------------------------------------------------------------------------------------- check_span_rule


@pytest.mark.parametrize("rule", [None, "boxed", r"Answer: (\d+)", re.compile(r"\d+"), lambda t: (0, 1), len])
def test_check_span_rule_accepts(rule):
    check_span_rule(rule)


def test_check_span_rule_bad_regex_names_argument_and_error():
    with pytest.raises(ValueError, match=r"`score_span`.*'\(\['.*unterminated"):
        check_span_rule("([")


@pytest.mark.parametrize("rule", [3, 1.5, ["boxed"], b"boxed", re.compile(rb"\d+"), {"a": 1}])
def test_check_span_rule_rejects_other_types(rule):
    with pytest.raises(TypeError, match="`score_span`"):
        check_span_rule(rule)


def test_find_span_rejects_bad_rule_type():
    with pytest.raises(TypeError, match="`score_span`"):
        find_span("abc", 3)


# ------------------------------------------------------------------------------------------------------ find_span


@pytest.mark.parametrize("text", ["", "abc", "東京 🙂"])
def test_none_rule_is_whole_text(text):
    assert find_span(text, None) == (0, len(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x = \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{1} then \\boxed{2", "1"),  # unbalanced last box: the previous balanced one
        ("\\boxed{1} then \\boxed{{2}", "1"),
        ("\\boxed{a \\boxed{b}}", "b"),  # the later opener wins
        ("\\boxed{a \\boxed{b}", "b"),
        ("} } \\boxed{東京 🙂}", "東京 🙂"),
        ("\\boxed {1}", None),  # strict spelling
        ("\\boxedx{1}", None),
        ("no box here", None),
        ("\\boxed{}", None),  # empty box: no span
        ("\\boxed{", None),
    ],
)
def test_boxed_examples(text, expected):
    span = find_span(text, "boxed")
    assert (None if span is None else text[span[0] : span[1]]) == expected
    assert span == naive_boxed(text)


@FAST
@given(st.lists(st.sampled_from(["\\boxed{", "\\boxed", "{", "}", "a", " ", "é", "🙂", "\\", "boxed"])).map("".join))
def test_boxed_matches_brute_force(text):
    assert find_span(text, "boxed") == naive_boxed(text)


def test_boxed_is_linear_on_many_unbalanced_boxes():
    text = "\\boxed{" * 30_000 + "x"  # quadratic for a per-box forward scan
    assert find_span(text, "boxed") is None
    text = "\\boxed{ok} " + "\\boxed{" * 30_000 + "x" + "}" * 29_999  # all but the first opener balance
    start = len("\\boxed{ok} ") + 30_000 * len("\\boxed{")
    assert find_span(text, "boxed") == (start, start + 1)
    assert find_span(text[:-29_999] + "} " * 5, "boxed") == (start, start + 1)


@pytest.mark.parametrize(
    ("rule", "text", "expected"),
    [
        (r"Answer: (\d+)", "Answer: 1. Answer: 22.", "22"),  # last match, group 1
        (r"\d+", "a 1 b 22 c", "22"),  # no group: the whole match
        (r"\d*", "a1b22c", "22"),  # empty matches are skipped
        (re.compile(r"(x)?y"), "xy y", None),  # group 1 did not take part in the last match
        (r"Answer: (\d*)", "Answer: 3 Answer: ", None),  # group 1 empty: no span
        (r"(\w+)@", "東京@ end", "東京"),
        (r"zzz", "abc", None),
    ],
)
def test_regex_rule(rule, text, expected):
    span = find_span(text, rule)
    assert (None if span is None else text[span[0] : span[1]]) == expected


def test_callable_rule():
    assert find_span("hello world", lambda t: (t.index("w"), len(t))) == (6, 11)
    assert find_span("hello", lambda t: None) is None
    assert find_span("hello", lambda t: (2, 2)) is None  # empty: no span


@pytest.mark.parametrize("bad", [[0, 1], (0, 1, 2), (0.0, 1.0), (True, 1), (3, 2), (-1, 2), (0, 6), "0,1", ("a", 1)])
def test_callable_rule_bad_return(bad):
    with pytest.raises(ValueError, match="`score_span`"):
        find_span("hello", lambda t: bad)


# ----------------------------------------------------------------------------------- char_to_byte / tokens_in_span


@FAST
@given(st.text(), st.data())
def test_char_to_byte_span_matches_naive(text, data):
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    span = char_to_byte_span(text, (start, end))
    assert span == naive_byte_span(text, (start, end))
    assert text.encode("utf-8")[span[0] : span[1]].decode("utf-8") == text[start:end]


@pytest.mark.parametrize("span", [(2, 1), (-1, 0), (0, 4)])
def test_char_to_byte_span_rejects_bad_span(span):
    with pytest.raises(ValueError, match="`span`"):
        char_to_byte_span("abc", span)


@st.composite
def byte_spans(draw):
    cuts = sorted(draw(st.lists(st.integers(0, 30), max_size=12)))
    points = [0, *cuts]
    return list(zip(points, points[1:]))


@FAST
@given(byte_spans(), st.integers(0, 30), st.integers(0, 30))
def test_tokens_in_span_matches_naive(spans, a, b):
    span = (min(a, b), max(a, b))
    assert tokens_in_span(spans, span) == naive_in_span(spans, span)


def test_tokens_in_span_examples():
    spans = [(0, 3), (3, 5), (5, 9), (9, 9)]
    assert tokens_in_span(spans, (4, 9)) == [False, True, True, False]
    assert tokens_in_span(spans, (9, 9)) == [False] * 4
    assert tokens_in_span(spans, None) == [False] * 4


def test_boxed_answer_tokens_end_to_end():
    text = "Thus é = \\boxed{東京🙂}."
    span = char_to_byte_span(text, find_span(text, "boxed"))
    data = text.encode("utf-8")
    one_byte_tokens = [(i, i + 1) for i in range(len(data))]
    flags = tokens_in_span(one_byte_tokens, span)
    assert bytes(data[i] for i, f in enumerate(flags) if f).decode("utf-8") == "東京🙂"
