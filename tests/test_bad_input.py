"""The bad-input table of docs/bad-input.md, one parametrized test per row, for `score`, `__call__` and the CLI.

Each row says what `reward.score(...)` does, what the TRL call `reward(prompts=..., completions=...)` does (it never
raises for a single odd completion and never returns NaN or inf), and, where a file is involved, what
`cme-reward score` does (exit code 2 and a one-line message naming the file, line and problem, or `--skip-bad`).
"""

import json
import math
import re
from pathlib import Path

import pytest
from tiny_models import save_verifier

from cme_reward import CrossModelEntropyReward
from cme_reward.cli.main import main

DOC = Path(__file__).parent.parent / "docs" / "bad-input.md"
LONG = "The sea is blue and deep and wide. " * 40  # > 64 tokens: longer than the verifier's context below
USER = [{"role": "user", "content": "Hi"}]


def finite(value):
    return value is not None and math.isfinite(value)


# id: (prompts, responses, what score() does, what __call__ does)
#   an exception class + message regex means it raises that; a callable checks the returned scores
API_ROWS = {
    "mismatched-lengths": (["a", "b"], ["x"], (ValueError, "same length"), (ValueError, "same length")),
    "empty-lists": ([], [], lambda s: s == [], lambda s: s == []),
    "prompts-not-a-list": ("abc", ["x"], (TypeError, "`prompts` must be a list"), (TypeError, "must be a list")),
    "none-prompt": ([None], ["x"], (TypeError, r"prompts\[0\] must be a string"), lambda s: s == [None]),
    "number-response": (["a"], [3.5], (TypeError, r"responses\[0\] must be a string"), lambda s: s == [None]),
    "bytes-response": (["a"], [b"x"], (TypeError, r"responses\[0\]"), lambda s: s == [None]),
    "empty-prompt": ([""], [" x"], lambda s: finite(s[0]), lambda s: finite(s[0])),
    "empty-response": (["a"], [""], lambda s: s == [None], lambda s: s == [None]),
    "whitespace-response": (["a"], ["  \n\t"], lambda s: s == [None], lambda s: s == [None]),  # blank is empty
    "message-missing-role": (
        [[{"content": "Hi"}]],
        ["x"],
        (ValueError, r"prompts\[0\]\[0\] is missing \['role'\]"),
        lambda s: s == [None],
    ),
    "message-missing-content": (
        [[{"role": "user"}]],
        ["x"],
        (ValueError, r"is missing \['content'\]"),
        lambda s: s == [None],
    ),
    "unknown-role": (
        [[{"role": "wizard", "content": "Hi"}]],
        ["x"],
        (ValueError, "unknown role 'wizard'"),
        lambda s: s == [None],
    ),
    "message-not-a-dict": ([["Hi"]], ["x"], (TypeError, r"prompts\[0\]\[0\] must be a dict"), lambda s: s == [None]),
    "empty-message-list": ([[]], ["x"], (ValueError, "non-empty list of messages"), lambda s: s == [None]),
    "completion-several-messages": (
        [USER],
        [[{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]],
        (ValueError, r"responses\[0\] must be one assistant message"),
        lambda s: s == [None],
    ),
    "completion-wrong-role": (
        [USER],
        [[{"role": "user", "content": "a"}]],
        (ValueError, "one assistant message"),
        lambda s: s == [None],
    ),
    "nested-lists": ([[["Hi"]]], ["x"], (TypeError, "must be a dict"), lambda s: s == [None]),
    "non-string-content": (
        [[{"role": "user", "content": 5}]],
        ["x"],
        (TypeError, "content must be a string"),
        lambda s: s == [None],
    ),
    "lone-surrogates": (["a \ud800 b"], [" c \udfff"], lambda s: finite(s[0]), lambda s: finite(s[0])),
    "odd-unicode": (
        ["\u200d\u202e\x00\ufeff"],
        [" 👩‍👩‍👧 e\u0301 \U0010ffff"],
        lambda s: finite(s[0]),
        lambda s: finite(s[0]),
    ),
    "response-longer-than-context": (["a"], [LONG], lambda s: finite(s[0]), lambda s: finite(s[0])),
    "prompt-longer-than-context": ([LONG], [" x"], lambda s: finite(s[0]), lambda s: finite(s[0])),
}

# id: (file name, file bytes, extra CLI args, expected stderr regex)
CLI_ROWS = {
    "invalid-jsonl-line": ("in.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": "a", "resp\n', [],
                           r"in\.jsonl: line 2: invalid JSON"),
    "non-utf8-bytes": ("in.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff", "response": "b"}\n', [],
                       r"in\.jsonl: line 2: invalid UTF-8"),
    "missing-column": ("in.jsonl", b'{"prompt": "a", "answer": "b"}\n', [], r"line 1: missing column"),
    "non-object-row": ("in.jsonl", b"[1, 2]\n", [], r"line 1: expected a JSON object"),
    "number-in-column": ("in.jsonl", b'{"prompt": 5, "response": "b"}\n', [], r"line 1: column 'prompt' must be"),
    "malformed-messages-column": ("in.jsonl", b'{"m": [{"role": "user"}, {"role": "assistant", "content": "x"}]}\n',
                                  ["--messages-column", "m"], r"line 1: column 'm'.*missing \['content'\]"),
    "empty-file": ("in.jsonl", b"", [], r"no rows to score"),
    "skip-bad-reports": ("in.jsonl", b'{"prompt": "a", "response": "b"}\nnot json\n', ["--skip-bad"], None),
}  # fmt: skip


