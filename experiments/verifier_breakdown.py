"""Per kind of bad answer, for every verifier of a `cme-reward compare-verifiers` report on
`data/verifier_labelled.jsonl` (or any labelled file with `source` and `question_id` columns), with the report's
bootstrap settings:

- AUROC: all good responses against the bad ones of that `source` (unpaired: questions differ in difficulty);
- paired accuracy: how often the good answer to a question scores above that question's bad answer of that source
  (each bad row against the good rows of its own question, ties one half), a pairwise accuracy with its interval.

    python -m experiments.verifier_breakdown outputs/verifier_selection/scalar.json

Prints a Markdown table, one row per bad source; responses without a score are left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cme_reward.selection.stats import auroc_interval, pairwise_interval

__all__ = ["breakdown", "main"]


def _shown(interval, n: int) -> str:
    return f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}] (n={n})"


def _auroc(scores: list, labels: list[bool], keep: list[int], options: dict) -> str:
    used = [i for i in keep if scores[i] is not None]
    ys = [labels[i] for i in used]
    if sum(ys) in (0, len(ys)):
        return "n/a"
    return _shown(auroc_interval([scores[i] for i in used], ys, **options), len(used) - sum(ys))


def _paired(scores: list, rows: list[dict], labels: list[bool], bad: list[int], options: dict) -> str:
    chosen, rejected = [], []
    for i in bad:
        for j, row in enumerate(rows):
            if labels[j] and row["question_id"] == rows[i]["question_id"] and None not in (scores[i], scores[j]):
                chosen.append(scores[j])
                rejected.append(scores[i])
    return _shown(pairwise_interval(chosen, rejected, **options), len(chosen)) if chosen else "n/a"


def breakdown(report: dict, rows: list[dict], column: str = "source") -> list[str]:
    """Markdown lines: per bad `column` value and verifier, the AUROC and the paired accuracy (module docstring)."""
    labels = [bool(r["label"]) for r in rows]
    options = report["bootstrap"]
    names = [v["name"] for v in report["verifiers"]]
    head = [f"{n} AUROC [95% CI]" for n in names] + [f"{n} paired accuracy [95% CI]" for n in names]
    lines = [f"| bad {column} (n) | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for source in sorted({r[column] for r, good in zip(rows, labels) if not good}):
        bad = [i for i, r in enumerate(rows) if not labels[i] and r[column] == source]
        keep = [i for i in range(len(rows)) if labels[i]] + bad
        cells = [_auroc(v["scores"], labels, keep, options) for v in report["verifiers"]]
        cells += [_paired(v["scores"], rows, labels, bad, options) for v in report["verifiers"]]
        lines.append(f"| {source} ({len(bad)}) | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the .json written by cme-reward compare-verifiers")
    parser.add_argument("--data", type=Path, help="the labelled input (default: the report's input path)")
    parser.add_argument("--column", default="source", help="the column naming each bad kind (default: source)")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text(encoding="utf-8"))
    data = args.data or Path(report["input"]["path"])
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != report["input"]["responses"]:
        raise SystemExit(f"{data} has {len(rows)} rows but the report scored {report['input']['responses']}")
    print("\n".join(breakdown(report, rows, args.column)))


if __name__ == "__main__":
    main()
