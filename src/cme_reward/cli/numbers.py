"""One number formatter for everything the tools print or render."""

from __future__ import annotations

import math

__all__ = ["format_number"]


def format_number(value: float | None, digits: int = 3) -> str:
    """`value` with `digits` decimals; `"n/a"` for `None` or NaN, `"-inf"` / `"inf"` for infinities.

    Example:

    ```python
    >>> format_number(-1.23456), format_number(None), format_number(float("-inf"))
    ('-1.235', 'n/a', '-inf')
    ```
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:.{digits}f}"
