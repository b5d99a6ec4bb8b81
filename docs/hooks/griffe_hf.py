"""Griffe extension: reads the package's docstring dialect (TRL's, see `docs/CONTRACT.md`) as Google-style
docstrings, so that the API pages render it without editing every docstring.

Before griffe parses a docstring, its text is rewritten:

- `Args:` / `Attributes:` items ``name (`type`, *optional*, defaults to `x`):`` become ``name (type):``: backticks
  dropped, alternatives (`` `a`, `b` or `c` ``) joined with `|` so that the type parses as an expression (and its
  names link), `*optional*` dropped, and `defaults to` dropped where the signature shows the default (kept at the
  start of the description otherwise). ``a, b (`type`): text`` documents `a` and `b`.
- `Returns:` ``` `type`: text``` and `Raises:` ``` `Error`: text``` lose their backticks.
- `Example:` followed by a fenced block (or an indented one) becomes an "Example" admonition.
- Cross references: [`Name`], [`Name.attr`] and [`Name`](dotted.path) become autorefs to the object they name,
  resolved in the docstring's scope (its own members, then its module's names and imports) or else, as HF's doc
  builder does, by a name defined once in the whole package (e.g. [`DenseGRPOTrainer`] anywhere); a name outside
  `cme_reward` (TRL, transformers, the standard library: no inventory here) is shown as plain code, with HF's `~`
  prefix shortening it to its last part. A name that resolves to nothing is left as an autoref to itself, so that
  `mkdocs build --strict` fails on it ("Could not find cross-reference target") when its page is built.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from griffe import Extension, Module, NameResolutionError, Object, get_logger

logger = get_logger("griffe_hf")

PACKAGE = "cme_reward"
SECTION = re.compile(r"^(?P<title>[A-Z][A-Za-z ]*):\s*$")
PARAMETER_SECTIONS = {"Args", "Arguments", "Parameters", "Attributes"}
NAMES = re.compile(r"^(?P<names>\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*")
TICKED_TYPE = re.compile(r"^\[?`(?P<type>[^`]+)`\]?\s*:(?P<rest>.*)$")  # Returns: `type`: text (or [`Name`]: text)
RAISED = re.compile(r"^(?P<types>`?[\w.]+`?(?:\s*/\s*`?[\w.]+`?)*)\s*:(?P<rest>.*)$")  # Raises: `A` / `B`: text
CROSSREF = re.compile(r"\[`(?P<name>~?[A-Za-z_][\w.]*)`\](?:\((?P<target>[A-Za-z_][\w.]*)\))?(?![\[(])")
FENCE = re.compile(r"^\s*(```|~~~)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_top_level(text: str) -> list[str]:
    """`text` split at its commas that are outside backticks and brackets."""
    parts, depth, ticked, current = [], 0, False, []
    for char in text:
        if char == "`":
            ticked = not ticked
        elif not ticked and char in "([{":
            depth += 1
        elif not ticked and char in ")]}":
            depth -= 1
        if char == "," and depth == 0 and not ticked:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _parenthesized(text: str) -> tuple[str, str] | None:
    """`(inside) rest` -> (inside, rest) with nested brackets and backticks respected; None if unbalanced."""
    depth, ticked = 0, False
    for i, char in enumerate(text):
        if char == "`":
            ticked = not ticked
        elif not ticked and char == "(":
            depth += 1
        elif not ticked and char == ")":
            depth -= 1
            if depth == 0:
                return text[1:i], text[i + 1 :]
    return None


def _type_expression(parts: list[str]) -> str:
    """HF type alternatives (`` `a` ``, `` `b` or `c` ``) -> `a | b | c` (plain words kept if it is no expression)."""
    alternatives = [alt.strip() for part in parts for alt in re.split(r"\s+or\s+", part)]
    text = " | ".join(alt.replace("`", "") for alt in alternatives if alt)
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return ", ".join(part.replace("`", "") for part in parts)
    return text


class HFDialect(Extension):
    """Rewrites every docstring of the package before griffe parses it (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.defined: dict[str, set[str]] = {}  # name -> paths of the package's public objects of that name

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        if pkg.name == PACKAGE:
            self._index(pkg)
            self._visit(pkg, pkg)

    def _index(self, obj: Object) -> None:
        for name, member in obj.members.items():
            if not member.is_alias and not name.startswith("_"):
                self.defined.setdefault(name, set()).add(member.path)
                self._index(member)

    def _visit(self, obj: Object, pkg: Module) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self.rewrite(obj.docstring.value, obj, pkg)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, pkg)

    # ---- the text ------------------------------------------------------------------------------------------------

    def rewrite(self, text: str, obj: Object, pkg: Module) -> str:
        lines = text.split("\n")
        out: list[str] = []
        i = 0
        while i < len(lines):
            match = SECTION.match(lines[i])
            if match is None:
                out.append(lines[i])
                i += 1
                continue
            title = match["title"]
            start = i + 1
            end = start
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > 0):
                end += 1  # the section: indented lines (and blank ones) up to the next unindented line
            while end > start and not lines[end - 1].strip():
                end -= 1
            body = lines[start:end]
            if title == "Example":
                block, end = self._example(lines, start, end)
                out.extend(block)
            elif title in PARAMETER_SECTIONS:
                out.append(lines[i])
                out.extend(self._parameters(body, obj))
            elif title == "Returns":
                out.append(lines[i])
                out.extend(self._first_item(body, TICKED_TYPE, lambda m: f"{m['type']}:{m['rest']}"))
            elif title == "Raises":
                out.append(lines[i])
                out.extend(self._items(body, RAISED, lambda m: f"{m['types'].replace('`', '')}:{m['rest']}"))
            else:
                out.append(lines[i])
                out.extend(body)
            i = end
        return self._crossrefs("\n".join(out), obj, pkg)

    @staticmethod
    def _example(lines: list[str], start: int, end: int) -> tuple[list[str], int]:
        """`Example:` + an indented block, or + a fenced block at the same indentation -> an admonition."""
        first = start
        while first < len(lines) and not lines[first].strip():
            first += 1
        if first < len(lines) and _indent(lines[first]) == 0 and FENCE.match(lines[first]):
            close = next((j for j in range(first + 1, len(lines)) if FENCE.match(lines[j])), None)
            if close is None:
                return ["Example:"], start
            body, end = lines[first : close + 1], close + 1
        else:
            body = lines[start:end]
            depth = min((_indent(line) for line in body if line.strip()), default=0)
            body = [line[depth:] for line in body]
            while body and not body[0].strip():
                body.pop(0)
        if body and not FENCE.match(body[0]):
            body = ["```python", *body, "```"]
        return ["!!! example", "", *[f"    {line}" if line.strip() else "" for line in body]], end

    @staticmethod
    def _items(body: list[str], pattern: re.Pattern, replace: Any) -> list[str]:
        """Each item line (at the section's first indentation) matching `pattern` rewritten; the others kept."""
        depth = min((_indent(line) for line in body if line.strip()), default=0)
        out = []
        for line in body:
            match = pattern.match(line[depth:]) if line.strip() and _indent(line) == depth else None
            out.append(line[:depth] + replace(match) if match else line)
        return out

    def _first_item(self, body: list[str], pattern: re.Pattern, replace: Any) -> list[str]:
        return self._items(body[:1], pattern, replace) + body[1:]

    def _parameters(self, body: list[str], obj: Object) -> list[str]:
        """`Args:` / `Attributes:` items in HF's form -> Google's; `a, b: text` -> one item each."""
        depth = min((_indent(line) for line in body if line.strip()), default=0)
        items: list[list[str]] = []
        for line in body:
            if line.strip() and _indent(line) == depth or not items:
                items.append([line])
            else:
                items[-1].append(line)
        out = []
        for item in items:
            out.extend(self._parameter(item, depth, obj))
        return out

    def _parameter(self, item: list[str], depth: int, obj: Object) -> list[str]:
        head = item[0][depth:]
        names = NAMES.match(head)
        if names is None:
            return item
        rest = head[names.end() :]
        kind = ""
        if rest.startswith("("):
            split = _parenthesized(rest)
            if split is None:
                return item
            inside, rest = split
            parts = _split_top_level(inside)
            defaults = [p for p in parts if p.startswith("defaults to ")]
            types = [p for p in parts if p != "*optional*" and p not in defaults]
            kind = f" ({_type_expression(types)})" if types else ""
        else:
            defaults = []
        if not rest.lstrip().startswith(":"):
            return item
        description = rest.lstrip()[1:]
        out = []
        for name in re.split(r"\s*,\s*", names["names"]):
            text = description
            if defaults and not self._has_default(obj, name):
                text = f" {defaults[0][0].upper()}{defaults[0][1:]}.{text}"
            out.append(f"{' ' * depth}{name}{kind}:{text}")
            out.extend(item[1:])
        return out

    @staticmethod
    def _has_default(obj: Object, name: str) -> bool:
        """Whether the signature shows a default for `name` (a dataclass: its field has a value)."""
        name = name.lstrip("*")
        field = obj.members.get(name) if obj.is_class else None
        if field is not None and field.is_attribute and field.value is not None:
            return True
        try:
            return obj.parameters[name].default is not None  # type: ignore[attr-defined]
        except (AttributeError, KeyError):
            return False

    # ---- cross references ----------------------------------------------------------------------------------------

    def _crossrefs(self, text: str, obj: Object, pkg: Module) -> str:
        out, fenced = [], False
        for line in text.split("\n"):
            if FENCE.match(line):
                fenced = not fenced
            out.append(line if fenced else CROSSREF.sub(lambda m: self._crossref(m, obj, pkg), line))
        return "\n".join(out)

    def _crossref(self, match: re.Match, obj: Object, pkg: Module) -> str:
        name, target = match["name"], match["target"]
        short = name.startswith("~")
        name = name.lstrip("~")
        shown = name.rsplit(".", 1)[-1] if short else name
        path = target or self._resolve(name, obj)
        if path is None:
            return f"[`{shown}`][{name}]"  # autorefs reports it: a broken reference fails the strict build
        if path.split(".", 1)[0] != PACKAGE:
            return f"`{shown}`"  # outside the package: no inventory to link to
        if not self._exists(path, pkg):
            logger.warning(f"{obj.path}: [`{name}`] resolves to {path}, which does not exist")
        return f"[`{shown}`][{path}]"

    def _resolve(self, name: str, obj: Object) -> str | None:
        first, _, rest = name.partition(".")
        try:
            path = obj.resolve(first)
        except NameResolutionError:
            if first == PACKAGE:
                return name
            paths = self.defined.get(first, set())
            if len(paths) != 1:
                return None  # unknown, or ambiguous: left to autorefs, which reports it
            path = next(iter(paths))
        return f"{path}.{rest}" if rest else path

    @staticmethod
    def _exists(path: str, pkg: Module) -> bool:
        if path == pkg.path:
            return True
        try:
            pkg[path.removeprefix(f"{pkg.path}.")]
        except (KeyError, ValueError, AttributeError):
            return False
        return True
