"""Reading (prompt, response) pairs from files for the ``cme-reward`` command line. No model code.

Supported inputs:

- ``.jsonl`` / ``.ndjson``: one JSON object per line, read line by line so every problem names its line;
- ``.json``: a JSON array of objects (each element's problems name the line it starts on), or JSON Lines;
- ``.csv``: a header line then one record per row (values stay strings; quoted fields may span lines);
- ``.parquet``: read with ``pyarrow``; problems name the 1-based row;
- a directory written by ``datasets.Dataset.save_to_disk`` (``--dataset DIR``); problems name the 1-based row.

Each row gives one pair: ``prompt`` + ``response`` columns (the response column falls back to ``completion``), or a
messages column (a list of ``{"role", "content"}`` dicts): its last assistant message is the response, the messages
before it are the prompt, messages after it are ignored. A bad row raises :class:`InputError` (a ``ValueError``)
naming the file, the line/row and the problem; with ``skip_bad=True`` it is skipped and listed in
:attr:`PairSet.skipped` instead.

The resumable output side lives in :mod:`cme_reward.resumable` and is re-exported here.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formatting import normalize_messages, response_text
from .resumable import (
    CheckpointError,
    ResumableWriter,
    WriteResult,
    encode_row,
    input_fingerprint,
    write_scored,
)

__all__ = [
    "CheckpointError",
    "InputError",
    "PairSet",
    "Record",
    "ResumableWriter",
    "WriteResult",
    "encode_row",
    "input_fingerprint",
    "iter_records",
    "load_pairs",
    "read_records",
    "write_scored",
]

logger = logging.getLogger(__name__)

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of non-UTF-8 bytes
_WS = re.compile(r"[ \t\n\r]*")

Prompt = str | list[dict[str, Any]]
Response = str | list[dict[str, Any]]
Item = tuple[int, dict[str, Any] | None, str | None]  # (location, row or None, problem or None)


class InputError(ValueError):
    """Bad input: the message names the file, the line (or row) and the problem."""


@dataclass(frozen=True)
class Record:
    """One input row: ``location`` is its 1-based line number (JSON, CSV) or row number (Parquet, datasets)."""

    location: int
    data: dict[str, Any]


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

    def __len__(self) -> int:
        return len(self.records)

    def where(self, location: int) -> str:
        """``"path: line 7"`` - how messages name a row."""
        return f"{self.path}: {self.unit} {location}"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _utf8_problem(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError as err:
        return f"invalid UTF-8 byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line (not UTF-8 text)"


def _iter_jsonl(path: Path, first_line: int = 1, data: bytes | None = None) -> Iterator[Item]:
    """Yields every non-blank line of a JSON Lines file, parsed or with its problem."""
    lines = io.BytesIO(data) if data is not None else path.open("rb")
    with lines:
        for lineno, raw in enumerate(lines, first_line):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            problem = _utf8_problem(raw)
            if problem:
                yield lineno, None, problem
                continue
            text = raw.decode("utf-8")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                yield lineno, None, f"invalid JSON ({err.msg} at column {err.colno})"
                continue
            if not isinstance(obj, dict):
                yield lineno, None, f"expected a JSON object, got a JSON {_json_type(obj)}"
                continue
            yield lineno, obj, None


def _iter_json(path: Path) -> Iterator[Item]:
    """A JSON array of objects, element by element (so each names its line); JSON Lines if it is not an array."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    text = data.decode("utf-8", "surrogateescape")  # bad bytes become lone surrogates, reported per element
    idx = _WS.match(text).end()
    if idx == len(text):
        return
    if text[idx] != "[":
        if text[idx] == "{" and "\n" in text.strip():
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None  # JSON Lines: one object per line
            if isinstance(whole, dict):
                raise InputError(
                    f"{path}: line 1: this file holds one JSON object; a .json input must be a JSON array of objects "
                    "(or JSON Lines, one object per line)"
                )
        yield from _iter_jsonl(path, data=data)
        return
    line, pos = 1, 0
    decoder = json.JSONDecoder()
    idx = _WS.match(text, idx + 1).end()
    if text.startswith("]", idx):
        idx += 1
    else:
        while True:
            line += text.count("\n", pos, idx)
            pos = idx
            try:
                obj, end = decoder.raw_decode(text, idx)
            except json.JSONDecodeError as err:
                raise InputError(
                    f"{path}: line {err.lineno}: invalid JSON ({err.msg} at column {err.colno}); "
                    "a malformed JSON array cannot be read past this point"
                ) from None
            if _SURROGATE.search(text, idx, end):
                yield line, None, "invalid UTF-8 bytes in this element (not UTF-8 text)"
            elif not isinstance(obj, dict):
                yield line, None, f"expected a JSON object, got a JSON {_json_type(obj)}"
            else:
                yield line, obj, None
            idx = _WS.match(text, end).end()
            if text.startswith(",", idx):
                idx = _WS.match(text, idx + 1).end()
            elif text.startswith("]", idx):
                idx += 1
                break
            else:
                at = text.count("\n", 0, idx) + 1
                raise InputError(f"{path}: line {at}: invalid JSON array (expected ',' or ']' after an element)")
    if _WS.match(text, idx).end() != len(text):
        at = text.count("\n", 0, idx) + 1
        raise InputError(f"{path}: line {at}: unexpected data after the JSON array")


