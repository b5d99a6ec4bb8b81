"""The scoring loop of `cme-reward score` over the resumable writer, with a fake verifier: the output is the input
plus scores, appears only at the end, and a run stopped at any point (exception, crash between writes, SIGKILL of the
real command) resumes to byte-identical output; refusals leave nothing behind."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import read_jsonl, write_jsonl
from tiny_models import save_verifier

import cme_reward
from cme_reward import CMEConfig
from cme_reward.cli import score as score_job
from cme_reward.cli.main import main
from cme_reward.cli.numbers import format_number
from cme_reward.files import resumable
from cme_reward.files.jsonl import input_fingerprint
from cme_reward.scorer import ScorerStats


def rows_of(n: int) -> list[dict]:
    return [{"id": i, "prompt": f"question {i} ü", "response": "" if i % 7 == 3 else f"answer {i} " * (i % 5)}
            for i in range(n)]  # fmt: skip


def fake_score(prompt: str, response: str) -> float | None:
    return None if not response else -(len(response) % 13) / 7 - len(prompt) / 100


class FakeReward:
    """Deterministic stand-in for the verifier (what `load_reward` returns): counts the pairs it scores and raises
    `KeyboardInterrupt` (a Ctrl-C) on call `fail_at` (0-based)."""

    def __init__(self, fail_at: int | None = None, on_call=None):
        self.calls = 0
        self.pairs = 0
        self.fail_at = fail_at
        self.on_call = on_call
        self.stats = ScorerStats(seconds=0.5, tokens_scored=1000)

    def score(self, prompts, responses):
        if self.on_call:
            self.on_call()
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.pairs += len(prompts)
        return [fake_score(p, r) for p, r in zip(prompts, responses, strict=True)]


@pytest.fixture
def run(monkeypatch, tmp_path):
    """`run(rows, *flags, reward=None, where=tmp_path)`: `cme-reward score` of `where/in.jsonl` (written from `rows`
    the first time) into `where/out.jsonl`, 4 rows per chunk, with a `FakeReward`; returns the exit code."""

    def run(rows, *flags, reward=None, where=tmp_path):
        src = where / "in.jsonl"
        if not src.exists():
            write_jsonl(src, rows)
        fake = reward or FakeReward()
        monkeypatch.setattr(score_job, "load_reward", lambda args: (fake, 0.25))
        return main(["score", "--verifier", "fake", "--input", str(src), "--output", str(where / "out.jsonl"),
                     "--chunk-rows", "4", "--no-progress", *flags])  # fmt: skip

    return run


def leftovers(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if p.name.startswith("out.jsonl."))


def reference(run, tmp_path: Path, rows: list[dict]) -> bytes:
    """The output of an uninterrupted run."""
    (tmp_path / "ref").mkdir()
    assert run(rows, where=tmp_path / "ref") == 0
    return (tmp_path / "ref" / "out.jsonl").read_bytes()


def test_uninterrupted_output_is_input_plus_score(run, tmp_path, capsys):
    rows = rows_of(10)
    fake = FakeReward()
    assert run(rows, reward=fake) == 0
    expected = [fake_score(r["prompt"], r["response"]) for r in rows]
    assert read_jsonl(tmp_path / "out.jsonl") == [{**r, "cme": e} for r, e in zip(rows, expected, strict=True)]
    assert any(e is None for e in expected)  # empty responses -> null
    assert fake.pairs == 10 and fake.calls == 3
    out = capsys.readouterr().out
    valid = [e for e in expected if e is not None]
    assert f"wrote {tmp_path / 'out.jsonl'}: 10 rows (10 scored now)" in out
    assert f"CME mean {format_number(statistics.fmean(valid), 4)}" in out and f"over {len(valid)} rows" in out
    assert f"{len(expected) - len(valid)} rows have no score (empty response)" in out
    assert leftovers(tmp_path) == []


def test_output_appears_only_at_the_end(run, tmp_path):
    seen = []
    fake = FakeReward(on_call=lambda: seen.append(
        ((tmp_path / "out.jsonl").exists(), (tmp_path / "out.jsonl.partial").exists())
    ))  # fmt: skip
    assert run(rows_of(9), reward=fake) == 0
    assert seen == [(False, True)] * 3
    assert (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("fail_after", [0, 1, 3, 4])
def test_interrupted_then_resumed_is_identical(run, tmp_path, capsys, fail_after):
    rows = rows_of(17)
    expected = reference(run, tmp_path, rows)

    assert run(rows, reward=FakeReward(fail_at=fail_after)) == 130  # interrupted
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
    ckpt = json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())
    assert ckpt["rows_done"] == 4 * fail_after
    assert (tmp_path / "out.jsonl.partial").stat().st_size == ckpt["bytes_done"]

    fake = FakeReward()
    assert run(rows, reward=fake) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == expected
    assert fake.pairs == 17 - 4 * fail_after  # finished rows are not scored again
    out = capsys.readouterr().out
    resumed = f", {4 * fail_after} from an earlier run" if fail_after else ""
    assert f"17 rows ({17 - 4 * fail_after} scored now{resumed})" in out
    scores = [json.loads(line)["cme"] for line in expected.splitlines()]
    assert f"CME mean {format_number(statistics.fmean(s for s in scores if s is not None), 4)}" in out
    assert leftovers(tmp_path) == []


class Crash(BaseException):
    pass


@pytest.mark.parametrize("crash_at", range(1, 6))
@pytest.mark.parametrize("tail", ["all", "half", "none"])
def test_crash_between_data_and_checkpoint(run, tmp_path, monkeypatch, crash_at, tail):
    """Die after a chunk's bytes hit the partial file but before the checkpoint moved: those bytes (or a half-written
    part of them) must be dropped on resume, never duplicated."""
    rows = rows_of(18)
    expected = reference(run, tmp_path, rows)

    real = resumable.write_atomic
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == crash_at + 1:  # call 1 is the fresh checkpoint, call k+1 follows chunk k
            raise Crash
        return real(path, data)

    monkeypatch.setattr(resumable, "write_atomic", flaky)
    with pytest.raises(Crash):
        run(rows)
    monkeypatch.setattr(resumable, "write_atomic", real)
    ckpt = json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())
    partial = tmp_path / "out.jsonl.partial"
    size = partial.stat().st_size
    assert size > ckpt["bytes_done"] and ckpt["rows_done"] == 4 * (crash_at - 1)
    if tail != "all":  # a torn write: only part of the unacknowledged chunk reached the disk
        keep = ckpt["bytes_done"] + ((size - ckpt["bytes_done"]) // 2 if tail == "half" else 0)
        with partial.open("r+b") as fh:
            fh.truncate(keep)
    assert run(rows) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == expected


def test_crash_after_last_checkpoint_before_rename(run, tmp_path, monkeypatch, capsys):
    rows = rows_of(8)
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(".partial"):
            raise Crash
        return real(src, dst)

    monkeypatch.setattr(resumable.os, "replace", replace)
    with pytest.raises(Crash):
        run(rows)
    monkeypatch.setattr(resumable.os, "replace", real)
    assert not (tmp_path / "out.jsonl").exists()
    fake = FakeReward()
    assert run(rows, reward=fake) == 0
    assert fake.pairs == 0 and "8 rows (0 scored now, 8 from an earlier run)" in capsys.readouterr().out
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 8
    assert leftovers(tmp_path) == []


def test_crash_after_rename_before_cleanup(run, tmp_path, capsys):
    rows = rows_of(8)
    assert run(rows, reward=FakeReward(fail_at=1)) == 130
    options = json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())["options"]  # what this command records
    assert run(rows) == 0
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
        "options": options,
    }
    (tmp_path / "out.jsonl.ckpt.json").write_text(json.dumps(ckpt))
    capsys.readouterr()
    fake = FakeReward()
    assert run(rows, reward=fake) == 0
    assert fake.pairs == 0 and "was already complete: 8 rows" in capsys.readouterr().out
    assert (tmp_path / "out.jsonl").read_bytes() == final and leftovers(tmp_path) == []


def test_checkpoint_records_the_config_and_budget_may_change(run, tmp_path):
    rows = rows_of(12)
    flags = ["--max-length", "100", "--reduction", "sum"]
    assert run(rows, *flags, "--batch-tokens", "64", reward=FakeReward(fail_at=1)) == 130
    ckpt = json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())
    assert ckpt["config"] == asdict(CMEConfig(max_tokens_per_batch=64, max_length=100, reduction="sum"))
    assert ckpt["options"]["max_length"] == 100 and "max_tokens_per_batch" not in ckpt["options"]
    assert run(rows, "--max-length", "99", "--reduction", "sum", "--batch-tokens", "64") == 2  # scores would change
    fake = FakeReward()
    assert run(rows, *flags, "--batch-tokens", "128", reward=fake) == 0  # the budget does not change scores
    assert fake.pairs == 8 and leftovers(tmp_path) == []


def test_options_mismatch_is_refused_then_overwrite_starts_over(run, tmp_path, capsys):
    rows = rows_of(12)
    assert run(rows, reward=FakeReward(fail_at=1)) == 130
    capsys.readouterr()
    assert run(rows, "--dtype", "float32") == 2
    err = capsys.readouterr().err
    assert "another input or options: dtype: 'auto' then, 'float32' now" in err and "--overwrite" in err
    assert json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())["rows_done"] == 4  # untouched
    fake = FakeReward()
    assert run(rows, "--dtype", "float32", "--overwrite", reward=fake) == 0
    assert fake.pairs == 12 and len((tmp_path / "out.jsonl").read_text().splitlines()) == 12


def test_mismatch_with_no_row_done_just_restarts(run, tmp_path):
    rows = rows_of(6)
    assert run(rows, reward=FakeReward(fail_at=0)) == 130
    assert run(rows, "--dtype", "float32") == 0  # nothing was written: no reason to refuse
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 6


def test_changed_input_is_refused(run, tmp_path, capsys):
    rows = rows_of(12)
    assert run(rows, reward=FakeReward(fail_at=1)) == 130
    write_jsonl(tmp_path / "in.jsonl", rows[:-1] + [{**rows[-1], "prompt": "changed"}])
    assert run(rows) == 2
    assert "the input content changed" in capsys.readouterr().err


def test_existing_output_needs_overwrite(run, tmp_path, capsys):
    rows = rows_of(5)
    assert run(rows) == 0
    before = (tmp_path / "out.jsonl").read_bytes()
    capsys.readouterr()
    fake = FakeReward()
    assert run(rows, reward=fake) == 2
    assert "out.jsonl already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out.jsonl").read_bytes() == before
    assert fake.calls == 0 and leftovers(tmp_path) == []  # refused before loading: no lock, no checkpoint
    assert run(rows, "--overwrite", reward=fake) == 0
    assert fake.pairs == 5 and (tmp_path / "out.jsonl").read_bytes() == before


def test_inconsistent_checkpoint_files(run, tmp_path, capsys):
    rows = rows_of(12)
    assert run(rows, reward=FakeReward(fail_at=2)) == 130
    partial = tmp_path / "out.jsonl.partial"
    with partial.open("r+b") as fh:
        fh.truncate(partial.stat().st_size - 3)  # shorter than checkpointed: someone else touched it
    capsys.readouterr()
    assert run(rows) == 2
    assert "out.jsonl.partial is missing or shorter" in capsys.readouterr().err
    assert "out.jsonl.lock" not in leftovers(tmp_path)  # the lock taken for that run is gone
    (tmp_path / "out.jsonl.ckpt.json").write_text("{not json")
    assert run(rows) == 2
    assert "is not a valid checkpoint" in capsys.readouterr().err
    assert run(rows, "--overwrite") == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 12


# ---- time-based checkpoints -----------------------------------------------------------------------------------------


def test_calls_follow_a_fixed_grid_of_rows():
    assert score_job.STEP_ROWS == 32
    grid = list(score_job._calls(0, 100, 50))
    assert grid == [(0, 32, False), (32, 50, True), (50, 64, False), (64, 96, False), (96, 100, True)]
    assert list(score_job._calls(50, 100, 50)) == grid[2:]  # a run resumed at a checkpoint makes the same calls
    assert list(score_job._calls(0, 10, 4)) == [(0, 4, True), (4, 8, True), (8, 10, True)]


def ticking(monkeypatch, seconds_per_call: float, fail_at: int | None = None) -> FakeReward:
    """A `FakeReward` each of whose calls takes `seconds_per_call` on the checkpoint timer's (fake) clock."""
    now = [0.0]
    monkeypatch.setattr(score_job, "_clock", lambda: now[0])
    return FakeReward(fail_at=fail_at, on_call=lambda: now.__setitem__(0, now[0] + seconds_per_call))


