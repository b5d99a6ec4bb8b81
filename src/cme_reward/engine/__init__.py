"""The in-process scorer: batch planning (`planning`, pure functions), the model's parts and probes (`model`), LM-head
kernels (`kernels`, pure tensor math) and the loop that ties them together (`engine`)."""

from .engine import OutOfMemoryError, ScoringEngine

__all__ = ["OutOfMemoryError", "ScoringEngine"]
