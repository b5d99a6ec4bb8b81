"""OpenRLHF reward file: Cross-Model Entropy as the reward of OpenRLHF PPO / GRPO (0.11+, `--reward.remote_url`).

OpenRLHF loads `reward_func(queries, prompts, labels)` from a `.py` file given as `--reward.remote_url` and calls it
once per sample, from many threads at once. `queries[i]` is the policy's templated prompt + response decoded with
special tokens, `prompts[i]` the templated prompt; `labels` are ignored. The response is `queries[i]` minus its prompt
prefix and trailing end-of-turn text; the verifier reads `prompts[i]` as plain text (see
`cme_reward.server.wire`).

Where the scoring happens:
    - env `CME_REWARD_URL` set (e.g. `http://127.0.0.1:8000`): POST to `cme-reward serve` (`/get_reward`), which
      micro-batches the concurrent samples: the fast way. `CME_API_KEY` is sent as a bearer token when set.
    - else: in this process, with a `CrossModelEntropyReward(os.environ["CME_VERIFIER"])` (optional `CME_DEVICE`)
      loaded once; one sample per call, so only for small runs. `CME_MISSING_REWARD` sets the reward of an empty
      response (default -20.0).
The variables must reach OpenRLHF's vLLM engine actors (export them before `ray start`, or pass them in the job's
`runtime_env`).

Config:

```bash
cme-reward serve --verifier HuggingFaceTB/SmolLM2-135M-Instruct --port 8000 &
export CME_REWARD_URL=http://127.0.0.1:8000
python -m openrlhf.cli.train_ppo_ray ... --data.apply_chat_template \\
    --reward.remote_url "$(python -c 'import cme_reward.integrations.openrlhf_reward as m; print(m.__file__)')"
# or, with no reward file at all: --reward.remote_url http://127.0.0.1:8000/get_reward
```

Returns the OpenRLHF reward dict with torch tensors, as OpenRLHF's `examples/python/reward_func.py` does:
`{"rewards": (N,), "scores": (N,), "extra_logs": {"cme": (N,), "cme_scored": (N,)}}` (`scores` equals `rewards`:
CME is not in [0, 1], so leave `--algo.dynamic_filtering_enable` off or set `--algo.dynamic_filtering_range` to
match).
"""

from __future__ import annotations

from typing import Any

# absolute imports: OpenRLHF loads this file by path, outside its package
from cme_reward.integrations.env import env_missing_reward, env_reward, server_client
from cme_reward.server.wire import openrlhf_answer, split_query

__all__ = ["reward_func"]


def reward_func(queries: list[str], prompts: list[str], labels: list[Any] | None = None, **kwargs: Any) -> dict:
    """CME rewards of OpenRLHF samples.

    Args:
        queries (`list[str]`): templated prompt + response, decoded with special tokens.
        prompts (`list[str]`): the templated prompts.
        labels (`list`, *optional*): OpenRLHF labels; ignored.
        **kwargs: ignored.

    Returns:
        `dict`: `{"rewards": Tensor, "scores": Tensor, "extra_logs": {"cme": Tensor, "cme_scored": Tensor}}`, float32
        tensors of shape `(len(queries),)`.

    Raises:
        `ValueError`: a query does not start with its prompt.
        `RemoteError` / `UnreachableError`: the server refused the request or could not be reached.

    Example:

    ```python
    >>> os.environ["CME_REWARD_URL"] = "http://127.0.0.1:8000"
    >>> reward_func(["<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>"],
    ...             ["<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"], [""])["rewards"]
    tensor([-3.1...])
    ```
    """
    import torch

    queries, prompts = list(queries), list(prompts)
    if len(queries) != len(prompts):
        raise ValueError(f"`queries` and `prompts` must have the same length, got {len(queries)} and {len(prompts)}")
    client = server_client()
    if client is not None:
        # labels are not sent: the server ignores them, and they need not be JSON
        answer = client.request("POST", "/get_reward", {"query": queries, "prompts": prompts})
    else:
        responses = [split_query(q, p, index=i) for i, (q, p) in enumerate(zip(queries, prompts))]
        # the TRL entry point: a pair with non-finite verifier log-probs scores None instead of raising
        scores = env_reward()(prompts=prompts, completions=responses) if queries else []
        answer = openrlhf_answer(scores, missing_reward=env_missing_reward())

    def tensor(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32)  # (N,)

    return {
        "rewards": tensor(answer["rewards"]),
        "scores": tensor(answer.get("scores", answer["rewards"])),
        "extra_logs": {k: tensor(v) for k, v in answer.get("extra_logs", {}).items()},
    }
