"""(prompt, response) pairs from input rows: columns, messages, limits, and every bad-row kind naming file, line and
column (or skipped and reported with `skip_bad`)."""

from __future__ import annotations

import csv
import json
import logging
import re

import pytest
from conftest import write_jsonl

from cme_reward.errors import InputError
from cme_reward.files.pairs import load_pairs

GOOD = '{"prompt": "p", "response": "r"}\n'


def test_prompt_and_response_columns(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    pairs = load_pairs(path)
    assert pairs.prompts == ["a", "c"] and pairs.responses == ["b", "d"] and len(pairs) == 2
    assert (pairs.prompt_column, pairs.response_column, pairs.messages_column) == ("prompt", "response", None)
    assert pairs.where(2) == f"{path}: line 2"


def test_completion_column_fallback_and_conversational_values(tmp_path):
    conv = [{"role": "user", "content": "hi"}]
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": conv, "completion": [{"role": "assistant", "content": "hello"}]},
        {"prompt": "plain", "completion": "text"},
    ])  # fmt: skip
    pairs = load_pairs(path)
    assert pairs.response_column == "completion"
    assert pairs.prompts == [conv, "plain"]
    assert pairs.responses[1] == "text"


def test_a_file_that_mixes_response_and_completion_is_read_whole_with_one_warning(tmp_path, caplog):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "completion": "d"}, {"prompt": "e", "completion": "f"},
            {"prompt": "g", "response": "h", "completion": "not read"}]  # fmt: skip
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="cme_reward.files.pairs"):
        pairs = load_pairs(path)
    assert pairs.responses == ["b", "d", "f", "h"] and pairs.response_column == "response" and not pairs.skipped
    warnings = [r.getMessage() for r in caplog.records if "each row's own column" in r.getMessage()]
    assert len(warnings) == 1
    assert "line 2 has its response in 'completion' where line 1 has it in 'response'" in warnings[0]
    with pytest.raises(InputError, match=re.escape("line 2: missing column 'response' (given by --response-column; "
                                                   "this row has 'prompt', 'completion')")):  # fmt: skip
        load_pairs(path, response_column="response")
    with pytest.raises(InputError, match=re.escape("line 1: missing column 'completion' (given by --response-column; "
                                                   "this row has 'prompt', 'response')")):  # fmt: skip
        load_pairs(path, response_column="completion")


def test_a_row_with_neither_response_column_is_a_bad_row(tmp_path):
    rows = [{"prompt": "a", "answer": "b"}, {"prompt": "c", "completion": "d"}, {"prompt": "e", "response": "f"}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(InputError, match=re.escape("line 1: missing column 'response' (or 'completion') (this row "
                                                   "has 'prompt', 'answer'): name the response column with "
                                                   "--response-column")):  # fmt: skip
        load_pairs(path)
    pairs = load_pairs(path, skip_bad=True)
    assert pairs.response_column == "completion" and pairs.responses == ["d", "f"]
    assert [loc for loc, _ in pairs.skipped] == [1]


def test_as_chat_makes_plain_prompts_one_user_turn(tmp_path):
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rows = [{"prompt": "2 + 2?", "response": "4"}, {"prompt": conv, "response": "x"}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    pairs = load_pairs(path, as_chat=True)
    assert pairs.as_chat and pairs.prompts == [[{"role": "user", "content": "2 + 2?"}], conv]
    assert pairs.responses == ["4", "x"]  # scored as the assistant's answer
    assert load_pairs(path).prompts[0] == "2 + 2?" and not load_pairs(path).as_chat
    with pytest.raises(InputError, match="as_chat turns plain prompt columns into messages"):
        load_pairs(path, messages_column="messages", as_chat=True)


def test_messages_column_splits_at_last_assistant(tmp_path):
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "thanks"},  # after the last assistant message: ignored
    ]
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"messages": msgs}, {"messages": [{"role": "assistant", "content": "hi"}]}]
    )
    pairs = load_pairs(path, messages_column="messages")
    assert pairs.prompts[0] == msgs[:4]
    assert pairs.responses == ["6", "hi"]
    assert pairs.prompts[1] == ""  # nothing before the assistant message: an empty plain prompt


def test_csv_messages_as_json_text(tmp_path):
    path = tmp_path / "in.csv"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a, b"}]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["chat"], [json.dumps(msgs)]])
    pairs = load_pairs(path, messages_column="chat")
    assert pairs.prompts == [msgs[:1]] and pairs.responses == ["a, b"]


