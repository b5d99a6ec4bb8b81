"""``cme-reward serve``: load the verifier once and answer scoring requests over HTTP (see :mod:`.server`)."""

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


def cmd_serve(args: argparse.Namespace) -> int:
    """``cme-reward serve``: blocks until SIGINT / SIGTERM, finishing the batches in flight."""
    from .score_job import load_reward
    from .server import serve

    reward, _ = load_reward(args)
    serve(reward, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("CME_API_KEY"))
    return 0
