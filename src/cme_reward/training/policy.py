"""A trainable policy from the same sources as a verifier (alias, hub id, local directory), for the examples and the
replication."""

from __future__ import annotations

__all__ = ["load_trainable_policy"]


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

    from ..verifier.spec import VerifierSpec

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
