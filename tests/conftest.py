import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_verifier  # noqa: E402


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory) -> Path:
    """A tiny random-init Qwen2 verifier with a BOS-adding, chat-templated tokenizer, saved to disk."""
    return save_verifier(tmp_path_factory.mktemp("qwen2"), "qwen2", seed=0)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A tiny random-init Llama verifier whose tokenizer has no BOS and no chat template."""
    return save_verifier(tmp_path_factory.mktemp("llama"), "llama", seed=1, bos=False, chat_template=False)
