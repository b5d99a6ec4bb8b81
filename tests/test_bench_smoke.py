"""Smoke tests of the benchmarks package: `python -m benchmarks.scoring --quick` on a tiny preset (the JSON, the chart
and the score agreement of every method, never timings), method (v) against a fake vLLM server serving a saved tiny
model that `--model-dir` loads in process, `serve_load` and `paper_method` on tiny settings, every entry point
starting (`--help`) and accepting the commands benchmarks/README.md gives, reading result files in the older schema,
and a scan of benchmarks/ for path hacks and words that do not belong in the tree."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
METHODS = "a,b,c,d,e,g,d:bfloat16"


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m benchmarks.<module> ARGS` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    proc = run_module("scoring", "--quick", "--preset", "tiny", "--device", "cpu", "--methods", METHODS,
                      "--retries", "0", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), out


@pytest.mark.slow
def test_quick_run_writes_json_and_chart(quick):
    report, out = quick
    results, skipped = report["results"], report["skipped"]
    for name in METHODS.split(","):
        assert name in results or name in skipped, name
    assert set(results) >= {"a", "c", "d", "e", "g", "d:bfloat16"}  # only lm-eval (b) may be missing
    assert report["reference"] == "a"
    for key in ("cpu", "torch_threads", "torch"):
        assert report["machine"][key]
    assert report["args"]["out"] == out.name  # outside the working directory: no machine path recorded
    png = out.with_suffix(".png")
    if importlib.util.find_spec("matplotlib"):
        assert report["chart"] == png.name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert report["chart"] is None and not png.exists()
    assert not list(out.parent.glob(".*.tmp"))  # atomic writes leave no temporary file behind


@pytest.mark.slow
def test_every_method_matches_the_naive_loop(quick):
    results = quick[0]["results"]
    for name, r in results.items():
        bound = 0.1 if r["dtype"] == "bfloat16" else 1e-4  # bf16 weights are only loosely equal to fp32 ones
        assert r["max_abs_score_diff"] <= bound, name
        if name != "b" and r["dtype"] == "float32":  # lm-eval returns sums only; the others per-token log-probs
            assert r["max_abs_token_diff"] <= 1e-4, name
    assert results["a"]["max_abs_score_diff"] == 0.0


@pytest.mark.slow
def test_each_run_is_measured_against_its_own_dtype_peak(quick):
    report = quick[0]
    peaks = report["matmul_peak"]
    assert peaks["float32"]["flops_per_s"] > 0 and peaks["bfloat16"]["flops_per_s"] > 0
    for name, r in report["results"].items():
        peak = peaks[r["dtype"]]["flops_per_s"]
        assert r["matmul_peak_flops_per_s"] == peak, name
        assert r["frac_matmul_peak"] == pytest.approx(r["useful_flops_per_s"] / peak), name
        for key in ("scored_tokens_per_s", "total_tokens_per_s", "speedup_vs_a", "peak_mem_mib"):
            assert r[key] is not None, (name, key)
    for name in ("c", "d", "e", "g", "d:bfloat16"):
        stats = report["results"][name]["engine_stats"]
        assert stats["passes"] > 0 and stats["tokens_forward"] > 0, name
    assert report["results"]["e"]["engine_stats"]["head_vocab_block"] == 0
    assert (
        report["results"]["c"]["engine_stats"]["tokens_forward"]
        > report["results"]["d"]["engine_stats"]["tokens_forward"]
    )  # without prefix sharing every pair runs its own context


@pytest.mark.slow
def test_inference_cost_reads_older_result_files(quick, tmp_path):
    """A result file of the older schema (both peak fractions, no `frac_matmul_peak`): each row shows the fraction
    of its own dtype's peak."""
    report = json.loads(json.dumps(quick[0]))
    peaks = report["matmul_peak"]
    for r in report["results"].values():
        del r["frac_matmul_peak"], r["matmul_peak_flops_per_s"]
        r["frac_fp32_matmul_peak"] = r["useful_flops_per_s"] / peaks["float32"]["flops_per_s"]
        r["frac_bf16_matmul_peak"] = r["useful_flops_per_s"] / peaks["bfloat16"]["flops_per_s"]
    report["args"]["quick"] = False  # quick runs are left out of the section
    (tmp_path / "old.json").write_text(json.dumps(report))
    out = tmp_path / "cost.md"
    proc = run_module("inference_cost", "--results", str(tmp_path), "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| (d) cme full")]
    assert len(rows) == 2
    for row in rows:
        dtype = row.split("|")[2].strip()
        r = report["results"]["d" if dtype == "float32" else "d:bfloat16"]
        own = r["frac_fp32_matmul_peak" if dtype == "float32" else "frac_bf16_matmul_peak"]
        assert f"({100 * own:.0f} %)" in row, row


