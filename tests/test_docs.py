"""The API reference cannot fall behind the code: every name in the `__all__` of a public module of `cme_reward` (the
package's own included) is rendered by a `::: path` directive of some page under `docs/api/` (built by `mkdocs build
--strict`, see `.ci/run`), unless the module is listed in `UNDOCUMENTED`; every directive names something that
exists; every API page is in the nav of `mkdocs.yml`.

Reads the pages and the sources only (`ast`: nothing is imported, mkdocs is not needed). A directive renders a module's
`__all__` (the site's `filters: public`) unless its `members` option says otherwise, or one object; a name counts as
rendered wherever the object it is bound to (through imports) is rendered.
"""

from __future__ import annotations

import ast
import re
import textwrap
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
API = ROOT / "docs" / "api"
PACKAGE = "cme_reward"

# modules whose names need no API page (prefix match), and why
UNDOCUMENTED = {
    "cme_reward.cli.": "the command internals: docs/api/cli.md shows every command's --help and the entry point",
    "cme_reward.data": "MT-Bench shipped by registry packages, for the demo, benchmarks and experiments",
}

DIRECTIVE = re.compile(r"^::: *(?P<path>[\w.]+) *$")


def module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def public_modules() -> list[str]:
    names = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return names


@cache
def module_info(module: str) -> tuple[list[str] | None, set[str], dict[str, str]]:
    """(`__all__` or None, names defined at module level, imported name -> dotted path it is bound to)."""
    path = module_file(module)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    exported, defined, imported = None, set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defined.add(target.id)
                    if target.id == "__all__" and node.value is not None:
                        exported = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(p for p in (base, node.module) if p)
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{source}.{alias.name}"
    return exported, defined, imported


def canonical(path: str, seen: frozenset[str] = frozenset()) -> str | None:
    """Where the object at `path` is defined (`module.Name`), following imports; None if it cannot be found."""
    if module_file(path) is not None:
        return path
    module, _, name = path.rpartition(".")
    if not module or module_file(module) is None or path in seen:
        return None
    _, defined, imported = module_info(module)
    if name in defined:
        return path
    if name in imported:
        return canonical(imported[name], seen | {path})
    return None


def directives() -> list[tuple[str, str, dict]]:
    """(page, path, options) of every `::: path` directive of the API pages."""
    found = []
    for page in sorted(API.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            match = DIRECTIVE.match(line)
            if match is None:
                continue
            block = []
            for follow in lines[i + 1 :]:
                if follow.strip() and not follow.startswith(" "):
                    break
                block.append(follow)
            options = (yaml.safe_load(textwrap.dedent("\n".join(block))) or {}).get("options") or {}
            found.append((page.name, match["path"], options))
    return found


@cache
def rendered() -> set[str]:
    """The dotted paths the pages render, and where each of them is defined."""
    paths = set()
    for _, path, options in directives():
        paths.add(path)
        if module_file(path) is None:
            continue
        members = options.get("members")
        if members is None or members is True:
            exported, defined, _ = module_info(path)
            members = exported if exported is not None else sorted(n for n in defined if not n.startswith("_"))
        paths.update(f"{path}.{name}" for name in members or ())
    return paths | {c for c in map(canonical, paths) if c is not None}


def test_directives_name_existing_objects():
    missing = [f"{page}: ::: {path}" for page, path, _ in directives() if canonical(path) is None]
    assert not missing, f"API pages document objects that do not exist: {missing}"


def test_api_pages_are_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [page.name for page in sorted(API.glob("*.md")) if f"api/{page.name}" not in nav]
    assert not missing, f"add these API pages to the nav of mkdocs.yml: {missing}"


def undocumented(module: str) -> str | None:
    """Why `module` needs no API page, or None."""
    for prefix, why in UNDOCUMENTED.items():
        if module.startswith(prefix) if prefix.endswith(".") else module == prefix or module.startswith(f"{prefix}."):
            return why
    return None


def test_public_names_are_rendered():
    shown = rendered()
    missing = []
    for module in public_modules():
        exported, _, _ = module_info(module)
        if undocumented(module) or not exported:
            continue
        for name in exported:
            target = canonical(f"{module}.{name}")
            if target is None:  # bound lazily (a module `__getattr__`): rendered from a submodule that defines it
                ok = any(p.startswith(f"{module}.") and p.endswith(f".{name}") and canonical(p) == p for p in shown)
            else:
                ok = f"{module}.{name}" in shown or target in shown
            if not ok:
                missing.append(f"{module}.{name}")
    assert not missing, (
        f"public names (in an __all__) rendered on no API page: {missing}. Add a `::: module` (or `::: module.NAME`) "
        f"directive to a page under docs/api/, or list the module in UNDOCUMENTED ({__name__})."
    )
