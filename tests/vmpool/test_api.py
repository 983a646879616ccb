"""The public surface of vmpool and its driver registry."""

from pathlib import Path

import pytest

import vmpool
from vmpool import (
    DriverUnavailableError,
    ProtocolError,
    LocalSandbox,
    SandboxError,
    VmpoolError,
    get_driver,
    list_drivers,
    resolve_driver,
)
from vmpool._bwrap import BwrapDriver

PUBLIC = {
    "LocalSandbox", "SandboxPool", "Limits", "ExecResult", "ExecStatus", "CommandResult", "EntryInfo",
    "ProcessHandle", "ProcessInfo", "ProcessResult",
    "VmpoolError", "SandboxError", "DriverUnavailableError", "ProtocolError", "PausedStateError",
    "Driver", "get_driver", "resolve_driver", "list_drivers", "PROTOCOL_VERSION",
    "TemplateSpec", "TemplateError", "BuiltTemplate", "build_template", "ensure_template", "template_names",
    # the E2B-style SDK
    "Sandbox", "SandboxInfo", "SandboxQuery", "SandboxState", "SandboxPaginator", "CommandHandle", "FileType",
    "SandboxException", "TimeoutException", "InvalidArgumentException", "NotEnoughSpaceException",
    "NotFoundException", "SandboxNotFoundException", "FileNotFoundException", "CommandExitException",
    # the code interpreter's results (E2B's names)
    "Execution", "ExecutionError", "Result", "Logs", "OutputMessage", "Context", "Chart", "ChartType",
    "ScaleType", "BarChart", "BarData", "LineChart", "PointData", "ScatterChart", "PieChart", "PieData",
    "BoxAndWhiskerChart", "BoxAndWhiskerData", "SuperChart",
}


def test_all_is_the_public_api() -> None:
    assert set(vmpool.__all__) == PUBLIC
    assert len(vmpool.__all__) == len(PUBLIC)
    for name in PUBLIC:
        assert getattr(vmpool, name) is not None


def test_exception_tree() -> None:
    assert issubclass(SandboxError, VmpoolError) and issubclass(DriverUnavailableError, VmpoolError)
    assert issubclass(ProtocolError, SandboxError)  # a broken conversation is a machinery failure
    # the SDK's exceptions carry E2B's names and shape
    assert issubclass(vmpool.SandboxException, VmpoolError)
    for name in ("TimeoutException", "InvalidArgumentException", "NotEnoughSpaceException",
                 "NotFoundException", "CommandExitException"):
        assert issubclass(getattr(vmpool, name), vmpool.SandboxException)
    assert issubclass(vmpool.SandboxNotFoundException, vmpool.NotFoundException)
    assert issubclass(vmpool.FileNotFoundException, vmpool.NotFoundException)
    assert issubclass(vmpool.FileNotFoundException, FileNotFoundError)  # like LocalSandbox.files
    exit_error = vmpool.CommandExitException("out", "boom", 3, "exit status 3")
    assert (exit_error.stdout, exit_error.stderr, exit_error.exit_code, exit_error.error) == (
        "out", "boom", 3, "exit status 3")
    assert str(exit_error) == "Command exited with code 3 and error:\nboom"


def test_registry() -> None:
    assert list_drivers()[:2] == ["bwrap", "microvm"]
    assert isinstance(get_driver("bwrap"), BwrapDriver)
    with pytest.raises(DriverUnavailableError, match="known drivers: bwrap, microvm"):
        get_driver("hyperwarp")


def test_auto_resolves_to_bwrap_without_hardware_virtualization() -> None:
    if get_driver("microvm").auto_reason() is not None:  # our machines: no KVM (PVM or none)
        assert resolve_driver("auto") == "bwrap"
    assert resolve_driver("bwrap") == "bwrap"


def test_an_unusable_driver_is_refused_not_downgraded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-system-x86_64 to be found
    with pytest.raises(DriverUnavailableError, match="QEMU .* is not installed; install it with: apt-get"):
        resolve_driver("microvm")
    with pytest.raises(DriverUnavailableError, match="QEMU"):
        LocalSandbox.create("microvm")
    assert "qemu-system-x86" in (get_driver("microvm").available() or "")


@pytest.mark.sandbox
def test_driver_instance_and_agent_info() -> None:
    class Custom(BwrapDriver):
        name = "custom"

    with LocalSandbox.create(Custom()) as sandbox:
        assert sandbox.driver == "custom"
        assert sandbox.python_version.startswith("3.") and sandbox.agent_version
        assert "running" in repr(sandbox)
        sandbox.ping()
    assert "dead" in repr(sandbox)
