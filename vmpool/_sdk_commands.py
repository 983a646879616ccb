"""`Sandbox.commands` with E2B's API: `SandboxCommands` and `CommandHandle`.

A command streams its output from the service as it happens (`vmpool._service_commands`); a
foreground `run` reads the stream to its end, a background one returns a `CommandHandle` that
holds the stream, so no output is lost between the start and a later `wait`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, overload

from ._errors import CommandExitException, InvalidArgumentException, SandboxException
from ._service_client import EventStream, ServiceClient, sandbox_route
from ._processes import ProcessInfo
from ._types import CommandResult

__all__ = ["CommandHandle", "SandboxCommands"]

OutputHandler = Callable[[str], Any]


def _stdin_payload(data: str | bytes) -> dict[str, str]:
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return {"data_b64": base64.b64encode(raw).decode()}


class CommandHandle:
    """A running command (E2B's `CommandHandle`): its `pid`, its output as it comes (iterate:
    ``(stdout, stderr, None)`` tuples, one of the first two set), `wait` for its result,
    `kill`, `send_stdin`, `close_stdin`, and `disconnect` (stop following it; it keeps running)."""

    def __init__(self, pid: int, events: EventStream, commands: SandboxCommands) -> None:
        self._pid = pid
        self._events = events
        self._commands = commands
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._end: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._iterator = self._follow()

    @property
    def pid(self) -> int:
        """The command's process id in the sandbox."""
        return self._pid

    def _follow(self) -> Iterator[tuple[str | None, str | None, None]]:
        try:
            for event in self._events:
                if event["type"] == "stdout":
                    self._stdout.append(event["data"])
                    yield event["data"], None, None
                elif event["type"] == "stderr":
                    self._stderr.append(event["data"])
                    yield None, event["data"], None
                elif event["type"] == "end":
                    self._end = event
        finally:
            if self._end is None:
                self._events.close()

    def __iter__(self) -> Iterator[tuple[str | None, str | None, None]]:
        return self._iterator

    def wait(self, on_pty: Callable[[bytes], Any] | None = None, on_stdout: OutputHandler | None = None,
             on_stderr: OutputHandler | None = None) -> CommandResult:
        """Wait for the command to end, calling `on_stdout`/`on_stderr` with its output as it
        comes; its result. CommandExitException if it exited non-zero, TimeoutException if it
        exceeded its timeout (it was killed)."""
        try:
            for stdout, stderr, _ in self._iterator:
                if stdout is not None and on_stdout is not None:
                    on_stdout(stdout)
                elif stderr is not None and on_stderr is not None:
                    on_stderr(stderr)
        except BaseException:
            self._events.close()  # e.g. Ctrl-C: the service kills a foreground command
            raise
        if self._end is None:
            raise SandboxException("command %d: its output stream ended without its exit status" % self._pid)
        stdout, stderr = "".join(self._stdout), "".join(self._stderr)
        exit_code, error = int(self._end["exit_code"]), self._end.get("error")
        if exit_code != 0:
            raise CommandExitException(stdout, stderr, exit_code, error)
        return CommandResult(exit_code=0, stdout=stdout, stderr=stderr, error=error,
                             duration_s=time.monotonic() - self._started)

    def kill(self) -> bool:
        """SIGKILL the command; False if it had ended already."""
        return self._commands.kill(self._pid)

    def send_stdin(self, data: str | bytes, request_timeout: float | None = None) -> None:
        """Write `data` to the command's stdin (it must have been started with stdin=True)."""
        self._commands.send_stdin(self._pid, data)

    def close_stdin(self, request_timeout: float | None = None) -> None:
        """Close the command's stdin (EOF)."""
        self._commands.close_stdin(self._pid)

    def disconnect(self) -> None:
        """Stop receiving the command's output; the command keeps running (`commands.connect`
        follows it again)."""
        self._events.close()


