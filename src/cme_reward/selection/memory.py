"""Peak memory of a block of work (loading and running one verifier), without psutil.

On a CUDA device: `torch.cuda.max_memory_allocated`, its counter reset at the start. On the CPU: how far the process's
peak resident set size rose above its resident size at the start. On Linux the kernel's peak counter (`VmHWM`) is
reset through `/proc/self/clear_refs`, so each block gets its own peak; elsewhere `resource.getrusage`'s
`ru_maxrss` (a lifetime peak) is used, which reads 0 for a block whose peak stays under an earlier one.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MemoryPeak", "PeakMemory"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class MemoryPeak:
    """`mib`: the peak in MiB (`None` when it cannot be measured); `method`: what was measured."""

    mib: float | None
    method: str


def _status_kib(name: str) -> int | None:
    try:
        found = re.search(rf"^{name}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _max_rss_kib() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


class PeakMemory:
    """Measures the peak memory of the work inside a `with` block.

    Call `result(device)` after the block, with the device the work ran on (known only once a verifier is loaded).

    Example:
        ```python
        >>> with PeakMemory() as peak:
        ...     reward = CrossModelEntropyReward("smollm2")
        ...     reward.score(prompts, responses)
        >>> peak.result(reward.device)
        MemoryPeak(mib=412.3, method='peak RSS rise (VmHWM)')
        ```
    """

    def __enter__(self) -> PeakMemory:
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._hwm = _reset_peak_rss()
        self._start_kib = _status_kib("VmRSS") if self._hwm else _max_rss_kib()
        self._end_kib: int | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._end_kib = _status_kib("VmHWM") if self._hwm else _max_rss_kib()
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            self._cuda_peak = torch.cuda.max_memory_allocated()

    def result(self, device: object) -> MemoryPeak:
        """The peak of the block: GPU memory allocated by torch on a CUDA `device`, else the process's RSS rise."""
        if self._end_kib is None:
            raise RuntimeError("PeakMemory.result() needs the `with` block to have ended")
        if "cuda" in str(device) and self._cuda:
            return MemoryPeak(self._cuda_peak / 2**20, "torch.cuda.max_memory_allocated")
        if self._start_kib is None:
            return MemoryPeak(None, "unavailable")
        method = "peak RSS rise (VmHWM)" if self._hwm else "ru_maxrss rise (a lower bound)"
        return MemoryPeak(max(0, self._end_kib - self._start_kib) / 1024, method)
