"""`Processes`: the background processes of a sandbox (E2B's ``commands`` with
``background=True``), `LocalSandbox.processes`. They run concurrently with programs and with each
other, stream their output as it comes, take input, and outlive the call that started them.

What runs, and how (``/bin/bash -l -c cmd``, own session, no rlimits but `timeout`, what the
``--exclusive`` sweep after programs spares), is the agent's ``_agent_session.py``; the wire ops
are ``process_*`` in ``vmpool._protocol``.
"""

from __future__ import annotations

import codecs
import collections
import logging
import math
import signal as signals
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ._client import Call
from ._errors import ProtocolError, SandboxError
from ._protocol import MessageError, b64decode, b64encode
from ._types import MAX_TIME_S

if TYPE_CHECKING:
    from ._sandbox import LocalSandbox

__all__ = ["ProcessHandle", "ProcessInfo", "ProcessResult", "Processes"]

log = logging.getLogger("vmpool")

OP_TIMEOUT_S = 60.0  # an answer to a process op (the agent answers them at once)
KEEP_BYTES = 64 * 1024 * 1024  # of each stream, kept by a handle (`stdout`/`stderr`)
UNREAD_LINES_COST = 16 * 1024 * 1024  # stdout lines not yet taken by `read_line`: characters,
LINE_OVERHEAD = 64  # plus this per line (a str object's own size), so a flood of short lines is bounded too
STDIN_CHUNK = 1024 * 1024  # input per request
STDIN_RETRY_S = 0.05  # pause while the process has too much unread input
OutputCallback = Callable[[str], None]


class ProcessInfo(BaseModel):
    """A background process as `Processes.list` reports it."""

    model_config = ConfigDict(frozen=True)

    pid: int
    cmd: str
    tag: str | None = None
    cwd: str
    running: bool = Field(description="False once it has exited (its exit not yet collected by anyone)")


class ProcessResult(BaseModel):
    """How a background process ended, with the output its handle received."""

    model_config = ConfigDict(frozen=True)

    pid: int
    exit_code: int = Field(description="exit status; -N if killed by signal N (subprocess convention)")
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = Field(False, description="killed (SIGKILL to its group) for its timeout")
    duration_s: float = 0.0
    output_truncated: bool = Field(False, description=(
        "more than 64 MiB of a stream arrived, or the agent dropped output while no host was "
        "connected to the process: stdout/stderr lack some"))


class _Stream:
    """One output stream of a handle: UTF-8 decoded across chunk boundaries, the first
    KEEP_BYTES kept."""

    def __init__(self, callback: OutputCallback | None) -> None:
        self.callback = callback
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.chunks: list[str] = []
        self.kept = 0
        self.truncated = False

    def feed(self, data: bytes, final: bool = False) -> str:
        text = self.decoder.decode(data, final)
        if self.kept + len(data) <= KEEP_BYTES:
            self.kept += len(data)
            if text:
                self.chunks.append(text)
        else:
            self.truncated = True
        return text

    def text(self) -> str:
        if len(self.chunks) > 1:
            self.chunks[:] = ["".join(self.chunks)]
        return self.chunks[0] if self.chunks else ""


