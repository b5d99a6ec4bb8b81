"""The scoring convention's token ids: batches, cutting pairs to `max_length`, token display strings."""

from __future__ import annotations

import logging

import pytest

from cme_reward.scoring.formatting import PairEncoder, check_batch, clean_text, token_strings


def test_check_batch_returns_lists():
    assert check_batch(("a", "b"), ["x", "y"]) == (["a", "b"], ["x", "y"])
    with pytest.raises(TypeError, match="`completions` must be a list, got str"):
        check_batch(["a"], "x", responses_name="completions")
    with pytest.raises(ValueError, match="`prompts` and `responses` must have the same length, got 2 and 1"):
        check_batch(["a", "b"], ["x"])


def test_clean_text_replaces_lone_surrogates_only():
    assert clean_text("café 東京 🙂") == "café 東京 🙂"
    # each byte of the surrogate's surrogatepass encoding becomes U+FFFD (as before the reshape: scores unchanged)
    assert clean_text("a \ud800 b") == "a \ufffd\ufffd\ufffd b"


@pytest.mark.parametrize(
    ("context", "response", "limit", "expected"),
    [
        ([1, 2, 3], [4, 5], 5, ([1, 2, 3], [4, 5], False)),  # fits
        ([1, 2, 3], [4, 5], 4, ([2, 3], [4, 5], True)),  # the context loses its start
        ([1, 2, 3], [4, 5, 6, 7], 4, ([3], [4, 5, 6], True)),  # response too long: its head after one context token
        ([], [4, 5, 6], 8, ([4], [5, 6], False)),  # no context at all: the first response token becomes it
    ],
)
def test_fit_cuts_the_context_from_the_left(disk, context, response, limit, expected):
    pair = PairEncoder(disk[1], limit).fit(context, response)
    assert (pair.context_ids, pair.response_ids, pair.truncated) == expected


PLAIN_WARNING = "A plain-text prompt is scored as raw text"


def plain_warnings(caplog, encoder: PairEncoder, prompts: list) -> int:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cme_reward.scoring.formatting"):
        encoder.encode(prompts, [" x"] * len(prompts), strict=True)
    return caplog.text.count(PLAIN_WARNING)


def test_plain_prompt_with_a_chat_template_warns_once(disk, caplog):
    encoder = PairEncoder(disk[1], 64)
    assert plain_warnings(caplog, encoder, ["2 + 2 =", "3 + 3 =", "2 + 2 ="]) == 1
    assert "--as-chat" in caplog.text and 'pass the prompt as messages ([{"role": "user"' in caplog.text
    assert plain_warnings(caplog, encoder, ["another plain prompt"]) == 0  # once per encoder (once per reward)


@pytest.mark.parametrize(
    "prompt",
    [
        [{"role": "user", "content": "2 + 2 ="}],  # messages: the chat template applies
        "<|im_start|>user\n2 + 2 =<|im_end|>\n<|im_start|>assistant\n",  # already templated (the OpenRLHF path)
        "<s>[INST] 2 + 2 = [/INST]",  # templated by another model's template (a policy's)
        "",  # a messages row with nothing before the assistant turn
    ],
)
def test_no_plain_prompt_warning_where_the_text_is_not_plain(disk, caplog, prompt):
    encoder = PairEncoder(disk[1], 64)
    assert plain_warnings(caplog, encoder, [prompt]) == 0
    assert plain_warnings(caplog, encoder, ["plain"]) == 1  # the encoder was still ready to warn


def test_no_plain_prompt_warning_without_a_chat_template(llama_disk, caplog):
    assert plain_warnings(caplog, PairEncoder(llama_disk[1], 64), ["2 + 2 ="]) == 0


def test_token_strings_keep_multibyte_characters_whole(disk):
    _, tok = disk
    text = " Héllo 東京 🙂🚀 ∪ naïve"
    ids = tok(text, add_special_tokens=False).input_ids
    tokens = token_strings(tok, ids)
    assert "".join(tokens) == text
    assert "\ufffd" not in "".join(tokens)
    assert len(tokens) == len(ids) > len(text.split())
