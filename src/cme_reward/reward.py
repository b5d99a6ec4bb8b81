"""`CrossModelEntropyReward`: the TRL-compatible callable and the unit-call API."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import torch

from .config import CMEConfig
from .engine import ScoringEngine
from .formatting import EncodedPair, PairEncoder, check_batch
from .loading import context_size, load_verifier
from .reductions import reduce_logprobs
from .types import TokenScores

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, Any]]


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
        verifier (`str`, `os.PathLike` or `PreTrainedModel`):
            Hub id, local directory, `.gguf` file, or an already loaded causal LM (then `tokenizer` is required).
        tokenizer (`PreTrainedTokenizerBase` or `str`, *optional*):
            The verifier's tokenizer; loaded from the verifier's source when `None`.
        device (`str` or `torch.device`, *optional*):
            `None`: `cuda:$LOCAL_RANK` when CUDA is available (one verifier per accelerate process), else CPU. A model
            object is moved there.
        dtype (`str` or `torch.dtype`, *optional*):
            Verifier weights dtype. `None`: bfloat16 on GPU, float32 on CPU (a model object keeps its dtype).
            Log-softmax always runs in float32.
        max_tokens_per_batch (`int`, defaults to `8192`): padded-token budget of one forward pass.
        max_length (`int`, *optional*): longest context + response; `None` uses the verifier's context size. Longer
            pairs lose the start of their context; a response longer than that keeps its first `max_length - 1`
            tokens (a warning is logged once).
        revision, trust_remote_code, use_safetensors, gguf_file, model_kwargs, tokenizer_kwargs:
            Passed to `from_pretrained`. `trust_remote_code=False` and safetensors-only are the safe defaults.
        reduction (`str`, defaults to `"mean"`): `"mean"` (CME), `"sum"` or `"min"`.
        empty_value (`float`, *optional*): score of an empty response. `None` (default): TRL turns it into NaN and
            ignores it (`nansum`); a float acts as a floor.
        prefix_sharing (`bool`, defaults to `True`), deduplicate (`bool`, defaults to `True`),
        head_chunk_tokens (`int`, *optional*), max_padding (`float`, *optional*), pack_tokens (`int`, defaults to
            `0`): engine options, see [`CMEConfig`].
        show_progress_bar (`bool`, *optional*): tqdm bar over scored tokens; `None` shows it when logging is at INFO.
        name (`str`, defaults to `"cross_model_entropy"`): the `__name__` TRL uses for log keys
            (`rewards/<name>/mean`).

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
        verifier: Any,
        *,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_tokens_per_batch: int = 8192,
        max_length: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        use_safetensors: bool | None = True,
        gguf_file: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        reduction: str = "mean",
        empty_value: float | None = None,
        prefix_sharing: bool = True,
        deduplicate: bool = True,
        head_chunk_tokens: int | None = None,
        max_padding: float | None = None,
        pack_tokens: int = 0,
        show_progress_bar: bool | None = None,
        name: str | None = None,
    ):
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"`name` must be a non-empty string, got {name!r}")
            self.__name__ = name
        self.config = CMEConfig(
            max_tokens_per_batch=max_tokens_per_batch,
            max_length=max_length,
            reduction=reduction,
            empty_value=empty_value,
            prefix_sharing=prefix_sharing,
            deduplicate=deduplicate,
            head_chunk_tokens=head_chunk_tokens,
            max_padding=max_padding,
            pack_tokens=pack_tokens,
        )
        self.show_progress_bar = show_progress_bar
        # what pickling needs to rebuild the verifier in another process (AsyncGRPO's CPU-only child)
        self._init = dict(
            tokenizer=tokenizer if isinstance(tokenizer, (str, os.PathLike)) else None,
            device=device, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code,
            use_safetensors=use_safetensors, gguf_file=gguf_file, model_kwargs=model_kwargs,
            tokenizer_kwargs=tokenizer_kwargs,
        )  # fmt: skip
        self._source = verifier if isinstance(verifier, (str, os.PathLike)) else None
        self._verifier_object = None if self._source is not None else (verifier, tokenizer)
        self._load(verifier, tokenizer)

    def _load(self, verifier: Any, tokenizer: Any) -> None:
        init = self._init
        self.model, self.tokenizer = load_verifier(
            verifier,
            tokenizer=tokenizer,
            device=init["device"],
            dtype=init["dtype"],
            revision=init["revision"],
            trust_remote_code=init["trust_remote_code"],
            use_safetensors=init["use_safetensors"],
            gguf_file=init["gguf_file"],
            model_kwargs=init["model_kwargs"],
            tokenizer_kwargs=init["tokenizer_kwargs"],
        )
        self.device = next(self.model.parameters()).device
        self.dtype = self.model.dtype
        self.max_length = self.config.max_length or context_size(self.model)
        self.encoder = PairEncoder(self.tokenizer, self.max_length)
        self.engine = ScoringEngine(
            self.model,
            max_tokens_per_batch=self.config.max_tokens_per_batch,
            head_chunk_tokens=self.config.head_chunk_tokens,
            prefix_sharing=self.config.prefix_sharing,
            deduplicate=self.config.deduplicate,
            max_padding=self.config.max_padding,
            pack_tokens=self.config.pack_tokens,
        )
        self._lock = threading.Lock()  # one engine, one forward at a time; scores do not depend on interleaving
        # cumulative cost: calls, pairs, response tokens scored, tokens run through the verifier body, seconds
        self.stats = {"calls": 0, "pairs": 0, "tokens_scored": 0, "tokens_forward": 0, "seconds": 0.0}

    # ---- pickling: rebuild the verifier from its source --------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        if self._source is None:
            logger.warning("Pickling a reward built from a model object: the whole model is pickled with it.")
        return {
            "name": self.__dict__.get("__name__"),
            "config": self.config,
            "show_progress_bar": self.show_progress_bar,
            "init": self._init,
            "source": self._source,
            "verifier_object": self._verifier_object,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["name"] is not None:
            self.__name__ = state["name"]
        self.config = state["config"]
        self.show_progress_bar = state["show_progress_bar"]
        self._init = state["init"]
        self._source = state["source"]
        self._verifier_object = state["verifier_object"]
        if self._source is not None:
            self._load(self._source, self._init["tokenizer"])
        else:
            self._load(*self._verifier_object)

    def __repr__(self) -> str:
        source = self._source or type(self.model).__name__
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
        encoded = self._encode(prompts, completions, strict=False)
        results = self._run(encoded, strict=False)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            seconds = time.perf_counter() - start
            tokens = sum(len(r[1]) for r in results if r is not None)
            log_metric(f"{self.__name__}/verifier_seconds", seconds)
            log_metric(f"{self.__name__}/verifier_tokens", float(tokens))
        return [None if r is None else r[2] for r in results]

    # ---- internals ----------------------------------------------------------------------------------------------

    def _encode(self, prompts: list, responses: list, *, strict: bool) -> list[EncodedPair | None]:
        contexts: dict[Any, list[int]] = {}
        out: list[EncodedPair | None] = []
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            try:
                key = prompt if isinstance(prompt, str) else repr(prompt)
                if key not in contexts:
                    contexts[key] = self.encoder.context_ids(prompt, f"prompts[{i}]")
                pair = self.encoder.fit(contexts[key], self.encoder.response_ids(response, f"responses[{i}]"))
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
            self.engine.max_rows = batch_size
            logprobs = self.engine.score([(encoded[i].context_ids, encoded[i].response_ids) for i in todo], bar.update)
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


def token_strings(tokenizer: Any, ids: list[int], window: int = 8) -> list[str]:
    """Display text of each token such that `"".join(...)` is the decoded response.

    Decoding ids one at a time turns a character split over several byte-level tokens into U+FFFD; instead each
    token gets the text its decoding adds to the few tokens before it, so the token completing a character shows it
    and the partial ones show as empty strings.
    """
    out = []
    for i in range(len(ids)):
        start = max(0, i - window)
        before = tokenizer.decode(ids[start:i]).rstrip("\ufffd") if i > start else ""
        upto = tokenizer.decode(ids[start : i + 1]).rstrip("\ufffd")
        out.append(upto[len(before) :] if upto.startswith(before) else tokenizer.decode([ids[i]]))
    return out
