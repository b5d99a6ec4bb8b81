"""The machine: measured dense-matmul peak per dtype, spec-sheet GPU peaks, and what it runs (CPU, GPU, versions)."""

from __future__ import annotations

import os
import platform
import time

import torch

from .measure import ForeignLoad, sync, wait_idle

__all__ = ["DTYPES", "GPU_SPEC_PEAK", "cpu_model", "gpu_spec_peak", "machine_info", "matmul_peak", "measure_peaks"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Spec-sheet dense peaks (FLOP/s) for MFU, keyed by a substring of the CUDA device name.
GPU_SPEC_PEAK = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L40S": {"bfloat16": 362e12, "float32": 91.6e12},
}


def _mm_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, reps: int) -> float:
    a = torch.randn(m, k, device=device).to(dtype)  # (m, k)
    b = torch.randn(k, n, device=device).to(dtype)  # (k, n)
    torch.mm(a, b)
    sync(device)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = max(best, 2 * m * k * n / (time.perf_counter() - start))
    return best


@torch.inference_mode()
def matmul_peak(
    dtype: torch.dtype,
    device: torch.device,
    *,
    sizes: tuple[int, ...] | None = None,
    shapes: list[tuple[int, int, int]] | None = None,
    reps: int = 3,
) -> dict:
    """The machine's practical dense-matmul peak in `dtype`: best FLOP/s of big square `torch.mm` (and, when given, of
    the model's own (m, k, n) matmul shapes, which on CPU can run faster than a square mm bigger than the caches).

    Args:
        dtype (`torch.dtype`): operand dtype.
        device (`torch.device`): where to run.
        sizes (`tuple[int, ...]`, *optional*): square sizes; `None`: (4096, 8192) on GPU, (1024, 2048, 3072) on CPU.
        shapes (`list[tuple[int, int, int]]`, *optional*): extra (m, k, n) shapes.
        reps (`int`, *optional*, defaults to `3`): timed repeats per shape on CPU (10x that on GPU).

    Returns:
        `dict`: `flops_per_s` (best of all), `square_flops_per_s`, `square`, `model_shapes`, `dtype`.

    Example:
        ```python
        >>> matmul_peak(torch.float32, torch.device("cpu"), sizes=(256,))["flops_per_s"] > 0
        True
        ```
    """
    if sizes is None:
        sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048, 3072)
    reps = reps if device.type == "cpu" else 10 * reps
    square = {n: _mm_rate(n, n, n, dtype, device, reps) for n in sizes}
    shaped = {f"{m}x{k}x{n}": _mm_rate(m, k, n, dtype, device, reps) for m, k, n in shapes or []}
    return {
        "flops_per_s": max([*square.values(), *shaped.values()]),
        "square_flops_per_s": max(square.values()),
        "square": square,
        "model_shapes": shaped,
        "dtype": str(dtype).removeprefix("torch."),
    }


def measure_peaks(
    device: torch.device,
    *,
    dtypes: tuple[str, ...] = tuple(DTYPES),
    sizes: tuple[int, ...] | None = None,
    shapes: list[tuple[int, int, int]] | None = None,
    retries: int = 2,
    max_foreign: float = 0.1,
    wait_idle_s: float = 0.0,
    previous: dict | None = None,
) -> dict[str, dict]:
    """Measured dense-matmul peak of each dtype, each run against its own dtype's peak (see [`matmul_peak`]).

    On CPU a measurement during which other processes used more than `max_foreign` CPUs is retried (up to `retries`
    times), after waiting up to `wait_idle_s` seconds for a quiet machine. With `previous`, the better of the two.

    Returns:
        `dict[str, dict]`: dtype name -> `matmul_peak` result plus `foreign_cpus`.
    """
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"dtypes must be among {list(DTYPES)}, got {unknown}")
    peaks = dict(previous or {})
    cpu = device.type == "cpu"
    for name in dtypes:
        for _ in range(1 + retries):
            if wait_idle_s and cpu:
                wait_idle(max_foreign, wait_idle_s)
            with ForeignLoad() as load:
                peak = matmul_peak(DTYPES[name], device, sizes=sizes, shapes=shapes)
            if peaks.get(name) is None or peak["flops_per_s"] > peaks[name]["flops_per_s"]:
                peaks[name] = dict(peak, foreign_cpus=load.cpus)
            if load.cpus <= max_foreign or not cpu:
                break
    return peaks


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict:
    """CPU, thread count, library versions and, on CUDA, the GPU and its memory."""
    import transformers

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": None,
    }
    try:
        import lm_eval

        info["lm_eval"] = getattr(lm_eval, "__version__", "installed")
    except ImportError:
        info["lm_eval"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def gpu_spec_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    """Spec-sheet dense peak of the GPU in `dtype` (`None` on CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_SPEC_PEAK.items():
        if key in name:
            return peaks.get(str(dtype).removeprefix("torch."))
    return None
