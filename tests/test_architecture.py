"""The shape of the tree: no import cycles (lazy imports inside functions included), the core never imports the
command line or the server, one exception base class, and `__all__` names only what each module defines."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "cme_reward": ROOT / "src" / "cme_reward",
    "experiments": ROOT / "experiments",
    "benchmarks": ROOT / "benchmarks",
}
# the core: what `CrossModelEntropyReward`, the trainer and the scorers need; never the commands or the server
CORE = ("cme_reward.config", "cme_reward.reward", "cme_reward.scoring", "cme_reward.engine", "cme_reward.backends",
        "cme_reward.verifier", "cme_reward.alignment", "cme_reward.training", "cme_reward.scorer", "cme_reward.http",
        "cme_reward.errors", "cme_reward.types", "cme_reward.reference")  # fmt: skip


def module_name(path: Path) -> str:
    for package, directory in PACKAGES.items():
        if path.is_relative_to(directory):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def modules() -> dict[str, Path]:
    return {module_name(p): p for d in PACKAGES.values() for p in d.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that `name` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module -> the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # a package importing its own submodules (its __init__) is not a cycle of responsibility
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_never_imports_commands_experiments_or_the_server():
    edges = graph()
    bad = {
        (a, b)
        for a, targets in edges.items()
        if a.startswith(CORE)
        for b in targets
        if b.startswith(("cme_reward.cli", "cme_reward.server", "experiments", "benchmarks"))
    }
    assert not bad, sorted(bad)


def test_one_exception_base_class():
    from cme_reward.errors import CMEError

    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id in ("Exception", "ValueError", "RuntimeError", "TypeError")
                for b in node.bases
            ):
                found.append(f"{name}.{node.name}")
    outside = sorted(f for f in found if not f.startswith("cme_reward.errors."))
    assert not outside, f"exception classes outside cme_reward.errors: {outside}"
    errors = importlib.import_module("cme_reward.errors")
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), CMEError), name


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith("cme_reward")))
def test_all_names_what_the_module_defines(name):
    """`__all__` lists the module's own public names (a re-export is listed only by a package `__init__`)."""
    path = modules()[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exported = next(
        (ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
         and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)),
        None,
    )  # fmt: skip
    if exported is None:
        return
    assert all(not n.startswith("_") for n in exported), exported
    if path.name == "__init__.py":
        return
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {t.id for t in targets if isinstance(t, ast.Name)}
    assert set(exported) <= defined, f"{name}.__all__ lists names defined elsewhere: {sorted(set(exported) - defined)}"
