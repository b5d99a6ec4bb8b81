"""`CrossModelEntropyReward`: the TRL-compatible callable and the unit-call API."""

from __future__ import annotations

import difflib
import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .config import CMEConfig
from .scoring.formatting import check_batch, token_strings
from .scoring.pipeline import Scored, ScoringPipeline
from .scoring.scores import policy_values
from .types import TokenScores
from .verifier.loading import load_tokenizer
from .verifier.spec import VerifierSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = ["CrossModelEntropyReward", "split_options"]

Prompt = str | list[dict[str, Any]]


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat keyword options -> (`CMEConfig` fields, `VerifierSpec` fields); an unknown name raises `TypeError`."""
    config_names, spec_names = set(CMEConfig.field_names()), set(VerifierSpec.field_names()) - {"source"}
    unknown = sorted(set(options) - config_names - spec_names)
    if unknown:
        known = sorted(config_names | spec_names | {"config", "name", "show_progress_bar", "policy_tokenizer"})
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
    `completion_ids` from TRL are in the policy's tokenizer: they are used only to map dense values onto the policy's
    tokens (`score_dense`) and, with `score_eos`, to tell completions that ended from clipped ones.

    Args:
        verifier (`str`, `os.PathLike`, `PreTrainedModel` or `VerifierSpec`):
            Hub id, local directory, `.gguf` file, alias of a verifier shipped by a registry package (`"smollm2"`,
            `"gemma3-270m"`), an already loaded causal LM (then `tokenizer=` is required), or a whole [`VerifierSpec`].
        config (`CMEConfig`, *optional*):
            Scoring options; keyword options below override its fields.
        show_progress_bar (`bool`, *optional*): tqdm bar over scored tokens; `None` shows it when logging is at INFO.
        name (`str`, defaults to `"cross_model_entropy"`): the `__name__` TRL uses for log keys
            (`rewards/<name>/mean`).
        policy_tokenizer (`str` or `PreTrainedTokenizerBase`, *optional*): the policy's tokenizer, needed in a
            trainer only with `score_eos` (to tell completions that ended from clipped ones).
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
        policy_tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
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
        self.policy_tokenizer = policy_tokenizer
        self._load()

    def _load(self) -> None:
        self.pipeline = ScoringPipeline(self.spec, self.config)

    # the loaded verifier, as attributes of the reward
    model = property(lambda self: self.pipeline.model)  # None with backend="vllm"
    tokenizer = property(lambda self: self.pipeline.tokenizer)
    scorer = property(lambda self: self.pipeline.scorer)  # the in-process ScoringEngine or a VLLMBackend
    encoder = property(lambda self: self.pipeline.encoder)
    device = property(lambda self: self.pipeline.device)
    dtype = property(lambda self: self.pipeline.dtype)
    max_length = property(lambda self: self.pipeline.max_length)
    stats = property(lambda self: self.pipeline.stats)  # ScorerStats: the verifier's cumulative cost

    # ---- pickling: rebuild the verifier from its source --------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        spec = self.spec
        if spec.is_object:
            logger.warning("Pickling a reward built from a model object: the whole model is pickled with it.")
        elif spec.tokenizer is not None and not isinstance(spec.tokenizer, (str, os.PathLike)):
            spec = replace(spec, tokenizer=None)  # a tokenizer object is reloaded from the verifier's source
        return {"name": self.__dict__.get("__name__"), "config": self.config, "spec": spec,
                "show_progress_bar": self.show_progress_bar, "policy_tokenizer": self.policy_tokenizer}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["name"] is not None:
            self.__name__ = state["name"]
        self.config, self.spec, self.show_progress_bar = state["config"], state["spec"], state["show_progress_bar"]
        self.policy_tokenizer = state.get("policy_tokenizer")
        self._load()

    def __repr__(self) -> str:
        source = type(self.model).__name__ if self.spec.is_object else os.fspath(self.spec.source)
        where = (
            f"base_url={self.spec.base_url!r}"
            if self.spec.backend == "vllm"
            else f"device={self.device}, dtype={self.dtype}"
        )
        return f"{type(self).__name__}({source!r}, {where}, name={self.__name__!r})"

    # ---- scoring ------------------------------------------------------------------------------------------------

    def score(
        self,
        prompts: list[Prompt],
        responses: list[str | list[dict[str, Any]]],
        *,
        ended: list[bool] | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[float | None]:
        """Score each response given its prompt; returns one float per pair (`empty_value` for an empty response,
        `missing_span_value` when `score_span` finds no span).

        Args:
            prompts (`list[str]` or `list[list[dict]]`): plain prompts, or chat messages.
            responses (`list[str]` or `list[list[dict]]`): plain responses, or one assistant message each.
            ended (`list[bool]`, *optional*): with `score_eos`, which responses ended (`None`: all of them).
            batch_size (`int`, *optional*): at most this many pairs per forward pass (the token budget still applies).
            show_progress_bar (`bool`, *optional*): overrides the instance setting.

        Raises:
            `TypeError` / `ValueError`: a malformed input (the message names the argument and the index).
            `FloatingPointError`: the verifier yields non-finite values (e.g. float16 overflow).

        Example:

        ```python
        >>> reward.score(["2 + 2 ="], [" 4"])
        [-0.61...]
        ```
        """
        results = self._run(prompts, responses, ended, batch_size=batch_size, show_progress_bar=show_progress_bar)
        return [r.score for r in results]

    def score_tokens(
        self,
        prompts: list[Prompt],
        responses: list[str | list[dict[str, Any]]],
        *,
        ended: list[bool] | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[TokenScores]:
        """Like [`score`], but returns every scored token with its log-prob and its value under the configured
        metric ([`TokenScores`])."""
        results = self._run(prompts, responses, ended, batch_size=batch_size, show_progress_bar=show_progress_bar)
        return [self._token_scores(r) for r in results]

    def score_dense(
        self,
        prompts: list[Prompt],
        completions: list[str | list[dict[str, Any]]],
        completion_ids: list[list[int]],
        policy_tokenizer: PreTrainedTokenizerBase,
        **kwargs: Any,
    ) -> list[list[float | None] | None]:
        """Dense per-token rewards: for each completion, one value per *policy* token of `completion_ids[i]`.

        The verifier's per-token values (the configured `metric`) are mapped onto the policy's tokens by UTF-8 byte
        offsets into the completion text (`alignment="bytes"`: each verifier token's value is spread over its bytes,
        each policy token gets the sum over its bytes, so the sums match). A policy token that no verifier value
        reaches gets `None`: special tokens that cover no text, such as the EOS that ends TRL's `completion_ids`,
        unless `score_eos` gives an ended completion's end-of-turn token the verifier's end-of-turn value. A `None`
        position is left out of the per-position normalisation ([`dense_advantages`]): stopping earns nothing by
        itself. An empty or blank completion gets `empty_value` at every token (all `None` with the default
        `empty_value=None`: then it has no dense value at all, only the other rewards' scalar part). With the
        verifier's own tokenizer as the policy's, the values equal [`score_tokens`]. An unscorable completion
        (malformed, non-finite) gets `None`. `score_span` applies to scalar scores only; `CMEConfig.from_paper` rules
        apply to both.

        Args:
            prompts, completions: as TRL passes them (text or messages).
            completion_ids (`list[list[int]]`): the policy's token ids of each completion (TRL's `completion_ids`).
            policy_tokenizer (`PreTrainedTokenizerBase`): the policy's tokenizer.
            **kwargs: dataset columns (for `verifier_prompt_column`); others are ignored.

        Example:

        ```python
        >>> dense = reward.score_dense(prompts, completions, completion_ids, policy_tokenizer)
        >>> [len(d) for d in dense] == [len(c) for c in completion_ids]
        True
        ```
        """
        prompts = self._verifier_prompts(prompts, kwargs)
        prompts, completions = check_batch(prompts, completions, responses_name="completions")
        if len(completion_ids) != len(completions):
            raise ValueError(f"completion_ids has {len(completion_ids)} entries for {len(completions)} completions")
        start = time.perf_counter()
        ended = self._ended(completion_ids, policy_tokenizer)
        results = self._run(prompts, completions, ended, strict=False)
        self._log(results, start, kwargs)
        rows = []
        for r, ids in zip(results, completion_ids):
            row = None if r is None else policy_values(r.values, r.pair, ids, policy_tokenizer, self.tokenizer,
                                                       self.config)  # fmt: skip
            rows.append(None if row and all(v is None for v in row) else row)  # no value anywhere: no dense row
        return rows

    @property
    def dense(self) -> bool:
        """Whether `DenseGRPOTrainer` trains on `score_dense`: `False` only under
        `CMEConfig.from_paper(token_level=False)` (the authors' sequence-level reward)."""
        return self.config.paper is None or self.config.paper.token_level

    def __call__(
        self,
        prompts: list[Prompt] | None = None,
        completions: list[str | list[dict[str, Any]]] | None = None,
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """TRL reward-function entry point: `reward_funcs=[reward]` in `GRPOTrainer`, `RLOOTrainer`, ...

        Unknown keyword arguments (dataset columns, `trainer_state`, ...) are ignored, but for the column named by
        `verifier_prompt_column`. Inside a trainer nothing raises for a single odd completion: a pair that cannot be
        scored, or whose values are not finite, gets `None` (NaN in TRL, ignored by `nansum`) and a warning.
        Verifier cost goes to TRL's `log_metric` and, per completion, the number of verifier tokens and the least
        likely one to `log_extra` (the completions table), when the trainer passes them.

        With `score_eos`, a completion has *ended* when the last of its `completion_ids` (TRL's ids end at and
        include the first EOS) is a special token of the policy tokenizer (`policy_tokenizer=` of the reward; the
        `DenseGRPOTrainer` sets it); a completion clipped at `max_completion_length` ends on an ordinary token.
        """
        if prompts is None or completions is None:
            raise TypeError("the reward needs `prompts` and `completions` (TRL passes both as keyword arguments)")
        prompts = self._verifier_prompts(prompts, kwargs)
        start = time.perf_counter()
        ended = self._ended(completion_ids, self.policy_tokenizer) if self.config.score_eos else None
        results = self._run(prompts, completions, ended, strict=False)
        self._log(results, start, kwargs)
        return [None if r is None else r.score for r in results]

    # ---- internals ----------------------------------------------------------------------------------------------

    def _verifier_prompts(self, prompts: Any, kwargs: dict[str, Any]) -> Any:
        column = self.config.verifier_prompt_column
        if column is None:
            return prompts
        if column not in kwargs:
            given = sorted(k for k in kwargs if k not in ("trainer_state", "log_metric", "log_extra"))
            raise ValueError(
                f"verifier_prompt_column={column!r}: the trainer passed no such column (columns: {given})"
            )
        return kwargs[column]

    def _ended(self, completion_ids: list[list[int]] | None, policy_tokenizer: Any) -> list[bool] | None:
        """Which completions ended (their last policy token is special), for `score_eos`; `None` when off."""
        if not self.config.score_eos:
            return None
        if completion_ids is None or policy_tokenizer is None:
            raise ValueError(
                "score_eos=True in a trainer needs completion_ids and the policy tokenizer to tell completions that "
                "ended from clipped ones: pass policy_tokenizer= to the reward (DenseGRPOTrainer sets it)"
            )
        if isinstance(policy_tokenizer, (str, os.PathLike)):
            policy_tokenizer = self.policy_tokenizer = load_tokenizer(self.spec, os.fspath(policy_tokenizer))
        special = set(policy_tokenizer.all_special_ids)
        return [bool(ids) and ids[-1] in special for ids in completion_ids]

    def _run(self, prompts, responses, ended, *, strict=True, batch_size=None, show_progress_bar=None) -> list:
        show = self.show_progress_bar if show_progress_bar is None else show_progress_bar
        if show is None:
            show = logger.getEffectiveLevel() <= logging.INFO
        name = "responses" if strict else "completions"
        prompts, responses = check_batch(prompts, responses, responses_name=name)
        if self.config.score_eos and ended is None:
            ended = [True] * len(responses)
        return self.pipeline.run(prompts, responses, ended=ended, strict=strict, responses_name=name,
                                 max_rows=batch_size, show_progress_bar=show)  # fmt: skip

    def _log(self, results: list, start: float, kwargs: dict[str, Any]) -> None:
        """The verifier's cost to TRL's `log_metric`, per-completion details to its `log_extra`, when passed."""
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if callable(log_metric):
            log_metric(f"{self.__name__}/verifier_seconds", time.perf_counter() - start)
            log_metric(f"{self.__name__}/verifier_tokens", float(sum(len(r.values) for r in results if r is not None)))
        if callable(log_extra):
            log_extra(f"{self.__name__}/verifier_tokens", [0 if r is None else len(r.values) for r in results])
            log_extra(f"{self.__name__}/least_likely_token", [self._least_likely(r) for r in results])

    def _least_likely(self, result: Scored | None) -> str:
        if result is None or not len(result.logprobs):
            return ""
        k = int(result.logprobs.argmin())
        return f"{self.tokenizer.decode([result.pair.response_ids[k]])!r} ({result.logprobs[k].item():.2f})"

    def _token_scores(self, r: Scored) -> TokenScores:
        ids = list(r.pair.response_ids)
        return TokenScores(ids, token_strings(self.tokenizer, ids), r.logprobs.tolist(), r.score,
                           len(r.pair.context_ids), r.pair.truncated, metric=self.config.metric,
                           values=r.values.tolist())  # fmt: skip
