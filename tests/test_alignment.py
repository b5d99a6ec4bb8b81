"""Token byte spans for real tokenizers and dense value transfer across tokenizers, against naive references."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tiny_models import CORPUS, build_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cme_reward.alignment import token_spans
from cme_reward.alignment.token_spans import token_byte_spans
from cme_reward.alignment.transfer import dense_values

FAST = settings(max_examples=150, deadline=None)
TOKENIZED = settings(max_examples=60, deadline=None)  # tokenizer calls: fewer examples
FRAGMENTS = [
    "a",
    " ",
    "the",
    "é",
    "ü",
    "東京",
    "語",
    "🙂",
    "🚀",
    "😀",
    "👍🏽",
    "e\u0301",
    "\u0301",
    "\n",
    "  ",
    "Привет",
]
TEXTS = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=12).map("".join)

# --------------------------------------------------------------------------------------------- tokenizers (offline)


def build_sentencepiece_tokenizer(*, dummy_prefix: bool = True) -> PreTrainedTokenizerFast:
    """Llama-2 style (dummy prefix) or Gemma style (none): Metaspace `▁` + BPE with `<0xNN>` byte fallback."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always" if dummy_prefix else "never")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=60)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    steps = [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if dummy_prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    spec["decoder"] = {"type": "Sequence", "decoders": steps}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def build_wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """BERT-style `##` pieces: neither byte-level nor SentencePiece, so the fallbacks are used."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        CORPUS, trainer=trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[SEP]"])
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[SEP]")


@pytest.fixture(scope="module")
def verifier_tok():
    return build_tokenizer(vocab_size=400)


@pytest.fixture(scope="module")
def policy_tok():
    return build_tokenizer(vocab_size=300, bos=False)


@pytest.fixture(scope="module")
def sp_tok():
    return build_sentencepiece_tokenizer()


@pytest.fixture(scope="module")
def gemma_tok():
    return build_sentencepiece_tokenizer(dummy_prefix=False)


# ----------------------------------------------------------------------------------------------- naive references


def gap(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Byte distance between two spans (0 when they touch or overlap)."""
    return max(0, b[0] - a[1], a[0] - b[1])


def same(got, want, tol=1e-9) -> bool:
    """Equal rows of dense values: `None` at the same places, the floats within `tol`."""
    return len(got) == len(want) and all(
        (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol) for a, b in zip(got, want)
    )


def total(values) -> float:
    return math.fsum(v for v in values if v is not None)


def naive_bytes(src, vals, tgt):
    """Per byte: density of the source covering it, summed per target; zero-width sources by the documented rule;
    `None` for a target no source byte or zero-width source reaches."""
    size = max([e for _, e in src + tgt], default=0)
    density, covered = [0.0] * size, [False] * size
    for (s, e), v in zip(src, vals):
        for x in range(s, e):
            density[x] += v / (e - s)
            covered[x] = True
    out = [sum(density[x] for x in range(s, e)) if any(covered[s:e]) else None for s, e in tgt]
    used = Counter()
    for (s, e), v in zip(src, vals):
        if s != e or not tgt:
            continue
        zero = [k for k, (a, b) in enumerate(tgt) if a == b == s]
        holding = [k for k, (a, b) in enumerate(tgt) if a <= s < b]
        if zero:
            k = zero[min(used[s], len(zero) - 1)]
            used[s] += 1
        elif holding:
            k = holding[0]
        else:
            k = min(range(len(tgt)), key=lambda k: (gap((s, s), tgt[k]), k))
        out[k] = (out[k] or 0.0) + v
    return out


def naive_overlap_mean(src, vals, tgt):
    out = []
    for a, b in tgt:
        hits = [v for (s, e), v in zip(src, vals) if e > s and b > a and max(s, a) < min(e, b)]
        if b == a:  # a zero-width target (a special token) carries no value
            out.append(None)
        elif hits:
            out.append(sum(hits) / len(hits))
        elif src:
            out.append(vals[min(range(len(src)), key=lambda i: (gap(src[i], (a, b)), i))])
        else:
            out.append(None)
    return out


def spell(tokenizer, ids, spans, text):
    """Check spans tile the text bytes from 0 and agree with the tokenizer's own decoding at every char boundary."""
    data = text.encode("utf-8")
    assert len(spans) == len(ids)
    assert all(s <= e for s, e in spans) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert (spans[0][0] if spans else 0) == 0 and (spans[-1][1] if spans else 0) == len(data)
    for i, (_, end) in enumerate(spans):
        try:
            prefix = data[:end].decode("utf-8")
        except UnicodeDecodeError:  # the token ends inside a multi-byte character
            continue
        decoded = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        # SentencePiece decoding drops one leading space (the dummy prefix), even one that was in the text
        assert decoded == prefix or (prefix.startswith(" ") and decoded == prefix[1:])


@st.composite
def segmentation(draw, size: int, gaps: bool = True):
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=12)))
    points = [0, *cuts, size]
    spans = list(zip(points, points[1:]))
    if gaps:
        spans = [s for s in spans if draw(st.booleans()) or not gaps]
    return spans


