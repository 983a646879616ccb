"""One background process of the agent (E2B's commands, see ``_agent_session.py`` for the
ops): how it is started, and its pump thread.

Each process is started, and then served, by a thread of its own (its pump): it starts the
process, then polls the process's stdout and stderr (sending each chunk read as an event to
the process's subscribers), its stdin (writing the input ``process_input`` queued), its exit (a
pidfd) and its deadline, and finally sends the exit to the subscribers. A pump blocks while the
host does not take its events (`_agent_channel.Outbox`), and reads no more output meanwhile:
backpressure reaches the process through its pipe, and the agent holds no more than one chunk
of it. While nobody is subscribed (the host that started it has gone), output is kept up to
``UNSUBSCRIBED_BUFFER_BYTES``, the oldest dropped, for the next ``process_connect``.

How a process runs:

- started with ``os.posix_spawn`` (vfork+exec, no Python in the child, in a session of its
  own): pumps are not the main thread, and a child of a threaded process must do nothing but
  exec (see the fork notes in ``_agent.py``). What a child would have set up before its exec,
  a ``/bin/sh`` prologue does instead: the working directory, core dumps off, OOM score 1000
  (the kernel's first victim when a VM runs out of memory, so that the agent survives); then it
  execs the command's shell, which keeps its pid. (Not ``subprocess``: importing it would make
  the agent 0.4 MB larger, which every program's fork pays for);
- ``/bin/bash -l -c cmd`` as E2B does (a login shell: the image's /etc/profile runs, and
  Debian's resets PATH), or ``/bin/sh -c cmd`` where there is no bash; in a session and process
  group of its own (signals and kills go to the group); the agent's environment (PATH, HOME,
  LANG, ... as the driver started the agent) plus ``envs``;
- no rlimits beyond the sandbox's own (a VM's memory and CPUs; bwrap's tmpfs and namespaces):
  they are long-lived services (a Jupyter kernel, a server) for which a CPU-time limit would
  be a death sentence, an address-space limit breaks runtimes that reserve address space up
  front (JVM, Go, V8), and RLIMIT_NPROC counts every process of the uid, so a value fixed at
  start says nothing minutes later. ``timeout_s`` is their only limit;
- when the leader exits, whatever is left in its process group is killed, its remaining output
  is read (for at most EXIT_GRACE_S: a descendant that left the group may hold the pipes) and
  the exit goes to its subscribers.

Part of the guest side (see ``_agent.py``): stdlib only, imported as ``vmpool._agent_process`` on
the host and as the top-level ``_agent_process`` inside the sandbox.
"""

from __future__ import annotations

import collections
import math
import os
import select
import signal
import threading
import time
import traceback
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

if __package__:  # imported as vmpool._agent_process (tests, type checking)
    from . import _agent_channel as channel
    from . import _agent_child as child
    from . import _protocol as proto
else:  # a top-level module inside the sandbox, imported by _agent.py next to its siblings
    import _agent_channel as channel  # type: ignore[no-redef]
    import _agent_child as child  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]

BASH = "/bin/bash"
PROLOGUE = ('cd -- "$1" || exit 126; shift; ulimit -c 0 2>/dev/null; '
            'echo 1000 >/proc/self/oom_score_adj 2>/dev/null; exec "$@"')
EXIT_GRACE_S = 1.0  # reading what a process wrote just before it exited
MAX_POLL_MS = 3_600_000  # poll()'s timeout is a C int of milliseconds
FALLBACK_POLL_MS = 50  # without pidfds, how often an exit is looked for


class Subscriber(NamedTuple):
    request_id: int
    generation: int  # the host connection the request came from


