"""Where the benchmarks keep their results, writing them (atomically, never a machine's own path inside), and reading
the files of `python -m benchmarks.scoring`, old and new."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cme_reward.files.atomic import write_atomic

__all__ = ["RESULTS", "load_reports", "portable_name", "portable_path", "results_path", "write_result"]

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parents[1] / "results"  # benchmarks/results: the committed results


def results_path(name: str) -> Path:
    """`benchmarks/results/<name>`: the default output of every entry point.

    Example:
        ```python
        >>> results_path("serve_load.json").parent.name
        'results'
        ```
    """
    return RESULTS / name


def write_result(path: str | os.PathLike, result: dict | str) -> Path:
    """Write `result` to `path` atomically (`cme_reward.files.atomic.write_atomic`): a dict as indented JSON, text as
    it is; both end with a newline.

    Returns:
        `Path`: `path`.
    """
    text = result if isinstance(result, str) else json.dumps(result, indent=1)
    return write_atomic(path, text if text.endswith("\n") else text + "\n")


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


def portable_name(name: str | None) -> str | None:
    """[`portable_path`] of `name` when it is a local path (absolute, or an existing file or folder), else `name`:
    a model id that may be either (a vLLM server's served id is the directory it was started with)."""
    if name is None or not (Path(name).is_absolute() or Path(name).exists()):
        return name
    return portable_path(name)
