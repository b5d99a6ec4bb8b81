"""Load and place the frozen verifier: hub id, local directory, GGUF file, or a model object."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .spec import VerifierSpec, check_hub_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DTYPES",
    "context_size",
    "load_tokenizer",
    "load_verifier",
    "resolve_device",
    "resolve_dtype",
    "split_gguf",
]

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` -> this process's GPU (`cuda:$LOCAL_RANK`, set by accelerate/torchrun) if CUDA is available, else CPU."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`device` must be like 'cpu', 'cuda' or 'cuda:1', got {device!r}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device={device!r}` asks for CUDA, but torch sees no CUDA device")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None` -> bfloat16 on GPU, float32 elsewhere. Strings: "float32", "bfloat16", "float16", "auto" (= None)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"`dtype` must be one of {sorted(DTYPES)}, 'auto', a torch dtype or None, got {dtype!r}")


def split_gguf(source: str, gguf_file: str | None) -> tuple[str, str | None]:
    """`path/to/model.gguf` -> (`path/to`, `model.gguf`); other sources pass through."""
    if gguf_file is None and str(source).endswith(".gguf"):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {source}")
        return str(path.parent), path.name
    return str(source), gguf_file


def _check_weights_format(source: str, use_safetensors: bool | None) -> None:
    """Refuse a local directory holding only pickle weights unless the caller opted in."""
    path = Path(source)
    if use_safetensors is False or not path.is_dir():
        return
    names = {p.name for p in path.iterdir()}
    has_safe = any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names)
    has_pickle = any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    if has_pickle and not has_safe:
        raise ValueError(
            f"{source} only has pickle weights (.bin/.pt), which can run code when loaded. Convert them to "
            "safetensors, or pass use_safetensors=False if you trust this source."
        )


def load_tokenizer(spec: VerifierSpec, source: str, *, gguf_file: str | None = None, revision: str | None = None):
    """The tokenizer at `source` with the spec's safety flags and `tokenizer_kwargs`."""
    from transformers import AutoTokenizer

    kwargs = dict(spec.tokenizer_kwargs or {})
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=spec.trust_remote_code, **kwargs)


def load_verifier(spec: VerifierSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Returns `(model, tokenizer)`, the model frozen (`eval()`, no grad) on its device.

    A model object stays on its device and in its dtype unless `spec.device` / `spec.dtype` are given; anything else
    is resolved (aliases), checked (a hub id with the hub out of reach fails at once) and loaded on
    `resolve_device(spec.device)` in `resolve_dtype(spec.dtype)`.
    """
    if not spec.is_object:  # before importing transformers (seconds): an unreachable source fails at once
        spec = spec.resolved()
        check_hub_source(spec)
    from transformers import AutoModelForCausalLM, PreTrainedModel

    if spec.trust_remote_code:
        logger.warning("trust_remote_code=True: the verifier's repository code will run on this machine")
    tokenizer = spec.tokenizer
    if isinstance(spec.source, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("`tokenizer` is required when `verifier` is a model object (pass its tokenizer)")
        model = spec.source
        if spec.device is not None:
            model = model.to(resolve_device(spec.device))
        if spec.dtype is not None:
            model = model.to(dtype=resolve_dtype(spec.dtype, model.device))
    elif isinstance(spec.source, (str, os.PathLike)):
        device = resolve_device(spec.device)
        source, gguf_file = split_gguf(os.fspath(spec.source), spec.gguf_file)
        kwargs = dict(spec.model_kwargs or {})
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        else:
            _check_weights_format(source, spec.use_safetensors)
            if spec.use_safetensors is not None:
                kwargs.setdefault("use_safetensors", spec.use_safetensors)
        kwargs.setdefault("dtype", resolve_dtype(spec.dtype, device))
        logger.info("Loading verifier %s%s on %s", source, f" ({gguf_file})" if gguf_file else "", device)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **kwargs
            )
        except OSError as err:
            if spec.use_safetensors and "safetensors" in str(err).lower():
                raise ValueError(
                    f"{source} has no safetensors weights; pass use_safetensors=False if you trust its pickle weights"
                ) from err
            raise
        if getattr(model, "hf_device_map", None) is None:  # a device_map hands placement to accelerate
            model = model.to(device)
        if tokenizer is None:
            tokenizer = load_tokenizer(spec, source, gguf_file=gguf_file, revision=spec.revision)
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(spec, os.fspath(tokenizer), revision=spec.revision)
    else:
        raise TypeError(
            f"`verifier` must be a hub id, a local path, a .gguf file, an alias or a PreTrainedModel, "
            f"got {type(spec.source).__name__}"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(spec, os.fspath(tokenizer))
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def context_size(model: Any) -> int:
    """The verifier's context size (`max_position_embeddings`, else 2048)."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    size = getattr(config, "max_position_embeddings", None)
    return int(size) if isinstance(size, int) and size > 1 else 2048
