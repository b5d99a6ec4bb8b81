"""Token heatmaps: a self-contained HTML page that colours each response token by its verifier log-probability.

Pure presentation code (no model, no torch): give it the prompts and the `cme_reward.types.TokenScores`
returned by `CrossModelEntropyReward.score_tokens` and it returns one HTML string with inline CSS, no scripts and no
external assets, so the file can be opened offline, attached to a bug report or logged as an artifact.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..files.atomic import write_atomic
from .numbers import format_number

if TYPE_CHECKING:
    from ..types import TokenScores

__all__ = ["logprob_color", "render_heatmap", "write_heatmap"]

# Visible marks for whitespace that would otherwise be invisible or collapse; the real character is kept after the mark
# so line breaks and indentation still lay out as in the response.
_WHITESPACE_MARKS = {"\n": "\u21b5\n", "\t": "\u2192\t", "\r": "\u240d"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fff;
       }
h1 { font-size: 1.3rem; margin: 0 0 .4rem; }
.meta { color: #555; font-size: .9rem; margin-bottom: .8rem; }
.legend { display: flex; align-items: center; gap: .5rem; font-size: .85rem; margin-bottom: 1.2rem; }
.bar { width: 280px; height: 14px; border: 1px solid #999; background: linear-gradient(to right, %(stops)s); }
.card { border: 1px solid #ccc; border-radius: 6px; padding: .6rem .8rem; margin-bottom: 1rem; }
.head { display: flex; gap: 1rem; flex-wrap: wrap; font-size: .9rem; margin-bottom: .4rem; }
.rank, .label { font-weight: 700; }
.score { font-family: ui-monospace, monospace; }
details { font-size: .85rem; color: #444; margin-bottom: .4rem; }
details pre { white-space: pre-wrap; word-break: break-word; background: #f5f5f7; padding: .4rem; margin: .3rem 0 0; }
.resp { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .9rem; line-height: 1.55;
        white-space: pre-wrap; word-break: break-word; tab-size: 4; }
.t { border-radius: 2px; }
.t:hover { outline: 1px solid #000; }
.ws { color: #888; }
.empty { color: #888; font-style: italic; }
"""


def logprob_color(logprob: float, *, vmin: float = -10.0) -> str:
    """CSS background colour for a token log-probability: red at `vmin` or below, through yellow, to green at 0.

    Args:
        logprob (`float`):
            Natural-log probability of the token (`<= 0`); `-inf` and `NaN` map to the `vmin` colour.
        vmin (`float`, *optional*, defaults to `-10.0`):
            Log-probability that gets the reddest colour; the scale is linear between `vmin` and 0.

    Returns:
        `str`: an `hsl(...)` colour.

    Example:
        ```python
        >>> logprob_color(0.0), logprob_color(-10.0)
        ('hsl(120, 70%, 78%)', 'hsl(0, 70%, 78%)')
        ```
    """
    if vmin >= 0:
        raise ValueError(f"vmin must be negative, got {vmin}")
    frac = 0.0 if not math.isfinite(logprob) else min(max(1.0 - logprob / vmin, 0.0), 1.0)
    return f"hsl({round(120 * frac)}, 70%, 78%)"


def _sort_key(item: tuple[int, TokenScores]) -> tuple[int, float, int]:
    index, scores = item
    score = scores.score
    if score is None or math.isnan(score):
        return (1, 0.0, index)  # unscored responses go last, in input order
    return (0, -score, index)


def _token_html(token: str, logprob: float, token_id: int | None, *, vmin: float) -> str:
    body = "".join(
        f'<span class="ws">{_WHITESPACE_MARKS[ch][0]}</span>{_WHITESPACE_MARKS[ch][1:]}'
        if ch in _WHITESPACE_MARKS
        else html.escape(ch, quote=False)
        for ch in token
    )
    # a byte-level token carrying only part of a multi-byte character (CJK, Arabic, emoji): the character is shown on
    # the token that completes it; this one gets a thin mark and says so
    body = body or '<span class="ws">\u00b7</span>'
    prob = math.exp(logprob) if math.isfinite(logprob) else 0.0
    what = f"token {token!r}" if token else "part of a character completed by a following token"
    tip = f"logprob {format_number(logprob)}  p={prob:.4g}  {what}"
    if token_id is not None:
        tip += f"  id {token_id}"
    return (
        f'<span class="t" style="background:{logprob_color(logprob, vmin=vmin)}" '
        f'data-lp="{format_number(logprob, 4)}" title="{html.escape(tip, quote=True)}">{body}</span>'
    )


