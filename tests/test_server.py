"""The reward server (`cme_reward.server.app`): protocol, validation, auth, micro-batching, loopback load."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402

from cme_reward import CrossModelEntropyReward  # noqa: E402
from cme_reward.errors import RequestError  # noqa: E402
from cme_reward.server import app as server  # noqa: E402
from cme_reward.server.app import create_app, serve_in_thread  # noqa: E402
from cme_reward.server.wire import DEFAULT_MISSING_REWARD, strip_special_suffixes  # noqa: E402

USER = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def reward(qwen_dir):
    return CrossModelEntropyReward(qwen_dir, show_progress_bar=False)


@pytest.fixture()
def client(reward):
    with TestClient(create_app(reward)) as c:
        yield c


def chat_prompt(reward, messages) -> str:
    """The prompt as OpenRLHF sends it: rendered by the policy's chat template (here the verifier's own)."""
    return reward.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class Spy:
    """Wraps a reward and records the size of every `score` call."""

    def __init__(self, reward):
        self.reward = reward
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def score(self, prompts, responses):
        with self.lock:
            self.calls.append(len(prompts))
        return self.reward.score(prompts, responses)

    def __call__(self, **kwargs):
        return self.reward(**kwargs)


# ---- protocol ----------------------------------------------------------------------------------------------------


def test_health_counts_pairs(client, reward):
    first = client.get("/health")
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "ok" and body["verifier"] == repr(reward) and body["pairs_scored"] == 0
    client.post("/score", json={"prompts": ["a", "b", "c"], "responses": [" x", " y", " z"]})
    assert client.get("/health").json()["pairs_scored"] == 3


def test_score_text_and_messages_match_direct_scoring(client, reward):
    prompts = ["The capital of France is", USER, "2 + 2 =", USER]
    responses = [
        " Paris.",
        {"role": "assistant", "content": "The sea is blue."},
        "",
        [{"role": "assistant", "content": "Deep."}],
    ]
    answer = client.post("/score", json={"prompts": prompts, "responses": responses})
    assert answer.status_code == 200
    scores = answer.json()["scores"]
    assert scores == reward.score(prompts, responses)
    assert scores[2] is None and all(isinstance(s, float) for i, s in enumerate(scores) if i != 2)


def test_get_reward_one_openrlhf_sample(client, reward):
    prompt = chat_prompt(reward, USER)
    response = "The sea is blue and deep."
    query = prompt + response + "<|im_end|>\n<|endoftext|>"  # decode(..., skip_special_tokens=False) of the sample
    answer = client.post("/get_reward", json={"query": [query], "prompts": [prompt], "labels": [""]})
    assert answer.status_code == 200
    body = answer.json()
    # the context is the templated prompt as plain text; the end-of-turn text is not scored
    expected = reward.score([prompt], [response])
    assert body["rewards"] == expected and body["scores"] == expected
    assert body["extra_logs"] == {"cme": expected, "cme_scored": [1.0]}
    # without stripping, the special tokens would have been scored: a different number
    assert reward.score([prompt], [response + "<|im_end|>\n<|endoftext|>"]) != expected


def test_get_reward_empty_lists(client):
    answer = client.post("/get_reward", json={"query": [], "prompts": [], "labels": []})
    assert answer.status_code == 200
    assert answer.json() == {"rewards": [], "scores": [], "extra_logs": {"cme": [], "cme_scored": []}}
    assert client.post("/score", json={"prompts": [], "responses": []}).json() == {"scores": []}


def test_get_reward_accepts_null_labels(client, reward):
    prompt = chat_prompt(reward, USER)
    body = {"query": [prompt + "Blue."], "prompts": [prompt]}
    expected = client.post("/get_reward", json=body).json()
    answer = client.post("/get_reward", json={**body, "labels": None})
    assert answer.status_code == 200, answer.text
    assert answer.json() == expected and expected["extra_logs"]["cme_scored"] == [1.0]


def test_plain_prompt_warning_once_on_score_never_on_get_reward(qwen_dir, caplog):
    fresh = CrossModelEntropyReward(qwen_dir, show_progress_bar=False)  # its encoder has not warned yet
    prompt = chat_prompt(fresh, USER)
    warning = "A plain-text prompt is scored as raw text"
    with caplog.at_level(logging.WARNING, logger="cme_reward.scoring.formatting"), TestClient(create_app(fresh)) as c:
        for _ in range(2):  # OpenRLHF's prompts arrive templated, as plain text: nothing to warn about
            assert c.post("/get_reward", json={"query": [prompt + "Blue."], "prompts": [prompt]}).status_code == 200
        assert warning not in caplog.text
        for _ in range(2):
            assert c.post("/score", json={"prompts": ["2 + 2 =", "3 + 3 ="], "responses": [" 4", " 6"]}).is_success
    assert caplog.text.count(warning) == 1 and "--as-chat" in caplog.text


def test_get_reward_missing_score_gets_missing_reward(reward):
    prompt = chat_prompt(reward, USER)
    for options, expected in (({}, DEFAULT_MISSING_REWARD), ({"missing_reward": -33.5}, -33.5)):
        with TestClient(create_app(reward, **options)) as c:
            body = c.post("/get_reward", json={"query": [prompt + "<|im_end|>"], "prompts": [prompt]}).json()
        assert body["rewards"] == [expected] and body["extra_logs"]["cme_scored"] == [0.0]


def test_get_reward_custom_strip_suffixes(reward):
    queries = ["Hi there[END]\n", "Hi there[END]<|im_end|>"]
    with TestClient(create_app(reward, strip_suffixes=["[END]"])) as c:
        body = c.post("/get_reward", json={"query": queries, "prompts": ["Hi", "Hi"]}).json()
    # the configured suffix is stripped; the default ones no longer are
    assert body["rewards"] == reward.score(["Hi", "Hi"], [" there", " there[END]<|im_end|>"])
    assert body["rewards"][0] != body["rewards"][1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris.<|im_end|>", "Paris."),
        ("Paris.<|im_end|>\n<|endoftext|>", "Paris."),
        ("Paris.<|eot_id|>", "Paris."),
        ("Paris. </s>", "Paris. "),  # whitespace before a special token belongs to the response
        ("Paris. \n", "Paris. \n"),  # no special token: unchanged
        ("<|im_end|>", ""),
        ("a<|im_end|>b", "a<|im_end|>b"),  # only trailing ones
        ("", ""),
    ],
)
def test_strip_special_suffixes(text, expected):
    assert strip_special_suffixes(text) == expected


# ---- bad requests --------------------------------------------------------------------------------------------------

BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[" * 100_000, 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"responses": ["x"]}', 422, "`prompts`"),
    (b'{"prompts": "abc", "responses": ["x"]}', 422, "`prompts` must be a list"),
    (b'{"prompts": ["a", "b"], "responses": ["x"]}', 422, "same length"),
    (b'{"prompts": ["a", 3], "responses": ["x", "y"]}', 422, "`prompts[1]`"),
    (b'{"prompts": ["a", []], "responses": ["x", "y"]}', 422, "`prompts[1]`"),
    (b'{"prompts": ["a", "b"], "responses": ["x", null]}', 422, "`responses[1]`"),
    (b'{"prompts": [[{"role": "bot", "content": "hi"}]], "responses": ["x"]}', 422, "unknown role"),
    (b'{"prompts": ["a"], "responses": [[{"role": "user", "content": "hi"}]]}', 422, "assistant"),
]
BAD_GET_REWARD = [
    (b'{"prompts": ["a"]}', 422, "`query`"),
    (b'{"query": ["ab"], "prompts": ["a", "b"]}', 422, "same length"),
    (b'{"query": ["ab"], "prompts": ["a"], "labels": ["x", "y"]}', 422, "`labels`"),
    (b'{"query": ["ab"], "prompts": ["a"], "labels": "x"}', 422, "`labels` must be a list"),
    (b'{"query": [["ab"]], "prompts": ["a"]}', 422, "`query[0]`"),
    (b'{"query": ["ab"], "prompts": [[{"role": "user", "content": "a"}]]}', 422, "`prompts[0]`"),
    (b'{"query": ["ab", "zz"], "prompts": ["a", "b"]}', 422, "query[1] does not start with prompts[1]"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), [("/score", *b) for b in BAD] + [
    ("/get_reward", *b) for b in BAD_GET_REWARD])  # fmt: skip
def test_bad_requests_get_4xx_json(client, path, body, status, message, caplog):
    with caplog.at_level(logging.WARNING, logger="cme_reward.server.app"):
        answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert f"{path} refused (HTTP {status}): " in caplog.text and message in caplog.text  # in the server's log too


def test_too_many_pairs_and_body_limit(reward):
    with TestClient(create_app(reward, max_request_pairs=3, max_body_bytes=300)) as c:
        answer = c.post("/score", json={"prompts": ["a"] * 4, "responses": ["b"] * 4})
        assert answer.status_code == 413 and "limit of 3" in answer.json()["error"]
        big = {"prompts": ["a" * 400], "responses": ["b"]}
        answer = c.post("/score", json=big)
        assert answer.status_code == 413 and "limit of 300" in answer.json()["error"]

        def chunks():  # no Content-Length: the size is counted while reading
            yield b'{"prompts": ["'
            yield b"a" * 400
            yield b'"], "responses": ["b"]}'

        answer = c.post("/score", content=chunks())
        assert answer.status_code == 413 and "limit of 300" in answer.json()["error"]
        assert c.post("/score", json={"prompts": ["a"] * 3, "responses": ["b"] * 3}).status_code == 200


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json()
    assert client.get("/score").status_code == 405 and "error" in client.get("/score").json()


def test_api_key(reward):
    body = {"prompts": ["a"], "responses": [" b"]}
    with TestClient(create_app(reward, api_key="s3cret")) as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "s3cret"},
        ):
            answer = c.post("/score", json=body, headers=headers)
            assert answer.status_code == 401 and "API key" in answer.json()["error"]
            assert answer.headers["WWW-Authenticate"] == "Bearer"
            assert c.post("/get_reward", json={"query": [], "prompts": []}, headers=headers).status_code == 401
        ok = c.post("/score", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["scores"] == reward.score(["a"], [" b"])
        assert c.get("/health").status_code == 200  # no auth on health


def test_unexpected_error_is_500_json_with_traceback(reward, caplog):
    class Broken:
        def score(self, prompts, responses):
            raise RuntimeError("GPU on fire")

    with caplog.at_level(logging.ERROR, logger=server.__name__), TestClient(create_app(Broken())) as c:
        answer = c.post("/score", json={"prompts": ["a"], "responses": ["b"]})
    assert answer.status_code == 500 and "RuntimeError" in answer.json()["error"]
    assert "GPU on fire" not in answer.json()["error"]  # internals stay in the log
    assert any(r.exc_info and "GPU on fire" in str(r.exc_info[1]) for r in caplog.records)


def test_non_finite_scores_become_null(reward):
    class NonFinite:  # strict `score` raises; the TRL entry point scores the bad pair None
        def score(self, prompts, responses):
            raise FloatingPointError("the verifier produced non-finite log-probs for pair 0")

        def __call__(self, prompts, completions):
            return [None] * len(prompts)

    with TestClient(create_app(NonFinite())) as c:
        assert c.post("/score", json={"prompts": ["a"], "responses": ["b"]}).json() == {"scores": [None]}


@pytest.mark.parametrize(
    "options",
    [{"max_batch_pairs": 0}, {"max_request_pairs": 1.5}, {"batch_wait_ms": -1}, {"missing_reward": float("nan")},
     {"missing_reward": float("-inf")}, {"strip_suffixes": "</s>"}],
)  # fmt: skip
def test_create_app_rejects_bad_options(reward, options):
    with pytest.raises((ValueError, TypeError), match=next(iter(options))):
        create_app(reward, **options)


def test_serve_warns_on_public_address_without_key(reward, monkeypatch, caplog):
    import uvicorn

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append((app, kw)))
    monkeypatch.delenv("CME_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger=server.__name__):
        server.serve(reward)
        assert runs[-1][1]["host"] == "127.0.0.1" and runs[-1][1]["access_log"] is False and not caplog.records
        server.serve(reward, host="0.0.0.0", port=9000)
        assert runs[-1][1]["port"] == 9000 and "without an API key" in caplog.text
    caplog.clear()
    monkeypatch.setenv("CME_API_KEY", "from-env")
    with caplog.at_level(logging.WARNING, logger=server.__name__):
        server.serve(reward, host="0.0.0.0")
    assert not caplog.records
    with TestClient(runs[-1][0]) as c:  # the key from the environment is enforced
        assert c.post("/score", json={"prompts": [], "responses": []}).status_code == 401
        headers = {"Authorization": "Bearer from-env"}
        assert c.post("/score", json={"prompts": [], "responses": []}, headers=headers).status_code == 200


# ---- micro-batching ------------------------------------------------------------------------------------------------


def _pairs(n: int) -> tuple[list[str], list[str]]:
    words = ["sea", "fox", "capital", "poem", "code", "Paris", "blue", "judge"]
    prompts = [f"Tell me about the {words[i % len(words)]} number {i}." for i in range(n)]
    responses = [f" It is {words[(3 * i + 1) % len(words)]} and {i % 7} times deep." for i in range(n)]
    return prompts, responses


def test_concurrent_requests_are_batched_and_isolated(reward):
    spy = Spy(reward)
    app = create_app(spy, max_batch_pairs=6, batch_wait_ms=200)
    prompts, responses = _pairs(12)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            good = [c.post("/score", json={"prompts": [p], "responses": [r]}) for p, r in zip(prompts, responses)]
            bad = c.post("/score", json={"prompts": [[{"role": "bot", "content": "x"}]], "responses": ["y"]})
            return await asyncio.gather(*good, bad)

    answers = asyncio.run(main())
    *good, bad = answers
    assert bad.status_code == 422 and "unknown role" in bad.json()["error"]
    assert all(a.status_code == 200 for a in good)
    got = [a.json()["scores"][0] for a in good]
    assert got == pytest.approx(reward.score(prompts, responses), abs=1e-4)
    # 13 one-pair requests in a few calls, each of at most 6 pairs (a failed merged call is retried per request)
    assert max(spy.calls) <= 6 and len([c for c in spy.calls if c > 1]) >= 2


class Gated:
    """A fake reward: `score(prompts, responses)` records each call's pairs and answers `prompt|response` codes; while
    `gate` is clear, the first call blocks (a batch "being scored"), so that the test can queue requests meanwhile."""

    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def score(self, prompts, responses):
        self.calls.append(list(zip(prompts, responses)))
        self.entered.set()
        assert self.gate.wait(30)
        if any(r == "bad" for r in responses):
            raise ValueError("a bad response")
        return [f"{p}|{r}" for p, r in zip(prompts, responses)]


async def _while_busy(batcher, reward: Gated, requests: list[tuple[list, list]]) -> list:
    """Start one request ("first"), queue `requests` while it is being scored, then let scoring go on; returns the
    answers of `requests` (an exception for a failed one)."""
    first = asyncio.ensure_future(batcher.score(["first"], ["x"]))
    while not reward.entered.is_set():
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(batcher.score(p, r)) for p, r in requests]
    await asyncio.sleep(0.01)  # every request is queued
    reward.gate.set()
    answers = await asyncio.gather(first, *queued, return_exceptions=True)
    await batcher.close()
    return answers[1:]


def test_batcher_merges_requests_for_one_prompt():
    """Six one-sample requests for three prompts, queued while a batch is scored, with room for three pairs per call:
    each prompt's samples go in one call (in arrival order three calls would mix them), the oldest prompt first."""
    from cme_reward.server.batcher import MicroBatcher

    reward = Gated()
    batcher = MicroBatcher(reward, max_batch_pairs=3, batch_wait_ms=0)
    order = [("p1", "a"), ("p2", "a"), ("p3", "a"), ("p1", "b"), ("p2", "b"), ("p1", "c")]
    answers = asyncio.run(_while_busy(batcher, reward, [([p], [r]) for p, r in order]))
    assert answers == [[f"{p}|{r}"] for p, r in order]
    assert reward.calls[1:] == [
        [("p1", "a"), ("p1", "b"), ("p1", "c")],
        [("p2", "a"), ("p2", "b"), ("p3", "a")],
    ]
    assert batcher.batches == 3 and batcher.pairs_scored == 7


