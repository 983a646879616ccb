"""Commands of one sandbox with E2B's semantics, on top of `LocalSandbox.processes`.

A command runs as ``/bin/bash -l -c CMD`` with the sandbox's environment (its create-time
``envs``) overlaid by the call's. Its output goes to every client watching it (the one that
started it, and any that connected since), each through its own `Stream`: first
``{"type": "start", "pid"}``, then ``{"type": "stdout"|"stderr", "data"}`` chunks (UTF-8,
decoded incrementally), then ``{"type": "end", "exit_code", "error"}``. A command that exceeds
its timeout (seconds, 0 for none) is killed and its watchers get ``{"type": "error", "error":
{"type": "timeout", ...}}`` instead. A foreground command whose last watcher goes away is killed;
a background one keeps running until it ends, is killed, or the sandbox ends.
"""

from __future__ import annotations

import codecs
import logging
import signal
import threading
from typing import Any

from ._errors import NotFoundException
from ._sandbox import LocalSandbox
from ._service_stream import Stream
from ._service_types import ProcessInfo

__all__ = ["CommandTable", "KERNEL_TAG", "exit_error"]

log = logging.getLogger("vmpool.service")

SHELL = ("/bin/bash", "-l", "-c")
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
        self.handle: Any = None
        self.lock = threading.Lock()
        self.streams: list[Stream] = []
        self.pending: list[dict[str, Any]] = []  # output that came before the start event
        self.last: dict[str, Any] | None = None
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
                         for name in ("stdout", "stderr")}

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

    def output(self, name: str, data: bytes | str) -> None:
        with self.lock:
            text = data if isinstance(data, str) else self.decoders[name].decode(data)
            self._publish({"type": name, "data": text})

    def _publish(self, event: dict[str, Any]) -> None:
        if not event.get("data") and event["type"] in ("stdout", "stderr"):
            return
        if self.pid is None:
            self.pending.append(event)
            return
        for stream in self.streams:
            stream.put(event)

    def finish(self, last: dict[str, Any]) -> None:
        with self.lock:
            if self.last is not None:
                return
            for name, decoder in self.decoders.items():
                self._publish({"type": name, "data": decoder.decode(b"", final=True)})
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

    def start(self, cmd: str, envs: dict[str, str], cwd: str | None, timeout: float, stdin: bool,
              background: bool) -> Stream:
        """Start `cmd`; the stream of its events (see module docstring)."""
        command = _Command(background, timeout)
        stream = command.watch()
        handle = self._local.processes.start(
            [*SHELL, cmd], envs={**self._envs, **envs}, cwd=cwd, stdin=stdin, timeout=None,
            on_stdout=lambda data: command.output("stdout", data),
            on_stderr=lambda data: command.output("stderr", data))
        command.handle = handle
        with self._lock:
            self._commands[handle.pid] = command
        command.started(handle.pid)
        threading.Thread(target=self._wait, args=(command,), name="vmpool-command-%d" % handle.pid,
                         daemon=True).start()
        return stream

    def _wait(self, command: _Command) -> None:
        handle = command.handle
        try:
            try:
                exit_code = handle.wait(command.timeout or None)
            except TimeoutError:
                handle.kill()
                handle.wait(None)
                command.finish({"type": "error", "error": {
                    "type": "timeout", "message": "the command exceeded its timeout of %g s and was "
                    "killed" % command.timeout}})
                return
            command.finish({"type": "end", "exit_code": exit_code, "error": exit_error(exit_code)})
        except Exception as exc:  # the sandbox died under it: tell the watchers, never hang them
            command.finish({"type": "error", "error": {"type": "sandbox_error", "message": str(exc)}})
        finally:
            with self._lock:
                self._commands.pop(command.pid or -1, None)

    def connect(self, pid: int) -> Stream:
        """A new stream of a running command's events from now on."""
        with self._lock:
            command = self._commands.get(pid)
        if command is not None:
            return command.watch()
        raise NotFoundException("no command with pid %d is running in this sandbox" % pid)

    def list(self) -> list[ProcessInfo]:
        """The processes running in the sandbox (the code kernel excepted)."""
        return [ProcessInfo(pid=p.pid, tag=p.tag, cmd=p.cmd[0] if p.cmd else "", args=list(p.cmd[1:]),
                            envs=dict(p.envs or {}), cwd=p.cwd)
                for p in self._local.processes.list() if p.tag != KERNEL_TAG]

    def kill(self, pid: int) -> bool:
        """SIGKILL the process `pid`; False if there is none."""
        return bool(self._local.processes.kill(pid))

    def send_stdin(self, pid: int, data: bytes) -> None:
        self._local.processes.send_stdin(pid, data)

    def close_stdin(self, pid: int) -> None:
        with self._lock:
            command = self._commands.get(pid)
        if command is None:
            raise NotFoundException("no command with pid %d is running in this sandbox" % pid)
        command.handle.close_stdin()

    def close(self) -> None:
        """End every stream: the sandbox is going away (its processes die with it)."""
        with self._lock:
            commands = list(self._commands.values())
        for command in commands:
            command.finish({"type": "error", "error": {"type": "sandbox_error",
                                                       "message": "the sandbox was killed or paused"}})
