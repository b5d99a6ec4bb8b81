"""Smoke tests of the benchmarks package: `python -m benchmarks.scoring --quick` on a tiny preset (the JSON, the chart
and the score agreement of every method, never timings), the other entry points' `--help`, reading result files in
the older schema, and a scan of benchmarks/ for path hacks and words that do not belong in the tree."""

from __future__ import annotations

import importlib.util
import json
import re
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


@pytest.mark.slow  # each starts a Python with torch and transformers: ~2-5 s
@pytest.mark.parametrize("module", ["inference_cost", "targets", "scoring", "profile_engine", "bf16_real_check"])
def test_entry_point_help(module):
    proc = run_module(module, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"python -m benchmarks.{module}" in proc.stdout


@pytest.mark.slow
def test_scoring_rejects_a_bad_method():
    proc = run_module("scoring", "--methods", "a,z", timeout=120)
    assert proc.returncode == 2
    assert "bad method 'z'" in proc.stderr


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
