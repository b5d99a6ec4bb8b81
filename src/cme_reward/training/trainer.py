"""Dense (per-token) rewards in GRPO: [`DenseGRPOTrainer`] trains on (B, T) advantages built from per-token values.

A reward function in `reward_funcs` is *dense* when it has a callable `score_dense` attribute (and no `dense = False`):

```python
reward.score_dense(prompts=..., completions=..., completion_ids=..., policy_tokenizer=..., **kwargs)
    -> list[list[float] | None]  # one value per policy token of completion_ids[i]; None: unscorable
```

Its values are normalised per *position* across each GRPO group; the scalar rewards of the other reward functions are
normalised the TRL way and added to every token. TRL's own loss (clipping, KL, loss types) consumes the (B, T) tensor.
The advantage math itself is in `cme_reward.training.advantages`.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import trl
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.trainer.utils import nanstd

from .advantages import check_dense_options, check_dense_values, dense_advantages, pad_dense, scalar_advantages

__all__ = ["DENSE_LOSS_TYPES", "DenseGRPOConfig", "DenseGRPOTrainer", "is_dense_reward"]

logger = logging.getLogger(__name__)

# Loss types of TRL 1.16 whose `_compute_loss` broadcasts (B, T) advantages element-wise (read from the source; VESPO
# and the off-policy mask then pick their sign-dependent branch per token). Anything newer is refused, not guessed.
DENSE_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo")
MIN_TRL = (1, 16)  # the GRPOTrainer internals used here (reward hooks, (B, T) advantages) as read in TRL 1.16


@dataclass
class DenseGRPOConfig(GRPOConfig):
    r"""[`~trl.GRPOConfig`] plus the options of [`DenseGRPOTrainer`].

    Args:
        dense_normalization (`str`, *optional*, defaults to `"group_std"`):
            How per-token values become advantages, per position `t` across a group's completions that have a token
            at `t`: `"group_std"`: `(r_t - mean_t) / (std_t + dense_eps)` (sample std, as TRL's scalar `nanstd`);
            `"group_mean"`: `r_t - mean_t`. A position covered by a single completion gets 0.
        dense_eps (`float`, *optional*, defaults to `1e-4`):
            Added to `std_t` (TRL's scalar advantages and the paper's code use `1e-4`).
        dense_std (`str`, *optional*, defaults to `"sample"`):
            `std_t` with Bessel's correction (`"sample"`, as TRL's scalar advantages) or without it
            (`"population"`, as the paper authors' code).

    Example:

    ```python
    >>> from cme_reward.training.trainer import DenseGRPOConfig
    >>> DenseGRPOConfig("out", dense_normalization="group_mean").dense_normalization
    'group_mean'
    ```
    """

    dense_normalization: str = field(
        default="group_std",
        metadata={"help": "Per-position normalisation of dense values: 'group_std' or 'group_mean'."},
    )
    dense_eps: float = field(default=1e-4, metadata={"help": "Added to the per-position std ('group_std')."})
    dense_std: str = field(
        default="sample",
        metadata={"help": "Per-position std: 'sample' (Bessel, as TRL) or 'population' (the paper authors' code)."},
    )

    def __post_init__(self):
        check_dense_options(self.dense_normalization, self.dense_eps, self.dense_std)
        super().__post_init__()


def is_dense_reward(func: Any) -> bool:
    """`True` when `func` has a callable `score_dense` and does not opt out with `dense = False`."""
    return callable(getattr(func, "score_dense", None)) and getattr(func, "dense", True) is not False


class _TokenMean:
    """Stands in for a dense reward inside TRL's `_calculate_rewards`: returns its precomputed per-token means."""

    def __init__(self, rows: list[torch.Tensor | None]):
        self.means = [None if r is None or not bool((~r.isnan()).any()) else float(r.double().nanmean()) for r in rows]

    def __call__(self, **kwargs: Any) -> list[float | None]:
        return self.means


class DenseGRPOTrainer(GRPOTrainer):
    r"""[`~trl.GRPOTrainer`] whose advantages are per token (B, T) when a reward function is dense.

    For each dense reward (a callable `score_dense`, see the module doc) the per-token values are normalised per
    position across each group (`dense_normalization`, `dense_eps` of [`DenseGRPOConfig`]; a plain `GRPOConfig`
    uses the defaults `"group_std"`, `1e-4`) and scaled by the reward's `reward_weights` entry. The scalar rewards of
    the other functions are combined and normalised exactly as TRL does (`reward_weights`, `scale_rewards`,
    `multi_objective_aggregation`) and added to every token; without such functions that part is 0. Dense values are
    gathered across processes before normalising, so a group may span processes. A completion whose dense values are
    `None` gets only the scalar part (a warning is logged).

    TRL calls `score_dense` instead of the dense reward's `__call__`; its scalar column (`rewards/<name>/mean`, the
    `reward` metric, the completions table) is the mean of its per-token values. Metrics `dense/<name>/mean`,
    `/std` (raw values over scored tokens), `/tokens` (scored tokens in the batch), `/frac_scored` (completions with
    values) and `/advantage_abs_mean` are logged next to TRL's own. The policy tokenizer is passed as
    `policy_tokenizer`, with the usual reward keyword arguments (dataset columns, `trainer_state`, `log_metric`, ...).
    A reward with a `policy_tokenizer` attribute left at `None` gets the policy tokenizer assigned.

    Args:
        *args, **kwargs: as [`~trl.GRPOTrainer`].

    Raises:
        `ValueError`: a `loss_type` not in `DENSE_LOSS_TYPES`, or bad dense options.
        `TypeError`: an `async` `score_dense`.

    Example:

    ```python
    >>> from cme_reward import CrossModelEntropyReward
    >>> from cme_reward.training.trainer import DenseGRPOConfig, DenseGRPOTrainer
    >>> reward = CrossModelEntropyReward("HuggingFaceTB/SmolLM2-135M-Instruct", name="cme")
    >>> args = DenseGRPOConfig("out", dense_normalization="group_std", num_generations=8)
    >>> trainer = DenseGRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=[reward], args=args, ...)
    >>> trainer.train()
    ```
    """

    def __init__(self, *args: Any, **kwargs: Any):
        if Version(trl.__version__).release[:2] < MIN_TRL:
            raise ImportError(
                f"DenseGRPOTrainer needs trl>={'.'.join(map(str, MIN_TRL))}, found {trl.__version__}: "
                "pip install -U 'trl>=1.16'"
            )
        config = inspect.signature(GRPOTrainer.__init__).bind_partial(self, *args, **kwargs).arguments.get("args")
        if config is not None:  # refuse bad options before TRL loads any model
            self._check_options(config)
        super().__init__(*args, **kwargs)
        self._check_options(self.args)
        self.dense_normalization = getattr(self.args, "dense_normalization", "group_std")
        self.dense_eps = getattr(self.args, "dense_eps", 1e-4)
        self.dense_std = getattr(self.args, "dense_std", "sample")
        for func in self.reward_funcs:  # rewards that read the policy tokenizer in `__call__` (CME's `score_eos`)
            if getattr(func, "policy_tokenizer", False) is None:
                func.policy_tokenizer = self._policy_tokenizer()
        self._dense_indices = [i for i, func in enumerate(self.reward_funcs) if is_dense_reward(func)]
        for i in self._dense_indices:
            if inspect.iscoroutinefunction(self.reward_funcs[i].score_dense):
                raise TypeError(f"dense reward '{self.reward_func_names[i]}': `score_dense` must not be async")
        if not self._dense_indices:
            logger.warning("DenseGRPOTrainer: no reward function has `score_dense`; training uses scalar advantages")
        self._dense_pending: dict[str, Any] | None = None

    @staticmethod
    def _check_options(config: Any) -> None:
        check_dense_options(getattr(config, "dense_normalization", "group_std"), getattr(config, "dense_eps", 1e-4),
                            getattr(config, "dense_std", "sample"))  # fmt: skip
        loss_type = getattr(config, "loss_type", None)
        if loss_type not in DENSE_LOSS_TYPES:
            raise ValueError(
                f"DenseGRPOTrainer does not support `loss_type={loss_type!r}`: per-token (B, T) advantages are "
                f"verified only for {DENSE_LOSS_TYPES}"
            )

    # ---- rewards ------------------------------------------------------------------------------------------------

    def _policy_tokenizer(self) -> Any:
        tokenizer = getattr(self, "_tokenizer", None)  # TRL 1.16 keeps the tokenizer of a processor here
        if tokenizer is None:
            tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        return tokenizer

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if not self._dense_indices:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # the keyword arguments TRL gives reward functions (dataset columns, trainer state, loggers, environments)
        keys = [key for key in inputs[0] if key not in ("prompt", "completion", "completion_ids")]
        kwargs: dict[str, Any] = {key: [example[key] for example in inputs] for key in keys}
        kwargs.update(trainer_state=self.state, log_extra=self._log_completion_extra, log_metric=self._log_metric)
        if self.environments is not None:
            kwargs["environments"] = self.environments
        local: dict[int, list[torch.Tensor | None]] = {}
        for i in self._dense_indices:
            name = self.reward_func_names[i]
            with profiling_context(self, f"{name}.score_dense"):
                raw = self.reward_funcs[i].score_dense(
                    prompts=prompts,
                    completions=completions,
                    completion_ids=completion_ids_list,
                    policy_tokenizer=self._policy_tokenizer(),
                    **kwargs,
                )
            local[i] = check_dense_values(raw, completion_ids_list, name)
            missing = [j for j, row in enumerate(local[i]) if row is None]
            if missing:
                logger.warning(
                    "dense reward '%s' returned None for %d of %d completions (local indices %s): they get only the "
                    "scalar advantage",
                    name, len(missing), len(local[i]), missing[:8],
                )  # fmt: skip
        # TRL scores the other functions as usual; a dense function's scalar column is the mean of its values
        originals = self.reward_funcs
        self.reward_funcs = [_TokenMean(local[i]) if i in local else func for i, func in enumerate(originals)]
        try:
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self.reward_funcs = originals
        device = self.accelerator.device
        lengths = torch.tensor([len(ids) for ids in completion_ids_list], device=device)
        width = max(int(self.accelerator.gather(lengths.max().reshape(1)).max()), 1)  # common width of all ranks
        self._dense_pending = {
            "rewards_per_func": rewards_per_func,  # (B_all, K), already gathered by TRL
            "lengths": self.accelerator.gather(lengths),  # (B_all,)
            "values": {i: self.accelerator.gather(pad_dense(rows, width).to(device)) for i, rows in local.items()},
        }
        return rewards_per_func

    # ---- advantages ---------------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        pending, self._dense_pending = self._dense_pending, None
        if pending is None:
            return output
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        rewards_per_func, lengths = pending["rewards_per_func"], pending["lengths"]
        scalar_idx = [i for i in range(len(self.reward_funcs)) if i not in pending["values"]]
        scalar = scalar_advantages(
            rewards_per_func[:, scalar_idx],
            self.reward_weights[scalar_idx],
            group,
            scale_rewards=self.scale_rewards,
            aggregation=self.multi_objective_aggregation,
        )  # (B_all,)
        local_rows, local_width = output["completion_ids"].shape
        width = max(local_width, *(v.size(1) for v in pending["values"].values()))
        advantages = scalar.unsqueeze(1).expand(-1, width).clone()  # (B_all, T)
        for i, values in pending["values"].items():  # (B_all, T) NaN-padded, gathered across ranks
            rows = [
                [None if math.isnan(v) else v for v in row[:n]] for row, n in zip(values.tolist(), lengths.tolist())
            ]
            dense_rows = dense_advantages(rows, group, normalization=self.dense_normalization, eps=self.dense_eps,
                                          std=self.dense_std)  # fmt: skip
            dense = pad_dense(dense_rows, values.size(1)).nan_to_num(0.0)  # (B_all, T)
            advantages[:, : dense.size(1)] += float(self.reward_weights[i]) * dense.to(advantages.device)
            self._log_dense(mode, self.reward_func_names[i], values, dense)
        in_completion = torch.arange(width, device=advantages.device) < lengths.unsqueeze(1)  # (B_all, T)
        advantages = torch.where(in_completion, advantages, 0.0)
        start = self.accelerator.process_index * local_rows
        output["advantages"] = advantages[start : start + local_rows, :local_width]  # (B, T) of this process
        # the completions table shows the mean advantage of each completion's tokens, not TRL's scalar one
        table = self._logs["advantages"]
        for _ in range(min(len(table), advantages.size(0))):
            table.pop()
        table.extend((advantages.sum(1) / lengths.clamp(min=1)).tolist())
        return output

    def _log_dense(self, mode: str, name: str, values: torch.Tensor, dense: torch.Tensor) -> None:
        present = ~torch.isnan(values)  # (B_all, T)
        scored = values[present]
        metrics = self._metrics[mode]
        metrics[f"dense/{name}/mean"].append(scored.mean().item() if scored.numel() else float("nan"))
        metrics[f"dense/{name}/std"].append(nanstd(scored).item() if scored.numel() > 1 else float("nan"))
        metrics[f"dense/{name}/tokens"].append(float(scored.numel()))
        metrics[f"dense/{name}/frac_scored"].append(present.any(dim=1).float().mean().item())
        abs_mean = dense.abs()[present.to(dense.device)].mean().item() if scored.numel() else float("nan")
        metrics[f"dense/{name}/advantage_abs_mean"].append(abs_mean)
