"""Bar chart of one benchmark run: throughput per method, and useful FLOP/s against the measured matmul peak of
each run's own dtype. Bars are named by method."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from cme_reward.files.atomic import write_atomic

from .methods import display_name
from .report import own_peak_fraction

__all__ = ["chart"]

logger = logging.getLogger(__name__)
COLORS = {"float32": "tab:orange", "bfloat16": "tab:green"}


def chart(path: str | Path, results: dict[str, dict], *, title: str, peaks: dict[str, dict]) -> Path | None:
    """Draw the chart of `results` to the PNG `path` (written atomically).

    Args:
        path (`str` or `Path`): the PNG to write.
        results (`dict[str, dict]`): result name (`KEY` or `KEY:DTYPE`) -> record (see `report.summarize`).
        title (`str`): figure title.
        peaks (`dict[str, dict]`): dtype name -> measured matmul peak (`flops_per_s`), for the legend.

    Returns:
        `Path` of the PNG, or `None` when matplotlib is not installed (`pip install -e ".[bench]"`).

    Example:
        ```python
        >>> chart("results/run.png", report["results"], title="run", peaks=report["matmul_peak"])
        ```
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        logger.warning("no chart: matplotlib is not installed (pip install -e '.[bench]')")
        return None
    names = list(results)
    labels = [display_name(n, sep="\n") for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars = ax1.bar(labels, [results[n]["scored_tokens_per_s"] for n in names], color="tab:blue")
    for bar, n in zip(bars, names):
        s = results[n].get("speedup_vs_a")
        ax1.annotate(f"{s:.2f}x" if s else "", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                     va="bottom", fontsize=8)  # fmt: skip
    ax1.set_ylabel("scored response tokens / s")
    ax1.set_title("throughput (label: speed-up vs naive loop)", fontsize=9)

    dtypes = [results[n]["dtype"] for n in names]
    fracs = [own_peak_fraction(results[n]) for n in names]
    ax2.bar(labels, [100 * (f or 0.0) for f in fracs], color=[COLORS.get(d, "tab:gray") for d in dtypes])
    handles = []  # one legend entry per dtype, with the peak its runs are measured against
    for dtype in dict.fromkeys(dtypes):
        peak = (peaks.get(dtype) or {}).get("flops_per_s")
        text = f"{dtype}: {peak / 1e9:,.0f} GFLOP/s" if peak else dtype
        handles.append(Patch(color=COLORS.get(dtype, "tab:gray"), label=text))
    ax2.legend(handles=handles, fontsize=8, title="measured matmul peak", title_fontsize=8)
    ax2.set_ylabel("useful FLOP/s, % of that peak")
    ax2.set_title("efficiency", fontsize=9)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())
