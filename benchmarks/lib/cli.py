"""The entry points' command lines: one way to build a parser, so that each module's `build_parser()` can be checked
against the commands the documentation gives."""

from __future__ import annotations

import argparse

__all__ = ["entry_parser"]


def entry_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """An empty parser for `python -m benchmarks.<name>`, its module docstring as the description (kept as written).

    Example:
        ```python
        >>> entry_parser("scoring", __doc__).prog
        'python -m benchmarks.scoring'
        ```
    """
    return argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
