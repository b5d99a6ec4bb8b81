"""verl custom reward function: Cross-Model Entropy as the reward of verl PPO / GRPO.

verl's reward manager (`naive`) calls `compute_score(data_source, solution_str, ground_truth, extra_info)` once per
sample. Two entry points: `compute_score` is synchronous (verl's older `NaiveRewardManager` and `main_eval` call it
directly; the reward loop runs it in a worker thread), `compute_score_async` is a coroutine for the reward loop, which
awaits it on its event loop. `solution_str` is the response decoded without special
tokens. verl passes NO prompt: put it in the dataset's `extra_info` column as `extra_info["prompt"]`, a string or a
list of `{"role", "content"}` messages (the messages go through the *verifier's* chat template, as in TRL). verl also
needs `reward_model.ground_truth` in every row; CME ignores it (an empty string will do).

Where the scoring happens:
    - `url` (from `reward_kwargs`) or env `CME_REWARD_URL` set (e.g. `http://127.0.0.1:8000`): POST `/score` to
      `cme-reward serve`, which micro-batches the concurrent samples. `CME_API_KEY` is sent as a bearer token.
    - else: in this process, with a `CrossModelEntropyReward(os.environ["CME_VERIFIER"])` (optional `CME_DEVICE`)
      loaded once, scored in a worker thread (one sample per call: for small runs).

Returns `{"score": float, "cme_scored": 1.0 | 0.0}`: verl uses `score` as the reward and logs every key (a bare float
would be logged as `acc`). An empty response or non-finite verifier log-probs score `missing_reward` (from
`reward_kwargs`, else env `CME_MISSING_REWARD`, default -20.0) with `cme_scored` 0.0.

Config:

```python
# preprocessing: every row carries its prompt in extra_info
row = {"data_source": "my_data", "prompt": messages, "reward_model": {"ground_truth": ""},
       "extra_info": {"prompt": messages}}
```

```yaml
reward:
  custom_reward_function:
    path: pkg://cme_reward.integrations.verl_reward  # or the file's path (verl before Dec 2025)
    name: compute_score  # or compute_score_async on verl's asynchronous reward loop
    reward_kwargs:
      url: http://127.0.0.1:8000  # optional: else env CME_REWARD_URL, else in process from CME_VERIFIER
```

On the command line: `reward.custom_reward_function.path=pkg://cme_reward.integrations.verl_reward
+reward.custom_reward_function.reward_kwargs.url=http://127.0.0.1:8000` (`+`: verl's defaults lack the key).
"""

from __future__ import annotations

import asyncio
from typing import Any

# absolute imports: verl loads this file by path, outside its package
from cme_reward.integrations.env import env_missing_reward, env_reward, server_client

__all__ = ["compute_score", "compute_score_async", "prompt_of"]


def prompt_of(extra_info: Any) -> str | list[dict[str, Any]]:
    """The prompt stored in verl's `extra_info["prompt"]`: a string or a list of messages (numpy arrays and tuples,
    as a parquet round trip may give, become lists).

    Raises:
        `ValueError`: no prompt there, or not a string / list of messages.
    """
    if not hasattr(extra_info, "get") or extra_info.get("prompt") is None:
        raise ValueError(
            "CME needs the prompt, which verl does not pass to compute_score: store it in the dataset's extra_info "
            "column as extra_info['prompt'] (a string or a list of {'role', 'content'} messages), got extra_info="
            f"{extra_info!r:.120}"
        )
    prompt = extra_info["prompt"]
    if hasattr(prompt, "tolist"):  # numpy object array
        prompt = prompt.tolist()
    if isinstance(prompt, tuple):
        prompt = list(prompt)
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
        return prompt
    raise ValueError(
        "extra_info['prompt'] must be a string or a non-empty list of {'role', 'content'} messages, "
        f"got {prompt!r:.120}"
    )


def _prepare(extra_info: Any, solution_str: Any, url: str | None, missing_reward: float | None):
    prompt = prompt_of(extra_info)
    if not isinstance(solution_str, str):
        raise TypeError(f"`solution_str` must be a string, got {type(solution_str).__name__}")
    missing = env_missing_reward() if missing_reward is None else float(missing_reward)
    return prompt, missing, server_client(url)


def _result(score: float | None, missing: float) -> dict[str, float]:
    if score is None:
        return {"score": missing, "cme_scored": 0.0}
    return {"score": float(score), "cme_scored": 1.0}


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    missing_reward: float | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """CME reward of one verl sample; the synchronous entry point (verl's `NaiveRewardManager`, `main_eval`, and the
    reward loop, which runs it in a worker thread).

    Args:
        data_source, ground_truth: ignored.
        solution_str (`str`): the response.
        extra_info (`dict`): holds the prompt as `extra_info["prompt"]`.
        url (`str`, *optional*): `cme-reward serve` base URL; `None` reads env `CME_REWARD_URL` (unset: in process).
        missing_reward (`float`, *optional*): score of an unscorable response; `None` reads `CME_MISSING_REWARD`
            (default -20.0). With a server, a missing score is mapped here too.
        **kwargs: ignored (verl may pass `reward_router_address`, `reward_model_tokenizer`).

    Returns:
        `dict`: `{"score": float, "cme_scored": 1.0 | 0.0}`.

    Example:

    ```python
    >>> compute_score("gsm8k", " 4", "", {"prompt": "2 + 2 ="}, url="http://127.0.0.1:8000")
    {'score': -0.61..., 'cme_scored': 1.0}
    ```
    """
    prompt, missing, client = _prepare(extra_info, solution_str, url, missing_reward)
    if client is not None:
        score = client.request("POST", "/score", {"prompts": [prompt], "responses": [solution_str]})["scores"][0]
    else:  # the TRL entry point: non-finite verifier log-probs score None instead of raising
        score = env_reward()(prompts=[prompt], completions=[solution_str])[0]
    return _result(score, missing)


async def compute_score_async(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    missing_reward: float | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """[`compute_score`] as a coroutine, for verl's asynchronous reward loop (`name: compute_score_async`): many
    samples are in flight at once and the server micro-batches them; the loop never blocks.

    Example:

    ```python
    >>> await compute_score_async("gsm8k", " 4", "", {"prompt": "2 + 2 ="}, url="http://127.0.0.1:8000")
    {'score': -0.61..., 'cme_scored': 1.0}
    ```
    """
    prompt, missing, client = _prepare(extra_info, solution_str, url, missing_reward)
    if client is not None:
        answer = await client.arequest("POST", "/score", {"prompts": [prompt], "responses": [solution_str]})
        score = answer["scores"][0]
    else:
        reward = await asyncio.to_thread(env_reward)
        score = (await asyncio.to_thread(reward, prompts=[prompt], completions=[solution_str]))[0]
    return _result(score, missing)
