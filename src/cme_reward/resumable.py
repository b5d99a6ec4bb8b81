"""Loss-free, resumable JSON Lines output: a killed run continues where it stopped when rerun. No model code.

On disk, for an output ``out.jsonl``:

- ``out.jsonl.partial``: the rows written so far. Chunks are appended, then flushed and ``fsync``-ed;
- ``out.jsonl.ckpt.json``: the checkpoint, rewritten atomically (temporary file + ``fsync`` + ``os.replace``) after
  each chunk. It holds ``rows_done`` and ``bytes_done`` (the byte length of the valid prefix of the partial file),
  ``rows_total``, the input fingerprint (byte size + SHA-256 of the content) and the options that shape the output;
- ``out.jsonl.lock``: an advisory ``flock`` held while a process writes (POSIX only), so two runs cannot interleave;
- ``out.jsonl``: appears only when every row is written, by ``os.replace`` of the fsync-ed partial file. The
  checkpoint and lock files are then removed.

Bytes past ``bytes_done`` (a chunk whose checkpoint was not yet replaced when the process died) are cut off on
resume, so a kill at any moment never duplicates, loses, reorders or half-writes a row. Resuming checks that the input
content and options match the checkpoint and refuses otherwise (or, with ``overwrite``, starts over).
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cme-reward-checkpoint"
CHECKPOINT_VERSION = 1

Scorer = Callable[[list[Any], list[Any]], list[dict[str, Any]]]


class CheckpointError(ValueError):
    """The output or its checkpoint cannot be (re)used as asked: the message says why and what to do."""


# ---- JSON encoding --------------------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    """Values Parquet/datasets rows may hold that `json` does not know."""
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, _dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, decimal.Decimal):
        return _finite(float(obj))
    if isinstance(obj, (bytes, bytearray)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return _finite(obj.tolist())
    if hasattr(obj, "item"):
        return _finite(obj.item())
    return str(obj)


def _finite(value: Any) -> Any:
    """Non-finite floats (NaN, inf) -> None, recursively: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode_row(row: dict[str, Any]) -> bytes:
    """One strict-JSON line (UTF-8, ``\\n``-terminated). NaN/inf become ``null``; unencodable text is escaped."""
    try:
        text = json.dumps(row, ensure_ascii=False, allow_nan=False, default=_json_default)
    except ValueError:
        text = json.dumps(_finite(row), ensure_ascii=False, allow_nan=False, default=_json_default)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them as JSON escapes
        return (json.dumps(json.loads(text), ensure_ascii=True) + "\n").encode("ascii")


# ---- files ----------------------------------------------------------------------------------------------------------