class _State:
    """What the client's reader thread updates for one handle. It holds no reference to the
    sandbox, so that a running process does not keep a dropped `LocalSandbox` alive."""

    def __init__(self, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> None:
        self.cond = threading.Condition()
        self.pid: int | None = None
        self.streams = {"stdout": _Stream(on_stdout), "stderr": _Stream(on_stderr)}
        self.dropped_by_agent = 0
        self.lines: collections.deque[str] = collections.deque()
        self.unread = 0  # the cost of `lines` (see UNREAD_LINES_COST)
        self.partial: list[str] = []  # the pieces of the line being received
        self.partial_chars = 0
        self.skipping = False  # through the rest of a line too long to keep
        self.lines_dropped = 0
        self.ended = False

    def on_event(self, message: dict[str, Any]) -> None:
        name = message.get("event")
        if name in ("stdout", "stderr"):
            try:
                data = b64decode(str(message.get("data_b64", "")))
            except MessageError as exc:
                raise ProtocolError("malformed output event from the agent: %s" % exc) from None
            self._output(str(name), data, False)
        elif name == "start":
            with self.cond:
                if isinstance(message.get("pid"), int):
                    self.pid = message["pid"]
                self.cond.notify_all()
        elif name == "dropped":
            with self.cond:
                self.dropped_by_agent += sum(int(message.get(key) or 0) for key in ("stdout", "stderr"))

    def on_done(self) -> None:
        """The final reply (or a failure) came: flush the decoders and the last line."""
        for name in ("stdout", "stderr"):
            self._output(name, b"", True)
        with self.cond:
            if self.partial and not self.skipping:
                self._queue_line("".join(self.partial))
                self.partial, self.partial_chars = [], 0
            self.ended = True
            self.cond.notify_all()

    def _output(self, name: str, data: bytes, final: bool) -> None:
        stream = self.streams[name]
        with self.cond:
            text = stream.feed(data, final)
            if name == "stdout" and text:
                self._split_lines(text)
                self.cond.notify_all()
        if text and stream.callback is not None:
            try:
                stream.callback(text)
            except Exception:
                log.exception("vmpool: an on_%s callback failed", name)

    def _split_lines(self, text: str) -> None:
        *complete, rest = text.split("\n")
        if complete:
            self.partial.append(complete[0])
            if not self.skipping:
                self._queue_line("".join(self.partial))
            for line in complete[1:]:
                self._queue_line(line)
            self.partial, self.partial_chars, self.skipping = [], 0, False
        if rest and not self.skipping:
            self.partial.append(rest)
            self.partial_chars += len(rest)
            if self.partial_chars > UNREAD_LINES_COST:  # a line too long to keep: drop all of it
                self.lines_dropped += 1
                self.partial, self.partial_chars, self.skipping = [], 0, True

    def _queue_line(self, line: str) -> None:
        self.lines.append(line)
        self.unread += len(line) + LINE_OVERHEAD
        while self.unread > UNREAD_LINES_COST and len(self.lines) > 1:
            self.unread -= len(self.lines.popleft()) + LINE_OVERHEAD
            self.lines_dropped += 1


class ProcessHandle:
    """A background process started (`Processes.start`) or connected to (`Processes.connect`)
    by this host. Its output arrives on the client's reader thread while it runs."""

    def __init__(self, processes: Processes, state: _State, call: Call) -> None:
        self._processes, self._state, self._call = processes, state, call

    @property
    def pid(self) -> int:
        assert self._state.pid is not None  # known before a handle is returned
        return self._state.pid

    @property
    def stdout(self) -> str:
        """Its stdout so far (from the connect on, for `Processes.connect`), at most ~64 MiB."""
        with self._state.cond:
            return self._state.streams["stdout"].text()

    @property
    def stderr(self) -> str:
        """Its stderr so far, like `stdout`."""
        with self._state.cond:
            return self._state.streams["stderr"].text()

    @property
    def exit_code(self) -> int | None:
        """None while it runs (or while its exit has not reached this host)."""
        if not self._call.done():
            return None
        try:
            return self.wait(0).exit_code
        except (TimeoutError, SandboxError):
            return None

    def wait(self, timeout: float | None = None) -> ProcessResult:
        """Wait until it has exited and return how. TimeoutError if it is still running after
        `timeout` seconds (it keeps running); SandboxError if the sandbox died meanwhile."""
        if not self._call.wait(timeout):
            raise TimeoutError("process %d is still running after %gs" % (self.pid, timeout or 0))
        reply = self._processes._settle(self._call)
        state = self._state
        with state.cond:
            out, err = state.streams["stdout"], state.streams["stderr"]
            fields = dict(reply, stdout=out.text(), stderr=err.text(),
                          output_truncated=out.truncated or err.truncated or state.dropped_by_agent > 0)
        return self._processes._sandbox._parse(ProcessResult, fields)

    def read_line(self, timeout: float | None = None) -> str | None:
        """The next line of its stdout (without the newline), from the first line it wrote
        (from the connect on, for `Processes.connect`); None once it has exited and every line
        was read (a last line without newline included). Lines not read yet are kept up to
        about 16 MiB, the oldest dropped beyond (`lines_dropped`), so a handle whose lines
        nobody reads costs that much memory at most. TimeoutError if none arrives in `timeout`
        seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state.cond:
            while not self._state.lines:
                if self._state.ended:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("no line from process %d within %gs" % (self.pid, timeout or 0))
                self._state.cond.wait(remaining)
            line = self._state.lines.popleft()
            self._state.unread -= len(line) + LINE_OVERHEAD
            return line

    @property
    def lines_dropped(self) -> int:
        """Lines of stdout `read_line` lost because too much was unread."""
        return self._state.lines_dropped

    def send_stdin(self, data: str | bytes) -> None:
        """See `Processes.send_stdin`."""
        self._processes.send_stdin(self.pid, data)

    def close_stdin(self) -> None:
        """See `Processes.close_stdin`."""
        self._processes.close_stdin(self.pid)

    def kill(self) -> bool:
        """SIGKILL its process group; False if it had already exited."""
        return self._processes.kill(self.pid)

    def signal(self, sig: str | int) -> None:
        """Send `sig` ("SIGTERM", signal.SIGINT, 15, ...) to its process group;
        ProcessLookupError if it has exited."""
        self._processes.signal(self.pid, sig)

    def __repr__(self) -> str:
        code = self.exit_code
        return "<ProcessHandle pid=%s %s>" % (self._state.pid, "running" if code is None else "exit %d" % code)


class Processes:
    """Background processes of one sandbox, with the method names of E2B's ``commands`` where
    they exist there (``connect``, ``list``, ``kill``, ``send_stdin``)."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self._sandbox = sandbox

    def start(self, cmd: str, *, envs: Mapping[str, str] | None = None, cwd: str | None = None,
              stdin: bool = False, timeout: float | None = None, tag: str | None = None,
              on_stdout: OutputCallback | None = None,
              on_stderr: OutputCallback | None = None) -> ProcessHandle:
        """Start `cmd` with ``/bin/bash -l -c`` in the background; return once its pid is known.

        envs: added to the sandbox's environment. cwd: default $HOME (or /tmp); relative paths
        are relative to /tmp. stdin: give it a pipe for `send_stdin` (else /dev/null).
        timeout: seconds after which its process group is SIGKILLed (None or 0: never).
        tag: a label `list` reports. on_stdout/on_stderr: called with each piece of decoded
        output as it arrives, on the sandbox's reader thread: they must not block.
        Raises FileNotFoundError for a missing cwd, BlockingIOError if too many processes run.
        """
        if not isinstance(cmd, str) or "\0" in cmd:
            raise ValueError("cmd must be a string without NUL characters")
        env = dict(envs or {})
        for key, value in env.items():
            if not (isinstance(key, str) and isinstance(value, str) and key and "=" not in key
                    and "\0" not in key + value):
                raise ValueError("envs must map names (no '=' or NUL) to strings, got %r=%r" % (key, value))
        if timeout is not None and not (math.isfinite(timeout) and 0 <= timeout <= MAX_TIME_S):
            raise ValueError("timeout must be None or between 0 and %g seconds, got %r" % (MAX_TIME_S, timeout))
        return self._open("process_start", on_stdout, on_stderr, cmd=cmd, envs=env, cwd=cwd,
                          stdin=bool(stdin), timeout_s=timeout or None, tag=tag)

    def connect(self, pid: int, on_stdout: OutputCallback | None = None,
                on_stderr: OutputCallback | None = None) -> ProcessHandle:
        """A handle on a running process (started by this or an earlier host connection): its
        output from now on, plus what the agent buffered while nobody was connected to it (up
        to 4 MiB; ProcessResult.output_truncated says if some was dropped), and its exit.
        ProcessLookupError if there is no such process."""
        return self._open("process_connect", on_stdout, on_stderr, pid=pid)

    def _open(self, op: str, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None,
              **fields: Any) -> ProcessHandle:
        state = _State(on_stdout, on_stderr)
        call = self._sandbox._submit(op, OP_TIMEOUT_S, state.on_event, state.on_done, **fields)
        try:
            with state.cond:
                answered = state.cond.wait_for(lambda: state.pid is not None or state.ended, OP_TIMEOUT_S)
        except BaseException:  # e.g. Ctrl-C: the process may start all the same, unwatched
            call.abandon()
            raise
        if not answered:
            call.abandon()
            self._sandbox.kill()
            raise SandboxError("sandbox %s: the agent did not answer %s in time; killed"
                               % (self._sandbox.sandbox_id, op))
        if state.pid is None:  # answered without a start: an error
            self._settle(call)
            raise ProtocolError("sandbox %s: %s ended without starting" % (self._sandbox.sandbox_id, op))
        return ProcessHandle(self, state, call)

    def _settle(self, call: Call) -> dict[str, Any]:
        """The result of a finished call; a broken sandbox is killed."""
        try:
            return call.result(0)
        except SandboxError:
            self._sandbox.kill()
            raise

    def list(self) -> list[ProcessInfo]:
        """The background processes: running ones, and ended ones whose exit no handle has
        received yet."""
        reply = self._sandbox._call("process_list", OP_TIMEOUT_S)
        return [self._sandbox._parse(ProcessInfo, item) for item in reply.get("processes", [])]

    def kill(self, pid: int) -> bool:
        """SIGKILL the process group of `pid`; False if there is no such running process."""
        try:
            self.signal(pid, signals.SIGKILL)
            return True
        except ProcessLookupError:
            return False

    def signal(self, pid: int, sig: str | int) -> None:
        """Send `sig` to the process group of `pid`; ProcessLookupError if it is not running."""
        wire: str | int = sig.name if isinstance(sig, signals.Signals) else sig
        self._sandbox._call("process_signal", OP_TIMEOUT_S, pid=pid, signal=wire)

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        """Write `data` (str: as UTF-8) to its stdin. While the process has 8 MiB of input
        it has not read, this waits (up to a minute, then BlockingIOError). BrokenPipeError if
        its stdin is closed or it was started without stdin=True; ProcessLookupError if there
        is no such process."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        for start in range(0, max(len(payload), 1), STDIN_CHUNK):
            chunk = b64encode(payload[start:start + STDIN_CHUNK])
            deadline = time.monotonic() + OP_TIMEOUT_S
            while True:
                try:
                    self._sandbox._call("process_input", OP_TIMEOUT_S, pid=pid, data_b64=chunk)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(STDIN_RETRY_S)

    def close_stdin(self, pid: int) -> None:
        """Close its stdin once the input sent before has been written (it then reads EOF)."""
        self._sandbox._call("process_close_stdin", OP_TIMEOUT_S, pid=pid)