def test_time_based_checkpoint_then_resume_is_identical(run, tmp_path, monkeypatch, capsys):
    rows = rows_of(100)
    expected = reference(run, tmp_path, rows)
    chunks = ["--chunk-rows", "128"]  # one chunk of 100 rows: only the timer cuts it (calls of 32 rows)
    assert run(rows, *chunks, reward=ticking(monkeypatch, 20.0, fail_at=2)) == 130  # killed in the third call
    ckpt = json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())
    assert ckpt["rows_done"] == 64  # saved once the second call ended 40 s (>= 30 s) after the start
    partial = tmp_path / "out.jsonl.partial"
    assert capsys.readouterr().err.strip() == (
        f"cme-reward: interrupted: 64 of 100 rows are saved in {partial}; rerun the same command to resume"
    )
    fake = FakeReward()
    assert run(rows, *chunks, reward=fake) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == expected and fake.pairs == 36
    assert leftovers(tmp_path) == []


def test_checkpoint_seconds_sets_the_timer(run, tmp_path, monkeypatch):
    rows = rows_of(100)
    flags = ["--chunk-rows", "128", "--checkpoint-seconds", "50"]
    assert run(rows, *flags, reward=ticking(monkeypatch, 20.0, fail_at=3)) == 130
    assert json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())["rows_done"] == 96  # 60 s > 50 s: 3 calls
    assert run(rows, "--checkpoint-seconds", "-1") == 2  # refused by the parser


