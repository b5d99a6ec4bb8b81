"""The `cme-reward` command line (`main`): the commands, their shared flags (`flags`), and what only they need (the
HTML heatmap, number formatting)."""

from .main import main

__all__ = ["main"]
