"""The replication report: Markdown tables, PNG curves and a candid reading, regenerated from a run's outputs alone.

    python -m experiments.report                       # outputs/replication -> outputs/replication/replication.md
    python -m experiments.report --run outputs/my-run --out my-run.md
    python -m experiments.report --out docs/replication.md   # the committed report: only when asked for

The report is written next to the run (`<run>/replication.md`) unless `--out` says otherwise. The PNGs are written next
to the Markdown file (`<name>_curves.png`, `<name>_lengths.png`) when matplotlib is installed (`pip install
matplotlib`, or the `experiments` extra: `pip install -e ".[experiments]"`); without it the report keeps the tables and
says how to get the curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from cme_reward.files.atomic import write_atomic

from .metrics import bootstrap_ci
from .settings import ARMS, DEFAULT_OUT, Settings

__all__ = ["load_run", "render", "write_report"]

logger = logging.getLogger(__name__)

PAPER = "52.5-71.4 %"  # the paper's tie-adjusted win rates, 0.5-1B generators, a 4B verifier
SIDE_BY_SIDE = 3  # held-out prompts shown with every arm's response
CLIP = 360  # characters of a response shown side by side
SMOOTH = 5  # steps in the running mean of the curves
NO_MATPLOTLIB = (
    "no PNG curves: matplotlib is not installed (`pip install matplotlib`, or the `experiments` extra: "
    '`pip install -e ".[experiments]"`), then rerun the report to add them'
)


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_run(run: str | Path) -> dict[str, Any]:
    """Everything a run wrote: settings, prompts, sessions, and per arm its train, eval and judge records."""
    run = Path(run)
    settings = _load(run / "settings.json")
    if settings is None:
        raise FileNotFoundError(f"{run}/settings.json not found: is {run} the --out of a replication run?")
    arms = {}
    for name in ARMS:
        record = {k: _load(run / path) for k, path in
                  (("train", f"arms/{name}/train.json"), ("eval", f"arms/{name}/eval.json"),
                   ("judge", f"judge/{name}.json"))}  # fmt: skip
        if any(record.values()):
            arms[name] = record
    return {"settings": settings, "prompts": _load(run / "prompts.json"), "runs": _load(run / "run.json"),
            "arms": arms}  # fmt: skip


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _is_default(settings: dict) -> bool:
    sizes = {k: v for k, v in vars(Settings()).items() if k not in ("policy", "verifier", "prompts")}
    return all(settings.get(k) == v for k, v in sizes.items())


def _params(count: int | None) -> str:
    if not count:
        return "?"
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M" if count >= 1e6 else f"{count:,}"


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _paired_cme(arm: dict, base: dict, seed: int) -> tuple[float | None, tuple[float, float] | None, int]:
    """Mean per-prompt difference of held-out CME (arm - a) and its bootstrap interval."""
    base_cme = {s["id"]: s["cme"] for s in base["samples"]}
    diffs = [s["cme"] - base_cme[s["id"]] for s in arm["samples"]
             if s["cme"] is not None and base_cme.get(s["id"]) is not None]  # fmt: skip
    return _mean(diffs), bootstrap_ci(diffs, seed=seed), len(diffs)


def _wall(runs: dict | None) -> float:
    return sum(s.get("end", s["start"]) - s["start"] for s in (runs or {}).get("sessions", []))


def _smooth(values: tuple[float, ...]) -> list[float]:
    """Trailing running mean over `SMOOTH` steps (fewer at the start)."""
    return [sum(values[max(0, i - SMOOTH + 1) : i + 1]) / (i + 1 - max(0, i - SMOOTH + 1)) for i in range(len(values))]


def _curves(data: dict, path: Path) -> list[str] | None:
    """Training curves and held-out length distributions as PNGs; returns the file names written (`None`: no
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("%s", NO_MATPLOTLIB)
        return None
    from io import BytesIO

    written = []
    trained = {k: v["train"] for k, v in data["arms"].items() if v.get("train")}
    if trained:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        panels = (("cme", "verifier CME of training samples"), ("train_reward", "each arm's own training reward"),
                  ("length", "mean completion length (tokens)"))  # fmt: skip
        for ax, (key, title) in zip(axes, panels):
            for arm, record in trained.items():
                points = [(s["step"], s[key]) for s in record["steps"] if s.get(key) is not None]
                if not points:
                    continue
                steps, values = zip(*points)
                line = ax.plot(steps, values, alpha=0.25, linewidth=1)[0]  # raw, faint
                ax.plot(steps, _smooth(values), color=line.get_color(), label=f"({arm}) {record['reward']}")
            ax.set_title(f"{title}\n(faint: per step; solid: mean of {SMOOTH} steps)", fontsize=10)
            ax.set_xlabel("GRPO step")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, path.with_name(f"{path.stem}_curves.png"), BytesIO))
        plt.close(fig)
    evaluated = {k: v["eval"] for k, v in data["arms"].items() if v.get("eval")}
    if evaluated:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.boxplot([[s["length"] for s in e["samples"]] for e in evaluated.values()],
                   tick_labels=[f"({k})" for k in evaluated])  # fmt: skip
        ax.set_ylabel("held-out response length (generator tokens)")
        ax.set_title("length distribution per arm")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        written.append(_save(fig, path.with_name(f"{path.stem}_lengths.png"), BytesIO))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path, buffer_class: Any) -> str:
    buffer = buffer_class()
    fig.savefig(buffer, format="png", dpi=90)
    write_atomic(path, buffer.getvalue())
    return path.name


