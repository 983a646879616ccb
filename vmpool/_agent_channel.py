"""The agent's channel to its host: the byte stream (stdio pipes, or a device such as a
virtio-serial port) and `Outbox`, the one writer that every thread of the agent sends through.

Connections: a device outlives host connections (it reads EOF while no host is connected), so
the outbox counts them (`Outbox.generation`). Whatever is sent on behalf of a connection carries
its generation; once the host has gone (`Outbox.disconnected`), such messages are dropped, and a
line that was being written when it went away is cut short, never finished on the next host's
connection (which the host skips, up to its hello: see ``_protocol``).

Part of the guest side (see ``_agent.py``): stdlib only, imported as ``vmpool._agent_channel`` on
the host and as the top-level ``_agent_channel`` inside the sandbox.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any, Callable, Dict, Optional

if __package__:  # imported as vmpool._agent_channel (tests, type checking)
    from . import _protocol as proto
else:  # a top-level module inside the sandbox, imported by _agent.py next to its siblings
    import _protocol as proto  # type: ignore[no-redef]

WRITE_POLL_MS = 200  # a blocked device write re-checks this often whether its host is gone


class HostGone(Exception):
    """The host a write was meant for has disconnected (device channels only)."""


class Channel:
    """The byte stream to the host. For stdio, the original fds 0/1 are moved aside and fds 0/1
    pointed at /dev/null and stderr, so a stray print can never corrupt the protocol. A device
    is non-blocking, so that a write can notice (POLLHUP) that its host went away."""

    def __init__(self, spec: str) -> None:
        if spec == "stdio":
            self.rfd, self.wfd = os.dup(0), os.dup(1)  # dup() fds are close-on-exec
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            os.dup2(2, 1)
        else:
            self.rfd = self.wfd = os.open(spec, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        self.device = spec != "stdio"

    def read(self) -> bytes:
        """The next bytes from the host; b"" at EOF (stdio: the host is gone; device: no host
        is connected now)."""
        if not self.device:
            return os.read(self.rfd, 1 << 20)
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        while True:
            poller.poll()  # POLLIN, or POLLHUP while no host is connected: read() is EOF then
            try:
                return os.read(self.rfd, 1 << 20)
            except BlockingIOError:
                continue

    def wait_for_host(self) -> None:
        """Block until a host is connected to the device again. A virtio-serial port reads as
        EOF and polls as POLLHUP while no host is connected (before the host connects, after it
        disconnects, and after a VM is restored from a snapshot); it wakes nobody on connect, so
        this polls."""
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        while any(events & select.POLLHUP for _, events in poller.poll(0)):
            time.sleep(proto.RECONNECT_POLL_S)

    def write(self, data: bytes, current: Callable[[], bool]) -> None:
        """Write all of `data`. On a device, HostGone as soon as the port hangs up or
        `current()` turns false (the line is then cut short); on stdio, OSError once the host
        has gone (EPIPE)."""
        view = memoryview(data)
        if not self.device:
            while view:
                view = view[os.write(self.wfd, view):]
            return
        poller = select.poll()
        poller.register(self.wfd, select.POLLOUT)
        while view:
            if not current():
                raise HostGone()
            for _, events in poller.poll(WRITE_POLL_MS):
                if events & select.POLLHUP:
                    raise HostGone()
                if events & select.POLLOUT:
                    try:
                        view = view[os.write(self.wfd, view):]
                    except BlockingIOError:
                        pass


class Outbox:
    """The one way to the host: whole lines, one at a time, in the order the senders asked
    (first come, first served, so a process flooding output cannot starve a reply: every other
    sender gets its turn after at most one line of it). A sender blocks while the host does not
    read; that is the backpressure that keeps the agent's memory bounded.

    No lock is held while a line is written, and nothing a forked child of the main thread
    needs is ever held here: children never write to the channel (see ``_agent.py``).
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._turns = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self.generation = 0  # connections so far; bumped by `disconnected`
        self._broken = False

    def send(self, message: Dict[str, Any], generation: Optional[int] = None) -> bool:
        """Send one message, for the connection `generation` (None: whichever is current).
        False if it was dropped: that host has gone, or the channel is broken."""
        try:
            line = proto.encode(message)
        except proto.MessageError as exc:  # cannot happen with capped outputs; never crash
            line = proto.encode(proto.error_reply(message.get("id"), "internal", str(exc)))
        with self._turns:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._turns.wait()
        try:
            wanted = self.generation if generation is None else generation
            if self._broken or wanted != self.generation:
                return False
            self._channel.write(line, lambda: wanted == self.generation)
            return True
        except HostGone:
            return False
        except OSError:  # stdio: the host has gone (EPIPE); nothing can reach it any more
            self._broken = True
            return False
        finally:
            with self._turns:
                self._serving += 1
                self._turns.notify_all()

    def disconnected(self) -> int:
        """The host has gone: drop whatever is still due to it, including the rest of a line
        being written (device channels). Returns the new generation."""
        self.generation += 1  # one writer (the reader thread); readers see old or new, both fine
        return self.generation
