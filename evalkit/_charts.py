"""The report's charts: matplotlib figures as inline SVG (matplotlib only here, imported lazily).

Each chart is a pure function of the figures it shows and returns the same SVG text for the same
input: the ids matplotlib derives are salted per chart (so two charts on one page never share
an id) and the file carries no date or version. Text stays text (``svg.fonttype: none``), drawn
with the browser's own fonts: nothing is fetched.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

STATUS_COLORS = {
    "passed": "#1b7f3b",
    "failed": "#c0392b",
    "timeout": "#d9822b",
    "oom": "#8e44ad",
    "infra_error": "#6b7a8f",
}
"""One colour per status, shared with the page's CSS so charts and tables agree."""

_LABELLED_PROBLEMS = 40  # up to this many bars, each carries its task id


def pass_rates(rows: Sequence[tuple[str, float | None, str]]) -> str:
    """Bar per problem, in the given order: ``(task_id, pass rate or None, link target)``.

    Each bar links to its target (the problem's row); problems without a scored sample get a
    grey tick at zero so gaps read as "not scored", not as "failed".
    """
    return _chart("pass-rates", "Pass rate of each problem", (7.6, 2.0), lambda ax: _draw_pass_rates(ax, rows))


def _draw_pass_rates(ax: Axes, rows: Sequence[tuple[str, float | None, str]]) -> None:
    xs = range(len(rows))
    rates = [rate if rate is not None else 0.0 for _, rate, _ in rows]
    bars = ax.bar(xs, [max(rate, 0.012) for rate in rates], width=0.8, color=[_rate_color(rate) for _, rate, _ in rows])
    for bar, (_, _, target) in zip(bars, rows):
        bar.set_url(target)
    ax.set_xlim(-0.6, max(len(rows), 1) - 0.4)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("pass rate")
    ax.yaxis.set_major_formatter(_percent())
    if len(rows) <= _LABELLED_PROBLEMS:
        ax.set_xticks(list(xs), [task_id for task_id, _, _ in rows], rotation=60, ha="right", fontsize=7)
    else:
        step = _nice_step(len(rows))
        ax.set_xticks(list(range(0, len(rows), step)))
        ax.set_xlabel(f"problems in task order ({len(rows)}); click a bar to open its row")


def durations(by_status: Mapping[str, Sequence[float]]) -> str:
    """Histogram of sample durations, stacked by status; log-spaced when they span decades
    (typical: most samples take 0.1 s, timeouts 10 s)."""
    return _chart("durations", "Distribution of sample durations by status", (3.9, 2.0), lambda ax: _draw_durations(ax, by_status))


def _draw_durations(ax: Axes, by_status: Mapping[str, Sequence[float]]) -> None:
    values = [v for vs in by_status.values() for v in vs]
    lo, hi = min(values), max(values)
    log = lo > 0 and hi / lo > 20
    if log:
        edges = [lo * (hi / lo) ** (i / 30) for i in range(30)] + [hi]  # hi itself, not a rounding of it below the slowest
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_seconds())
        ax.xaxis.set_minor_formatter(_seconds(minor=hi / lo < 300))  # labels between decades only while there is room
        ax.tick_params(axis="x", which="both", length=3)
    else:
        top = hi if hi > lo else lo + 1.0
        edges = [lo + (top - lo) * i / 30 for i in range(31)]
    names = [s for s in STATUS_COLORS if by_status.get(s)]
    ax.hist(
        [list(by_status[s]) for s in names],
        bins=edges,
        stacked=True,
        color=[STATUS_COLORS[s] for s in names],
        label=names,
    )
    ax.set_xlabel("seconds per sample" + (" (log scale)" if log else ""))
    ax.set_ylabel("samples")
    ax.legend(frameon=False, fontsize=7)


def statuses(counts: Mapping[str, int]) -> str:
    """Horizontal bar per status, with its count; infra_error set apart below a gap."""
    return _chart("statuses", "Samples per status", (3.7, 2.0), lambda ax: _draw_statuses(ax, counts))


def _draw_statuses(ax: Axes, counts: Mapping[str, int]) -> None:
    model = [s for s in STATUS_COLORS if s != "infra_error"]
    names = [*model, "infra_error"]
    ys = [len(names) - i for i in range(len(model))] + [0.2]  # the gap: not a model verdict
    values = [counts.get(s, 0) for s in names]
    ax.barh(ys, values, height=0.7, color=[STATUS_COLORS[s] for s in names])
    ax.set_yticks(ys, [*model, "infra_error (not the model)"])
    top = max(values, default=0) or 1
    for y, value in zip(ys, values):
        ax.text(value + top * 0.01, y, str(value), va="center", fontsize=7)
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("samples")


def _chart(name: str, title: str, size: tuple[float, float], draw: Callable[[Axes], None]) -> str:
    """What `draw` draws on a figure of `size` inches, under the charts' style, as an ``<svg>``
    element for inlining in HTML, byte-identical for equal drawings."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({
        "svg.fonttype": "none",
        "svg.hashsalt": f"evalkit-{name}",
        "font.size": 8,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.edgecolor": "#888888",
        "axes.labelcolor": "#333333",
        "xtick.color": "#555555",
        "ytick.color": "#555555",
    }):
        fig = Figure(figsize=size, layout="constrained")
        draw(fig.add_subplot())
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Title": title, "Date": None, "Creator": None, "Format": None, "Type": None})
    return _inline(buffer.getvalue(), name)


def _inline(svg: str, name: str) -> str:
    """Matplotlib's standalone SVG file made into an element of an HTML page: no XML prolog or
    namespace declarations (HTML parsers add them), links that stay in the page, ids only where
    something refers to them (matplotlib's own ids, e.g. ``figure_1``, repeat from chart to chart)."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg, count=2)
    svg = svg.replace("xlink:href=", "href=").replace(' target="_blank"', "")
    svg = re.sub(r"<style[^>]*>.*?</style>|\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    used = set(re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', svg))
    referenced = {ref for pair in used for ref in pair if ref}
    svg = re.sub(r'\s+id="([^"]*)"', lambda m: m.group(0) if m.group(1) in referenced else "", svg)
    svg = re.sub(r"<defs>\s*</defs>\s*", "", svg)
    return svg.replace("<svg ", f'<svg class="chart-{name}" role="img" ', 1).strip()


def _rate_color(rate: float | None) -> str:
    if rate is None:
        return "#bbbbbb"
    if rate >= 1.0:
        return STATUS_COLORS["passed"]
    if rate <= 0.0:
        return STATUS_COLORS["failed"]
    return "#d4a72c"


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def _seconds(minor: bool | None = None) -> Any:
    """Tick labels in plain seconds (0.01, 0.1, 1); for minor ticks (`minor` True) only at 2 and
    5 times a power of ten, and (`minor` False) none."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _pos: int | None) -> str:
        if minor is False or (minor and f"{value:.0e}"[0] not in "25"):
            return ""
        return f"{value:g}"

    return FuncFormatter(label)


def _nice_step(count: int) -> int:
    """A tick every 1, 2, 5, 10, 20, ... problems, about ten ticks in all."""
    raw = count / 10
    magnitude = 10 ** math.floor(math.log10(raw))
    return int(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))
