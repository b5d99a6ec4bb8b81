"""Which verifier to load and how: one frozen spec, alias resolution, a fast failure when the hub is out of reach."""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import socket
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import aliases
from .aliases import VERIFIER_ALIASES

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "VerifierSpec", "check_hub_source"]

BACKENDS = ("transformers", "vllm")
# options of backend="vllm" -> (default, check, what is allowed); refused with backend="transformers" when set
_VLLM_OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "served_model": (None, lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "api_key": (None, lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "request_timeout": (120.0, lambda v: _is_number(v) and v > 0, "a number of seconds > 0"),
    "max_concurrency": (8, lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "max_retries": (4, lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "pairs_per_request": (16, lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "retry_backoff": (0.5, lambda v: _is_number(v) and v >= 0, "a number of seconds >= 0"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class VerifierSpec:
    """Where the verifier comes from and how it is placed: everything `from_pretrained` needs, written once.

    Args:
        source (`str`, `os.PathLike` or `PreTrainedModel`):
            Hub id, local directory, `.gguf` file, an alias of a verifier shipped by a registry package
            (`"smollm2"`, `"gemma3-270m"`), or an already loaded causal LM (then `tokenizer` is required).
        tokenizer (`str`, `os.PathLike` or `PreTrainedTokenizerBase`, *optional*):
            The verifier's tokenizer; loaded from `source` when `None`.
        device (`str` or `torch.device`, *optional*):
            `None`: `cuda:$LOCAL_RANK` when CUDA is available (one verifier per accelerate / torchrun process), else
            CPU. A model object stays where it is unless `device` is given.
        dtype (`str` or `torch.dtype`, *optional*):
            Weights dtype: `"float32"`, `"bfloat16"`, `"float16"`, `"auto"` or `None` (bfloat16 on GPU, float32 on
            CPU; a model object keeps its dtype). Log-softmax always runs in float32.
        revision (`str`, *optional*):
            Hub revision (branch, tag or commit) to pin.
        trust_remote_code (`bool`, defaults to `False`):
            Let the verifier's repository run its own Python code (logged when on).
        use_safetensors (`bool`, *optional*, defaults to `True`):
            Load safetensors weights only; a directory holding only pickle weights is refused. `False` trusts them.
        gguf_file (`str`, *optional*):
            GGUF file name inside a directory `source` (set by a `.gguf` source or an alias).
        model_kwargs (`dict`, *optional*):
            More keyword arguments for `AutoModelForCausalLM.from_pretrained`.
        tokenizer_kwargs (`dict`, *optional*):
            More keyword arguments for `AutoTokenizer.from_pretrained`.
        backend (`str`, defaults to `"transformers"`):
            Where the verifier runs: `"transformers"` (in this process) or `"vllm"` (a running `vllm serve` at
            `base_url`; only the tokenizer is loaded here, `metric="entropy"` is not available).
        base_url (`str`, *optional*):
            The vLLM server, `http://host:port` (backend `"vllm"` only).
        served_model (`str`, *optional*):
            The served model id to use on the vLLM server; `None`: the one whose id (or root) is `source`.
        api_key (`str`, *optional*):
            Bearer token of the vLLM server (`vllm serve --api-key`); never recorded or printed.
        request_timeout (`float`, defaults to `120.0`):
            Seconds for one request to the vLLM server.
        max_concurrency (`int`, defaults to `8`):
            Requests in flight at once to the vLLM server (and pooled connections).
        max_retries (`int`, defaults to `4`):
            Retries after the first try of a request to the vLLM server: connection errors, timeouts and HTTP 408,
            425, 429, 502, 503, 504 (`cme_reward.http`).
        pairs_per_request (`int`, defaults to `16`):
            Most pairs in one vLLM request (a `batch_size` given to `score` lowers it); `max_tokens_per_batch` of
            [`CMEConfig`] bounds a request's prompt tokens.
        retry_backoff (`float`, defaults to `0.5`):
            Seconds before the first retry, doubled each retry (at most 30 s, at least the server's `Retry-After`).

    The vLLM options (`served_model` to `retry_backoff`) are refused with `backend="transformers"`; the in-process
    options `device`, `dtype` and `model_kwargs` are ignored with `backend="vllm"`, with a warning.

    Example:

    ```python
    >>> from cme_reward import VerifierSpec
    >>> VerifierSpec("smollm2").resolved().gguf_file
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    ```
    """

    source: str | os.PathLike | PreTrainedModel
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None
    device: str | torch.device | None = None
    dtype: str | torch.dtype | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    use_safetensors: bool | None = True
    gguf_file: str | None = None
    model_kwargs: dict[str, Any] | None = None
    tokenizer_kwargs: dict[str, Any] | None = None
    backend: str = "transformers"
    base_url: str | None = None
    served_model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    request_timeout: float = 120.0
    max_concurrency: int = 8
    max_retries: int = 4
    pairs_per_request: int = 16
    retry_backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if (self.backend == "vllm") != (self.base_url is not None):
            raise ValueError("backend='vllm' needs base_url='http://host:port' (and base_url needs backend='vllm')")
        for name, (default, ok, allowed) in _VLLM_OPTIONS.items():
            value = getattr(self, name)
            if value == default and type(value) is type(default):
                continue
            if self.backend != "vllm":
                raise ValueError(f"`{name}` is an option of backend='vllm' (a vLLM server); this spec has "
                                 f"backend={self.backend!r}")  # fmt: skip
            if not ok(value):
                raise ValueError(f"`{name}` must be {allowed}, got {value!r}")
        if not isinstance(self.trust_remote_code, bool):
            raise ValueError(f"`trust_remote_code` must be a bool, got {self.trust_remote_code!r}")
        for name in ("model_kwargs", "tokenizer_kwargs"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"`{name}` must be a dict or None, got {type(value).__name__}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The option names, in declaration order (`source` first)."""
        return tuple(f.name for f in fields(cls))

    @property
    def is_object(self) -> bool:
        """True when `source` is a model object rather than something to load."""
        return not isinstance(self.source, (str, os.PathLike))

    def resolved(self) -> VerifierSpec:
        """A copy whose alias `source` is replaced by the registry package's files (an explicit `gguf_file` wins).

        Raises:
            ModuleNotFoundError: the alias's package is not installed (the message gives the `pip` command).
        """
        if self.is_object:
            return self
        kind = VERIFIER_ALIASES.get(str(self.source).strip().lower())
        if kind is None:
            return self
        directory, gguf_file = aliases.locate_verifier(kind)
        return replace(self, source=str(directory), gguf_file=self.gguf_file or gguf_file)

    def describe(self) -> dict[str, Any]:
        """The spec as plain JSON-able values (objects by type name): what a checkpoint or a log records."""
        out = {}
        for name in self.field_names():
            value = getattr(self, name)
            if name == "api_key":
                out[name] = None if value is None else "***"
            elif value is None or isinstance(value, (bool, int, float, str)):
                out[name] = value
            elif isinstance(value, os.PathLike):
                out[name] = os.fspath(value)
            elif isinstance(value, dict):
                out[name] = {str(k): repr(v) for k, v in value.items()}
            else:
                out[name] = str(value) if name in ("device", "dtype") else type(value).__name__
        return out


def _near_aliases(name: str) -> str:
    close = difflib.get_close_matches(name.strip().lower(), list(VERIFIER_ALIASES), n=1, cutoff=0.7)
    return f" Did you mean {close[0]!r}?" if close else ""


@lru_cache(maxsize=4)
def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_hub_source(spec: VerifierSpec) -> None:
    """Fail at once, with one clear message, when `spec.source` can only come from the hub and the hub is out of
    reach (`HF_HUB_OFFLINE` set, or no connection) and the model is not in the local cache.

    Local paths, model objects and cached hub ids pass. Without this check an unreachable hub id costs about 25 s of
    retries before a long `OSError`.

    Raises:
        FileNotFoundError: `source` is neither an existing path nor something that looks like a hub id.
        OSError: the hub cannot be reached and the model is not cached (names near-miss aliases).
    """
    if spec.is_object:
        return
    source = os.fspath(spec.source)
    if Path(source).exists():
        return
    alias_hint = _near_aliases(source)
    if source.endswith(".gguf") or not _HUB_ID.match(source):
        raise FileNotFoundError(
            f"verifier {source!r} is not an existing file or directory, a known alias "
            f"({', '.join(sorted(set(VERIFIER_ALIASES)))}) or a hub id.{alias_hint}"
        )
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(source, spec.gguf_file or "config.json", revision=spec.revision)
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise OSError(
            f"verifier {source!r} is not a local path or a known alias, and it is not in the local cache while the "
            f"Hugging Face hub is offline (HF_HUB_OFFLINE=1).{alias_hint}"
        )
    if not _hub_reachable(constants.ENDPOINT):
        raise OSError(
            f"verifier {source!r} is not a local path or a known alias, and the Hugging Face hub "
            f"({constants.ENDPOINT}) cannot be reached from this machine.{alias_hint}"
        )
