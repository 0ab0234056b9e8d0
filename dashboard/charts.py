"""Charts drawn on the server as inline SVG: no script library, nothing fetched from outside.

Every piece of text that reaches the SVG goes through `escape`; colours are presentation
attributes (the page's Content-Security-Policy forbids inline styles).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from markupsafe import Markup, escape

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def repeats(index: int) -> bool:
    """Past the palette, colours repeat: such a series is drawn dashed with hollow points, so that
    two gates never look alike (gate 1 and gate 11 share a colour)."""
    return index >= len(PALETTE)


def swatch(index: int) -> Markup:
    """A legend entry's mark in HTML, drawn as the series is: a filled square, or for a series
    whose colour repeats, a dashed line through a hollow point."""
    if not repeats(index):
        return Markup(
            '<svg class="swatch" width="12" height="12" aria-hidden="true">'
            f'<rect width="12" height="12" fill="{colour(index)}"/></svg>'
        )
    return Markup(
        '<svg class="swatch" width="18" height="12" aria-hidden="true">'
        f'<line x1="0" x2="18" y1="6" y2="6" stroke="{colour(index)}" stroke-width="2"'
        ' stroke-dasharray="4 2"/>'
        f'<circle cx="9" cy="6" r="3" {_point_paint(index)}/></svg>'
    )


def _point_paint(index: int) -> str:
    if repeats(index):
        return f'fill="#fff" stroke="{colour(index)}" stroke-width="1.5"'
    return f'fill="{colour(index)}"'



def line_chart(
    days: Sequence[date],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    width: int = 760,
    height: int = 260,
) -> Markup:
    """Rates in [0, 1] per day, one line per series; gaps where a value is None."""
    left, right, top, bottom = 44, 24, 12, 28  # room for the axis labels
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(days) - 1)

    def x(i: int) -> float:
        return left + i * step

    def y(rate: float) -> float:
        return top + (1 - rate) * plot_h

    parts = [_svg_open(width, height, title)]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11">{tick:.0%}</text>'
        )
    label_every = max(1, len(days) // 8)
    for i, day in enumerate(days):
        if i % label_every == 0 or i == len(days) - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 8}" text-anchor="middle" font-size="11">'
                f"{day:%m-%d}</text>"
            )
    for index, (name, values) in enumerate(series.items()):
        parts.extend(_line(index, str(name), days, values, x, y))
    parts.append("</svg>")
    return Markup("".join(parts))


def _line(index, name, days, values, x, y) -> list[str]:
    parts, segment = [], []
    for i, value in enumerate(values):
        if value is None:
            parts.append(_polyline(segment, index))
            segment = []
            continue
        segment.append(f"{x(i):.1f},{y(value):.1f}")
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="3" {_point_paint(index)}>'
            f"<title>{escape(name)} {days[i]:%Y-%m-%d}: {value:.1%}</title></circle>"
        )
    parts.append(_polyline(segment, index))
    return parts


def _polyline(points: list[str], index: int) -> str:
    if len(points) < 2:
        return ""
    dash = ' stroke-dasharray="6 3"' if repeats(index) else ""
    stroke = f'stroke="{colour(index)}" stroke-width="2"{dash}'
    return f'<polyline points="{" ".join(points)}" fill="none" {stroke}/>'


def bar_chart(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    maximum: float | None = None,
    percent: bool = False,
    width: int = 420,
    highlight: str | None = None,
) -> Markup:
    """Horizontal bars, one per (name, value); `percent` shows values in [0, 1] as percentages."""
    bar_h, gap, label_w, value_w = 22, 8, 130, 60
    height = len(items) * (bar_h + gap) + gap
    top = maximum if maximum is not None else max([value for _, value in items] + [1e-9])
    span = width - label_w - value_w
    parts = [_svg_open(width, height, title)]
    for i, (name, value) in enumerate(items):
        y = gap + i * (bar_h + gap)
        length = max(0.0, min(1.0, value / top if top else 0.0)) * span
        fill = "#d62728" if highlight is not None and name == highlight else colour(0)
        shown = f"{value:.1%}" if percent else f"{value:,.0f}"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" font-size="12">'
            f"{escape(name)}</text>"
            f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{fill}">'
            f"<title>{escape(name)}: {shown}</title></rect>"
            f'<text x="{label_w + length + 6:.1f}" y="{y + bar_h * 0.7:.1f}" font-size="12">{shown}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _svg_open(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
    )
