"""The compared scorers. Each factory returns a [`Method`] whose `run(pairs)` gives one float32 tensor of per-token
log-probs per pair (or, for lm-eval, which only returns sums, a 0-d tensor holding the pair's mean log-prob), or a
string saying why the method cannot run here. Factories take the in-process model and keyword options (`budget`,
`lm_eval_batch_size`, `vllm_url`, `vllm_model`, `tokenizer`) and ignore the ones they do not use."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cme_reward import CMEConfig
from cme_reward.engine import ScoringEngine
from cme_reward.reference import reference_token_logprobs

from .results import portable_name
from .workload import Pair

__all__ = ["FACTORIES", "LABELS", "NAMES", "Method", "display_name", "engine", "lm_eval_hf", "naive", "pair_means",
           "vllm_server"]  # fmt: skip

# Short names (chart bars) and full labels (tables) of each method key.
NAMES = {
    "a": "naive loop",
    "b": "lm-eval HFLM",
    "c": "cme, no prefix sharing",
    "d": "cme full",
    "e": "cme full, chunked head",
    "g": "cme full + packing",
    "h": "cme full, entropy metric",
    "v": "vLLM server",
}
LABELS = {
    "a": "(a) naive loop",
    "b": "(b) lm-eval HFLM",
    "c": "(c) cme, no prefix sharing",
    "d": "(d) cme full",
    "e": "(e) cme full, chunked head (no vocab blocks)",
    "g": "(g) cme full + packing of short pairs (pack_tokens=256)",
    "h": "(h) cme full, metric='entropy' (log-prob and predictive entropy in one pass)",
    "v": "(v) a vLLM server (cme_reward.backends.vllm.VLLMBackend, prompt_logprobs of token-id prompts)",
}


@dataclass
class Method:
    """One scorer: `run(pairs)` -> per-pair float32 tensors; `stats()` -> what it recorded during the last run.
    `remote`: the work runs in another process (a server), whose CPU time counts as other processes' load."""

    key: str
    label: str
    run: Callable[[list[Pair]], list[torch.Tensor]]
    stats: Callable[[], dict] = field(default=lambda: {})
    notes: str = ""
    remote: bool = False


def display_name(name: str, *, sep: str = ", ") -> str:
    """Bar name of a result `name` (`KEY` or `KEY:DTYPE`): the method's short name, plus `sep` and its dtype when
    given.

    Example:
        ```python
        >>> display_name("d:bfloat16")
        'cme full, bfloat16'
        ```
    """
    key, _, dtype = name.partition(":")
    base = NAMES.get(key, key)
    return f"{base}{sep}{dtype}" if dtype else base


def naive(model: torch.nn.Module, **_) -> Method:
    """(a): `cme_reward.reference`, one pair per forward pass, full float32 log-softmax."""

    def run(pairs: list[Pair]) -> list[torch.Tensor]:
        return [reference_token_logprobs(model, c, r) for c, r in pairs]

    return Method("a", LABELS["a"], run, notes="cme_reward.reference: one pair per forward, full fp32 log_softmax")


def engine(
    model: torch.nn.Module,
    *,
    budget: int,
    prefix_sharing: bool = True,
    key: str = "d",
    head_vocab_block: int | None = None,
    pack_tokens: int = 0,
    metric: str = "logprob",
    **_,
) -> Method:
    """(c), (d), (e), (g), (h): `ScoringEngine` with one `CMEConfig`; every run starts from the config's budget and
    zero statistics (`engine.reset()`).

    Args:
        model (`torch.nn.Module`): the verifier.
        budget (`int`): `max_tokens_per_batch`.
        prefix_sharing (`bool`, *optional*, defaults to `True`): off for (c).
        key (`str`, *optional*, defaults to `"d"`): the method key, for its label.
        head_vocab_block (`int`, *optional*): 0 for (e) (plain chunked head); `None`: the engine's choice.
        pack_tokens (`int`, *optional*, defaults to `0`): 256 for (g).
        metric (`str`, *optional*, defaults to `"logprob"`): `"entropy"` for (h), which also computes the predictive
            entropy; its log-prob column is what is compared with (a).

    Returns:
        [`Method`].
    """
    config = CMEConfig(
        max_tokens_per_batch=budget,
        prefix_sharing=prefix_sharing,
        head_vocab_block=head_vocab_block,
        pack_tokens=pack_tokens,
        metric=metric,
    )
    eng = ScoringEngine(model, config)

    def run(pairs: list[Pair]) -> list[torch.Tensor]:
        eng.reset()  # an OOM split lowers the budget: every repeat starts from the same one, with zero stats
        out = eng.score(pairs)
        return [t[:, 0] for t in out] if metric == "entropy" else out

    def stats() -> dict:
        counts = dataclasses.asdict(eng.stats) if dataclasses.is_dataclass(eng.stats) else dict(vars(eng.stats))
        return dict(counts, max_tokens_per_batch=budget, head_chunk=eng.head_chunk,
                    head_vocab_block=eng.head_vocab_block, min_shared_tokens=config.min_shared_tokens,
                    pack_tokens=eng.pack_tokens)  # fmt: skip

    notes = (
        f"ScoringEngine(model, CMEConfig(max_tokens_per_batch={budget}, prefix_sharing={prefix_sharing}, "
        f"head_vocab_block={head_vocab_block}, pack_tokens={pack_tokens}, metric={metric!r}))"
    )
    return Method(key, LABELS[key], run, stats, notes=notes)