def test_limit_stops_at_usable_rows(tmp_path):
    rows = [{"id": i, "prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]
    rows[2] = {"id": 2, "prompt": 5}  # a bad row does not count towards the limit
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    assert [r.data["id"] for r in load_pairs(path, limit=5, skip_bad=True).records] == [0, 1, 3, 4, 5]
    with pytest.raises(InputError, match="limit must be a positive integer, got 0"):
        load_pairs(path, limit=0)


def test_parquet_and_dataset_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "p0", "response": "r0", "k": 0}, {"prompt": "p1", "response": None, "k": 1}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "in.parquet"))
    with pytest.raises(InputError, match=r"in\.parquet: row 2: column 'response' must be a string.*got null"):
        load_pairs(tmp_path / "in.parquet")
    pairs = load_pairs(tmp_path / "in.parquet", skip_bad=True)
    assert pairs.unit == "row" and pairs.skipped[0][0] == 2 and pairs.records[0].data == rows[0]
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    assert load_pairs(tmp_path / "dd", split="test", limit=1).prompts == ["p0"]


BAD_ROWS = [
    ('{"prompt": "p"}\n', r"missing column 'response' \(or 'completion'\) \(this row has 'prompt'\)"),
    ('{"response": "r"}\n', "missing column 'prompt'"),
    ('{"prompt": 7, "response": "r"}\n', "column 'prompt' must be a string or a list.*got number"),
    ('{"prompt": null, "response": "r"}\n', "column 'prompt' must be .*got null"),
    ('{"prompt": {"a": 1}, "response": "r"}\n', "column 'prompt' must be .*got object"),
    ('{"prompt": "p", "response": 1.5}\n', "column 'response' must be a string .*got number"),
    ('{"prompt": [], "response": "r"}\n', "column 'prompt' is an empty list"),
    ('{"prompt": [{"role": "user"}], "response": "r"}\n', r"column 'prompt', message\[0\] is missing \['content'\]"),
    ('{"prompt": "p", "response": [{"role": "user", "content": "x"}]}\n', "column 'response' must be one assistant"),
]


@pytest.mark.parametrize(("line", "pattern"), BAD_ROWS)
def test_bad_rows_name_file_line_and_column(tmp_path, line, pattern):
    path = tmp_path / "data.jsonl"
    path.write_text(GOOD + line + GOOD)
    with pytest.raises(InputError, match=rf"data\.jsonl: line 2: {pattern}"):
        load_pairs(path)
    pairs = load_pairs(path, skip_bad=True)
    assert [r.location for r in pairs.records] == [1, 3]
    assert [loc for loc, _ in pairs.skipped] == [2]


MALFORMED_MESSAGES = [
    ({"messages": "hello"}, "column 'messages' must be a list of .*got string"),
    ({"messages": []}, "column 'messages' is an empty list"),
    ({"messages": [{"role": "user", "content": "q"}]}, "column 'messages' has no assistant message"),
    ({"messages": ["hi"]}, r"column 'messages', message\[0\] must be a dict"),
    ({"messages": [{"role": "bot", "content": "x"}]}, r"column 'messages', message\[0\] has unknown role 'bot'"),
    ({"messages": [{"role": "assistant", "content": 3}]}, r"column 'messages', message\[0\] content must be a str"),
    (
        {"messages": [{"role": "user", "content": "q"}, {"content": "a"}]},
        r"column 'messages', message\[1\] is missing",
    ),
    ({"messages": '["not", json'}, "column 'messages' holds text that is not a JSON list of messages"),
    ({"chat": []}, "missing column 'messages'"),
]


@pytest.mark.parametrize(("row", "pattern"), MALFORMED_MESSAGES)
def test_malformed_messages(tmp_path, row, pattern):
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [ok, ok, row])
    with pytest.raises(InputError, match=rf"chat\.jsonl: line 3: {pattern}"):
        load_pairs(path, messages_column="messages")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.jsonl", "", "e.jsonl: no rows to score"),
        ("e.jsonl", "\n\n  \n", "e.jsonl: no rows to score"),
        ("e.json", "[]", "e.json: no rows to score"),
        ("e.json", "", "e.json: no rows to score"),
        ("e.csv", "", "e.csv: no rows to score"),
        ("e.csv", "prompt,response\n", "e.csv: no rows to score"),
        ("bad.jsonl", "nope\n[]\n", "bad.jsonl: no rows to score (2 bad rows skipped)"),
    ],
)
def test_no_usable_rows(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(message)):
        load_pairs(path, skip_bad=True)
    if "skipped" not in message:
        with pytest.raises(InputError, match=re.escape(message)):
            load_pairs(path)


def test_skip_bad_reports_every_bad_row_in_order(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        GOOD.encode() + b"{bad json\n" + b'{"prompt": "\xc3"}\n' + b'{"prompt": "p"}\n' + GOOD.encode() + b"42\n"
    )
    pairs = load_pairs(path, skip_bad=True)
    assert [r.location for r in pairs.records] == [1, 5]
    assert [loc for loc, _ in pairs.skipped] == [2, 3, 4, 6]
    reasons = [why for _, why in pairs.skipped]
    assert "invalid JSON" in reasons[0] and "UTF-8" in reasons[1] and "missing column" in reasons[2]
    assert "skipped 4 bad rows" in caplog.text and "line 2" in caplog.text
