"""Load benchmark of `cme-reward serve`: many concurrent one-sample clients against the server on loopback.

    python -m benchmarks.serve_load --verifier PATH_OR_ALIAS --clients 32 --seconds 20 --out results/serve.json

Starts the server in this process (uvicorn in a thread, 127.0.0.1, a free port), then runs `--clients` client threads
in a child process (so that they do not compete with the server for this process's GIL), each sending one sample per
request (the OpenRLHF pattern, `/get_reward` by default) in a loop for `--seconds`. Reports p50/p99 latency,
requests/s, server throughput in pairs/s and response tokens/s, and that throughput as a fraction of
`reward.score` on the same pairs in one in-process call (goal >= 0.8). Every reward is checked against that direct
scoring. Not a test: nothing here asserts on timing. Do not run it next to other CPU-heavy jobs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cme_reward.files.atomic import write_atomic

__all__ = ["main"]

WORDS = (
    "the sea is blue and deep wide calm a fox jumps over lazy dog Paris capital of France Berlin Germany poem code "
    "function returns sum two numbers verifier judge model reward learning frozen language short long bright night"
).split()

# the child process: stdlib only, keep-alive connections, one sample per request until the deadline
CLIENT = """
import http.client, json, sys, threading, time, urllib.parse
job = json.load(sys.stdin)
url = urllib.parse.urlsplit(job["url"])
bodies = [json.dumps(b).encode() for b in job["bodies"]]
records, errors, lock = [], [], threading.Lock()
def client(k):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    i = k
    while time.perf_counter() < deadline:
        i = (i + job["clients"]) % len(bodies)
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
threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(job["clients"])]
for t in threads:
    t.start()
for t in threads:
    t.join(job["seconds"] + 120)
json.dump({"seconds": time.perf_counter() - start, "records": records, "errors": errors[:20],
           "n_errors": len(errors)}, sys.stdout)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifier", required=True, help="local model directory, hub id, .gguf or an alias")
    parser.add_argument("--device", help="default: the reward's default (this process's GPU if any, else cpu)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration (default 20)")
    parser.add_argument("--pairs", type=int, default=256, help="distinct pairs the clients cycle through")
    parser.add_argument("--prompt-words", type=int, default=40, help="words per prompt (default 40)")
    parser.add_argument("--response-words", type=int, default=60, help="words per response (default 60)")
    parser.add_argument("--endpoint", choices=("get_reward", "score"), default="get_reward")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-pairs", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here (atomically)")
    args = parser.parse_args(argv)
    for name in ("clients", "pairs", "prompt_words", "response_words", "max_batch_pairs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    return args


def make_pairs(n: int, prompt_words: int, response_words: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, rng.randint(k // 2, k * 3 // 2))))

    return [text(prompt_words) for _ in range(n)], [" " + text(response_words) + "." for _ in range(n)]


def load_reward(args: argparse.Namespace):
    from cme_reward import CrossModelEntropyReward

    return CrossModelEntropyReward(args.verifier, show_progress_bar=False, device=args.device)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def run(args: argparse.Namespace) -> dict:
    from cme_reward.server.app import create_app, serve_in_thread

    reward = load_reward(args)
    prompts, responses = make_pairs(args.pairs, args.prompt_words, args.response_words, args.seed)
    if args.endpoint == "get_reward":  # OpenRLHF: templated prompt (plain text here) + response + end-of-turn text
        bodies = [
            {"query": [p + r + "<|im_end|>"], "prompts": [p], "labels": [""]} for p, r in zip(prompts, responses)
        ]
    else:
        bodies = [{"prompts": [p], "responses": [r]} for p, r in zip(prompts, responses)]
    tokens = [len(reward.tokenizer(r, add_special_tokens=False).input_ids) for r in responses]

    # direct scoring, in a worker thread like the server's: one call over every pair (after a warm-up)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(reward.score, prompts[:8], responses[:8]).result()
        start = time.perf_counter()
        expected = pool.submit(reward.score, prompts, responses).result()
        direct_s = time.perf_counter() - start
    direct = {"pairs_per_s": args.pairs / direct_s, "tokens_per_s": sum(tokens) / direct_s, "seconds": direct_s}

    app = create_app(reward, batch_wait_ms=args.batch_wait_ms, max_batch_pairs=args.max_batch_pairs)
    with serve_in_thread(app) as url:
        job = {"url": f"{url}/{args.endpoint}", "bodies": bodies, "clients": args.clients, "seconds": args.seconds}
        warm = subprocess.run([sys.executable, "-c", CLIENT], input=json.dumps(job | {"seconds": 0.5}),
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        if warm.returncode:
            raise RuntimeError(f"the load client failed: {warm.stderr[-2000:]}")
        batches_before = app.state.batcher.batches
        done = subprocess.run([sys.executable, "-c", CLIENT], input=json.dumps(job), capture_output=True, text=True,
                              timeout=args.seconds + 300)  # fmt: skip
        batches = app.state.batcher.batches - batches_before
    if done.returncode:
        raise RuntimeError(f"the load client failed: {done.stderr[-2000:]}")
    load = json.loads(done.stdout)
    records, seconds = load["records"], load["seconds"]
    latencies = [r[1] for r in records]
    max_diff = max((abs(value - expected[i]) for i, _, value in records if expected[i] is not None), default=0.0)
    served_tokens = sum(tokens[i] for i, _, _ in records)
    server = {
        "requests": len(records),
        "errors": load["n_errors"],
        "error_samples": load["errors"],
        "seconds": seconds,
        "requests_per_s": len(records) / seconds,
        "pairs_per_s": len(records) / seconds,  # one pair per request
        "tokens_per_s": served_tokens / seconds,
        "latency_p50_ms": 1000 * percentile(latencies, 0.50),
        "latency_p99_ms": 1000 * percentile(latencies, 0.99),
        "latency_mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
        "batches": batches,
        "mean_batch_pairs": len(records) / batches if batches else float("nan"),
        "max_abs_diff_vs_direct": max_diff,
    }
    return {
        "verifier": repr(reward),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "mean_response_tokens": statistics.fmean(tokens),
        "direct": direct,
        "server": server,
        "fraction_of_direct": server["pairs_per_s"] / direct["pairs_per_s"],
        "goal_fraction": 0.8,
    }


def print_table(result: dict) -> None:
    s, d = result["server"], result["direct"]
    rows = [
        ("requests (errors)", f"{s['requests']} ({s['errors']})"),
        ("requests/s", f"{s['requests_per_s']:.1f}"),
        ("latency p50 / p99", f"{s['latency_p50_ms']:.1f} / {s['latency_p99_ms']:.1f} ms"),
        ("batches (mean pairs)", f"{s['batches']} ({s['mean_batch_pairs']:.1f})"),
        ("server pairs/s", f"{s['pairs_per_s']:.1f}"),
        ("server tokens/s", f"{s['tokens_per_s']:.0f}"),
        ("direct score() pairs/s", f"{d['pairs_per_s']:.1f}"),
        ("direct score() tokens/s", f"{d['tokens_per_s']:.0f}"),
        ("server / direct", f"{result['fraction_of_direct']:.2f} (goal >= {result['goal_fraction']})"),
        ("max |reward - direct|", f"{s['max_abs_diff_vs_direct']:.2e}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"serve_load: {result['verifier']}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    if args.out:
        write_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