VALUES = st.floats(-20, 20, allow_nan=False)


# --------------------------------------------------------------------------------------------------- dense_values


@FAST
@given(st.data(), st.integers(0, 25))
def test_dense_values_match_naive(data, size):
    src = data.draw(segmentation(size))
    tgt = data.draw(segmentation(size))
    vals = data.draw(st.lists(VALUES, min_size=len(src), max_size=len(src)))
    got = dense_values(src, vals, tgt)
    assert same(got, naive_bytes(src, vals, tgt))
    got = dense_values(src, vals, tgt, alignment="overlap_mean")
    assert same(got, naive_overlap_mean(src, vals, tgt), tol=1e-12)


@FAST
@given(st.data(), st.integers(0, 25))
def test_bytes_conserve_the_sum_and_identity_is_exact(data, size):
    src = data.draw(segmentation(size, gaps=False))
    tgt = data.draw(segmentation(size, gaps=False))
    vals = data.draw(st.lists(VALUES, min_size=len(src), max_size=len(src)))
    assert total(dense_values(src, vals, tgt)) == pytest.approx(math.fsum(vals), abs=1e-9)
    assert dense_values(src, vals, src) == vals  # exact, zero-width tokens included
    positive = [(s, e) for s, e in src if e > s]
    pos_vals = vals[: len(positive)]
    assert dense_values(positive, pos_vals, positive, alignment="overlap_mean") == pos_vals


def test_dense_values_examples():
    src, vals = [(0, 2), (2, 4)], [-1.0, -3.0]
    assert dense_values(src, vals, [(0, 1), (1, 4), (4, 4)]) == [-0.5, -3.5, None]  # the EOS: no value
    assert dense_values(src, vals, [(0, 1), (1, 4), (4, 4)], alignment="overlap_mean") == [-1.0, -2.0, None]
    # a zero-width source (a scored EOS) goes to the zero-width target at the same byte
    assert dense_values([(0, 4), (4, 4)], [-2.0, -5.0], [(0, 2), (2, 4), (4, 4)]) == [-1.0, -1.0, -5.0]
    # truncated source: a target with no covered byte has no value ("bytes"), or the nearest one ("overlap_mean")
    assert dense_values([(0, 2)], [-4.0], [(0, 1), (1, 3), (3, 6)]) == [-2.0, -2.0, None]
    assert dense_values([(0, 2)], [-4.0], [(0, 1), (1, 3), (3, 6)], alignment="overlap_mean") == [-4.0] * 3
    assert dense_values([], [], [(0, 1), (1, 1)], alignment="overlap_mean") == [None, None]
    assert dense_values([(0, 1)], [1.0], []) == []


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([(0, 1)], [1.0], [(0, 1)]), {"alignment": "mean"}, "`alignment` must be one of 'bytes', 'overlap_mean'"),
        (([(0, 1)], [1.0, 2.0], [(0, 1)]), {}, "`source_values`.*2 values for 1 spans"),
        (([(0, 1)], ["x"], [(0, 1)]), {}, "`source_values`"),
        (([(0, 2), (1, 3)], [1.0, 2.0], [(0, 3)]), {}, r"`source_spans\[1\]` = \(1, 3\) starts before 2"),
        (([(0, 1)], [1.0], [(2, 1)]), {}, r"`target_spans\[0\]` = \(2, 1\) has end < start"),
        (([(0, 1)], [1.0], [(-1, 1)]), {}, r"`target_spans\[0\]`"),
        (([(0, 1, 2)], [1.0], [(0, 1)]), {}, r"`source_spans\[0\]` must be a \(start, end\) pair"),
        (([(0, 1)], [1.0], [("a", 1)]), {}, r"`target_spans\[0\]` must be a \(start, end\) pair"),
    ],
)
def test_dense_values_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dense_values(*args, **kwargs)


