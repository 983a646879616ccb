"""Host side of the agent protocol: the handshake, then requests multiplexed over a driver's
`SandboxProcess`, their replies and events matched by id. Maps every failure onto the vmpool
exception tree."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _protocol as proto
from ._driver import SandboxProcess
from ._errors import ProtocolError, SandboxError

__all__ = ["AgentClient", "Call"]

log = logging.getLogger("vmpool")

READ_WAIT_S = 3600.0  # one receive() of the reader thread; it loops, so this is no deadline
MAX_WAIT_S = 3600.0  # one wait for a reply; longer waits loop (lock timeouts have a ceiling)
Event = dict[str, Any]
EventCallback = Callable[[Event], None]


class Call:
    """One request in flight: its reply, once it came, or the failure that ended it."""

    def __init__(self, client: AgentClient, request_id: int, op: str,
                 on_event: EventCallback | None, on_done: Callable[[], None] | None) -> None:
        self.client, self.request_id, self.op = client, request_id, op
        self.on_event, self.on_done = on_event, on_done
        self._pending = threading.Lock()  # held until the call is finished: the cheapest wake-up
        self._pending.acquire()
        self._finished = False
        self._reply: dict[str, Any] | None = None
        self._failure: BaseException | None = None

    def finish(self, reply: dict[str, Any] | None, failure: BaseException | None) -> None:
        """Called once, by the reader thread (or by a failure of the client)."""
        self._reply, self._failure = reply, failure
        if self.on_done is not None:  # first: a waiter woken below sees what it did
            try:
                self.on_done()
            except Exception:
                log.exception("vmpool: a completion callback of %s failed", self.op)
        self._finished = True
        self._pending.release()

    def done(self) -> bool:
        return self._finished

    def wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds (None: for ever) for the reply; whether it came."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while not self._finished:  # in slices: a huge timeout would overflow the lock wait
            remaining = MAX_WAIT_S if deadline is None else min(deadline - time.monotonic(), MAX_WAIT_S)
            if remaining <= 0:
                return False
            if self._pending.acquire(timeout=remaining):
                self._pending.release()  # for the other waiters, if any
        return True

    def result(self, timeout: float | None) -> dict[str, Any]:
        """The result of the reply; raises what the reply says (see `AgentClient.call`).
        SandboxError if no reply comes within `timeout`: the agent is hung."""
        try:
            if not self.wait(timeout):
                raise SandboxError("%s: the agent did not send the reply to %s in time; %s"
                                   % (self.client.label, self.op, self.client.details()))
        except BaseException:
            self.abandon()  # e.g. Ctrl-C: a late reply is dropped by its id, nothing desynchronises
            raise
        if self._failure is not None:
            raise self._failure
        assert self._reply is not None
        return self.client.result_of(self._reply, self.op)

    def abandon(self) -> None:
        """Nobody waits for this reply any more: it and its events will be dropped."""
        self.client.forget(self.request_id)


class AgentClient:
    """Talks to one agent. Thread-safe: any number of threads may have calls in flight.

    One reader thread per client (started by `handshake`) dispatches replies and events by id.
    `call` raises SandboxError when the agent dies, hangs or reports a broken sandbox,
    ProtocolError when the conversation itself is wrong, and the built-in OSError subclass for
    failed file and process operations (errno from the agent). Agent death or a protocol
    violation fails every pending call. It never kills anything itself.

    Event callbacks run on the reader thread: they must not block (every reply and event of the
    sandbox waits meanwhile; a callback that blocks long makes calls time out, and a sandbox
    whose calls time out is killed), and an exception in one is logged and ignored.
    """

    def __init__(self, process: SandboxProcess, label: str) -> None:
        self._process = process
        self.label = label
        self._lines = proto.LineBuffer()
        self._next_id = 1
        self._lock = threading.Lock()  # ids, pending calls, failure
        self._send_lock = threading.Lock()  # whole lines, one at a time
        self._pending: dict[int, Call] = {}
        self._failure: SandboxError | None = None
        self._closed = False
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def handshake(self, timeout: float) -> proto.Hello:
        """Wait for the agent's hello, then start the reader thread; ProtocolError if the agent
        speaks another protocol version. Whatever precedes the hello is skipped: the rest of a
        line the agent was writing to a previous host (device channels, see `_protocol`)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._read_line(deadline, "its hello")
            try:
                message = proto.decode(line)
            except proto.MessageError:
                continue
            if message.get("op") == "hello" and message.get("id") == proto.HELLO_ID:
                break
        try:
            hello = proto.check_hello(message)
        except proto.MessageError as exc:
            raise ProtocolError("%s: bad hello from the agent: %s" % (self.label, exc)) from None
        if hello["protocol"] != proto.PROTOCOL_VERSION:
            raise ProtocolError(
                "%s: the agent speaks vmpool protocol v%d (agent %s) but this host speaks v%d: the "
                "agent files in the sandbox come from a different vmpool version. Reinstall vmpool "
                "so host and agent match (or rebuild the VM image from this vmpool)."
                % (self.label, hello["protocol"], message.get("agent_version", "?"), proto.PROTOCOL_VERSION))
        self._reader = threading.Thread(target=self._read_loop, name="vmpool-client", daemon=True)
        self._reader.start()
        return hello

    def close(self) -> None:
        """Stop reading (before the channel is closed) and fail every pending call. Idempotent."""
        self._closed = True
        self._fail(SandboxError("%s: the sandbox was killed" % self.label))

    @property
    def broken(self) -> bool:
        """Whether the client has failed (agent gone, protocol violated, closed)."""
        return self._failure is not None

    # -- calls -----------------------------------------------------------------------------

    def call(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Send one request and return the result of its reply (see `_protocol` for ops).
        SandboxError if it does not come within `timeout` seconds (a hung agent)."""
        deadline = time.monotonic() + timeout
        pending = self.submit(op, timeout, **fields)
        return pending.result(deadline - time.monotonic())

    def submit(self, op: str, timeout: float, *, on_event: EventCallback | None = None,
               on_done: Callable[[], None] | None = None, **fields: Any) -> Call:
        """Send one request and return at once with its `Call`. `on_event(message)` gets its
        events, `on_done()` is called when it is answered or failed; both on the reader thread.
        `timeout` bounds the sending. ValueError if the request is too large; SandboxError if
        it cannot be sent (a request cut short by anything, even Ctrl-C, breaks the client:
        the agent would read the rest as garbage)."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            request_id = self._next_id
            self._next_id += 1
            pending = Call(self, request_id, op, on_event, on_done)
            self._pending[request_id] = pending
        try:
            line = proto.encode(proto.request(request_id, op, **fields))
        except proto.MessageError as exc:
            self.forget(request_id)
            raise ValueError("request too large: %s" % exc) from None
        try:
            with self._send_lock:
                if self._failure is not None:
                    raise self._failure
                self._process.send(line, timeout)
        except SandboxError:
            self.forget(request_id)
            raise
        except (OSError, ValueError) as exc:  # TimeoutError; ValueError: pipe already closed
            failure = self._gone("could not send %s" % op, exc)
            self._fail(failure)
            raise failure from None
        except BaseException as exc:  # e.g. Ctrl-C: maybe half a line was sent
            self._fail(self._gone("sending %s was cut short" % op, exc))
            raise
        return pending

    def forget(self, request_id: int) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def result_of(self, reply: dict[str, Any], op: str) -> dict[str, Any]:
        """The result of a reply, or the exception its error maps to."""
        if reply.get("ok") is True and isinstance(reply.get("result"), dict):
            result: dict[str, Any] = reply["result"]
            return result
        error = reply.get("error")
        if reply.get("ok") is not False or not isinstance(error, dict):
            raise ProtocolError("%s: malformed reply to %s: %.300r" % (self.label, op, reply))
        kind, message = error.get("kind"), str(error.get("message", ""))
        if kind == "os_error" and isinstance(error.get("errno"), int):
            filename = error.get("filename")
            raise OSError(error["errno"], message, *([filename] if isinstance(filename, str) else []))
        if kind == "bad_request":
            raise ProtocolError("%s: the agent rejected %s: %s" % (self.label, op, message))
        raise SandboxError("%s: %s failed in the sandbox (%s): %s" % (self.label, op, kind, message))

    # -- the reader thread -----------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while not self._closed:
                try:
                    data = self._process.receive(READ_WAIT_S)
                except TimeoutError:
                    continue
                except (OSError, ValueError) as exc:
                    raise self._gone("lost the agent", exc) from None
                if self._closed:
                    return
                if not data:
                    raise self._gone("the agent exited", None)
                self._lines.feed(data)
                while True:
                    try:
                        line = self._lines.next_line()
                        if line is None:
                            break
                        message = proto.decode(line)
                    except proto.MessageError as exc:
                        raise ProtocolError("%s: unreadable message from the agent: %s" % (self.label, exc)) from None
                    self._dispatch(message)
        except SandboxError as exc:
            self._fail(exc)
        except BaseException as exc:  # a bug here must not leave callers waiting for ever
            self._fail(SandboxError("%s: the reader of the agent's messages failed: %r" % (self.label, exc)))
            raise

    def _dispatch(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id <= 0:
            raise ProtocolError("%s: message from the agent without a request id: %.300r" % (self.label, message))
        if "event" in message:
            with self._lock:
                pending = self._pending.get(request_id)
            if pending is not None and pending.on_event is not None:  # else: abandoned
                try:
                    pending.on_event(message)
                except ProtocolError:
                    raise  # a malformed event: the conversation is broken
                except Exception:
                    log.exception("vmpool: an event callback of %s failed", pending.op)
            return
        if "ok" not in message:
            raise ProtocolError("%s: neither a reply nor an event from the agent: %.300r" % (self.label, message))
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.finish(message, None)

    def _fail(self, failure: SandboxError) -> None:
        """The client is finished: fail every pending call and every later one."""
        with self._lock:
            if self._failure is None:
                self._failure = failure
            pending, self._pending = list(self._pending.values()), {}
        for call in pending:
            call.finish(None, self._failure)

    # -- reading before the reader thread runs ---------------------------------------------

    def _read_line(self, deadline: float, what: str) -> bytes:
        while True:
            try:
                line = self._lines.next_line()
            except proto.MessageError as exc:
                raise ProtocolError("%s: unreadable message from the agent: %s" % (self.label, exc)) from None
            if line is not None:
                return line
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError("no answer in time")
                data = self._process.receive(remaining)
            except TimeoutError:
                raise SandboxError("%s: the agent did not send %s in time; %s"
                                   % (self.label, what, self.details())) from None
            except (OSError, ValueError) as exc:
                raise self._gone("lost the agent while waiting for %s" % what, exc) from None
            if not data:
                raise self._gone("the agent exited while %s was awaited" % what, None)
            self._lines.feed(data)

    def _gone(self, what: str, exc: BaseException | None) -> SandboxError:
        cause = " (%s)" % exc if exc is not None else ""
        return SandboxError("%s: %s%s; %s" % (self.label, what, cause, self.details()))

    def details(self) -> str:
        text = self._process.diagnostics()
        return "sandbox output: %s" % text[-1500:] if text else "no diagnostics from the sandbox"