def test_ctrl_c_saves_the_rows_scored_since_the_last_checkpoint(run, tmp_path, capsys):
    rows = rows_of(100)
    expected = reference(run, tmp_path, rows)
    assert run(rows, "--chunk-rows", "128", reward=FakeReward(fail_at=2)) == 130  # no checkpoint was due yet
    assert json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())["rows_done"] == 64
    assert "interrupted: 64 of 100 rows are saved" in capsys.readouterr().err
    fake = FakeReward()
    assert run(rows, "--chunk-rows", "128", reward=fake) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == expected and fake.pairs == 36


def test_as_chat_is_recorded_and_must_match_on_resume(run, tmp_path, capsys):
    rows = rows_of(12)
    assert run(rows, "--as-chat", reward=FakeReward(fail_at=1)) == 130
    assert json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())["options"]["as_chat"] is True
    capsys.readouterr()
    assert run(rows) == 2
    assert "as_chat: True then, None now" in capsys.readouterr().err
    seen = []
    fake = FakeReward(on_call=lambda: None)
    fake.score = lambda prompts, responses: seen.extend(prompts) or [-1.0] * len(prompts)
    assert run(rows, "--as-chat", reward=fake) == 0
    assert seen[0] == [{"role": "user", "content": rows[4]["prompt"]}]  # the rows after the checkpoint, as chat
    assert run(rows, "--as-chat", "--messages-column", "m", "--overwrite") == 2
    assert "--messages-column rows already are" in capsys.readouterr().err


