"""A [`Comparison`] as files: the JSON result, a Markdown table and the ROC curves as an SVG, side by side (same stem),
each written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from ..files.atomic import write_atomic
from ..files.jsonl import finite
from .compare import Comparison, VerifierResult
from .roc_svg import roc_svg

__all__ = ["comparison_markdown", "report_paths", "write_report"]


def report_paths(output: str | Path) -> dict[str, Path]:
    """`{"json", "md", "svg"}` paths of a report whose JSON is `output` (`report.json` -> `report.md`,
    `report.svg`)."""
    output = Path(output)
    return {"json": output, "md": output.with_suffix(".md"), "svg": output.with_suffix(".svg")}


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(result: VerifierResult) -> str:
    v = result.value
    return "n/a" if v is None else f"{v.estimate:.3f} [{v.low:.3f}, {v.high:.3f}]"


def _cost(result: VerifierResult) -> tuple[str, str]:
    run = result.run
    rate = "n/a" if run.tokens_per_second is None else f"{run.tokens_per_second:,.0f}"
    memory = "n/a" if run.peak_memory_mib is None else f"{run.peak_memory_mib:,.0f} MiB"
    return rate, memory


def _setting(comparison: Comparison) -> str:
    config, data = comparison.config, comparison.data
    span = "whole response" if config.score_span is None else f"span `{config.score_span}`"
    good = sum(data.labels)
    what = (f"{data.rows} preference pairs" if comparison.kind == "pairs"
            else f"{data.rows} labelled responses ({good} good, {data.rows - good} bad)")  # fmt: skip
    return (f"{what} from `{data.path.name}`; scores: metric `{config.metric}`, reduction `{config.reduction}`, "
            f"{span}. Intervals: {comparison.confidence:.0%} percentile bootstrap, {comparison.n_resamples} "
            f"resamples, seed {comparison.seed}.")  # fmt: skip


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as Markdown: the setting, one table row per verifier, the paired differences, the notes."""
    metric = comparison.metric
    good, bad = ("chosen", "rejected") if comparison.kind == "pairs" else ("good", "bad")
    unit = "pairs" if comparison.kind == "pairs" else "responses"
    lines = [
        f"# Verifier comparison: {comparison.data.path.name}",
        "",
        _setting(comparison),
        "",
        f"| verifier | {metric} [{comparison.confidence:.0%} CI] | mean {good} | mean {bad} | gap | {unit} used | "
        "unscorable responses | tokens/s | peak memory | device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison.verifiers:
        c = r.classes
        rate, memory = _cost(r)
        means = (_number(c.mean_good), _number(c.mean_bad), _number(c.gap)) if c else ("n/a",) * 3
        lines.append(f"| {r.name} | {_interval(r)} | {' | '.join(means)} | {r.used} | {r.unscorable} | {rate} | "
                     f"{memory} | {r.run.device} {r.run.dtype} |")  # fmt: skip
    if comparison.differences:
        lines += ["", f"## Paired differences ({metric}, A - B)", "",
                  f"| A | B | difference [{comparison.confidence:.0%} CI] | p-value | {unit} both scored |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for d in comparison.differences:
            v = d.value
            shown = "n/a" if v is None else f"{v.estimate:+.3f} [{v.low:+.3f}, {v.high:+.3f}]"
            p = "n/a" if v is None else f"{v.p_value:.3g}"
            lines.append(f"| {d.a} | {d.b} | {shown} | {p} | {d.rows} |")
    if comparison.notes:
        lines += ["", "Notes:", "", *[f"- {note}" for note in comparison.notes]]
    return "\n".join(lines) + "\n"


def _svg(comparison: Comparison) -> str:
    curves = {r.name: r.roc for r in comparison.verifiers if r.roc}
    aucs = {r.name: r.value.estimate for r in comparison.verifiers if r.roc and r.value and comparison.kind != "pairs"}
    title = f"ROC: {comparison.data.path.name}"
    if comparison.config.score_span is not None:
        title += f", span {comparison.config.score_span}"
    if comparison.kind == "pairs":
        title += " (chosen vs rejected, unpaired)"
    return roc_svg(curves, title=title, aucs=aucs)


def write_report(comparison: Comparison, output: str | Path) -> dict[str, Path]:
    """Write the JSON result to `output`, and the Markdown table and ROC plot beside it (same stem, `.md` and `.svg`;
    the plot only when some verifier has a curve). Returns the paths written."""
    paths = report_paths(output)
    write_atomic(paths["json"], json.dumps(finite(comparison.to_dict()), indent=1, ensure_ascii=False) + "\n")
    write_atomic(paths["md"], comparison_markdown(comparison))
    if any(r.roc for r in comparison.verifiers):
        write_atomic(paths["svg"], _svg(comparison))
    else:
        del paths["svg"]
    return paths
