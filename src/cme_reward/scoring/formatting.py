"""Turn (prompt, response) pairs into verifier token ids: the scoring convention of Cross-Model Entropy.

Plain text pair:
    context ids  = tokenizer(prompt).input_ids                       (the verifier's own special tokens, e.g. BOS)
    response ids = tokenizer(response, add_special_tokens=False).input_ids
Conversational pair (TRL conversational data):
    context ids  = tokenizer(chat_template(prompt, add_generation_prompt=True), add_special_tokens=False).input_ids
    response ids = tokenizer(assistant content, add_special_tokens=False).input_ids
    A verifier without a chat template gets the plain format "<role>: <content>\n" per message then "assistant: ",
    tokenized like a plain prompt.
A plain-text prompt is scored as raw text even when the verifier's tokenizer has a chat template; an instruct verifier
then usually scores the pair much lower than the same pair as messages. [`PairEncoder`] warns once about it, unless
the text is already templated: it contains one of the verifier tokenizer's special tokens or a common chat-template
marker (`CHAT_MARKERS`: `<|im_start|>`, `<|start_header_id|>`, `[INST]`, `<start_of_turn>`...). That is how the
OpenRLHF path (`/get_reward`, `integrations/openrlhf_reward.py`), whose prompts arrive rendered by the policy's own
template, stays silent; an empty prompt (a messages row with nothing before the assistant turn) is not warned about.
A blank response (no non-whitespace character: `"   "`, `"\n\n"`) is empty: it has no token to score, like `""`,
and gets the configured `empty_value`. An empty context starts with the tokenizer's BOS token (else its EOS token) so
the first response token is scored; with neither, the first response token becomes the context and is not scored.
Lone surrogates and other unencodable code points are replaced by U+FFFD before tokenization.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CHAT_MARKERS", "EncodedPair", "PairEncoder", "check_batch", "clean_text", "normalize_messages",
           "response_text", "token_strings"]  # fmt: skip

ROLES = ("system", "developer", "user", "assistant", "tool")
# text that only a prompt already rendered by a chat template contains (ChatML/Qwen/SmolLM, Llama 3, Llama 2/Mistral,
# Gemma, Phi/Zephyr, gpt-oss, DeepSeek); the verifier's own special tokens count too
CHAT_MARKERS = ("<|im_start|>", "<|start_header_id|>", "[INST]", "<start_of_turn>", "<|user|>", "<|assistant|>",
                "<|start|>", "<｜User｜>", "<｜Assistant｜>")  # fmt: skip


@dataclass(frozen=True)
class EncodedPair:
    context_ids: list[int]  # what the verifier conditions on
    response_ids: list[int]  # the tokens that are scored: text tokens (then end-of-turn tokens when added)
    truncated: bool = False
    text: str = ""  # the response text
    text_ids: tuple[int, ...] = ()  # all tokens of the text, before any cut
    offset: int = 0  # text tokens moved into the context (1 when there was no BOS/EOS to start from)
    prompt_ids: tuple[
        int, ...
    ] = ()  # the prompt's own text tokens (its message contents), when the encoder keeps them

    @property
    def text_tokens(self) -> int:
        """How many of `response_ids` are tokens of the text (the rest are added end-of-turn tokens)."""
        return min(len(self.response_ids), len(self.text_ids) - self.offset)


def check_batch(prompts: Any, responses: Any, *, prompts_name: str = "prompts", responses_name: str = "responses"):
    """Check that both arguments are lists of the same length; returns them as lists."""
    for name, value in ((prompts_name, prompts), (responses_name, responses)):
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence):
            raise TypeError(f"`{name}` must be a list, got {type(value).__name__}")
    if len(prompts) != len(responses):
        raise ValueError(
            f"`{prompts_name}` and `{responses_name}` must have the same length, "
            f"got {len(prompts)} and {len(responses)}"
        )
    return list(prompts), list(responses)


def clean_text(text: str) -> str:
    """Replace lone surrogates (which no tokenizer can encode) with U+FFFD, one per byte of their UTF-8 form."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _content(message: Any, where: str) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise TypeError(f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}")
    if "role" not in message or "content" not in message:
        missing = [k for k in ("role", "content") if k not in message]
        raise ValueError(f"{where} is missing {missing}; messages look like {{'role': 'user', 'content': '...'}}")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise ValueError(f"{where} has unknown role {role!r}; allowed roles: {', '.join(ROLES)}")
    if isinstance(content, list):  # multimodal-style content parts: keep the text parts only
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ValueError(f"{where} content parts must be {{'type': 'text', 'text': str}}, got {part!r:.80}")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise TypeError(f"{where} content must be a string, got {type(content).__name__}")
    return role, clean_text(content)


