"""The replication harness: metrics against naive references, the pairwise judge against a loopback fake judge
(random A/B order, tie-adjusted win rate, retries, bad replies), and a smoke run of every arm on tiny offline models
that resumes from its cache and writes the report."""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from tiny_models import save_verifier

from experiments.judge import ChatJudge, compare, parse_verdict, win_rate
from experiments.metrics import (
    bootstrap_ci,
    distinct_n,
    length_stats,
    reference_loglik,
    repeated_ngram_rate,
    words,
)

# ---- metrics --------------------------------------------------------------------------------------------------------

TEXTS = ["The cat sat on the mat. The cat sat!", "", "a b a b a b", "Hello, world", "x"]


def naive_grams(text: str, n: int) -> list[tuple]:
    toks = re.findall(r"\w+|[^\w\s]", text.lower())
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def test_words_split_words_and_punctuation():
    assert words("Hi, YOU! 3.5") == ["hi", ",", "you", "!", "3", ".", "5"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_distinct_n_matches_a_naive_count(n):
    rng = random.Random(n)
    texts = TEXTS + [" ".join(rng.choice("abcde") for _ in range(rng.randint(0, 12))) for _ in range(20)]
    grams = [g for t in texts for g in naive_grams(t, n)]
    assert distinct_n(texts, n) == pytest.approx(len(set(grams)) / len(grams))
    assert distinct_n(["", "a"], 2) is None  # no bigram at all


def test_repeated_ngram_rate_matches_a_naive_count():
    rng = random.Random(0)
    texts = TEXTS + [" ".join(rng.choice("abc") for _ in range(rng.randint(0, 15))) for _ in range(30)]
    total = repeats = 0
    for t in texts:
        counts = Counter(naive_grams(t, 3))
        total += sum(counts.values())
        repeats += sum(c - 1 for c in counts.values())
    assert repeated_ngram_rate(texts, 3) == pytest.approx(repeats / total)
    assert repeated_ngram_rate(["one two three four"], 3) == 0.0
    assert repeated_ngram_rate(["the same across", "the same across"], 3) == 0.0  # repeats count within a response


def test_metrics_refuse_bad_input():
    with pytest.raises(TypeError, match="texts"):
        distinct_n("not a list", 1)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        repeated_ngram_rate(["ok", 3])
    with pytest.raises(ValueError, match="`n`"):
        distinct_n(["a"], 0)
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        length_stats([-1])


def test_length_stats_match_numpy():
    lengths = [0, 3, 64, 10, 64, 7, 1]
    stats = length_stats(lengths, max_length=64)
    assert stats["mean"] == pytest.approx(np.mean(lengths))
    for key, q in (("median", 50), ("p10", 10), ("p90", 90)):
        assert stats[key] == pytest.approx(np.percentile(lengths, q))
    assert (stats["min"], stats["max"]) == (0, 64)
    assert stats["frac_empty"] == pytest.approx(1 / 7) and stats["frac_at_max"] == pytest.approx(2 / 7)
    assert set(length_stats([])) == {"mean", "median", "p10", "p90", "min", "max", "frac_empty"}
    assert length_stats([])["mean"] is None


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    rng = random.Random(1)
    values = [rng.gauss(0.3, 1.0) for _ in range(60)]
    low, high = bootstrap_ci(values, seed=3)
    assert (low, high) == bootstrap_ci(values, seed=3)
    assert low < float(np.mean(values)) < high
    # the interval's half-width is about 1.96 standard errors
    assert (high - low) / 2 == pytest.approx(1.96 * np.std(values) / np.sqrt(len(values)), rel=0.2)
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0)
    assert bootstrap_ci([]) is None
    medians = bootstrap_ci([0, 0, 0, 10], statistic=lambda s: float(np.median(s)), n_boot=200)
    assert 0 <= medians[0] <= medians[1] <= 10
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=1.5)


