"""Sandbox drivers: the contract every driver fulfils, and the registry that finds them by name.

A driver knows how to start one sandbox whose guest agent (``vmpool/_agent.py``) speaks
``vmpool._protocol``; everything above that (requests, results, pools) is driver-independent.
What a driver ships into its sandboxes, and the command that starts the agent there, are
defined once in `vmpool._guest` (`GUEST_FILES`, `agent_command`).
Built-in drivers are imported lazily; third-party drivers register a `Driver` subclass in the
``vmpool.drivers`` entry-point group and can check themselves with ``vmpool.conformance``.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ._errors import DriverUnavailableError

__all__ = [
    "Driver", "SandboxProcess", "StartOptions", "get_driver", "list_drivers", "resolve_driver",
]

_BUILTIN = {
    "bwrap": "vmpool._bwrap:BwrapDriver",
    "microvm": "vmpool._microvm:MicroVMDriver",
}
AUTO_ORDER = ("microvm", "bwrap")  # strongest isolation first; "auto" never picks others


@dataclass(frozen=True)
class StartOptions:
    """What `Driver.start` is asked for.

    python: interpreter that runs the agent inside the sandbox (None: the driver's default).
    tmp_size_mb: size of the sandbox's writable /tmp.
    agent_args: extra agent command-line flags (diagnostics and tests, e.g. ``--fake-protocol``).
    template: the image to boot, for drivers that have templates (None: the driver's default).
    network: False gives the sandbox no network even if its template has one; None: as the
    template says (a template never gets a network it does not ask for).
    """

    python: str | None = None
    tmp_size_mb: int = 256
    agent_args: tuple[str, ...] = ()
    template: str | None = None
    network: bool | None = None


class SandboxProcess(abc.ABC):
    """One running sandbox as the host sees it: a byte channel to its agent, and its lifecycle."""

    @abc.abstractmethod
    def send(self, data: bytes, timeout: float) -> None:
        """Write all of `data` to the agent. TimeoutError if it is not taken within `timeout`
        seconds; OSError (e.g. BrokenPipeError) if the sandbox is gone."""

    @abc.abstractmethod
    def receive(self, timeout: float) -> bytes:
        """The next bytes from the agent; b"" once the channel is closed (the agent is gone).
        TimeoutError if nothing arrives within `timeout` seconds."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the sandbox has neither been killed nor exited."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Tear the whole sandbox down (every process in it) and reap it. Idempotent, never
        raises, returns only when nothing of the sandbox is left running."""

    def diagnostics(self) -> str:
        """Recent driver/agent error output, to put into error messages ("" if none)."""
        return ""

    def agent_host_pid(self) -> int | None:
        """The agent's process id as seen by the host, if it has one (tests kill it)."""
        return None


class Driver(abc.ABC):
    """A way to run sandboxes. Implementations must:

    - set `name` to their registry name;
    - `available()`: return None if `start` can work on this host, otherwise a one-line reason
      that says what to install or change. Called often: cache anything expensive;
    - `auto_reason()`: like `available()`, for whether ``driver="auto"`` may pick it (a driver
      that works here but only slowly or weakly can decline);
    - `reuse_after_timeout`: False if a sandbox whose program or command timed out must be
      discarded (microvm: a guest whose kernel ran hostile code until it was killed is not
      trusted for the next sample, whatever the agent's sweep found);
    - `takes_agent_args`: False if `StartOptions.agent_args` cannot be honoured (the agent is
      already running when `start` is called, e.g. restored from a snapshot);
    - `keeps_memory`: True if `pause` and `resume` can save and restore a running sandbox
      whole (memory, processes, files); drivers without it are paused by `LocalSandbox.pause`
      saving the sandbox's writable directories through the agent (files only);
    - `isolation()`: describe the isolation level for humans and reports, including the
      version of the underlying tool, e.g. ``"namespaces+seccomp (bubblewrap 0.8.0)"``;
    - `start(options)`: launch one sandbox running the vmpool agent (the files in
      `vmpool._guest.GUEST_FILES`, started with `vmpool._guest.agent_command`) and return its
      `SandboxProcess` (the agent's hello is read by the caller). The sandbox must not outlive
      the host process (even when the host is SIGKILLed), must have no network (unless its
      template asks for one and `StartOptions.network` is not False), must not see
      host files beyond the runtime, and `start` must not leave a process behind if it raises.
    """

    name: ClassVar[str] = ""
    reuse_after_timeout: ClassVar[bool] = True
    takes_agent_args: ClassVar[bool] = True
    keeps_memory: ClassVar[bool] = False

    @abc.abstractmethod
    def available(self) -> str | None:
        """None if usable here, else why not and what to do about it."""

    def auto_reason(self) -> str | None:
        """None if ``driver="auto"`` may pick this driver here, else why not."""
        return self.available()

    @abc.abstractmethod
    def isolation(self) -> str:
        """Human-readable isolation level."""

    @abc.abstractmethod
    def start(self, options: StartOptions) -> SandboxProcess:
        """Start one sandbox; raise DriverUnavailableError if this host cannot."""

    def pause(self, process: SandboxProcess, directory: Path) -> dict[str, Any]:
        """Drivers that `keeps_memory`: save the running sandbox `process` whole into
        `directory` (existing, empty, private), then end it as `SandboxProcess.kill` does.

        Called only while no request to the agent is in flight. Returns what `resume` needs
        to check that it can continue the sandbox (JSON-able; ``"template": {"name", "hash"}``
        names the template it runs, if any), which the caller stores in ``state.json``.
        Raises SandboxError if the sandbox is gone or broke (it is then killed), OSError if
        saving failed while the sandbox still runs; its agent then greets the channel with a
        new hello, to be read as after `start`.
        """
        raise DriverUnavailableError("the %s driver cannot save a sandbox's memory" % self.name)

    def resume(self, directory: Path, options: StartOptions, saved: dict[str, Any]) -> SandboxProcess:
        """Drivers that `keeps_memory`: continue the sandbox `pause` saved into `directory`,
        started with `options`; `saved` is what `pause` returned. Like `start`, the agent's
        hello is read by the caller and nothing is left running if this raises.

        Raises PausedStateError if the saved sandbox cannot run here as it was (another
        template build, emulator version or machine configuration), SandboxError if it does
        not come up, DriverUnavailableError if the driver cannot run here at all. Never
        changes `directory`.
        """
        raise DriverUnavailableError("the %s driver cannot resume a sandbox's memory" % self.name)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="vmpool.drivers")}


