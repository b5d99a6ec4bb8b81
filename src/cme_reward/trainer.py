"""Dense (per-token) rewards in GRPO: [`DenseGRPOTrainer`] trains on (B, T) advantages built from per-token values.

A reward function in `reward_funcs` is *dense* when it has a callable `score_dense` attribute (and no `dense = False`):

```python
reward.score_dense(prompts=..., completions=..., completion_ids=..., policy_tokenizer=..., **kwargs)
    -> list[list[float] | None]  # one value per policy token of completion_ids[i]; None: unscorable
```

Its values are normalised per *position* across each GRPO group; the scalar rewards of the other reward functions are
normalised the TRL way and added to every token. TRL's own loss (clipping, KL, loss types) consumes the (B, T) tensor.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import trl
from packaging.version import Version
from trl import GRPOConfig, GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.trainer.utils import nanstd

__all__ = [
    "DENSE_LOSS_TYPES",
    "DENSE_NORMALIZATIONS",
    "DenseGRPOConfig",
    "DenseGRPOTrainer",
    "check_dense_values",
    "dense_advantages",
    "is_dense_reward",
    "normalize_dense",
    "pad_dense",
    "scalar_advantages",
]

logger = logging.getLogger(__name__)

DENSE_NORMALIZATIONS = ("group_std", "group_mean")
# Loss types of TRL 1.16 whose `_compute_loss` broadcasts (B, T) advantages element-wise (read from the source; VESPO
# and the off-policy mask then pick their sign-dependent branch per token). Anything newer is refused, not guessed.
DENSE_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo")
MIN_TRL = (1, 16)  # the GRPOTrainer internals used here (reward hooks, (B, T) advantages) as read in TRL 1.16


def check_dense_options(normalization: Any, eps: Any) -> None:
    """Raise `ValueError` unless `normalization` is one of `DENSE_NORMALIZATIONS` and `eps` a finite float > 0."""
    if normalization not in DENSE_NORMALIZATIONS:
        raise ValueError(f"`dense_normalization` must be one of {DENSE_NORMALIZATIONS}, got {normalization!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"`dense_eps` must be a finite number > 0, got {eps!r}")


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

    Example:

    ```python
    >>> from cme_reward.trainer import DenseGRPOConfig
    >>> DenseGRPOConfig("out", dense_normalization="group_mean").dense_normalization
    'group_mean'
    ```
    """

    dense_normalization: str = field(
        default="group_std",
        metadata={"help": "Per-position normalisation of dense values: 'group_std' or 'group_mean'."},
    )
    dense_eps: float = field(default=1e-4, metadata={"help": "Added to the per-position std ('group_std')."})

    def __post_init__(self):
        check_dense_options(self.dense_normalization, self.dense_eps)
        super().__post_init__()


def is_dense_reward(func: Any) -> bool:
    """`True` when `func` has a callable `score_dense` and does not opt out with `dense = False`."""
    return callable(getattr(func, "score_dense", None)) and getattr(func, "dense", True) is not False


def check_dense_values(values: Any, completion_ids: Sequence[Sequence[int]], name: str) -> list[torch.Tensor | None]:
    """Validate the output of `score_dense` against `completion_ids`; returns one float32 (T_i,) tensor or `None` each.

    Raises:
        `ValueError` naming the reward `name` (and the completion index) when the number of rows or of values in a
        row differs from the completions / their token counts, or when a value is not finite.
    """
    if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"dense reward '{name}': score_dense must return a list, got {type(values).__name__}")
    if len(values) != len(completion_ids):
        raise ValueError(
            f"dense reward '{name}' returned {len(values)} rows of dense values for {len(completion_ids)} completions"
        )
    out: list[torch.Tensor | None] = []
    for i, (row, ids) in enumerate(zip(values, completion_ids)):
        if row is None:
            out.append(None)
            continue
        try:
            tensor = torch.as_tensor(row, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError) as err:
            raise ValueError(f"dense reward '{name}': values of completion {i} are not numbers ({err})") from None
        if tensor.ndim != 1 or tensor.numel() != len(ids):
            raise ValueError(
                f"dense reward '{name}' returned {tensor.numel()} values (shape {tuple(tensor.shape)}) for "
                f"completion {i}, which has {len(ids)} policy tokens: return one value per token of completion_ids[i]"
            )
        bad = (~torch.isfinite(tensor)).nonzero()
        if bad.numel():
            position = int(bad[0])
            raise ValueError(
                f"dense reward '{name}': completion {i} has a non-finite value {tensor[position].item()} at token "
                f"{position}; return None for an unscorable completion instead"
            )
        out.append(tensor)
    return out


def pad_dense(values: Sequence[Sequence[float] | torch.Tensor | None], width: int | None = None) -> torch.Tensor:
    """Right-pad rows of dense values into a float32 (B, T) tensor, NaN where a row has no value (or is `None`)."""
    rows = [None if v is None else torch.as_tensor(v, dtype=torch.float32).flatten() for v in values]
    longest = max((r.numel() for r in rows if r is not None), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"`width` ({width}) is shorter than the longest row ({longest})")
    padded = torch.full((len(rows), width), float("nan"))  # (B, T)
    for i, row in enumerate(rows):
        if row is not None:
            padded[i, : row.numel()] = row
    return padded


