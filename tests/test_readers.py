"""Reading input rows: every format keeps its line (or row) numbers, and a file-level problem names the file."""

from __future__ import annotations

import csv

import pytest
from conftest import write_jsonl

from cme_reward.errors import InputError
from cme_reward.files.readers import iter_records, json_type, read_records

GOOD = '{"prompt": "p", "response": "r"}\n'


def test_jsonl_rows_and_line_numbers(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d", "x": 1}\r\n')
    records, skipped = read_records(path)
    assert [r.location for r in records] == [1, 3]  # BOM stripped, blank line skipped but counted
    assert [r.data for r in records] == [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d", "x": 1}]
    assert skipped == []


def test_json_array_element_lines(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(
        '[\n {"prompt": "a", "response": "b"},\n {"prompt": "c",\n  "response": "d"},\n'
        ' {"prompt": "e", "response": "f"}\n]'
    )
    assert [r.location for r in read_records(path)[0]] == [2, 3, 5]


def test_json_file_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "in.json", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    assert [r.data["prompt"] for r in read_records(path)[0]] == ["a", "c"]


def test_csv_multiline_fields_keep_line_numbers(tmp_path):
    path = tmp_path / "in.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerows([["prompt", "response", "n"], ["two\nlines", "r1", "1"], ["p2", "r2", "2"], ["p3", "", "3"]])
    records, _ = read_records(path)
    assert [r.location for r in records] == [2, 4, 5]
    assert records[0].data["prompt"] == "two\nlines"
    assert records[2].data == {"prompt": "p3", "response": "", "n": "3"}  # CSV values stay strings


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"prompt": "p", "response": }\n', r"invalid JSON \(Expecting value at column \d+\)"),
        ('{"prompt": "p"', "invalid JSON"),
        ("[1, 2]\n", "expected a JSON object, got a JSON array"),
        ('"text"\n', "expected a JSON object, got a JSON string"),
    ],
)
def test_bad_jsonl_line_is_named_or_skipped(tmp_path, line, pattern):
    path = tmp_path / "data.jsonl"
    path.write_text(GOOD + line + ("" if line.endswith("\n") else "\n") + GOOD)
    with pytest.raises(InputError, match=rf"data\.jsonl: line 2: {pattern}"):
        read_records(path)
    records, skipped = read_records(path, skip_bad=True)
    assert [r.location for r in records] == [1, 3] and [loc for loc, _ in skipped] == [2]


MESSAGES = '{"id": 7, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"]}'


@pytest.mark.parametrize(
    ("line", "column"),
    [
        (MESSAGES, MESSAGES.index("]") + 1),  # a message's closing brace is missing in the middle of the line
        ('{"prompt": "p", "response": "r"', 32),  # the row's closing brace is missing at the end of the line
        ('{"prompt": "p", "response": "r"   \r', 32),  # ... before trailing whitespace
    ],
)
def test_jsonl_error_points_at_the_fault(tmp_path, line, column):
    path = tmp_path / "data.jsonl"
    path.write_text(GOOD + line + "\n" + GOOD)
    with pytest.raises(InputError, match=rf"data\.jsonl: line 2: invalid JSON \(Expecting ',' delimiter at column "
                                         rf"{column}\)$"):  # fmt: skip
        read_records(path)


def test_json_array_error_points_at_the_line_of_the_fault(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {\n    "prompt": "p",\n    "response": "r"\n    "id": 3\n  }\n]\n')  # no ',' after "r"
    with pytest.raises(InputError, match=r"data\.json: line 4: invalid JSON \(Expecting ',' delimiter at column 20\)"):
        read_records(path)


def test_non_utf8_line_is_named_or_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD.encode() + b'{"prompt": "caf\xe9", "response": "r"}\n' + GOOD.encode())
    with pytest.raises(InputError, match=r"data\.jsonl: line 2: invalid UTF-8 byte 0xe9 at byte 16"):
        read_records(path)
    assert read_records(path, skip_bad=True)[1][0][0] == 2


# (file name, content, skip_bad, message): problems that stop reading, with or without skip_bad
FATAL = [
    ("data.csv", b"prompt,response\np,r\np\xff,r\n", False, r"data\.csv: line 3: invalid UTF-8"),
    ("data.json", b'[{"prompt": "p", "response": "r"},\n{"prompt": "\xff", "response": "r"}]', False,
     r"data\.json: line 2: invalid UTF-8"),
    ("d.csv", b"prompt,response\np,r\np,r,extra\n", False, r"d\.csv: line 3: expected 2 fields .*got 3"),
    ("d.csv", b"prompt,prompt\np,r\n", False, r"d\.csv: line 1: duplicate column names.*'prompt'"),
    ("d.json", b'[\n{"prompt": "p", "response": "r"},\n{"prompt": oops}\n]', True, r"d\.json: line 3: invalid JSON"),
    ("d.json", b'[{"prompt": "p", "response": "r"}\n{"prompt": "p", "response": "r"}]', False,
     r"d\.json: line 1: invalid JSON array \(expected ',' or '\]' after an element, at column 34\)"),
    ("d.json", b'[{"prompt": "p", "response": "r"}] {}', True,
     r"d\.json: line 1: unexpected data after the JSON array"),
    ("one.json", b'{\n "data": [{"prompt": "a", "response": "b"}]\n}\n', True,
     r"one\.json: line 1: this file holds one JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "skip_bad", "message"), FATAL)
def test_fatal_problems_name_file_and_line(tmp_path, name, content, skip_bad, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_records(tmp_path / name, skip_bad=skip_bad)


def test_file_level_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown input format '.txt'"):
        read_records(tmp_path / "x.txt")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InputError, match=r"x\.parquet: not a readable Parquet file"):
        read_records(tmp_path / "x.parquet")
    (tmp_path / "notads").mkdir()
    with pytest.raises(InputError, match="notads: not a dataset saved with"):
        read_records(tmp_path / "notads")
    with pytest.raises(InputError, match="--split only applies to a datasets directory"):
        read_records(write_jsonl(tmp_path / "in.jsonl", [{}]), split="train")


def test_parquet_rows_and_dataset_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "p0", "response": "r0", "k": 0}, {"prompt": "p1", "response": None, "k": 1}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "in.parquet"))
    unit, items = iter_records(tmp_path / "in.parquet")
    assert unit == "row" and list(items) == [(1, rows[0], None), (2, rows[1], None)]

    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match="several splits.*--split.*train"):
        read_records(tmp_path / "dd")
    with pytest.raises(InputError, match="split 'dev' not found"):
        read_records(tmp_path / "dd", split="dev")
    assert [r.data for r in read_records(tmp_path / "dd", split="test")[0]] == rows
    ds.save_to_disk(str(tmp_path / "single"))
    with pytest.raises(InputError, match="--split 'test' given, but this is a single Dataset without splits"):
        read_records(tmp_path / "single", split="test")


@pytest.mark.parametrize(
    ("value", "name"),
    [({}, "object"), ([], "array"), ("", "string"), (True, "boolean"), (1.5, "number"), (None, "null")],
)
def test_json_type(value, name):
    assert json_type(value) == name
