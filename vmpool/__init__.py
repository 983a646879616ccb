"""vmpool: self-hosted sandboxes (bubblewrap and microVM drivers) behind one guest-agent protocol.

The E2B-style SDK (code written for E2B's SDKs runs with only the import changed)::

    from vmpool import Sandbox
    with Sandbox.create() as sandbox:
        print(sandbox.commands.run("echo hi").stdout)

The driver level, one sandbox owned by this process::

    from vmpool import LocalSandbox, Limits
    with LocalSandbox.create() as sb:
        result = sb.run_program("print(1 + 1)", Limits(wall_time_s=5))
        assert result.status == "ok" and result.stdout == "2\\n"
"""

from ._code import (
    BarChart, BarData, BoxAndWhiskerChart, BoxAndWhiskerData, Chart, ChartType, Context, Execution, ExecutionError,
    LineChart, Logs, OutputMessage, PieChart, PieData, PointData, Result, ScaleType, ScatterChart, SuperChart,
)
from ._driver import Driver, get_driver, list_drivers, resolve_driver
from ._errors import (
    CommandExitException, DriverUnavailableError, FileNotFoundException, InvalidArgumentException,
    NotEnoughSpaceException, NotFoundException, PausedStateError, ProtocolError, SandboxError, SandboxException,
    SandboxNotFoundException, TemplateError, TimeoutException, VmpoolError,
)
from ._pool import SandboxPool
from ._processes import ProcessHandle, ProcessInfo, ProcessResult
from ._protocol import PROTOCOL_VERSION
from ._sandbox import LocalSandbox
from ._sdk import Sandbox, SandboxPaginator
from ._sdk_commands import CommandHandle
from ._service_types import FileType, SandboxInfo, SandboxQuery, SandboxState
from ._templates import BuiltTemplate, TemplateSpec, template_names
from ._templates import build as build_template
from ._templates import ensure_built as ensure_template
from ._types import CommandResult, EntryInfo, ExecResult, ExecStatus, Limits

__all__ = [
    "PROTOCOL_VERSION",
    "BarChart",
    "BarData",
    "BoxAndWhiskerChart",
    "BoxAndWhiskerData",
    "BuiltTemplate",
    "Chart",
    "ChartType",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "Context",
    "Driver",
    "DriverUnavailableError",
    "EntryInfo",
    "ExecResult",
    "ExecStatus",
    "Execution",
    "ExecutionError",
    "FileNotFoundException",
    "FileType",
    "InvalidArgumentException",
    "Limits",
    "LineChart",
    "LocalSandbox",
    "Logs",
    "NotEnoughSpaceException",
    "NotFoundException",
    "OutputMessage",
    "PausedStateError",
    "PieChart",
    "PieData",
    "PointData",
    "ProcessHandle",
    "ProcessInfo",
    "ProcessResult",
    "ProtocolError",
    "Result",
    "Sandbox",
    "SandboxError",
    "SandboxException",
    "SandboxInfo",
    "SandboxNotFoundException",
    "SandboxPaginator",
    "SandboxPool",
    "SandboxQuery",
    "SandboxState",
    "ScaleType",
    "ScatterChart",
    "SuperChart",
    "TemplateError",
    "TemplateSpec",
    "TimeoutException",
    "VmpoolError",
    "build_template",
    "ensure_template",
    "get_driver",
    "list_drivers",
    "resolve_driver",
    "template_names",
]