def test_stale_partial_without_checkpoint_is_replaced(run, tmp_path):
    (tmp_path / "out.jsonl.partial").write_text('{"half": ')
    assert run(rows_of(6)) == 0
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == list(range(6))


def test_score_columns_replace_input_columns(run, tmp_path, caplog):
    assert run([{"prompt": "p", "response": "r", "cme": "old"}]) == 0
    out = read_jsonl(tmp_path / "out.jsonl")[0]
    assert out["cme"] != "old" and math.isfinite(out["cme"])
    assert "already have ['cme']" in caplog.text


# ---- SIGKILL of the real command at random moments --------------------------------------------------------------

KILL_ROWS = 2000
KILL_CHUNK = 50
WORDS = "the quick brown fox jumps over a lazy dog Paris is the capital of France sea blue deep wide".split()


def make_input(path: Path, rnd: random.Random) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(KILL_ROWS):
            prompt = f"{i}. " + " ".join(rnd.choices(WORDS, k=rnd.randint(2, 6)))
            response = " ".join(rnd.choices(WORDS, k=rnd.randint(0, 7)))  # some empty -> null
            fh.write(json.dumps({"id": i, "prompt": prompt, "response": response}) + "\n")
    return path


def rows_done(out: Path) -> int:
    """Rows acknowledged by the checkpoint (replaced atomically, so always readable)."""
    ckpt = out.with_name(out.name + ".ckpt.json")
    try:
        return json.loads(ckpt.read_text())["rows_done"]
    except FileNotFoundError:
        return 0


