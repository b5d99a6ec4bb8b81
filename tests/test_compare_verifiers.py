"""`cme-reward compare-verifiers` end to end with two tiny verifiers: every reported statistic equals a naive
computation from `CrossModelEntropyReward.score` on the same rows, a killed run resumes without reloading or
rescoring a finished verifier, and bad input exits 2 with one line."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest
import torch
from conftest import write_jsonl

from cme_reward import CrossModelEntropyReward
from cme_reward.cli.main import main
from cme_reward.selection import compare_verifiers, load_comparison_data
from cme_reward.selection.memory import PeakMemory
from cme_reward.selection.stats import auroc_interval, paired_difference, paired_pairwise_difference, pairwise_interval

RESAMPLES = 300


def labelled_rows() -> list[dict]:
    rows = []
    for i in range(14):
        good = i % 2 == 0
        response = f"The answer is {2 * i}." if good else "fox the the dog dog lazy " * (1 + i % 3)
        rows.append({"id": i, "prompt": f"What is {i} + {i}?", "response": response, "label": int(good)})
    rows[3]["response"] = ""  # unscorable: no token to score
    rows[4]["label"], rows[6]["label"] = True, False  # booleans are labels too
    return rows


def pair_rows() -> list[dict]:
    rows = []
    for i in range(8):
        answer = f"Paris is the capital of France, {i}."
        chosen = [{"role": "user", "content": f"Capital {i}?"}, {"role": "assistant", "content": answer}]
        rows.append({"prompt": f"Capital {i}?", "chosen": chosen if i % 2 else answer, "rejected": "dog " * (i + 1)})
    return rows


def naive_auroc(scores: list[float], labels: list[bool]) -> float:
    good = [s for s, y in zip(scores, labels) if y]
    bad = [s for s, y in zip(scores, labels) if not y]
    return sum(1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad) / (len(good) * len(bad))


def direct(path, prompts, responses) -> list[float | None]:
    return CrossModelEntropyReward(path, device="cpu", show_progress_bar=False).score(prompts, responses)


def run(tmp_path, verifiers, data, *extra) -> int:
    names = ",".join(str(v) for v in verifiers)
    return main(["compare-verifiers", "--verifiers", names, "--input", str(data), "--output",
                 str(tmp_path / "report.json"), "--device", "cpu", "--resamples", str(RESAMPLES), "--no-progress",
                 *extra])  # fmt: skip


@pytest.fixture
def count_loads(monkeypatch):
    """Counts verifier loads (by source) and scored responses; `fail` makes a load or a score call raise Ctrl-C."""
    counts = {"loads": [], "scored": 0, "fail_load": None, "fail_score_after": None}
    init, score = CrossModelEntropyReward.__init__, CrossModelEntropyReward.score

    def counting_init(self, verifier, **kwargs):
        source = str(getattr(verifier, "source", verifier))
        counts["loads"].append(source)
        if counts["fail_load"] == source:
            raise KeyboardInterrupt
        init(self, verifier, **kwargs)

    def counting_score(self, prompts, responses, **kwargs):
        if counts["fail_score_after"] is not None and counts["scored"] >= counts["fail_score_after"]:
            raise KeyboardInterrupt
        counts["scored"] += len(responses)
        return score(self, prompts, responses, **kwargs)

    monkeypatch.setattr(CrossModelEntropyReward, "__init__", counting_init)
    monkeypatch.setattr(CrossModelEntropyReward, "score", counting_score)
    return counts


def test_labelled_report_equals_naive_computation(tmp_path, qwen_dir, llama_dir, capsys):
    rows = labelled_rows()
    data = write_jsonl(tmp_path / "labelled.jsonl", rows)
    assert run(tmp_path, [qwen_dir, llama_dir], data) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    labels = [bool(r["label"]) for r in rows]
    naive = {}
    for verifier, got in zip((qwen_dir, llama_dir), report["verifiers"], strict=True):
        scores = direct(verifier, [r["prompt"] for r in rows], [r["response"] for r in rows])
        naive[got["name"]] = scores
        assert got["scores"] == pytest.approx(scores, abs=1e-5) and scores[3] is None
        keep = [i for i, s in enumerate(scores) if s is not None]
        xs, ys = [scores[i] for i in keep], [labels[i] for i in keep]
        good, bad = [x for x, y in zip(xs, ys) if y], [x for x, y in zip(xs, ys) if not y]
        assert (got["scored"], got["unscorable"], got["used"]) == (13, 1, 13)
        assert got["value"]["estimate"] == pytest.approx(naive_auroc(xs, ys), abs=1e-12)
        interval = auroc_interval(xs, ys, n_resamples=RESAMPLES, seed=0)
        assert (got["value"]["low"], got["value"]["high"]) == (
            pytest.approx(interval.low),
            pytest.approx(interval.high),
        )
        classes = got["classes"]
        assert (classes["n_good"], classes["n_bad"]) == (len(good), len(bad))
        assert classes["mean_good"] == pytest.approx(sum(good) / len(good), abs=1e-6)
        assert classes["mean_bad"] == pytest.approx(sum(bad) / len(bad), abs=1e-6)
        assert classes["gap"] == pytest.approx(sum(good) / len(good) - sum(bad) / len(bad), abs=1e-6)
        assert got["cost"]["tokens"] > 0 and got["cost"]["tokens_per_second"] > 0
    (diff,) = report["differences"]
    a, b = naive[str(qwen_dir)], naive[str(llama_dir)]
    keep = [i for i in range(len(rows)) if a[i] is not None]
    expected = paired_difference([a[i] for i in keep], [b[i] for i in keep], [labels[i] for i in keep],
                                 n_resamples=RESAMPLES, seed=0)  # fmt: skip
    assert diff["value"]["estimate"] == pytest.approx(expected.estimate, abs=1e-12)
    assert diff["value"]["p_value"] == pytest.approx(expected.p_value) and diff["rows"] == 13
    out = capsys.readouterr().out
    assert "1 of 14 responses have no score" in out and "report.md" in out and "report.svg" in out
    markdown = (tmp_path / "report.md").read_text()
    assert f"| {qwen_dir} | {report['verifiers'][0]['value']['estimate']:.3f} [" in markdown
    svg = ET.fromstring((tmp_path / "report.svg").read_text())
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}polyline"))) == 2


def test_preference_pairs_report_equals_naive_computation(tmp_path, qwen_dir, llama_dir):
    rows = pair_rows()
    rows[2]["rejected"] = ""  # an unscorable pair
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert run(tmp_path, [qwen_dir, llama_dir], data) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["input"]["kind"] == "pairs" and report["metric"] == "pairwise accuracy"
    text = lambda v: v if isinstance(v, str) else v[-1]["content"]  # noqa: E731
    prompts = [r["prompt"] for r in rows]
    margins = {}
    for verifier, got in zip((qwen_dir, llama_dir), report["verifiers"], strict=True):
        chosen = direct(verifier, prompts, [text(r["chosen"]) for r in rows])
        rejected = direct(verifier, prompts, [text(r["rejected"]) for r in rows])
        keep = [k for k in range(len(rows)) if chosen[k] is not None and rejected[k] is not None]
        assert keep == [0, 1, 3, 4, 5, 6, 7] and got["used"] == 7 and got["unscorable"] == 1
        c, r = [chosen[k] for k in keep], [rejected[k] for k in keep]
        accuracy = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(c, r)) / len(keep)
        assert got["value"]["estimate"] == pytest.approx(accuracy, abs=1e-12)
        interval = pairwise_interval(c, r, n_resamples=RESAMPLES, seed=0)
        assert (got["value"]["low"], got["value"]["high"]) == (
            pytest.approx(interval.low),
            pytest.approx(interval.high),
        )
        assert got["classes"]["mean_good"] == pytest.approx(sum(c) / len(c), abs=1e-6)
        assert got["classes"]["gap"] == pytest.approx(sum(c) / len(c) - sum(r) / len(r), abs=1e-6)
        margins[verifier] = (c, r)
    expected = paired_pairwise_difference(*margins[qwen_dir], *margins[llama_dir], n_resamples=RESAMPLES, seed=0)
    assert report["differences"][0]["value"]["estimate"] == pytest.approx(expected.estimate, abs=1e-12)
    assert report["differences"][0]["value"]["p_value"] == pytest.approx(expected.p_value)


def test_resume_reuses_finished_verifiers(tmp_path, qwen_dir, llama_dir, count_loads, capsys):
    data = write_jsonl(tmp_path / "labelled.jsonl", labelled_rows())
    verifiers, total = [qwen_dir, llama_dir], len(labelled_rows())
    count_loads["fail_load"] = str(llama_dir)  # killed while loading the second verifier
    assert run(tmp_path, verifiers, data) == 130
    assert count_loads["loads"] == [str(qwen_dir), str(llama_dir)] and count_loads["scored"] == total
    assert not (tmp_path / "report.json").exists()
    count_loads.update(loads=[], scored=0, fail_load=None, fail_score_after=4)  # killed after one chunk of llama's
    assert run(tmp_path, verifiers, data, "--chunk-rows", "4") == 130
    assert count_loads["loads"] == [str(llama_dir)] and count_loads["scored"] == 4  # qwen: cached, not reloaded
    count_loads.update(loads=[], scored=0, fail_score_after=None)
    assert run(tmp_path, verifiers, data, "--chunk-rows", "4") == 0
    assert count_loads["loads"] == [str(llama_dir)] and count_loads["scored"] == total - 4  # resumed mid-verifier
    first = json.loads((tmp_path / "report.json").read_text())
    assert "(cached scores)" in capsys.readouterr().out
    count_loads.update(loads=[], scored=0)
    assert run(tmp_path, verifiers, data, "--overwrite") == 0  # a finished comparison: nothing is loaded again
    assert count_loads["loads"] == [] and count_loads["scored"] == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert [v["scores"] for v in again["verifiers"]] == [v["scores"] for v in first["verifiers"]]
    fresh = compare_verifiers([qwen_dir, llama_dir], data, device="cpu", n_resamples=RESAMPLES, progress=False)
    for got, want in zip(first["verifiers"], fresh.verifiers, strict=True):  # the resumed scores equal a fresh run's
        assert got["scores"] == pytest.approx(want.run.scores, abs=1e-5)


@pytest.mark.parametrize(
    ("rows", "flags", "message"),
    [
        ([{"prompt": "p", "response": "r", "label": 2}], [], "line 1: column 'label' must be 1 / true (good) or 0"),
        ([{"prompt": "p", "response": "r", "label": 1}, {"prompt": "p", "response": "r", "label": "yes"}], [],
         "line 2: column 'label' must be 1 / true (good) or 0 / false (bad), got 'yes'"),
        ([{"prompt": "p", "response": "r", "score": 1}], [], "neither a label column 'label'"),
        ([{"prompt": "p", "response": "r", "ok": 1}, {"prompt": "p", "response": "r"}], ["--label-column", "ok"],
         "line 2: missing column 'ok'"),
        ([{"prompt": "p", "response": "r", "label": 1}] * 3, [], "all 3 rows have 'label' = 1 (good)"),
        ([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}], ["--pairs"],
         "line 2: missing column 'rejected'"),
        ([{"chosen": "a", "rejected": "b"}], [], "line 1: missing column 'prompt'"),
        ([{"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}], [],
         "column 'chosen' must end with the assistant's turn"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_before_loading(tmp_path, qwen_dir, llama_dir, count_loads, capsys, rows, flags, message):
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    assert run(tmp_path, [qwen_dir, llama_dir], data, *flags) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert count_loads["loads"] == [] and not (tmp_path / "report.json").exists()


def test_usage_errors_exit_2(tmp_path, qwen_dir, llama_dir, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", labelled_rows())
    assert run(tmp_path, [qwen_dir, qwen_dir], data) == 2
    assert "names a verifier twice" in capsys.readouterr().err
    assert run(tmp_path, [qwen_dir, tmp_path / "missing"], data) == 2
    assert "cannot load verifier" in capsys.readouterr().err
    (tmp_path / "report.md").write_text("old")
    assert run(tmp_path, [qwen_dir, llama_dir], data) == 2
    assert "report.md already exist; pass --overwrite" in capsys.readouterr().err
    assert main(["compare-verifiers", "--verifiers", "a,,b", "--input", str(data), "--output", "r.json"]) == 2
    assert main(["compare-verifiers", "--verifiers", "a", "--input", str(data), "--output", "r.jsonl"]) == 2
    assert "give it a .json name" in capsys.readouterr().err


def test_load_comparison_data_formats(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("prompt,response,label\nq,a,true\nq,b,0\nq,c,1\n")
    data = load_comparison_data(csv, as_chat=True)
    assert (data.kind, data.labels, data.rows) == ("labelled", [True, False, True], 3)
    assert data.prompts[0] == [{"role": "user", "content": "q"}]
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pairs = write_jsonl(tmp_path / "uf.jsonl", [{"chosen": turns, "rejected": {"role": "assistant", "content": "b"}}])
    data = load_comparison_data(pairs)
    assert (data.kind, data.responses, data.labels) == ("pairs", ["a", "b"], [True, False])
    assert data.prompts == [turns[:1], turns[:1]]  # the conversation before the chosen turn
    skipped = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "response": "r", "label": v} for v in (1, 7, 0, 0)])
    data = load_comparison_data(skipped, skip_bad=True, limit=2)
    assert data.labels == [True, False] and data.skipped[0][0] == 2


def test_peak_memory_measures_an_allocation():
    with PeakMemory() as peak:
        block = torch.ones(16 * 2**20)  # 64 MiB
        del block
    result = peak.result("cpu")
    if result.method.startswith("peak RSS"):
        assert 60 <= result.mib < 1000
    assert not math.isnan(result.mib or 0.0)
