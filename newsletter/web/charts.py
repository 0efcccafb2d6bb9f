"""Where the stats pages' chart marks go: figures in, positions and words out; the templates
(`_stats_charts.html`) draw them as SVG.

Widths are percentages of the page's column, so a chart fits a phone and a desktop alike while
its text keeps its size; the line chart's plot is a 100 x 100 box stretched to its place (the
lines keep their thickness: `vector-effect` in stats.css).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..history import ReaderWeek
from ..stats import LABELS, RATES, Figures

BARS = ("delivered", "opened", "clicked", "bounced")  # of each issue, in this order
RATE_OF = {"delivered": "delivered_rate", "opened": "open_rate", "clicked": "click_rate", "bounced": "bounce_rate"}
HEAD, ROW, GAP = 24, 22, 12  # px: an issue's name, one bar's row, space after an issue
PLOT_TOP, PLOT_HEIGHT, LINE_HEIGHT = 10, 160, 200  # px: the line chart
SERIES = 6  # distinct line styles (colour and dash) in stats.css; more categories reuse them
SHORT = 40  # characters of an issue's name shown beside its bars (all of it in the tooltip)


@dataclass(frozen=True)
class Bar:
    name: str  # delivered | opened | clicked | bounced: also its CSS class
    label: str
    value: int | None  # None: not tracked
    width: float  # percent of the bar's track, against the largest `sent` charted
    y: int
    title: str


@dataclass(frozen=True)
class BarGroup:
    issue: str
    short: str
    title: str
    y: int  # the baseline of its name
    bars: list[Bar]


@dataclass(frozen=True)
class BarChart:
    groups: list[BarGroup]
    height: int

    @property
    def bars(self) -> int:
        return sum(bar.value is not None for group in self.groups for bar in group.bars)


def bar_groups(issues: list[Figures], *, opens: bool = True, clicks: bool = True) -> BarChart:
    """Four bars per issue; every bar against the largest number of emails sent among them."""
    scale = max((f.sent for f in issues), default=0) or 1
    tracked = {"opened": opens, "clicked": clicks}
    groups, y = [], 0
    for figures in issues:
        bars = []
        for n, name in enumerate(BARS):
            value = getattr(figures, name) if tracked.get(name, True) else None
            bars.append(Bar(name, LABELS[name], value, round(100 * (value or 0) / scale, 2),
                            y + HEAD + n * ROW, _bar_title(figures, name, value)))
        short = figures.issue if len(figures.issue) <= SHORT else figures.issue[:SHORT - 1] + "…"
        groups.append(BarGroup(figures.issue, short, f"{figures.issue}: {figures.subject}", y + 16, bars))
        y += HEAD + len(BARS) * ROW + GAP
    return BarChart(groups, max(y - GAP, 0))


def _bar_title(figures: Figures, name: str, value: int | None) -> str:
    if value is None:
        return f"{LABELS[name]}: not tracked"
    rate = figures.rate(RATE_OF[name])
    of = RATES[RATE_OF[name]][1]
    share = f" ({rate * 100:.1f}%)" if rate is not None else ""
    return f"{figures.issue}, {LABELS[name]}: {value:,} of {getattr(figures, of):,} {of}{share}"


@dataclass(frozen=True)
class Series:
    key: str
    name: str
    style: int  # 1..SERIES: its colour and dash in stats.css
    points: str  # in the plot's 100 x 100 box
    title: str


@dataclass(frozen=True)
class Column:
    """The strip of the plot around one week: hovering it shows that week's numbers."""

    x: float
    width: float
    title: str


@dataclass(frozen=True)
class LineChart:
    weeks: list[ReaderWeek]
    series: list[Series]
    columns: list[Column]
    ticks: list[tuple[str, float]]  # (label, y in px) of the value axis
    height: int = LINE_HEIGHT
    plot_top: int = PLOT_TOP
    plot_height: int = PLOT_HEIGHT


def line_chart(weeks: list[ReaderWeek], names: dict[str, str]) -> LineChart | None:
    """Active readers of each category, week by week; None without any week."""
    if not weeks:
        return None
    keys = list(weeks[-1].active)
    top = _nice(max((w.active.get(k, 0) for w in weeks for k in keys), default=0))
    xs = [100.0 * i / (len(weeks) - 1) for i in range(len(weeks))] if len(weeks) > 1 else [0.0, 100.0]
    series = []
    for n, key in enumerate(keys):
        values = [w.active.get(key, 0) for w in weeks]
        ys = [round(100 - 100 * v / top, 2) for v in values]
        ys = ys if len(weeks) > 1 else ys * 2
        name = names.get(key, key)
        series.append(Series(key, name, n % SERIES + 1, " ".join(f"{x:.2f},{y}" for x, y in zip(xs, ys)),
                             f"{name}: {values[-1]:,} active readers in {weeks[-1].week}"
                             + (f" ({values[0]:,} in {weeks[0].week})" if len(weeks) > 1 else "")))
    columns = []
    half = 50.0 / (len(weeks) - 1) if len(weeks) > 1 else 50.0
    for week, x in zip(weeks, xs):
        left, right = max(0.0, x - half), min(100.0, x + half)
        numbers = " · ".join(f"{names.get(k, k)} {week.active.get(k, 0):,}" for k in keys)
        columns.append(Column(round(left, 2), round(right - left, 2),
                              f"{week.week} (from {week.starts:%Y-%m-%d}): {numbers}"))
    ticks = [(_short(value), PLOT_TOP + PLOT_HEIGHT * (1 - value / top)) for value in (top, top // 2, 0)
             if value == 0 or value == top or top % 2 == 0]
    return LineChart(weeks, series, columns, ticks)


def _nice(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above `value` (at least 1)."""
    if value <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    return next(f * magnitude for f in (1, 2, 5, 10) if f * magnitude >= value)


def _short(value: int) -> str:
    return f"{value:,}" if value < 10_000 else f"{value / 1000:g}k"