def unacknowledged(out: Path) -> int:
    """Bytes of the partial file past the checkpointed offset (a chunk written but not yet acknowledged)."""
    try:
        done = json.loads(out.with_name(out.name + ".ckpt.json").read_text())["bytes_done"]
        return out.with_name(out.name + ".partial").stat().st_size - done
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigkill_at_random_moments_then_resume(tmp_path):
    """SIGKILL `python -m cme_reward.cli score` at random moments, rerun the same command each time: the final
    output is byte-identical to an uninterrupted run and `out.jsonl` never exists in a partial state."""
    rnd = random.Random(20240611)
    verifier = save_verifier(tmp_path / "verifier", seed=1)
    src = make_input(tmp_path / "in.jsonl", rnd)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    package_root = str(Path(cme_reward.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "cme_reward.cli", "score", "--verifier", str(verifier), "--input",
                str(src), "--output", str(out), "--chunk-rows", str(KILL_CHUNK), "--device", "cpu",
                "--no-progress"]  # fmt: skip

    def launch(out: Path, log: Path) -> subprocess.Popen:
        with log.open("wb") as fh:
            return subprocess.Popen(command(out), env=env, stdout=fh, stderr=subprocess.STDOUT)

    # uninterrupted reference; also measures the time until the first chunk is checkpointed (startup + model load)
    ref = tmp_path / "ref" / "out.jsonl"
    ref.parent.mkdir()
    start = time.monotonic()
    proc = launch(ref, tmp_path / "ref.log")
    first_chunk = last_chunk = None
    while proc.poll() is None:
        done = rows_done(ref)
        if first_chunk is None and done > 0:
            first_chunk = time.monotonic() - start
        if done == KILL_ROWS and last_chunk is None:
            last_chunk = time.monotonic() - start
        time.sleep(0.002)
    assert proc.returncode == 0, (tmp_path / "ref.log").read_text()
    expected = ref.read_bytes()
    assert expected.count(b"\n") == KILL_ROWS and first_chunk is not None
    # seconds per chunk once the model is loaded: kill delays scale with it, so every kill lands mid-output
    per_chunk = ((last_chunk or time.monotonic() - start) - first_chunk) / (KILL_ROWS // KILL_CHUNK - 1)

    # a watcher: whenever out.jsonl exists it must be the complete output
    out = tmp_path / "run" / "out.jsonl"
    out.parent.mkdir()
    seen_partial: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                data = out.read_bytes()
            except FileNotFoundError:
                pass
            else:
                if data != expected:
                    seen_partial.append(len(data))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    plan = ["startup", "output", "output", "torn", "torn"]
    rnd.shuffle(plan)
    kills = []  # (mode, rows acknowledged before launch, after the kill, unacknowledged bytes left in the partial)
    try:
        for attempt, mode in enumerate(plan):
            before = rows_done(out)
            proc = launch(out, tmp_path / f"run{attempt}.log")
            launched = time.monotonic()
            if mode == "startup":  # during python/torch start-up or model loading, at the latest at the first chunk
                deadline = launched + rnd.uniform(0.2, 0.9) * first_chunk
                while proc.poll() is None and time.monotonic() < deadline and rows_done(out) <= before:
                    time.sleep(0.002)
            else:  # mid-output: once this run has checkpointed a chunk...
                while proc.poll() is None and rows_done(out) <= before:
                    assert time.monotonic() - launched < 120, "no progress"
                    time.sleep(0.002)
                if mode == "output":  # ...after a random extra delay
                    time.sleep(rnd.uniform(0.0, 2.5) * per_chunk)
                else:  # "torn": ...as soon as a chunk is in the partial file but not yet in the checkpoint
                    deadline = time.monotonic() + 3 * per_chunk
                    while proc.poll() is None and time.monotonic() < deadline and unacknowledged(out) <= 0:
                        time.sleep(0.0005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if out.exists() or proc.returncode != -signal.SIGKILL:
                pytest.fail(f"run {attempt} finished (rc={proc.returncode}) before its kill: too little data")
            kills.append((mode, before, rows_done(out), unacknowledged(out)))

        proc = launch(out, tmp_path / "final.log")
        assert proc.wait(timeout=300) == 0, (tmp_path / "final.log").read_text()
    finally:
        stop.set()
        watcher.join()

    timing = f"first chunk after {first_chunk:.1f} s, {per_chunk * 1000:.0f} ms per chunk"
    print(f"{timing}; kills (mode, rows before, rows after, unacknowledged bytes): {kills}")
    assert out.read_bytes() == expected, "resumed output differs from the uninterrupted run"
    assert seen_partial == [], f"out.jsonl was seen incomplete ({seen_partial[:3]} bytes)"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]  # no partial/checkpoint/lock left
    mid_output = [k for k in kills if k[0] != "startup"]
    assert len(kills) == 5 and len(mid_output) == 4
    assert all(before < after < KILL_ROWS for _, before, after, _ in mid_output), kills  # each one landed mid-output
    final_log = (tmp_path / "final.log").read_text()
    assert f"wrote {out}: {KILL_ROWS} rows" in final_log and "from an earlier run" in final_log
