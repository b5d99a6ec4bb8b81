"""`write_atomic`: a reader sees the old file or the whole new one; a failed write leaves no trace."""

from __future__ import annotations

import os

import pytest

from cme_reward.files import atomic
from cme_reward.files.atomic import fsync_dir, write_atomic


@pytest.mark.parametrize(("data", "expected"), [("Grüße\n", "Grüße\n".encode()), (b"\x00\xff", b"\x00\xff")])
def test_writes_text_as_utf8_and_bytes_as_is(tmp_path, data, expected):
    path = write_atomic(tmp_path / "a" / "b" / "file.bin", data)  # missing parents are created
    assert path == tmp_path / "a" / "b" / "file.bin" and path.read_bytes() == expected
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(path.parent) == ["file.bin"]
    assert write_atomic(str(path), b"new", mode=0o600).read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, failing):
    path = write_atomic(tmp_path / "report.md", "old")

    def broken(*args, **kwargs):
        raise OSError(f"{failing} failed")

    monkeypatch.setattr(atomic.os, failing, broken)
    with pytest.raises(OSError, match=f"{failing} failed"):
        write_atomic(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.md"]


def test_fsync_dir_is_quiet_where_it_cannot_open(tmp_path):
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")  # no error: nothing to flush