@pytest.fixture(scope="module")
def short_reward(tmp_path_factory):
    # a tokenizer with no pad token and a 64-token context: two more rows of the table in every test
    path = save_verifier(tmp_path_factory.mktemp("short"), "llama", seed=2, max_pos=64)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return CrossModelEntropyReward(path)


def test_fixture_has_no_pad_token_and_short_context(short_reward):
    assert short_reward.tokenizer.pad_token is None and short_reward.max_length == 64


def test_verifier_without_chat_template_given_messages(llama_reward):
    assert not llama_reward.tokenizer.chat_template
    [ts] = llama_reward.score_tokens([USER], ["Hello"])
    context = llama_reward.tokenizer.decode(llama_reward.encoder.context_ids(USER, "p"))
    assert finite(ts.score) and context == "user: Hi\nassistant: "


@pytest.mark.parametrize("row", list(API_ROWS))
def test_api_row(short_reward, row):
    prompts, responses, on_score, on_call = API_ROWS[row]
    for fn, expected in ((lambda: short_reward.score(prompts, responses), on_score),
                         (lambda: short_reward(prompts=prompts, completions=responses), on_call)):  # fmt: skip
        if isinstance(expected, tuple):
            with pytest.raises(expected[0], match=expected[1]):
                fn()
        else:
            scores = fn()
            assert expected(scores), scores
            assert all(s is None or math.isfinite(s) for s in scores)


@pytest.mark.parametrize("row", list(CLI_ROWS))
def test_cli_row(qwen_dir, tmp_path, capsys, caplog, row):
    name, data, extra, message = CLI_ROWS[row]
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "out.jsonl"
    argv = [
        "score",
        "--verifier",
        str(qwen_dir),
        "--input",
        str(tmp_path / name),
        "--output",
        str(out),
        "--no-progress",
    ]
    code = main(argv + extra)
    err = capsys.readouterr().err
    if message is None:  # --skip-bad: the good rows are scored, the bad ones reported by line
        assert code == 0 and len(out.read_text().splitlines()) == 1
        assert "skipped 1 bad rows: line 2: invalid JSON" in caplog.text
    else:
        assert code == 2 and re.search(message, err) and "Traceback" not in err, err
        assert not out.exists()


def test_doc_table_lists_every_row():
    """docs/bad-input.md has one table row per test row above, and no other."""
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.M)
    assert sorted(documented) == sorted(
        [*API_ROWS, *CLI_ROWS, "tokenizer-without-pad-token", "verifier-without-chat-template"]
    )
    assert len(documented) >= 20