ENTRY_POINTS = ["bf16_real_check", "inference_cost", "paper_method", "profile_engine", "scoring", "serve_load",
                "targets"]  # fmt: skip


@pytest.mark.slow  # each starts a Python with torch and transformers: ~2-5 s
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_point_starts(module):
    proc = run_module(module, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip()


def documented_commands() -> list[tuple[str, list[str]]]:
    """`(module, args)` of every `python -m benchmarks.<module> ...` line of the README's shell blocks (continuation
    lines joined, comments dropped, shell substitutions such as `$(nproc)` given the value 2)."""
    text = (BENCH / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = [re.sub(r"^\$\(.*\)$|^\$\w+$", "2", w) for w in shlex.split(line, comments=True)]
        for i in range(len(words) - 2):
            if words[i : i + 2] == ["python", "-m"] and words[i + 2].startswith("benchmarks."):
                commands.append((words[i + 2].removeprefix("benchmarks."), words[i + 3 :]))
    return commands


def test_documented_commands_parse():
    """Every entry point is documented, and its parser accepts every command the README gives for it."""
    commands = documented_commands()
    assert {module for module, _ in commands} == set(ENTRY_POINTS)
    for module, args in commands:
        parser = importlib.import_module(f"benchmarks.{module}").build_parser()
        try:
            parser.parse_args(args)
        except SystemExit as err:
            raise AssertionError(f"python -m benchmarks.{module} {shlex.join(args)}: exit {err.code}") from None


@pytest.mark.slow
def test_scoring_rejects_a_bad_method():
    proc = run_module("scoring", "--methods", "a,z", timeout=120)
    assert proc.returncode == 2
    assert "bad method 'z'" in proc.stderr


@pytest.mark.slow
def test_scoring_vllm_method_on_the_same_weights(qwen_dir, tmp_path):
    """Method (v) against a fake vLLM server serving a saved model that `--model-dir` also loads in process: scored
    like the others, and its per-pair means within 1e-4 of the naive loop's."""
    from fake_vllm import FakeVLLMServer

    out = tmp_path / "v.json"
    with FakeVLLMServer(qwen_dir) as server:
        proc = run_module("scoring", "--quick", "--model-dir", str(qwen_dir), "--vllm-url", server.url, "--methods",
                          "a,d,v", "--device", "cpu", "--threads", "1", "--retries", "0", "--no-chart",
                          "--out", str(out))  # fmt: skip
        scored = sum(len(r["body"]["prompt"]) for r in server.requests if r["path"] == "/v1/completions")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["preset"] == qwen_dir.name and report["config"]["vocab_size"] == 400
    assert report["args"]["model_dir"] == qwen_dir.name  # no machine path recorded
    v = report["results"]["v"]
    assert v["remote"] and v["peak_mem_mib"] is None and v["score_tolerance"] == 1e-4
    assert v["max_abs_score_diff"] <= 1e-4 and v["max_abs_token_diff"] <= 1e-4
    assert v["engine_stats"]["pairs"] == report["workload"]["pairs"]
    assert scored == report["workload"]["group_size"] + report["workload"]["pairs"]  # the warm-up group, one run
    assert report["score_mismatches"] == {} and not report["skipped"]


def test_scoring_skips_vllm_without_a_server(tmp_path):
    from benchmarks.scoring import parse_args

    args = parse_args(["--quick", "--preset", "tiny", "--out", str(tmp_path / "x.json")])
    assert ("v", "float32") in args.method_specs and args.vllm_url is None
    from benchmarks.lib.methods import FACTORIES

    assert "--vllm-url" in FACTORIES["v"](None, budget=8)  # a note saying what is missing, not a method
    with pytest.raises(SystemExit):
        parse_args(["--vllm-url", "http://127.0.0.1:1", "--methods", "a,d"])  # a server nothing would use


def test_serve_load_tiny(qwen_dir, tmp_path):
    """Both traffic shapes through the real server on loopback: every reward equal to in-process scoring, and the
    report's numbers present (not their values)."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from benchmarks import serve_load

    out = tmp_path / "serve.json"
    report = serve_load.main(["--verifier", str(qwen_dir), "--clients", "4", "--seconds", "0.5", "--pairs", "8",
                              "--prompt-words", "4", "--response-words", "6", "--group-size", "1", "4",
                              "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["verifier"] == qwen_dir.name and report["config"]["out"] == out.name
    for run, g in zip(report["scenarios"], (1, 4)):
        s = run["server"]
        assert run["group_size"] == g and run["prompts"] == 8 // g and run["pairs"] == 8
        assert s["requests"] > 0 and s["errors"] == 0 and s["max_abs_diff_vs_direct"] <= 1e-4
        assert s["batches"] >= 1 and s["mean_batch_pairs"] >= 1 and s["pairs_scored"] >= s["requests"]
        for key in ("requests_per_s", "pairs_per_s", "latency_p50_ms", "tokens_forward_per_pair"):
            assert s[key] > 0, key
        assert run["fraction_of_direct"] > 0 and run["direct"]["pairs_per_s"] > 0


def test_serve_load_request_order_interleaves_whole_groups():
    from benchmarks.serve_load import make_pairs, request_order

    prompts, responses = make_pairs(16, 5, 5, group_size=4, seed=1)
    assert len(set(prompts)) == 4 and len(set(responses)) == 16
    assert prompts[0:4] == [prompts[0]] * 4
    order = request_order(16, window=8, seed=1)
    assert sorted(order) == list(range(16)) and sorted(order[:8]) == list(range(8))
    assert order[:8] != sorted(order[:8])  # interleaved within the window


def test_paper_method_quick(qwen_dir, tmp_path):
    from benchmarks import paper_method

    out = tmp_path / "paper.json"
    report = paper_method.main(["--quick", "--verifier", str(qwen_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["quick"]
    entropy = report["entropy_vs_logprob"]
    assert entropy["preset"] == "tiny" and entropy["ratio"] > 0
    dense = report["dense_vs_scalar"]
    if isinstance(dense, str):  # MT-Bench's registry package is not installed
        assert dense.startswith("skipped")
    else:
        assert dense["pairs"] == 2 and dense["ratio"] > 0 and dense["verifier"] == qwen_dir.name


FORBIDDEN = {
    "sys.path edit": re.compile(r"sys\.path"),
    "build-machine path": re.compile(r"/work/"),
    "process word": re.compile(r"\b(issues?|tickets?|helpers?)\b", re.IGNORECASE),
}


def test_benchmarks_tree_is_clean():
    """No `sys.path` edits (entry points run as `python -m benchmarks.<name>`), no paths of the machine that wrote
    a file, no words about how the work was organised."""
    found = []
    for path in sorted(BENCH.rglob("*")):
        if not path.is_file() or path.suffix not in {".py", ".md", ".sh", ".json", ".txt", ".toml", ".cfg"}:
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{lineno}: {what}: {line.strip()[:100]}"
                      for what, pattern in FORBIDDEN.items() if pattern.search(line)]  # fmt: skip
    assert not found, "\n".join(found)