def normalize_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """Validate a list of chat messages; returns clean `{"role", "content"}` dicts."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must be a non-empty list of messages")
    out = []
    for j, message in enumerate(messages):
        role, content = _content(message, f"{where}[{j}]")
        out.append({"role": role, "content": content})
    return out


def response_text(response: Any, where: str) -> str:
    """The text to score: a string, or the content of a single assistant message (TRL conversational completion)."""
    if isinstance(response, str):
        return clean_text(response)
    if isinstance(response, dict):
        response = [response]
    if isinstance(response, list):
        messages = normalize_messages(response, where)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            roles = [m["role"] for m in messages]
            raise ValueError(f"{where} must be one assistant message, got roles {roles}")
        return messages[0]["content"]
    raise TypeError(f"{where} must be a string or a list of messages, got {type(response).__name__}")


class PairEncoder:
    """Tokenizes pairs with the verifier's tokenizer and fits them into `max_length` tokens.

    Contexts are cached by value within one encoder, so a prompt repeated `num_generations` times is tokenized once.
    """

    def __init__(self, tokenizer: Any, max_length: int, *, prompt_ids: bool = False, start_token: bool = True):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.start_token = start_token  # an empty context starts with BOS / EOS (the authors' rules: it stays empty)
        self.keep_prompt_ids = prompt_ids  # the repetition guard needs the prompt's own tokens
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.start_ids = [start] if start is not None else []
        self._warned_truncation = False
        self._warned_plain = not self.has_chat_template  # without a template there is nothing to warn about
        self._markers: tuple[str, ...] | None = None

    def context_ids(self, prompt: Any, where: str) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            if not self._warned_plain:
                self._check_plain(prompt)
            ids = tok(clean_text(prompt)).input_ids
        elif isinstance(prompt, list):
            messages = normalize_messages(prompt, where)
            if self.has_chat_template:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                ids = tok(text, add_special_tokens=False).input_ids
            else:
                text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
                ids = tok(text).input_ids
        else:
            raise TypeError(f"{where} must be a string or a list of messages, got {type(prompt).__name__}")
        return list(ids) or (list(self.start_ids) if self.start_token else [])

    def _check_plain(self, prompt: str) -> None:
        """Warn (once per encoder, so once per reward) that a plain-text prompt skips the verifier's chat template,
        unless the text is empty or already templated (see the module docstring)."""
        if self._markers is None:
            special = getattr(self.tokenizer, "all_special_tokens", None) or []
            self._markers = tuple(m for m in {*CHAT_MARKERS, *special} if isinstance(m, str) and m.strip())
        if not prompt.strip() or any(marker in prompt for marker in self._markers):
            return
        self._warned_plain = True
        logger.warning(
            "A plain-text prompt is scored as raw text, but the verifier's tokenizer has a chat template: an "
            "instruct verifier usually scores such a pair much lower than the same pair as a conversation. To "
            'score it as one, pass the prompt as messages ([{"role": "user", "content": prompt}]); in the '
            "cme-reward CLI, --messages-column or --as-chat. Warning once."
        )

    def prompt_text_ids(self, prompt: Any) -> tuple[int, ...]:
        """The prompt's own text (a string, or its messages' contents joined by newlines) as tokens, no specials."""
        text = (
            prompt
            if isinstance(prompt, str)
            else "\n".join(m["content"] for m in normalize_messages(prompt, "prompt"))
        )
        return tuple(self.tokenizer(clean_text(text), add_special_tokens=False).input_ids)

    def response_ids(self, response: Any, where: str) -> list[int]:
        return list(self.tokenizer(response_text(response, where), add_special_tokens=False).input_ids)

    def end_of_turn_ids(self, chat: bool) -> list[int]:
        """The verifier's end-of-turn token(s): for a chat prompt, what its chat template writes after an assistant
        message, up to and including the first special token (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`...);
        otherwise, or when the template shows none, the EOS token (none: `[]`)."""
        tok = self.tokenizer
        if chat and self.has_chat_template:
            marker = "\u2063cme-end-marker\u2063"
            messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
            try:
                text = tok.apply_chat_template(messages, tokenize=False)
            except Exception:  # noqa: BLE001 - a template that refuses this shape: fall back to EOS
                text = ""
            if marker in text:
                tail = tok(text[text.index(marker) + len(marker) :], add_special_tokens=False).input_ids
                special = set(tok.all_special_ids)
                end = next((k for k, i in enumerate(tail) if i in special), None)
                if end is not None:
                    return list(tail[: end + 1])
        return [tok.eos_token_id] if tok.eos_token_id is not None else []

    def encode(
        self,
        prompts: list,
        responses: list,
        *,
        strict: bool,
        responses_name: str = "responses",
        ended: list[bool] | None = None,
    ) -> list[EncodedPair | None]:
        """Encode pairs (a prompt repeated across a GRPO group is tokenized once). `ended[i]` appends the verifier's
        end-of-turn token(s) to response i. A malformed pair raises (`strict`) or becomes `None` with a warning."""
        contexts: dict[Any, list[int]] = {}
        prompt_ids: dict[Any, tuple[int, ...]] = {}
        ends: dict[bool, list[int]] = {}
        out: list[EncodedPair | None] = []
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            try:
                key = prompt if isinstance(prompt, str) else repr(prompt)
                if key not in contexts:
                    contexts[key] = self.context_ids(prompt, f"prompts[{i}]")
                    if self.keep_prompt_ids:
                        prompt_ids[key] = self.prompt_text_ids(prompt)
                text = response_text(response, f"{responses_name}[{i}]")
                # blank is empty: a response with no non-whitespace character has no token to score
                ids = list(self.tokenizer(text, add_special_tokens=False).input_ids) if text.strip() else []
                chat = not isinstance(prompt, str)
                end = ends.setdefault(chat, self.end_of_turn_ids(chat)) if ended and ended[i] and ids else []
                pair = self.fit(contexts[key], ids + end, text=text, text_ids=tuple(ids),
                                prompt_ids=prompt_ids.get(key, ()))  # fmt: skip
            except (TypeError, ValueError) as err:
                if strict:
                    raise
                logger.warning("Scoring completion %d as None: %s", i, err)
                pair = None
            out.append(pair)
        return out

    def fit(self, context: list[int], response: list[int], **text: Any) -> EncodedPair:
        """Cut a pair to `max_length`: drop context tokens from the left; if the response alone does not fit, keep
        one context token and the first `max_length - 1` response tokens (the tail is not scored). `text` carries
        the response text and its tokens into the result."""
        offset = 0
        if not context:  # no BOS/EOS to start from: the first response token becomes the context, unscored
            context, response, offset = response[:1], response[1:], 1
        text["offset"] = offset
        limit = self.max_length
        if len(context) + len(response) <= limit:
            return EncodedPair(context, response, **text)
        if not self._warned_truncation:
            logger.warning(
                "A pair has %d tokens, more than the verifier's max_length=%d: the context is cut from the left "
                "(and over-long responses keep their first max_length - 1 tokens). Warning once.",
                len(context) + len(response),
                limit,
            )
            self._warned_truncation = True
        if len(response) >= limit:
            return EncodedPair(context[-1:], response[: limit - 1], truncated=True, **text)
        return EncodedPair(context[len(context) + len(response) - limit :], response, truncated=True, **text)


def token_strings(tokenizer: Any, ids: list[int], window: int = 8) -> list[str]:
    """Display text of each token such that `"".join(...)` is the decoded response.

    Decoding ids one at a time turns a character split over several byte-level tokens into U+FFFD; instead each
    token gets the text its decoding adds to the few tokens before it, so the token completing a character shows it
    and the partial ones show as empty strings.
    """
    out = []
    for i in range(len(ids)):
        start = max(0, i - window)
        before = tokenizer.decode(ids[start:i]).rstrip("\ufffd") if i > start else ""
        upto = tokenizer.decode(ids[start : i + 1]).rstrip("\ufffd")
        out.append(upto[len(before) :] if upto.startswith(before) else tokenizer.decode([ids[i]]))
    return out
