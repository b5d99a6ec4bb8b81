"""`CrossModelEntropyReward`: the TRL-compatible callable and the unit-call API."""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from .config import CMEConfig
from .engine import ScoringEngine
from .formatting import EncodedPair, PairEncoder, check_batch, token_strings
from .loading import context_size, load_verifier
from .reductions import reduce_logprobs
from .types import TokenScores
from .verifier import VerifierSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = ["CrossModelEntropyReward", "split_options"]

Prompt = str | list[dict[str, Any]]


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat keyword options -> (`CMEConfig` fields, `VerifierSpec` fields); an unknown name raises `TypeError`."""
    config_names, spec_names = set(CMEConfig.field_names()), set(VerifierSpec.field_names()) - {"source"}
    unknown = sorted(set(options) - config_names - spec_names)
    if unknown:
        known = sorted(config_names | spec_names | {"config", "name", "show_progress_bar"})
        hints = [difflib.get_close_matches(u, known, n=1) for u in unknown]
        hint = "".join(f" Did you mean {h[0]!r} for {u!r}?" for u, h in zip(unknown, hints) if h)
        raise TypeError(f"unknown option(s) {unknown} for CrossModelEntropyReward; known options: {known}.{hint}")
    config = {k: v for k, v in options.items() if k in config_names}
    return config, {k: v for k, v in options.items() if k in spec_names}


class CrossModelEntropyReward:
    r"""Cross-Model Entropy reward: mean token log-likelihood of a response under a separate, frozen verifier LM.

    The verifier scores each (prompt, response) pair by teacher forcing: the score is the mean, over the response's
    verifier tokens, of `log p(token | context, previous response tokens)` (natural log, float32 log-softmax).
    Higher is better; it is the negative cross-entropy of the response under the verifier.

    What is scored: a plain prompt is tokenized with the verifier tokenizer's own special tokens (e.g. BOS) and the
    response without special tokens. A conversational prompt (list of `{"role", "content"}` messages) goes through the
    *verifier's* chat template with `add_generation_prompt=True`; the response is the assistant message content.
    `completion_ids` from TRL are in the policy's tokenizer and are never used.

    Args:
        verifier (`str`, `os.PathLike`, `PreTrainedModel` or `VerifierSpec`):
            Hub id, local directory, `.gguf` file, alias of a verifier shipped by a registry package (`"smollm2"`,
            `"gemma3-270m"`), an already loaded causal LM (then `tokenizer=` is required), or a whole [`VerifierSpec`].
        config (`CMEConfig`, *optional*):
            Scoring options; keyword options below override its fields.
        show_progress_bar (`bool`, *optional*): tqdm bar over scored tokens; `None` shows it when logging is at INFO.
        name (`str`, defaults to `"cross_model_entropy"`): the `__name__` TRL uses for log keys
            (`rewards/<name>/mean`).
        **options:
            Any field of [`CMEConfig`] (`max_tokens_per_batch`, `max_length`, `reduction`, `empty_value`, engine
            knobs) or of [`VerifierSpec`] (`tokenizer`, `device`, `dtype`, `revision`, `trust_remote_code`,
            `use_safetensors`, `gguf_file`, `model_kwargs`, `tokenizer_kwargs`), with the defaults and meaning
            documented there. An unknown name raises `TypeError`.

    Example:

    ```python
    >>> from cme_reward import CrossModelEntropyReward
    >>> reward = CrossModelEntropyReward("HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> reward.score(["The capital of France is"], [" Paris."])
    [-1.93...]
    >>> from trl import GRPOConfig, GRPOTrainer
    >>> trainer = GRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=[reward], ...)
    ```
    """

    __name__ = "cross_model_entropy"

    def __init__(
        self,
        verifier: str | os.PathLike | PreTrainedModel | VerifierSpec,
        *,
        config: CMEConfig | None = None,
        show_progress_bar: bool | None = None,
        name: str | None = None,
        **options: Any,
    ):
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"`name` must be a non-empty string, got {name!r}")
            self.__name__ = name
        if config is not None and not isinstance(config, CMEConfig):
            raise TypeError(f"`config` must be a CMEConfig, got {type(config).__name__}")
        config_options, spec_options = split_options(options)
        self.config = (config or CMEConfig()).with_options(**config_options)
        spec = verifier if isinstance(verifier, VerifierSpec) else VerifierSpec(verifier)
        self.spec = replace(spec, **spec_options) if spec_options else spec
        self.show_progress_bar = show_progress_bar
        self._load()

    def _load(self) -> None:
        self.model, self.tokenizer = load_verifier(self.spec)
        self.device = next(self.model.parameters()).device
        self.dtype = self.model.dtype
        self.max_length = self.config.max_length or context_size(self.model)
        self.encoder = PairEncoder(self.tokenizer, self.max_length)
        self.engine = ScoringEngine(self.model, self.config)
        self._lock = threading.Lock()  # one engine, one forward at a time; scores do not depend on interleaving
        # cumulative cost: calls, pairs, response tokens scored, tokens run through the verifier body, seconds
        self.stats = {"calls": 0, "pairs": 0, "tokens_scored": 0, "tokens_forward": 0, "seconds": 0.0}

    # ---- pickling: rebuild the verifier from its source --------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        spec = self.spec
        if spec.is_object:
            logger.warning("Pickling a reward built from a model object: the whole model is pickled with it.")
        elif spec.tokenizer is not None and not isinstance(spec.tokenizer, (str, os.PathLike)):
            spec = replace(spec, tokenizer=None)  # a tokenizer object is reloaded from the verifier's source
        return {"name": self.__dict__.get("__name__"), "config": self.config, "spec": spec,
                "show_progress_bar": self.show_progress_bar}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["name"] is not None:
            self.__name__ = state["name"]
        self.config, self.spec, self.show_progress_bar = state["config"], state["spec"], state["show_progress_bar"]
        self._load()

    def __repr__(self) -> str:
        source = type(self.model).__name__ if self.spec.is_object else os.fspath(self.spec.source)
        return f"{type(self).__name__}({source!r}, device={self.device}, dtype={self.dtype}, name={self.__name__!r})"

    # ---- scoring ------------------------------------------------------------------------------------------------

    def score(
        self,
        prompts: list[Prompt],
        responses: list[str | list[dict[str, Any]]],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[float | None]:
        """Score each response given its prompt; returns one float per pair (`empty_value` for an empty response).

        Args:
            prompts (`list[str]` or `list[list[dict]]`): plain prompts, or chat messages.
            responses (`list[str]` or `list[list[dict]]`): plain responses, or one assistant message each.
            batch_size (`int`, *optional*): at most this many pairs per forward pass (the token budget still applies).
            show_progress_bar (`bool`, *optional*): overrides the instance setting.

        Raises:
            `TypeError` / `ValueError` naming the argument and index of a malformed input;
            `FloatingPointError` if the verifier yields non-finite log-probs (e.g. float16 overflow).

        Example:

        ```python
        >>> reward.score(["2 + 2 ="], [" 4"])
        [-0.61...]
        ```
        """
        prompts, responses = check_batch(prompts, responses)
        encoded = self._encode(prompts, responses, strict=True)
        results = self._run(encoded, batch_size=batch_size, show_progress_bar=show_progress_bar, strict=True)
        return [r[2] for r in results]  # type: ignore[index]

    def score_tokens(
        self,
        prompts: list[Prompt],
        responses: list[str | list[dict[str, Any]]],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[TokenScores]:
        """Like [`score`], but returns every response token with its verifier log-prob ([`TokenScores`])."""
        prompts, responses = check_batch(prompts, responses)
        encoded = self._encode(prompts, responses, strict=True)
        results = self._run(encoded, batch_size=batch_size, show_progress_bar=show_progress_bar, strict=True)
        return [self._token_scores(*r) for r in results]  # type: ignore[misc]

    def __call__(
        self,
        prompts: list[Prompt] | None = None,
        completions: list[str | list[dict[str, Any]]] | None = None,
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """TRL reward-function entry point: `reward_funcs=[reward]` in `GRPOTrainer`, `RLOOTrainer`, ...

        `completion_ids` (policy tokenizer) and unknown keyword arguments (dataset columns, `trainer_state`, ...)
        are ignored. Inside a trainer nothing raises for a single odd completion: a pair that cannot be scored, or
        whose log-probs are not finite, gets `None` (NaN in TRL, ignored by `nansum`) and a warning. Verifier cost is
        reported through TRL's `log_metric` when the trainer passes it.
        """
        if prompts is None or completions is None:
            raise TypeError("the reward needs `prompts` and `completions` (TRL passes both as keyword arguments)")
        prompts, completions = check_batch(prompts, completions, responses_name="completions")
        start = time.perf_counter()
        encoded = self._encode(prompts, completions, strict=False, responses_name="completions")
        results = self._run(encoded, strict=False)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            seconds = time.perf_counter() - start
            tokens = sum(len(r[1]) for r in results if r is not None)
            log_metric(f"{self.__name__}/verifier_seconds", seconds)
            log_metric(f"{self.__name__}/verifier_tokens", float(tokens))
        return [None if r is None else r[2] for r in results]

    # ---- internals ----------------------------------------------------------------------------------------------

    def _encode(
        self, prompts: list, responses: list, *, strict: bool, responses_name: str = "responses"
    ) -> list[EncodedPair | None]:
        contexts: dict[Any, list[int]] = {}
        out: list[EncodedPair | None] = []
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            try:
                key = prompt if isinstance(prompt, str) else repr(prompt)
                if key not in contexts:
                    contexts[key] = self.encoder.context_ids(prompt, f"prompts[{i}]")
                pair = self.encoder.fit(contexts[key], self.encoder.response_ids(response, f"{responses_name}[{i}]"))
            except (TypeError, ValueError) as err:
                if strict:
                    raise
                logger.warning("Scoring completion %d as None: %s", i, err)
                pair = None
            out.append(pair)
        return out

    def _run(self, encoded, *, batch_size=None, show_progress_bar=None, strict: bool) -> list[tuple | None]:
        """Engine pass over encoded pairs -> `(pair, logprobs, score)` per pair; `None` where a pair is unscorable
        (malformed input or non-finite log-probs, only when `strict=False`)."""
        from tqdm.auto import tqdm

        todo = [i for i, p in enumerate(encoded) if p is not None and p.response_ids]
        show = self.show_progress_bar if show_progress_bar is None else show_progress_bar
        if show is None:
            show = logger.getEffectiveLevel() <= logging.INFO
        total = sum(len(encoded[i].response_ids) for i in todo)
        start = time.perf_counter()
        with self._lock, tqdm(total=total, unit="tok", desc="CME", disable=not show or not todo) as bar:
            pairs = [(encoded[i].context_ids, encoded[i].response_ids) for i in todo]
            logprobs = self.engine.score(pairs, max_rows=batch_size, progress=bar.update)
            self.stats["calls"] += 1
            self.stats["pairs"] += len(encoded)
            self.stats["tokens_scored"] += total
            self.stats["seconds"] += time.perf_counter() - start
            self.stats["tokens_forward"] = self.engine.stats.tokens_forward  # cumulative, like the others
        by_index = dict(zip(todo, logprobs))
        results: list[tuple | None] = []
        for i, pair in enumerate(encoded):
            if pair is None:
                results.append(None)
                continue
            lp = by_index.get(i, torch.empty(0))
            if not bool(torch.isfinite(lp).all()):
                message = f"the verifier produced non-finite log-probs for pair {i} (dtype {self.dtype})"
                if strict:
                    raise FloatingPointError(message + "; try dtype='float32'")
                logger.warning("%s; scoring it as None", message)
                results.append(None)
                continue
            score = reduce_logprobs(lp, self.config.reduction) if lp.numel() else self.config.empty_value
            results.append((pair, lp, score))
        return results

    def _token_scores(self, pair: EncodedPair, lp: torch.Tensor, score: float | None) -> TokenScores:
        ids = list(pair.response_ids)
        return TokenScores(ids, token_strings(self.tokenizer, ids), lp.tolist(), score, len(pair.context_ids),
                           pair.truncated)  # fmt: skip
