"""Cross-Model Entropy (CME): a label-free reward scored by a frozen verifier language model."""

from typing import Any

from .config import CMEConfig
from .errors import CMEError
from .reward import CrossModelEntropyReward
from .training.advantages import dense_advantages
from .types import TokenScores
from .verifier.spec import VerifierSpec

__all__ = [
    "CMEConfig",
    "CMEError",
    "CrossModelEntropyReward",
    "DenseGRPOConfig",
    "DenseGRPOTrainer",
    "TokenScores",
    "VerifierSpec",
    "dense_advantages",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # the trainer imports TRL's trainers: load it only when asked for
    if name in ("DenseGRPOTrainer", "DenseGRPOConfig"):
        from .training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'cme_reward' has no attribute {name!r}")
