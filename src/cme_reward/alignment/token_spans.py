"""Token byte spans: where each token of a tokenizer's ids sits on the UTF-8 bytes of the text they spell.

Byte-level BPE tokens (GPT-2, Qwen, Llama-3, SmolLM2) map to bytes through the GPT-2 bytes<->unicode table,
SentencePiece tokens (Llama-2, Gemma) through `▁` -> space and `<0xNN>` -> one byte; the tokenizer's own offsets
and a proportional mapping are the fallbacks. `cme_reward.alignment.dense_values` moves per-token values between two
such segmentations of one text.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = ["token_byte_spans"]

logger = logging.getLogger(__name__)

_SCHEMES = ("byte_level", "sentencepiece")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_WARNED: set[str] = set()


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """The GPT-2 byte-level table: printable bytes stand for themselves, the others are shifted past U+00FF."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _byte_level_piece(token: str) -> bytes | None:
    table = _unicode_to_byte()
    try:
        return bytes([table[c] for c in token])
    except KeyError:  # not a byte-level token
        return None


def _sentencepiece_piece(token: str) -> bytes:
    if len(token) == 6 and _BYTE_TOKEN.fullmatch(token):  # byte fallback, e.g. <0xE6>
        return bytes([int(token[3:5], 16)])
    return token.replace("\u2581", " ").encode("utf-8", "surrogatepass")  # "▁" is the space


@dataclass
class _TokenizerInfo:
    size: int
    special_ids: frozenset[int]
    added: dict[int, bytes]  # non-special added tokens stand for their literal text
    scheme: str | None = None  # the scheme that verified last time, tried first
    pieces: dict[str, dict[str, bytes | None]] = field(default_factory=lambda: {s: {} for s in _SCHEMES})


_INFO: weakref.WeakKeyDictionary[Any, _TokenizerInfo] = weakref.WeakKeyDictionary()


def _tokenizer_info(tokenizer: Any) -> _TokenizerInfo:
    try:
        size = len(tokenizer)
    except TypeError:
        size = -1
    try:
        info = _INFO.get(tokenizer)
    except TypeError:  # not weak-referenceable / hashable: no cache
        info = None
    if info is not None and info.size == size:
        return info
    added_tokens = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    special |= {i for i, tok in added_tokens.items() if getattr(tok, "special", False)}
    added = {
        i: str(getattr(tok, "content", tok)).encode("utf-8", "surrogatepass")
        for i, tok in added_tokens.items()
        if i not in special
    }
    info = _TokenizerInfo(size=size, special_ids=frozenset(special), added=added)
    try:
        _INFO[tokenizer] = info
    except TypeError:
        pass
    return info


def _pieces(ids: list[int], tokens: list[str | None], info: _TokenizerInfo, scheme: str) -> list[bytes] | None:
    cache = info.pieces[scheme]
    out = []
    for tid, tok in zip(ids, tokens):
        if tok is None or tid in info.special_ids:  # special tokens and unknown ids produce no text
            out.append(b"")
            continue
        piece = info.added.get(tid)
        if piece is None:
            if tok in cache:
                piece = cache[tok]
            else:
                piece = cache[tok] = _byte_level_piece(tok) if scheme == "byte_level" else _sentencepiece_piece(tok)
            if piece is None:
                return None
        out.append(piece)
    return out


def _place(pieces: list[bytes], text_bytes: bytes) -> list[tuple[int, int]] | None:
    """Lay the pieces end to end; they must spell the text (or a prefix of it) after a whitespace-only prefix."""
    concat = b"".join(pieces)
    lead = len(concat) - len(concat.lstrip())
    for offset in dict.fromkeys((0, min(1, lead), lead)):
        if text_bytes.startswith(concat[offset:] if offset else concat):
            break
    else:
        return None
    spans, pos = [], -offset
    for piece in pieces:
        start, pos = pos, pos + len(piece)
        spans.append((max(start, 0), max(pos, 0)))
    return spans


def _warn_once(kind: str, message: str) -> None:
    if kind not in _WARNED:
        _WARNED.add(kind)
        logger.warning(message)


