"""The OpenRLHF and verl adapters (`cme_reward.integrations`), over a loopback server and in process, loaded by file
path as the trainers load them."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from cme_reward import CrossModelEntropyReward
from cme_reward.errors import RemoteError, UnreachableError
from cme_reward.http import JSONClient
from cme_reward.integrations import env as env_module
from cme_reward.integrations import openrlhf_reward, verl_reward
from cme_reward.server import wire

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
torch = pytest.importorskip("torch")

from cme_reward.server.app import create_app, serve_in_thread  # noqa: E402

USER = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def reward(qwen_dir):
    return CrossModelEntropyReward(qwen_dir, show_progress_bar=False)


@pytest.fixture(scope="module")
def url(reward):
    with serve_in_thread(create_app(reward)) as base:
        yield base


@pytest.fixture()
def env(monkeypatch, qwen_dir):
    """A clean environment: no server URL, no key, the tiny verifier for in-process scoring, no cached reward."""
    for name in ("CME_REWARD_URL", "CME_API_KEY", "CME_MISSING_REWARD", "CME_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CME_VERIFIER", str(qwen_dir))
    monkeypatch.setattr(env_module, "_env_reward", None)
    return monkeypatch


def load_by_path(module) -> object:
    """Load an adapter the way OpenRLHF / verl do: from its file, outside the package."""
    spec = importlib.util.spec_from_file_location(f"loaded_{module.__name__.rsplit('.', 1)[-1]}", module.__file__)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def openrlhf_sample(reward, response: str) -> tuple[str, str]:
    prompt = reward.tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    return prompt + response + "<|im_end|>", prompt


# ---- OpenRLHF ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["server", "in_process"])
def test_openrlhf_reward_func(reward, url, env, mode):
    if mode == "server":
        env.setenv("CME_REWARD_URL", url)
    module = load_by_path(openrlhf_reward)
    responses = ["The sea is blue.", ""]
    samples = [openrlhf_sample(reward, r) for r in responses]
    out = {"rewards": [], "cme_scored": []}
    for query, prompt in samples:  # OpenRLHF: one sample per call
        answer = module.reward_func([query], [prompt], ["label"])
        assert isinstance(answer["rewards"], torch.Tensor) and answer["rewards"].shape == (1,)
        assert torch.equal(answer["scores"], answer["rewards"])
        out["rewards"].append(answer["rewards"].item())
        out["cme_scored"].append(answer["extra_logs"]["cme_scored"].item())
    direct = reward.score([samples[0][1]], [responses[0]])[0]  # the templated prompt, as plain text
    assert out["rewards"] == [pytest.approx(direct, abs=1e-5), wire.DEFAULT_MISSING_REWARD]
    assert out["cme_scored"] == [1.0, 0.0]
    assert module.reward_func([], [], [])["rewards"].shape == (0,)


@pytest.mark.parametrize("mode", ["server", "in_process"])
def test_openrlhf_prefix_mismatch_is_reported(url, env, mode):
    if mode == "server":
        env.setenv("CME_REWARD_URL", url)
        with pytest.raises(RemoteError, match=r"422.*query\[0\] does not start with prompts\[0\]"):
            openrlhf_reward.reward_func(["Hello there"], ["Bye"], [""])
    else:
        with pytest.raises(ValueError, match=r"query\[0\] does not start with prompts\[0\]"):
            openrlhf_reward.reward_func(["Hello there"], ["Bye"], [""])


def test_in_process_needs_a_verifier(env):
    env.delenv("CME_VERIFIER")
    with pytest.raises(RuntimeError, match="CME_REWARD_URL.*CME_VERIFIER"):
        openrlhf_reward.reward_func(["ab"], ["a"], [""])


def test_missing_reward_from_env(reward, env):
    env.setenv("CME_MISSING_REWARD", "-7.5")
    query, prompt = openrlhf_sample(reward, "")
    assert openrlhf_reward.reward_func([query], [prompt])["rewards"].tolist() == [-7.5]
    env.setenv("CME_MISSING_REWARD", "lots")
    with pytest.raises(ValueError, match="CME_MISSING_REWARD"):
        openrlhf_reward.reward_func([query], [prompt])


def test_client_sends_api_key(reward, env):
    with serve_in_thread(create_app(reward, api_key="k3y")) as base:
        env.setenv("CME_REWARD_URL", base)
        query, prompt = openrlhf_sample(reward, "Blue.")
        with pytest.raises(RemoteError, match="401"):
            openrlhf_reward.reward_func([query], [prompt])
        env.setenv("CME_API_KEY", "k3y")
        got = openrlhf_reward.reward_func([query], [prompt])["rewards"].item()
    assert got == pytest.approx(reward.score([prompt], ["Blue."])[0], abs=1e-5)


def test_client_retries_then_gives_up():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = JSONClient(f"http://127.0.0.1:{port}", max_retries=2, backoff=0.01, timeout=2)
    with pytest.raises(UnreachableError, match="after 3 tries"):
        client.request("POST", "/score", {})
    assert client.retries == 2
    client = JSONClient(f"http://127.0.0.1:{port}", max_retries=1, backoff=0.01)
    with pytest.raises(UnreachableError, match="after 2 tries"):
        asyncio.run(client.arequest("POST", "/score", {}))


# ---- verl ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["compute_score", "compute_score_async"])
@pytest.mark.parametrize("mode", ["server", "server_kwarg", "in_process"])
def test_verl_compute_score(reward, url, env, mode, entry):
    if mode == "server":
        env.setenv("CME_REWARD_URL", url)
    kwargs = {"url": url} if mode == "server_kwarg" else {}
    module = load_by_path(verl_reward)
    compute = getattr(module, entry)
    prompts = [USER, "The capital of France is", USER]
    responses = ["The sea is deep.", " Paris.", ""]
    calls = [
        lambda p=p, r=r, i=i: compute("d", r, "", {"prompt": p, "index": i}, reward_router_address=None, **kwargs)
        for i, (p, r) in enumerate(zip(prompts, responses))
    ]
    if entry == "compute_score":  # verl's NaiveRewardManager and main_eval call it synchronously
        assert not asyncio.iscoroutinefunction(compute)
        results = [call() for call in calls]
    else:  # verl's reward loop awaits one call per sample, many at once
        assert asyncio.iscoroutinefunction(compute)

        async def main():
            return await asyncio.gather(*(call() for call in calls))

        results = asyncio.run(main())
    direct = reward.score(prompts[:2], responses[:2])
    assert [r["score"] for r in results[:2]] == pytest.approx(direct, abs=1e-5)
    assert results[2] == {"score": wire.DEFAULT_MISSING_REWARD, "cme_scored": 0.0}
    assert [r["cme_scored"] for r in results[:2]] == [1.0, 1.0]


def test_verl_missing_reward_kwarg(url, env):
    result = verl_reward.compute_score("d", "", "", {"prompt": "Hi"}, url=url, missing_reward=-3.0)
    assert result == {"score": -3.0, "cme_scored": 0.0}


@pytest.mark.parametrize("extra_info", [None, {}, {"question": "Hi"}, {"prompt": 3}, {"prompt": []}])
def test_verl_needs_the_prompt_in_extra_info(env, extra_info):
    with pytest.raises(ValueError, match=r"extra_info\['prompt'\]"):
        verl_reward.compute_score("d", "x", "", extra_info)
    with pytest.raises(ValueError, match=r"extra_info\['prompt'\]"):
        asyncio.run(verl_reward.compute_score_async("d", "x", "", extra_info))


def test_verl_prompt_from_numpy_array():
    np = pytest.importorskip("numpy")
    messages = np.array([{"role": "user", "content": "Hi"}], dtype=object)  # a parquet round trip
    assert verl_reward.prompt_of({"prompt": messages}) == [{"role": "user", "content": "Hi"}]
