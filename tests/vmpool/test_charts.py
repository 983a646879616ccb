"""Chart data of matplotlib figures: extracted in a real kernel behind the kernel bridge and read
on the host with vmpool._code's chart classes (E2B's docs examples among them), plus the
extractor's edge cases run in-process."""

from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from vmpool import _guest_charts
from vmpool._code import (
    BarChart, BoxAndWhiskerChart, ChartType, Execution, ExecutionBuilder, LineChart, PieChart, ScaleType,
    ScatterChart, SuperChart,
)

from ._kernel_bridge import BridgeProcess

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    running = BridgeProcess(cwd=str(tmp_path_factory.mktemp("charts")))
    assert running.next(None)["type"] == "ready", running.stderr()
    yield running
    assert running.close() == 0


def run_code(bridge: BridgeProcess, code: str) -> Execution:
    rid = bridge.send("execute", code=code)
    execution = ExecutionBuilder(rid).build(bridge.lines(rid))
    assert execution.error is None, execution.error
    return execution


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def test_e2b_docs_bar_chart(bridge: BridgeProcess) -> None:
    """https://e2b.dev/docs/code-interpreting/create-charts-visualizations/interactive-charts."""
    execution = run_code(bridge, """
import matplotlib.pyplot as plt

# Prepare data
authors = ['Author A', 'Author B', 'Author C', 'Author D']
sales = [100, 200, 300, 400]

# Create and customize the bar chart
plt.figure(figsize=(10, 6))
plt.bar(authors, sales, label='Books Sold', color='blue')
plt.xlabel('Authors')
plt.ylabel('Number of Books Sold')
plt.title('Book Sales by Authors')

# Display the chart
plt.tight_layout()
plt.show()
""")
    [result] = execution.results
    assert result.png is not None and base64.b64decode(result.png).startswith(PNG_MAGIC)
    assert result.formats() == ["text", "png", "chart"]
    chart = result.chart
    assert isinstance(chart, BarChart)
    assert chart.type == ChartType.BAR == "bar"
    assert chart.title == "Book Sales by Authors"
    assert (chart.x_label, chart.y_label, chart.x_unit, chart.y_unit) == (
        "Authors", "Number of Books Sold", None, None)
    assert chart.x_scale == ScaleType.CATEGORICAL
    assert [(bar.label, bar.value, bar.group) for bar in chart.elements] == [
        ("Author A", 100, "Books Sold"), ("Author B", 200, "Books Sold"),
        ("Author C", 300, "Books Sold"), ("Author D", 400, "Books Sold")]


def test_line_chart_with_dates_and_units(bridge: BridgeProcess) -> None:
    execution = run_code(bridge, """
import datetime
import numpy as np
import matplotlib.pyplot as plt
days = [datetime.date(2024, 1, 1) + datetime.timedelta(days=i) for i in range(10)]
plt.plot(days, np.arange(10) ** 2, label='squares')
plt.plot(days, np.arange(10))
plt.xlabel('Day (d)')
plt.ylabel('Value [m]')
plt.title('Growth')
plt.show()
""")
    chart = execution.results[0].chart
    assert isinstance(chart, LineChart) and chart.type == "line"
    assert (chart.title, chart.x_unit, chart.y_unit) == ("Growth", "d", "m")
    assert chart.x_scale == ScaleType.DATETIME and chart.y_scale == ScaleType.LINEAR
    assert all(isinstance(tick, str) for tick in chart.x_ticks)
    datetime.datetime.fromisoformat(str(chart.x_ticks[0]))
    assert [line.label for line in chart.elements] == ["squares", "Line 1"]
    first = chart.elements[0]
    assert first.points[0] == ("2024-01-01", 0.0) and first.points[3] == ("2024-01-04", 9.0)
    assert len(first.points) == 10


def test_scatter_chart(bridge: BridgeProcess) -> None:
    chart = run_code(bridge, """
import matplotlib.pyplot as plt
plt.scatter([1, 2, 3], [4, 5, 6], label='Dataset 1')
plt.scatter([7], [8])
plt.xlabel('A'); plt.ylabel('B')
plt.show()
""").results[0].chart
    assert isinstance(chart, ScatterChart) and chart.type == "scatter"
    assert chart.title is None and (chart.x_label, chart.y_label) == ("A", "B")
    assert [(series.label, series.points) for series in chart.elements] == [
        ("Dataset 1", [(1.0, 4.0), (2.0, 5.0), (3.0, 6.0)]), ("Series 1", [(7.0, 8.0)])]
    assert all(isinstance(tick, float) for tick in chart.x_ticks + chart.y_ticks)


def test_pie_chart(bridge: BridgeProcess) -> None:
    chart = run_code(bridge, """
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.pie([90, 10], labels=['No', 'No, in blue'], autopct='%1.1f%%', startangle=90)
ax.axis('equal')
plt.title('Will I wake up early tomorrow?')
plt.show()
""").results[0].chart
    assert isinstance(chart, PieChart) and chart.type == "pie"
    assert chart.title == "Will I wake up early tomorrow?"
    assert [(p.label, p.angle, p.radius) for p in chart.elements] == [("No", 324, 1), ("No, in blue", 36, 1)]


def test_box_and_whisker_chart(bridge: BridgeProcess) -> None:
    chart = run_code(bridge, """
import matplotlib.pyplot as plt
data = {'Class A': [85, 90, 78, 92, 88], 'Class B': [95, 89, 76, 91, 84, 87], 'Class C': [75, 82, 88, 79, 86]}
fig, ax = plt.subplots()
ax.set_title('Exam Scores Distribution'); ax.set_xlabel('Class'); ax.set_ylabel('Score')
ax.boxplot(data.values(), tick_labels=data.keys(), patch_artist=True)
plt.show()
""").results[0].chart
    assert isinstance(chart, BoxAndWhiskerChart) and chart.type == "box_and_whisker"
    assert (chart.title, chart.x_label, chart.y_label) == ("Exam Scores Distribution", "Class", "Score")
    assert [(b.label, b.min, b.first_quartile, b.median, b.third_quartile, b.max, b.outliers)
            for b in chart.elements] == [
        ("Class A", 78, 85, 88, 90, 92, []), ("Class B", 84, 84.75, 88, 90.5, 95, [76]),
        ("Class C", 75, 79, 82, 86, 88, [])]


