"""Cross-Model Entropy (CME): a label-free reward scored by a frozen verifier language model."""

from .config import CMEConfig
from .reward import CrossModelEntropyReward
from .types import TokenScores
from .verifier import VerifierSpec

__all__ = ["CMEConfig", "CrossModelEntropyReward", "TokenScores", "VerifierSpec"]
__version__ = "0.1.0"