def test_reference_loglik_matches_a_plain_forward(qwen_dir):
    from conftest import reload

    from cme_reward.reference import reference_token_logprobs

    model, tok = reload(qwen_dir)
    prompts, refs = ["Write a short poem about the sea.", "1 + 1 ="], [" The sea is blue and deep.", " 2"]
    got = reference_loglik(model, tok, prompts, refs)
    rows = [reference_token_logprobs(model, tok(p).input_ids, tok(r, add_special_tokens=False).input_ids)
            for p, r in zip(prompts, refs)]  # fmt: skip
    assert got["tokens"] == sum(len(r) for r in rows)
    assert got["per_token"] == pytest.approx(float(sum(r.sum() for r in rows)) / got["tokens"], abs=1e-4)
    assert got["per_response"] == pytest.approx([float(r.mean()) for r in rows], abs=1e-4)
    with pytest.raises(ValueError, match="references"):
        reference_loglik(model, tok, prompts, refs[:1])


# ---- judge ----------------------------------------------------------------------------------------------------------


class FakeJudge:
    """A loopback OpenAI-compatible chat server. Its verdict prefers the response that contains "GOOD" (a tie when
    both or neither do); `mode="first"` always answers "[[A]]" (a position-biased judge), `"garbage"` gives no
    verdict; `fail` first requests answer HTTP `fail_status`."""

    def __init__(self, *, mode: str = "content", fail: int = 0, fail_status: int = 503):
        self.mode, self.fail, self.fail_status = mode, fail, fail_status
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    failing = owner.fail > 0
                    owner.fail -= failing
                if failing:
                    self._send(owner.fail_status, {"error": "busy"})
                    return
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": owner.reply(body)}}]})

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def reply(self, body: dict) -> str:
        if self.mode == "garbage":
            return "I cannot decide."
        if self.mode == "first":
            return "Both are fine. [[A]]"
        text = body["messages"][-1]["content"]
        a = text.split("[The Start of Response A]")[1].split("[The End of Response A]")[0]
        b = text.split("[The Start of Response B]")[1].split("[The End of Response B]")[0]
        verdict = "C" if ("GOOD" in a) == ("GOOD" in b) else ("A" if "GOOD" in a else "B")
        return f"Thinking about [[B]] first... final verdict: [[{verdict}]]"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_judge():
    servers = []

    def make(**kwargs) -> FakeJudge:
        servers.append(FakeJudge(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_parse_verdict_takes_the_last_verdict():
    assert parse_verdict("[[A]] no wait, [[ B ]]") == "B"
    assert parse_verdict("tie: [[C]]") == "tie"
    assert parse_verdict("A is better") is None and parse_verdict("") is None


def test_win_rate_is_tie_adjusted_with_a_bootstrap_interval():
    outcomes = [1.0] * 6 + [0.5] * 3 + [0.0] * 3 + [None] * 2
    got = win_rate(outcomes, seed=1)
    assert got["win_rate"] == pytest.approx((6 + 0.5 * 3) / 12)
    assert (got["wins"], got["ties"], got["losses"], got["invalid"], got["n"]) == (6, 3, 3, 2, 12)
    assert got["ci"][0] < got["win_rate"] < got["ci"][1]
    assert win_rate([None])["win_rate"] is None
    with pytest.raises(ValueError, match="outcome"):
        win_rate([0.7])


def test_compare_randomises_order_and_scores_the_candidate(fake_judge):
    server = fake_judge()
    judge = ChatJudge(server.url, model="judge-model", api_key="secret", workers=4)
    questions = [f"question {i}" for i in range(24)]
    candidates = ["GOOD answer" if i % 3 else "meh" for i in range(24)]
    baselines = ["meh" if i % 2 else "GOOD too" for i in range(24)]
    pairs = compare(judge, questions, candidates, baselines, seed=5)
    assert pairs == compare(judge, questions, candidates, baselines, seed=5)  # the order is seeded
    assert 0 < sum(p["candidate_first"] for p in pairs) < 24  # both orders are used
    expected = [0.5 if ("GOOD" in c) == ("GOOD" in b) else float("GOOD" in c) for c, b in zip(candidates, baselines)]
    assert [p["outcome"] for p in pairs] == expected  # whatever the order, the verdict is mapped back to the candidate
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["model"] == "judge-model"
    assert request["auth"] == "Bearer secret" and request["temperature"] == 0.0
    assert request["messages"][0]["role"] == "system"
    rate = win_rate([p["outcome"] for p in pairs])["win_rate"]
    assert rate == pytest.approx(sum(expected) / len(expected))


def test_a_position_biased_judge_gives_about_half(fake_judge):
    judge = ChatJudge(fake_judge(mode="first").url + "/v1", model="m")
    pairs = compare(judge, ["q"] * 40, ["x"] * 40, ["y"] * 40, seed=0)
    assert [p["outcome"] for p in pairs] == [float(p["candidate_first"]) for p in pairs]
    assert 0.25 < win_rate([p["outcome"] for p in pairs])["win_rate"] < 0.75


def test_judge_retries_then_fails_clearly(fake_judge):
    server = fake_judge(fail=2)
    judge = ChatJudge(server.url, model="m", max_retries=2, backoff=0.0)
    assert judge.verdict("q", "GOOD", "bad") == "A"
    assert len(server.requests) == 3
    judge = ChatJudge(fake_judge(fail=5, fail_status=400).url, model="m", max_retries=3, backoff=0.0)
    with pytest.raises(RuntimeError, match="HTTP 400"):
        judge.verdict("q", "a", "b")
    pairs = compare(ChatJudge(fake_judge(mode="garbage").url, model="m"), ["q"], ["a"], ["b"])
    assert pairs[0]["verdict"] is None and pairs[0]["outcome"] is None


def test_judge_options_and_environment(monkeypatch):
    for bad in ("localhost:8000", "ftp://host", ""):
        with pytest.raises(ValueError, match="judge URL"):
            ChatJudge(bad, model="m")
    with pytest.raises(ValueError, match="model"):
        ChatJudge("http://127.0.0.1:1", model="")
    with pytest.raises(ValueError, match="workers"):
        ChatJudge("http://127.0.0.1:1", model="m", workers=0)
    assert ChatJudge("http://h:1/v1/chat/completions", model="m").endpoint == "http://h:1/v1/chat/completions"
    monkeypatch.delenv("CME_JUDGE_URL", raising=False)
    assert ChatJudge.from_env() is None
    monkeypatch.setenv("CME_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("CME_JUDGE_MODEL", raising=False)
    with pytest.raises(ValueError, match="CME_JUDGE_MODEL"):
        ChatJudge.from_env()
    monkeypatch.setenv("CME_JUDGE_MODEL", "served")
    monkeypatch.setenv("CME_JUDGE_API_KEY", "k")
    judge = ChatJudge.from_env()
    assert judge.endpoint == "http://127.0.0.1:9/v1/chat/completions" and judge.model == "served"
    assert "k" not in json.dumps(judge.describe())


# ---- report ---------------------------------------------------------------------------------------------------------


def test_report_goes_next_to_the_run_and_needs_no_matplotlib(tmp_path, monkeypatch, caplog):
    import dataclasses
    import sys

    from experiments import report
    from experiments.settings import Settings

    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps(dataclasses.asdict(Settings())))
    committed = tmp_path / "docs" / "replication.md"
    committed.parent.mkdir()
    committed.write_text("the committed report")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    report.main(["--run", str(run)])
    text = (run / "replication.md").read_text()
    assert committed.read_text() == "the committed report"  # written only when --out names it
    assert "matplotlib is not installed (`pip install matplotlib`, or the `experiments` extra" in text
    assert "pip install matplotlib" in caplog.text and not list(run.glob("*.png"))
    report.main(["--run", str(run), "--out", str(committed)])
    assert committed.read_text() == text


# ---- smoke run ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_resumes_and_reports(tmp_path, fake_judge, monkeypatch):
    from experiments import judge as judge_module
    from experiments import replicate

    policy = save_verifier(tmp_path / "policy", "qwen2", seed=0)
    verifier = save_verifier(tmp_path / "verifier", "llama", seed=1)
    rows = [{"prompt": f"Write a poem about the sea, take {i}.", "reference": "The sea is deep." if i < 2 else None}
            for i in range(10)]  # fmt: skip
    rows[0]["split"] = "heldout"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    argv = ["--smoke", "--out", str(out), "--policy", str(policy), "--verifier", str(verifier), "--prompts",
            str(prompts), "--arms", "a,b,c,d,e,f,g", "--learning-rate", "1e-2"]  # fmt: skip
    monkeypatch.delenv("CME_JUDGE_URL", raising=False)
    replicate.main(argv)

    held = json.loads((out / "prompts.json").read_text())
    assert len(held["heldout"]) == 4 and held["heldout"][0]["id"] == "p0"  # a fixed held-out row stays held out
    heldout_ids = {r["id"] for r in held["heldout"]}
    assert not heldout_ids & {r["id"] for r in held["train"]}
    evals = {arm: json.loads((out / "arms" / arm / "eval.json").read_text()) for arm in "abcdefg"}
    for arm, result in evals.items():
        assert [s["id"] for s in result["samples"]] == [r["id"] for r in held["heldout"]]
        assert all(s["length"] <= 8 for s in result["samples"])
        assert result["metrics"]["reference_tokens"] > 0
        if arm != "a":
            train = json.loads((out / "arms" / arm / "train.json").read_text())
            assert [s["step"] for s in train["steps"]] == [1, 2]
            assert all(s["cme"] is not None and s["train_reward"] is not None for s in train["steps"])
            assert not (out / "arms" / arm / "policy").exists()  # weights go once the arm is evaluated
            # training moved the weights: the generator's likelihood of the references changed
            assert result["metrics"]["reference_loglik"] != evals["a"]["metrics"]["reference_loglik"]
    report = (out / "replication.md").read_text()
    for arm in "abcde":
        assert f"| ({arm}) |" in report
    assert "no win rates" in report and str(Path(__file__).resolve().parents[1]) not in report  # no repository path
    if (out / "replication_curves.png").exists():
        assert (out / "replication_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob(".*.tmp"))

    # resume: an arm whose outputs are gone is redone, the others come from the cache
    stamps = {arm: (out / "arms" / arm / "eval.json").stat().st_mtime_ns for arm in "abde"}
    (out / "arms" / "c" / "eval.json").unlink()
    (out / "arms" / "c" / "train.json").unlink()
    replicate.main(argv)
    assert {arm: (out / "arms" / arm / "eval.json").stat().st_mtime_ns for arm in "abde"} == stamps
    redone = json.loads((out / "arms" / "c" / "eval.json").read_text())
    assert redone["samples"] == evals["c"]["samples"]  # fixed seeds: the same run again
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2

    # a judge later, then the report again
    server = fake_judge(mode="first")
    monkeypatch.setenv("CME_JUDGE_URL", server.url)
    monkeypatch.setenv("CME_JUDGE_MODEL", "fake-judge")
    judge_module.main(["--run", str(out)])
    verdicts = json.loads((out / "judge" / "b.json").read_text())
    assert verdicts["n"] == 4 and len(server.requests) == 4 * 6  # arms (b) to (g) against (a)
    assert [p["outcome"] for p in verdicts["pairs"]] == [float(p["candidate_first"]) for p in verdicts["pairs"]]
    from experiments.report import main as report_main

    report_main(["--run", str(out), "--out", str(tmp_path / "docs" / "replication.md")])
    report = (tmp_path / "docs" / "replication.md").read_text()
    assert "fake-judge" in report and "no win rates" not in report
    assert f"| (b) | {verdicts['win_rate']:.3f} |" in report
