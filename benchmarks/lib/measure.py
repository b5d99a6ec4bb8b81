"""Timing, peak memory (CPU: kernel peak RSS reset per run; GPU: allocator peak) and load from other processes."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import time
from collections.abc import Callable

import torch

__all__ = ["ForeignLoad", "PeakMemory", "release_memory", "reset_peak_rss", "setup_malloc", "sync", "timed",
           "wait_idle"]  # fmt: skip

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None and platform.system() == "Linux":
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC or None


def setup_malloc() -> None:
    """Fixed glibc mmap threshold (1 MiB): big tensors are mmapped and given back on free, so RSS deltas per method
    are not hidden by memory an earlier method freed but glibc kept."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def release_memory(device: torch.device) -> None:
    """Collect garbage, empty the CUDA cache and trim the C heap, so the next run starts from a clean baseline."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak extra memory inside the block: CUDA max_memory_allocated delta, or on CPU the process's peak RSS (VmHWM,
    reset on entry) minus its RSS on entry. No sampling thread: on 2 cores a sampler would steal time from the
    benchmark's threads. Where VmHWM cannot be reset, `peak_bytes` is None."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._ok = os.path.exists("/proc/self/status") and reset_peak_rss()
            self._base = _status_kib("VmRSS") * 1024 if self._ok else 0
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._ok:
            self.peak_bytes = _status_kib("VmHWM") * 1024 - self._base


def _busy_jiffies() -> tuple[int, int]:
    """(CPU jiffies all processes spent busy, jiffies this process spent), from /proc."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return user + nice + system + irq + softirq + steal, int(fields[11]) + int(fields[12])


class ForeignLoad:
    """CPUs kept busy by *other* processes during the block (0 on a quiet machine; on 2 cores, 1.0 means one core
    was taken from the benchmark). Linux only; 0.0 elsewhere."""

    def __enter__(self) -> ForeignLoad:
        self.cpus = 0.0
        self._start = time.perf_counter(), *(_busy_jiffies() if os.path.exists("/proc/stat") else (0, 0))
        return self

    def __exit__(self, *exc) -> None:
        if not os.path.exists("/proc/stat"):
            return
        t0, busy0, own0 = self._start
        busy, own = _busy_jiffies()
        elapsed = (time.perf_counter() - t0) * os.sysconf("SC_CLK_TCK")
        self.cpus = max(0.0, ((busy - busy0) - (own - own0)) / max(elapsed, 1e-9))


def wait_idle(max_foreign: float, timeout: float) -> float:
    """Wait (up to `timeout` s) until other processes use less than `max_foreign` CPUs over a 1 s window.

    Returns:
        `float`: seconds waited.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        with ForeignLoad() as load:
            time.sleep(1.0)
        if load.cpus < max_foreign:
            break
    return time.perf_counter() - start


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float, int | None, float]:
    """Run `fn` once.

    Returns:
        `tuple`: (result, seconds, peak extra bytes or None, CPUs used by other processes meanwhile).
    """
    release_memory(device)
    sync(device)
    with PeakMemory(device) as mem, ForeignLoad() as load:
        start = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - start
    return out, seconds, mem.peak_bytes, load.cpus