class Process:
    """One background process and its subscribers. Locks: `send_lock` (subscribers, buffered
    output, the exit) is held while its events are written, so that they keep their order;
    `state_lock` (running, stdin) is never held while writing to the channel."""

    def __init__(self, manager: Registry, cmd: str, tag: Optional[str], cwd: str,
                 env: Dict[str, str], stdin: bool, timeout_s: float) -> None:
        self.manager, self.outbox = manager, manager.outbox
        self.cmd, self.tag, self.cwd, self.env, self.timeout_s = cmd, tag, cwd, env, timeout_s
        self.pid = 0
        self.started = time.monotonic()
        self.send_lock = threading.Lock()
        self.subscribers: List[Subscriber] = []
        self.buffer: Deque[Tuple[str, bytes]] = collections.deque()
        self.buffered = 0
        self.dropped = {"stdout": 0, "stderr": 0}
        self.result: Optional[Dict[str, Any]] = None
        self.state_lock = threading.Lock()
        self.running = False  # the leader has not exited (it may be signalled)
        self.reaped = False
        self.stdin_open = stdin
        self.stdin_closing = False
        self.stdin_queue: Deque[bytes] = collections.deque()
        self.stdin_pending = 0
        self.streams: Dict[int, str] = {}  # output pipes still open: fd -> stream name
        self.stdin_fd = -1  # the write end of its stdin pipe, while open
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def info(self) -> Dict[str, Any]:
        return {"pid": self.pid, "cmd": self.cmd, "tag": self.tag, "cwd": self.cwd, "running": not self.reaped}

    def wake(self) -> None:
        """Make the pump look at stdin again."""
        with self.state_lock:
            if self.wake_w < 0:
                return  # ended: its fd number may belong to another file by now
            try:
                os.write(self.wake_w, b"x")
            except BlockingIOError:
                pass  # full: a wake-up is pending anyway

    # -- subscribers (callers hold send_lock) --------------------------------------------------

    def _publish(self, make: Callable[[int], Dict[str, Any]]) -> bool:
        """Send make(request_id) to every subscriber, dropping those whose host has gone;
        whether anyone got it."""
        delivered = False
        for subscriber in list(self.subscribers):
            if self.outbox.send(make(subscriber.request_id), subscriber.generation):
                delivered = True
            else:
                self.subscribers.remove(subscriber)
        return delivered

    def _keep(self, stream: str, data: bytes) -> None:
        self.buffer.append((stream, data))
        self.buffered += len(data)
        while self.buffered > proto.UNSUBSCRIBED_BUFFER_BYTES:
            old_stream, old = self.buffer.popleft()
            self.buffered -= len(old)
            self.dropped[old_stream] += len(old)

    def output(self, stream: str, data: bytes) -> None:
        with self.send_lock:
            text = proto.b64encode(data)
            if not self._publish(lambda request_id: proto.event(request_id, stream, data_b64=text)):
                self._keep(stream, data)

    def connect(self, subscriber: Subscriber) -> None:
        """Subscribe: ``start``, what was dropped and buffered, then live events (or the exit)."""
        def send(message: Dict[str, Any]) -> bool:
            return self.outbox.send(message, subscriber.generation)

        with self.send_lock:
            if not send(proto.event(subscriber.request_id, "start", pid=self.pid)):
                return
            if any(self.dropped.values()):
                send(proto.event(subscriber.request_id, "dropped", **self.dropped))
                self.dropped = {"stdout": 0, "stderr": 0}
            while self.buffer:
                stream, data = self.buffer[0]
                if not send(proto.event(subscriber.request_id, stream, data_b64=proto.b64encode(data))):
                    return
                self.buffer.popleft()
                self.buffered -= len(data)
            if self.result is None:
                self.subscribers.append(subscriber)
                return
            self.manager.forget(self)
            if not send(proto.ok_reply(subscriber.request_id, self.result)):
                self.manager.ended(self)

    # -- the pump ------------------------------------------------------------------------------

    def run(self, first: Subscriber) -> None:
        """The pump thread: start, serve, report the exit."""
        try:
            self.manager.spawn(self)  # under the table's locks
        except Exception as exc:
            reply = (proto.error_reply(first.request_id, "os_error", exc.strerror or str(exc), errno=exc.errno or 0)
                     if isinstance(exc, OSError) else proto.error_reply(first.request_id, "internal", str(exc)))
            self.outbox.send(reply, first.generation)
            self._close_fds()
            return
        with self.send_lock:
            if self.outbox.send(proto.event(first.request_id, "start", pid=self.pid), first.generation):
                self.subscribers.append(first)
        timed_out = False
        try:
            timed_out = self._serve()
        except Exception:
            traceback.print_exc()  # to the agent's stderr; the process is killed below
        finally:
            exit_code = self._end()
        result = {"pid": self.pid, "exit_code": exit_code, "timed_out": timed_out,
                  "duration_s": round(time.monotonic() - self.started, 6)}
        with self.send_lock:
            self.result = result
            # Out of the list before anyone hears of the exit; back in if nobody did.
            self.manager.forget(self)
            if not self._publish(lambda request_id: proto.ok_reply(request_id, result)):
                self.manager.ended(self)
            self.subscribers = []

    def _serve(self) -> bool:
        """Pump output and input until the leader exits; whether its deadline killed it."""
        poller = select.poll()
        for fd in list(self.streams) + [self.wake_r]:
            poller.register(fd, select.POLLIN)
        pidfd = child.pidfd_open(self.pid)
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        deadline = self.started + self.timeout_s if self.timeout_s > 0 else math.inf
        timed_out = False
        try:
            while True:
                self._watch_stdin(poller)
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not timed_out:
                    kill_group(self.pid)
                    timed_out = True
                wait = MAX_POLL_MS if timed_out or math.isinf(remaining) else math.ceil(remaining * 1000)
                wait = min(wait, MAX_POLL_MS if pidfd >= 0 else FALLBACK_POLL_MS)
                exited = False
                for fd, events in poller.poll(max(1, wait)):
                    if fd == pidfd:
                        exited = True
                    elif fd in self.streams:
                        self._read(fd, poller)
                    elif fd == self.wake_r:
                        _drain(self.wake_r)
                    elif fd == self.stdin_fd:
                        self._feed_stdin(events)
                if exited or (pidfd < 0 and child.has_exited(self.pid)):
                    return timed_out
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _read(self, fd: int, poller: Any) -> None:
        data = os.read(fd, proto.CHUNK_BYTES)
        if data:
            self.output(self.streams[fd], data)
        else:
            poller.unregister(fd)
            del self.streams[fd]
            os.close(fd)

    def _watch_stdin(self, poller: Any) -> None:
        """Poll stdin for writing while input is queued; close it once asked and drained."""
        if self.stdin_fd < 0:
            return
        with self.state_lock:
            pending, closing = bool(self.stdin_queue), self.stdin_closing
            if closing and not pending:
                self.stdin_open = False
        if pending:
            poller.register(self.stdin_fd, select.POLLOUT)  # registering again updates the mask
            return
        try:
            poller.unregister(self.stdin_fd)  # an idle pipe polls as POLLERR once its reader is gone
        except KeyError:
            pass
        if closing:
            os.close(self.stdin_fd)
            self.stdin_fd = -1

    def _feed_stdin(self, events: int) -> None:
        with self.state_lock:
            while self.stdin_queue:
                chunk = self.stdin_queue[0]
                try:
                    if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                        raise BrokenPipeError()
                    written = os.write(self.stdin_fd, chunk)
                except BlockingIOError:
                    return
                except OSError:  # EPIPE: it closed its stdin; the rest can never be read
                    self.stdin_queue.clear()
                    self.stdin_pending = 0
                    self.stdin_open, self.stdin_closing = False, True
                    return
                self.stdin_pending -= written
                if written < len(chunk):
                    self.stdin_queue[0] = chunk[written:]
                    return
                self.stdin_queue.popleft()

    def _end(self) -> int:
        """Kill what the process left in its group, reap it, read its last output, close;
        its exit code (-N if killed by signal N)."""
        with self.state_lock:
            # The leader is a zombie until reaped, so its pid and group id cannot have been
            # reused yet. (It is alive only if serving failed: then it dies here too.)
            kill_group(self.pid)
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.running = False
            self.stdin_open = False
            self.stdin_queue.clear()
            self.stdin_pending = 0
        _, status = os.waitpid(self.pid, 0)
        with self.state_lock:
            self.reaped = True
        poller = select.poll()
        for fd in self.streams:
            poller.register(fd, select.POLLIN)
        end = time.monotonic() + EXIT_GRACE_S
        while self.streams and time.monotonic() < end:
            for fd, _events in poller.poll(max(1, math.ceil((end - time.monotonic()) * 1000))):
                self._read(fd, poller)
        for fd in list(self.streams) + [self.stdin_fd]:
            if fd >= 0:
                os.close(fd)
        self.streams, self.stdin_fd = {}, -1
        self._close_fds()
        return os.waitstatus_to_exitcode(status)

    def _close_fds(self) -> None:
        with self.state_lock:
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)
            self.wake_r = self.wake_w = -1