def _iter_csv(path: Path) -> Iterator[Item]:
    """CSV with a header line; rows are named by the line they start on."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    csv.field_size_limit(2**31 - 1)  # long responses exceed the 128 KiB default
    reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        if any(_SURROGATE.search(name) for name in header):
            raise InputError(f"{path}: line 1: invalid UTF-8 bytes in the header (not UTF-8 text)")
        dupes = sorted({name for name in header if header.count(name) > 1})
        if dupes:
            raise InputError(f"{path}: line 1: duplicate column names in the header: {', '.join(map(repr, dupes))}")
        start = reader.line_num + 1
        for values in reader:
            location, start = start, reader.line_num + 1
            if not values:
                continue  # blank line
            if any(_SURROGATE.search(value) for value in values):
                yield location, None, "invalid UTF-8 bytes in this row (not UTF-8 text)"
            elif len(values) != len(header):
                yield location, None, f"expected {len(header)} fields (as in the header), got {len(values)}"
            else:
                yield location, dict(zip(header, values, strict=True)), None
    except csv.Error as err:
        raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None


def _iter_table_rows(rows: list[dict[str, Any]]) -> Iterator[Item]:
    for i, row in enumerate(rows, 1):
        yield i, row, None


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise InputError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None


def _read_dataset_dir(path: Path, split: str | None) -> list[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise InputError(f"{path}: not a dataset saved with `save_to_disk` ({err})") from None
    if isinstance(ds, DatasetDict):
        names = list(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            given = f"split {split!r} not found" if split else "this DatasetDict has several splits"
            raise InputError(f"{path}: {given}; choose one with --split ({', '.join(names)})")
        ds = ds[split]
    elif split is not None:
        raise InputError(f"{path}: --split {split!r} given, but this is a single Dataset without splits")
    return ds.to_list()


def iter_records(path: str | Path, *, split: str | None = None) -> tuple[str, Iterator[Item]]:
    """Opens an input; returns ``(unit, items)`` where items are ``(location, row, problem)``, exactly one of row or
    problem set. ``unit`` is ``"line"`` or ``"row"``. Structural errors that make the rest unreadable raise
    :class:`InputError`."""
    path = Path(path)
    if path.is_dir():
        return "row", _iter_table_rows(_read_dataset_dir(path, split))
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(FORMATS)
        raise InputError(f"{path}: unknown input format {path.suffix!r}; use one of {known} or a datasets directory")
    if split is not None:
        raise InputError(f"{path}: --split only applies to a datasets directory")
    if kind == "parquet":
        return "row", _iter_table_rows(_read_parquet(path))
    return "line", {"jsonl": _iter_jsonl, "json": _iter_json, "csv": _iter_csv}[kind](path)


def read_records(
    path: str | Path, *, split: str | None = None, skip_bad: bool = False
) -> tuple[list[Record], list[tuple[int, str]]]:
    """All rows of an input as :class:`Record` s, and the ``(location, reason)`` of the rows skipped (``skip_bad``)."""
    unit, items = iter_records(path, split=split)
    records, skipped = [], []
    for location, row, problem in items:
        if problem is None:
            records.append(Record(location, row))
        elif skip_bad:
            skipped.append((location, problem))
        else:
            raise InputError(f"{path}: {unit} {location}: {problem}")
    return records, skipped


# ---- pairs ---------------------------------------------------------------------------------------------------------


class _RowProblem(Exception):
    pass


def _prompt_value(row: dict[str, Any], column: str) -> Prompt:
    if column not in row:
        raise _RowProblem(f"missing column {column!r} (columns: {', '.join(map(repr, row)) or 'none'})")
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
        f"column {column!r} must be a string or a list of {{role, content}} messages, got {_json_type(value)}"
    )


def _response_value(row: dict[str, Any], column: str, tried: str) -> Response:
    if column not in row:
        raise _RowProblem(f"missing column {tried} (columns: {', '.join(map(repr, row)) or 'none'})")
    value = row[column]
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        try:
            response_text(value, f"column {column!r}")
        except (TypeError, ValueError) as err:
            raise _RowProblem(str(err)) from None
        return value
    raise _RowProblem(f"column {column!r} must be a string or one assistant message, got {_json_type(value)}")


def _split_messages(row: dict[str, Any], column: str) -> tuple[Prompt, str]:
    """Last assistant message -> response; the messages before it -> prompt ("" when there are none)."""
    if column not in row:
        raise _RowProblem(f"missing column {column!r} (columns: {', '.join(map(repr, row)) or 'none'})")
    value = row[column]
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV cells hold messages as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise _RowProblem(
                f"column {column!r} holds text that is not a JSON list of messages ({err.msg})"
            ) from None
    if not isinstance(value, list):
        raise _RowProblem(f"column {column!r} must be a list of {{role, content}} messages, got {_json_type(value)}")
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
    split: str | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
) -> PairSet:
    """Read an input and extract its (prompt, response) pairs.

    Args:
        path: the input file or datasets directory.
        prompt_column: column holding the prompt (a string, or a list of messages).
        response_column: column holding the response; `None` uses ``response``, or ``completion`` when the first
            row has no ``response`` but has ``completion``.
        messages_column: take both from one list-of-messages column instead (the last assistant message is the
            response); exclusive with the other two.
        split: split of a saved ``DatasetDict`` (needed when it has several).
        skip_bad: skip bad rows (listed in `PairSet.skipped`) instead of raising :class:`InputError`.
        limit: stop after this many usable rows.

    Raises:
        InputError: a bad row (without `skip_bad`), an unreadable file, or no usable row at all.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be a positive integer, got {limit}")
    path = Path(path)
    unit, items = iter_records(path, split=split)
    out = PairSet(path=path, unit=unit)
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
                    if out.response_column is None:
                        out.response_column = response_column or (
                            "completion" if "response" not in row and "completion" in row else "response"
                        )
                    tried = repr(out.response_column)
                    if response_column is None and out.response_column == "response":
                        tried = "'response' (or 'completion')"
                    prompt = _prompt_value(row, prompt_column)
                    response = _response_value(row, out.response_column, tried)
            except _RowProblem as err:
                problem = str(err)
        if problem is not None:
            if not skip_bad:
                raise InputError(f"{path}: {unit} {location}: {problem}")
            out.skipped.append((location, problem))
            continue
        out.records.append(Record(location, row))
        out.prompts.append(prompt)
        out.responses.append(response)
    if out.skipped:
        shown = "; ".join(f"{unit} {loc}: {why}" for loc, why in out.skipped[:5])
        more = f" (and {len(out.skipped) - 5} more)" if len(out.skipped) > 5 else ""
        logger.warning("%s: skipped %d bad rows: %s%s", path, len(out.skipped), shown, more)
    if not out.records:
        extra = f" ({len(out.skipped)} bad rows skipped)" if out.skipped else ""
        raise InputError(f"{path}: no rows to score{extra}")
    return out
