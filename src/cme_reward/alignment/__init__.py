"""Per-token values across tokenizers: where each token sits on the response's bytes (`token_spans`) and how values
move from the verifier's tokens to the policy's (`transfer`). Pure functions."""

from .token_spans import token_byte_spans
from .transfer import ALIGNMENTS, dense_values

__all__ = ["ALIGNMENTS", "dense_values", "token_byte_spans"]