class SandboxCommands:
    """Shell commands in the sandbox, with E2B's API (`Sandbox.commands`). Commands run as
    ``/bin/bash -l -c CMD`` with the sandbox's `envs` plus the call's."""

    def __init__(self, client: ServiceClient, sandbox_id: str) -> None:
        self._client = client
        self._sandbox_id = sandbox_id

    def _route(self, tail: str = "") -> str:
        return sandbox_route(self._sandbox_id, "/commands" + tail)

    @overload
    def run(self, cmd: str, background: Literal[False] | None = None, envs: dict[str, str] | None = None,
            user: str | None = None, cwd: str | None = None, on_stdout: OutputHandler | None = None,
            on_stderr: OutputHandler | None = None, stdin: bool | None = None, timeout: float | None = 60,
            request_timeout: float | None = None) -> CommandResult: ...

    @overload
    def run(self, cmd: str, background: Literal[True], envs: dict[str, str] | None = None,
            user: str | None = None, cwd: str | None = None, on_stdout: OutputHandler | None = None,
            on_stderr: OutputHandler | None = None, stdin: bool | None = None, timeout: float | None = 60,
            request_timeout: float | None = None) -> CommandHandle: ...

    def run(self, cmd: str, background: bool | None = None, envs: dict[str, str] | None = None,
            user: str | None = None, cwd: str | None = None, on_stdout: OutputHandler | None = None,
            on_stderr: OutputHandler | None = None, stdin: bool | None = None, timeout: float | None = 60,
            request_timeout: float | None = None) -> CommandResult | CommandHandle:
        """Run `cmd`. Foreground: wait for it (callbacks get its output as it comes) and return
        its `CommandResult`; CommandExitException if it exits non-zero. Background: return a
        `CommandHandle` at once; the command outlives this call (and this process).

        timeout: seconds, default 60; 0 or None: none. A command that exceeds it is killed,
        and waiting for it raises TimeoutException. stdin=True keeps its stdin open for
        `send_stdin`. `user` must be None or "user"; `request_timeout` is accepted for E2B
        compatibility."""
        if user not in (None, "user"):
            raise InvalidArgumentException("vmpool sandboxes have one user; user=%r is not supported" % user)
        body = {"cmd": cmd, "envs": dict(envs or {}), "cwd": cwd, "timeout": timeout or 0,
                "stdin": bool(stdin), "background": bool(background)}
        handle = self._handle(self._client.stream(self._route(), body, "the output of %r" % cmd))
        return handle if background else handle.wait(on_stdout=on_stdout, on_stderr=on_stderr)

    def _handle(self, events: EventStream) -> CommandHandle:
        try:
            start = next(events)
        except StopIteration:
            raise SandboxException("the vmpool service sent no start event") from None
        if start.get("type") != "start":
            events.close()
            raise SandboxException("the vmpool service sent %.200r instead of a start event" % start)
        return CommandHandle(int(start["pid"]), events, self)

    def connect(self, pid: int, timeout: float | None = 60, request_timeout: float | None = None) -> CommandHandle:
        """Follow a running command again (its output from now on); NotFoundException if no
        command with that pid runs. `timeout` is accepted for E2B compatibility (the command's
        own timeout still applies)."""
        return self._handle(self._client.stream(self._route("/%d/connect" % pid), {},
                                                "the output of command %d" % pid))

    def list(self, request_timeout: float | None = None) -> list[ProcessInfo]:
        """The commands running in the sandbox: `ProcessInfo` with `pid`, `cmd` (the command
        line as given to `run`; E2B's has "/bin/bash" there and the line in `args`), `tag` and
        `cwd`."""
        answer = self._client.call("GET", self._route())
        return [ProcessInfo.model_validate(process) for process in answer["processes"]]

    def kill(self, pid: int, request_timeout: float | None = None) -> bool:
        """SIGKILL the process `pid`; False if there was none."""
        return bool(self._client.call("POST", self._route("/%d/kill" % pid), {})["killed"])

    def send_stdin(self, pid: int, data: str | bytes, request_timeout: float | None = None) -> None:
        """Write `data` to the stdin of the command `pid` (started with stdin=True)."""
        self._client.call("POST", self._route("/%d/stdin" % pid), _stdin_payload(data))

    def close_stdin(self, pid: int, request_timeout: float | None = None) -> None:
        """Close the stdin of the command `pid` (EOF)."""
        self._client.call("POST", self._route("/%d/close_stdin" % pid), {})
