"""ROC curves of several verifiers as one self-contained SVG document (no plotting library, no scripts, no fonts)."""

from __future__ import annotations

import html
import math

__all__ = ["roc_svg"]

# Tableau 10: distinct hues; past ten curves the colours repeat with a dash pattern
_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_LEFT, _TOP, _SIZE, _BOTTOM, _GAP, _ROW = 64, 48, 360, 56, 28, 20


def _check(name: str, points: list[tuple[float, float]]) -> None:
    if not points:
        raise ValueError(f"curve {name!r} has no points")
    for i, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y) and -1e-9 <= x <= 1 + 1e-9 and -1e-9 <= y <= 1 + 1e-9):
            raise ValueError(f"curve {name!r}: point {i} ({x!r}, {y!r}) is outside [0, 1] x [0, 1]")


def _xy(x: float, y: float) -> str:
    return f"{_LEFT + x * _SIZE:.2f},{_TOP + (1 - y) * _SIZE:.2f}"


def _axes() -> list[str]:
    bottom, right = _TOP + _SIZE, _LEFT + _SIZE
    parts = []
    for k in range(6):
        offset, label = k * _SIZE / 5, f"{k / 5:.1f}"
        x, y = _LEFT + offset, bottom - offset
        parts += [
            f'<line x1="{x:.2f}" y1="{_TOP}" x2="{x:.2f}" y2="{bottom}" stroke="#e5e5e5"/>',
            f'<line x1="{_LEFT}" y1="{y:.2f}" x2="{right}" y2="{y:.2f}" stroke="#e5e5e5"/>',
            f'<line x1="{x:.2f}" y1="{bottom}" x2="{x:.2f}" y2="{bottom + 5}" stroke="#333"/>',
            f'<line x1="{_LEFT - 5}" y1="{y:.2f}" x2="{_LEFT}" y2="{y:.2f}" stroke="#333"/>',
            f'<text x="{x:.2f}" y="{bottom + 18}" text-anchor="middle">{label}</text>',
            f'<text x="{_LEFT - 8}" y="{y + 4:.2f}" text-anchor="end">{label}</text>',
        ]
    return parts + [
        f'<rect x="{_LEFT}" y="{_TOP}" width="{_SIZE}" height="{_SIZE}" fill="none" stroke="#333"/>',
        f'<line class="chance" x1="{_LEFT}" y1="{bottom}" x2="{right}" y2="{_TOP}" stroke="#999" '
        'stroke-dasharray="6 4"/>',
        f'<text x="{_LEFT + _SIZE / 2}" y="{bottom + 42}" text-anchor="middle">false positive rate</text>',
        f'<text transform="rotate(-90)" x="{-(_TOP + _SIZE / 2)}" y="{_LEFT - 42}" text-anchor="middle">'
        "true positive rate</text>",
    ]


def roc_svg(curves: dict[str, list[tuple[float, float]]], *, title: str, aucs: dict[str, float] | None = None) -> str:
    """Draw ROC curves as a self-contained SVG document: square axes from 0 to 1 with ticks every 0.2, the dashed
    chance diagonal, one polyline per verifier in its own colour, and a legend to the right of the plot.

    Args:
        curves (`dict[str, list[tuple[float, float]]]`):
            (false positive rate, true positive rate) points of each verifier, e.g. from `roc_curve`, in legend order.
        title (`str`):
            Heading of the figure (also its `<title>`).
        aucs (`dict[str, float]`, *optional*):
            AUROC of some or all verifiers, shown in the legend as "name (AUROC 0.734)".

    Returns:
        `str`: the SVG document; the same input always gives the same text. Names and title are HTML-escaped.

    Raises:
        `ValueError`: a curve has no points or a point outside the unit square, or `aucs` names an unknown curve.

    Example:
        ```python
        >>> svg = roc_svg({"smollm2": [(0.0, 0.0), (0.2, 0.7), (1.0, 1.0)]}, title="math", aucs={"smollm2": 0.75})
        >>> svg.startswith("<svg"), "smollm2 (AUROC 0.750)" in svg
        (True, True)
        ```
    """
    aucs = aucs or {}
    unknown = sorted(set(aucs) - set(curves))
    if unknown:
        raise ValueError(f"`aucs` names curves that are not in `curves`: {unknown}")
    legend_x = _LEFT + _SIZE + _GAP
    labels = [name if name not in aucs else f"{name} (AUROC {aucs[name]:.3f})" for name in curves]
    width = legend_x + 36 + 7 * max((len(label) for label in labels), default=0) + 16
    height = max(_TOP + _SIZE + _BOTTOM, _TOP + _ROW * len(curves) + 16)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12" fill="#222">',
        f"<title>{html.escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{_LEFT + _SIZE / 2}" y="{_TOP - 18}" text-anchor="middle" font-size="15" font-weight="bold">'
        f"{html.escape(title)}</text>",
        *_axes(),
    ]
    for i, ((name, points), label) in enumerate(zip(curves.items(), labels)):
        _check(name, points)
        color, dash = _COLORS[i % len(_COLORS)], "" if i < len(_COLORS) else ' stroke-dasharray="8 3"'
        row_y = _TOP + 8 + _ROW * i
        parts += [
            f'<polyline class="curve" fill="none" stroke="{color}" stroke-width="2"{dash} '
            f'points="{" ".join(_xy(x, y) for x, y in points)}"><title>{html.escape(label)}</title></polyline>',
            f'<line x1="{legend_x}" y1="{row_y}" x2="{legend_x + 28}" y2="{row_y}" stroke="{color}" '
            f'stroke-width="3"{dash}/>',
            f'<text x="{legend_x + 36}" y="{row_y + 4}">{html.escape(label)}</text>',
        ]
    return "\n".join([*parts, "</svg>", ""])
