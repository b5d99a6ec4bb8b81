"""JSON Lines rows out, and the fingerprint of an input file: strict JSON (no NaN), any value a Parquet or datasets
row may hold, lone surrogates kept as escapes. No model code."""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import hashlib
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["encode_row", "finite", "input_fingerprint"]


def _json_default(obj: Any) -> Any:
    """Values Parquet/datasets rows may hold that `json` does not know."""
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, _dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, decimal.Decimal):
        return finite(float(obj))
    if isinstance(obj, (bytes, bytearray)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return finite(obj.tolist())
    if hasattr(obj, "item"):
        return finite(obj.item())
    return str(obj)


def finite(value: Any) -> Any:
    """Non-finite floats (NaN, inf) -> None, recursively: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def encode_row(row: dict[str, Any]) -> bytes:
    """One strict-JSON line (UTF-8, `\\n`-terminated). NaN/inf become `null`; unencodable text is escaped."""
    try:
        text = json.dumps(row, ensure_ascii=False, allow_nan=False, default=_json_default)
    except ValueError:
        text = json.dumps(finite(row), ensure_ascii=False, allow_nan=False, default=_json_default)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them as JSON escapes
        return (json.dumps(json.loads(text), ensure_ascii=True) + "\n").encode("ascii")


def input_fingerprint(path: str | Path) -> dict[str, Any]:
    """`{"path", "size", "sha256"}` of a file, or of every file of a directory (names and contents; hidden files and
    `cache-*` files that `datasets` may add are left out). Only size and hash are compared on resume."""
    path = Path(path)
    digest = hashlib.sha256()
    size = 0
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "cache-")))
    else:
        files = [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
    return {"path": str(path.resolve()), "size": size, "sha256": digest.hexdigest()}
