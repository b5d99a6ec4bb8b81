"""The HTML token heatmap: escaping, whitespace, ordering, colours, hover values, atomic writes, and a real browser."""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cme_reward.cli import heatmap
from cme_reward.cli.heatmap import logprob_color, render_heatmap, write_heatmap
from cme_reward.types import TokenScores

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def ts(tokens: list[str], logprobs: list[float], score: float | None | str = "mean") -> TokenScores:
    if score == "mean":
        score = sum(logprobs) / len(logprobs) if logprobs else None
    return TokenScores(
        token_ids=list(range(100, 100 + len(tokens))),
        tokens=tokens,
        logprobs=logprobs,
        score=score,
        context_length=7,
        truncated=False,
    )


class Page(HTMLParser):
    """Collects, per card, its attributes and the token spans (text with whitespace marks, title, style)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cards: list[dict] = []
        self.scripts = 0
        self._stack: list[str] = []  # class of each open element
        self._token: dict | None = None
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        cls = attrs.get("class", "")
        self._stack.append(cls)
        if tag == "script":
            self.scripts += 1
        if cls == "card":
            self.cards.append({**attrs, "tokens": [], "prompt": "", "head": ""})
        elif cls == "t":
            self._token = {"text": "", "title": attrs["title"], "style": attrs["style"], "lp": attrs["data-lp"]}
            self.cards[-1]["tokens"].append(self._token)
        elif tag == "pre":
            self._in_pre = True

    def handle_endtag(self, tag):
        cls = self._stack.pop()
        if cls == "t":
            self._token = None
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._token is not None:
            self._token["text"] += data
        elif self._in_pre:
            self.cards[-1]["prompt"] += data
        elif self.cards and "head" in self._stack:
            self.cards[-1]["head"] += data + " "


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


def unmark(text: str) -> str:
    """Undo the marks: the page shows '↵' before a newline, '→' before a tab, '␍' for a CR and '·' for a token that
    holds only part of a character."""
    if text == "\u00b7":
        return ""
    return text.replace("\u21b5\n", "\n").replace("\u2192\t", "\t").replace("\u240d", "\r")


def hue(style: str) -> int:
    return int(re.search(r"hsl\((\d+),", style).group(1))


def test_page_is_self_contained():
    page = render_heatmap(["p"], [ts(["a", "b"], [-1.0, -2.0])])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page
    lowered = page.lower()
    for needle in ("<script", "http://", "https://", "src=", "url(", "@import", "<link"):
        assert needle not in lowered, needle


def test_everything_is_escaped_and_round_trips():
    tokens = ["<script>alert(1)</script>", " &amp;", ' "q"', " 'x'", " <b>", "&lt;", " 東京🙂"]
    prompt = "<b>bold</b> & </pre><script>x</script>"
    page = render_heatmap([prompt], [ts(tokens, [-1.0] * len(tokens))], title="<T> & co", labels=["<lab>"])
    assert "<script" not in page and "<b>" not in page and "<T>" not in page and "<lab>" not in page
    assert "&lt;T&gt; &amp; co" in page
    parsed = parse(page)
    assert parsed.scripts == 0
    (card,) = parsed.cards
    assert [t["text"] for t in card["tokens"]] == tokens  # each token's text survives exactly
    assert card["prompt"] == prompt
    assert "<lab>" in card["head"]
    assert all(f"token {tok!r}" in t["title"] for tok, t in zip(tokens, card["tokens"], strict=True))


def test_whitespace_is_visible_and_kept():
    tokens = ["def", " f", "():\n", "\t", "return", "  ", "1", "\r\n", ""]
    page = render_heatmap(["p"], [ts(tokens, [-1.0] * len(tokens))])
    card = parse(page).cards[0]
    shown = [t["text"] for t in card["tokens"]]
    assert [unmark(s) for s in shown] == tokens
    assert shown[2] == "():\u21b5\n" and shown[3] == "\u2192\t" and shown[7] == "\u240d\u21b5\n"
    assert shown[5] == "  "  # spaces stay spaces (the response block uses white-space: pre-wrap)
    assert shown[8] == "\u00b7"  # a token that decodes to nothing still gets a visible, hoverable box
    assert "part of a character completed by a following token" in card["tokens"][8]["title"]
    assert "white-space: pre-wrap" in page


def test_sorted_best_first_unscored_last():
    scored = [
        ts(["a"], [-3.0]),
        ts(["b"], [-1.0]),
        ts([], [], score=None),
        ts(["d"], [-2.0]),
        ts(["e"], [-0.5], score=math.nan),
        ts(["f"], [-1.0]),
    ]
    prompts = [f"prompt {i}" for i in range(len(scored))]
    cards = parse(render_heatmap(prompts, scored)).cards
    assert [int(c["data-index"]) for c in cards] == [1, 5, 3, 0, 2, 4]  # ties keep input order
    assert [c["prompt"] for c in cards] == [prompts[int(c["data-index"])] for c in cards]
    assert [c["head"].split()[0] for c in cards] == ["#1", "#2", "#3", "#4", "#5", "#6"]
    assert "(empty response)" in render_heatmap(["p"], [ts([], [], score=None)])
    assert "CME n/a" in cards[-1]["head"] or "CME n/a" in cards[-2]["head"]


def test_colour_scale():
    assert logprob_color(0.0) == "hsl(120, 70%, 78%)"
    assert logprob_color(-10.0) == "hsl(0, 70%, 78%)"
    assert logprob_color(-5.0) == "hsl(60, 70%, 78%)"
    assert logprob_color(-50.0) == logprob_color(-math.inf) == logprob_color(math.nan) == logprob_color(-10.0)
    assert logprob_color(-1.0, vmin=-2.0) == "hsl(60, 70%, 78%)"
    hues = [hue(logprob_color(-x / 2)) for x in range(21)]
    assert hues == sorted(hues, reverse=True) and len(set(hues)) == 21
    with pytest.raises(ValueError, match="vmin"):
        logprob_color(-1.0, vmin=0.0)


def test_token_colours_and_hover_values_follow_logprobs():
    logprobs = [-0.01, -0.7, -2.5, -6.0, -15.0, -math.inf]
    page = render_heatmap(["p"], [ts([f"w{i}" for i in range(6)], logprobs, score=-3.0)])
    tokens = parse(page).cards[0]["tokens"]
    hues = [hue(t["style"]) for t in tokens]
    assert hues == sorted(hues, reverse=True) and hues[0] > 110 and hues[-1] == 0 and len(set(hues)) == 5
    assert [t["lp"] for t in tokens] == ["-0.0100", "-0.7000", "-2.5000", "-6.0000", "-15.0000", "-inf"]
    assert tokens[2]["title"].startswith("logprob -2.500  p=0.08208")
    assert tokens[2]["title"].endswith("id 102")
    assert "p=0 " in tokens[-1]["title"]
    head = parse(page).cards[0]["head"]
    assert "CME -3.0000" in head and f"ppl {math.exp(3):.1f}" in head and "6 tokens" in head


def test_input_validation():
    with pytest.raises(ValueError, match="2 prompts but 1"):
        render_heatmap(["a", "b"], [ts(["x"], [-1.0])])
    with pytest.raises(ValueError, match="labels"):
        render_heatmap(["a"], [ts(["x"], [-1.0])], labels=["1", "2"])
    with pytest.raises(ValueError, match="2 tokens but 1 logprobs"):
        render_heatmap(["a"], [ts(["x", "y"], [-1.0], score=-1.0)])


def test_write_heatmap_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "dir" / "heatmap.html"
    scored = [ts(["hello", " world"], [-0.5, -3.0])]
    assert write_heatmap(target, ["p"], scored, title="first") == target
    assert "<title>first</title>" in target.read_text(encoding="utf-8")
    assert target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(target.parent) == ["heatmap.html"]  # no temp file left behind

    write_heatmap(str(target), ["p"], scored, title="second")  # overwrite, str path
    assert "<title>second</title>" in target.read_text(encoding="utf-8")

    with pytest.raises(ValueError):  # rendering fails before anything is written
        write_heatmap(target, ["p", "q"], scored)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(heatmap.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_heatmap(target, ["p"], scored, title="third")
    assert "<title>second</title>" in target.read_text(encoding="utf-8")  # old page intact
    assert os.listdir(target.parent) == ["heatmap.html"]  # temp file cleaned up


# --- real browser ------------------------------------------------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Minimal PNG decoder (8-bit RGB/RGBA, not interlaced): returns width, height and the pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        ftype, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    pixels = [tuple(row[x : x + 3]) for row in rows for x in range(0, stride, bpp)]
    return width, height, pixels


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian: apt-get install chromium)")
def test_renders_in_headless_chromium(tmp_path):
    words = "The quick brown fox jumps over the lazy dog and <then> & sleeps\n\tsoundly".split(" ")
    responses = [
        ts([" " + w for w in words], [-0.2 * k for k in range(len(words))]),  # green fading to yellow
        ts([" " + w for w in words], [-4.0 - 0.8 * k for k in range(len(words))]),  # orange to red
    ]
    page = write_heatmap(tmp_path / "page.html", ["Tell me about a fox.", "Tell me about a fox."], responses)
    png = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=800,600",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists(), f"no screenshot (rc={proc.returncode}): {proc.stderr[-2000:]}"
    data = png.read_bytes()
    assert len(data) > 5_000
    width, height, pixels = decode_png(data)
    assert (width, height) == (800, 600)
    colours = set(pixels)
    assert len(colours) > 50  # text, borders and token backgrounds, not a blank page

    def near(rgb, target, tol=12):
        return all(abs(p - t) <= tol for p, t in zip(rgb, target, strict=True))

    # hsl(120, 70%, 78%) ~ rgb(160, 238, 160) (likely tokens); hsl(0, 70%, 78%) ~ rgb(238, 160, 160) (unlikely)
    green = sum(near(p, (160, 238, 160)) for p in pixels)
    red = sum(near(p, (238, 160, 160)) for p in pixels)
    assert green > 200 and red > 200, (green, red)
