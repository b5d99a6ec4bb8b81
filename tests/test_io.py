"""Input reading (every bad-row kind names file/line/column) and the resumable writer, with a fake scorer."""

from __future__ import annotations

import csv
import datetime
import json
import math
import re
from pathlib import Path

import pytest

from cme_reward import resumable
from cme_reward.io import (
    CheckpointError,
    InputError,
    ResumableWriter,
    encode_row,
    input_fingerprint,
    load_pairs,
    read_records,
    write_scored,
)

# ---- helpers --------------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(n: int) -> list[dict]:
    return [{"id": i, "prompt": f"question {i} ü", "response": "" if i % 7 == 3 else f"answer {i} " * (i % 5)}
            for i in range(n)]  # fmt: skip


class FakeScorer:
    """Deterministic stand-in for the verifier: score = f(prompt, response); counts the pairs it scores."""

    def __init__(self, fail_after_calls: int | None = None):
        self.calls = 0
        self.pairs = 0
        self.fail_after_calls = fail_after_calls

    def __call__(self, prompts, responses):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.pairs += len(prompts)
        return [
            {"cme": None if not r else -(len(r) % 13) / 7 - len(p) / 100}
            for p, r in zip(prompts, responses, strict=True)
        ]


def run(tmp: Path, rows: list[dict], *, scorer=None, options=None, chunk_rows=4, overwrite=False, name="out.jsonl"):
    src = write_jsonl(tmp / "in.jsonl", rows) if not (tmp / "in.jsonl").exists() else tmp / "in.jsonl"
    pairs = load_pairs(src)
    return write_scored(
        [r.data for r in pairs.records],
        pairs.prompts,
        pairs.responses,
        tmp / name,
        scorer=scorer or FakeScorer(),
        fingerprint=input_fingerprint(src),
        options=options or {"verifier": "fake", "dtype": "auto"},
        chunk_rows=chunk_rows,
        overwrite=overwrite,
    )


def leftovers(tmp: Path, name="out.jsonl") -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(name + "."))


# ---- reading: good inputs ---------------------------------------------------------------------------------------


def test_jsonl_rows_and_line_numbers(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d", "x": 1}\r\n')
    pairs = load_pairs(path)
    assert [r.location for r in pairs.records] == [1, 3]  # BOM stripped, blank line skipped but counted
    assert pairs.prompts == ["a", "c"] and pairs.responses == ["b", "d"]
    assert pairs.records[1].data == {"prompt": "c", "response": "d", "x": 1}


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


def test_json_array_element_lines(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(
        '[\n {"prompt": "a", "response": "b"},\n {"prompt": "c",\n  "response": "d"},\n'
        ' {"prompt": "e", "response": "f"}\n]'
    )
    assert [r.location for r in read_records(path)[0]] == [2, 3, 5]


def test_json_file_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "in.json", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    assert load_pairs(path).prompts == ["a", "c"]


def test_json_single_object_is_refused(tmp_path):
    path = tmp_path / "one.json"
    path.write_text('{\n "data": [{"prompt": "a", "response": "b"}]\n}\n')
    with pytest.raises(InputError, match=r"one\.json: line 1: this file holds one JSON object"):
        load_pairs(path)


def test_csv_multiline_fields_keep_line_numbers(tmp_path):
    path = tmp_path / "in.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerows([["prompt", "response", "n"], ["two\nlines", "r1", "1"], ["p2", "r2", "2"], ["p3", "", "3"]])
    pairs = load_pairs(path)
    assert [r.location for r in pairs.records] == [2, 4, 5]
    assert pairs.prompts[0] == "two\nlines"
    assert pairs.records[2].data == {"prompt": "p3", "response": "", "n": "3"}  # CSV values stay strings


def test_csv_messages_as_json_text(tmp_path):
    path = tmp_path / "in.csv"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a, b"}]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["chat"], [json.dumps(msgs)]])
    pairs = load_pairs(path, messages_column="chat")
    assert pairs.prompts == [msgs[:1]] and pairs.responses == ["a, b"]


def test_parquet_and_dataset_dir(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "p0", "response": "r0", "k": 0}, {"prompt": "p1", "response": None, "k": 1}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "in.parquet"))
    with pytest.raises(InputError, match=r"in\.parquet: row 2: column 'response' must be a string.*got null"):
        load_pairs(tmp_path / "in.parquet")
    pairs = load_pairs(tmp_path / "in.parquet", skip_bad=True)
    assert pairs.unit == "row" and pairs.skipped[0][0] == 2 and pairs.records[0].data == rows[0]

    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match="several splits.*--split.*train"):
        load_pairs(tmp_path / "dd")
    with pytest.raises(InputError, match="split 'dev' not found"):
        load_pairs(tmp_path / "dd", split="dev")
    assert load_pairs(tmp_path / "dd", split="test", limit=1).prompts == ["p0"]


