"""Verifier presets: random-init causal LMs of real shapes (their cost equals real weights'), a saved model's real
weights instead (`load_model_dir`), and FLOP counts."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

__all__ = ["PRESETS", "FlopModel", "build_config", "build_model", "converted_copy", "flop_model", "load_model_dir",
           "shape_of"]  # fmt: skip

SMOLLM2 = dict(
    arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
    rope_theta=100000.0, rms_norm_eps=1e-5,
)  # fmt: skip
QWEN2_COMMON = dict(arch="qwen2", max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)
PRESETS: dict[str, dict] = {
    "tiny": dict(
        arch="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False, max_position_embeddings=2048,
    ),
    "smollm2-135m": SMOLLM2,
    "small-152k": dict(
        QWEN2_COMMON, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "qwen2-0.5b": dict(
        QWEN2_COMMON, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "qwen2-1.5b": dict(
        QWEN2_COMMON, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "qwen2-7b": dict(
        QWEN2_COMMON, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
    ),
}  # fmt: skip


@dataclass
class FlopModel:
    """Per-token FLOPs of a decoder: linear layers of the body, attention per attended key, LM head."""

    body_linear: int  # 2 * (weights of all linear layers in the decoder layers)
    attn_per_key: int  # QK^T + AV over all layers, per (query, key) pair
    head: int  # 2 * hidden * vocab
    params: int

    def body(self, position: int) -> int:
        """Body FLOPs of the token at `position` (0-based; it attends to position + 1 keys)."""
        return self.body_linear + self.attn_per_key * (position + 1)

    def body_span(self, start: int, stop: int) -> int:
        """Body FLOPs of positions start..stop-1 of one sequence."""
        n = stop - start
        keys = (start + 1 + stop) * n // 2
        return self.body_linear * n + self.attn_per_key * keys


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")


def build_config(preset: str, attn_implementation: str | None = None):
    """The `transformers` config of `preset`.

    Args:
        preset (`str`):
            A key of `PRESETS`.
        attn_implementation (`str`, *optional*):
            Attention kernel (`"sdpa"`, `"eager"`...); `None` keeps transformers' choice.

    Returns:
        `LlamaConfig` or `Qwen2Config`.

    Example:
        ```python
        >>> build_config("smollm2-135m").vocab_size
        49152
        ```
    """
    from transformers import LlamaConfig, Qwen2Config

    _check_preset(preset)
    spec = dict(PRESETS[preset])
    arch = spec.pop("arch")
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = cls(**spec)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return config


def build_model(
    preset: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    logit_std: float | None = 2.0,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """Random-init model of `preset`'s shape, in eval mode, frozen.

    Args:
        preset (`str`):
            A key of `PRESETS`.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Parameter dtype.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`):
            Where the parameters are created.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the random init.
        logit_std (`float`, *optional*, defaults to `2.0`):
            Scale the final norm so logits have about this spread (random init is nearly uniform; real LMs are
            peaked), which makes score comparisons between methods meaningful: at 2.0 the bf16-vs-fp32 score drift
            is close to that of real SmolLM2-135M weights on real text (`python -m benchmarks.bf16_real_check`).
            `None` keeps the raw init.
        attn_implementation (`str`, *optional*):
            Attention kernel; `None` keeps transformers' choice.

    Returns:
        `torch.nn.Module`: the causal LM.

    Example:
        ```python
        >>> model = build_model("tiny")
        >>> model.config.vocab_size
        1024
        ```
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = build_config(preset, attn_implementation)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    if logit_std:
        _calibrate_logits(model, logit_std, seed)
    return model


def load_model_dir(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", attn_implementation: str | None = None
) -> torch.nn.Module:
    """A saved causal LM's real weights in float32, in eval mode, frozen: e.g. SmolLM2-135M-Instruct exported to
    safetensors, the directory a vLLM server serves too, so that both score the same weights.

    Args:
        path (`str` or `os.PathLike`): a `transformers` model directory (`config.json` and weights).
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): where to load it.
        attn_implementation (`str`, *optional*): attention kernel; `None` keeps transformers' choice.

    Returns:
        `torch.nn.Module`: the causal LM.
    """
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).to(device)
    return model.eval().requires_grad_(False)


def shape_of(config) -> dict:
    """The preset-style description of a loaded model's config (`arch` and the fields `PRESETS` give).

    Example:
        ```python
        >>> shape_of(build_config("tiny"))["vocab_size"]
        1024
        ```
    """
    keys = {k for spec in PRESETS.values() for k in spec} - {"arch"}
    return {"arch": config.model_type} | {k: getattr(config, k) for k in sorted(keys) if hasattr(config, k)}


@torch.inference_mode()
def _calibrate_logits(model: torch.nn.Module, target_std: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, 64), generator=gen).to(model.device)  # (1, 64)
    std = model(input_ids=ids).logits.float().std().item()
    model.model.norm.weight.mul_(target_std / max(std, 1e-6))


def flop_model(config) -> FlopModel:
    """FLOPs of a Llama/Qwen2-style decoder from its config (matmuls only; norms, rotary, softmax are not counted).

    Args:
        config (`PretrainedConfig`):
            A decoder config with `hidden_size`, `num_hidden_layers`, `intermediate_size`, attention head counts.

    Returns:
        [`FlopModel`]: per-token FLOPs.

    Example:
        ```python
        >>> flop_model(build_config("tiny")).head  # 2 * hidden * vocab
        131072
        ```
    """
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = 2 * h * q + 2 * h * kv + 3 * h * config.intermediate_size  # q, o, k, v, gate, up, down
    embeddings = vocab * h * (1 if config.tie_word_embeddings else 2)
    return FlopModel(
        body_linear=2 * per_layer * layers,
        attn_per_key=2 * 2 * q * layers,
        head=2 * h * vocab,
        params=per_layer * layers + embeddings,  # + norms and biases, which are negligible
    )


def converted_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `model` in `dtype` on the same device, converted one parameter at a time.

    Peak memory is the model plus its converted copy, not two copies in the original dtype (matters for a 7B model
    on one GPU). Tied parameters stay tied.

    Args:
        model (`torch.nn.Module`):
            The source model; left unchanged.
        dtype (`torch.dtype`):
            Target dtype of parameters and floating-point buffers.

    Returns:
        `torch.nn.Module`: the converted copy.

    Example:
        ```python
        >>> bf16 = converted_copy(build_model("tiny"), torch.bfloat16)
        ```
    """
    memo = {id(p): None for p in model.parameters()}  # deepcopy leaves the parameters out
    clone = copy.deepcopy(model, memo)
    converted: dict[int, torch.nn.Parameter] = {}
    for name, module in model.named_modules():
        target = clone.get_submodule(name)
        for pname, p in module._parameters.items():
            if p is not None:
                if id(p) not in converted:
                    converted[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
                target._parameters[pname] = converted[id(p)]
    return clone.to(dtype)  # floating-point buffers, like `model.to(dtype)` would
