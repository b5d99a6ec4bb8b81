"""`format_number`: the one number format of everything the tools print or render."""

from __future__ import annotations

import math

import pytest

from cme_reward.cli.numbers import format_number


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (-1.23456, 3, "-1.235"),
        (2, 3, "2.000"),
        (0.5, 0, "0"),
        (-0.00004, 4, "-0.0000"),
        (None, 3, "n/a"),
        (math.nan, 3, "n/a"),
        (-math.inf, 2, "-inf"),
        (math.inf, 2, "inf"),
    ],
)
def test_format_number(value, digits, text):
    assert format_number(value, digits) == text
