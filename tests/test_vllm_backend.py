"""The vLLM scoring backend against a loopback fake of `vllm serve` (tests/fake_vllm.py), with fault injection. Against
a real server: tests/test_vllm_real.py."""

from __future__ import annotations

import asyncio
import logging
import pickle
import random
import socket
import sys
import time

import pytest
import torch

pytest.importorskip("httpx")

from fake_vllm import FakeVLLMServer  # noqa: E402
from tiny_models import build_tokenizer  # noqa: E402

from cme_reward.backends.vllm import VLLMBackend, normalize_base_url  # noqa: E402
from cme_reward.errors import RemoteError  # noqa: E402
from cme_reward.reference import reference_token_logprobs  # noqa: E402

PROMPTS = ["The quick brown fox", "Paris is the capital of", "def add(a, b):", "1 + 1 ="]
RESPONSES = [" jumps over the lazy dog.", " France.", "\n    return a + b\n", " 2", " Berlin", " naïve café 🙂"]


@pytest.fixture(scope="module")
def fake_server(qwen_dir):
    with FakeVLLMServer(qwen_dir) as server:
        yield server


@pytest.fixture
def server(fake_server):
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
def make_backend(server):
    backends = []

    def make(**kwargs):
        kwargs.setdefault("backoff", 0.001)
        backend = VLLMBackend(server.url, **kwargs)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def text_pairs(tokenizer, n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        context = tokenizer(rng.choice(PROMPTS))["input_ids"]
        response = tokenizer(rng.choice(RESPONSES), add_special_tokens=False)["input_ids"]
        pairs.append((context, response[: rng.randint(1, len(response))]))
    return pairs


def completion_requests(server) -> list[dict]:
    return [r for r in server.requests if r["path"] == "/v1/completions"]


# ---- requests and answers -------------------------------------------------------------------------------------


def test_request_format_and_auth(qwen_dir):
    with FakeVLLMServer(qwen_dir, api_key="sekrit") as server:
        pairs = text_pairs(server.tokenizer, 3)
        with VLLMBackend(server.url + "/v1/", api_key="sekrit", pairs_per_request=2) as backend:
            assert backend.check(server.tokenizer) == str(qwen_dir)
            backend.score(pairs)
        with VLLMBackend(server.url) as anonymous, pytest.raises(RemoteError, match="401.*Unauthorized"):
            anonymous.check(server.tokenizer)
    sent = completion_requests(server)
    sent.sort(key=lambda r: -len(r["body"]["prompt"]))  # the two requests were in flight together
    assert [len(r["body"]["prompt"]) for r in sent] == [2, 1]
    prompts = [p for r in sent for p in r["body"]["prompt"]]
    assert prompts == [c + r for c, r in pairs]  # token-id prompts: context + response, exactly, in order
    for request in sent:
        body = request["body"]
        assert {k: body[k] for k in ("model", "max_tokens", "prompt_logprobs", "temperature")} == {
            "model": str(qwen_dir), "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0,
        }  # fmt: skip
        assert request["headers"]["Authorization"] == "Bearer sekrit"


def test_scores_match_reference_and_in_process_reward(server, make_backend, qwen_dir):
    from cme_reward import CrossModelEntropyReward

    tok = server.tokenizer
    prompts, responses = PROMPTS * 2, RESPONSES + RESPONSES[:2]
    pairs = [(tok(p)["input_ids"], tok(r, add_special_tokens=False)["input_ids"]) for p, r in zip(prompts, responses)]
    backend = make_backend(pairs_per_request=3)
    assert backend.check(tok, str(qwen_dir)) == str(qwen_dir)
    seen = []
    got = backend.score(pairs, progress=seen.append)
    assert sum(seen) == sum(len(r) for _, r in pairs) and len(seen) == 3
    for (context, response), lp in zip(pairs, got):
        assert lp.dtype == torch.float32 and lp.shape == (len(response),) and lp.device.type == "cpu"
        torch.testing.assert_close(lp, reference_token_logprobs(server.model, context, response), atol=1e-5, rtol=0)
    reward = CrossModelEntropyReward(qwen_dir, device="cpu")
    for (context, response), lp, scores in zip(pairs, got, reward.score_tokens(prompts, responses)):
        assert scores.token_ids == response and scores.context_length == len(context)  # the very same pairs
        torch.testing.assert_close(lp, torch.tensor(scores.logprobs), atol=1e-5, rtol=0)
    assert backend.stats.passes == 3 and backend.stats.retries == 0
    assert backend.stats.tokens_forward == sum(len(c) + len(r) for c, r in pairs)
    assert backend.stats.tokens_scored == sum(seen) and backend.stats.seconds > 0


def test_order_restored_duplicates_and_empty_responses(server, make_backend):
    server.shuffle_choices = True
    tok = server.tokenizer
    pairs = text_pairs(tok, 12, seed=1)
    pairs[5] = pairs[2]  # a duplicate is scored once
    pairs[7] = (pairs[7][0], [])  # nothing to score
    got = make_backend(pairs_per_request=5).score(pairs)
    for (context, response), lp in zip(pairs, got):
        torch.testing.assert_close(lp, reference_token_logprobs(server.model, context, response), atol=1e-5, rtol=0)
    sent = [p for r in completion_requests(server) for p in r["body"]["prompt"]]
    assert sorted(map(tuple, sent)) == sorted({tuple(c + r) for c, r in pairs if r}) and got[7].shape == (0,)
    assert make_backend().score([]) == []


def test_token_cap_splits_requests(server, make_backend):
    pairs = text_pairs(server.tokenizer, 6, seed=2)
    lengths = [len(c) + len(r) for c, r in pairs]
    make_backend(tokens_per_request=max(lengths) + 1).score(pairs)
    sent = completion_requests(server)
    assert all(sum(map(len, r["body"]["prompt"])) <= max(lengths) + 1 for r in sent)
    assert sorted(tuple(p) for r in sent for p in r["body"]["prompt"]) == sorted({tuple(c + r) for c, r in pairs})


def test_several_requests_in_flight_over_reused_connections(server, make_backend):
    server.delay = 0.3
    pairs = text_pairs(server.tokenizer, 8, seed=3)
    backend = make_backend(max_concurrency=4, pairs_per_request=1)
    start = time.perf_counter()
    got = backend.score(pairs)
    elapsed = time.perf_counter() - start
    assert 2 <= server.max_in_flight <= 4 and elapsed < 8 * 0.3 * 0.75
    backend.score(pairs[:4])  # the pooled connections are reused
    assert len({r["port"] for r in completion_requests(server)}) <= 4 < len(completion_requests(server))
    assert all(lp.shape == (len(r),) for (_, r), lp in zip(pairs, got))


def test_works_inside_a_running_event_loop(server, make_backend):
    pairs = text_pairs(server.tokenizer, 4, seed=4)
    backend = make_backend(pairs_per_request=1)

    async def reward_path():  # like TRL's async reward functions: called while the loop is running
        return backend.score(pairs)

    for (context, response), lp in zip(pairs, asyncio.run(reward_path())):
        torch.testing.assert_close(lp, reference_token_logprobs(server.model, context, response), atol=1e-5, rtol=0)


def test_neg_inf_comes_back_as_neg_inf(server, make_backend):
    tok = server.tokenizer
    context, response = (
        tok("The quick brown fox")["input_ids"],
        tok(" jumps over", add_special_tokens=False)["input_ids"],
    )
    server.neg_inf_tokens = [response[1]]
    raw = pytest.importorskip("httpx").post(
        server.url + "/v1/completions", json={"prompt": [context + response], "max_tokens": 1, "prompt_logprobs": 0}
    )
    assert raw.json()["choices"][0]["prompt_logprobs"][len(context) + 1][str(response[1])]["logprob"] == -9999.0
    lp = make_backend().score([(context, response)])[0]
    assert lp[1] == -torch.inf and torch.isfinite(lp[[0, *range(2, len(response))]]).all()


@pytest.mark.parametrize("problem", ["missing token", "short list", "missing choice"])
def test_malformed_answer_names_the_pair(server, make_backend, problem):
    pairs = text_pairs(server.tokenizer, 3, seed=5)

    def mutate(choice):
        if choice["index"] == 1:
            entries = choice["prompt_logprobs"]
            if problem == "missing token":
                entries[-1] = {"1": {"logprob": -1.0, "rank": 1, "decoded_token": "x"}}
            elif problem == "short list":
                entries.pop()
            else:
                choice["index"] = 7

    server.mutate = mutate
    match = "choices" if problem == "missing choice" else "pair 1"
    with pytest.raises(RuntimeError, match=match):
        make_backend().score(pairs)


# ---- failures and retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["fail_first", "drop_first"])
def test_retries_then_success(server, make_backend, failure, caplog):
    setattr(server, failure, 2)  # 503 twice, or two dropped connections
    pairs = text_pairs(server.tokenizer, 2, seed=6)
    backend = make_backend(max_retries=2)
    with caplog.at_level(logging.WARNING, logger="cme_reward.http"):
        got = backend.score(pairs)
    assert len(completion_requests(server)) == 3 and backend.stats.retries == 2 and backend.stats.passes == 1
    assert "retry 2 of 2" in caplog.text
    for (context, response), lp in zip(pairs, got):
        torch.testing.assert_close(lp, reference_token_logprobs(server.model, context, response), atol=1e-5, rtol=0)


def test_timeout_is_retried(server, make_backend):
    server.delay, server.delay_first = 1.0, 1
    pairs = text_pairs(server.tokenizer, 1, seed=7)
    backend = make_backend(timeout=0.25, max_retries=1)
    assert backend.score(pairs)[0].shape == (len(pairs[0][1]),) and backend.stats.retries == 1


def test_429_is_retried_other_4xx_is_not(server, make_backend):
    server.fail_first, server.fail_status = 1, 429
    assert len(make_backend(max_retries=1).score(text_pairs(server.tokenizer, 1))) == 1
    server.reset()
    with pytest.raises(RemoteError, match=r"HTTP 400.*Token id 99999 is out of vocabulary") as err:
        make_backend(max_retries=3).score([([1, 2], [99999])])
    assert err.value.status_code == 400 and len(completion_requests(server)) == 1  # no retry


def test_connection_error_after_the_last_try(server, make_backend):
    server.fail_first = 100
    with pytest.raises(ConnectionError, match=rf"{server.url}.*after 3 tries.*HTTP 503"):
        make_backend(max_retries=2).score(text_pairs(server.tokenizer, 1))
    assert len(completion_requests(server)) == 3
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with VLLMBackend(dead, max_retries=1, backoff=0.001) as backend, pytest.raises(ConnectionError, match="2 tries"):
        backend.check(server.tokenizer)


def test_one_failing_request_fails_the_call(server, make_backend):
    pairs = text_pairs(server.tokenizer, 4, seed=8)
    pairs[2] = ([1, 2], [99999])
    with pytest.raises(RemoteError, match="out of vocabulary"):
        make_backend(pairs_per_request=1, max_concurrency=2).score(pairs)


# ---- probing --------------------------------------------------------------------------------------------------


def test_model_selection(server, make_backend, qwen_dir):
    tok = server.tokenizer
    server.served = ["verifier"]
    assert make_backend().check(tok) == "verifier"  # the only served model
    assert make_backend().check(tok, str(qwen_dir)) == "verifier"  # matched through the card's root
    with pytest.raises(ValueError, match=r"serves \['verifier'\], not the verifier 'other/model'.*model="):
        make_backend().check(tok, "other/model")
    assert make_backend(model="verifier").check(tok, "other/model") == "verifier"  # explicit choice wins
    with pytest.raises(ValueError, match=r"`model` 'nope' is not served.*\['verifier'\]"):
        make_backend(model="nope").check(tok)
    server.served = ["a", "b"]
    with pytest.raises(ValueError, match=r"several models \['a', 'b'\]"):
        make_backend().check(tok)
    backend = make_backend(model="b")
    assert backend.check(tok) == "b" and backend.max_model_len == server.max_model_len
    backend.score(text_pairs(tok, 1))
    assert completion_requests(server)[-1]["body"]["model"] == "b"


def test_model_resolved_without_check(server, make_backend):
    backend = make_backend()
    backend.score(text_pairs(server.tokenizer, 1))
    assert completion_requests(server)[0]["body"]["model"] == server.served[0] == backend.served_model


def test_tokenizer_mismatch(server, make_backend, caplog):
    server.tokenize_tokenizer = build_tokenizer(vocab_size=300)
    with pytest.raises(ValueError, match="tokenizer .* differs from the local verifier tokenizer"):
        make_backend().check(server.tokenizer)
    server.tokenize_tokenizer, server.has_tokenize = None, False
    with caplog.at_level(logging.WARNING, logger="cme_reward.backends.vllm"):
        make_backend().check(server.tokenizer)
    assert "no /tokenize endpoint" in caplog.text


def test_pair_longer_than_max_model_len(server, make_backend):
    backend = make_backend()
    backend.check(server.tokenizer)
    with pytest.raises(ValueError, match=r"pairs\[1\] has 512 tokens.*max_model_len 512"):
        backend.score([([1], [2]), ([1] * 500, [2] * 12)])
    assert not completion_requests(server)


@pytest.mark.parametrize(
    "bad", ["localhost:8000", "127.0.0.1", "ftp://host:1", "http://", "http://host/api", "http://host:99999",
            "http://host:8000/v1/completions", "http://host/?x=1", None, 8000],
)  # fmt: skip
def test_bad_base_url(bad):
    with pytest.raises(ValueError, match="base_url"):
        VLLMBackend(bad)


def test_good_base_urls():
    for url in ("http://127.0.0.1:8000", "http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1", "http://h:1/v1/"):
        assert normalize_base_url(url) == url.split("/v1")[0].rstrip("/")
    assert normalize_base_url("https://[::1]:443/v1") == "https://[::1]:443"


@pytest.mark.parametrize(
    "kwargs", [{"max_concurrency": 0}, {"max_retries": -1}, {"pairs_per_request": 0}, {"timeout": 0},
               {"tokens_per_request": 1.5}, {"timeout": float("nan")}, {"model": ""}],
)  # fmt: skip
def test_bad_options(kwargs):
    name = next(iter(kwargs))
    with pytest.raises((TypeError, ValueError), match=name):
        VLLMBackend("http://127.0.0.1:8000", **kwargs)


def test_bad_pairs(make_backend):
    backend = make_backend()
    with pytest.raises(ValueError, match=r"pairs\[0\] has an empty context"):
        backend.score([([], [1])])
    with pytest.raises(ValueError, match=r"pairs\[1\].*token ids"):
        backend.score([([1], [2]), ([1], ["a"])])


def test_supports_entropy_pickle_and_missing_httpx(server, make_backend, monkeypatch):
    backend = make_backend()
    assert backend.capabilities.entropy is False
    pairs = text_pairs(server.tokenizer, 2, seed=9)
    before = backend.score(pairs)
    clone = pickle.loads(pickle.dumps(backend))  # e.g. AsyncGRPO's reward child process
    for a, b in zip(before, clone.score(pairs)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    clone.close()
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ImportError, match=r"pip install"):
        VLLMBackend(server.url)