class Registry:
    """What a process needs of the table that holds it (`_agent_session.Manager`)."""

    outbox: channel.Outbox

    def spawn(self, process: Process) -> None:
        raise NotImplementedError

    def forget(self, process: Process) -> None:
        raise NotImplementedError

    def ended(self, process: Process) -> None:
        raise NotImplementedError


def spawn(process: Process) -> None:
    """Start `process` behind the prologue (see the module docstring) with posix_spawn (a
    vfork+exec that runs no Python in the child), setting its pid and pipes."""
    shell = [BASH, "-l", "-c", process.cmd] if os.access(BASH, os.X_OK) else ["/bin/sh", "-c", process.cmd]
    argv = ["/bin/sh", "-c", PROLOGUE, "vmpool-process", process.cwd] + shell
    opened: List[int] = []
    try:
        out_r, out_w = _pipe(opened)
        err_r, err_w = _pipe(opened)
        if process.stdin_open:
            in_r, in_w = _pipe(opened)
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
            opened.append(in_r)
        # every fd of the agent is close-on-exec (PEP 446): the child gets these three only
        process.pid = os.posix_spawn(
            "/bin/sh", argv, process.env, setsid=True, setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # ignored by Python; a shell must not
            file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                          (os.POSIX_SPAWN_DUP2, err_w, 2)])
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    if in_w >= 0:
        os.set_blocking(in_w, False)
    process.stdin_fd = in_w
    process.streams = {out_r: "stdout", err_r: "stderr"}


def _pipe(opened: List[int]) -> Tuple[int, int]:
    read_end, write_end = os.pipe()  # close-on-exec
    opened += [read_end, write_end]
    return read_end, write_end


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass  # nobody left in it


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
