"""Charts as inline SVG, drawn on the server: no charting script to ship, nothing for the browser to
lay out but a few hundred elements, and each chart carries its figures as a table for screen readers
(the page shows it under "Figures")."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count

from markupsafe import Markup, escape

# Okabe and Ito's palette: told apart with every common colour-vision deficiency
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
_ids = count()

X = float | dt.datetime


@dataclass
class Series:
    name: str
    points: list[tuple[X, float]] = field(default_factory=list)


def _nice_ticks(low: float, high: float, n: int = 4) -> list[float]:
    """About ``n`` round steps from at or below ``low`` to at or above ``high``."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    count = max(1, round((last - first) / step))
    return [round(first + i * step, 10) for i in range(count + 1)]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _x_value(x: X) -> float:
    return x.timestamp() if isinstance(x, dt.datetime) else float(x)


def _x_label(x: float, as_time: bool, span: float) -> str:
    if not as_time:
        return _fmt(x)
    at = dt.datetime.fromtimestamp(x, dt.UTC)
    if span < 600:
        return at.strftime("%H:%M:%S")
    return at.strftime("%H:%M") if span < 2 * 86400 else at.strftime("%b %d")


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    y_label: str,
    x_label: str = "",
    limits: Sequence[tuple[float, str]] = (),
    width: int = 640,
    height: int = 220,
    chart_id: str | None = None,
) -> Markup:
    """Lines of ``series`` (x: numbers or datetimes) with dashed horizontal ``limits`` (value, label)."""
    uid = chart_id or f"chart{next(_ids)}"
    # a diverged loss (inf, nan) has no place on an axis: such points are left out
    series = [Series(s.name, [(x, y) for x, y in s.points if math.isfinite(y)]) for s in series]
    left, right, top, bottom = 56, 16, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [_x_value(x) for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points] + [v for v, _ in limits]
    as_time = any(isinstance(x, dt.datetime) for s in series for x, _ in s.points)
    parts = [
        f'<svg class="chart" id="{uid}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{uid}-t" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{uid}-t">{escape(title)}</title>',
    ]
    if not xs:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">No data yet</text>'
        )
        return Markup("".join(parts) + "</svg>")
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_high = x_low + 1
    y_ticks = _nice_ticks(min(0.0, min(ys)) if min(ys) >= 0 else min(ys), max(ys))
    y_low, y_high = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_low) / ((y_high - y_low) or 1) * plot_h

    for tick in y_ticks:
        y = py(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(tick)}</text>'
        )
    for i in range(5):
        x = x_low + (x_high - x_low) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"  # the ends stay inside the chart
        parts.append(
            f'<text x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="{anchor}" class="tick">'
            f"{escape(_x_label(x, as_time, x_high - x_low))}</text>"
        )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2}" class="axis" transform="rotate(-90 12 {top + plot_h / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    if x_label:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{height - 2}" class="axis" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
    for value, label in limits:
        y = py(value)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="limit"/>')
        parts.append(
            f'<text x="{width - right - 4}" y="{y - 4:.1f}" text-anchor="end" class="limit-label">'
            f"{escape(label)}</text>"
        )
    for index, s in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{px(_x_value(x)):.1f},{py(y):.1f}" for x, y in s.points)
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2" '
            f'data-series="{escape(s.name)}"/>'
        )
        if len(s.points) == 1:
            only_x, only_y = s.points[0]
            parts.append(
                f'<circle cx="{px(_x_value(only_x)):.1f}" cy="{py(only_y):.1f}" r="3" fill="{colour}"/>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    groups: Sequence[tuple[str, Sequence[tuple[str, float]]]],
    *,
    title: str,
    width: int = 640,
    chart_id: str | None = None,
) -> Markup:
    """Horizontal bars: for each group (a metric), one bar per (series, value) (the model, then each
    baseline), each labelled with its value."""
    uid = chart_id or f"chart{next(_ids)}"
    names = list(dict.fromkeys(name for _, bars in groups for name, _ in bars))
    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    label_w, bar_h, gap = 150, 14, 12
    rows = sum(len(bars) for _, bars in groups)
    height = 28 + rows * bar_h + len(groups) * gap
    groups = [(metric, [(n, v) for n, v in bars if math.isfinite(v)]) for metric, bars in groups]
    values = [v for _, bars in groups for _, v in bars]
    high = max([*values, 1e-9])
    plot_w = width - label_w - 70
    parts = [
        f'<svg class="chart bars" id="{uid}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{uid}-t">',
        f'<title id="{uid}-t">{escape(title)}</title>',
    ]
    x = label_w
    for name in names:  # the legend
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{colour[name]}"/>')
        parts.append(f'<text x="{x + 14}" y="13" class="tick">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    y = 24
    for metric, bars in groups:
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar_h * len(bars) / 2 + 4:.1f}" text-anchor="end" '
            f'class="tick">{escape(metric)}</text>'
        )
        for name, value in bars:
            w = max(0.0, value) / high * plot_w
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                f'fill="{colour[name]}"><title>{escape(name)}: {_fmt(value)}</title></rect>'
            )
            parts.append(
                f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 3}" class="tick">{_fmt(value)}</text>'
            )
            y += bar_h
        y += gap
    parts.append("</svg>")
    return Markup("".join(parts))