def _card_html(rank: int, index: int, prompt: str, scores: TokenScores, *, label: str | None, vmin: float) -> str:
    tokens, logprobs = list(scores.tokens), list(scores.logprobs)
    if len(tokens) != len(logprobs):
        raise ValueError(f"response {index}: {len(tokens)} tokens but {len(logprobs)} logprobs")
    ids = list(getattr(scores, "token_ids", None) or [None] * len(tokens))
    if len(ids) != len(tokens):
        ids = [None] * len(tokens)
    score = scores.score
    ppl = math.exp(-score) if score is not None and math.isfinite(score) and -score < 700 else None
    truncated = " &middot; <b>truncated</b>" if getattr(scores, "truncated", False) else ""
    spans = "".join(_token_html(t, lp, i, vmin=vmin) for t, lp, i in zip(tokens, logprobs, ids, strict=True))
    body = spans or '<span class="empty">(empty response)</span>'
    label_html = f'<span class="label">{html.escape(label, quote=False)}</span>' if label else ""
    return (
        f'<div class="card" id="r{index}" data-index="{index}" data-score="{format_number(score, 6)}">\n'
        f'<div class="head"><span class="rank">#{rank}</span>{label_html}'
        f'<span class="score">CME {format_number(score, 4)}</span><span>ppl {format_number(ppl, 1)}</span>'
        f"<span>{len(tokens)} token{'' if len(tokens) == 1 else 's'}</span><span>input #{index}</span>"
        f"<span>context {getattr(scores, 'context_length', '?')} tokens{truncated}</span></div>\n"
        f"<details><summary>Prompt</summary><pre>{html.escape(prompt, quote=False)}</pre></details>\n"
        f'<div class="resp">{body}</div>\n</div>'
    )


def render_heatmap(
    prompts: Sequence[str],
    scored: Sequence[TokenScores],
    *,
    title: str = "Cross-Model Entropy token heatmap",
    labels: Sequence[str] | None = None,
    vmin: float = -10.0,
) -> str:
    """Render responses as an HTML page whose tokens are coloured by their log-probability under the verifier.

    Responses are sorted by score (highest CME first; unscored ones last); each card shows the rank, CME, perplexity,
    token count and the prompt (collapsed). Hovering a token shows its log-probability, probability and token id. All
    text is HTML-escaped; newlines and tabs inside tokens are shown as `↵` / `→` and still break the line.

    Args:
        prompts (`Sequence[str]`):
            Prompt text of each response (repeat a prompt for several responses to it); chat messages should be
            rendered to text by the caller.
        scored (`Sequence[TokenScores]`):
            Token scores from `CrossModelEntropyReward.score_tokens`, aligned with `prompts`.
        title (`str`, *optional*, defaults to `"Cross-Model Entropy token heatmap"`):
            Page title and heading.
        labels (`Sequence[str]`, *optional*):
            A short label per response (e.g. `"Q101 reference"`), shown in its card header.
        vmin (`float`, *optional*, defaults to `-10.0`):
            Log-probability shown as the reddest colour (see `logprob_color`).

    Returns:
        `str`: a complete, self-contained HTML document.

    Example:
        ```python
        >>> scored = reward.score_tokens(["Capital of France?"] * 2, ["Paris.", "Berlin."])
        >>> page = render_heatmap(["Capital of France?"] * 2, scored)
        >>> page.startswith("<!DOCTYPE html>")
        True
        ```
    """
    if len(prompts) != len(scored):
        raise ValueError(f"got {len(prompts)} prompts but {len(scored)} scored responses")
    if labels is not None and len(labels) != len(scored):
        raise ValueError(f"got {len(labels)} labels but {len(scored)} scored responses")
    order = sorted(enumerate(scored), key=_sort_key)
    cards = "\n".join(
        _card_html(rank, index, str(prompts[index]), scores, label=labels[index] if labels else None, vmin=vmin)
        for rank, (index, scores) in enumerate(order, 1)
    )
    valid = [s.score for s in scored if s.score is not None and not math.isnan(s.score)]
    mean = sum(valid) / len(valid) if valid else None
    n_tokens = sum(len(s.tokens) for s in scored)
    stops = ", ".join(logprob_color(vmin * (1 - k / 4), vmin=vmin) for k in range(5))
    css = _CSS % {"stops": stops}
    esc_title = html.escape(title, quote=False)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc_title}</title>\n'
        f"<style>{css}</style>\n</head>\n"
        f"<body>\n<h1>{esc_title}</h1>\n"
        f'<div class="meta">{len(scored)} responses &middot; {n_tokens} tokens &middot; '
        f"mean CME {format_number(mean, 4)} "
        "&middot; sorted best first &middot; hover a token for its log-probability &middot; a character split over "
        "several byte tokens shows on the token that completes it (\u00b7 marks the others)</div>\n"
        f'<div class="legend"><span>log p &le; {format_number(vmin, 1)} (unlikely)</span><span class="bar"></span>'
        "<span>0 (likely)</span></div>\n"
        f"{cards}\n</body>\n</html>\n"
    )


def write_heatmap(
    path: str | os.PathLike[str], prompts: Sequence[str], scored: Sequence[TokenScores], **kwargs
) -> Path:
    """Render `render_heatmap` and write it to `path` atomically (temporary file + `os.replace`).

    A reader never sees a half-written page, and an error while rendering leaves an existing file untouched.

    Args:
        path (`str` or `os.PathLike`):
            Destination `.html` file; missing parent directories are created.
        prompts, scored:
            As in `render_heatmap`.
        **kwargs:
            Passed to `render_heatmap` (`title`, `labels`, `vmin`).

    Returns:
        `Path`: the written file.

    Example:
        ```python
        >>> write_heatmap("out/heatmap.html", prompts, reward.score_tokens(prompts, responses))
        PosixPath('out/heatmap.html')
        ```
    """
    return write_atomic(path, render_heatmap(prompts, scored, **kwargs))