def test_dense_values_adversarial_shapes_finish():
    n = 50_000  # a quadratic pass would not finish
    many = [(i, i + 1) for i in range(n)]
    one = [(0, n)]
    zero_run = [(0, n)] + [(n, n)] * n  # a long run of zero-width tokens at one byte
    vals = [float(i % 7) for i in range(n)]
    for mode in ("bytes", "overlap_mean"):
        assert len(dense_values(many, vals, one, alignment=mode)) == 1
        assert len(dense_values(one, [1.0], many, alignment=mode)) == n
        assert len(dense_values(zero_run, [0.0] + vals, many, alignment=mode)) == n
        assert len(dense_values(many, vals, zero_run, alignment=mode)) == n + 1
    assert dense_values(many, vals, one)[0] == pytest.approx(sum(vals))


# ------------------------------------------------------------------------------------------------ token_byte_spans


@TOKENIZED
@given(TEXTS)
def test_byte_level_spans_spell_the_text(verifier_tok, policy_tok, text):
    for tok in (verifier_tok, policy_tok):
        ids = tok(text, add_special_tokens=False).input_ids
        spell(tok, ids, token_byte_spans(tok, ids, text), text)


@TOKENIZED
@given(TEXTS)
def test_sentencepiece_spans_spell_the_text(sp_tok, gemma_tok, text):
    assume("\u2581" not in text)  # a literal `▁` in the text is covered by the fallback test
    for tok in (sp_tok, gemma_tok):
        ids = tok(text, add_special_tokens=False).input_ids
        spell(tok, ids, token_byte_spans(tok, ids, text), text)


def test_partial_character_tokens_get_exact_byte_spans(policy_tok, sp_tok):
    text = "語😀"  # not in the training corpus: one token per byte in both tokenizers
    data = text.encode("utf-8")
    for tok in (policy_tok, sp_tok):
        ids = tok(text, add_special_tokens=False).input_ids
        spans = token_byte_spans(tok, ids, text)
        assert [s for s in spans if s[1] > s[0]] == [(i, i + 1) for i in range(len(data))]


def test_special_tokens_get_zero_width_spans(verifier_tok, sp_tok):
    text = "Héllo 東京 🙂!"
    n = len(text.encode("utf-8"))
    for tok in (verifier_tok, sp_tok):
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False).input_ids, tok.eos_token_id]  # EOS: TRL-style
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert decoded == text
        spans = token_byte_spans(tok, ids, decoded)
        assert spans[0] == (0, 0) and spans[-1] == (n, n)
        spell(tok, ids, spans, text)


def test_sentencepiece_dummy_prefix_is_clipped(sp_tok):
    ids = sp_tok("Hello", add_special_tokens=False).input_ids
    assert sp_tok.convert_ids_to_tokens(ids)[0].startswith("\u2581")
    spans = token_byte_spans(sp_tok, ids, "Hello")
    assert spans[0][0] == 0 and spans[-1][1] == 5


def test_truncated_ids_cover_a_prefix(verifier_tok):
    text = "The quick brown fox jumps over the lazy dog."
    ids = verifier_tok(text, add_special_tokens=False).input_ids
    spans = token_byte_spans(verifier_tok, ids[:4], text)
    assert spans == token_byte_spans(verifier_tok, ids, text)[:4]


def test_added_tokens_and_cache_refresh():
    tok = build_tokenizer(vocab_size=300)
    text = "a <think> b ✓ c"
    before = tok(text, add_special_tokens=False).input_ids
    spell(tok, before, token_byte_spans(tok, before, text), text)
    tok.add_tokens(["<think>", " ✓ "])  # non-special added tokens stand for their literal text
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) < len(before)
    spell(tok, ids, token_byte_spans(tok, ids, text), text)


def test_one_convert_call_per_sequence(verifier_tok):
    class Counting:
        def __init__(self, tok):
            self.tok, self.calls = tok, Counter()

        def __len__(self):
            return len(self.tok)

        def __getattr__(self, name):
            self.calls[name] += 1
            return getattr(self.tok, name)

    tok = Counting(verifier_tok)
    text = "Héllo 東京 🙂! " * 50
    ids = verifier_tok(text, add_special_tokens=False).input_ids
    token_byte_spans(tok, ids, text)
    assert tok.calls["convert_ids_to_tokens"] == 1 and tok.calls["decode"] == 0