def test_batcher_keeps_each_requests_order_and_isolates_a_bad_pair():
    """Multi-pair requests whose prompts interleave: each request gets its own scores in its own order; a request
    with a bad pair fails alone (422) and the others of its batch are scored."""
    from cme_reward.server.batcher import MicroBatcher

    reward = Gated()
    batcher = MicroBatcher(reward, batch_wait_ms=0)
    requests = [
        (["q2", "q1", "q2"], ["r1", "r2", "r3"]),
        (["q1", "q3"], ["r4", "bad"]),
        (["q3", "q2", "q1", "q1"], ["r5", "r6", "r7", "r8"]),
        (["q2"], ["r9"]),
    ]
    answers = asyncio.run(_while_busy(batcher, reward, requests))
    assert isinstance(answers[1], RequestError) and answers[1].status == 422
    for k in (0, 2, 3):
        assert answers[k] == [f"{p}|{r}" for p, r in zip(*requests[k])]
    assert len(reward.calls) == 1 + 1 + 4  # the first, the merged call that failed, then each request alone


def test_batcher_dispatches_at_once_when_idle():
    """A lone request, and requests queued while a batch was scored, go out without waiting (here the wait allowed
    is 10 s); a later lone request waits for company (the recent batch had four pairs) and goes with it."""
    from cme_reward.server.batcher import MicroBatcher

    async def main():
        reward = Gated()
        reward.gate.set()
        batcher = MicroBatcher(reward, batch_wait_ms=10_000)
        assert await asyncio.wait_for(batcher.score(["p"], ["a"]), 5) == ["p|a"]
        assert await asyncio.wait_for(batcher.score(["p"], ["b"]), 5) == ["p|b"]
        reward.gate.clear()
        reward.entered.clear()
        busy = asyncio.ensure_future(batcher.score(["p"], ["c"]))
        while not reward.entered.is_set():
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(batcher.score([f"p{k}"], ["d"])) for k in range(4)]
        await asyncio.sleep(0.01)
        reward.gate.set()
        await asyncio.wait_for(asyncio.gather(busy, *queued), 5)
        assert [len(c) for c in reward.calls] == [1, 1, 1, 4]
        lone = asyncio.ensure_future(batcher.score(["s"], ["1"]))
        await asyncio.sleep(0.05)
        assert len(reward.calls) == 4  # waiting for company
        company = [asyncio.ensure_future(batcher.score(["s"], [str(k)])) for k in (2, 3, 4)]
        await asyncio.wait_for(asyncio.gather(lone, *company), 5)  # four pairs queued: no need to wait longer
        assert [len(c) for c in reward.calls] == [1, 1, 1, 4, 4]
        await batcher.close()

    asyncio.run(main())


