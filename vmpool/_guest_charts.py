"""Chart data of matplotlib figures and table data of pandas DataFrames, computed inside a
Jupyter kernel of a sandbox (the kernel bridge, `_guest_kernel.py`, loads this file into every
Python kernel it starts and calls `install`).

A figure that a cell displays (the inline backend displays every open figure at the end of a
cell) then carries, beside ``image/png``, the mime type `CHART_MIME`: a JSON object shaped like
the chart data of E2B's code interpreter, which `vmpool._charts` reads on the host:

- every chart: ``type`` (line, scatter, bar, pie, box_and_whisker, superchart, unknown),
  ``title`` (str or null) and ``elements``;
- 2D charts (all but pie, superchart and unknown) also: ``x_label``, ``y_label``, ``x_unit``,
  ``y_unit`` (the text in parentheses or brackets of the label, "Time (s)" -> "s"), ``x_ticks``
  (numbers, or ISO dates on a date axis), ``x_tick_labels``, ``x_scale`` (linear, datetime,
  categorical, log, symlog, logit, function, functionlog, asinh) and the same for y. For bar and
  box-and-whisker charts "x" is always the axis of the categories: a horizontal chart has its
  x and y fields swapped, as E2B does;
- elements: line/scatter ``{label, points: [[x, y], ...]}`` (x an ISO string on a date axis, a
  category name for a line over categories); bar ``{label, group, value}``; pie ``{label, angle,
  radius}`` (angle in degrees); box-and-whisker ``{label, min, first_quartile, median,
  third_quartile, max, outliers}``; superchart: one chart per axes of the figure.

A figure with no data has no chart; one that fits none of the shapes is ``unknown``. Numbers
that are not finite (NaN gaps in a line) become null. Extraction never breaks a cell: any error
drops the chart (one line on the kernel's stderr says why). A DataFrame displayed by a cell
carries `DATA_MIME`: ``{column: [values...]}`` like E2B's ``e2b/data`` (dates as ISO strings,
missing values null), left out for frames of more than `MAX_DATA_CELLS` cells.

This file is stdlib only at import (it ships into every sandbox as one of
`vmpool._guest.GUEST_FILES`); IPython, matplotlib and pandas are imported only when a kernel
installs it or displays one of their objects.
"""

from __future__ import annotations

import datetime
import math
import re
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

__all__ = ["CHART_MIME", "DATA_MIME", "MAX_DATA_CELLS", "dataframe_data", "figure_chart", "install"]

CHART_MIME = "application/vnd.vmpool.chart+json"
DATA_MIME = "application/vnd.vmpool.data+json"
MAX_DATA_CELLS = 100_000  # beyond this, a frame's HTML/text is what a reader can use anyway

_MATHDEFAULT = re.compile(r"\\mathdefault\{(.*)\}")
_UNIT = re.compile(r"\s[(\[]([^()\[\]]+)[)\]]")
JSON = dict[str, Any]


def install(shell: Any) -> None:
    """Register the chart and data formatters in `shell` (the kernel's InteractiveShell)."""
    from IPython.core.formatters import BaseFormatter
    from traitlets import Unicode

    def formatter(mime: str, module: str, name: str, extract: Callable[[Any], JSON | None]) -> Any:
        quiet = _quietly(extract)

        class Formatter(BaseFormatter):
            """Formats instances of module.name. Not registered by type: the inline backend
            removes every formatter's Figure entry when it selects its figure formats, and a
            type lookup would import the library before the user's code does."""
            format_type = Unicode(mime)

            def __call__(self, obj: Any) -> JSON | None:
                cls = getattr(sys.modules.get(module), name, None)
                return quiet(obj) if cls is not None and isinstance(obj, cls) else None
        return Formatter(parent=shell.display_formatter)

    formatters = shell.display_formatter.formatters
    formatters[CHART_MIME] = formatter(CHART_MIME, "matplotlib.figure", "Figure", figure_chart)
    formatters[DATA_MIME] = formatter(DATA_MIME, "pandas", "DataFrame", dataframe_data)


