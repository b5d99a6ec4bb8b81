"""MkDocs hook: a top-level guide added to `docs/` later (e.g. `docs/reward-hacking.md`) joins the nav's "Guides"
section on its own, so that writing a page never needs an edit of `mkdocs.yml` (the order of the listed ones is kept;
the others follow, sorted by file name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GUIDES = "Guides"


def _listed(nav: Any) -> set[str]:
    """Every page path named anywhere in a nav (config) tree."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_listed(v) for v in nav))
    return set()


def on_config(config: Any) -> Any:
    nav = config["nav"]
    if not nav:
        return config
    guides = next((item[GUIDES] for item in nav if isinstance(item, dict) and GUIDES in item), None)
    if guides is None:
        guides = []
        nav.insert(1, {GUIDES: guides})
    listed = _listed(nav)
    guides.extend(p.name for p in sorted(Path(config["docs_dir"]).glob("*.md")) if p.name not in listed)
    return config
