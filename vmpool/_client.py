"""Host side of the agent protocol: handshake, then one request/reply at a time over a
driver's `SandboxProcess`. Maps every failure onto the vmpool exception tree."""

from __future__ import annotations

import threading
import time
from typing import Any

from . import _protocol as proto
from ._driver import SandboxProcess
from ._errors import ProtocolError, SandboxError

__all__ = ["AgentClient"]


class AgentClient:
    """Talks to one agent. Thread-safe: concurrent calls are serialised.

    `call` raises SandboxError when the agent dies, hangs or reports a broken sandbox,
    ProtocolError when the conversation itself is wrong, and the built-in OSError subclass for
    failed file operations (errno from the agent). It never kills anything itself.
    """

    def __init__(self, process: SandboxProcess, label: str) -> None:
        self._process = process
        self._label = label
        self._lines = proto.LineBuffer()
        self._next_id = 1
        self._lock = threading.Lock()

    def handshake(self, timeout: float) -> proto.Hello:
        """Wait for the agent's hello; ProtocolError if it speaks another protocol version."""
        with self._lock:
            message = self._read_message(time.monotonic() + timeout, "its hello")
        try:
            hello = proto.check_hello(message)
        except proto.MessageError as exc:
            raise ProtocolError("%s: bad hello from the agent: %s" % (self._label, exc)) from None
        if hello["protocol"] != proto.PROTOCOL_VERSION:
            raise ProtocolError(
                "%s: the agent speaks vmpool protocol v%d (agent %s) but this host speaks v%d: the "
                "agent files in the sandbox come from a different vmpool version. Reinstall vmpool "
                "so host and agent match (or rebuild the VM image from this vmpool)."
                % (self._label, hello["protocol"], hello["agent_version"], proto.PROTOCOL_VERSION))
        return hello

    def call(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Send one request and return the result of its reply (see `_protocol` for ops)."""
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            deadline = time.monotonic() + timeout
            try:
                self._process.send(proto.encode(proto.request(request_id, op, **fields)), timeout)
            except proto.MessageError as exc:
                raise ValueError("request too large: %s" % exc) from None
            except (OSError, ValueError) as exc:  # ValueError: pipe already closed
                raise self._gone("could not send %s" % op, exc) from None
            reply = self._read_message(deadline, "the reply to %s" % op)
        return self._result(reply, request_id, op)

    def _result(self, reply: dict[str, Any], request_id: int, op: str) -> dict[str, Any]:
        if reply.get("id") != request_id:
            raise ProtocolError("%s: expected the reply to request %d (%s), got %.300r"
                                % (self._label, request_id, op, reply))
        if reply.get("ok") is True and isinstance(reply.get("result"), dict):
            result: dict[str, Any] = reply["result"]
            return result
        error = reply.get("error")
        if reply.get("ok") is not False or not isinstance(error, dict):
            raise ProtocolError("%s: malformed reply to %s: %.300r" % (self._label, op, reply))
        kind, message = error.get("kind"), str(error.get("message", ""))
        if kind == "os_error" and isinstance(error.get("errno"), int):
            filename = error.get("filename")
            raise OSError(error["errno"], message, *([filename] if isinstance(filename, str) else []))
        if kind == "bad_request":
            raise ProtocolError("%s: the agent rejected %s: %s" % (self._label, op, message))
        raise SandboxError("%s: %s failed in the sandbox (%s): %s" % (self._label, op, kind, message))

    def _read_message(self, deadline: float, what: str) -> dict[str, Any]:
        while True:
            try:
                line = self._lines.next_line()
                if line is not None:
                    return proto.decode(line)
            except proto.MessageError as exc:
                raise ProtocolError("%s: unreadable message from the agent: %s" % (self._label, exc)) from None
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError("no answer in time")
                data = self._process.receive(remaining)
            except TimeoutError:
                raise SandboxError("%s: the agent did not send %s in time; %s"
                                   % (self._label, what, self._details())) from None
            except (OSError, ValueError) as exc:
                raise self._gone("lost the agent while waiting for %s" % what, exc) from None
            if not data:
                raise self._gone("the agent exited while %s was awaited" % what, None)
            self._lines.feed(data)

    def _gone(self, what: str, exc: BaseException | None) -> SandboxError:
        cause = " (%s)" % exc if exc is not None else ""
        return SandboxError("%s: %s%s; %s" % (self._label, what, cause, self._details()))

    def _details(self) -> str:
        text = self._process.diagnostics()
        return "sandbox output: %s" % text[-1500:] if text else "no diagnostics from the sandbox"
