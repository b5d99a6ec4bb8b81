"""What verifier to load and where: the spec (`spec`), verifiers shipped by registry packages (`aliases`) and the
loader (`loading`, which imports torch and transformers; import it directly)."""

from .aliases import VERIFIER_ALIASES
from .spec import BACKENDS, VerifierSpec, check_hub_source

__all__ = ["BACKENDS", "VERIFIER_ALIASES", "VerifierSpec", "check_hub_source"]