def test_limit_stops_at_usable_rows(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", rows_of(20))
    assert [r.data["id"] for r in load_pairs(path, limit=5).records] == [0, 1, 2, 3, 4]


# ---- reading: every bad-row kind --------------------------------------------------------------------------------

GOOD = '{"prompt": "p", "response": "r"}\n'
BAD_LINES = [
    ('{"prompt": "p", "response": }\n', 2, r"invalid JSON \(Expecting value at column \d+\)"),
    ('{"prompt": "p"', 2, "invalid JSON"),
    ("[1, 2]\n", 2, "expected a JSON object, got a JSON array"),
    ('"text"\n', 2, "expected a JSON object, got a JSON string"),
    ('{"prompt": "p"}\n', 2, r"missing column 'response' \(or 'completion'\)"),
    ('{"response": "r"}\n', 2, "missing column 'prompt'"),
    ('{"prompt": 7, "response": "r"}\n', 2, "column 'prompt' must be a string or a list.*got number"),
    ('{"prompt": null, "response": "r"}\n', 2, "column 'prompt' must be .*got null"),
    ('{"prompt": {"a": 1}, "response": "r"}\n', 2, "column 'prompt' must be .*got object"),
    ('{"prompt": "p", "response": 1.5}\n', 2, "column 'response' must be a string .*got number"),
    ('{"prompt": [], "response": "r"}\n', 2, "column 'prompt' is an empty list"),
    (
        '{"prompt": [{"role": "user"}], "response": "r"}\n',
        2,
        r"column 'prompt', message\[0\] is missing \['content'\]",
    ),
    (
        '{"prompt": "p", "response": [{"role": "user", "content": "x"}]}\n',
        2,
        "column 'response' must be one assistant",
    ),
]


@pytest.mark.parametrize(("line", "lineno", "pattern"), BAD_LINES)
def test_bad_jsonl_rows_name_file_line_and_column(tmp_path, line, lineno, pattern):
    path = tmp_path / "data.jsonl"
    path.write_text(GOOD + line + ("" if line.endswith("\n") else "\n") + GOOD)
    with pytest.raises(InputError, match=rf"data\.jsonl: line {lineno}: {pattern}"):
        load_pairs(path)
    pairs = load_pairs(path, skip_bad=True)
    assert [r.location for r in pairs.records] == [1, 3]
    assert [loc for loc, _ in pairs.skipped] == [lineno]


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD.encode() + b'{"prompt": "caf\xe9", "response": "r"}\n' + GOOD.encode())
    with pytest.raises(InputError, match=r"data\.jsonl: line 2: invalid UTF-8 byte 0xe9 at byte 16"):
        load_pairs(path)
    assert load_pairs(path, skip_bad=True).skipped[0][0] == 2

    csv_path = tmp_path / "data.csv"
    csv_path.write_bytes(b"prompt,response\np,r\np\xff,r\n")
    with pytest.raises(InputError, match=r"data\.csv: line 3: invalid UTF-8"):
        load_pairs(csv_path)

    json_path = tmp_path / "data.json"
    json_path.write_bytes(b'[{"prompt": "p", "response": "r"},\n{"prompt": "\xff", "response": "r"}]')
    with pytest.raises(InputError, match=r"data\.json: line 2: invalid UTF-8"):
        load_pairs(json_path)


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
    ({"chat": []}, "missing column 'messages'"),
]


@pytest.mark.parametrize(("row", "pattern"), MALFORMED_MESSAGES)
def test_malformed_messages(tmp_path, row, pattern):
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [ok, ok, row])
    with pytest.raises(InputError, match=rf"chat\.jsonl: line 3: {pattern}"):
        load_pairs(path, messages_column="messages")


