"""Load benchmark of `cme-reward serve`: many concurrent one-sample clients against the server on loopback, against
in-process scoring of the same pairs in the same run.

    python -m benchmarks.serve_load --verifier smollm2 --clients 32 --group-size 1 4 --seconds 60 --wait-idle 90

Starts the server in this process (uvicorn in a thread, 127.0.0.1, a free port), then runs `--clients` client threads
in a child process (so that they do not compete with the server for this process's GIL), each sending one sample per
request (the OpenRLHF pattern, `/get_reward` by default) in a loop for `--seconds`. With `--group-size G` the pairs
are GRPO-shaped: G responses per prompt, each in its own request, the groups' requests interleaved (shuffled within
each window of `--clients` requests), so that a prompt's samples arrive close together but not one after another.
Each group size is one scenario; each reports requests/s, pairs/s, p50/p99 latency, the server's batches and their
mean size, forwarded tokens per pair (prefix sharing), and the ratio of the server's pairs/s to `reward.score` on the
same pairs in one in-process call (goal >= 0.8). Every reward is checked against that direct scoring. Writes
`benchmarks/results/serve_load.json` (`--out`). Not a test: nothing here asserts on timing. Do not run it next to
other CPU-heavy jobs.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .lib.cli import entry_parser
from .lib.machine import machine_info
from .lib.measure import ForeignLoad, wait_idle
from .lib.results import portable_name, portable_path, results_path, write_result

__all__ = ["build_parser", "main", "make_pairs", "parse_args", "request_order"]

WORDS = (
    "the sea is blue and deep wide calm a fox jumps over lazy dog Paris capital of France Berlin Germany poem code "
    "function returns sum two numbers verifier judge model reward learning frozen language short long bright night"
).split()

# the child process: stdlib only, keep-alive connections; each client sends the next request of the shared order, one
# sample per request, until the deadline
CLIENT = """
import http.client, itertools, json, sys, threading, time, urllib.parse
job = json.load(sys.stdin)
url = urllib.parse.urlsplit(job["url"])
bodies = [json.dumps(b).encode() for b in job["bodies"]]
order = itertools.cycle(job["order"])
records, errors, lock = [], [], threading.Lock()
def client():
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    while time.perf_counter() < deadline:
        with lock:
            i = next(order)
        sent = time.perf_counter()
        try:
            conn.request("POST", url.path, body=bodies[i], headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"HTTP {answer.status}: {data[:200]!r}")
            body = json.loads(data)
            value = body["rewards" if "rewards" in body else "scores"][0]
        except Exception as err:
            with lock:
                errors.append(repr(err))
            conn.close()
            continue
        with lock:
            records.append((i, time.perf_counter() - sent, value))
start = time.perf_counter()
deadline = start + job["seconds"]
threads = [threading.Thread(target=client, daemon=True) for _ in range(job["clients"])]
for t in threads:
    t.start()
for t in threads:
    t.join(job["seconds"] + 900)
