"""Experiments that measure what the CME reward does to a generator: a rerunnable, scaled-down replication.

Entry points run from the repository root: `python -m experiments.replicate`, `python -m experiments.judge`,
`python -m experiments.report`.
"""

__all__: list[str] = []
