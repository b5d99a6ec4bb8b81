"""What ships with the code: the PEP 561 `py.typed` marker, without which type checkers ignore the package's hints."""

from __future__ import annotations

from pathlib import Path

import pytest

import cme_reward

ROOT = Path(__file__).resolve().parents[1]


def test_py_typed_marker_is_in_the_package_and_the_wheel_list():
    assert (Path(cme_reward.__file__).parent / "py.typed").is_file()
    assert (ROOT / "src" / "cme_reward" / "py.typed").is_file()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["cme_reward"]  # what puts it in the wheel
