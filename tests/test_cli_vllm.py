"""`cme-reward score`, `inspect` and `serve` with `--backend vllm`, against the loopback fake of `vllm serve`
(tests/fake_vllm.py): the flags, their refusals, the same scores as in process, and what a resumable run records.
The same commands against a real server: tests/test_vllm_real.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("httpx")

from conftest import read_jsonl, write_jsonl  # noqa: E402
from fake_vllm import FakeVLLMServer  # noqa: E402

from cme_reward.cli import score as score_job  # noqa: E402
from cme_reward.cli.main import main  # noqa: E402

KEY = "vllm-sekrit"
ROWS = [
    {"prompt": "The capital of France is", "response": " Paris."},
    {"prompt": [{"role": "user", "content": "2 + 2?"}], "response": "4, of course."},
    {"prompt": "Héllo wörld 東京", "response": " Привет мир 🙂"},
    {"prompt": "Hi", "response": ""},
]


@pytest.fixture(scope="module")
def keyed_vllm(qwen_dir):
    """A fake `vllm serve --api-key KEY` of the tiny Qwen2 verifier."""
    with FakeVLLMServer(qwen_dir, api_key=KEY) as server:
        yield server


@pytest.fixture
def rows_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


@pytest.fixture(scope="module")
def in_process(qwen_dir, tmp_path_factory) -> list[dict]:
    """`cme-reward score --per-token` in process."""
    path = tmp_path_factory.mktemp("in-process")
    out = path / "scores.jsonl"
    argv = ["score", "--verifier", str(qwen_dir), "--input", str(write_jsonl(path / "rows.jsonl", ROWS)), "--output",
            str(out), "--per-token", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return read_jsonl(out)


def vllm_flags(qwen_dir, server) -> list[str]:
    return ["--verifier", str(qwen_dir), "--backend", "vllm", "--base-url", server.url]


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [r.get("cme_tokens") for r in got] == [r.get("cme_tokens") for r in want]
    for a, b in zip(got, want):
        assert a["cme"] == pytest.approx(b["cme"], abs=1e-5)  # None == None for the empty response
        assert a.get("cme_logprobs", []) == pytest.approx(b.get("cme_logprobs", []), abs=1e-5)


# ---- flags ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["score", "inspect", "serve"])
def test_help_shows_the_vllm_flags(command, capsys):
    assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--backend {transformers,vllm}" in out and "--base-url BASE_URL" in out and "--served-model" in out
    key_flag = "--vllm-api-key" if command == "serve" else "--api-key"
    assert f"{key_flag} VLLM_API_KEY bearer token of the vLLM server (default: $VLLM_API_KEY)" in out
    if command == "serve":  # its own --api-key is the reward server's
        assert "--api-key API_KEY require 'Authorization: Bearer KEY' (default: $CME_API_KEY" in out


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("score", ["--base-url", "http://127.0.0.1:8000"], "--base-url needs --backend vllm"),
        ("inspect", ["--served-model", "m", "--api-key", "k"], "--served-model and --api-key need --backend vllm"),
        ("serve", ["--vllm-api-key", "k"], "--vllm-api-key needs --backend vllm"),
        ("score", ["--backend", "vllm"], "--backend vllm needs --base-url http://host:port"),
        ("score", ["--backend", "vllm", "--base-url", "localhost:8000"], "--base-url 'localhost:8000' is not an http"),
        ("score", ["--backend", "vllm", "--base-url", "http://h:1/a"], "--base-url 'http://h:1/a' is not a server"),
        ("inspect", ["--backend", "vllm", "--base-url", "http://h:1", "--metric", "entropy"],
         "--metric entropy needs the verifier's whole distribution"),
    ],
)  # fmt: skip
def test_bad_combinations_exit_2_with_one_line(command, flags, message, qwen_dir, rows_file, tmp_path, capsys):
    argv = [command, "--verifier", str(qwen_dir), *flags]
    if command != "serve":
        argv += ["--input", str(rows_file), "--output", str(tmp_path / "out.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cme-reward: error: {message}") and err.count("\n") == 1, err
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # nothing written


def test_an_unset_key_in_the_environment_is_not_a_flag(qwen_dir, rows_file, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", KEY)  # read only with --backend vllm
    assert main(["score", "--verifier", str(qwen_dir), "--input", str(rows_file), "--output",
                 str(tmp_path / "o.jsonl"), "--no-progress"]) == 0  # fmt: skip


# ---- the commands through a vLLM server ----------------------------------------------------------------------


def test_score_and_inspect_equal_in_process(qwen_dir, keyed_vllm, rows_file, in_process, tmp_path, monkeypatch):
    keyed_vllm.reset()
    out = tmp_path / "scores.jsonl"
    argv = ["score", *vllm_flags(qwen_dir, keyed_vllm), "--served-model", str(qwen_dir), "--api-key", KEY, "--input",
            str(rows_file), "--output", str(out), "--per-token", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert_same_rows(read_jsonl(out), in_process)
    sent = [r for r in keyed_vllm.requests if r["path"] == "/v1/completions"]
    assert sent and all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in sent)
    assert {r["body"]["model"] for r in sent} == {str(qwen_dir)}

    monkeypatch.setenv("VLLM_API_KEY", KEY)  # the default of --api-key
    page = tmp_path / "page.html"
    argv = ["inspect", *vllm_flags(qwen_dir, keyed_vllm), "--input", str(rows_file), "--output", str(page)]
    assert main(argv) == 0
    assert page.read_text().count('class="card"') == len(ROWS)


def test_a_refused_key_is_one_line(qwen_dir, keyed_vllm, rows_file, tmp_path, capsys):
    argv = ["score", *vllm_flags(qwen_dir, keyed_vllm), "--api-key", "wrong", "--input", str(rows_file), "--output",
            str(tmp_path / "o.jsonl")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load verifier" in err and "HTTP 401" in err
    assert "wrong" not in err


def test_serve_takes_the_vllm_flags(qwen_dir, keyed_vllm, in_process, monkeypatch):
    from starlette.testclient import TestClient

    from cme_reward.server import app

    served = {}
    monkeypatch.setattr(app, "serve", lambda reward, **options: served.update(reward=reward, **options))
    monkeypatch.setenv("CME_API_KEY", "reward-key")
    argv = ["serve", *vllm_flags(qwen_dir, keyed_vllm), "--vllm-api-key", KEY, "--port", "8123"]
    assert main(argv) == 0
    reward = served["reward"]
    assert (reward.spec.backend, reward.spec.base_url, reward.spec.api_key) == ("vllm", keyed_vllm.url, KEY)
    assert served["api_key"] == "reward-key" and served["port"] == 8123  # the reward server's own key
    rows = [r for r in ROWS if r["response"]]
    with TestClient(app.create_app(reward)) as client:
        answer = client.post("/score", json={"prompts": [r["prompt"] for r in rows],
                                             "responses": [r["response"] for r in rows]})  # fmt: skip
    assert answer.json()["scores"] == pytest.approx([r["cme"] for r in in_process if r["response"]], abs=1e-5)


def test_checkpoint_names_the_server_never_the_key(qwen_dir, keyed_vllm, rows_file, tmp_path, monkeypatch, capsys):
    real, calls = score_job._score_chunk, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(score_job, "_score_chunk", interrupted)
    out = tmp_path / "scores.jsonl"
    io = ["--input", str(rows_file), "--output", str(out), "--chunk-rows", "2", "--no-progress"]
    argv = ["score", *vllm_flags(qwen_dir, keyed_vllm), "--api-key", KEY, *io]
    assert main(argv) == 130
    checkpoint = json.loads(Path(f"{out}.ckpt.json").read_text())
    options = checkpoint["options"]
    assert (options["backend"], options["base_url"], options["served_model"]) == ("vllm", keyed_vllm.url, None)
    assert not [p for p in tmp_path.iterdir() if KEY in p.read_text(errors="replace")]
    capsys.readouterr()

    assert main(["score", "--verifier", str(qwen_dir), *io]) == 2  # in process: another backend
    assert "backend: 'vllm' then, None now" in capsys.readouterr().err
    assert main([*argv, "--served-model", "other"]) == 2
    assert "served_model: None then, 'other' now" in capsys.readouterr().err

    monkeypatch.setattr(score_job, "_score_chunk", real)
    argv[argv.index(keyed_vllm.url)] = keyed_vllm.url + "/v1/"  # the same server, spelled otherwise
    assert main(argv) == 0
    assert "2 from an earlier run" in capsys.readouterr().out and len(read_jsonl(out)) == len(ROWS)
