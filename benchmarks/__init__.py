"""Scoring benchmarks of `cme_reward`: library code in `benchmarks.lib`, entry points run from the repository root.

python -m benchmarks.scoring --quick --preset tiny
python -m benchmarks.targets
python -m benchmarks.inference_cost
"""

__all__: list[str] = []
