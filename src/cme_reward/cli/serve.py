"""`cme-reward serve`: load the verifier once and answer scoring requests over HTTP (see `.server`)."""

from __future__ import annotations

import argparse
import os

__all__ = ["add_arguments", "cmd_serve"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's own flags (the verifier and scoring flags come from the CLI's shared tables)."""
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    group.add_argument("--port", type=int, default=8000, help="default 8000")
    group.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $CME_API_KEY, else none)")
    group.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="longest wait of an idle server for more requests (default 5 ms)",
    )
    group.add_argument("--max-batch-pairs", type=int, default=256, help="pairs per engine batch (default 256)")
    group.add_argument("--missing-reward", type=float, default=-20.0, help="OpenRLHF reward of an unscorable sample")


def cmd_serve(args: argparse.Namespace) -> int:
    """`cme-reward serve`: blocks until SIGINT / SIGTERM, finishing the batches in flight."""
    from ..server.app import serve
    from .score import load_reward

    reward, _ = load_reward(args)
    serve(reward, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("CME_API_KEY"),
          batch_wait_ms=args.batch_wait_ms, max_batch_pairs=args.max_batch_pairs,
          missing_reward=args.missing_reward)  # fmt: skip
    return 0
