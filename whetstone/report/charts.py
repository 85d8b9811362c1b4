"""Inline SVG charts: line charts for curves, horizontal bars for comparisons.

The report must open offline, so charts are drawn here as SVG text (no JS library,
no CDN). Points carry <title> elements, which browsers show as tooltips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    color: str = PALETTE[0]
    markers: bool = False  # dots at each point: for sparse series such as eval loss


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi] (1, 2, 5 times a power of ten apart)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    n = math.ceil((hi - start) / step - 1e-9)  # the last tick is the first one at or above hi
    return [round(start + i * step, 12) for i in range(n + 1)]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.1e}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def line_chart(series: list[Series], title: str, x_label: str = "step", y_label: str = "") -> str:
    """An SVG line chart of one or more series sharing axes."""
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys) if _finite(x) and _finite(y)]
    if not points:
        return f'<p class="empty">{escape(title)}: no data logged.</p>'
    x_ticks = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    y_ticks = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{LEFT}" y="16" class="title">{escape(title)}</text>']
    for t in y_ticks:
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in x_ticks:
        parts.append(f'<text class="tick" x="{sx(t):.1f}" y="{HEIGHT - BOTTOM + 16}" '
                     f'text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>')
    parts.append(f'<text class="label" x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text class="label" transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" '
                     f'text-anchor="middle">{escape(y_label)}</text>')
    for i, s in enumerate(series):
        pts = [(sx(x), sy(y), x, y) for x, y in zip(s.xs, s.ys) if _finite(x) and _finite(y)]
        if not pts:
            continue
        d = "M" + " L".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts)
        parts.append(f'<path class="series" data-series="{escape(s.name)}" d="{d}" fill="none" '
                     f'stroke="{s.color}" stroke-width="2"/>')
        if s.markers or len(pts) == 1:
            for px, py, x, y in pts:
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{s.color}">'
                             f'<title>{escape(s.name)} at {x:g}: {y:.5g}</title></circle>')
        lx = WIDTH - RIGHT - 130 * (len(series) - i)  # legends sit in the title row, clear of the plot
        parts.append(f'<rect x="{lx}" y="10" width="12" height="3" fill="{s.color}"/>'
                     f'<text class="legend" x="{lx + 18}" y="15">{escape(s.name[:18])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(categories: list[str], series: list[tuple[str, list[float]]], title: str) -> str:
    """Horizontal grouped bars: one group per category, one bar per series; negative values go left."""
    values = [v for _, vs in series for v in vs if _finite(v)]
    if not categories or not values:
        return f'<p class="empty">{escape(title)}: nothing to plot.</p>'
    lo, hi = min(0.0, min(values)), max(0.0, max(values))
    bar_h, gap, label_w = 14, 10, 170
    group_h = bar_h * len(series) + gap
    height = TOP + group_h * len(categories) + 30
    plot_w = WIDTH - label_w - RIGHT - 50

    def sx(v: float) -> float:
        return label_w + (v - lo) / ((hi - lo) or 1) * plot_w

    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {height}" '
             f'width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="8" y="16" class="title">{escape(title)}</text>']
    for c, category in enumerate(categories):
        y = TOP + c * group_h
        parts.append(f'<text class="tick" x="{label_w - 8}" y="{y + group_h / 2}" text-anchor="end">'
                     f'{escape(category[:28])}</text>')
        for s, (name, vs) in enumerate(series):
            v = vs[c] if c < len(vs) else float("nan")
            if not _finite(v):
                continue
            x_a, x_b = sorted((sx(0.0), sx(v)))
            parts.append(f'<rect class="bar" x="{x_a:.1f}" y="{y + s * bar_h}" width="{max(x_b - x_a, 1):.1f}" '
                         f'height="{bar_h - 2}" fill="{PALETTE[s % len(PALETTE)]}">'
                         f'<title>{escape(category)} / {escape(name)}: {v:.5g}</title></rect>')
            parts.append(f'<text class="tick" x="{x_b + 4:.1f}" y="{y + s * bar_h + bar_h - 4}">{_fmt(v)}</text>')
    parts.append(f'<line class="axis" x1="{sx(0.0):.1f}" x2="{sx(0.0):.1f}" y1="{TOP - 4}" '
                 f'y2="{height - 26}"/>')
    if len(series) > 1:
        for s, (name, _) in enumerate(series):
            lx = label_w + s * 120
            parts.append(f'<rect x="{lx}" y="{height - 16}" width="12" height="10" fill="{PALETTE[s % len(PALETTE)]}"/>'
                         f'<text class="legend" x="{lx + 16}" y="{height - 7}">{escape(name[:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
