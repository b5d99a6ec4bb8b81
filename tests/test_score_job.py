"""`cme-reward score` and `inspect` end to end through `main([...])` with the tiny Qwen2 verifier saved to disk
(no hub): every input format, messages, per-token output, bad input, a crash and its resumption, aliases."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import read_jsonl, write_jsonl

from cme_reward import CrossModelEntropyReward
from cme_reward.cli.main import main
from cme_reward.verifier import aliases as assets

ROWS = [
    {"id": 0, "prompt": "The capital of France is", "response": " Paris."},
    {"id": 1, "prompt": "def add(a, b):", "response": "\n    return a + b\n"},
    {"id": 2, "prompt": "Write a short poem about the sea.", "response": ""},  # empty -> null
    {"id": 3, "prompt": "Héllo wörld", "response": " naïve café, 東京 🙂", "extra": {"nested": [1, 2]}},
    {"id": 4, "prompt": "1 + 1 =", "response": " 2"},
    {"id": 5, "prompt": "The capital of France is", "response": " Berlin."},
]


@pytest.fixture(scope="module")
def direct_scores(reward) -> list:
    return reward.score([r["prompt"] for r in ROWS], [r["response"] for r in ROWS])


def score(verifier, *args: str) -> int:
    return main(["score", "--verifier", str(verifier), "--device", "cpu", "--no-progress", *args])


def assert_scores(out: list[dict], expected: list) -> None:
    assert len(out) == len(expected)
    for row, want in zip(out, expected, strict=True):
        if want is None:
            assert row["cme"] is None
        else:
            assert row["cme"] == pytest.approx(want, abs=1e-5)


def test_score_jsonl(tmp_path, qwen_dir, direct_scores, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / "out.jsonl")) == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [{k: v for k, v in r.items() if k != "cme"} for r in out] == ROWS  # input rows, in order, untouched
    assert all(list(r)[-1] == "cme" for r in out)
    assert_scores(out, direct_scores)
    assert out[2]["cme"] is None and "null" in (tmp_path / "out.jsonl").read_text().splitlines()[2]
    assert out[0]["cme"] != out[5]["cme"]  # same prompt, different responses
    printed = capsys.readouterr().out
    scored = [s for s in direct_scores if s is not None]
    assert f"{len(ROWS)} rows" in printed and f"CME mean {sum(scored) / len(scored):.4f}" in printed
    assert "1 row has no score (empty response): cme is null" in printed and "tokens/s" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_score_csv(tmp_path, qwen_dir, direct_scores):
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "prompt", "response"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("id", "prompt", "response")} for r in ROWS)
    assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / "out.jsonl")) == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [str(r["id"]) for r in ROWS]  # CSV values stay strings
    assert [r["response"] for r in out] == [r["response"] for r in ROWS]  # multi-line field intact
    assert_scores(out, direct_scores)


def test_score_parquet_and_dataset_dir(tmp_path, qwen_dir, direct_scores):
    datasets = pytest.importorskip("datasets")
    plain = [{k: r[k] for k in ("id", "prompt", "response")} for r in ROWS]
    ds = datasets.Dataset.from_list(plain)
    ds.to_parquet(str(tmp_path / "in.parquet"))
    assert score(qwen_dir, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "a.jsonl")) == 0
    out = read_jsonl(tmp_path / "a.jsonl")
    assert [{k: v for k, v in r.items() if k != "cme"} for r in out] == plain
    assert_scores(out, direct_scores)

    datasets.DatasetDict({"train": ds.select(range(2)), "test": ds}).save_to_disk(str(tmp_path / "ds"))
    args = ["--dataset", str(tmp_path / "ds"), "--output", str(tmp_path / "b.jsonl"), "--split", "test"]
    assert score(qwen_dir, *args) == 0
    assert_scores(read_jsonl(tmp_path / "b.jsonl"), direct_scores)


def test_messages_column_and_per_token(tmp_path, qwen_dir, reward):
    chats = [
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
    ]
    src = write_jsonl(tmp_path / "chat.jsonl", [{"chat": c} for c in chats])
    out_path = tmp_path / "out.jsonl"
    args = ["--input", str(src), "--output", str(out_path), "--messages-column", "chat", "--per-token"]
    assert score(qwen_dir, *args) == 0
    out = read_jsonl(out_path)
    direct = reward.score_tokens([c[:-1] for c in chats], [c[-1]["content"] for c in chats])
    for row, ts, chat in zip(out, direct, chats, strict=True):
        assert row["chat"] == chat
        assert row["cme_tokens"] == ts.tokens and row["cme_logprobs"] == pytest.approx(ts.logprobs, abs=1e-5)
        assert row["cme"] == pytest.approx(sum(row["cme_logprobs"]) / len(row["cme_logprobs"]), abs=1e-6)


def test_skip_bad_and_limit(tmp_path, qwen_dir, direct_scores, capsys):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in ROWS]
    lines.insert(1, "{broken")
    lines.insert(3, json.dumps({"prompt": 5, "response": "x"}))
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out_path = tmp_path / "out.jsonl"
    assert score(qwen_dir, "--input", str(src), "--output", str(out_path)) == 2
    err = capsys.readouterr().err
    assert "in.jsonl: line 2: invalid JSON" in err and "Traceback" not in err
    assert not out_path.exists()

    assert score(qwen_dir, "--input", str(src), "--output", str(out_path), "--skip-bad", "--limit", "4") == 0
    out = read_jsonl(out_path)
    assert [r["id"] for r in out] == [0, 1, 2, 3]
    assert_scores(out, direct_scores[:4])
    assert "skipped 2 bad rows (lines 2, 4)" in capsys.readouterr().out


def test_resume_after_crash_gives_identical_output(tmp_path, qwen_dir, monkeypatch):
    rows = [{"id": i, "prompt": f"Question {i}?", "response": f"Answer {i}." * (1 + i % 3)} for i in range(23)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    assert score(qwen_dir, "--input", str(src), "--output", str(ref), "--chunk-rows", "5") == 0

    real, calls, armed = CrossModelEntropyReward.score, [], {"crash": True}

    def crashing(self, *args, **kwargs):
        calls.append(len(args[0]))
        if len(calls) == 3 and armed.pop("crash", False):
            raise RuntimeError("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CrossModelEntropyReward, "score", crashing)
    assert score(qwen_dir, "--input", str(src), "--output", str(out), "--chunk-rows", "5") == 1  # unexpected error
    assert not out.exists() and json.loads((tmp_path / "out.jsonl.ckpt.json").read_text())["rows_done"] == 10

    # another option: refused (exit 2), checkpoint kept
    assert score(qwen_dir, "--input", str(src), "--output", str(out), "--chunk-rows", "5", "--per-token") == 2
    calls.clear()
    assert score(qwen_dir, "--input", str(src), "--output", str(out), "--chunk-rows", "5") == 0
    assert calls == [5, 5, 3]  # only the rows after the checkpoint
    assert out.read_bytes() == ref.read_bytes()

    assert score(qwen_dir, "--input", str(src), "--output", str(out)) == 2  # exists
    assert score(qwen_dir, "--input", str(src), "--output", str(out), "--overwrite") == 0


def test_verifier_alias_goes_through_assets(tmp_path, qwen_dir, monkeypatch, direct_scores):
    seen = []

    def fake_locate(kind):
        seen.append(kind)
        return qwen_dir, None

    monkeypatch.setattr(assets, "locate_verifier", fake_locate)
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    assert score("smollm2", "--input", str(src), "--output", str(tmp_path / "o.jsonl")) == 0
    assert seen and set(seen) == {"smollm2"}  # resolved for the checkpoint's options and for loading
    assert_scores(read_jsonl(tmp_path / "o.jsonl"), direct_scores)


def test_inspect_writes_html(tmp_path, qwen_dir):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    page = tmp_path / "page.html"
    args = ["inspect", "--verifier", str(qwen_dir), "--input", str(src), "--output", str(page), "--limit", "3"]
    assert main([*args, "--device", "cpu", "--title", "Tiny <check>"]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Tiny &lt;check&gt;" in text
    assert "3 responses" in text and text.count('class="card"') == 3  # --limit 3
    assert "def add(a, b):" in text and "1 + 1 =" not in text


def test_bad_input_and_verifier_exit_2(tmp_path, qwen_dir, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    cases = [
        (["--input", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file"),
        (["--dataset", str(src)], "not a directory"),
        (["--input", str(src), "--prompt-column", "question"], "in.jsonl: line 1: missing column 'question'"),
        (["--input", str(src), "--messages-column", "m", "--response-column", "r"], "--messages-column replaces"),
        (["--input", str(src), "--messages-column", "m", "--prompt-column", "p"], "--messages-column replaces"),
    ]
    for args, message in cases:
        assert score(qwen_dir, *args, "--output", str(tmp_path / "out.jsonl")) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert score(tmp_path / "no-model", "--input", str(src), "--output", str(tmp_path / "o.jsonl")) == 2
    err = capsys.readouterr().err
    assert "cannot load verifier" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output file of any kind was created
    # the failed run wrote no row, so fixing the verifier is not refused as an "options mismatch"
    assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / "o.jsonl")) == 0
    for output, message in [("o.csv", "JSON Lines"), (".", "is a directory"), ("in.jsonl", "must differ from")]:
        assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / output)) == 2
        assert message in capsys.readouterr().err


def test_null_scores_are_json_null(tmp_path, qwen_dir):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "response": ""}, {"prompt": "b", "response": "c"}])
    assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / "o.jsonl")) == 0
    first, second = (tmp_path / "o.jsonl").read_text().splitlines()
    assert first.endswith('"cme": null}')
    assert math.isfinite(json.loads(second)["cme"])


def test_a_file_mixing_response_and_completion_rows_is_scored_whole(tmp_path, qwen_dir, direct_scores):
    rows = [dict(r) for r in ROWS]
    for r in rows[1::2]:
        r["completion"] = r.pop("response")
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / "out.jsonl")) == 0
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [{k: v for k, v in r.items() if k != "cme"} for r in out] == rows
    assert_scores(out, direct_scores)


def test_paper_flags_score_as_from_paper(tmp_path, qwen_dir):
    from cme_reward import CMEConfig

    rows = [
        *ROWS,
        {"id": 6, "prompt": "2 + 2 =", "response": " so \\boxed{4}"},
        {"id": 7, "prompt": "q", "response": " "},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    flags = ["--paper", "--paper-metric", "perplexity", "--answer-only", "--no-box-penalty", "2", "--repetition-guard"]
    assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / "out.jsonl"), *flags) == 0
    config = CMEConfig.from_paper(reward_metric="perplexity", answer_only=True, no_box_penalty=2.0,
                                  repetition_guard=True)  # fmt: skip
    expected = CrossModelEntropyReward(qwen_dir, config=config).score([r["prompt"] for r in rows],
                                                                      [r["response"] for r in rows])  # fmt: skip
    out = read_jsonl(tmp_path / "out.jsonl")
    assert_scores(out, expected)
    assert out[2]["cme"] == out[7]["cme"] == -50.0  # empty and blank: the authors' value
    assert out[0]["cme"] == pytest.approx(-math.exp(2.0))  # no box: -exp(penalty)
    assert out[6]["cme"] != out[0]["cme"]


PLAIN_WARNING = "A plain-text prompt is scored as raw text"


def test_as_chat_scores_plain_columns_as_one_user_turn(tmp_path, qwen_dir, reward, caplog):
    rows = [r for r in ROWS if r["response"]][:3]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / "chat.jsonl"), "--as-chat") == 0
    chat = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    assert_scores(read_jsonl(tmp_path / "chat.jsonl"), reward.score(chat, [r["response"] for r in rows]))
    assert PLAIN_WARNING not in caplog.text
    assert score(qwen_dir, "--input", str(src), "--output", str(tmp_path / "plain.jsonl")) == 0
    assert caplog.text.count(PLAIN_WARNING) == 1 and "--as-chat" in caplog.text  # once, not once per row
    plain = [r["cme"] for r in read_jsonl(tmp_path / "plain.jsonl")]
    assert plain != [r["cme"] for r in read_jsonl(tmp_path / "chat.jsonl")]


def test_no_progress_hides_the_gguf_conversion_bar(monkeypatch, capfd):
    import inspect

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    import cme_reward.reward as reward_module
    from cme_reward.cli import score as score_job
    from cme_reward.cli.main import build_parser

    # transformers draws this bar with tqdm itself, not through its progress-bar switch
    assert "tqdm(reader.tensors" in inspect.getsource(gguf_utils.load_gguf_checkpoint)

    class Loading:  # the verifier's load, drawing the bar as a GGUF load does
        def __init__(self, *args, **kwargs):
            for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
                pass

    monkeypatch.setattr(reward_module, "CrossModelEntropyReward", Loading)
    base = ["score", "--verifier", "m.gguf", "--input", "in.jsonl", "--output", "o.jsonl"]
    for flags, shown in (([], True), (["--no-progress"], False)):
        capfd.readouterr()
        score_job.load_reward(build_parser().parse_args(base + flags))
        assert ("de-quantizing GGUF tensors" in capfd.readouterr().err) is shown, flags
    assert gguf_utils.tqdm is tqdm  # put back after loading
