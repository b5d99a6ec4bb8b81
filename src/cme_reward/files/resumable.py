"""Loss-free, resumable JSON Lines output: a killed run continues where it stopped when rerun. No model code.

On disk, for an output `out.jsonl`:

- `out.jsonl.partial`: the rows written so far. Chunks are appended, then flushed and `fsync`-ed; the caller decides
  where a chunk ends (`cme-reward score`: after `--chunk-rows` rows or `--checkpoint-seconds` of scoring, whichever
  comes first);
- `out.jsonl.ckpt.json`: the checkpoint, rewritten atomically (temporary file + `fsync` + `os.replace`) after
  each chunk. It holds `rows_done` and `bytes_done` (the byte length of the valid prefix of the partial file),
  `rows_total`, the input fingerprint (byte size + SHA-256 of the content) and the options that shape the output;
- `out.jsonl.lock`: an advisory `flock` held while a process writes (POSIX only), so two runs cannot interleave;
  removed when that process stops writing, so a refused or finished run leaves no lock behind;
- `out.jsonl`: appears only when every row is written, by `os.replace` of the fsync-ed partial file. The
  checkpoint and lock files are then removed.

Bytes past `bytes_done` (a chunk whose checkpoint was not yet replaced when the process died) are cut off on
resume, so a kill at any moment never duplicates, loses, reorders or half-writes a row. Resuming checks that the input
content and options match the checkpoint and refuses otherwise (or, with `overwrite`, starts over).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .atomic import fsync_dir, write_atomic
from .jsonl import encode_row

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "ResumableWriter"]

CHECKPOINT_FORMAT = "cme-reward-checkpoint"
CHECKPOINT_VERSION = 1


def _plain(value: Any) -> Any:
    """What `value` looks like after a JSON round trip (tuples -> lists...), for comparing with a checkpoint."""
    return json.loads(json.dumps(value, default=str))


# ---- writer ---------------------------------------------------------------------------------------------------------


class ResumableWriter:
    """Appends rows to `<output>.partial` in checkpointed chunks and publishes `<output>` atomically at the end.

    Args:
        output: the final `.jsonl` path.
        fingerprint: `input_fingerprint` of the input.
        options: everything else that shapes the output (JSON-serializable); compared on resume.
        info: more JSON-serializable entries recorded in the checkpoint, not compared (e.g. the whole scoring
            config, including options that may change between runs).
        rows_total: number of rows the finished output holds; compared on resume.
        overwrite: replace an existing `output` and discard a checkpoint that does not match (instead of refusing).
            A matching checkpoint is always resumed.

    Use as a context manager: `open()` on entry, `close()` (keeps files, releases the lock) on exit.
    """

    def __init__(
        self,
        output: str | Path,
        *,
        fingerprint: dict[str, Any],
        options: dict[str, Any],
        rows_total: int,
        info: dict[str, Any] | None = None,
        overwrite: bool = False,
        chunk_rows: int | None = None,
    ):
        self.output = Path(output)
        self.partial_path = self.output.with_name(self.output.name + ".partial")
        self.checkpoint_path = self.output.with_name(self.output.name + ".ckpt.json")
        self.lock_path = self.output.with_name(self.output.name + ".lock")
        self.fingerprint = _plain(fingerprint)
        self.options = _plain(options)
        self.info = _plain(info or {})
        self.rows_total = rows_total
        self.overwrite = overwrite
        self.chunk_rows = chunk_rows
        self.rows_done = 0
        self.bytes_done = 0
        self.rows_saved = 0  # rows the checkpoint on disk holds: what a rerun keeps
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

    def preview(self) -> str:
        """What `open()` will do, decided without taking the lock or creating any file: `"complete"` (an earlier run
        finished), `"resume"` or `"fresh"`. Raises the `CheckpointError` that `open()` would raise for an existing
        output or a checkpoint of another run, so a refused run leaves nothing behind."""
        action, ckpt = self._plan()
        if action == "resume" and int(ckpt["rows_done"]) == self.rows_total and self.output.exists():
            return "complete" if not self.partial_path.exists() else action
        return action

    def _plan(self) -> tuple[str, dict[str, Any] | None]:
        """("resume", checkpoint) or ("fresh", None), or the refusal."""
        ckpt = self._read_checkpoint()
        if ckpt is not None:
            diffs = self._differences(ckpt)
            if not diffs:
                return "resume", ckpt
            if int(ckpt["rows_done"]) == 0:  # nothing to lose (e.g. the verifier failed to load): restart
                logger.info("replacing %s, which holds no rows yet (%s)", self.checkpoint_path, "; ".join(diffs))
            elif not self.overwrite:
                raise CheckpointError(
                    f"{self.checkpoint_path} belongs to a run with another input or options: {'; '.join(diffs)}. "
                    "Rerun that command to resume it, or pass --overwrite to discard it and start over"
                )
            else:
                logger.warning("discarding %s (%s)", self.checkpoint_path, "; ".join(diffs))
        if self.output.exists() and not self.overwrite:
            raise CheckpointError(
                f"{self.output} already exists; pass --overwrite to replace it (replaced only once the new run ends)"
            )
        return "fresh", None

    def _open(self) -> int:
        self._remove_stale_temporaries()
        action, ckpt = self._plan()
        return self._resume(ckpt) if action == "resume" else self._start_fresh()

    def _remove_stale_temporaries(self) -> None:
        """Temporary checkpoint files of a process killed inside `write_atomic` (we hold the lock: none is live)."""
        for tmp in self.checkpoint_path.parent.glob(f".{self.checkpoint_path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)

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
            self.rows_done, self.bytes_done, self.rows_saved, self.state = rows, size, rows, "complete"
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
        self.rows_done, self.bytes_done, self.rows_saved, self.state = rows, size, rows, "resumed"
        logger.info("resuming %s at row %d of %d", self.output, rows, self.rows_total)
        return rows

    def _start_fresh(self) -> int:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.partial_path.open("w+b")  # truncates a stale partial file
        os.fsync(self._fh.fileno())
        self.rows_done, self.bytes_done, self.rows_saved, self.state = 0, 0, 0, "fresh"
        self._save_checkpoint()
        return 0

    def _save_checkpoint(self) -> None:
        checkpoint = {
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
            **self.info,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_atomic(self.checkpoint_path, json.dumps(checkpoint, indent=1) + "\n")

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
        self.rows_saved = self.rows_done

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
            fsync_dir(self.output.parent)
            self.checkpoint_path.unlink(missing_ok=True)
            self._remove_stale_temporaries()
            self.state = "complete"
        self.close()
        return self.output

    def close(self) -> None:
        """Release the file and the lock; everything on disk stays (a later run resumes from it)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fd is not None:
            self.lock_path.unlink(missing_ok=True)  # still ours: nobody else can hold it, so no stale lock stays
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None