def test_batcher_skips_a_request_whose_client_went_away():
    from cme_reward.server.batcher import MicroBatcher

    async def main():
        reward = Gated()
        batcher = MicroBatcher(reward, batch_wait_ms=0)
        first = asyncio.ensure_future(batcher.score(["p"], ["a"]))
        while not reward.entered.is_set():
            await asyncio.sleep(0.001)
        gone = asyncio.ensure_future(batcher.score(["p"], ["gone"]))
        kept = asyncio.ensure_future(batcher.score(["p"], ["kept"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        reward.gate.set()
        assert await asyncio.wait_for(asyncio.gather(first, kept), 5) == [["p|a"], ["p|kept"]]
        await batcher.close()
        return reward.calls

    assert asyncio.run(main()) == [[("p", "a")], [("p", "kept")]]


# Load clients run in a child process: client threads in the server's process would compete with its event loop for
# the GIL and measure that contention instead of the server (OpenRLHF's clients live in other processes too). They use
# keep-alive `http.client` connections: httpx's per-request CPU cost, times 32 threads, saturated 2 cores on its own.
LOAD_CLIENT = """
import http.client, json, sys, threading, time, urllib.parse
job = json.load(sys.stdin)
url = urllib.parse.urlsplit(job["url"])
bodies = [json.dumps(b).encode() for b in job["bodies"]]
results, errors = {}, []
indices, lock = iter(range(len(bodies))), threading.Lock()
def client():
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    while True:
        with lock:
            i = next(indices, None)
        if i is None or time.perf_counter() > deadline:
            return
        try:
            conn.request("POST", url.path, body=bodies[i], headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"HTTP {answer.status}: {data[:200]!r}")
            results[i] = json.loads(data)["rewards"][0]
        except Exception as err:
            errors.append(repr(err))
            conn.close()
client_threads = [threading.Thread(target=client, daemon=True) for _ in range(job["clients"])]
start = time.perf_counter()
deadline = start + job["max_seconds"]
for t in client_threads:
    t.start()
for t in client_threads:
    t.join(job["max_seconds"] + 30)
seconds = time.perf_counter() - start
json.dump({"seconds": seconds, "results": [results.get(i) for i in range(len(bodies))], "errors": errors}, sys.stdout)
"""


def run_load(url: str, bodies: list[dict], clients: int, max_seconds: float = 30.0) -> dict:
    job = json.dumps({"url": url, "bodies": bodies, "clients": clients, "max_seconds": max_seconds})
    done = subprocess.run(
        [sys.executable, "-c", LOAD_CLIENT], input=job, capture_output=True, text=True, timeout=max_seconds + 60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_loopback_load_is_micro_batched(reward):
    """32 concurrent clients, one sample per request, over real TCP to uvicorn in a thread: no errors, every reward
    equal to direct scoring, and the requests scored in a few batches (the throughput is printed, not asserted: the
    benchmark `benchmarks.serve_load` measures it on a quiet machine)."""
    n_requests = 256
    prompts, responses = _pairs(n_requests)
    prompts = [chat_prompt(reward, [{"role": "user", "content": p}]) for p in prompts]
    bodies = [{"query": [p + r + "<|im_end|>"], "prompts": [p], "labels": [""]} for p, r in zip(prompts, responses)]
    expected = reward.score(prompts, responses)

    app = create_app(reward)
    with serve_in_thread(app) as url:
        run_load(url + "/get_reward", bodies[:8], clients=1)  # warm-up
        sequential = run_load(url + "/get_reward", bodies, clients=1)
        batches_before = app.state.batcher.batches
        concurrent = run_load(url + "/get_reward", bodies, clients=32)
        batches = app.state.batcher.batches - batches_before

    for run in (sequential, concurrent):
        assert not run["errors"]
        assert run["results"] == pytest.approx(expected, abs=1e-4)
    speedup = sequential["seconds"] / concurrent["seconds"]
    print(f"sequential {n_requests / sequential['seconds']:.0f} req/s, concurrent "
          f"{n_requests / concurrent['seconds']:.0f} req/s ({speedup:.1f}x), {batches} batches")  # fmt: skip
    assert batches < n_requests / 4  # micro-batching is what makes it faster


SLOW_SERVER = """
import logging, sys, time
from cme_reward.server.app import serve
class Slow:
    def score(self, prompts, responses):
        time.sleep(1.5)
        return [float(len(r)) for r in responses]
logging.basicConfig(level=logging.INFO)
serve(Slow(), port=int(sys.argv[1]), batch_wait_ms=0)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_finishes_the_request_in_flight():
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port)], stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:  # wait for the server (importing torch can take a while on a busy machine)
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        answers = []
        request = threading.Thread(
            target=lambda: answers.append(
                httpx.post(url + "/score", json={"prompts": ["a"], "responses": ["xyz"]}, timeout=30)
            )
        )
        request.start()
        time.sleep(0.5)  # the batch is being scored
        proc.send_signal(signal.SIGTERM)
        request.join(30)
        # uvicorn re-raises the signal once shut down: the conventional "killed by SIGTERM" status
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert answers and answers[0].status_code == 200 and answers[0].json() == {"scores": [3.0]}


def test_missing_extra_is_a_clear_import_error(reward, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"uvicorn is missing.*cme-reward\[serve\]"):
        create_app(reward)