def _quietly(extract: Callable[[Any], JSON | None]) -> Callable[[Any], JSON | None]:
    def formatter(obj: Any) -> JSON | None:
        try:
            return extract(obj)
        except Exception as exc:  # a chart is a bonus: never let it break the user's cell
            print("vmpool: no %s for this %s: %s: %s" % (
                "chart" if extract is figure_chart else "data", type(obj).__name__,
                type(exc).__name__, exc), file=sys.__stderr__)
            return None
    return formatter


# --- values -----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _tidy(value: Any) -> float | None:
    """A statistic or angle without float noise (84.75000000000001 -> 84.75)."""
    number = _number(value)
    return None if number is None else float("%.12g" % number)


def _value(value: Any) -> Any:
    """One data value as JSON: numbers (null if not finite), ISO dates, strings."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if type(value).__name__ in ("bool_", "bool"):  # numpy's
        return bool(value)
    if type(value).__name__ in ("NaTType", "NAType"):  # pandas' (NaT is a datetime)
        return None
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if type(value).__name__ == "datetime64":
        return None if str(value) == "NaT" else _value(value.astype("datetime64[us]").item())
    if isinstance(value, int) or type(value).__name__.startswith(("int", "uint")):
        return int(value)
    try:
        return _number(value)
    except (TypeError, ValueError):
        return str(value)


def _coordinate(value: Any) -> Any:
    """A point's coordinate: numbers as floats, dates as ISO strings, categories as strings."""
    value = _value(value)
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


# --- axes -------------------------------------------------------------------------------------


def _date(number: float) -> str:
    """A matplotlib date number as an ISO string."""
    from matplotlib import dates
    return str(dates.num2date(number).isoformat())  # type: ignore[no-untyped-call]


def _is_date_axis(axis: Axis) -> bool:
    from matplotlib import dates
    return isinstance(axis.get_major_locator(), dates.DateLocator) or isinstance(
        axis.get_major_formatter(), (dates.DateFormatter, dates.AutoDateFormatter, dates.ConciseDateFormatter))


def _scale(axis: Axis) -> str:
    from matplotlib.category import UnitData
    if _is_date_axis(axis):
        return "datetime"
    if isinstance(axis.get_units(), UnitData):  # type: ignore[no-untyped-call]
        return "categorical"
    return str(axis.get_scale())


def _ticks(axis: Axis) -> tuple[list[Any], list[str]]:
    """Tick positions (ISO strings on a date axis) and the labels drawn at them."""
    locations = [float(loc) for loc in axis.get_majorticklocs()]
    labels = [_plain(str(label)) for label in axis.get_major_formatter().format_ticks(locations)]
    if _is_date_axis(axis):
        return [_date(loc) for loc in locations], labels
    return [_tidy(loc) for loc in locations], labels


def _plain(label: str) -> str:
    """A tick label without mathtext markup: "$\\mathdefault{10^{2}}$" -> "10^{2}"."""
    if len(label) > 1 and label[0] == label[-1] == "$":
        return _MATHDEFAULT.sub(r"\1", label[1:-1])
    return label


def _label_at(axis: Axis, position: float) -> str:
    """The tick label drawn at `position` (a bar's or box's centre), else the number."""
    locations, labels = _ticks(axis)
    low, high = axis.get_view_interval()
    tolerance = 1e-9 * max(abs(high - low), 1.0)
    for location, label in zip(locations, labels):
        if isinstance(location, float) and abs(location - position) <= tolerance:
            return label
    return "%g" % position


def _title(ax: Axes) -> str | None:
    for where in ("center", "left", "right"):
        title = ax.get_title(where)
        if title:
            return str(title)
    return None


def _unit(label: str | None) -> str | None:
    match = _UNIT.search(label) if label else None
    return match.group(1) if match else None


def _axis_fields(ax: Axes, swap: bool = False) -> JSON:
    fields: JSON = {}
    names = ("y", "x") if swap else ("x", "y")
    for name, axis in zip(names, (ax.xaxis, ax.yaxis)):
        label = axis.get_label_text() or None
        ticks, tick_labels = _ticks(axis)
        fields.update({
            name + "_label": label, name + "_unit": _unit(label), name + "_ticks": ticks,
            name + "_tick_labels": tick_labels, name + "_scale": _scale(axis),
        })
    return {key: fields[key] for key in sorted(fields)}


