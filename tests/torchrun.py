"""The one two-process harness of the tests: run a script under `torch.distributed.run` on the CPU (gloo), with a
clean environment, a free port and a hard timeout that takes every worker down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Ids of the processes below `pid` (Linux /proc; empty elsewhere)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def stop(proc: subprocess.Popen) -> None:
    """End a hung torchrun and its workers (which torchrun starts in their own sessions): SIGTERM to torchrun, which
    tears its workers down, then SIGKILL to whatever of them is left, each by its id."""
    workers = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def torchrun(script: Path, args: list[str], *, nproc: int = 2, timeout: float = 120) -> str:
    """Run `script args...` in `nproc` CPU processes; returns their output, fails the test on error or timeout."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # in case pytest runs under one
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(script), *args]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s; output tail:\n{output[-6000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}); output tail:\n{output[-6000:]}"
    return output
