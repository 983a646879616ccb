"""Commands of one sandbox with E2B's semantics, on top of `LocalSandbox.processes`.

A command runs as ``/bin/bash -l -c CMD`` (the agent's way of running a process) with the
sandbox's environment (its create-time ``envs``) overlaid by the call's. Its output goes to
every client watching it (the one that started it, and any that connected since), each through
its own `Stream`: first ``{"type": "start", "pid"}``, then ``{"type": "stdout"|"stderr",
"data"}`` text as it comes, then ``{"type": "end", "exit_code", "error"}``. A command that
exceeds its timeout (seconds, 0 for none; enforced by the agent, which kills its process group)
ends its watchers' streams with ``{"type": "stream_error", "error": {"type": "timeout", ...}}``
instead. A foreground command whose last watcher goes away is killed; a background one keeps
running until it ends, is killed, or the sandbox ends. A process this table did not start (one
started before a pause, or by another service) is followed through `Processes.connect`.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ._errors import NotFoundException, SandboxException
from ._processes import ProcessHandle, ProcessInfo, ProcessResult
from ._sandbox import LocalSandbox
from ._service_stream import Stream

__all__ = ["CommandTable", "KERNEL_TAG", "exit_error"]

log = logging.getLogger("vmpool.service")

WAIT_SLICE_S = 0.5  # how long a command's waiter blocks before it checks for a pause
KERNEL_TAG = "vmpool-code-kernel"  # the code kernel's bridge: internal, not listed as a command


def exit_error(exit_code: int) -> str | None:
    """E2B's wording of how a command ended: None for success, "exit status N", or
    "signal: NAME" for a command killed by a signal (exit code -N)."""
    if exit_code == 0:
        return None
    if exit_code < 0:
        try:
            return "signal: %s" % signal.Signals(-exit_code).name
        except ValueError:
            return "signal: %d" % -exit_code
    return "exit status %d" % exit_code


class _Command:
    """A command this service started, and the streams watching it."""

    def __init__(self, background: bool, timeout: float) -> None:
        self.background = background
        self.timeout = timeout
        self.pid: int | None = None
        self.handle: ProcessHandle | None = None
        self.lock = threading.Lock()
        self.streams: list[Stream] = []
        self.pending: list[dict[str, Any]] = []  # output that came before the start event
        self.last: dict[str, Any] | None = None

    def watch(self) -> Stream:
        stream = Stream(on_detach=lambda: self._detached(stream))
        with self.lock:
            if self.pid is not None:
                stream.put({"type": "start", "pid": self.pid})
            if self.last is not None:
                stream.put(self.last, last=True)
            else:
                self.streams.append(stream)
        return stream

    def _detached(self, stream: Stream) -> None:
        with self.lock:
            if stream in self.streams:
                self.streams.remove(stream)
            orphaned = not self.streams and not self.background and self.last is None
        if orphaned and self.handle is not None:
            log.info("killing foreground command %s: its client went away", self.pid)
            self.handle.kill()

    def started(self, pid: int) -> None:
        with self.lock:
            self.pid = pid
            for stream in self.streams:
                stream.put({"type": "start", "pid": pid})
                for event in self.pending:
                    stream.put(event)
            self.pending.clear()

    def output(self, name: str, text: str) -> None:
        """Output of the process (called on the sandbox's reader thread: never blocks)."""
        if not text:
            return
        event = {"type": name, "data": text}
        with self.lock:
            if self.pid is None:
                self.pending.append(event)
                return
            for stream in self.streams:
                stream.put(event)

    def finish(self, last: dict[str, Any]) -> None:
        with self.lock:
            if self.last is not None:
                return
            self.last = last
            streams, self.streams = self.streams, []
        for stream in streams:
            stream.put(last, last=True)


class CommandTable:
    """The commands of one sandbox (see module docstring). `envs` is the sandbox's environment;
    it is read at each start, so that it can change."""

    def __init__(self, local: LocalSandbox, envs: dict[str, str]) -> None:
        self._local = local
        self._envs = envs
        self._commands: dict[int, _Command] = {}
        self._lock = threading.Lock()
        # Waiting on a process while the sandbox is paused would see its connection drop,
        # which `Processes` takes for a dead sandbox and kills: `suspend` waits them out.
        self._gate = threading.Condition()
        self._waiting = 0
        self._suspended = False

    def start(self, cmd: str, envs: dict[str, str], cwd: str | None, timeout: float, stdin: bool,
              background: bool) -> Stream:
        """Start `cmd`; the stream of its events (see module docstring)."""
        command = _Command(background, timeout)
        stream = command.watch()
        handle = self._local.processes.start(
            cmd, envs={**self._envs, **envs}, cwd=cwd, stdin=stdin, timeout=timeout or None,
            on_stdout=lambda text: command.output("stdout", text),
            on_stderr=lambda text: command.output("stderr", text))
        self._follow(command, handle)
        return stream

    def _follow(self, command: _Command, handle: ProcessHandle) -> None:
        command.handle = handle
        with self._lock:
            self._commands[handle.pid] = command
        command.started(handle.pid)
        threading.Thread(target=self._wait, args=(command, handle), name="vmpool-command-%d" % handle.pid,
                         daemon=True).start()

    def _wait(self, command: _Command, handle: ProcessHandle) -> None:
        try:
            result = self._result(handle)
            if result is None:
                return  # the sandbox is being paused: the process goes on, followed after resume
            if result.timed_out:
                command.finish({"type": "stream_error", "error": {
                    "type": "timeout", "message": "the command exceeded its timeout of %g s and was "
                    "killed" % command.timeout}})
            else:
                command.finish({"type": "end", "exit_code": result.exit_code,
                                "error": exit_error(result.exit_code)})
        except Exception as exc:  # the sandbox died under it: tell the watchers, never hang them
            command.finish({"type": "stream_error", "error": {"type": "sandbox_error", "message": str(exc)}})
        finally:
            with self._lock:
                if self._commands.get(handle.pid) is command:
                    del self._commands[handle.pid]

    def _result(self, handle: ProcessHandle) -> ProcessResult | None:
        """How the process ended, or None once the table is suspended."""
        while True:
            with self._gate:
                if self._suspended:
                    return None
                self._waiting += 1
            try:
                return handle.wait(WAIT_SLICE_S)
            except TimeoutError:
                continue
            finally:
                with self._gate:
                    self._waiting -= 1
                    self._gate.notify_all()

    def connect(self, pid: int) -> Stream:
        """A new stream of a running process's events from now on (for one this table did not
        start, plus what the agent kept while nobody followed it)."""
        with self._lock:
            command = self._commands.get(pid)
        if command is not None:
            return command.watch()
        command = _Command(background=True, timeout=0)  # never killed when its watchers leave
        stream = command.watch()
        try:
            handle = self._local.processes.connect(
                pid, on_stdout=lambda text: command.output("stdout", text),
                on_stderr=lambda text: command.output("stderr", text))
        except ProcessLookupError:
            raise NotFoundException("no process with pid %d runs in this sandbox" % pid) from None
        self._follow(command, handle)
        return stream

    def list(self) -> list[ProcessInfo]:
        """The commands running in the sandbox (the code kernel excepted)."""
        return [p for p in self._local.processes.list() if p.running and p.tag != KERNEL_TAG]

    def kill(self, pid: int) -> bool:
        """SIGKILL the process `pid` (its process group); False if there is none."""
        return self._local.processes.kill(pid)

    def send_stdin(self, pid: int, data: bytes) -> None:
        try:
            self._local.processes.send_stdin(pid, data)
        except ProcessLookupError:
            raise NotFoundException("no process with pid %d runs in this sandbox" % pid) from None
        except BrokenPipeError:
            raise SandboxException("the stdin of process %d is closed, or it was started without "
                                   "stdin=True" % pid) from None

    def close_stdin(self, pid: int) -> None:
        try:
            self._local.processes.close_stdin(pid)
        except ProcessLookupError:
            raise NotFoundException("no process with pid %d runs in this sandbox" % pid) from None

    def suspend(self, why: str) -> None:
        """The sandbox is about to be paused: stop waiting on its processes (returns once no
        thread does) and end every stream with `why`. A paused VM's processes run on after its
        resume, where `connect` follows them again."""
        with self._gate:
            self._suspended = True
            self._gate.wait_for(lambda: self._waiting == 0)
        self.close(why)

    def close(self, why: str) -> None:
        """End every stream (their clients get `why`): the sandbox is going away."""
        with self._lock:
            commands = list(self._commands.values())
            self._commands.clear()
        for command in commands:
            command.finish({"type": "stream_error", "error": {"type": "sandbox_error", "message": why}})
