"""Smoke test of benchmarks/bench_scoring.py in --quick mode on a tiny preset. Checks the JSON, never timings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(BENCH))
    try:
        import bench_scoring
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    bench_scoring.main(["--quick", "--preset", "tiny", "--device", "cpu", "--methods", "a,b,c,d,e,d:bfloat16",
                        "--no-chart", "--out", str(out)])  # fmt: skip
    return json.loads(out.read_text())


def test_json_has_every_method(report):
    results, skipped = report["results"], report["skipped"]
    for name in ("a", "b", "c", "d", "d:bfloat16"):
        assert name in results or name in skipped, name
    assert set(results) >= {"a", "c", "d", "d:bfloat16"}
    assert report["reference"] == "a"
    for key in ("cpu", "torch_threads", "torch"):
        assert report["machine"][key]
    assert report["matmul_peak"]["float32"]["flops_per_s"] > 0


def test_numbers_are_recorded(report):
    for r in report["results"].values():
        for key in ("scored_tokens_per_s", "total_tokens_per_s", "speedup_vs_a", "peak_mem_mib", "useful_flops_per_s",
                    "frac_fp32_matmul_peak", "frac_bf16_matmul_peak", "max_abs_score_diff"):  # fmt: skip
            assert r[key] is not None, key
        assert r["scored_tokens_per_s"] > 0


def test_scores_match_the_naive_loop(report):
    results = report["results"]
    for name in ("b", "c", "d", "e"):
        if name in results:
            assert results[name]["max_abs_score_diff"] <= 1e-4, name
    assert results["d:bfloat16"]["max_abs_score_diff"] <= 0.1  # bf16 weights: only loosely equal
