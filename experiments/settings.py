"""What every experiment module shares: the run's settings (the cache key of each arm), the arms, and the atomic
JSON files a run is made of."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cme_reward.files.atomic import write_atomic

__all__ = ["ARMS", "AUTHORS_BETA", "DEFAULT_OUT", "SMOKE", "Settings", "read_json", "write_json"]

logger = logging.getLogger(__name__)

DEFAULT_OUT = "outputs/replication"
ARMS = {
    "a": "untrained generator",
    "b": "GRPO, scalar CME",
    "c": "GRPO, dense CME (DenseGRPOTrainer)",
    "d": "GRPO, self-likelihood (frozen copy of the generator)",
    "e": "GRPO, verifier predictive entropy",
    "f": "GRPO, dense CME with the authors' settings (from_paper token level, population std, KL 0.01)",
    "g": "(f) with the repetition guard",
}
AUTHORS_BETA = 0.01  # the authors' KL coefficient (config_quality*.yaml), used by arms (f) and (g)


@dataclass(frozen=True)
class Settings:
    """Everything that determines the numbers of a run (the cache key of each arm is a hash of these).

    Args:
        policy (`str`): the generator: an alias of a registry-package model (`"smollm2"`), hub id or directory.
        verifier (`str`): the frozen verifier, as `policy` (`"gemma3-270m"`).
        prompts (`str`, *optional*): a JSON Lines file of `{"prompt", "reference"?, "split"?}` rows; `None`: MT-Bench
            first turns and the ShareGPT instructions shipped with it.
        heldout (`int`): held-out prompts, never trained on (prompts with a reference answer are held out first).
        seed (`int`): the seed of everything (data order, sampling, initial state).
        steps, prompts_per_step, num_generations, max_completion_length, learning_rate, beta, temperature:
            GRPO settings, the same for every trained arm.
        eval_max_new_tokens, eval_temperature, eval_top_p, eval_batch_size: held-out sampling (one per prompt).
    """

    policy: str = "smollm2"
    verifier: str = "gemma3-270m"
    prompts: str | None = None
    heldout: int = 40
    seed: int = 0
    steps: int = 40
    prompts_per_step: int = 2
    num_generations: int = 4
    max_completion_length: int = 64
    learning_rate: float = 2e-5
    beta: float = 0.0
    temperature: float = 1.0
    eval_max_new_tokens: int = 64
    eval_temperature: float = 0.7
    eval_top_p: float = 0.9
    eval_batch_size: int = 20

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


SMOKE = {"heldout": 4, "steps": 2, "prompts_per_step": 2, "num_generations": 2, "max_completion_length": 8,
         "eval_max_new_tokens": 8, "eval_batch_size": 4}  # fmt: skip


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def read_json(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A cached result, or `None` when missing, unreadable or made with other settings."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("fingerprint") != fingerprint:
        logger.info("%s was made with other settings: redoing it", path)
        return None
    return data
