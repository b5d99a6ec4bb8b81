"""Reading benchmark result files (JSON written by `python -m benchmarks.scoring`), old and new."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

__all__ = ["load_reports", "portable_path"]

logger = logging.getLogger(__name__)


def load_reports(folder: str | os.PathLike, *, include_quick: bool = True) -> list[dict]:
    """Every benchmark report (a JSON with `results`) in `folder`, sorted by file name, each with its `file` name.

    Args:
        folder (`str` or `os.PathLike`): the results folder.
        include_quick (`bool`, *optional*, defaults to `True`): also reports of `--quick` runs.

    Returns:
        `list[dict]`: the reports; unreadable JSON files are skipped with a warning.

    Example:
        ```python
        >>> [r["file"] for r in load_reports("benchmarks/results", include_quick=False)]
        ```
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"results folder {str(folder)!r} does not exist or is not a folder")
    reports = []
    for path in sorted(folder.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("skipping %s: %s", path.name, err)
            continue
        if not isinstance(report, dict) or "results" not in report:
            continue
        if not include_quick and report.get("args", {}).get("quick"):
            continue
        reports.append(dict(report, file=path.name))
    return reports


def portable_path(path: str | os.PathLike) -> str:
    """`path` relative to the working directory when it lies under it, else its file name: result files never record
    where the machine that wrote them keeps its files."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name