def test_several_axes_make_a_superchart(bridge: BridgeProcess) -> None:
    chart = run_code(bridge, """
import matplotlib.pyplot as plt
fig, axs = plt.subplots(1, 2)
fig.suptitle('Multiple Charts Example')
axs[0].plot([0, 1, 2], [0, 1, 0]); axs[0].set_title('Sine Wave'); axs[0].grid(True)
axs[1].scatter([1, 2], [3, 4]); axs[1].set_title('Scatter Plot')
plt.show()
""").results[0].chart
    assert isinstance(chart, SuperChart) and chart.type == "superchart"
    assert chart.title == "Multiple Charts Example"
    first, second = chart.elements
    assert isinstance(first, LineChart) and first.title == "Sine Wave" and len(first.elements) == 1
    assert isinstance(second, ScatterChart) and second.title == "Scatter Plot"


def test_a_failing_extraction_leaves_the_png_and_no_chart(bridge: BridgeProcess) -> None:
    rid = bridge.send("execute", code="""
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
real = Axes.has_data
Axes.has_data = lambda self: 1 / 0
try:
    plt.plot([1, 2])
    plt.show()
finally:
    Axes.has_data = real
""")
    execution = ExecutionBuilder(rid).build(bridge.lines(rid))
    assert execution.error is None and execution.logs.stderr == []
    [result] = execution.results
    assert result.png and result.chart is None


def test_a_dataframe_carries_its_data(bridge: BridgeProcess) -> None:
    execution = run_code(bridge, """
import pandas as pd
pd.DataFrame({'n': [1, 2], 'x': [0.5, float('nan')], 'when': pd.to_datetime(['2024-01-01', None])})
""")
    [result] = execution.results
    assert result.is_main_result and result.html and "<table" in result.html
    assert result.data == {"n": [1, 2], "x": [0.5, None], "when": ["2024-01-01T00:00:00", None]}


# --- the extractor in-process (no kernel) -----------------------------------------------------


def extract() -> dict[str, Any] | None:
    return _guest_charts.figure_chart(plt.gcf())


def test_horizontal_bars_name_the_category_axis_x() -> None:
    plt.barh(["a", "b"], [3, 4], label="H")
    plt.xlabel("Value (kg)")
    plt.ylabel("Item")
    chart = extract()
    assert chart is not None and chart["type"] == "bar"
    assert (chart["x_label"], chart["y_label"], chart["y_unit"]) == ("Item", "Value (kg)", "kg")
    assert chart["x_tick_labels"] == ["a", "b"] and chart["x_scale"] == "categorical"
    assert [(e["label"], e["value"]) for e in chart["elements"]] == [("a", 3), ("b", 4)]


def test_grouped_bars_and_unlabelled_groups() -> None:
    plt.bar([0.8, 1.8], [1, 2], width=0.4, label="first")
    plt.bar([1.2, 2.2], [3, 4], width=0.4)
    plt.xticks([1, 2], ["x", "y"])
    chart = extract()
    assert chart is not None
    assert [(e["label"], e["group"], e["value"]) for e in chart["elements"]] == [
        ("0.8", "first", 1), ("1.8", "first", 2), ("1.2", "Group 1", 3), ("2.2", "Group 1", 4)]


def test_box_plot_without_patch_artist_and_horizontal() -> None:
    plt.boxplot([[1, 2, 3, 4, 100], [2, 3, 4]], tick_labels=["p", "q"], orientation="horizontal")
    chart = extract()
    assert chart is not None and chart["type"] == "box_and_whisker"
    assert [(e["label"], e["median"], e["outliers"]) for e in chart["elements"]] == [("p", 3, [100]), ("q", 3, [])]


def test_nan_gaps_become_null_and_reference_lines_are_left_out() -> None:
    plt.plot([0, 1, 2], [1, float("nan"), 3])
    plt.axhline(2)
    plt.yscale("log")
    chart = extract()
    assert chart is not None and chart["type"] == "line" and chart["y_scale"] == "log"
    [line] = chart["elements"]
    assert line["points"] == [[0.0, 1.0], [1.0, None], [2.0, 3.0]]
    assert all("$" not in label for label in chart["y_tick_labels"])


def test_blank_figures_have_no_chart_and_images_are_unknown() -> None:
    plt.figure()
    assert extract() is None
    plt.figure()
    plt.imshow([[0, 1], [1, 0]])
    plt.colorbar()
    assert extract() == {"type": "unknown", "title": None, "elements": []}


def test_a_big_dataframe_has_no_data() -> None:
    import pandas as pd
    assert _guest_charts.dataframe_data(pd.DataFrame({"a": range(_guest_charts.MAX_DATA_CELLS + 1)})) is None
    assert _guest_charts.dataframe_data(pd.DataFrame({1: [True], "b": ["s"]})) == {"1": [True], "b": ["s"]}


def test_guest_charts_imports_no_third_party_module() -> None:
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, %r); import _guest_charts; "
            "print(sorted(m for m in ('matplotlib', 'IPython', 'pandas', 'numpy') if m in sys.modules))"
            % os.path.dirname(_guest_charts.__file__))
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"
    assert Path(_guest_charts.__file__).name == "_guest_charts.py"
