"""(prompt, response) pairs from input rows: `prompt` + `response` columns, or one messages column (a list of
`{"role", "content"}` dicts) whose last assistant message is the response and the messages before it the prompt
(messages after it are ignored). The response column is the one given (every row must have it), else each row's own
`response`, or `completion` when it has no `response` (a file that mixes the two is read whole, with one warning
naming the first row that switched). A bad row raises `cme_reward.files.readers.InputError` naming the file, the
line/row and the problem; with `skip_bad=True` it is skipped and listed in `PairSet.skipped` instead. No model code."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..scoring.formatting import normalize_messages, response_text
from .readers import Record, bad_row, iter_records, json_type, warn_skipped

__all__ = ["PairSet", "load_pairs"]

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, Any]]
Response = str | list[dict[str, Any]]

RESPONSE_COLUMNS = ("response", "completion")  # looked for in this order when no response column is given


@dataclass
class PairSet:
    """The usable rows of an input file and their (prompt, response) pairs, in input order."""

    path: Path
    unit: str  # "line" or "row": what `Record.location` counts
    records: list[Record] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (location, reason) of rows left out
    prompt_column: str | None = None
    response_column: str | None = None
    messages_column: str | None = None
    as_chat: bool = False  # plain-text prompts were turned into one user message

    def __len__(self) -> int:
        return len(self.records)

    def where(self, location: int) -> str:
        """`"path: line 7"` - how messages name a row."""
        return f"{self.path}: {self.unit} {location}"


class _RowProblem(InputError):
    """A problem of one row, reported with its location (or skipped with --skip-bad)."""


def _has(row: dict[str, Any]) -> str:
    """`"this row has 'prompt', 'completion'"`: what a missing-column message shows of the row."""
    return f"this row has {', '.join(map(repr, row))}" if row else "this row has no columns"


def _prompt_value(row: dict[str, Any], column: str) -> Prompt:
    if column not in row:
        raise _RowProblem(f"missing column {column!r} ({_has(row)})")
    value = row[column]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            raise _RowProblem(f"column {column!r} is an empty list of messages")
        try:
            normalize_messages(value, f"column {column!r}, message")
        except (TypeError, ValueError) as err:
            raise _RowProblem(str(err)) from None
        return value
    raise _RowProblem(
        f"column {column!r} must be a string or a list of {{role, content}} messages, got {json_type(value)}"
    )


def _response_value(row: dict[str, Any], column: str) -> Response:
    value = row[column]
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        try:
            response_text(value, f"column {column!r}")
        except (TypeError, ValueError) as err:
            raise _RowProblem(str(err)) from None
        return value
    raise _RowProblem(f"column {column!r} must be a string or one assistant message, got {json_type(value)}")


class _ResponseColumn:
    """The response column of each row: the one given, else the first of `RESPONSE_COLUMNS` the row has. `name` is
    the first column read (recorded in checkpoints and reports); a row that uses the other one is read too, with one
    warning."""

    def __init__(self, given: str | None, unit: str, path: Path):
        self.name, self.given, self.unit, self.path = given, given is not None, unit, path
        self.chosen_at: int | None = None  # the first row read
        self.warned = False

    def of(self, row: dict[str, Any], location: int) -> str:
        """The column to read in `row`; raises `_RowProblem` when the row lacks it."""
        if self.given:
            if self.name not in row:
                raise _RowProblem(f"missing column {self.name!r} (given by --response-column; {_has(row)})")
            return self.name
        found = next((c for c in RESPONSE_COLUMNS if c in row), None)
        if found is None:
            raise _RowProblem(
                f"missing column 'response' (or 'completion') ({_has(row)}): name the response column with "
                "--response-column"
            )
        if self.name is None:
            self.name, self.chosen_at = found, location
        elif found != self.name and not self.warned:
            self.warned = True
            logger.warning(
                "%s: %s %d has its response in %r where %s %d has it in %r; each row's own column is read "
                "(--response-column makes one column required)",
                self.path, self.unit, location, found, self.unit, self.chosen_at, self.name,
            )  # fmt: skip
        return found


def _split_messages(row: dict[str, Any], column: str) -> tuple[Prompt, str]:
    """Last assistant message -> response; the messages before it -> prompt ("" when there are none)."""
    if column not in row:
        raise _RowProblem(f"missing column {column!r} ({_has(row)})")
    value = row[column]
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV cells hold messages as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise _RowProblem(
                f"column {column!r} holds text that is not a JSON list of messages ({err.msg})"
            ) from None
    if not isinstance(value, list):
        raise _RowProblem(f"column {column!r} must be a list of {{role, content}} messages, got {json_type(value)}")
    where = f"column {column!r}"
    if not value:
        raise _RowProblem(f"{where} is an empty list of messages")
    try:
        messages = normalize_messages(value, f"{where}, message")
    except (TypeError, ValueError) as err:
        raise _RowProblem(str(err)) from None
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        roles = [m["role"] for m in messages]
        raise _RowProblem(f"{where} has no assistant message to score (roles: {roles})")
    return (value[:last] or ""), messages[last]["content"]


def load_pairs(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    response_column: str | None = None,
    messages_column: str | None = None,
    as_chat: bool = False,
    split: str | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
) -> PairSet:
    """Read an input and extract its (prompt, response) pairs.

    Args:
        path (`str` or `Path`): the input file or datasets directory.
        prompt_column (`str`, *optional*, defaults to `"prompt"`): column holding the prompt (a string, or a list of
            messages).
        response_column (`str`, *optional*): column holding the response (every row must have it); `None` reads each
            row's `response`, or its `completion` when it has no `response`.
        messages_column (`str`, *optional*): take both from one list-of-messages column instead (the last assistant
            message is the response); exclusive with the other two.
        as_chat (`bool`, *optional*, defaults to `False`): score a plain-text prompt as a conversation: it becomes
            `[{"role": "user", "content": prompt}]` (the verifier's chat template applies) and the response its
            assistant answer. Prompts that already are messages are kept. Not with `messages_column`.
        split (`str`, *optional*): split of a saved `DatasetDict` (needed when it has several).
        skip_bad (`bool`, *optional*, defaults to `False`): skip bad rows (listed in `PairSet.skipped`) instead of
            raising `InputError`.
        limit (`int`, *optional*): stop after this many usable rows.

    Returns:
        [`PairSet`]: the usable rows and their pairs, in input order.

    Raises:
        InputError: a bad row (without `skip_bad`), an unreadable file, no usable row at all, or `as_chat` with
            `messages_column`.

    Example:

    ```python
    >>> pairs = load_pairs("pairs.jsonl", as_chat=True)
    >>> pairs.prompts[0], pairs.response_column
    ([{'role': 'user', 'content': 'What is 2 + 2?'}], 'response')
    ```
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be a positive integer, got {limit}")
    if as_chat and messages_column is not None:
        raise InputError("as_chat turns plain prompt columns into messages; a messages column already holds them")
    path = Path(path)
    unit, items = iter_records(path, split=split)
    out = PairSet(path=path, unit=unit, as_chat=as_chat)
    responses = _ResponseColumn(response_column, unit, path)
    if messages_column is not None:
        out.messages_column = messages_column
    else:
        out.prompt_column = prompt_column
    for location, row, problem in items:
        if limit is not None and len(out) >= limit:
            break
        if problem is None:
            try:
                if messages_column is not None:
                    prompt, response = _split_messages(row, messages_column)
                else:
                    prompt = _prompt_value(row, prompt_column)
                    response = _response_value(row, responses.of(row, location))
                    if as_chat and isinstance(prompt, str):
                        prompt = [{"role": "user", "content": prompt}]
            except _RowProblem as err:
                problem = str(err)
        if problem is not None:
            out.skipped.append(bad_row(path, unit, location, problem, skip_bad=skip_bad))
            continue
        out.records.append(Record(location, row))
        out.prompts.append(prompt)
        out.responses.append(response)
    out.response_column = responses.name if messages_column is None else None
    warn_skipped(path, unit, out.skipped)
    if not out.records:
        extra = f" ({len(out.skipped)} bad rows skipped)" if out.skipped else ""
        raise InputError(f"{path}: no rows to score{extra}")
    return out
