"""One process of a data-parallel GRPO step with `CrossModelEntropyReward` in `reward_funcs` (launched by torchrun).

tests/test_distributed.py runs it as

    python -m torch.distributed.run --nproc_per_node 2 --master_port PORT tests/dist_grpo_worker.py \
        --policy POLICY_DIR --verifier VERIFIER_DIR --out OUT_DIR --workdir WORK_DIR

Every process builds its own reward (its own verifier copy), wraps it in `RecordingReward` and runs one real
`trl.GRPOTrainer` step on CPU (gloo). Each rank writes:

- `calls_rank{r}.json`: every reward call of that rank (prompts, completions, returned rewards, reward device);
- `summary_rank{r}.json`: what the trainer saw after the step (world size, backend, and the prompts, completions and
  rewards TRL gathered across processes for the step).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RecordingReward", "main"]

PROMPTS = [
    "What is 2 + 2?",
    "Name a colour.",
    "Write a poem about the sea.",
    "Capital of France?",
    "Say hello.",
    "Add 1 and 1.",
    "Name a city in Germany.",
    "Describe a fox.",
]


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


class RecordingReward:
    """A TRL reward callable that delegates to `reward` and records every call of this process to a JSON file.

    Plain class (not an `nn.Module`), picklable (a reward and a path), with the `__name__` TRL uses for log keys.

    Args:
        reward (`Callable`): the reward to record, called as TRL calls it.
        out_dir (`str`): folder for `calls_rank{r}.json`, one file per process.
    """

    def __init__(self, reward: Any, out_dir: str):
        self.reward = reward
        self.out_dir = str(out_dir)
        self.__name__ = getattr(reward, "__name__", type(reward).__name__)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        rewards = self.reward(prompts=prompts, completions=completions, **kwargs)
        rank = _rank()
        self.calls.append(
            {
                "rank": rank,
                "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
                "pid": os.getpid(),
                "device": str(getattr(self.reward, "device", "unknown")),
                "prompts": prompts,
                "completions": completions,
                "rewards": [None if r is None else float(r) for r in rewards],
            }
        )
        Path(self.out_dir, f"calls_rank{rank}.json").write_text(json.dumps(self.calls))
        return rewards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="saved tiny policy (model + tokenizer)")
    parser.add_argument("--verifier", required=True, help="saved tiny verifier (model + tokenizer)")
    parser.add_argument("--out", required=True, help="folder for the per-rank JSON records")
    parser.add_argument("--workdir", required=True, help="GRPOConfig.output_dir")
    args = parser.parse_args(argv)

    import torch.distributed as dist
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from cme_reward import CrossModelEntropyReward

    reward = RecordingReward(CrossModelEntropyReward(args.verifier, name="cme"), args.out)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})
    config = GRPOConfig(
        output_dir=args.workdir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=4,  # generation batch = 4 * 2 processes = 8 = 2 prompts x 4 generations
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=1e-4,
    )
    trainer = GRPOTrainer(
        model=args.policy,
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(args.policy),
    )
    trainer.train()

    state = trainer.accelerator.state
    logs = trainer._logs  # TRL's gathered per-step records (prompt, completion, rewards per function)
    summary = {
        "rank": state.process_index,
        "local_rank": state.local_process_index,
        "world_size": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "pid": os.getpid(),
        "reward_device": str(reward.reward.device),
        "gathered": {
            "prompts": list(logs["prompt"]),
            "completions": list(logs["completion"]),
            "rewards": list(logs["rewards"][reward.__name__]),
        },
    }
    Path(args.out, f"summary_rank{state.process_index}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
