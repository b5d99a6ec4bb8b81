"""Adapters that plug Cross-Model Entropy into other RL trainers, over `cme-reward serve` or in process.

- `cme_reward.integrations.openrlhf_reward`: an OpenRLHF reward file (`--reward.remote_url .../openrlhf_reward.py`).
- `cme_reward.integrations.verl_reward`: a verl custom reward function (`reward.custom_reward_function.path`).
- `cme_reward.integrations.env`: what both take from the environment (the reward server's client, or a verifier
  loaded in process); the wire formats they share with the server are in `cme_reward.server.wire`.

Nothing is imported here, so that loading one adapter pulls in nothing else.
"""

__all__: list[str] = []
