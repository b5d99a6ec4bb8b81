"""Wire formats shared by the reward server (`cme_reward.server.app`) and the trainer adapters (standard library only).

OpenRLHF query -> (context, response):
    OpenRLHF sends `query[i] = decode(prompt_ids + response_ids, skip_special_tokens=False)` and `prompts[i]`, the
    prompt already rendered by the *policy's* chat template. The response is `query[i]` minus its `prompts[i]` prefix,
    then minus trailing end-of-sequence / end-of-turn text (see [`strip_special_suffixes`]). The verifier's context
    is `prompts[i]` as PLAIN TEXT: it is tokenized like any plain prompt (the verifier's own BOS, no verifier chat
    template), because it already carries the policy's template markup.

Missing rewards:
    A pair with no score (an empty response, or non-finite verifier log-probs) gets `missing_reward` in the OpenRLHF
    answer, because OpenRLHF needs a float. The default, -20.0, sits below any fluent text under the `"mean"`
    reduction (the mean log-prob of uniformly random tokens over a 150k vocabulary is -11.9), so an empty answer is
    never the best answer. `extra_logs["cme_scored"]` is 1.0 for a scored pair, 0.0 for a missing one: its logged mean
    is the fraction scored.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "DEFAULT_MISSING_REWARD",
    "DEFAULT_STRIP_SUFFIXES",
    "openrlhf_answer",
    "split_query",
    "strip_special_suffixes",
]

DEFAULT_MISSING_REWARD = -20.0

# end-of-sequence / end-of-turn text of common chat models (Qwen/ChatML, Llama 2/3/4, Mistral, Gemma, Phi, DeepSeek,
# gpt-oss), as `decode(..., skip_special_tokens=False)` writes it
DEFAULT_STRIP_SUFFIXES: tuple[str, ...] = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eot|>",
    "<|end|>",
    "<|return|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
    "<｜end▁of▁sentence｜>",
)


def strip_special_suffixes(text: str, suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES) -> str:
    """Remove trailing special-token text, repeatedly, with the whitespace that follows each one.

    Whitespace is removed only where a suffix follows it away from the end: `"Hi<|im_end|>\\n"` -> `"Hi"`,
    `"Hi <|im_end|>"` -> `"Hi "` (the space belongs to the response), `"Hi \\n"` -> `"Hi \\n"` (no suffix: unchanged).

    Args:
        text (`str`): the decoded response.
        suffixes (`Sequence[str]`, *optional*, defaults to `DEFAULT_STRIP_SUFFIXES`): the texts to remove.

    Returns:
        `str`: the response without its trailing special tokens.

    Example:

    ```python
    >>> strip_special_suffixes("Paris.<|im_end|>\\n<|endoftext|>")
    'Paris.'
    ```
    """
    suffixes = [s for s in suffixes if s]
    while True:
        stripped = text.rstrip()
        for suffix in suffixes:
            if stripped.endswith(suffix):
                text = stripped[: -len(suffix)]
                break
        else:
            return text


def split_query(
    query: str, prompt: str, *, index: int = 0, strip_suffixes: Sequence[str] = DEFAULT_STRIP_SUFFIXES
) -> str:
    """The response inside an OpenRLHF `query`: `query` minus its `prompt` prefix, minus trailing special tokens.

    Args:
        query (`str`): templated prompt + response, decoded with special tokens.
        prompt (`str`): the templated prompt.
        index (`int`, *optional*, defaults to `0`): the pair's index, for the error message.
        strip_suffixes (`Sequence[str]`, *optional*): see [`strip_special_suffixes`].

    Returns:
        `str`: the response text.

    Raises:
        `ValueError`: `query` does not start with `prompt` (e.g. OpenRLHF cut an over-long prompt from the left:
            raise `--data.max_len` or shorten prompts).

    Example:

    ```python
    >>> split_query("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>",
    ...             "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n")
    'Hello!'
    ```
    """
    if not query.startswith(prompt):
        raise ValueError(
            f"query[{index}] does not start with prompts[{index}] (query starts {query[:60]!r}, prompt starts "
            f"{prompt[:60]!r}); OpenRLHF sends query = prompt + response, so the prompt was probably truncated: "
            "raise --data.max_len or shorten the prompts"
        )
    return strip_special_suffixes(query[len(prompt) :], strip_suffixes)


def openrlhf_answer(scores: Sequence[float | None], *, missing_reward: float = DEFAULT_MISSING_REWARD) -> dict:
    """The OpenRLHF reward answer for scores from `CrossModelEntropyReward.score`.

    Returns:
        `dict`: `{"rewards": [...], "scores": [...], "extra_logs": {"cme": [...], "cme_scored": [...]}}`, every list
        of floats (`missing_reward` where a score is `None`; `scores` equals `rewards`).
    """
    rewards = [missing_reward if s is None else float(s) for s in scores]
    scored = [0.0 if s is None else 1.0 for s in scores]
    return {"rewards": rewards, "scores": list(rewards), "extra_logs": {"cme": list(rewards), "cme_scored": scored}}
