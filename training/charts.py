"""Line charts drawn as SVG on the server: no JavaScript, nothing for the CSP to allow.

Colours and strokes are SVG presentation attributes (not ``style=``), which CSP's style-src
does not govern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT = 360, 170
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 24, 22


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _step(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else _fmt(value)


def _coord(value: float) -> str:
    """A coordinate, formatted before it reaches ``format_html``: its arguments are escaped into
    strings first, so a ``{:.1f}`` in the template would raise on them."""
    return f"{value:.1f}"


def _plottable(row: dict[str, Any], key: str) -> bool:
    """A step whose value can be drawn: NaN or an infinite loss would bend every other point."""
    value, step = row.get(key), row.get("step")
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in (value, step)
    )


class _Axis:
    """Where a value falls between an axis's ends, as a fraction. Values are divided by the
    largest magnitude before they are subtracted, so that a series spanning -1e308..1e308 does
    not overflow to inf; a flat series is padded (by ``pad``, or 1 % of its value when that is
    more, since 1e20 + 0.5 is still 1e20) so that it sits mid-axis."""

    def __init__(self, values: Sequence[float], *, pad: float) -> None:
        self.scale = max(abs(min(values)), abs(max(values)), 1.0)
        self.lo, self.hi = min(values) / self.scale, max(values) / self.scale  # in [-1, 1]
        if self.hi == self.lo:
            margin = max(pad / self.scale, abs(self.lo) * 0.01)
            self.lo, self.hi = self.lo - margin, self.hi + margin
        self.low = self._unscaled(self.lo, min(values))
        self.high = self._unscaled(self.hi, max(values))

    def _unscaled(self, value: float, fallback: float) -> float:
        unscaled = value * self.scale
        return unscaled if math.isfinite(unscaled) else fallback

    def fraction(self, value: float) -> float:
        return (value / self.scale - self.lo) / (self.hi - self.lo)


def line_chart(
    series: Sequence[dict[str, Any]], key: str, *, title: str | None = None, colour: str = "#2f5bd3"
) -> SafeString:
    """An SVG line of ``row[key]`` against ``row["step"]`` for the rows that have it."""
    points = [(float(row["step"]), float(row[key])) for row in series if _plottable(row, key)]
    title = title or key
    header = format_html(
        '<svg class="chart" viewBox="0 0 {} {}" width="{}" height="{}" role="img" '
        'aria-label="{}"><title>{}</title>'
        '<text x="4" y="15" font-size="12" font-weight="600" fill="#1c2330">{}</text>',
        WIDTH, HEIGHT, WIDTH, HEIGHT, title, title, title,
    )  # fmt: skip
    if not points:
        body = format_html(
            '<text x="{}" y="{}" font-size="12" fill="#5b6577">no steps yet</text>',
            LEFT,
            HEIGHT // 2,
        )
        return format_html("{}{}</svg>", header, body)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_axis, y_axis = _Axis(xs, pad=1.0), _Axis(ys, pad=0.5)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + x_axis.fraction(x) * plot_w

    def sy(y: float) -> float:
        return TOP + (1 - y_axis.fraction(y)) * plot_h

    path = " ".join(f"{_coord(sx(x))},{_coord(sy(y))}" for x, y in points)
    axes = format_html(
        '<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="#dde2ea"/>'
        '<line x1="{l}" y1="{t}" x2="{l}" y2="{b}" stroke="#dde2ea"/>'
        '<text x="{lt}" y="{ty}" font-size="10" text-anchor="end" fill="#5b6577">{ymax}</text>'
        '<text x="{lt}" y="{b}" font-size="10" text-anchor="end" fill="#5b6577">{ymin}</text>'
        '<text x="{l}" y="{xl}" font-size="10" fill="#5b6577">step {xmin}</text>'
        '<text x="{r}" y="{xl}" font-size="10" text-anchor="end" fill="#5b6577">{xmax}</text>',
        l=LEFT, r=WIDTH - RIGHT, t=TOP, b=HEIGHT - BOTTOM, lt=LEFT - 4, ty=TOP + 8,
        xl=HEIGHT - 6, ymax=_fmt(y_axis.high), ymin=_fmt(y_axis.low),
        xmin=_step(min(xs)), xmax=_step(max(xs)),
    )  # fmt: skip
    zero = ""
    if y_axis.low < 0 < y_axis.high:
        zero = format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#dde2ea" stroke-dasharray="3 3"/>',
            LEFT, _coord(sy(0)), WIDTH - RIGHT, _coord(sy(0)),
        )  # fmt: skip
    line = format_html(
        '<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>', path, colour
    )
    # The last point is marked, so that a one-step series (a polyline of one point draws
    # nothing) still shows where it is.
    last = format_html(
        '<circle cx="{}" cy="{}" r="3" fill="{}"/>'
        '<text x="{}" y="15" font-size="11" text-anchor="end" fill="{}">last {}</text>',
        _coord(sx(xs[-1])), _coord(sy(ys[-1])), colour, WIDTH - RIGHT, colour, _fmt(ys[-1]),
    )  # fmt: skip
    return format_html("{}{}{}{}{}</svg>", header, axes, zero, line, last)


CHARTS = (
    ("loss", "loss", "#2f5bd3"),
    ("rewards/margins", "rewards/margins", "#1d8a4e"),
    ("rewards/accuracies", "rewards/accuracies", "#b7791f"),
)


# After each epoch (runner.epoch_point): the shares that early stopping and the report read.
EPOCH_CHARTS = (
    ("eval/flagged_fixed", "flagged passing (share)", "#1d8a4e"),
    ("eval/preferring", "prefer the good answer (share)", "#2f5bd3"),
    ("eval/within_tolerance", "regression within tolerance (share)", "#b7791f"),
)


def job_charts(series: Sequence[dict[str, Any]]) -> SafeString:
    """The per-step training charts, then the per-epoch eval figures that were measured."""
    charts = list(CHARTS)
    charts += [chart for chart in EPOCH_CHARTS if any(chart[0] in row for row in series)]
    return format_html_join(
        "",
        "{}",
        ((line_chart(series, key, title=title, colour=colour),) for key, title, colour in charts),
    )