def _is_reference_line(ax: Axes, line: Line2D) -> bool:
    """axhline/axvline and the like: drawn partly in axes coordinates, not data."""
    return line.get_transform() != ax.transData


# --- charts -----------------------------------------------------------------------------------


def figure_chart(figure: Figure) -> JSON | None:
    """The chart data of `figure`, or None if it shows no data (module docstring)."""
    axes = [ax for ax in figure.get_axes()
            if ax.has_data() and getattr(ax, "_colorbar", None) is None]
    if not axes:
        return None
    if len(axes) == 1:
        return axes_chart(axes[0])
    title = figure.get_suptitle() if hasattr(figure, "get_suptitle") else ""
    return {"type": "superchart", "title": title or None, "elements": [axes_chart(ax) for ax in axes]}


def axes_chart(ax: Axes) -> JSON:
    """The chart of one axes: its shape decided from the artists it holds."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    lines = [line for line in ax.get_lines() if not _is_reference_line(ax, line)]
    patches, collections = list(ax.patches), list(ax.collections)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    if ax.images or ax.tables:
        return _unknown(ax)
    if patches and all(isinstance(p, Wedge) for p in patches) and not lines and not collections:
        return _pie(ax)
    if bars and not lines and not collections and len(patches) == sum(len(c) for c in bars):
        return _bar(ax, bars)
    if not collections:
        boxes = _boxes(ax, lines)
        if boxes is not None:
            return boxes
        if lines and not patches:
            return _points(ax, "line", lines)
    if collections and all(type(c) is PathCollection for c in collections) and not lines and not patches:
        return _points(ax, "scatter", collections)
    return _unknown(ax)


def _unknown(ax: Axes) -> JSON:
    return {"type": "unknown", "title": _title(ax), "elements": []}


def _pie(ax: Axes) -> JSON:
    elements = []
    for wedge in ax.patches:
        label = str(wedge.get_label())
        elements.append({
            "label": "" if label.startswith("_") else label,
            "angle": _tidy(abs(wedge.theta2 - wedge.theta1)),  # type: ignore[attr-defined]
            "radius": _tidy(wedge.r),  # type: ignore[attr-defined]
        })
    return {"type": "pie", "title": _title(ax), "elements": elements}


def _bar(ax: Axes, containers: list[Any]) -> JSON:
    horizontal = all(c.orientation == "horizontal" for c in containers)
    category_axis = ax.yaxis if horizontal else ax.xaxis
    elements = []
    for index, container in enumerate(containers):
        group = str(container.get_label())
        group = "Group %d" % index if group.startswith("_") else group
        for rect in container:
            if horizontal:
                centre, value = rect.get_y() + rect.get_height() / 2, rect.get_width()
            else:
                centre, value = rect.get_x() + rect.get_width() / 2, rect.get_height()
            elements.append({"label": _label_at(category_axis, centre), "group": group,
                             "value": _number(value)})
    return {"type": "bar", "title": _title(ax), **_axis_fields(ax, swap=horizontal), "elements": elements}


def _points(ax: Axes, kind: str, artists: list[Any]) -> JSON:
    x_dates = _is_date_axis(ax.xaxis)
    elements = []
    for index, artist in enumerate(artists):
        label = str(artist.get_label())
        if label.startswith("_"):
            label = "%s %d" % ("Line" if kind == "line" else "Series", index)
        if kind == "line":
            points = [[_coordinate(x), _coordinate(y)] for x, y in zip(artist.get_xdata(), artist.get_ydata())]
        else:
            points = [[_date(x) if x_dates else _coordinate(x), _coordinate(y)]
                      for x, y in artist.get_offsets()]
        if x_dates:  # plotted from numbers on a date axis: show them as dates too
            points = [[_date(x) if isinstance(x, float) else x, y] for x, y in points]
        elements.append({"label": label, "points": points})
    return {"type": kind, "title": _title(ax), **_axis_fields(ax), "elements": elements}


# --- box and whisker --------------------------------------------------------------------------


def _rectangle(xs: list[float], ys: list[float]) -> tuple[float, float, float, float] | None:
    """(x0, x1, y0, y1) if the polygon through these points is an axis-aligned rectangle."""
    if len(xs) < 4 or len(set(xs)) != 2 or len(set(ys)) != 2:
        return None
    return min(xs), max(xs), min(ys), max(ys)


def _boxes(ax: Axes, lines: list[Any]) -> JSON | None:
    """A box-and-whisker chart if the axes hold boxes (patches with patch_artist=True, else
    closed 5-point lines) that each have a median line across them; None otherwise."""
    from matplotlib.patches import PathPatch

    rectangles, used = [], []
    for patch in ax.patches:
        if not isinstance(patch, PathPatch):
            return None
        vertices: Any = patch.get_path().vertices
        rectangle = _rectangle([float(v) for v in vertices[:, 0]], [float(v) for v in vertices[:, 1]])
        if rectangle is None:
            return None
        rectangles.append(rectangle)
    segments, markers = [], []
    for line in lines:
        xs, ys = [float(v) for v in line.get_xdata(orig=False)], [float(v) for v in line.get_ydata(orig=False)]
        if line.get_linestyle() in ("None", "", " "):
            markers.append((xs, ys))
        elif len(xs) == 2:
            segments.append((xs, ys))
        elif not rectangles and _rectangle(xs, ys) is not None and len(xs) == 5:
            used.append(_rectangle(xs, ys))
        else:
            return None
    rectangles = rectangles or [r for r in used if r is not None]
    if not rectangles:
        return None
    boxes = [_box(rectangle, segments, markers) for rectangle in rectangles]
    if any(box is None for box in boxes):
        return None
    horizontal = all(box["horizontal"] for box in boxes if box is not None)
    category_axis = ax.yaxis if horizontal else ax.xaxis
    elements = []
    for box in boxes:
        assert box is not None
        elements.append({"label": _label_at(category_axis, box.pop("centre")), **{
            key: value for key, value in box.items() if key != "horizontal"}})
    return {"type": "box_and_whisker", "title": _title(ax), **_axis_fields(ax, swap=horizontal),
            "elements": elements}


def _box(rectangle: tuple[float, float, float, float], segments: list[tuple[list[float], list[float]]],
         markers: list[tuple[list[float], list[float]]]) -> JSON | None:
    """The statistics of the box `rectangle`, read from the segments around it."""
    for horizontal in (False, True):
        # Work in (position, value) coordinates: position across the boxes, value along them.
        p0, p1, low, high = rectangle if not horizontal else (rectangle[2], rectangle[3], rectangle[0], rectangle[1])
        span = max(high - low, p1 - p0, 1e-12)

        def close(a: float, b: float) -> bool:
            return abs(a - b) <= 1e-9 * span

        oriented = [(ys, xs) if horizontal else (xs, ys) for xs, ys in segments]
        medians = [values[0] for positions, values in oriented
                   if close(values[0], values[1]) and low - 1e-9 * span <= values[0] <= high + 1e-9 * span
                   and close(min(positions), p0) and close(max(positions), p1)]
        if not medians:
            continue
        centre = (p0 + p1) / 2
        whiskers = [values for positions, values in oriented
                    if close(positions[0], positions[1]) and p0 <= positions[0] <= p1]
        lower = [min(values) for values in whiskers if close(max(values), low)]
        upper = [max(values) for values in whiskers if close(min(values), high)]
        outliers = []
        for xs, ys in markers:
            positions, values = (ys, xs) if horizontal else (xs, ys)
            outliers += [value for position, value in zip(positions, values) if p0 <= position <= p1]
        return {
            "centre": centre, "horizontal": horizontal, "min": _tidy(min(lower, default=low)),
            "first_quartile": _tidy(low), "median": _tidy(medians[0]), "third_quartile": _tidy(high),
            "max": _tidy(max(upper, default=high)), "outliers": [_tidy(value) for value in outliers],
        }
    return None


# --- data frames ------------------------------------------------------------------------------


def dataframe_data(frame: Any) -> JSON | None:
    """``{column: [values...]}`` of a pandas DataFrame (None beyond MAX_DATA_CELLS cells)."""
    if frame.size > MAX_DATA_CELLS:
        return None
    return {str(column): [_value(value) for value in frame.iloc[:, index].tolist()]
            for index, column in enumerate(frame.columns)}
