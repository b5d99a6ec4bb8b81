"""Reading rows from input files for the `cme-reward` command line. No model code.

Supported inputs:

- `.jsonl` / `.ndjson`: one JSON object per line, read line by line so every problem names its line;
- `.json`: a JSON array of objects (each element's problems name the line it starts on), or JSON Lines;
- `.csv`: a header line then one record per row (values stay strings; quoted fields may span lines);
- `.parquet`: read with `pyarrow`; problems name the 1-based row;
- a directory written by `datasets.Dataset.save_to_disk` (`--dataset DIR`); problems name the 1-based row.

Every reader yields `(location, row, problem)` items so that each problem names its line or row; bad input raises
`InputError` (a `ValueError`) naming the file, the line/row and the problem. Turning rows into (prompt,
response) pairs is `cme_reward.files.pairs`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["FORMATS", "Item", "Record", "bad_row", "iter_records", "json_type", "read_records", "warn_skipped"]

logger = logging.getLogger(__name__)

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of non-UTF-8 bytes
_WS = re.compile(r"[ \t\n\r]*")

Item = tuple[int, dict[str, Any] | None, str | None]  # (location, row or None, problem or None)


@dataclass(frozen=True)
class Record:
    """One input row: `location` is its 1-based line number (JSON, CSV) or row number (Parquet, datasets)."""

    location: int
    data: dict[str, Any]


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _fault(text: str, pos: int) -> tuple[int, int]:
    """1-based (line, column) of a JSON error at `pos`, placed where the fault is. The decoder reports the token at
    which it gave up; when whitespace with a line break lies before that token (a missing `}` or `,` at the end of a
    line), the fault is just after the last character before the whitespace, not at the start of the next line."""
    start = pos
    while start > 0 and text[start - 1] in " \t\r\n":
        start -= 1
    if "\n" in text[start:pos] or (pos == len(text) and start < pos):
        pos = start
    line = text.count("\n", 0, pos) + 1
    return line, pos - text.rfind("\n", 0, pos)


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
                yield lineno, None, f"invalid JSON ({err.msg} at column {_fault(text, err.pos)[1]})"
                continue
            if not isinstance(obj, dict):
                yield lineno, None, f"expected a JSON object, got a JSON {json_type(obj)}"
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
                at, column = _fault(text, err.pos)
                raise InputError(
                    f"{path}: line {at}: invalid JSON ({err.msg} at column {column}); "
                    "a malformed JSON array cannot be read past this point"
                ) from None
            if _SURROGATE.search(text, idx, end):
                yield line, None, "invalid UTF-8 bytes in this element (not UTF-8 text)"
            elif not isinstance(obj, dict):
                yield line, None, f"expected a JSON object, got a JSON {json_type(obj)}"
            else:
                yield line, obj, None
            idx = _WS.match(text, end).end()
            if text.startswith(",", idx):
                idx = _WS.match(text, idx + 1).end()
            elif text.startswith("]", idx):
                idx += 1
                break
            else:
                at, column = _fault(text, idx)
                raise InputError(
                    f"{path}: line {at}: invalid JSON array (expected ',' or ']' after an element, at column {column})"
                )
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
    """Opens an input; returns `(unit, items)` where items are `(location, row, problem)`, exactly one of row or
    problem set. `unit` is `"line"` or `"row"`. Structural errors that make the rest unreadable raise
    `InputError`."""
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
    """All rows of an input as `Record` s, and the `(location, reason)` of the rows skipped (`skip_bad`)."""
    unit, items = iter_records(path, split=split)
    records, skipped = [], []
    for location, row, problem in items:
        if problem is None:
            records.append(Record(location, row))
        else:
            skipped.append(bad_row(path, unit, location, problem, skip_bad=skip_bad))
    return records, skipped


def bad_row(path: str | Path, unit: str, location: int, problem: str, *, skip_bad: bool) -> tuple[int, str]:
    """A bad row: raises `InputError` naming the file, the line/row and the problem, or with `skip_bad` returns the
    `(location, problem)` to list among the skipped rows."""
    if not skip_bad:
        raise InputError(f"{path}: {unit} {location}: {problem}")
    return location, problem


def warn_skipped(path: str | Path, unit: str, skipped: list[tuple[int, str]]) -> None:
    """One warning for the rows skipped from `path`: how many, and the first five with their reasons."""
    if skipped:
        shown = "; ".join(f"{unit} {loc}: {why}" for loc, why in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        logger.warning("%s: skipped %d bad rows: %s%s", path, len(skipped), shown, more)
