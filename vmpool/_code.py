"""What running code in a sandbox returns, with E2B's names (``e2b_code_interpreter.models``):
`Execution` (results, logs, error, execution_count), `Result`, `Logs`, `ExecutionError`,
`OutputMessage`, `Context`, and the chart classes of `vmpool._charts`; plus `ExecutionBuilder`,
which turns the kernel bridge's lines for one execution (`vmpool._guest_kernel` documents them)
into an `Execution`, calling the caller's ``on_stdout``/``on_stderr``/``on_result``/``on_error``
as each line arrives.

Like E2B's, these are plain dataclasses built from validated wire data: a user's code never
raises here, it is an `Execution` with an ``error``. What the bridge refuses (an unknown context,
a language with no kernel) raises `CodeRequestError`; lines that are not the protocol raise
`ProtocolError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Iterable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ._charts import (
    BarChart, BarData, BoxAndWhiskerChart, BoxAndWhiskerData, Chart, Chart2D, ChartType, ChartTypes, LineChart,
    PieChart, PieData, PointChart, PointData, ScaleType, ScatterChart, SuperChart, chart_from_json,
)
from ._errors import ProtocolError, VmpoolError
from ._guest_charts import CHART_MIME, DATA_MIME  # stdlib-only at import: safe on the host

__all__ = [
    "BarChart", "BarData", "BoxAndWhiskerChart", "BoxAndWhiskerData", "CHART_MIME", "Chart", "Chart2D", "ChartType",
    "ChartTypes", "CodeRequestError", "Context", "DATA_MIME", "Execution", "ExecutionBuilder", "ExecutionError",
    "LineChart", "Logs", "OutputHandler", "OutputMessage", "PieChart", "PieData", "PointChart", "PointData", "Result",
    "ScaleType", "ScatterChart", "SuperChart", "chart_from_json",
]


OutputHandler = Callable[[Any], Any]
"""A callback for one stream of an execution; what it returns (an awaitable, from an async
handler) is handed back by `ExecutionBuilder.feed`."""


class CodeRequestError(VmpoolError):
    """The kernel bridge could not carry out a request (no such context, no kernel for the
    language, a kernel that does not start); the message is the bridge's."""


@dataclass
class OutputMessage:
    """One chunk of stdout or stderr, as the kernel flushed it (usually whole lines)."""

    line: str
    timestamp: int
    """Unix epoch in nanoseconds."""
    error: bool = False
    """Whether it came from stderr."""

    def __str__(self) -> str:
        return self.line


@dataclass
class ExecutionError:
    """The exception a cell raised: its class name, message and formatted traceback."""

    name: str
    value: str
    traceback: str

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "value": self.value, "traceback": self.traceback})