def test_csv_structure_errors(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,response\np,r\np,r,extra\n")
    with pytest.raises(InputError, match=r"d\.csv: line 3: expected 2 fields .*got 3"):
        load_pairs(path)
    path.write_text("prompt,prompt\np,r\n")
    with pytest.raises(InputError, match=r"d\.csv: line 1: duplicate column names.*'prompt'"):
        load_pairs(path)


def test_malformed_json_array_is_fatal_even_with_skip_bad(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"prompt": "p", "response": "r"},\n{"prompt": oops}\n]')
    with pytest.raises(InputError, match=r"d\.json: line 3: invalid JSON"):
        load_pairs(path, skip_bad=True)
    path.write_text('[{"prompt": "p", "response": "r"}\n{"prompt": "p", "response": "r"}]')
    with pytest.raises(InputError, match=r"d\.json: line 2: invalid JSON array"):
        load_pairs(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("e.jsonl", ""),
        ("e.jsonl", "\n\n  \n"),
        ("e.json", "[]"),
        ("e.json", ""),
        ("e.csv", ""),
        ("e.csv", "prompt,response\n"),
    ],
)
def test_empty_inputs(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(f"{name}: no rows to score")):
        load_pairs(path)


def test_all_rows_bad_with_skip_bad(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("nope\n[]\n")
    with pytest.raises(InputError, match=r"bad\.jsonl: no rows to score \(2 bad rows skipped\)"):
        load_pairs(path, skip_bad=True)


def test_file_level_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown input format '.txt'"):
        load_pairs(tmp_path / "x.txt")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InputError, match=r"x\.parquet: not a readable Parquet file"):
        load_pairs(tmp_path / "x.parquet")
    (tmp_path / "notads").mkdir()
    with pytest.raises(InputError, match="notads: not a dataset saved with"):
        load_pairs(tmp_path / "notads")


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


# ---- JSON encoding ----------------------------------------------------------------------------------------------


def test_encode_row_strict_json():
    np = pytest.importorskip("numpy")
    row = {"a": float("nan"), "b": [float("inf"), 1.5], "t": datetime.date(2024, 1, 2), "n": np.float32(0.5),
           "arr": np.arange(3), "s": "caf\u00e9 \ud800", "cme": None}  # fmt: skip
    line = encode_row(row)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = json.loads(line)
    assert back["a"] is None and back["b"] == [None, 1.5] and back["t"] == "2024-01-02"
    assert back["n"] == 0.5 and back["arr"] == [0, 1, 2] and back["cme"] is None
    assert back["s"] == "caf\u00e9 \ud800"  # a lone surrogate survives as a JSON escape


def test_input_fingerprint_tracks_content(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", rows_of(3))
    first = input_fingerprint(path)
    path.touch()
    assert input_fingerprint(path)["sha256"] == first["sha256"]  # mtime alone changes nothing
    path.write_text(path.read_text().replace("question 0", "question X"))
    assert input_fingerprint(path)["sha256"] != first["sha256"]


# ---- resumable output ----------------------------------------------------------------------------------------------


def test_uninterrupted_output_is_input_plus_score(tmp_path):
    rows = rows_of(10)
    result = run(tmp_path, rows)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    scorer = FakeScorer()
    expected = scorer([r["prompt"] for r in rows], [r["response"] for r in rows])
    assert out == [{**r, **e} for r, e in zip(rows, expected, strict=True)]
    assert any(o["cme"] is None for o in out)  # empty responses -> null
    assert result.rows == 10 and result.scored_rows == 10 and result.resumed_rows == 0
    assert result.scores == [e["cme"] for e in expected]
    assert leftovers(tmp_path) == []


def test_output_appears_only_at_the_end(tmp_path):
    seen = []

    def scorer(prompts, responses):
        seen.append(((tmp_path / "out.jsonl").exists(), (tmp_path / "out.jsonl.partial").exists()))
        return FakeScorer()(prompts, responses)

    run(tmp_path, rows_of(9), scorer=scorer)
    assert seen == [(False, True)] * 3
    assert (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("fail_after", [0, 1, 3, 4])
def test_interrupted_then_resumed_is_identical(tmp_path, fail_after):
    rows = rows_of(17)
    ref = tmp_path / "ref"
    ref.mkdir()
    run(ref, rows)
    reference = (ref / "out.jsonl").read_bytes()

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, rows, scorer=FakeScorer(fail_after_calls=fail_after))
    assert not (tmp_path / "out.jsonl").exists()
    ckpt = json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())
    assert ckpt["rows_done"] == 4 * fail_after
    assert (tmp_path / "out.jsonl.partial").stat().st_size == ckpt["bytes_done"]

    scorer = FakeScorer()
    result = run(tmp_path, rows, scorer=scorer)
    assert (tmp_path / "out.jsonl").read_bytes() == reference
    assert scorer.pairs == 17 - 4 * fail_after  # finished rows are not scored again
    assert result.resumed_rows == 4 * fail_after and len(result.scores) == 17
    assert leftovers(tmp_path) == []


