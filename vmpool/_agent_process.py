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

- started with fork+exec only (`subprocess.Popen`, no ``preexec_fn``): pumps are not the main
  thread, and a child forked from a threaded process must do nothing but exec (see the fork
  notes in ``_agent.py``). What a child would have set up before its exec, a ``/bin/sh``
  prologue does instead: core dumps off, OOM score 1000 (the kernel's first victim when a VM
  runs out of memory, so that the agent survives); then it execs the command's shell, which
  keeps its pid;
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
import subprocess
import threading
import time
import traceback
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

if __package__:  # imported as vmpool._agent_process (tests, type checking)
    from . import _agent_channel as channel
    from . import _protocol as proto
else:  # a top-level module inside the sandbox, imported by _agent.py next to its siblings
    import _agent_channel as channel  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]

BASH = "/bin/bash"
PROLOGUE = 'ulimit -c 0 2>/dev/null; echo 1000 >/proc/self/oom_score_adj 2>/dev/null; exec "$@"'
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
            collected = send(proto.ok_reply(subscriber.request_id, self.result))
        if collected:
            self.manager.forget(self)

    # -- the pump ------------------------------------------------------------------------------

    def run(self, first: Subscriber) -> None:
        """The pump thread: start, serve, report the exit."""
        try:
            popen = self.manager.spawn(self)  # under the table's locks
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
            timed_out = self._serve(popen)
        except Exception:
            traceback.print_exc()  # to the agent's stderr; the process is killed below
        finally:
            self._end(popen)
        result = {"pid": self.pid, "exit_code": popen.returncode, "timed_out": timed_out,
                  "duration_s": round(time.monotonic() - self.started, 6)}
        with self.send_lock:
            self.result = result
            collected = self._publish(lambda request_id: proto.ok_reply(request_id, result))
            self.subscribers = []
        if collected:
            self.manager.forget(self)
        else:
            self.manager.ended(self)

    def _serve(self, popen: "subprocess.Popen[bytes]") -> bool:
        """Pump output and input until the leader exits; whether its deadline killed it."""
        assert popen.stdout is not None and popen.stderr is not None
        streams = self.streams
        streams.update({popen.stdout.fileno(): "stdout", popen.stderr.fileno(): "stderr"})
        poller = select.poll()
        for fd in list(streams) + [self.wake_r]:
            poller.register(fd, select.POLLIN)
        pidfd = _pidfd_open(self.pid)
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        stdin_fd = popen.stdin.fileno() if popen.stdin is not None else -1
        if stdin_fd >= 0:
            os.set_blocking(stdin_fd, False)
        deadline = self.started + self.timeout_s if self.timeout_s > 0 else math.inf
        timed_out = False
        try:
            while True:
                self._watch_stdin(poller, popen)
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
                    elif fd in streams:
                        self._read(fd, streams, poller)
                    elif fd == self.wake_r:
                        _drain(self.wake_r)
                    elif fd == stdin_fd:
                        self._feed_stdin(popen, events)
                if exited or (pidfd < 0 and _has_exited(self.pid)):
                    return timed_out
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _read(self, fd: int, streams: Dict[int, str], poller: Any) -> None:
        data = os.read(fd, proto.CHUNK_BYTES)
        if data:
            self.output(streams[fd], data)
        else:
            poller.unregister(fd)
            del streams[fd]

    def _watch_stdin(self, poller: Any, popen: "subprocess.Popen[bytes]") -> None:
        """Poll stdin for writing while input is queued; close it once asked and drained."""
        if popen.stdin is None or popen.stdin.closed:
            return
        fd = popen.stdin.fileno()
        with self.state_lock:
            pending, closing = bool(self.stdin_queue), self.stdin_closing
            if closing and not pending:
                self.stdin_open = False
        if pending:
            poller.register(fd, select.POLLOUT)  # registering again only updates the mask
            return
        try:
            poller.unregister(fd)  # an idle pipe would poll as POLLERR once its reader is gone
        except KeyError:
            pass
        if closing:
            popen.stdin.close()

    def _feed_stdin(self, popen: "subprocess.Popen[bytes]", events: int) -> None:
        assert popen.stdin is not None
        with self.state_lock:
            while self.stdin_queue:
                chunk = self.stdin_queue[0]
                try:
                    if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                        raise BrokenPipeError()
                    written = os.write(popen.stdin.fileno(), chunk)
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

    def _end(self, popen: "subprocess.Popen[bytes]") -> None:
        """Kill what the process left in its group, reap it, read its last output, close."""
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
        popen.wait()
        with self.state_lock:
            self.reaped = True
        streams = self.streams
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        end = time.monotonic() + EXIT_GRACE_S
        while streams and time.monotonic() < end:
            for fd, _events in poller.poll(max(1, math.ceil((end - time.monotonic()) * 1000))):
                self._read(fd, streams, poller)
        for stream in (popen.stdin, popen.stdout, popen.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._close_fds()

    def _close_fds(self) -> None:
        with self.state_lock:
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)
            self.wake_r = self.wake_w = -1


class Registry:
    """What a process needs of the table that holds it (`_agent_session.Manager`)."""

    outbox: channel.Outbox

    def spawn(self, process: Process) -> "subprocess.Popen[bytes]":
        raise NotImplementedError

    def forget(self, process: Process) -> None:
        raise NotImplementedError

    def ended(self, process: Process) -> None:
        raise NotImplementedError


def popen(process: Process) -> "subprocess.Popen[bytes]":
    """Fork+exec `process` behind the prologue (see the module docstring)."""
    shell = [BASH, "-l", "-c", process.cmd] if os.access(BASH, os.X_OK) else ["/bin/sh", "-c", process.cmd]
    return subprocess.Popen(
        ["/bin/sh", "-c", PROLOGUE, "vmpool-process"] + shell, bufsize=0,
        stdin=subprocess.PIPE if process.stdin_open else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=process.cwd, env=process.env,
        start_new_session=True, close_fds=True)


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


def _pidfd_open(pid: int) -> int:
    opener = getattr(os, "pidfd_open", None)  # Python >= 3.9 on Linux >= 5.3
    if opener is None:
        return -1
    try:
        return int(opener(pid))
    except OSError:
        return -1


def _has_exited(pid: int) -> bool:
    """Without pidfds; WNOWAIT leaves the zombie (and its group id) for the pump to reap."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