@dataclass(repr=False)
class Logs:
    """Everything the execution printed, in chunks as the kernel flushed them."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return "Logs(stdout: %s, stderr: %s)" % (self.stdout, self.stderr)

    def to_json(self) -> str:
        return json.dumps({"stdout": self.stdout, "stderr": self.stderr})


# Mime type -> Result attribute; the rest of a display's mime bundle goes to Result.extra.
_FORMATS = {
    "text/plain": "text", "text/html": "html", "text/markdown": "markdown", "image/svg+xml": "svg",
    "image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf", "text/latex": "latex",
    "application/json": "json", "application/javascript": "javascript", DATA_MIME: "data", CHART_MIME: "chart",
}


@dataclass(repr=False)
class Result:
    """One thing a cell displayed: the value of its last expression (``is_main_result``) or a
    display() call / figure, in every format the kernel produced (images base64-encoded)."""

    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json: Any = None
    """The application/json format: any JSON value."""
    javascript: str | None = None
    data: dict[str, Any] | None = None
    chart: Chart | None = None
    is_main_result: bool = False
    """Whether this is the value of the cell (there is at most one) rather than a display."""
    extra: dict[str, Any] | None = None
    """Formats without an attribute of their own, by mime type."""

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any], is_main_result: bool) -> Result:
        """A result from a Jupyter mime bundle. As E2B does, a text/plain that is a quoted
        string (the repr of a str) loses its quotes."""
        fields: dict[str, Any] = {"is_main_result": is_main_result}
        extra = {}
        for mime, value in bundle.items():
            if mime in _FORMATS:
                fields[_FORMATS[mime]] = value
            else:
                extra[mime] = value
        text = fields.get("text")
        if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            fields["text"] = text[1:-1]
        chart = fields.get("chart")
        fields["chart"] = chart_from_json(chart) if isinstance(chart, dict) and chart else None
        return cls(**fields, extra=extra or None)

    def __getitem__(self, item: str) -> Any:
        return getattr(self, item)

    def formats(self) -> list[str]:
        """The formats this result has: attribute names, then the mime types in `extra`."""
        names = [name for name in _FORMATS.values() if getattr(self, name)]
        return names + list(self.extra or {})

    def __str__(self) -> str:
        return repr(self)

    def __repr__(self) -> str:
        if self.text:
            return "Result(%s)" % self.text
        return "Result(Formats: %s)" % ", ".join(self.formats())

    # IPython's rich display hooks: a Result shown in a notebook renders like the original.
    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_markdown_(self) -> str | None:
        return self.markdown

    def _repr_svg_(self) -> str | None:
        return self.svg

    def _repr_png_(self) -> str | None:
        return self.png

    def _repr_jpeg_(self) -> str | None:
        return self.jpeg

    def _repr_pdf_(self) -> str | None:
        return self.pdf

    def _repr_latex_(self) -> str | None:
        return self.latex

    def _repr_json_(self) -> Any:
        return self.json

    def _repr_javascript_(self) -> str | None:
        return self.javascript

    def to_dict(self) -> dict[str, Any]:
        """Its formats as JSON-ready values (the chart as its JSON); ``text`` always present."""
        out: dict[str, Any] = {"text": self.text}
        for name in self.formats():
            if name == "chart" and self.chart is not None:
                out[name] = self.chart.to_dict()
            elif name in _FORMATS.values():
                out[name] = getattr(self, name)
        if self.extra:
            out["extra"] = self.extra
        out["is_main_result"] = self.is_main_result
        return out


@dataclass(repr=False)
class Execution:
    """The outcome of running one cell: its results, logs, error (None if it ran through) and
    execution count (IPython's ``In[n]``)."""

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None

    def __repr__(self) -> str:
        return "Execution(Results: %s, Logs: %s, Error: %s)" % (self.results, self.logs, self.error)

    @property
    def text(self) -> str | None:
        """The text of the main result (the cell's value), None if it has none."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None

    def to_json(self) -> str:
        """The whole execution as one JSON document (logs and error nested as objects)."""
        return json.dumps({
            "results": [result.to_dict() for result in self.results],
            "logs": {"stdout": self.logs.stdout, "stderr": self.logs.stderr},
            "error": None if self.error is None else {
                "name": self.error.name, "value": self.error.value, "traceback": self.error.traceback},
            "execution_count": self.execution_count,
        })


@dataclass
class Context:
    """A code context: a kernel of its own (separate state) with a language and working dir."""

    id: str
    language: str
    cwd: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Context:
        """From the bridge's ``context`` line or an entry of its ``contexts`` list."""
        try:
            return cls(id=str(data.get("context_id", data.get("id"))), language=str(data["language"]),
                       cwd=str(data["cwd"]))
        except KeyError as exc:
            raise ProtocolError("a code context without %s: %r" % (exc, data)) from exc


# --- the bridge's lines for one execution -----------------------------------------------------


class _Line(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None


class _Stream(_Line):
    type: Literal["stdout", "stderr"]
    text: str
    timestamp: int


class _Result(_Line):
    type: Literal["result"]
    data: dict[str, Any]
    is_main_result: bool


class _Error(_Line):
    type: Literal["error"]
    name: str
    value: str
    traceback: str


class _End(_Line):
    type: Literal["end"]
    execution_count: int | None
    timed_out: bool = False


class _Failed(_Line):
    type: Literal["failed"]
    message: str


_LINE: TypeAdapter[Union[_Stream, _Result, _Error, _End, _Failed]] = TypeAdapter(
    Annotated[Union[_Stream, _Result, _Error, _End, _Failed], Field(discriminator="type")])


class ExecutionBuilder:
    """Collects one execution from the bridge's lines for its request, in order.

    `feed` each line (a dict, or its JSON text) until it returns True (the ``end`` line came);
    then `execution` is complete and `timed_out` says whether the bridge interrupted it. Each
    line calls the matching callback at once; `feed` returns True/False, and the callback's own
    return value is in `last_callback_result` (await it if an async handler returned a coroutine).
    """

    def __init__(self, request_id: str | None = None, *, on_stdout: OutputHandler | None = None,
                 on_stderr: OutputHandler | None = None, on_result: OutputHandler | None = None,
                 on_error: OutputHandler | None = None) -> None:
        self.request_id = request_id
        self.execution = Execution()
        self.timed_out = False
        self.done = False
        self.last_callback_result: Any = None
        self._on_stdout, self._on_stderr, self._on_result, self._on_error = on_stdout, on_stderr, on_result, on_error

    def feed(self, line: dict[str, Any] | str | bytes) -> bool:
        """Take one line; True once the execution has ended. Raises `CodeRequestError` if the
        bridge failed the request and `ProtocolError` for a line that is not the protocol."""
        if self.done:
            raise ProtocolError("a line after the end of execution %s: %r" % (self.request_id, line))
        try:
            parsed = _LINE.validate_json(line) if isinstance(line, (str, bytes)) else _LINE.validate_python(line)
        except ValidationError as exc:
            raise ProtocolError("not a line of the kernel bridge's protocol: %r (%s)" % (
                line, exc.errors()[0]["msg"])) from exc
        if self.request_id is not None and parsed.id != self.request_id:
            raise ProtocolError("a line for request %r given to the builder of %r" % (parsed.id, self.request_id))
        self.last_callback_result = None
        execution = self.execution
        if isinstance(parsed, _Stream):
            error = parsed.type == "stderr"
            (execution.logs.stderr if error else execution.logs.stdout).append(parsed.text)
            self._call(self._on_stderr if error else self._on_stdout,
                       OutputMessage(parsed.text, parsed.timestamp, error))
        elif isinstance(parsed, _Result):
            result = Result.from_bundle(parsed.data, parsed.is_main_result)
            execution.results.append(result)
            self._call(self._on_result, result)
        elif isinstance(parsed, _Error):
            execution.error = ExecutionError(parsed.name, parsed.value, parsed.traceback)
            self._call(self._on_error, execution.error)
        elif isinstance(parsed, _End):
            execution.execution_count = parsed.execution_count
            self.timed_out, self.done = parsed.timed_out, True
        else:
            raise CodeRequestError(parsed.message)
        return self.done

    def build(self, lines: Iterable[dict[str, Any] | str | bytes]) -> Execution:
        """Feed `lines` up to the end line and return the execution; `ProtocolError` if they
        stop before it."""
        for line in lines:
            if self.feed(line):
                return self.execution
        raise ProtocolError("the lines of execution %s stopped before its end line" % self.request_id)

    def _call(self, handler: OutputHandler | None, value: Any) -> None:
        if handler is not None:
            self.last_callback_result = handler(value)
