"""`CMEConfig`: one validation table, defaults written once, and the README's Options table that documents them."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
from pathlib import Path

import pytest

from cme_reward import CMEConfig, CrossModelEntropyReward, VerifierSpec
from cme_reward.config import REDUCTIONS

README = Path(__file__).parent.parent / "README.md"


def test_every_default_passes_its_check_and_every_option_is_checked():
    config = CMEConfig()
    assert CMEConfig.field_names() == tuple(f.name for f in dataclasses.fields(CMEConfig))
    for name in CMEConfig.field_names():
        assert CMEConfig.problem(name, getattr(config, name)) is None, name
        assert CMEConfig.problem(name, object()), f"{name} accepts anything: it has no check"


# (option, a rejected value, what the message says is allowed)
BAD = [
    ("max_tokens_per_batch", 0, "a positive int"),
    ("max_tokens_per_batch", 2.0, "a positive int"),
    ("max_tokens_per_batch", True, "a positive int"),
    ("max_length", 1, "an int >= 2 or None"),
    ("reduction", "median", f"one of {REDUCTIONS}"),
    ("empty_value", math.nan, "a finite float or None"),
    ("empty_value", "low", "a finite float or None"),
    ("prefix_sharing", 1, "a bool"),
    ("deduplicate", None, "a bool"),
    ("head_chunk_tokens", 0, "a positive int or None"),
    ("max_padding", -0.5, "a float >= 0 or None"),
    ("pack_tokens", 1, "0 (off) or an int >= 2"),
    ("pack_tokens", -5, "0 (off) or an int >= 2"),
    ("pack_tokens", 2.5, "0 (off) or an int >= 2"),
    ("pack_tokens", True, "0 (off) or an int >= 2"),
    ("min_shared_tokens", -1, "an int >= 0"),
    ("head_vocab_block", -1, "an int >= 0 (0 = off) or None"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), BAD)
def test_bad_values_name_the_option_and_what_is_allowed(name, value, allowed):
    assert CMEConfig.problem(name, value) == allowed
    with pytest.raises(ValueError, match=re.escape(f"{name} must be {allowed}, got {value!r}")):
        CMEConfig(**{name: value})
    with pytest.raises(ValueError, match=re.escape(f"{name} must be {allowed}")):
        CMEConfig().with_options(**{name: value})  # the copy is validated again


@pytest.mark.parametrize(
    "options",
    [
        {"max_padding": math.inf},
        {"max_padding": 0},
        {"head_vocab_block": 0},
        {"pack_tokens": 2},
        {"max_length": 2},
        {"empty_value": -10},
        {"min_shared_tokens": 0},
    ],
)
def test_edge_values_are_allowed(options):
    assert dataclasses.asdict(CMEConfig(**options)).items() >= options.items()


def test_with_options_copies_and_config_is_frozen():
    config = CMEConfig(reduction="sum")
    assert config.with_options() is config
    other = config.with_options(max_tokens_per_batch=64)
    assert other == CMEConfig(reduction="sum", max_tokens_per_batch=64) and config.max_tokens_per_batch == 8192
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.reduction = "min"
    with pytest.raises(TypeError):
        config.with_options(no_such_option=1)


# ---- README "## Options" table --------------------------------------------------------------------------------------

LITERAL = r"(?:`[^`]*`|-?\d[\d_.e+-]*)"  # a Python literal in backticks, or a bare number
LEADING_LITERALS = re.compile(rf"^{LITERAL}(?:\s*(?:/|,)\s*{LITERAL})*")


def options_table(text: str) -> dict[str, str]:
    """Option name -> default cell of the markdown table under `## Options`. The first column holds option names in
    backticks (several per row separated by ", " or " / "); the column headed "default" starts with the default(s) as
    Python literals in backticks (or bare numbers), one for all the row's names or one per name, in order, separated
    by " / " or ", "; prose may follow (e.g. "`None` (the verifier's context size)")."""
    section = re.search(r"^## Options\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert section, "README.md has no '## Options' section"
    rows = [line.strip().strip("|").split("|") for line in section.group(1).splitlines() if line.startswith("|")]
    header = [cell.strip().lower() for cell in rows[0]]
    assert "default" in header, f"the Options table has no 'default' column: {header}"
    column = header.index("default")
    table = {}
    for cells in rows[2:]:  # after the header and the |---| line
        names = re.findall(r"`([^`]+)`", cells[0])
        cell = cells[column].strip()
        match = LEADING_LITERALS.match(cell)
        literals = re.findall(LITERAL, match.group(0)) if match else []
        assert len(literals) in (1, len(names)), (
            f"README Options row {names}: the default column {cell!r} must start with one default literal for all "
            f"names or one per name (e.g. `None`, `True` / `False`, 8192)"
        )
        for k, name in enumerate(names):
            assert name not in table, f"option {name!r} is listed twice in the README Options table"
            table[name] = literals[k if len(literals) > 1 else 0].strip("`")
    return table


def documented_defaults() -> dict[str, object]:
    """Every option `CrossModelEntropyReward` takes, with its default: `CMEConfig` and `VerifierSpec` fields (the
    spec's `source` is the positional `verifier`) and the reward's own keywords (`config`, `name`,
    `show_progress_bar`...)."""
    defaults = {f.name: f.default for f in dataclasses.fields(CMEConfig)}
    defaults |= {f.name: f.default for f in dataclasses.fields(VerifierSpec) if f.name != "source"}
    own = inspect.signature(CrossModelEntropyReward.__init__).parameters.values()
    defaults |= {p.name: p.default for p in own if p.kind is p.KEYWORD_ONLY}
    return defaults


def test_readme_options_table_matches_the_dataclasses():
    table = options_table(README.read_text(encoding="utf-8"))
    expected = documented_defaults()
    assert sorted(table) == sorted(expected), (
        f"README Options table: missing {sorted(set(expected) - set(table))}, "
        f"not options {sorted(set(table) - set(expected))}"
    )
    wrong = {}
    for name, literal in table.items():
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            value = f"<not a Python literal: {literal!r}>"
        if type(value) is not type(expected[name]) or value != expected[name]:
            wrong[name] = (value, expected[name])
    assert not wrong, f"README default vs dataclass default: {wrong}"


def test_options_table_parser_reads_names_and_defaults():
    text = (
        "## Options\n\n| option | default | meaning |\n|---|---|---|\n| `a` / `b` | `True` / `None` | x |\n"
        '| `c`, `d` | 8192 | y |\n| `e` | `"mean"` (CME) | z |\n\n## Next\n| `f` | 1 | w |\n'
    )
    assert options_table(text) == {"a": "True", "b": "None", "c": "8192", "d": "8192", "e": '"mean"'}
    with pytest.raises(AssertionError, match="must start with one default literal"):
        options_table("## Options\n| option | default |\n|---|---|\n| `x` | the verifier's context |\n")
