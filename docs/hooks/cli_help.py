"""MkDocs hook: the `<!-- cme-reward-help -->` marker of a page becomes the help of `cme-reward` and of each of its
commands, generated from the parser itself (`cme_reward.cli.main.build_parser`), so the page cannot fall behind."""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- cme-reward-help -->"
COLUMNS = "100"  # argparse wraps at the terminal's width: a fixed one keeps the page the same on every machine


def _block(title: str, text: str) -> str:
    return f"### `{title}`\n\n```text\n{text.rstrip()}\n```\n"


def cli_help() -> str:
    """Markdown: `cme-reward --help`, then `cme-reward COMMAND --help` for each command, in the parser's order."""
    from cme_reward.cli.main import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        parser = build_parser()
        blocks = [_block(f"{parser.prog} --help", parser.format_help())]
        for action in parser._actions:  # argparse has no public access to its subparsers
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    blocks.append(_block(f"{parser.prog} {name} --help", sub.format_help()))
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(blocks)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return markdown.replace(MARKER, cli_help()) if MARKER in markdown else markdown
