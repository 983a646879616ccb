"""vmpool: self-hosted sandboxes (bubblewrap and microVM drivers) behind one guest-agent protocol.

    from vmpool import LocalSandbox, Limits
    with LocalSandbox.create() as sb:
        result = sb.run_program("print(1 + 1)", Limits(wall_time_s=5))
        assert result.status == "ok" and result.stdout == "2\\n"
"""

from ._driver import Driver, get_driver, list_drivers, resolve_driver
from ._errors import (
    DriverUnavailableError, PausedStateError, ProtocolError, SandboxError, TemplateError, VmpoolError,
)
from ._pool import SandboxPool
from ._processes import ProcessHandle, ProcessInfo, ProcessResult
from ._protocol import PROTOCOL_VERSION
from ._sandbox import LocalSandbox
from ._templates import BuiltTemplate, TemplateSpec, template_names
from ._templates import build as build_template
from ._templates import ensure_built as ensure_template
from ._types import CommandResult, EntryInfo, ExecResult, ExecStatus, Limits

__all__ = [
    "PROTOCOL_VERSION",
    "BuiltTemplate",
    "CommandResult",
    "Driver",
    "DriverUnavailableError",
    "EntryInfo",
    "ExecResult",
    "ExecStatus",
    "Limits",
    "ProcessHandle",
    "ProcessInfo",
    "ProcessResult",
    "PausedStateError",
    "ProtocolError",
    "LocalSandbox",
    "SandboxError",
    "SandboxPool",
    "TemplateError",
    "TemplateSpec",
    "VmpoolError",
    "build_template",
    "ensure_template",
    "get_driver",
    "list_drivers",
    "resolve_driver",
    "template_names",
]