def _offsets_spans(tokenizer: Any, ids: list[int], text: str, info: _TokenizerInfo) -> list[tuple[int, int]] | None:
    """Char offsets from the tokenizer itself, used only when `ids` is its tokenization of `text`.

    Special tokens in `ids` either appear in that tokenization (their text is in `text`) or are zero-width.
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        enc_ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return None
    if len(offsets) != len(enc_ids):
        return None
    literal_specials = ids == enc_ids
    if not literal_specials and [t for t in ids if t not in info.special_ids] != enc_ids:
        return None
    char_to_byte = [0]  # (len(text) + 1,) byte offset of each char
    for ch in text:
        o = ord(ch)
        char_to_byte.append(char_to_byte[-1] + (1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4))
    last = len(text)
    spans, pos, it = [], 0, iter(offsets)
    for tid in ids:
        if tid in info.special_ids and not literal_specials:
            spans.append((pos, pos))
            continue
        s, e = next(it)
        # offsets overlap when tokens share a char: keep the spans in order
        s = max(char_to_byte[min(s, last)], pos)
        pos = max(char_to_byte[min(e, last)], s)
        spans.append((s, pos))
    return spans


def _proportional_spans(ids: list[int], weights: list[int] | None, n_bytes: int, info: _TokenizerInfo):
    if not weights or not sum(weights):
        weights = [0 if t in info.special_ids else 1 for t in ids]
    total, cum, spans = sum(weights), 0, []
    for w in weights:
        start = cum * n_bytes // total if total else 0
        cum += w
        spans.append((start, cum * n_bytes // total if total else 0))
    return spans


def token_byte_spans(tokenizer: Any, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """The UTF-8 byte span `[start, end)` of each token of `ids` inside `text.encode("utf-8")`.

    Tokens map to bytes exactly: byte-level BPE tokens (GPT-2, Qwen, Llama-3, SmolLM2) through the GPT-2
    bytes<->unicode table, so a token holding part of a multi-byte character gets a partial span; SentencePiece tokens
    (Llama-2, Gemma) through `▁` -> space and `<0xNN>` -> one byte. Non-special added tokens stand for their text.
    Special tokens (`all_special_ids` and added tokens marked special, e.g. the EOS that ends TRL's
    `completion_ids`) and tokens that produce no text get zero-width spans at their position. The spans are in order
    and never overlap, as `dense_values` needs.

    The token bytes are checked against the text: they must spell it, or a prefix of it (`ids` truncated), after
    dropping a leading whitespace-only prefix (the dummy-prefix space of SentencePiece tokenizers, clipped to a
    zero-width or shorter first span). When that fails (an exotic tokenizer, or decoding clean-up changed the text),
    the fallback is the tokenizer's own `return_offsets_mapping` char offsets (exact to the character) if `ids`
    equals its tokenization of `text`, with or without the special tokens (a special token whose text is in
    `text`, decoded without `skip_special_tokens`, then covers that text); else a proportional mapping (the text's
    bytes shared out by token length). Each fallback logs one warning per process. Linear time in
    `len(ids) + len(text)`; per-tokenizer tables (special ids, added tokens, token -> bytes) are cached.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the tokenizer that produced `ids`.
        ids (`Sequence[int]`): token ids of the response (special tokens allowed anywhere).
        text (`str`): the response text.

    Returns:
        `list[tuple[int, int]]`: one byte span per id.

    Example:
        ```python
        >>> ids = tokenizer("héllo 🙂", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        >>> token_byte_spans(tokenizer, ids, "héllo 🙂")  # e.g. [(0, 3), (3, 6), (6, 9), (9, 11), (11, 11)]
        ```
    """
    ids = [int(t) for t in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}")
    if not ids:
        return []
    text_bytes = text.encode("utf-8", "surrogatepass")
    info = _tokenizer_info(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    weights = None
    for scheme in dict.fromkeys((info.scheme, *_SCHEMES)):
        pieces = None if scheme is None else _pieces(ids, tokens, info, scheme)
        if pieces is None:
            continue
        spans = _place(pieces, text_bytes)
        if spans is not None:
            info.scheme = scheme
            return spans
        weights = weights or [len(p) for p in pieces]
    spans = _offsets_spans(tokenizer, ids, text, info)
    if spans is not None:
        _warn_once(
            "offsets",
            "token_byte_spans: the token bytes do not spell the text; using the tokenizer's offset mapping instead "
            "(exact to the character, not the byte). Warned once.",
        )
        return spans
    _warn_once(
        "proportional",
        "token_byte_spans: the token bytes do not spell the text and the ids are not its tokenization; mapping tokens "
        "to bytes proportionally to their length (approximate). Warned once.",
    )
    return _proportional_spans(ids, weights, len(text_bytes), info)