class Crash(BaseException):
    pass


@pytest.mark.parametrize("crash_at", range(1, 6))
@pytest.mark.parametrize("tail", ["all", "half", "none"])
def test_crash_between_data_and_checkpoint(tmp_path, monkeypatch, crash_at, tail):
    """Die after a chunk's bytes hit the partial file but before the checkpoint moved: those bytes (or a half-written
    part of them) must be dropped on resume, never duplicated."""
    rows = rows_of(18)
    ref = tmp_path / "ref"
    ref.mkdir()
    run(ref, rows)
    reference = (ref / "out.jsonl").read_bytes()

    real = resumable._write_json_atomic
    calls = {"n": 0}

    def flaky(path, obj):
        calls["n"] += 1
        if calls["n"] == crash_at + 1:  # call 1 is the fresh checkpoint, call k+1 follows chunk k
            raise Crash
        real(path, obj)

    monkeypatch.setattr(resumable, "_write_json_atomic", flaky)
    with pytest.raises(Crash):
        run(tmp_path, rows)
    monkeypatch.setattr(resumable, "_write_json_atomic", real)
    ckpt = json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())
    partial = tmp_path / "out.jsonl.partial"
    size = partial.stat().st_size
    assert size > ckpt["bytes_done"] and ckpt["rows_done"] == 4 * (crash_at - 1)
    if tail != "all":  # a torn write: only part of the unacknowledged chunk reached the disk
        keep = ckpt["bytes_done"] + ((size - ckpt["bytes_done"]) // 2 if tail == "half" else 0)
        with partial.open("r+b") as fh:
            fh.truncate(keep)
    run(tmp_path, rows)
    assert (tmp_path / "out.jsonl").read_bytes() == reference


def test_crash_after_last_checkpoint_before_rename(tmp_path, monkeypatch):
    rows = rows_of(8)
    monkeypatch.setattr(resumable.os, "replace", _fail_on_partial(resumable.os.replace))
    with pytest.raises(Crash):
        run(tmp_path, rows)
    monkeypatch.undo()
    assert not (tmp_path / "out.jsonl").exists()
    scorer = FakeScorer()
    result = run(tmp_path, rows, scorer=scorer)
    assert scorer.pairs == 0 and result.resumed_rows == 8
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 8
    assert leftovers(tmp_path) == []


def _fail_on_partial(real):
    def replace(src, dst):
        if str(src).endswith(".partial"):
            raise Crash
        return real(src, dst)

    return replace


def test_crash_after_rename_before_cleanup(tmp_path):
    rows = rows_of(8)
    run(tmp_path, rows)
    final = (tmp_path / "out.jsonl").read_bytes()
    # recreate the state of a process killed between os.replace and removing the checkpoint
    ckpt = {
        "format": resumable.CHECKPOINT_FORMAT,
        "version": resumable.CHECKPOINT_VERSION,
        "rows_done": 8,
        "bytes_done": len(final),
        "rows_total": 8,
        "chunk_rows": 4,
        "input": input_fingerprint(tmp_path / "in.jsonl"),
        "options": {"verifier": "fake", "dtype": "auto"},
    }
    (tmp_path / "out.jsonl.ckpt.json").write_text(json.dumps(ckpt))
    scorer = FakeScorer()
    result = run(tmp_path, rows, scorer=scorer)
    assert result.already_complete and scorer.pairs == 0 and result.scores == json_scores(final)
    assert (tmp_path / "out.jsonl").read_bytes() == final and leftovers(tmp_path) == []


def json_scores(data: bytes) -> list:
    return [json.loads(line)["cme"] for line in data.splitlines()]


def test_options_mismatch_is_refused_then_overwrite_starts_over(tmp_path):
    rows = rows_of(12)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, rows, scorer=FakeScorer(fail_after_calls=1))
    with pytest.raises(
        CheckpointError, match=r"another input or options: dtype: 'auto' then, 'float32' now.*--overwrite"
    ):
        run(tmp_path, rows, options={"verifier": "fake", "dtype": "float32"})
    assert json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())["rows_done"] == 4  # untouched
    scorer = FakeScorer()
    run(tmp_path, rows, options={"verifier": "fake", "dtype": "float32"}, overwrite=True, scorer=scorer)
    assert scorer.pairs == 12 and len((tmp_path / "out.jsonl").read_text().splitlines()) == 12