def _token_free_tokenizer():
    """A two-token fast tokenizer: HFLM needs one to start, but is driven with token ids here."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def lm_eval_hf(model: torch.nn.Module, *, lm_eval_batch_size: int, **_) -> Method | str:
    """(b): lm-eval's HFLM on the model object, fed token ids through `_loglikelihood_tokens` (what `loglikelihood`
    calls after tokenizing); softmax in float32 (HFLM's `softmax_dtype`), like every other method here.

    Returns:
        [`Method`], or a string saying why it is skipped (lm-eval not installed: `pip install -e ".[bench]"`).
    """
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        return f"lm-eval not installed ({err}); pip install -e '.[bench]'"
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = HFLM(
        pretrained=model,
        tokenizer=_token_free_tokenizer(),
        batch_size=lm_eval_batch_size,
        max_length=model.config.max_position_embeddings,
        softmax_dtype=torch.float32,
    )

    def run(pairs: list[Pair]) -> list[torch.Tensor]:
        requests = [(("", ""), list(c), list(r)) for c, r in pairs]
        out = lm._loglikelihood_tokens(requests, disable_tqdm=True)
        return [torch.tensor(s / len(r)) for (s, _), (_, r) in zip(out, pairs)]

    notes = f"HFLM(pretrained=model, batch_size={lm_eval_batch_size}, softmax_dtype=float32)._loglikelihood_tokens"
    return Method("b", LABELS["b"], run, notes=notes)


def vllm_server(
    model: torch.nn.Module,
    *,
    vllm_url: str | None = None,
    vllm_model: str | None = None,
    tokenizer=None,
    budget: int,
    **_,
) -> Method | str:
    """(v): the pairs, as token ids, through [`VLLMBackend`] to a running vLLM server (its default concurrency and
    request sizes, `tokens_per_request=budget` as the reward passes its `max_tokens_per_batch`). The comparison with
    (a) is exact only when the server runs the same weights as `model` in the same dtype (`--model-dir`).

    Args:
        model (`torch.nn.Module`): unused (the server has its own copy).
        vllm_url (`str`, *optional*): the server's root, `http://HOST:PORT`; `None`: the method is skipped.
        vllm_model (`str`, *optional*): the served model id; `None`: the only one served.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): the verifier's tokenizer; given, the server's tokenizer is
            checked against it first (`VLLMBackend.check`).
        budget (`int`): prompt tokens per request.

    Returns:
        [`Method`], or a string saying why it is skipped.
    """
    if not vllm_url:
        return "no vLLM server given (--vllm-url http://HOST:PORT)"
    from cme_reward.backends.vllm import VLLMBackend

    backend = VLLMBackend(vllm_url, model=vllm_model, tokens_per_request=budget)
    if tokenizer is not None:
        backend.check(tokenizer)

    def run(pairs: list[Pair]) -> list[torch.Tensor]:
        backend.reset()
        return backend.score(pairs)

    def stats() -> dict:
        return dict(dataclasses.asdict(backend.stats), served_model=portable_name(backend.served_model),
                    pairs_per_request=backend.pairs_per_request, tokens_per_request=backend.tokens_per_request,
                    max_concurrency=backend.max_concurrency)  # fmt: skip

    notes = (
        f"VLLMBackend(url, model={portable_name(vllm_model)!r}, tokens_per_request={budget}): pairs_per_request="
        f"{backend.pairs_per_request}, max_concurrency={backend.max_concurrency}; the server's own dtype and threads"
    )
    return Method("v", LABELS["v"], run, stats, notes=notes, remote=True)


FACTORIES: dict[str, Callable[..., Method | str]] = {
    "a": naive,
    "b": lm_eval_hf,
    "c": lambda model, **kw: engine(model, prefix_sharing=False, key="c", **kw),
    "d": lambda model, **kw: engine(model, key="d", **kw),
    "e": lambda model, **kw: engine(model, key="e", head_vocab_block=0, **kw),
    "g": lambda model, **kw: engine(model, key="g", pack_tokens=256, **kw),
    "h": lambda model, **kw: engine(model, key="h", metric="entropy", **kw),
    "v": vllm_server,
}


def pair_means(out: list[torch.Tensor]) -> torch.Tensor:
    """Per-pair mean log-prob, float64 for comparison: (pairs,)."""
    return torch.stack([t.double().mean() for t in out])
