"""Chart data of a code execution's results, as E2B's code interpreter has it (``Result.chart``).

The kernel bridge extracts it from matplotlib figures inside the sandbox (`vmpool._guest_charts`
documents the JSON); `chart_from_json` turns that JSON into these classes. Names, attributes
and enum values are E2B's (``e2b_code_interpreter.charts``), so code written for E2B reads them
unchanged: ``chart.type == "bar"``, ``chart.elements[0].value``. Every chart keeps the JSON it
came from (`Chart.to_dict`). Unlike E2B's, bar and box-and-whisker charts also carry tick
fields, like line and scatter charts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "BarChart", "BarData", "BoxAndWhiskerChart", "BoxAndWhiskerData", "Chart", "Chart2D", "ChartType",
    "ChartTypes", "LineChart", "PieChart", "PieData", "PointChart", "PointData", "ScaleType", "ScatterChart",
    "SuperChart", "chart_from_json",
]

Point = tuple[Union[str, float, None], Union[str, float, None]]


class ChartType(enum.StrEnum):
    """What a chart shows; ``unknown`` for figures that fit no other shape."""

    LINE = "line"
    SCATTER = "scatter"
    BAR = "bar"
    PIE = "pie"
    BOX_AND_WHISKER = "box_and_whisker"
    SUPERCHART = "superchart"
    UNKNOWN = "unknown"


class ScaleType(enum.StrEnum):
    """The scale of an axis (matplotlib's, plus datetime and categorical axes)."""

    LINEAR = "linear"
    DATETIME = "datetime"
    CATEGORICAL = "categorical"
    LOG = "log"
    SYMLOG = "symlog"
    LOGIT = "logit"
    FUNCTION = "function"
    FUNCTIONLOG = "functionlog"
    ASINH = "asinh"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: Any) -> ScaleType:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


@dataclass(repr=False)
class Chart:
    """Any chart: its type, title and elements (whose class depends on the type)."""

    type: ChartType
    title: str | None
    elements: list[Any] = field(default_factory=list)
    _raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chart:
        return cls(type=ChartType.UNKNOWN, title=data.get("title"), elements=list(data.get("elements") or []),
                   _raw=data)

    def to_dict(self) -> dict[str, Any]:
        """The chart's JSON, as the sandbox sent it."""
        return self._raw

    def __repr__(self) -> str:
        return "%s(title=%r, elements=%d)" % (type(self).__name__, self.title, len(self.elements))


@dataclass(repr=False)
class Chart2D(Chart):
    """A chart with x and y axes; units are the parenthesized part of the labels, "Time (s)"."""

    x_label: str | None = None
    y_label: str | None = None
    x_unit: str | None = None
    y_unit: str | None = None
    x_ticks: list[str | float] = field(default_factory=list)
    x_tick_labels: list[str] = field(default_factory=list)
    x_scale: ScaleType = ScaleType.LINEAR
    y_ticks: list[str | float] = field(default_factory=list)
    y_tick_labels: list[str] = field(default_factory=list)
    y_scale: ScaleType = ScaleType.LINEAR

    @staticmethod
    def _axes(data: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for axis in ("x", "y"):
            for name in ("label", "unit"):
                fields[axis + "_" + name] = data.get(axis + "_" + name)
            fields[axis + "_ticks"] = list(data.get(axis + "_ticks") or [])
            fields[axis + "_tick_labels"] = list(data.get(axis + "_tick_labels") or [])
            fields[axis + "_scale"] = ScaleType.parse(data.get(axis + "_scale", "linear"))
        return fields


@dataclass
class PointData:
    """One line or scatter series: its label and (x, y) points (x an ISO string on date axes)."""

    label: str
    points: list[Point]


@dataclass(repr=False)
class PointChart(Chart2D):
    elements: list[PointData] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PointChart:
        elements = [PointData(label=e.get("label", ""), points=[(x, y) for x, y in e.get("points", [])])
                    for e in data.get("elements") or []]
        return cls(type=_TYPES_OF[cls], title=data.get("title"), elements=elements, _raw=data, **cls._axes(data))


@dataclass(repr=False)
class LineChart(PointChart):
    pass


@dataclass(repr=False)
class ScatterChart(PointChart):
    pass


@dataclass
class BarData:
    """One bar: its category (label), its series (group) and height."""

    label: str
    group: str
    value: float


@dataclass(repr=False)
class BarChart(Chart2D):
    """Bars; x is the axis of the categories, also for horizontal bars."""

    elements: list[BarData] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BarChart:
        elements = [BarData(label=e.get("label", ""), group=e.get("group", ""), value=e.get("value"))
                    for e in data.get("elements") or []]
        return cls(type=ChartType.BAR, title=data.get("title"), elements=elements, _raw=data, **cls._axes(data))


@dataclass
class PieData:
    """One slice: label, angle in degrees, radius."""

    label: str
    angle: float
    radius: float


@dataclass(repr=False)
class PieChart(Chart):
    elements: list[PieData] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PieChart:
        elements = [PieData(label=e.get("label", ""), angle=e.get("angle"), radius=e.get("radius"))
                    for e in data.get("elements") or []]
        return cls(type=ChartType.PIE, title=data.get("title"), elements=elements, _raw=data)


@dataclass
class BoxAndWhiskerData:
    """One box: whisker ends (min, max), quartiles, median and the points beyond the whiskers."""

    label: str
    min: float
    first_quartile: float
    median: float
    third_quartile: float
    max: float
    outliers: list[float] = field(default_factory=list)


@dataclass(repr=False)
class BoxAndWhiskerChart(Chart2D):
    """Boxes; x is the axis of the categories, also for horizontal boxes."""

    elements: list[BoxAndWhiskerData] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoxAndWhiskerChart:
        elements = [BoxAndWhiskerData(
            label=e.get("label", ""), min=e.get("min"), first_quartile=e.get("first_quartile"),
            median=e.get("median"), third_quartile=e.get("third_quartile"), max=e.get("max"),
            outliers=list(e.get("outliers") or [])) for e in data.get("elements") or []]
        return cls(type=ChartType.BOX_AND_WHISKER, title=data.get("title"), elements=elements, _raw=data,
                   **cls._axes(data))


@dataclass(repr=False)
class SuperChart(Chart):
    """A figure of several axes: one chart per axes, the figure's suptitle as title."""

    elements: list[Chart] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuperChart:
        elements = [chart_from_json(e) for e in data.get("elements") or [] if isinstance(e, dict)]
        return cls(type=ChartType.SUPERCHART, title=data.get("title"), elements=elements, _raw=data)


ChartTypes = Union[LineChart, ScatterChart, BarChart, PieChart, BoxAndWhiskerChart, SuperChart, Chart]

_CLASSES: dict[str, type[Chart]] = {
    ChartType.LINE: LineChart, ChartType.SCATTER: ScatterChart, ChartType.BAR: BarChart, ChartType.PIE: PieChart,
    ChartType.BOX_AND_WHISKER: BoxAndWhiskerChart, ChartType.SUPERCHART: SuperChart,
}
_TYPES_OF: dict[type[Chart], ChartType] = {cls: ChartType(name) for name, cls in _CLASSES.items()}


def chart_from_json(data: dict[str, Any]) -> Chart:
    """The chart of this JSON; a type this version does not know becomes a plain `Chart` of
    type unknown (its JSON still in `to_dict`)."""
    return _CLASSES.get(str(data.get("type")), Chart).from_json(data)
