"""The compared scorers. Each factory returns a `Method` whose `run(pairs)` gives one float32 tensor of per-token
log-probs per pair (or, for lm-eval, which only returns sums, a 0-d tensor holding the pair's mean log-prob)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from bench_workload import Pair

from cme_reward.engine import ScoringEngine
from cme_reward.reference import reference_token_logprobs

LABELS = {
    "a": "(a) naive loop",
    "b": "(b) lm-eval HFLM",
    "c": "(c) cme, no prefix sharing",
    "d": "(d) cme full",
    "e": "(e) cme full, chunked head (no vocab blocks)",
    "g": "(g) cme full + packing of short pairs (pack_tokens=256)",
}


@dataclass
class Method:
    key: str
    label: str
    run: Callable[[list[Pair]], list[torch.Tensor]]
    stats: Callable[[], dict] = field(default=lambda: {})
    notes: str = ""


def naive(model: torch.nn.Module, **_) -> Method:
    def run(pairs: list[Pair]) -> list[torch.Tensor]:
        return [reference_token_logprobs(model, c, r) for c, r in pairs]

    return Method("a", LABELS["a"], run, notes="cme_reward.reference: one pair per forward, full fp32 log_softmax")


def engine(
    model: torch.nn.Module,
    *,
    budget: int,
    prefix_sharing: bool,
    key: str | None = None,
    head_vocab_block: int | None = None,
    pack_tokens: int = 0,
    **_,
) -> Method:
    eng = ScoringEngine(
        model,
        max_tokens_per_batch=budget,
        prefix_sharing=prefix_sharing,
        head_vocab_block=head_vocab_block,
        pack_tokens=pack_tokens,
    )
    key = key or ("d" if prefix_sharing else "c")

    def run(pairs: list[Pair]) -> list[torch.Tensor]:
        eng.max_tokens_per_batch = budget  # an OOM split lowers it; every repeat starts from the same budget
        eng.stats = type(eng.stats)()
        return eng.score(pairs)

    def stats() -> dict:
        return dict(vars(eng.stats), max_tokens_per_batch=budget, head_chunk=eng.head_chunk,
                    head_vocab_block=eng.head_vocab_block, min_shared_tokens=eng.min_shared_tokens,
                    pack_tokens=eng.pack_tokens)  # fmt: skip

    return Method(key, LABELS[key], run, stats, notes=f"ScoringEngine(max_tokens_per_batch={budget})")


def _token_free_tokenizer():
    """A two-token fast tokenizer: HFLM needs one to start, but is driven with token ids here."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def lm_eval_hf(model: torch.nn.Module, *, lm_eval_batch_size: int, **_) -> Method | str:
    """lm-eval's HFLM on the model object, fed token ids through `_loglikelihood_tokens` (what `loglikelihood` calls
    after tokenizing). softmax in float32 (HFLM's `softmax_dtype`), like every other method here."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        return f"lm-eval not installed ({err}); pip install lm-eval"
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


FACTORIES: dict[str, Callable[..., Method | str]] = {
    "a": naive,
    "b": lm_eval_hf,
    "c": lambda model, **kw: engine(model, prefix_sharing=False, **kw),
    "d": lambda model, **kw: engine(model, prefix_sharing=True, **kw),
    "e": lambda model, **kw: engine(model, prefix_sharing=True, key="e", head_vocab_block=0, **kw),
    "g": lambda model, **kw: engine(model, prefix_sharing=True, key="g", pack_tokens=256, **kw),
}


def pair_means(out: list[torch.Tensor]) -> torch.Tensor:
    """Per-pair mean log-prob (float64 for comparison)."""
    return torch.stack([t.double().mean() for t in out])
