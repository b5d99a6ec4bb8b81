"""What the trainer adapters take from the environment: a client of `cme-reward serve`, or a reward in this process.

- `CME_REWARD_URL` (e.g. `http://127.0.0.1:8000`): the reward server; `CME_API_KEY`, its bearer token.
- `CME_VERIFIER` (a path, hub id or alias such as `smollm2`) and `CME_DEVICE`: a verifier loaded in this process.
- `CME_MISSING_REWARD`: the reward of an unscorable sample (default -20.0).
"""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache
from typing import Any

from ..http import JSONClient
from ..server.wire import DEFAULT_MISSING_REWARD

__all__ = ["env_missing_reward", "env_reward", "server_client"]

logger = logging.getLogger(__name__)

_env_reward: Any = None
_env_reward_lock = threading.Lock()


@lru_cache(maxsize=8)
def _client(base_url: str, api_key: str | None) -> JSONClient:
    # OpenRLHF's own client waits 180 s and tries 5 times; keep the same patience (cme_reward.http's retry rule)
    return JSONClient(base_url, api_key=api_key, timeout=180.0, max_retries=4, backoff=1.0, max_connections=32,
                      name="the CME reward server")  # fmt: skip


def server_client(url: str | None = None) -> JSONClient | None:
    """A pooled client of `cme-reward serve` at `url` (default: env `CME_REWARD_URL`), bearer token from env
    `CME_API_KEY`; `None` when no URL is set. A URL ending in the endpoint (`.../score`, `.../get_reward`) is cut to
    the server root. One client per URL and key, shared by every call (and thread)."""
    url = url or os.environ.get("CME_REWARD_URL")
    if not url:
        return None
    root = url.rstrip("/")
    for endpoint in ("/score", "/get_reward"):
        root = root.removesuffix(endpoint)
    return _client(root, os.environ.get("CME_API_KEY") or None)


def env_reward() -> Any:
    """The in-process reward of the adapters, built once from env `CME_VERIFIER` (a path, hub id or alias such as
    `smollm2`) and `CME_DEVICE` (optional). Thread-safe: concurrent first calls load the verifier once."""
    global _env_reward
    with _env_reward_lock:
        if _env_reward is None:
            source = os.environ.get("CME_VERIFIER")
            if not source:
                raise RuntimeError(
                    "set CME_REWARD_URL to the URL of `cme-reward serve`, or CME_VERIFIER to a verifier (path, hub id "
                    "or alias) to score in this process"
                )
            from ..reward import CrossModelEntropyReward

            device = os.environ.get("CME_DEVICE") or None
            logger.info("Loading the CME verifier %s in process", source)
            _env_reward = CrossModelEntropyReward(source, device=device)
        return _env_reward


def env_missing_reward() -> float:
    """`missing_reward` of the in-process adapters: env `CME_MISSING_REWARD`, default `DEFAULT_MISSING_REWARD`."""
    text = os.environ.get("CME_MISSING_REWARD")
    if not text:
        return DEFAULT_MISSING_REWARD
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"CME_MISSING_REWARD must be a float, got {text!r}") from None
    if value != value:
        raise ValueError("CME_MISSING_REWARD must not be NaN")
    return value
