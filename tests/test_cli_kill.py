"""SIGKILL ``python -m cme_reward.cli score`` at random moments, rerun the same command each time, and check that the
final output is byte-identical to an uninterrupted run (no row lost, duplicated or reordered) and that ``out.jsonl``
never exists in a partial state."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_models import save_verifier

import cme_reward

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

ROWS = 2000
CHUNK = 50
WORDS = "the quick brown fox jumps over a lazy dog Paris is the capital of France sea blue deep wide".split()


def make_input(path: Path, rnd: random.Random) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(ROWS):
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


def test_sigkill_at_random_moments_then_resume(tmp_path):
    rnd = random.Random(20240611)
    verifier = save_verifier(tmp_path / "verifier", seed=1)
    src = make_input(tmp_path / "in.jsonl", rnd)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    package_root = str(Path(cme_reward.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "cme_reward.cli", "score", "--verifier", str(verifier), "--input", str(src),
                "--output", str(out), "--chunk-rows", str(CHUNK), "--device", "cpu", "--no-progress"]  # fmt: skip

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
        if done == ROWS and last_chunk is None:
            last_chunk = time.monotonic() - start
        time.sleep(0.002)
    assert proc.returncode == 0, (tmp_path / "ref.log").read_text()
    reference = ref.read_bytes()
    assert reference.count(b"\n") == ROWS and first_chunk is not None
    # seconds per chunk once the model is loaded: kill delays scale with it, so every kill lands mid-output
    per_chunk = ((last_chunk or time.monotonic() - start) - first_chunk) / (ROWS // CHUNK - 1)

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
                if data != reference:
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
    assert out.read_bytes() == reference, "resumed output differs from the uninterrupted run"
    assert seen_partial == [], f"out.jsonl was seen incomplete ({seen_partial[:3]} bytes)"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]  # no partial/checkpoint/lock left
    mid_output = [k for k in kills if k[0] != "startup"]
    assert len(kills) == 5 and len(mid_output) == 4
    assert all(before < after < ROWS for _, before, after, _ in mid_output), kills  # each one landed mid-output
    final_log = (tmp_path / "final.log").read_text()
    assert f"wrote {out}: {ROWS} rows" in final_log and "from an earlier run" in final_log
