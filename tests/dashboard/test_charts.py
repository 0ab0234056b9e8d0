"""Server-side SVG charts: escaped text, gaps for missing days, bars scaled to their maximum."""

from __future__ import annotations

from datetime import date, timedelta

from maskgate.dashboard import charts


def test_line_chart_escapes_names_and_breaks_at_gaps():
    days = [date(2026, 3, 1) + timedelta(days=i) for i in range(5)]
    svg = charts.line_chart(days, {"<b>gate</b>": [1.0, 0.5, None, 0.25, 0.75]}, title='a "title"')
    assert "<b>" not in svg and "&lt;b&gt;gate&lt;/b&gt;" in svg
    assert 'aria-label="a &#34;title&#34;"' in svg
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 4  # two segments around the gap
    assert "03-01" in svg and "03-05" in svg


def test_line_chart_with_no_data_is_an_empty_frame():
    svg = charts.line_chart([date(2026, 3, 1)], {}, title="empty")
    assert svg.startswith("<svg") and "<circle" not in svg


def test_bar_chart_scales_and_highlights():
    svg = charts.bar_chart(
        [("a", 0.5), ("<i>b</i>", 1.0)], title="p", maximum=1.0, percent=True, highlight="a"
    )
    assert "50.0%" in svg and "100.0%" in svg and "&lt;i&gt;" in svg and "<i>" not in svg
    assert 'fill="#d62728"' in svg  # the highlighted bar
    zero = charts.bar_chart([("a", 0), ("b", 0)], title="none")
    assert 'width="0.0"' in zero


def test_a_gate_whose_colour_repeats_never_looks_like_the_first_one():
    """Ten colours: the 11th gate shares gate 1's. It is dashed with hollow points, in the chart and
    in the legend, so the two can be told apart even where a gate has only isolated days (points)."""
    days = [date(2026, 3, 1) + timedelta(days=i) for i in range(3)]
    series = {f"g{i:02}": [0.5, None, 0.7] for i in range(len(charts.PALETTE) + 1)}  # isolated points only
    svg = str(charts.line_chart(days, series, title="compliance"))
    first, repeated = charts.colour(0), charts.colour(len(charts.PALETTE))
    assert first == repeated
    assert svg.count(f'fill="{first}"') == 2  # g00's two points, filled
    assert svg.count(f'fill="#fff" stroke="{repeated}"') == 2  # g10's two points, hollow
    plain, dashed = charts.swatch(0), charts.swatch(len(charts.PALETTE))
    assert "stroke-dasharray" in dashed and "stroke-dasharray" not in plain