def test_mismatch_with_no_row_done_just_restarts(tmp_path):
    rows = rows_of(6)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, rows, scorer=FakeScorer(fail_after_calls=0))
    run(tmp_path, rows, options={"verifier": "other"})  # nothing was written: no reason to refuse
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 6


def test_changed_input_is_refused(tmp_path):
    rows = rows_of(12)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, rows, scorer=FakeScorer(fail_after_calls=1))
    write_jsonl(tmp_path / "in.jsonl", rows[:-1] + [{**rows[-1], "prompt": "changed"}])
    with pytest.raises(CheckpointError, match="the input content changed"):
        run(tmp_path, rows)


def test_existing_output_needs_overwrite(tmp_path):
    rows = rows_of(5)
    run(tmp_path, rows)
    before = (tmp_path / "out.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match=r"out\.jsonl already exists; pass --overwrite"):
        run(tmp_path, rows)
    assert (tmp_path / "out.jsonl").read_bytes() == before
    scorer = FakeScorer()
    run(tmp_path, rows, overwrite=True, scorer=scorer)
    assert scorer.pairs == 5 and (tmp_path / "out.jsonl").read_bytes() == before


def test_inconsistent_checkpoint_files(tmp_path):
    rows = rows_of(12)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, rows, scorer=FakeScorer(fail_after_calls=2))
    partial = tmp_path / "out.jsonl.partial"
    with partial.open("r+b") as fh:
        fh.truncate(partial.stat().st_size - 3)  # shorter than checkpointed: someone else touched it
    with pytest.raises(CheckpointError, match=r"out\.jsonl\.partial is missing or shorter"):
        run(tmp_path, rows)
    (tmp_path / "out.jsonl.ckpt.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not a valid checkpoint"):
        run(tmp_path, rows)
    run(tmp_path, rows, overwrite=True)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 12


def test_stale_partial_without_checkpoint_is_replaced(tmp_path):
    (tmp_path / "out.jsonl.partial").write_text('{"half": ')
    rows = rows_of(6)
    run(tmp_path, rows)
    assert [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == list(range(6))


def test_second_writer_is_locked_out(tmp_path):
    fp = {"path": "x", "size": 1, "sha256": "0"}
    first = ResumableWriter(tmp_path / "o.jsonl", fingerprint=fp, options={}, rows_total=2)
    first.open()
    try:
        with pytest.raises(CheckpointError, match="another process is writing"):
            ResumableWriter(tmp_path / "o.jsonl", fingerprint=fp, options={}, rows_total=2).open()
    finally:
        first.close()
    with ResumableWriter(tmp_path / "o.jsonl", fingerprint=fp, options={}, rows_total=2) as again:
        assert again.state == "resumed" and again.rows_done == 0
        again.write([{"a": 1}, {"a": 2}])
        again.finish()
    assert (tmp_path / "o.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'


def test_scorer_columns_replace_input_columns(tmp_path, caplog):
    rows = [{"prompt": "p", "response": "r", "cme": "old"}]
    run(tmp_path, rows)
    out = json.loads((tmp_path / "out.jsonl").read_text())
    assert out["cme"] != "old" and math.isfinite(out["cme"])
    assert "already have ['cme']" in caplog.text
