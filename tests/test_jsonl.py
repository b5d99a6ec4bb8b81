"""JSON Lines out: strict JSON for any value a row may hold; the input fingerprint follows content, not metadata."""

from __future__ import annotations

import datetime
import decimal
import json

import pytest
from conftest import write_jsonl

from cme_reward.files.jsonl import encode_row, finite, input_fingerprint


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


def test_encode_row_other_values():
    row = {
        "d": decimal.Decimal("1.25"),
        "inf": decimal.Decimal("Infinity"),
        "b": b"caf\xc3\xa9",
        "raw": b"\xff\x00",
        "set": {3, 1},
        "td": datetime.timedelta(minutes=1),
        "obj": object.__new__(type("Thing", (), {})),
    }
    back = json.loads(encode_row(row))
    assert back["d"] == 1.25 and back["inf"] is None and back["b"] == "café" and back["raw"] == "/wA="
    assert back["set"] == [1, 3] and back["td"] == 60.0 and back["obj"].startswith("<")
    assert "é" in encode_row({"x": "é"}).decode("utf-8")  # non-ASCII text stays text


def test_finite_is_recursive():
    assert finite({"a": [1.0, float("nan"), (float("-inf"), "x")], "b": 2}) == {"a": [1.0, None, [None, "x"]], "b": 2}


def test_input_fingerprint_tracks_content(tmp_path):
    rows = [{"id": i, "prompt": f"question {i}", "response": "r"} for i in range(3)]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    first = input_fingerprint(path)
    assert first["size"] == path.stat().st_size and first["path"] == str(path.resolve())
    path.touch()
    assert input_fingerprint(path)["sha256"] == first["sha256"]  # mtime alone changes nothing
    path.write_text(path.read_text().replace("question 0", "question X"))
    assert input_fingerprint(path)["sha256"] != first["sha256"]


def test_input_fingerprint_of_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data.arrow").write_bytes(b"abc")
    first = input_fingerprint(tmp_path / "d")
    (tmp_path / "d" / "cache-123.arrow").write_bytes(b"cache")  # datasets' own cache files do not count
    (tmp_path / "d" / ".lock").write_bytes(b"")
    assert input_fingerprint(tmp_path / "d") == first and first["size"] == 3
    (tmp_path / "d" / "data.arrow").rename(tmp_path / "d" / "other.arrow")  # names count, not only content
    assert input_fingerprint(tmp_path / "d")["sha256"] != first["sha256"]