def list_drivers() -> list[str]:
    """Names of all known drivers: built-ins first, then third-party entry points."""
    extra = sorted(set(_entry_points()) - set(_BUILTIN))
    return list(_BUILTIN) + extra


def get_driver(name: str) -> Driver:
    """A new instance of the driver registered as `name`.

    DriverUnavailableError if no driver has that name (the message lists the known ones) or if
    the third-party driver cannot be loaded. Does not check that the driver is usable here.
    """
    if name in _BUILTIN:
        module_name, _, attribute = _BUILTIN[name].partition(":")
        cls = getattr(importlib.import_module(module_name), attribute)
    else:
        entry = _entry_points().get(name)
        if entry is None:
            raise DriverUnavailableError(
                "unknown sandbox driver %r; known drivers: %s" % (name, ", ".join(list_drivers())))
        try:
            cls = entry.load()
        except Exception as exc:
            raise DriverUnavailableError("cannot load driver %r from %s: %s" % (name, entry.value, exc)) from exc
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverUnavailableError("driver %r is %r, not a vmpool.Driver subclass" % (name, cls))
    return cls()


def resolve_driver(name: str = "auto") -> str:
    """The name of the driver to use for `name`, checked to be usable here.

    "auto" picks the strongest isolation it may (`Driver.auto_reason`): microvm where hardware
    KVM works, else bwrap. An explicit name is never downgraded: if it cannot run here,
    DriverUnavailableError says why.
    """
    if name != "auto":
        reason = get_driver(name).available()
        if reason is not None:
            raise DriverUnavailableError("sandbox driver %r is not usable here: %s" % (name, reason))
        return name
    reasons = []
    for candidate in AUTO_ORDER:
        reason = get_driver(candidate).auto_reason()
        if reason is None:
            return candidate
        reasons.append("%s: %s" % (candidate, reason))
    raise DriverUnavailableError("no sandbox driver is usable here (%s)" % "; ".join(reasons))