def normalize_dense(
    values: torch.Tensor, group_size: int, *, normalization: str = "group_std", eps: float = 1e-4
) -> torch.Tensor:
    """Per-position group normalisation of NaN-padded dense values (B, T) -> advantages (B, T), 0 where NaN.

    Rows `[k * group_size, (k + 1) * group_size)` form group `k`. At each position `t` the mean (and, for
    `"group_std"`, the sample standard deviation, as TRL's `nanstd`) are taken over the group's rows whose value at
    `t` is not NaN. Positions with fewer than two values get 0.
    """
    check_dense_options(normalization, eps)
    if values.ndim != 2:
        raise ValueError(f"`values` must be a (B, T) tensor, got shape {tuple(values.shape)}")
    batch, width = values.shape
    if group_size < 1 or batch % group_size:
        raise ValueError(f"`group_size` ({group_size}) must be >= 1 and divide the number of rows ({batch})")
    dtype = torch.float32 if values.device.type == "mps" else torch.float64  # MPS has no float64
    grouped = values.to(dtype).view(batch // group_size, group_size, width)  # (G, n, T)
    present = ~torch.isnan(grouped)
    count = present.sum(dim=1, keepdim=True)  # (G, 1, T)
    mean = torch.where(present, grouped, 0.0).sum(dim=1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(present, grouped - mean, 0.0)  # (G, n, T)
    if normalization == "group_std":
        std = ((centered**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # Bessel, as TRL
        centered = centered / (std + eps)
    advantages = torch.where(present & (count > 1), centered, 0.0)
    return advantages.view(batch, width).to(torch.float32)


def dense_advantages(
    values: Sequence[Sequence[float] | None], group_size: int, *, normalization: str = "group_std", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages (B, T) of per-token values, normalised per position across each group, and the (B, T) value mask.

    Args:
        values (`list[list[float] | None]`): one list per completion (consecutive groups of `group_size`); `None`
            for a completion without dense values (its advantages are 0).
        group_size (`int`): completions per prompt (`num_generations`).
        normalization (`str`, *optional*, defaults to `"group_std"`): `"group_std"` or `"group_mean"`.
        eps (`float`, *optional*, defaults to `1e-4`): added to the per-position std.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: float32 advantages (B, T) with `T` the longest row, and a bool mask
        (B, T) of the positions that carry a value.

    Example:

    ```python
    >>> adv, mask = dense_advantages([[1.0, 2.0], [3.0]], 2, normalization="group_mean")
    >>> adv
    tensor([[-1.,  0.],
            [ 1.,  0.]])
    ```
    """
    padded = pad_dense(values)  # (B, T)
    return normalize_dense(padded, group_size, normalization=normalization, eps=eps), ~torch.isnan(padded)


def scalar_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    group_size: int,
    *,
    scale_rewards: str = "group",
    aggregation: str = "sum_then_normalize",
) -> torch.Tensor:
    """TRL 1.16's scalar GRPO advantages (B,) of rewards (B, K) (NaN = None), as `_generate_and_score_completions`.

    `sum_then_normalize`: weighted `nansum`, then centred per group and scaled by the group (`"group"`), batch
    (`"batch"`) or no (`"none"`) sample std + 1e-4. `normalize_then_sum`: each function normalised per group, weighted
    sum, then normalised over the batch. Rows where every function is NaN get 0. `K == 0` gives zeros.
    """
    batch = rewards_per_func.size(0)
    if rewards_per_func.size(1) == 0:
        return torch.zeros(batch, device=rewards_per_func.device)
    weights = weights.to(rewards_per_func.device, torch.float32)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)  # (B,)
    if aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        mean = torch.nanmean(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size)
        if scale_rewards in ("group", "none"):
            std = nanstd(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size)
            std = std if group_size > 1 else torch.zeros_like(rewards)
        elif scale_rewards == "batch":
            std = nanstd(rewards).expand_as(rewards) if batch > 1 else torch.zeros_like(rewards)
        else:
            raise ValueError(f"`scale_rewards` must be 'group', 'batch' or 'none', got {scale_rewards!r}")
        advantages = rewards - mean
        if scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
    elif aggregation == "normalize_then_sum":
        grouped = rewards_per_func.view(-1, group_size, rewards_per_func.size(1))  # (G, n, K)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean_k)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, rewards_per_func.size(1))
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        std = nanstd(rewards).expand_as(rewards) if batch > 1 else torch.zeros_like(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std + 1e-4)
    else:
        raise ValueError(
            f"`multi_objective_aggregation` must be 'sum_then_normalize' or 'normalize_then_sum', got {aggregation!r}"
        )
    return torch.nan_to_num(advantages, nan=0.0)


class _TokenMean:
    """Stands in for a dense reward inside TRL's `_calculate_rewards`: returns its precomputed per-token means."""

    def __init__(self, rows: list[torch.Tensor | None]):
        self.means = [None if r is None or r.numel() == 0 else float(r.double().mean()) for r in rows]

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
    >>> from cme_reward.trainer import DenseGRPOConfig, DenseGRPOTrainer
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
        check_dense_options(getattr(config, "dense_normalization", "group_std"), getattr(config, "dense_eps", 1e-4))
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
        for i, values in pending["values"].items():
            dense = normalize_dense(values, group, normalization=self.dense_normalization, eps=self.dense_eps)
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
