"""`ResumableWriter` on its own: preview/open/write/finish/close, what is on disk at each step, resuming (cutting
unacknowledged bytes), refusals that leave nothing behind, the lock."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cme_reward.errors import CheckpointError
from cme_reward.files.jsonl import encode_row
from cme_reward.files.resumable import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ResumableWriter

FINGERPRINT = {"path": "/data/in.jsonl", "size": 10, "sha256": "ab" * 32}
OPTIONS = {"verifier": "v", "dtype": "auto", "per_token": False}
ROWS = [{"id": i, "cme": -i / 3} for i in range(5)]


def make(tmp_path: Path, **kwargs) -> ResumableWriter:
    """A writer of `ROWS` into `tmp_path/out.jsonl`, 2 rows per chunk; `kwargs` override any argument."""
    defaults = {"fingerprint": FINGERPRINT, "options": OPTIONS, "rows_total": len(ROWS), "chunk_rows": 2}
    return ResumableWriter(tmp_path / "out.jsonl", **{**defaults, **kwargs})


def files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def checkpoint(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())


def expected_bytes(rows=ROWS) -> bytes:
    return b"".join(encode_row(r) for r in rows)


def partial_run(tmp_path: Path, chunks: int = 1, **kwargs) -> None:
    """A run that wrote `chunks` chunks of 2 rows and stopped (files kept, lock released)."""
    writer = make(tmp_path, **kwargs)
    writer.open()
    for k in range(chunks):
        writer.write(ROWS[2 * k : 2 * k + 2])
    writer.close()


def test_fresh_run_step_by_step(tmp_path):
    writer = make(tmp_path, info={"config": {"reduction": "mean"}})
    assert writer.preview() == "fresh" and files(tmp_path) == []  # deciding creates nothing
    with writer:
        assert writer.rows_done == 0 and writer.state == "fresh"
        assert files(tmp_path) == ["out.jsonl.ckpt.json", "out.jsonl.lock", "out.jsonl.partial"]
        ckpt = checkpoint(tmp_path)
        assert (ckpt["format"], ckpt["version"], ckpt["rows_done"], ckpt["bytes_done"]) == (
            CHECKPOINT_FORMAT, CHECKPOINT_VERSION, 0, 0,
        )  # fmt: skip
        assert ckpt["input"] == FINGERPRINT and ckpt["options"] == OPTIONS and ckpt["config"] == {"reduction": "mean"}
        assert (ckpt["rows_total"], ckpt["chunk_rows"], ckpt["output"]) == (5, 2, "out.jsonl")
        writer.write(ROWS[:2])
        ckpt = checkpoint(tmp_path)
        assert ckpt["rows_done"] == 2 and ckpt["bytes_done"] == (tmp_path / "out.jsonl.partial").stat().st_size
        assert not (tmp_path / "out.jsonl").exists()
        writer.write(ROWS[2:])
        assert writer.finish() == tmp_path / "out.jsonl"
    assert (tmp_path / "out.jsonl").read_bytes() == expected_bytes()
    assert files(tmp_path) == ["out.jsonl"] and writer.state == "complete"


def test_misuse_raises(tmp_path):
    writer = make(tmp_path)
    with pytest.raises(RuntimeError, match=r"needs open\(\) first"):
        writer.write(ROWS[:1])
    writer.open()
    with pytest.raises(RuntimeError, match="writing 6 rows after 0 exceeds rows_total=5"):
        writer.write(ROWS + ROWS[:1])
    writer.write(ROWS[:1])
    with pytest.raises(RuntimeError, match=r"finish\(\) after 1 of 5 rows"):
        writer.finish()
    writer.close()
    assert "out.jsonl.lock" not in files(tmp_path)


def test_close_keeps_files_and_a_rerun_resumes(tmp_path, caplog):
    partial_run(tmp_path, chunks=2)
    assert files(tmp_path) == ["out.jsonl.ckpt.json", "out.jsonl.partial"]  # no lock once the writer is closed
    writer = make(tmp_path, chunk_rows=3)
    assert writer.preview() == "resume"
    with caplog.at_level(logging.WARNING), writer:
        assert writer.rows_done == 4 and writer.state == "resumed"
        assert list(writer.done_rows()) == ROWS[:4]
        writer.write(ROWS[4:])
        writer.finish()
    assert "resuming with 3 rows per chunk where the checkpoint used 2" in caplog.text
    assert (tmp_path / "out.jsonl").read_bytes() == expected_bytes() and files(tmp_path) == ["out.jsonl"]


@pytest.mark.parametrize("torn", [b'{"id": 2, "cm', b'{"id": 2, "cme": -0.6}\n{"id": 3}\n'])
def test_bytes_past_the_checkpoint_are_dropped(tmp_path, torn):
    partial_run(tmp_path, chunks=1)
    with (tmp_path / "out.jsonl.partial").open("ab") as fh:
        fh.write(torn)  # a chunk written but not acknowledged by the checkpoint when the process died
    with make(tmp_path) as writer:
        assert writer.rows_done == 2 and (tmp_path / "out.jsonl.partial").stat().st_size == writer.bytes_done
        writer.write(ROWS[2:4])
        writer.write(ROWS[4:])
        writer.finish()
    assert (tmp_path / "out.jsonl").read_bytes() == expected_bytes()


def test_complete_output_with_a_stale_checkpoint(tmp_path):
    with make(tmp_path) as writer:
        writer.write(ROWS)
        writer.finish()
    size = len(expected_bytes())
    stale = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "rows_done": 5, "bytes_done": size,
             "rows_total": 5, "input": FINGERPRINT, "options": OPTIONS}  # fmt: skip
    (tmp_path / "out.jsonl.ckpt.json").write_text(json.dumps(stale))  # killed between the rename and this cleanup
    writer = make(tmp_path)
    assert writer.preview() == "complete"
    with writer:
        assert writer.state == "complete" and list(writer.done_rows()) == ROWS
        writer.finish()
    assert files(tmp_path) == ["out.jsonl"]
    (tmp_path / "out.jsonl.ckpt.json").write_text(json.dumps({**stale, "bytes_done": 3}))
    with pytest.raises(CheckpointError, match=r"out\.jsonl does not match .*ckpt\.json"):
        make(tmp_path).open()


@pytest.mark.parametrize(
    ("setup", "change", "message"),
    [
        ("output", {}, r"out\.jsonl already exists; pass --overwrite"),
        ("partial", {"options": {**OPTIONS, "dtype": "float32"}}, "another input or options: dtype: 'auto' then"),
        ("partial", {"fingerprint": {**FINGERPRINT, "sha256": "cd" * 32}}, "the input content changed"),
        ("partial", {"rows_total": 4}, "rows to write: 5 then, 4 now"),
        ("garbage", {}, r"ckpt\.json is not a valid checkpoint"),
    ],
)
def test_refusals_change_nothing_on_disk(tmp_path, setup, change, message):
    if setup == "output":
        (tmp_path / "out.jsonl").write_text("old\n")
    elif setup == "partial":
        partial_run(tmp_path)
    else:
        (tmp_path / "out.jsonl.ckpt.json").write_text("{not json")
    before = {name: (tmp_path / name).read_bytes() for name in files(tmp_path)}
    writer = make(tmp_path, **change)
    with pytest.raises(CheckpointError, match=message):
        writer.preview()
    with pytest.raises(CheckpointError, match=message):
        writer.open()
    assert {name: (tmp_path / name).read_bytes() for name in files(tmp_path)} == before  # no lock left either


def test_overwrite_discards_and_replaces_only_at_the_end(tmp_path):
    partial_run(tmp_path, options={**OPTIONS, "dtype": "float32"})
    (tmp_path / "out.jsonl").write_text("old\n")
    with make(tmp_path, overwrite=True) as writer:
        assert writer.state == "fresh" and (tmp_path / "out.jsonl").read_text() == "old\n"
        writer.write(ROWS)
        writer.finish()
    assert (tmp_path / "out.jsonl").read_bytes() == expected_bytes()


def test_checkpoint_without_rows_is_replaced(tmp_path):
    writer = make(tmp_path, options={"verifier": "typo"})
    writer.open()
    writer.close()  # e.g. the verifier failed to load after the files were created: nothing to lose
    assert make(tmp_path).preview() == "fresh"


def test_partial_shorter_than_its_checkpoint(tmp_path):
    partial_run(tmp_path, chunks=2)
    partial = tmp_path / "out.jsonl.partial"
    with partial.open("r+b") as fh:
        fh.truncate(partial.stat().st_size - 3)  # shorter than checkpointed: someone else touched it
    with pytest.raises(CheckpointError, match=r"out\.jsonl\.partial is missing or shorter"):
        make(tmp_path).open()
    assert "out.jsonl.lock" not in files(tmp_path)  # taken, then released and removed
    with make(tmp_path, overwrite=True) as writer:
        assert writer.state == "fresh"


def test_options_are_compared_as_json(tmp_path):
    partial_run(tmp_path, options={"columns": ("a", "b"), "limit": None})
    assert make(tmp_path, options={"columns": ["a", "b"], "limit": None}).preview() == "resume"


def test_info_is_recorded_not_compared(tmp_path):
    partial_run(tmp_path, info={"config": {"max_tokens_per_batch": 64}})
    with make(tmp_path, info={"config": {"max_tokens_per_batch": 128}}) as writer:
        assert writer.state == "resumed"
        writer.write(ROWS[2:4])
    assert checkpoint(tmp_path)["config"] == {"max_tokens_per_batch": 128}


def test_second_writer_is_locked_out(tmp_path):
    fp = {"path": "x", "size": 1, "sha256": "0"}
    first = ResumableWriter(tmp_path / "o.jsonl", fingerprint=fp, options={}, rows_total=2)
    first.open()
    try:
        with pytest.raises(CheckpointError, match="another process is writing"):
            ResumableWriter(tmp_path / "o.jsonl", fingerprint=fp, options={}, rows_total=2).open()
        assert (tmp_path / "o.jsonl.lock").exists()  # the refused writer leaves the holder's lock alone
    finally:
        first.close()
    with ResumableWriter(tmp_path / "o.jsonl", fingerprint=fp, options={}, rows_total=2) as again:
        assert again.state == "resumed" and again.rows_done == 0
        again.write([{"a": 1}, {"a": 2}])
        again.finish()
    assert (tmp_path / "o.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
