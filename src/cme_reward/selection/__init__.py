"""Verifier selection: which frozen verifier's scores separate good responses from bad ones best.

[`compare_verifiers`] scores labelled responses (or preference pairs, [`load_comparison_data`]) with each verifier in
turn and returns a [`Comparison`]: AUROC or pairwise accuracy with bootstrap intervals, class means, paired
differences, and the cost of scoring; `cme_reward.selection.report` writes it as JSON, Markdown and an SVG ROC plot.
The statistics (`cme_reward.selection.stats`) are pure functions of plain sequences.
"""

from .compare import Comparison, Difference, VerifierResult, compare_verifiers
from .inputs import ComparisonData, load_comparison_data
from .report import write_report
from .runs import VerifierRun, score_verifier

__all__ = ["Comparison", "ComparisonData", "Difference", "VerifierResult", "VerifierRun", "compare_verifiers",
           "load_comparison_data", "score_verifier", "write_report"]  # fmt: skip