json.dump({"seconds": time.perf_counter() - start, "records": records, "errors": errors[:20],
           "n_errors": len(errors)}, sys.stdout)
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.serve_load` (checked further by [`parse_args`])."""
    parser = entry_parser("serve_load", __doc__)
    parser.add_argument("--verifier", default="smollm2", help="local model directory, hub id, .gguf or an alias")
    parser.add_argument("--device", help="default: the reward's default (this process's GPU if any, else cpu)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per scenario (default 60)")
    parser.add_argument("--pairs", type=int, default=256, help="distinct pairs the clients cycle through")
    parser.add_argument(
        "--group-size", type=int, nargs="+", default=[1, 4], metavar="G", help="one scenario per G (default 1 4)"
    )
    parser.add_argument("--prompt-words", type=int, default=40, help="words per prompt (default 40)")
    parser.add_argument("--response-words", type=int, default=60, help="words per response (default 60)")
    parser.add_argument("--endpoint", choices=("get_reward", "score"), default="get_reward")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-pairs", type=int, default=256)
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S s for a quiet CPU before each timed phase",
    )
    parser.add_argument("--max-foreign", type=float, default=0.1, metavar="CPUS", help="what --wait-idle waits for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=results_path("serve_load.json"), help="the JSON report")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, checked."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("clients", "pairs", "prompt_words", "response_words", "max_batch_pairs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seconds <= 0 or args.wait_idle < 0:
        parser.error("--seconds must be > 0 and --wait-idle >= 0")
    for g in args.group_size:
        if not 1 <= g <= args.pairs:
            parser.error(f"--group-size {g}: must be in [1, --pairs]")
    return args


def make_pairs(
    n: int, prompt_words: int, response_words: int, *, group_size: int = 1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """`n` (prompt, response) texts of random words, prompt-major: pairs `k * group_size ...` share prompt `k`.

    Example:
        ```python
        >>> prompts, responses = make_pairs(8, 10, 20, group_size=4)
        >>> len(set(prompts)), len(set(responses))
        (2, 8)
        ```
    """
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, rng.randint(k // 2, k * 3 // 2))))

    prompts = [text(prompt_words) for _ in range(-(-n // group_size))]
    return [prompts[i // group_size] for i in range(n)], [f" {text(response_words)} {i}." for i in range(n)]


def request_order(n: int, *, window: int, seed: int = 0) -> list[int]:
    """Pair indices in the order the clients send them: consecutive windows of `window` pairs (whole groups when
    `window` is a multiple of the group size), each shuffled, so that a group's samples go out close together and
    interleaved with other groups'.

    Example:
        ```python
        >>> sorted(request_order(8, window=4)[:4])
        [0, 1, 2, 3]
        ```
    """
    rng = random.Random(seed)
    order = []
    for start in range(0, n, window):
        chunk = list(range(start, min(n, start + window)))
        rng.shuffle(chunk)
        order += chunk
    return order


def request_bodies(endpoint: str, prompts: list[str], responses: list[str]) -> list[dict]:
    if endpoint == "get_reward":  # OpenRLHF: templated prompt (plain text here) + response + end-of-turn text
        return [{"query": [p + r + "<|im_end|>"], "prompts": [p], "labels": [""]} for p, r in zip(prompts, responses)]
    return [{"prompts": [p], "responses": [r]} for p, r in zip(prompts, responses)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def run_clients(job: dict, timeout: float) -> tuple[dict, float]:
    """The client process on `job`; returns its report and the CPUs it used on average (its own load on the box)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CLIENT], input=json.dumps(job), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"the load client failed: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(done.stdout), cpu / max(wall, 1e-9)


def direct_scoring(args, reward, prompts: list[str], responses: list[str]) -> tuple[list, dict]:
    """`reward.score` over every pair in one call, in a worker thread like the server's (after a warm-up)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(reward.score, prompts[:8], responses[:8]).result()
        if args.wait_idle:
            wait_idle(args.max_foreign, args.wait_idle)
        forwarded = reward.stats.tokens_forward
        with ForeignLoad() as load:
            start = time.perf_counter()
            expected = pool.submit(reward.score, prompts, responses).result()
            seconds = time.perf_counter() - start
    tokens_forward = reward.stats.tokens_forward - forwarded
    return expected, {"seconds": seconds, "pairs_per_s": len(prompts) / seconds, "foreign_cpus": load.cpus,
                      "tokens_forward_per_pair": tokens_forward / len(prompts)}  # fmt: skip


def serve_and_load(args, reward, bodies: list[dict], order: list[int]) -> tuple[dict, dict]:
    """The server under the clients' load: their report, and the server side (batches, forwarded tokens, load)."""
    from cme_reward.server.app import create_app, serve_in_thread

    app = create_app(reward, batch_wait_ms=args.batch_wait_ms, max_batch_pairs=args.max_batch_pairs)
    batcher = app.state.batcher
    with serve_in_thread(app) as url:
        job = {"url": f"{url}/{args.endpoint}", "bodies": bodies, "order": order, "clients": args.clients}
        run_clients(job | {"seconds": 0.5}, timeout=900)  # warm-up: connections, the batcher's recent sizes
        if args.wait_idle:
            wait_idle(args.max_foreign, args.wait_idle)
        batches, pairs, forwarded = batcher.batches, batcher.pairs_scored, reward.stats.tokens_forward
        with ForeignLoad() as load:
            report, client_cpus = run_clients(job | {"seconds": args.seconds}, timeout=args.seconds + 900)
        scored = batcher.pairs_scored - pairs
        server = {
            "batches": batcher.batches - batches,
            "pairs_scored": scored,
            "tokens_forward_per_pair": (reward.stats.tokens_forward - forwarded) / max(scored, 1),
            "client_cpus": client_cpus,  # the client process's own load
            "foreign_cpus": max(0.0, load.cpus - client_cpus),  # everything else's
        }
    return report, server


def scenario(args, reward, group_size: int) -> dict:
    """One load run with GRPO groups of `group_size` (1: distinct prompts), against direct scoring of its pairs."""
    prompts, responses = make_pairs(args.pairs, args.prompt_words, args.response_words, group_size=group_size,
                                    seed=args.seed)  # fmt: skip
    window = max(group_size, args.clients // group_size * group_size)
    order = request_order(args.pairs, window=window, seed=args.seed)
    tokens = [len(reward.tokenizer(r, add_special_tokens=False).input_ids) for r in responses]
    expected, direct = direct_scoring(args, reward, prompts, responses)
    load, side = serve_and_load(args, reward, request_bodies(args.endpoint, prompts, responses), order)
    records, seconds = load["records"], load["seconds"]
    latencies = [r[1] for r in records]
    diffs = [abs(value - expected[i]) for i, _, value in records if expected[i] is not None]
    server = {
        "requests": len(records),
        "errors": load["n_errors"],
        "error_samples": load["errors"],
        "seconds": seconds,
        "requests_per_s": len(records) / seconds,
        "pairs_per_s": len(records) / seconds,  # one pair per request
        "tokens_per_s": sum(tokens[i] for i, _, _ in records) / seconds,
        "latency_p50_ms": 1000 * percentile(latencies, 0.50),
        "latency_p99_ms": 1000 * percentile(latencies, 0.99),
        "latency_mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
        **side,
        "mean_batch_pairs": side["pairs_scored"] / side["batches"] if side["batches"] else float("nan"),
        "max_abs_diff_vs_direct": max(diffs, default=0.0),
    }
    direct["tokens_per_s"] = sum(tokens) / direct["seconds"]
    return {
        "group_size": group_size,
        "prompts": len(set(prompts)),
        "pairs": len(prompts),
        "mean_response_tokens": statistics.fmean(tokens),
        "direct": direct,
        "server": server,
        "fraction_of_direct": server["pairs_per_s"] / direct["pairs_per_s"],
    }


def run(args: argparse.Namespace) -> dict:
    """Every scenario of `args.group_size`, one verifier loaded once; returns the report."""
    from cme_reward import CrossModelEntropyReward

    reward = CrossModelEntropyReward(args.verifier, show_progress_bar=False, device=args.device)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "verifier")}
    return {
        "verifier": portable_name(args.verifier),
        "device": str(reward.device),
        "dtype": str(reward.dtype),
        "config": config | {"out": portable_path(args.out)},
        "machine": machine_info(torch.device(str(reward.device))),
        "goal_fraction": 0.8,
        "scenarios": [scenario(args, reward, g) for g in args.group_size],
    }


def print_table(result: dict) -> None:
    print(f"serve_load: {result['verifier']} on {result['device']} ({result['dtype']})")
    for run in result["scenarios"]:
        s, d = run["server"], run["direct"]
        rows = [
            ("requests (errors)", f"{s['requests']} ({s['errors']})"),
            ("requests/s = pairs/s", f"{s['requests_per_s']:.1f}"),
            ("latency p50 / p99", f"{s['latency_p50_ms']:.1f} / {s['latency_p99_ms']:.1f} ms"),
            ("batches (mean pairs)", f"{s['batches']} ({s['mean_batch_pairs']:.1f})"),
            (
                "forwarded tokens/pair",
                f"server {s['tokens_forward_per_pair']:.0f}, direct {d['tokens_forward_per_pair']:.0f}",
            ),  # fmt: skip
            ("direct score() pairs/s", f"{d['pairs_per_s']:.1f}"),
            ("server / direct", f"{run['fraction_of_direct']:.2f} (goal >= {result['goal_fraction']})"),
            ("other processes (CPUs)", f"{s['foreign_cpus']:.2f} under load, {d['foreign_cpus']:.2f} direct"),
            ("max |reward - direct|", f"{s['max_abs_diff_vs_direct']:.2e}"),
        ]
        width = max(len(k) for k, _ in rows)
        print(f"  G={run['group_size']}: {run['pairs']} pairs, {run['prompts']} prompts")
        for key, value in rows:
            print(f"    {key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> dict:
    """Run the scenarios, print the table, write the report to `--out`; returns the report."""
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