def _quarter_trend(steps: list[dict], key: str) -> tuple[float | None, float | None]:
    values = [s[key] for s in steps if s.get(key) is not None]
    if len(values) < 4:
        return None, None
    q = max(len(values) // 4, 1)
    return _mean(values[:q]), _mean(values[-q:])


def render(data: dict, images: list[str] | None = None) -> str:
    """The report's Markdown from `load_run` output (no file access); `images=None`: matplotlib was missing."""
    st, arms, runs = data["settings"], data["arms"], data["runs"] or {}
    seed = int(st["seed"])
    evals = {k: v["eval"] for k, v in arms.items() if v.get("eval")}
    base = evals.get("a")
    sessions = runs.get("sessions", [])
    machine = sessions[-1] if sessions else {}
    prompts = data["prompts"] or {"train": [], "heldout": []}
    refs = sum(1 for r in prompts["heldout"] if r.get("reference"))
    lines = [
        "# Replication at CPU scale: CME as a GRPO reward",
        "",
        "Regenerated by `python -m experiments.report` from the outputs of `python -m experiments.replicate` "
        "(every number below comes from those files). Arms share seeds, steps and sampling budget.",
        "",
        "## Setup",
        "",
        f"- Generator (policy): `{st['policy']}`; verifier: `{st['verifier']}` (a different family), frozen.",
        f"- Prompts: {len(prompts['train'])} for training, {len(prompts['heldout'])} held out and never trained on "
        f"({refs} of them with a {'GPT-4 ' if st.get('prompts') is None else ''}reference answer)"
        + (
            " - MT-Bench first turns and the ShareGPT instructions shipped with it. Training prompts by category: "
            + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["category"] for r in prompts["train"]).items()))
            + " (the ShareGPT sample is mostly short questions about the assistant's identity)."
            if st.get("prompts") is None
            else f" - from `{Path(st['prompts']).name}`."
        ),
        f"- GRPO: {st['steps']} steps x {st['prompts_per_step']} prompts x {st['num_generations']} generations of at "
        f"most {st['max_completion_length']} tokens, temperature {st['temperature']}, learning rate "
        f"{st['learning_rate']}, KL beta {st['beta']}, TRL's default loss; empty completions score -50 (the "
        "authors' value). Arms other than (b) also log the verifier's CME of their samples (weight 0, never trained).",
        f"- Held-out: one sample per prompt, temperature {st['eval_temperature']}, top-p {st['eval_top_p']}, at most "
        f"{st['eval_max_new_tokens']} tokens, seed {seed}.",
        f"- Machine: {machine.get('cpus', '?')} CPUs, {machine.get('torch_threads', '?')} torch threads, "
        f"{'CUDA' if machine.get('cuda') else 'no GPU'}. Wall time of the whole run: {_wall(runs) / 60:.1f} min "
        f"over {len(sessions)} session(s).",
        "",
        "| arm | what |",
        "|---|---|",
        *[f"| ({k}) | {ARMS[k]} |" for k in arms],
        "",
        "## Held-out metrics",
        "",
        "CME: mean verifier log-likelihood per token of the response (higher: more likely under the verifier); "
        "Δ CME: mean paired difference from (a) over the same prompts, with a 95 % bootstrap interval. Lengths are "
        "generator tokens; `at max`: share cut at the limit; `ended`: share that stopped on their own. Distinct-n: "
        "distinct over all n-grams of the arm's responses; `rep. 3-gram`: share of 3-grams repeating an earlier one "
        "in the same response. `ref. LL`: the generator's own log-likelihood per token of the held-out GPT-4 "
        "reference answers (nobody trained on them).",
        "",
        "| arm | CME | Δ CME vs (a) [95 % CI] | length mean | median | p90 | at max | ended | distinct-1 | "
        "distinct-2 | rep. 3-gram | ref. LL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    deltas = {}
    for arm, ev in evals.items():
        m, length = ev["metrics"], ev["metrics"]["length"]
        delta = "-"
        if base is not None and arm != "a":
            d, ci, _ = _paired_cme(ev, base, seed)
            deltas[arm] = (d, ci)
            delta = f"{_f(d)} [{_f(ci[0])}, {_f(ci[1])}]" if ci else _f(d)
        lines.append(
            f"| ({arm}) | {_f(m['cme'])} | {delta} | {_f(length['mean'], 1)} | {_f(length['median'], 1)} | "
            f"{_f(length['p90'], 1)} | {_f(length.get('frac_at_max'), 2)} | {_f(m['ended'], 2)} | "
            f"{_f(m['distinct_1'])} | {_f(m['distinct_2'])} | {_f(m['repeated_3gram'])} | "
            f"{_f(m['reference_loglik'])} |"
        )
    lines += ["", "## Pairwise win rate against (a)", ""]
    judged = {k: v["judge"] for k, v in arms.items() if v.get("judge")}
    if judged:
        model = next(iter(judged.values()))["judge"]["model"]
        lines += [
            f"Judge: `{model}`, the paper's protocol: each pair in random A/B order, tie-adjusted win rate "
            "`(wins + 0.5 ties) / total`, 95 % bootstrap interval.",
            "",
            "| arm | win rate | 95 % CI | wins | ties | losses | no verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm, j in judged.items():
            ci = j["ci"] or [None, None]
            lines.append(f"| ({arm}) | {_f(j['win_rate'])} | [{_f(ci[0])}, {_f(ci[1])}] | {j['wins']} | "
                         f"{j['ties']} | {j['losses']} | {j['invalid']} |")  # fmt: skip
    else:
        lines.append(
            "No judge was configured for this run (`CME_JUDGE_URL` unset), so there are **no win rates**: only the "
            "proxies above. To judge it later: `CME_JUDGE_URL=http://host:port CME_JUDGE_MODEL=<served id> "
            "python -m experiments.judge`, then regenerate this report."
        )
    lines += ["", "## Training curves and compute", ""]
    for name in images or []:
        lines += [f"![{name}]({name})", ""]
    if images is None:
        lines += [f"({NO_MATPLOTLIB[0].upper()}{NO_MATPLOTLIB[1:]}.)", ""]
    elif not images:
        lines += ["(No PNG curves: nothing was trained.)", ""]
    lines += [
        "Verifier share: seconds inside the training reward's verifier over the seconds of the GRPO steps. "
        "`verifier tokens`: tokens run through the reward model's body (prompt once per group plus responses). "
        "The monitor (the verifier's CME of the samples of arms other than (b), for the curves) is counted apart.",
        "",
        "| arm | training reward | steps | train s | s/step | verifier s | verifier share | verifier tokens | "
        "monitor s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    step_times = []
    for arm, record in arms.items():
        tr, ev = record.get("train"), record.get("eval")
        if tr is None:
            lines.append(f"| ({arm}) | - | 0 | - | - | - | - | - | - | {_f(ev and ev['eval_seconds'], 0)} |")
            continue
        vsec = sum(s.get("verifier_seconds") or 0.0 for s in tr["steps"])
        per_step = tr["step_seconds"] / max(len(tr["steps"]), 1)
        step_times.append(per_step)
        lines.append(
            f"| ({arm}) | `{tr['reward']}` | {len(tr['steps'])} | {_f(tr['train_seconds'], 0)} | {_f(per_step, 1)} | "
            f"{_f(vsec, 0)} | {_f(vsec / tr['step_seconds'] if tr['step_seconds'] else None, 2)} | "
            f"{tr['reward_stats'].get('tokens_forward', 0):,} | {_f(tr['monitor_seconds'], 0)} | "
            f"{_f(ev and ev['eval_seconds'], 0)} |"
        )
    trains = [v["train"] for v in arms.values() if v.get("train")]
    verifier_load = sum(s.get("verifier_load_seconds", 0.0) for s in sessions)
    policy_load = sum(t["policy_load_seconds"] for t in trains) + sum(
        e.get("load_seconds", 0.0) for e in evals.values()
    )
    training = sum(t["train_seconds"] for t in trains)
    evaluation = sum(e["eval_seconds"] for e in evals.values())
    other = _wall(runs) - verifier_load - policy_load - training - evaluation
    lines += [
        "",
        "### Where the time went, and how the defaults were sized",
        "",
        f"Wall time {_wall(runs) / 60:.1f} min: training {training / 60:.1f} min, held-out evaluation "
        f"{evaluation / 60:.1f} min ({_f(_mean([e['eval_seconds'] for e in evals.values()]), 0)} s per arm, of "
        f"which sampling {_f(_mean([e['generate_seconds'] for e in evals.values()]), 0)} s), loading the verifier "
        f"{verifier_load / 60:.1f} min, loading generators {policy_load / 60:.1f} min, the rest (imports, trainer "
        f"set-up, saving weights for resumption, the self-likelihood arm's frozen copy) {max(other, 0) / 60:.1f} min. "
        f"A GRPO step took {_f(_mean(step_times), 1)} s on average.",
    ]
    if not _is_default(st):
        lines += ["", "This run does not use the default sizes; the reasoning behind those follows."]
    lines += [
        "",
        "The default sizes were set for about 60 minutes on 2 CPU cores for arms (a)-(d), the arms one after "
        "another (the default arms (a)-(d), (f), (g) take about 100 minutes): "
        "`total = loads + arms x (steps x s/step + evaluation)`. A step samples `prompts_per_step x num_generations` "
        "completions, scores them with the verifier and runs a forward and backward pass of the generator over "
        "prompts and completions; on a CPU the backward pass and the token-by-token sampling dominate, and both grow "
        "with `max_completion_length` and the number of completions. A 3-step probe with the default models "
        "measured about 20-28 s per step of 8 completions of at most 64 tokens (with TRL's gradient checkpointing, "
        "which the run turns off), about 60 s to sample the 40 held-out answers, about 50 s to load the verifier "
        "and 20-30 s per generator load. Groups of 4 are the smallest that give GRPO a usable spread within a "
        "group, 2 prompts per step keep a step near 20 s, 64 tokens hold the first sentences of an answer, and "
        "40 held-out prompts are every MT-Bench question with a GPT-4 reference (30) plus 10 taken in turn from the "
        "other categories. That leaves room for 40 steps per trained arm: 3 x 40 x ~20 s = 40 min, plus 4 "
        "evaluations (~6 min) and the loads (~3 min); (f) and (g) add a KL reference model's forward pass to each "
        "step. Step times vary with other work on the machine, and so does the time of an arm evaluated while other "
        "work ran.",
    ]
    if base is not None and len(evals) > 1:
        lines += ["", "## Side by side (held-out)", ""]
        question = {r["id"]: r["prompt"] for r in prompts["heldout"]}
        by_arm = {k: {s["id"]: s for s in e["samples"]} for k, e in evals.items()}
        reference = {r["id"] for r in prompts["heldout"] if r.get("reference")}
        ids = sorted((s["id"] for s in base["samples"]), key=lambda i: i in reference)  # open-ended ones first
        for pid in ids[:SIDE_BY_SIDE]:
            text = " ".join(question.get(pid, pid).split())
            lines += [f"> {text if len(text) <= CLIP else text[:CLIP] + ' [...]'}", ""]
            for arm, samples in by_arm.items():
                s = samples.get(pid)
                if s is not None:
                    text = s["response"].strip().replace("\n", " ")
                    text = text if len(text) <= CLIP else text[:CLIP] + " [...]"
                    lines.append(f"- ({arm}) CME {_f(s['cme'], 2)}, {s['length']} tokens: {text or '(empty)'}")
            lines.append("")
    lines += ["## Reading", ""] + _reading(st, arms, evals, deltas, judged)
    return "\n".join(lines).rstrip() + "\n"


def _degeneration(m: dict, bm: dict) -> str:
    """Descriptive collapse flags against (a): repetition up by half, distinct-2 down by 0.05, length down 10 %."""
    signs = []
    if (m["repeated_3gram"] or 0) > 1.5 * (bm["repeated_3gram"] or 0) + 0.01:
        signs.append(f"repeated 3-grams {_f(bm['repeated_3gram'])} -> {_f(m['repeated_3gram'])}")
    if (bm["distinct_2"] or 0) - (m["distinct_2"] or 0) > 0.05:
        signs.append(f"distinct-2 {_f(bm['distinct_2'])} -> {_f(m['distinct_2'])}")
    if m["length"]["mean"] is not None and m["length"]["mean"] < 0.9 * (bm["length"]["mean"] or 0):
        signs.append(f"mean length {_f(bm['length']['mean'], 1)} -> {_f(m['length']['mean'], 1)}")
    if not signs:
        return "No sign of collapse in length, diversity or repetition."
    return "Signs of degeneration: " + "; ".join(signs) + "."


def _self_reinforcement(evals: dict, bm: dict, deltas: dict) -> list[str]:
    """One sentence on the paper's claim that self-referential rewards collapse where a cross-model one does not."""
    if "d" not in evals or not {"b", "c", "f", "g"} & set(evals):
        return []
    flagged = {arm for arm in evals if arm != "a" and _degeneration(evals[arm]["metrics"], bm).startswith("Signs")}
    cross = sorted(flagged & {"b", "c", "e", "f", "g"})
    names = ", ".join(f"({a})" for a in cross)
    if "d" in flagged and not cross:
        text = ("only the self-likelihood control (d) shows signs of degeneration, as the paper's claim predicts; "
                "at this budget that is a hint, not a test")  # fmt: skip
    elif "d" in flagged:
        text = f"both the self-likelihood control (d) and {names} show signs of degeneration"
    elif cross:
        text = (f"signs of degeneration appear in {names} and not in the self-likelihood control (d): at this budget "
                "the run does not reproduce the claim that a self-referential reward collapses first")  # fmt: skip
        moved_most = max(deltas, key=lambda a: abs(deltas[a][0] or 0.0), default=None)
        if moved_most in cross:
            text += (f"; ({moved_most}) also moved held-out CME the most, so the difference may reflect how far each "
                     "arm moved rather than which model scores")  # fmt: skip
    else:
        text = "no arm shows signs of degeneration, so the claim is not tested at this budget"
    return ["", f"Self-reinforcement check: {text}."]


def _dense_repetition(evals: dict, bm: dict) -> list[str]:
    """Repetition and diversity of the dense arms side by side: KL 0 (c), the authors' settings (f), + guard (g)."""
    dense = [arm for arm in ("c", "f", "g") if arm in evals]
    if len(dense) < 2:
        return []
    what = {"c": "dense CME, KL 0", "f": "the authors' settings (KL 0.01, population std)", "g": "+ the guard"}
    parts = "; ".join(f"({a}) {what[a]}: {_f(evals[a]['metrics']['repeated_3gram'])} and "
                      f"{_f(evals[a]['metrics']['distinct_2'])}" for a in dense)  # fmt: skip
    text = (f"Dense CME, repeated 3-grams and distinct-2 side by side (untrained (a): {_f(bm['repeated_3gram'])} and "
            f"{_f(bm['distinct_2'])}): {parts}.")  # fmt: skip
    if "f" in evals and "g" in evals:
        rf, rg = evals["f"]["metrics"]["repeated_3gram"] or 0.0, evals["g"]["metrics"]["repeated_3gram"] or 0.0
        if rg < rf - 0.01:
            text += f" The guard lowered held-out repetition by {rf - rg:.3f}."
        else:
            text += (" The guard did not lower held-out repetition at this budget: it floors the training reward of "
                     "6-gram repeats and prompt copies, but the verifier still pays for the first, fluent occurrence "
                     "of a stock phrase, and one held-out sample per prompt is a noisy measure of a difference this "
                     "small.")  # fmt: skip
    return ["", text]


def _reading(st: dict, arms: dict, evals: dict, deltas: dict, judged: dict) -> list[str]:
    """The candid reading, worded from the numbers."""
    out = []
    base = evals.get("a")
    if base is None:
        return ["The untrained arm (a) has not been evaluated yet, so nothing can be compared."]
    bm = base["metrics"]
    for arm, (d, ci) in deltas.items():
        m, tr = evals[arm]["metrics"], (arms[arm].get("train") or {})
        sure = ci is not None and (ci[0] > 0 or ci[1] < 0)
        first, last = _quarter_trend(tr.get("steps", []), "train_reward")
        trend = (f"its training reward went from {_f(first)} (first quarter of steps) to {_f(last)} (last quarter)"
                 if first is not None else "too few steps for a reward trend")  # fmt: skip
        cme_first, cme_last = _quarter_trend(tr.get("steps", []), "cme")
        if arm != "b" and cme_first is not None:
            trend += f", and the verifier's CME of its samples from {_f(cme_first)} to {_f(cme_last)}"
        length_change = (m["length"]["mean"] - bm["length"]["mean"]) if m["length"]["mean"] is not None else None
        shift = "-" if length_change is None else f"{length_change:+.1f}"
        verdict = "its interval excludes 0" if sure else "its interval includes 0: indistinguishable from noise"
        out.append(
            f"- ({arm}) {ARMS_SHORT.get(arm, arm)}: {trend}. Held-out CME moved by {_f(d)} "
            f"({verdict}); mean length {shift} tokens against (a), distinct-2 "
            f"{_f(m['distinct_2'])} against {_f(bm['distinct_2'])}, repeated 3-grams {_f(m['repeated_3gram'])} "
            f"against {_f(bm['repeated_3gram'])}, reference log-likelihood {_f(m['reference_loglik'])} against "
            f"{_f(bm['reference_loglik'])}. {_degeneration(m, bm)}"
        )
    moved = [arm for arm, (_, ci) in deltas.items() if ci is not None and (ci[0] > 0 or ci[1] < 0)]
    ref_shift = max((abs((evals[a]["metrics"]["reference_loglik"] or 0.0) - (bm["reference_loglik"] or 0.0))
                     for a in deltas), default=0.0)  # fmt: skip
    if deltas and not moved and ref_shift < 0.01:
        out += [
            "",
            f"In short: no arm moved held-out CME beyond sampling noise, and the reference log-likelihood moved by "
            f"at most {ref_shift:.1e} nats per token. {st['steps']} steps at learning rate {st['learning_rate']} "
            "change the generator too little to test either claim; this is a statement about the budget, not about "
            "CME. More steps or a larger learning rate (both options of the script) are the next thing to try.",
        ]
    elif moved:
        out += ["", f"Arms whose held-out CME interval excludes 0: {', '.join(f'({a})' for a in moved)}."]
    out += _self_reinforcement(evals, bm, deltas)
    out += _dense_repetition(evals, bm)
    out += [
        "",
        "What these numbers can show: whether a few GRPO steps on each reward move the generator's held-out "
        "behaviour in a measurable direction, and whether any arm starts to collapse (shorter, more repetitive, "
        "less diverse responses, or responses cut at the limit). CME under the verifier is the training target of "
        "(b) and (c), so a rise there is expected and is not by itself evidence of better answers; the reference "
        "log-likelihood is the one proxy that no arm optimises, and diversity, repetition and length are the "
        "collapse checks. The self-likelihood control (d) shows what the same procedure does when the model scores "
        "itself.",
        "",
        f"What they cannot show: answer quality. The generator has {_params(base.get('parameters'))} parameters "
        f"and the verifier {_params(base.get('verifier_parameters'))} (the paper: 0.5-1B generators, a 4B "
        f"verifier); training runs {st['steps']} steps on {st['prompts_per_step'] * st['num_generations']} "
        "completions each (the authors' configurations: 8 generations per prompt, learning rate 3e-6, KL weight "
        f"0.01), and the held-out set has {len(base['samples'])} prompts with one sample each, so the intervals are "
        f"wide and small effects are invisible. Responses are capped at {st['eval_max_new_tokens']} tokens, short of "
        f"a full answer{', and most of them reach the cap' if (bm['length'].get('frac_at_max') or 0) > 0.5 else ''}.",
        "",
    ]
    if judged:
        rates = ", ".join(f"({k}) {_f(100 * j['win_rate'], 1) if j['win_rate'] is not None else '-'} %"
                          for k, j in judged.items())  # fmt: skip
        out.append(
            f"Against the paper: its tie-adjusted win rates over the untrained generator are {PAPER} at 0.5-1B "
            f"generators with a 4B verifier; here, at this scale: {rates}. A 50 % rate means no difference."
        )
    else:
        out.append(
            f"Against the paper: its evidence is pairwise win rates of {PAPER} over the untrained generator "
            "(0.5-1B generators, a 4B verifier, a strong LLM judge). No judge was configured here, so this run "
            "offers no comparable number; only the proxies above. Point the "
            "harness at a bigger generator, a bigger verifier and a judge (`CME_JUDGE_URL`) to test that claim; "
            "`python -m experiments.replicate --help` shows a GPU configuration."
        )
    return out


ARMS_SHORT = {"b": "scalar CME", "c": "dense CME", "d": "self-likelihood", "e": "verifier entropy",
              "f": "dense CME, the authors' settings", "g": "dense CME, the authors' settings + guard"}  # fmt: skip


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the Markdown report of `run` to `out` (`None`: `<run>/replication.md`) and its PNGs next to it; returns
    the report's path."""
    out = Path(run) / "replication.md" if out is None else Path(out)
    data = load_run(run)
    images = _curves(data, out)
    write_atomic(out, render(data, images))
    logger.info("report written to %s", os.fspath(out))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=DEFAULT_OUT, help="output directory of a replication run (%(default)s)")
    parser.add_argument(
        "--out",
        help="the Markdown report (default: <run>/replication.md; the committed docs/replication.md only when named)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    write_report(args.run, args.out)


if __name__ == "__main__":
    main()
