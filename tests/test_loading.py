"""Loading and placing the verifier: device and dtype rules, GGUF paths, safe defaults (no pickle weights, no remote
code unless asked), model objects."""

from __future__ import annotations

import logging
import types

import pytest
import torch
from conftest import reload
from tiny_models import load_tokenizer
from transformers import AutoModelForCausalLM

from cme_reward import CrossModelEntropyReward, VerifierSpec
from cme_reward.verifier.loading import context_size, load_verifier, resolve_device, resolve_dtype, split_gguf

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


@no_cuda
def test_resolve_device():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="`device` must be like 'cpu', 'cuda' or 'cuda:1', got 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="asks for CUDA, but torch sees no CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        (None, "cpu", torch.float32),
        ("auto", "cpu", torch.float32),
        (None, "cuda", torch.bfloat16),
        ("auto", "cuda", torch.bfloat16),
        ("float16", "cpu", torch.float16),
        ("torch.bfloat16", "cpu", torch.bfloat16),
        (torch.float32, "cuda", torch.float32),
    ],
)
def test_resolve_dtype(dtype, device, expected):
    assert resolve_dtype(dtype, torch.device(device)) == expected


@pytest.mark.parametrize("dtype", ["int8", torch.int8, "fp32", 16])
def test_bad_dtype_lists_the_allowed_ones(dtype):
    with pytest.raises(ValueError, match=r"`dtype` must be one of \['bfloat16', 'float16', 'float32'\], 'auto'"):
        resolve_dtype(dtype, torch.device("cpu"))


def test_split_gguf(tmp_path):
    (tmp_path / "m.Q4_0.gguf").write_bytes(b"GGUF")
    assert split_gguf(str(tmp_path / "m.Q4_0.gguf"), None) == (str(tmp_path), "m.Q4_0.gguf")
    assert split_gguf(str(tmp_path), "m.Q4_0.gguf") == (str(tmp_path), "m.Q4_0.gguf")
    assert split_gguf("org/model", None) == ("org/model", None)
    with pytest.raises(FileNotFoundError, match="GGUF file not found: .*missing.gguf"):
        split_gguf(str(tmp_path / "missing.gguf"), None)


def test_context_size(disk):
    model, _ = disk
    assert context_size(model) == 512
    assert context_size(object()) == 2048
    assert context_size(types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=1))) == 2048


def test_load_by_path_is_frozen_and_on_cpu(qwen_dir):
    model, tokenizer = load_verifier(VerifierSpec(qwen_dir, device="cpu", dtype="bfloat16"))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert tokenizer("Hi").input_ids == load_tokenizer(qwen_dir)("Hi").input_ids


def test_model_object_keeps_its_place_unless_asked(qwen_dir):
    model, tokenizer = reload(qwen_dir)  # a fresh copy: this test changes its dtype
    with pytest.raises(ValueError, match="`tokenizer` is required when `verifier` is a model object"):
        load_verifier(VerifierSpec(model))
    same, tok = load_verifier(VerifierSpec(model, tokenizer=tokenizer))
    assert same is model and tok is tokenizer and model.dtype == torch.float32
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    half, tok = load_verifier(VerifierSpec(model, tokenizer=str(qwen_dir), dtype="bfloat16"))
    assert half.dtype == torch.bfloat16 and tok("Hi").input_ids == tokenizer("Hi").input_ids


def test_not_a_verifier_raises_type_error():
    with pytest.raises(TypeError, match="`verifier` must be a hub id, a local path, .* got int"):
        load_verifier(VerifierSpec(42))


# ---- safe loading ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pickle_only_dir(qwen_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("pickle_only")
    model = AutoModelForCausalLM.from_pretrained(qwen_dir)
    model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # an old-style checkpoint: pickle weights only
    load_tokenizer(qwen_dir).save_pretrained(path)
    assert not list(path.glob("*.safetensors")) and list(path.glob("*.bin"))
    return path


def test_pickle_weights_refused_by_default(pickle_only_dir):
    with pytest.raises(ValueError, match="use_safetensors=False"):
        CrossModelEntropyReward(pickle_only_dir)


def test_pickle_weights_load_on_opt_in(pickle_only_dir, reward):
    trusted = CrossModelEntropyReward(pickle_only_dir, use_safetensors=False)
    assert trusted.score(["Hi"], [" there"]) == pytest.approx(reward.score(["Hi"], [" there"]), abs=1e-6)


def test_trust_remote_code_is_off_by_default_and_logged(qwen_dir, caplog, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append((kwargs.get("trust_remote_code"), kwargs.get("use_safetensors"), kwargs.get("revision")))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    CrossModelEntropyReward(qwen_dir)
    assert seen[-1] == (False, True, None)
    with caplog.at_level(logging.WARNING):
        CrossModelEntropyReward(qwen_dir, trust_remote_code=True, revision="main")
    assert seen[-1] == (True, True, "main")
    assert "trust_remote_code=True" in caplog.text
