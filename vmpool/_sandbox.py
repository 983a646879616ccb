"""`LocalSandbox`: one running sandbox with its agent, whatever the driver, owned by this process.

It is the low-level layer: no service, no ids shared across processes, no lifetime beyond the
process (the sandbox dies with it). evalkit runs its programs through it. `vmpool.Sandbox`, the
E2B-style SDK, manages `LocalSandbox` objects inside the vmpool service.

Lifecycle: `LocalSandbox.create` starts it and waits for the agent's hello; `kill` (also on leaving a
``with`` block, on garbage collection and at interpreter exit) tears it down; `pause` saves it
into a directory and ends it, and `LocalSandbox.resume` starts it again from there, in any
process (`vmpool._persist`). Any machinery failure kills the sandbox and raises `SandboxError`,
so a broken sandbox is never reused.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import _persist
from ._client import AgentClient, Call, EventCallback
from ._driver import Driver, SandboxProcess, StartOptions, get_driver, resolve_driver
from ._errors import DriverUnavailableError, ProtocolError, SandboxError
from ._files import Files
from ._persist import StartRecord
from ._processes import Processes
from ._protocol import SERIAL_OPS
from ._types import CommandResult, ExecResult, Limits

__all__ = ["Commands", "Files", "LocalSandbox", "Processes"]

ResultT = TypeVar("ResultT", bound=BaseModel)
REPLY_GRACE_S = 30.0  # beyond a program's wall limit: process sweep, cleanup, a busy host
COMMAND_LIMITS = Limits(memory_mb=4096, max_processes=256, max_file_size_mb=1024,
                        max_output_bytes=10_000_000)


def wire_limits(limits: Limits) -> dict[str, Any]:
    """Limits as sent to the agent: every field set, cpu_time_s defaulting to wall_time_s."""
    fields = limits.model_dump()
    if fields["cpu_time_s"] is None:
        fields["cpu_time_s"] = fields["wall_time_s"]
    return fields


def _teardown(process: SandboxProcess, client: AgentClient) -> None:
    client.close()  # first: its reader thread must stop reading before the channel is closed
    process.kill()


class LocalSandbox:
    """A running sandbox. Create with `LocalSandbox.create`; use as a context manager.

    Thread-safe. Programs, commands and file operations are serialised (the agent's fork-server
    does one at a time, and each call's timeout starts when its turn comes); `ping` and
    `processes` (background processes, E2B's commands) work concurrently with them. Use a
    `SandboxPool` for parallel programs.

    guest_dir: the directory inside the sandbox that holds vmpool's guest files (the agent).
    """

    _start_record: StartRecord | None = None  # how `create`/`resume` started it, for `pause`

    def __init__(self, driver_name: str, isolation: str, process: SandboxProcess,
                 start_timeout: float, reuse_after_timeout: bool = True) -> None:
        """Internal: adopt a started `process` and wait for its hello. Use `create`."""
        self.sandbox_id = "%s-%s" % (driver_name, uuid.uuid4().hex[:12])
        self._driver = driver_name
        self._reuse_after_timeout = reuse_after_timeout
        self._isolation = isolation
        self._process = process
        self._serial = threading.Lock()  # one serial op (program, command, file op) at a time
        self._client = AgentClient(process, "sandbox %s" % self.sandbox_id)
        self._finalizer = weakref.finalize(self, _teardown, process, self._client)  # GC, exit
        try:
            hello = self._client.handshake(start_timeout)
        except BaseException:
            self.kill()
            raise
        self.agent_version = hello["agent_version"]
        self.python_version = hello["python"]
        self.guest_dir = hello["guest_dir"]
        self.commands = Commands(self)
        self.files = Files(self)
        self.processes = Processes(self)

    @classmethod
    def create(cls, driver: str | Driver = "auto", *, python: str | None = None,
               tmp_size_mb: int = 256, start_timeout: float = 30.0,
               agent_args: Sequence[str] = (), template: str | None = None,
               network: bool | None = None) -> LocalSandbox:
        """Start a sandbox and wait until its agent said hello.

        driver: "auto" (strongest usable isolation), a registered driver name, or a `Driver`.
        python: interpreter inside the sandbox (driver default: /usr/bin/python3 for bwrap).
        tmp_size_mb: size of the writable /tmp. agent_args: extra agent flags (tests).
        template: the template to start from, built on first use (microvm default "base"; bwrap
            default: none, the host's /usr and python).
        network: False: no network even if the template has one (None: as the template says).
        Raises DriverUnavailableError if the driver cannot run here, SandboxError/ProtocolError
        if the sandbox does not come up properly (nothing is left running then).
        """
        if isinstance(driver, Driver):
            instance, name = driver, driver.name
            reason = instance.available()
            if reason is not None:
                raise DriverUnavailableError("sandbox driver %r is not usable here: %s" % (name, reason))
        else:
            name = resolve_driver(driver)
            instance = get_driver(name)
        options = StartOptions(python=python, tmp_size_mb=tmp_size_mb, agent_args=tuple(agent_args),
                               template=template, network=network)
        process = instance.start(options)  # first: starting may settle the isolation (microvm)
        sandbox = cls(name, instance.isolation(), process, start_timeout, instance.reuse_after_timeout)
        sandbox._start_record = StartRecord(instance, options)
        return sandbox

    def pause(self, directory: str | os.PathLike[str]) -> None:
        """Save the sandbox into `directory` (created with mode 0700, with its parents; it must
        not exist) and end it, as `kill` does. `resume` continues it, in this or another process.

        What is kept depends on the driver (`Driver.keeps_memory`): the microvm driver keeps
        the whole VM, so processes still run after `resume`, with their memory, and every
        file is there; other drivers (bwrap) keep only files: /tmp and /home/user (where it
        exists) as tar archives (no single file beyond ~48 MiB, and neither FIFOs nor device
        nodes; directories and links lose their times), and a resumed sandbox is a new one
        with those files and none of the processes. The directory's ``state.json`` describes
        it (see `vmpool._persist`).

        A microvm pause waits for a program, command or file operation that another thread runs,
        and starts with the VM's state as it is then; a files-only pause archives the files
        while such calls may still change them. Raises SandboxError (and the sandbox is killed)
        if it is dead or broke; OSError if the state could not be saved (FileExistsError for an
        existing `directory`, EFBIG for a file beyond the limit, EINVAL for a FIFO, a full disk)
        while the sandbox keeps running; ValueError if it was not started by `create` or
        `resume`. Nothing is left in `directory` on failure.
        """
        _persist.pause(self, Path(directory))

    @classmethod
    def resume(cls, directory: str | os.PathLike[str], *, start_timeout: float = 30.0) -> LocalSandbox:
        """The sandbox `pause` saved into `directory`, running again with the same driver,
        template and options, and a new `sandbox_id`; `directory` is deleted once it runs.

        Raises PausedStateError, before starting anything, if `directory` holds no complete
        pause this vmpool can resume (another state format, missing or damaged files) or one
        made with a template build, QEMU version or VM configuration this host does not have
        any more; FileNotFoundError if it does not exist; DriverUnavailableError or
        SandboxError if the sandbox cannot start. `directory` is kept whenever this raises.
        """
        return _persist.resume(cls, Path(directory), start_timeout)

    @property
    def driver(self) -> str:
        """The resolved driver name, e.g. "bwrap"."""
        return self._driver

    @property
    def isolation(self) -> str:
        """Human-readable isolation level, e.g. "namespaces+seccomp (bubblewrap 0.8.0)"."""
        return self._isolation

    def run_program(self, code: str, limits: Limits | None = None) -> ExecResult:
        """Run Python `code` as __main__ in a fresh forked child under `limits`.

        Every outcome of the program is a result (see `ExecStatus`); SandboxError means the
        machinery failed and the sandbox is gone. Programs are isolated from each other: each runs
        in a fresh private cwd, its leftover processes are killed and what it created at the top
        level of /tmp is deleted when it ends (files put there with `files.write` stay).
        Output kept: the first min(max_output_bytes, 8 MiB) bytes of stdout+stderr; more is
        dropped (output_truncated) and does not stop the program. max_rss_mb includes the
        ~15 MB of the warm interpreter the program was forked from. On drivers that do not reuse
        a sandbox after a timeout (microvm), a ``timeout`` result also kills the sandbox (and so
        does a timed-out command).
        """
        limits = limits or Limits()
        result = self._call("run_program", limits.wall_time_s + REPLY_GRACE_S,
                            code=code, limits=wire_limits(limits))
        parsed = self._parse(ExecResult, result)
        if parsed.status == "timeout":
            self._after_timeout()
        return parsed

    def _after_timeout(self) -> None:
        """A program or command was killed for its time: drivers that do not trust the sandbox
        after that (`Driver.reuse_after_timeout`: a microVM, whose guest kernel the program had
        to itself until the end) are discarded; the agent has swept the others."""
        if not self._reuse_after_timeout:
            self.kill()

    def _parse(self, model: type[ResultT], fields: dict[str, Any]) -> ResultT:
        try:
            return model.model_validate(fields)
        except ValidationError as exc:
            self.kill()
            raise ProtocolError("sandbox %s: malformed %s from the agent: %s"
                                % (self.sandbox_id, model.__name__, exc)) from None

    def ping(self, timeout: float = 10.0) -> None:
        """Round-trip to the agent; SandboxError (and the sandbox killed) if it does not answer."""
        self._call("ping", timeout)

    def is_running(self) -> bool:
        """Whether the sandbox is alive and has not been killed."""
        return self._process.alive()

    def kill(self) -> None:
        """Tear the sandbox down with every process in it. Idempotent."""
        self._finalizer()

    close = kill

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "dead"
        return "<LocalSandbox %s %s (%s)>" % (self.sandbox_id, state, self._isolation)

    def _call(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """One request and its reply. Serial ops wait for their turn first (so that `timeout`
        is theirs alone). Kills the sandbox when its state is in doubt: SandboxError (dead,
        hung or broken), or a serial op abandoned midway (e.g. Ctrl-C), which the agent goes on
        running while nobody waits (the next one's timeout would not hold). A concurrent op
        abandoned midway harms nothing: its reply is dropped by id."""
        self._check_running()
        serial = op in SERIAL_OPS
        try:
            if serial:
                with self._serial:
                    return self._client.call(op, timeout, **fields)
            return self._client.call(op, timeout, **fields)
        except SandboxError:
            self.kill()  # unknown state: never reuse it
            raise
        except (OSError, ValueError):
            raise  # a failed file or process operation, or an oversized request: all in sync
        except BaseException:
            if serial or self._client.broken:
                self.kill()
            raise

    def _submit(self, op: str, timeout: float, on_event: EventCallback,
                on_done: Callable[[], None], **fields: Any) -> Call:
        """Send a concurrent, streaming request (events to `on_event`, on the reader thread)
        and return its `Call` at once; `timeout` bounds the sending."""
        self._check_running()
        try:
            return self._client.submit(op, timeout, on_event=on_event, on_done=on_done, **fields)
        except SandboxError:
            self.kill()
            raise
        except BaseException:
            if self._client.broken:
                self.kill()
            raise

    def _check_running(self) -> None:
        if not self._process.alive():
            self.kill()
            raise SandboxError("sandbox %s is not running (killed or exited)" % self.sandbox_id)


class Commands:
    """Shell commands inside the sandbox (E2B-style, minimal)."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self._sandbox = sandbox

    def run(self, cmd: str, timeout: float = 60.0, cwd: str = "/tmp",
            limits: Limits | None = None) -> CommandResult:
        """Run `cmd` with /bin/sh -c in `cwd`; killed with everything it started after `timeout`
        seconds (then timed_out=True, exit_code=-9). `timeout` is a wall-time limit, so finite
        and at most a day (pydantic's ValidationError otherwise). `limits` default: COMMAND_LIMITS."""
        base = limits or COMMAND_LIMITS
        limits = Limits.model_validate({**base.model_dump(), "wall_time_s": timeout})
        result = self._sandbox._call("run_command", timeout + REPLY_GRACE_S, command=cmd,
                                     cwd=cwd, limits=wire_limits(limits))
        parsed = self._sandbox._parse(CommandResult, result)
        if parsed.timed_out:
            self._sandbox._after_timeout()
        return parsed