def test_fallbacks_warn_once(caplog, monkeypatch):
    monkeypatch.setattr(token_spans, "_WARNED", set())
    tok = build_wordpiece_tokenizer()
    text = "the quick fox, café"
    ids = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    with caplog.at_level(logging.WARNING, logger="cme_reward.alignment.token_spans"):
        # `##` pieces do not spell the text; ids are its tokenization: the tokenizer's offsets, in bytes
        spans = token_byte_spans(tok, ids, text)
        token_byte_spans(tok, ids, text)
        data = text.encode("utf-8")
        for token, (s, e) in zip(tok.convert_ids_to_tokens(ids[:-1]), spans):
            assert token == "[UNK]" or data[s:e].decode("utf-8") == token.removeprefix("##")
        assert spans[-1][0] == spans[-1][1] == len(data)
        # ids of another text: proportional, tiling the bytes
        other = "THE QUICK FOX, CAFÉ!!"
        spans = token_byte_spans(tok, ids, other)
        token_byte_spans(tok, ids, other)
    size = len(other.encode("utf-8"))
    assert spans[0][0] == 0 and spans[-1] == (size, size)
    assert all(a[1] == b[0] and a[0] <= a[1] for a, b in zip(spans, spans[1:]))
    messages = [r.getMessage() for r in caplog.records if r.name == "cme_reward.alignment.token_spans"]
    assert len(messages) == 2 and "offset mapping" in messages[0] and "proportionally" in messages[1]


def test_literal_metaspace_char_falls_back_to_offsets(sp_tok, monkeypatch):
    monkeypatch.setattr(token_spans, "_WARNED", set())
    text = "a\u2581b c"
    ids = sp_tok(text, add_special_tokens=False).input_ids
    spans = token_byte_spans(sp_tok, ids, text)
    assert spans[-1][1] == len(text.encode("utf-8"))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


# --------------------------------------------------------------------------------------------- across tokenizers


@TOKENIZED
@given(TEXTS, st.randoms(use_true_random=False))
def test_values_across_tokenizers(verifier_tok, policy_tok, sp_tok, text, rng):
    for tok in (policy_tok, sp_tok):
        p_ids = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
        completion = tok.decode(p_ids, skip_special_tokens=True)  # what TRL hands the reward, and the verifier scores
        v_ids = verifier_tok(completion, add_special_tokens=False).input_ids
        src = token_byte_spans(verifier_tok, v_ids, completion)
        vals = [rng.uniform(-10, 0) for _ in v_ids]
        tgt = token_byte_spans(tok, p_ids, completion)
        got = dense_values(src, vals, tgt)
        assert total(got) == pytest.approx(math.fsum(vals), abs=1e-6)
        assert same(got, naive_bytes(src, vals, tgt))
        assert got[-1] is None  # the EOS covers no byte: no value
        mean = dense_values(src, vals, tgt, alignment="overlap_mean")
        assert same(mean, naive_overlap_mean(src, vals, tgt), tol=1e-12)
        assert dense_values(src, vals, token_byte_spans(verifier_tok, v_ids, completion)) == vals  # same: exact


def test_long_text_finishes(verifier_tok, sp_tok):
    rng = random.Random(0)
    text = "".join(rng.choice(FRAGMENTS) for _ in range(60_000))
    assert len(text.encode("utf-8")) > 200_000
    v_ids = verifier_tok(text, add_special_tokens=False).input_ids
    src = token_byte_spans(verifier_tok, v_ids, text)
    vals = [rng.uniform(-10, 0) for _ in v_ids]
    p_ids = sp_tok(text, add_special_tokens=False).input_ids + [sp_tok.eos_token_id]  # SentencePiece policy
    tgt = token_byte_spans(sp_tok, p_ids, text)
    assert tgt[-1] == (len(text.encode("utf-8")),) * 2
    assert total(dense_values(src, vals, tgt)) == pytest.approx(math.fsum(vals), rel=1e-9)
    assert len(dense_values(src, vals, tgt, alignment="overlap_mean")) == len(p_ids)


def test_special_token_text_left_in_the_text(verifier_tok, monkeypatch):
    monkeypatch.setattr(token_spans, "_WARNED", set())
    text = "hi<|im_end|>thé"  # decoded without skip_special_tokens: the special token's text is there
    ids = verifier_tok(text, add_special_tokens=False).input_ids
    assert verifier_tok.convert_tokens_to_ids("<|im_end|>") in ids
    spans = token_byte_spans(verifier_tok, ids, text)
    data = text.encode("utf-8")
    assert b"".join(data[s:e] for s, e in spans) == data
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
