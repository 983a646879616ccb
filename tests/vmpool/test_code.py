"""vmpool._code: E2B's execution models built from kernel bridge lines recorded from a real run
(the PNG cut short), callbacks, and what the bridge's failures and malformed lines raise."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vmpool._code import (
    CHART_MIME, BarChart, BoxAndWhiskerChart, Chart, ChartType, CodeRequestError, Context, Execution,
    ExecutionBuilder, ExecutionError, Logs, OutputMessage, PieChart, Result, ScaleType, SuperChart, chart_from_json,
)
from vmpool._errors import ProtocolError, VmpoolError

BAR_CHART = {
    "type": "bar", "title": None, "x_label": None, "x_scale": "categorical", "x_tick_labels": ["a"],
    "x_ticks": [0.0], "x_unit": None, "y_label": None, "y_scale": "linear",
    "y_tick_labels": ["0.0", "1.5", "3.0"], "y_ticks": [0.0, 1.5, 3.0], "y_unit": None,
    "elements": [{"label": "a", "group": "s", "value": 3.0}],
}
RECORDED = [
    {"id": "e1", "type": "stdout", "text": "out\n", "timestamp": 1795804672668440000},
    {"id": "e1", "type": "stderr", "text": "err\n", "timestamp": 1795804672668649000},
    {"id": "e1", "type": "result", "data": {
        "text/plain": "<Figure size 640x480 with 1 Axes>", "image/png": "iVBORw0KGgoAAAANSUhEUgAA",
        CHART_MIME: BAR_CHART}, "is_main_result": False},
    {"id": "e1", "type": "result", "data": {"text/plain": "'text'"}, "is_main_result": True},
    {"id": "e1", "type": "end", "execution_count": 1, "timed_out": False},
]
ERROR = [
    {"id": "e2", "type": "error", "name": "NameError", "value": "name 'undefined_name' is not defined",
     "traceback": "------\nNameError    Traceback (most recent call last)\nCell In[2], line 1\n"
                  "----> 1 undefined_name\nNameError: name 'undefined_name' is not defined"},
    {"id": "e2", "type": "end", "execution_count": 2, "timed_out": False},
]


def test_a_recorded_execution_with_callbacks_in_order() -> None:
    calls: list[tuple[str, Any]] = []
    builder = ExecutionBuilder(
        "e1", on_stdout=lambda m: calls.append(("stdout", m)), on_stderr=lambda m: calls.append(("stderr", m)),
        on_result=lambda r: calls.append(("result", r)), on_error=lambda e: calls.append(("error", e)))
    done = [builder.feed(json.dumps(line)) for line in RECORDED]
    assert done == [False, False, False, False, True]
    execution = builder.execution
    assert [kind for kind, _ in calls] == ["stdout", "stderr", "result", "result"]
    assert calls[0][1] == OutputMessage("out\n", 1795804672668440000, False) and str(calls[0][1]) == "out\n"
    assert calls[1][1].error is True
    assert execution.logs == Logs(stdout=["out\n"], stderr=["err\n"])
    assert execution.error is None and execution.execution_count == 1 and builder.timed_out is False

    figure, main = execution.results
    assert calls[2][1] is figure and calls[3][1] is main
    assert not figure.is_main_result and figure.png == "iVBORw0KGgoAAAANSUhEUgAA"
    assert figure.formats() == ["text", "png", "chart"] and figure["png"] == figure.png
    assert isinstance(figure.chart, BarChart) and figure.chart.to_dict() == BAR_CHART
    assert main.is_main_result and main.text == "text", "quotes of a str repr go, as in E2B"
    assert execution.text == "text"
    assert str(main) == "Result(text)" and repr(execution).startswith("Execution(Results: [")


def test_an_error_execution() -> None:
    errors: list[ExecutionError] = []
    execution = ExecutionBuilder("e2", on_error=errors.append).build(ERROR)
    assert execution.error == ExecutionError("NameError", "name 'undefined_name' is not defined",
                                             ERROR[0]["traceback"])
    assert errors == [execution.error]
    assert execution.results == [] and execution.text is None and execution.execution_count == 2
    assert json.loads(execution.error.to_json())["name"] == "NameError"


def test_execution_to_json_nests_everything() -> None:
    execution = ExecutionBuilder().build(RECORDED)
    data = json.loads(execution.to_json())
    assert data["logs"] == {"stdout": ["out\n"], "stderr": ["err\n"]} and data["error"] is None
    assert data["results"][0]["chart"] == BAR_CHART and data["results"][0]["is_main_result"] is False
    assert data["results"][1] == {"text": "text", "is_main_result": True}
    assert data["execution_count"] == 1
    assert json.loads(execution.logs.to_json()) == data["logs"]


def test_a_timed_out_execution() -> None:
    builder = ExecutionBuilder("t")
    builder.build([{"id": "t", "type": "error", "name": "KeyboardInterrupt", "value": "", "traceback": ""},
                   {"id": "t", "type": "end", "execution_count": 3, "timed_out": True}])
    assert builder.timed_out and builder.execution.error is not None


def test_async_handlers_hand_back_their_awaitable() -> None:
    async def handler(message: OutputMessage) -> None:
        pass

    builder = ExecutionBuilder("e1", on_stdout=handler)
    builder.feed(RECORDED[0])
    coroutine = builder.last_callback_result
    assert coroutine is not None and hasattr(coroutine, "__await__")
    coroutine.close()
    builder.feed(RECORDED[1])
    assert builder.last_callback_result is None


def test_a_failed_request_raises_code_request_error() -> None:
    builder = ExecutionBuilder("f")
    with pytest.raises(CodeRequestError, match="no Jupyter kernel for javascript") as caught:
        builder.feed({"id": "f", "type": "failed", "message": "no Jupyter kernel for javascript is installed"})
    assert isinstance(caught.value, VmpoolError)


@pytest.mark.parametrize("line", [
    "not json", {"id": "e1", "type": "teleport"}, {"id": "e1", "type": "stdout"},
    {"id": "e1", "type": "end", "execution_count": "one"}, {"id": "other", "type": "end", "execution_count": 1},
])
def test_lines_that_are_not_the_protocol_raise_protocol_error(line: Any) -> None:
    with pytest.raises(ProtocolError):
        ExecutionBuilder("e1").feed(line)


def test_lines_after_the_end_or_missing_end_raise_protocol_error() -> None:
    builder = ExecutionBuilder("e1")
    builder.build(RECORDED)
    with pytest.raises(ProtocolError, match="after the end"):
        builder.feed(RECORDED[0])
    with pytest.raises(ProtocolError, match="stopped before its end"):
        ExecutionBuilder("e1").build(RECORDED[:2])


def test_result_from_a_rich_bundle() -> None:
    result = Result.from_bundle({
        "text/plain": "x", "text/html": "<b>x</b>", "text/markdown": "**x**", "image/svg+xml": "<svg/>",
        "image/jpeg": "/9j/", "application/pdf": "JVBER", "text/latex": "$x$", "application/json": [1, 2],
        "application/javascript": "alert(1)", "application/vnd.vmpool.data+json": {"a": [1]},
        "application/x-custom": "?",
    }, is_main_result=False)
    assert result.formats() == ["text", "html", "markdown", "svg", "jpeg", "pdf", "latex", "json",
                                "javascript", "data", "application/x-custom"]
    assert result.extra == {"application/x-custom": "?"} and result.data == {"a": [1]}
    assert result._repr_html_() == "<b>x</b>" and result._repr_json_() == [1, 2]
    assert result._repr_latex_() == "$x$" and result._repr_png_() is None
    no_text = Result.from_bundle({"image/png": "iVBO", CHART_MIME: {}}, is_main_result=False)
    assert no_text.chart is None, "an empty chart object is no chart"
    assert repr(no_text) == "Result(Formats: png)"
    assert Result.from_bundle({"text/plain": "'"}, True).text == "'"


def test_charts_from_json() -> None:
    box = chart_from_json({
        "type": "box_and_whisker", "title": "B", "x_label": "Class", "y_label": "Score (pt)", "y_unit": "pt",
        "x_scale": "linear", "y_scale": "weird", "elements": [
            {"label": "A", "min": 1, "first_quartile": 2, "median": 3, "third_quartile": 4, "max": 5,
             "outliers": [9]}]})
    assert isinstance(box, BoxAndWhiskerChart) and box.type == "box_and_whisker"
    assert box.y_unit == "pt" and box.y_scale == ScaleType.UNKNOWN and box.x_ticks == []
    assert (box.elements[0].median, box.elements[0].outliers) == (3, [9])

    pie = chart_from_json({"type": "pie", "title": None, "elements": [{"label": "x", "angle": 90, "radius": 1}]})
    assert isinstance(pie, PieChart) and pie.elements[0].angle == 90

    superchart = chart_from_json({"type": "superchart", "title": "S", "elements": [
        BAR_CHART, {"type": "unknown", "title": "img", "elements": []}]})
    assert isinstance(superchart, SuperChart)
    bar, unknown = superchart.elements
    assert isinstance(bar, BarChart) and bar.elements[0].label == "a"
    assert type(unknown) is Chart and unknown.type == ChartType.UNKNOWN and unknown.title == "img"

    future = chart_from_json({"type": "sankey", "title": "t", "elements": [1]})
    assert type(future) is Chart and future.type == "unknown" and future.to_dict()["type"] == "sankey"
    assert str(ChartType.BAR) == "bar"


def test_context_from_the_bridge() -> None:
    assert Context.from_json({"context_id": "c1", "language": "python", "cwd": "/home/user"}) == Context(
        "c1", "python", "/home/user")
    with pytest.raises(ProtocolError):
        Context.from_json({"context_id": "c1"})


def test_an_empty_execution() -> None:
    execution = Execution()
    assert execution.text is None and execution.logs == Logs() and repr(execution.logs) == "Logs(stdout: [], stderr: [])"