def input_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a file, or of every file of a directory (names and contents; hidden files and
    ``cache-*`` files that ``datasets`` may add are left out). Only size and hash are compared on resume."""
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


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _plain(value: Any) -> Any:
    """What `value` looks like after a JSON round trip (tuples -> lists...), for comparing with a checkpoint."""
    return json.loads(json.dumps(value, default=str))


# ---- writer ---------------------------------------------------------------------------------------------------------


class ResumableWriter:
    """Appends rows to ``<output>.partial`` in checkpointed chunks and publishes ``<output>`` atomically at the end.

    Args:
        output: the final ``.jsonl`` path.
        fingerprint: :func:`input_fingerprint` of the input.
        options: everything else that shapes the output (JSON-serializable); compared on resume.
        rows_total: number of rows the finished output holds; compared on resume.
        overwrite: replace an existing ``output`` and discard a checkpoint that does not match (instead of refusing).
            A matching checkpoint is always resumed.

    Use as a context manager: ``open()`` on entry, ``close()`` (keeps files, releases the lock) on exit.
    """

    def __init__(
        self,
        output: str | Path,
        *,
        fingerprint: dict[str, Any],
        options: dict[str, Any],
        rows_total: int,
        overwrite: bool = False,
        chunk_rows: int | None = None,
    ):
        self.output = Path(output)
        self.partial_path = self.output.with_name(self.output.name + ".partial")
        self.checkpoint_path = self.output.with_name(self.output.name + ".ckpt.json")
        self.lock_path = self.output.with_name(self.output.name + ".lock")
        self.fingerprint = _plain(fingerprint)
        self.options = _plain(options)
        self.rows_total = rows_total
        self.overwrite = overwrite
        self.chunk_rows = chunk_rows
        self.rows_done = 0
        self.bytes_done = 0
        self.state: str | None = None  # "fresh", "resumed" or "complete" after open()
        self._fh = None
        self._lock_fd: int | None = None

    def __enter__(self) -> ResumableWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- state ---------------------------------------------------------------------------------------------------

    def _lock(self) -> None:
        if fcntl is None:
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CheckpointError(
                f"another process is writing {self.output} (it holds {self.lock_path}); wait for it or stop it"
            ) from None
        self._lock_fd = fd

    def _read_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        try:
            ckpt = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
            if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"not a version-{CHECKPOINT_VERSION} {CHECKPOINT_FORMAT} file")
            int(ckpt["rows_done"]), int(ckpt["bytes_done"])
            return ckpt
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            if self.overwrite:
                return None
            raise CheckpointError(
                f"{self.checkpoint_path} is not a valid checkpoint ({err}); delete it (and {self.partial_path}) "
                "or pass --overwrite to start over"
            ) from None

    def _differences(self, ckpt: dict[str, Any]) -> list[str]:
        diffs = []
        old_input = ckpt.get("input") or {}
        if (old_input.get("size"), old_input.get("sha256")) != (self.fingerprint["size"], self.fingerprint["sha256"]):
            diffs.append(f"the input content changed (was {old_input.get('path')}, {old_input.get('size')} bytes)")
        old_options = ckpt.get("options") or {}
        for key in sorted(set(old_options) | set(self.options)):
            if old_options.get(key) != self.options.get(key):
                diffs.append(f"{key}: {old_options.get(key)!r} then, {self.options.get(key)!r} now")
        if not diffs and ckpt.get("rows_total") != self.rows_total:
            diffs.append(f"rows to write: {ckpt.get('rows_total')} then, {self.rows_total} now")
        return diffs

    def open(self) -> int:
        """Take the lock and look at what is on disk; returns the number of rows already written.

        Raises:
            CheckpointError: the output exists (without `overwrite`), another process holds the lock, or a checkpoint
                belongs to another input/options (without `overwrite`) or does not match its partial file.
        """
        self._lock()
        try:
            return self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> int:
        ckpt = self._read_checkpoint()
        if ckpt is not None:
            diffs = self._differences(ckpt)
            if diffs and int(ckpt["rows_done"]) == 0:  # nothing to lose (e.g. the verifier failed to load): restart
                logger.info("replacing %s, which holds no rows yet (%s)", self.checkpoint_path, "; ".join(diffs))
            elif diffs and not self.overwrite:
                raise CheckpointError(
                    f"{self.checkpoint_path} belongs to a run with another input or options: {'; '.join(diffs)}. "
                    "Rerun that command to resume it, or pass --overwrite to discard it and start over"
                )
            elif diffs:
                logger.warning("discarding %s (%s)", self.checkpoint_path, "; ".join(diffs))
            if not diffs:
                return self._resume(ckpt)
        if self.output.exists() and not self.overwrite:
            raise CheckpointError(
                f"{self.output} already exists; pass --overwrite to replace it (replaced only once the new run ends)"
            )
        return self._start_fresh()

    def _resume(self, ckpt: dict[str, Any]) -> int:
        rows, size = int(ckpt["rows_done"]), int(ckpt["bytes_done"])
        if ckpt.get("chunk_rows") not in (None, self.chunk_rows) and self.chunk_rows is not None:
            logger.warning(
                "resuming with %d rows per chunk where the checkpoint used %s: scores may differ from an "
                "uninterrupted run in the last float digits",
                self.chunk_rows,
                ckpt["chunk_rows"],
            )
        if rows == self.rows_total and not self.partial_path.exists() and self.output.exists():
            if self.output.stat().st_size != size:
                raise CheckpointError(
                    f"{self.output} does not match {self.checkpoint_path}; delete the checkpoint or pass --overwrite"
                )
            self.rows_done, self.bytes_done, self.state = rows, size, "complete"
            self.checkpoint_path.unlink(missing_ok=True)  # the earlier run stopped just before this cleanup
            return rows
        have = self.partial_path.stat().st_size if self.partial_path.exists() else -1
        if have < size:
            if self.overwrite:
                logger.warning("%s is shorter than its checkpoint says; starting over", self.partial_path)
                return self._start_fresh()
            raise CheckpointError(
                f"{self.partial_path} is missing or shorter ({max(have, 0)} bytes) than {self.checkpoint_path} "
                f"records ({size} bytes); pass --overwrite to start over"
            )
        self._fh = self.partial_path.open("r+b")
        if have > size:
            logger.info("dropping %d bytes written after the last checkpoint", have - size)
            self._fh.truncate(size)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._fh.seek(size)
        self.rows_done, self.bytes_done, self.state = rows, size, "resumed"
        logger.info("resuming %s at row %d of %d", self.output, rows, self.rows_total)
        return rows

    def _start_fresh(self) -> int:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.partial_path.open("w+b")  # truncates a stale partial file
        os.fsync(self._fh.fileno())
        self.rows_done, self.bytes_done, self.state = 0, 0, "fresh"
        self._save_checkpoint()
        return 0

    def _save_checkpoint(self) -> None:
        _write_json_atomic(
            self.checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "output": self.output.name,
                "partial": self.partial_path.name,
                "rows_done": self.rows_done,
                "bytes_done": self.bytes_done,
                "rows_total": self.rows_total,
                "chunk_rows": self.chunk_rows,
                "input": self.fingerprint,
                "options": self.options,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )

    # ---- writing -------------------------------------------------------------------------------------------------

    def done_rows(self) -> Iterator[dict[str, Any]]:
        """The rows already written (parsed), in order."""
        path = self.output if self.state == "complete" else self.partial_path
        with path.open("rb") as fh:
            for line in fh.read(self.bytes_done).splitlines():
                yield json.loads(line)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append one chunk durably, then advance the checkpoint past it."""
        if self._fh is None:
            raise RuntimeError("ResumableWriter.write() needs open() first (and not after finish())")
        if self.rows_done + len(rows) > self.rows_total:
            raise RuntimeError(f"writing {len(rows)} rows after {self.rows_done} exceeds rows_total={self.rows_total}")
        data = b"".join(encode_row(row) for row in rows)
        self._fh.seek(self.bytes_done)
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows_done += len(rows)
        self.bytes_done += len(data)
        self._save_checkpoint()

    def finish(self) -> Path:
        """Publish the output (atomic rename of the complete partial file) and remove the checkpoint and lock."""
        if self.state != "complete":
            if self.rows_done != self.rows_total or self._fh is None:
                raise RuntimeError(f"finish() after {self.rows_done} of {self.rows_total} rows")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            os.replace(self.partial_path, self.output)
            _fsync_dir(self.output.parent)
            self.checkpoint_path.unlink(missing_ok=True)
            self.checkpoint_path.with_name(self.checkpoint_path.name + ".tmp").unlink(missing_ok=True)
            self.state = "complete"
        if self._lock_fd is not None:
            self.lock_path.unlink(missing_ok=True)
        self.close()
        return self.output

    def close(self) -> None:
        """Release the file and the lock; everything on disk stays (a later run resumes from it)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


# ---- the scoring loop -----------------------------------------------------------------------------------------------


@dataclass
class WriteResult:
    """What :func:`write_scored` did."""

    output: Path
    rows: int  # rows in the output
    resumed_rows: int  # rows an earlier run had already written
    scored_rows: int  # rows scored by this call
    scores: list[float | None] = field(default_factory=list)  # the score column of every output row, in order
    already_complete: bool = False  # an earlier run had finished; nothing was scored


def write_scored(
    rows: Sequence[dict[str, Any]],
    prompts: Sequence[Any],
    responses: Sequence[Any],
    output: str | Path,
    *,
    scorer: Scorer,
    fingerprint: dict[str, Any],
    options: dict[str, Any],
    chunk_rows: int = 256,
    overwrite: bool = False,
    score_key: str = "cme",
    on_open: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> WriteResult:
    """Score ``(prompts[i], responses[i])`` in chunks and write ``rows[i] | scorer(...)[i]`` resumably to ``output``.

    Chunks cover rows ``[k * chunk_rows, (k + 1) * chunk_rows)`` whether the run is fresh or resumed, so with the same
    ``chunk_rows`` the scorer sees the same batches and a resumed output is byte-identical to an uninterrupted one.

    Args:
        rows: the input rows; each output row is a copy plus the scorer's columns (which replace equal keys).
        prompts, responses: what the scorer gets, aligned with `rows`.
        output: the final ``.jsonl`` path (see :class:`ResumableWriter` for the files next to it).
        scorer: ``scorer(prompts_chunk, responses_chunk)`` -> one dict of new columns per pair.
        fingerprint, options, overwrite: as in :class:`ResumableWriter`.
        chunk_rows: rows per durable chunk.
        score_key: the column whose values `WriteResult.scores` collects.
        on_open: called as ``on_open(rows_done, rows_total)`` once the output files are checked and locked, before
            any scoring (e.g. to load the model only when there is work left, after cheap refusals).
        on_progress: called as ``on_progress(rows_done, rows_total)`` after every chunk.
    """
    if not len(rows) == len(prompts) == len(responses):
        raise ValueError(
            f"rows, prompts and responses differ in length: {len(rows)}, {len(prompts)}, {len(responses)}"
        )
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    total = len(rows)
    writer = ResumableWriter(
        output, fingerprint=fingerprint, options=options, rows_total=total, overwrite=overwrite, chunk_rows=chunk_rows
    )
    with writer:
        start = writer.rows_done
        already_complete = writer.state == "complete"
        scores = [row.get(score_key) for row in writer.done_rows()] if start else []
        if on_open is not None:
            on_open(start, total)
        warned = False
        for begin in range(start, total, chunk_rows):
            end = min(begin + chunk_rows, total)
            extra = scorer(list(prompts[begin:end]), list(responses[begin:end]))
            if len(extra) != end - begin:
                raise RuntimeError(f"the scorer returned {len(extra)} results for {end - begin} pairs")
            chunk = []
            for row, new in zip(rows[begin:end], extra, strict=True):
                if not warned and any(key in row for key in new):
                    logger.warning(
                        "input rows already have %s: replaced by the new values", sorted(set(new) & set(row))
                    )
                    warned = True
                chunk.append({**row, **new})
                scores.append(_finite(new.get(score_key)))
            writer.write(chunk)
            if on_progress is not None:
                on_progress(end, total)
        writer.finish()
    return WriteResult(
        output=writer.output,
        rows=total,
        resumed_rows=start,
        scored_rows=total - start,
        scores=scores,
        already_complete=already_complete,
    )
