"""How the SDK reaches a vmpool service: HTTP over its unix socket (wire format:
`vmpool._service_http`), and which service that is.

Which service (`service`):

1. ``$VMPOOL_SERVICE`` if set: that socket, and nothing else (if it does not answer, the error
   names it);
2. else the default socket (`vmpool._service_paths.default_socket`) if a ``vmpool serve``
   answers there;
3. else an in-process service: the same server on a daemon thread of this process, on a private
   socket, started on first use and shared by every `Sandbox` of the process. Its sandboxes die
   with the process; ``vmpool serve`` is how sandboxes outlive a process or are shared between
   processes.
"""

from __future__ import annotations

import atexit
import errno
import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

from ._errors import (
    FileNotFoundException, InvalidArgumentException, NotEnoughSpaceException, NotFoundException,
    SandboxException, SandboxNotFoundException, TimeoutException,
)
from ._service_paths import SERVICE_ENV, default_socket, explicit_socket, inprocess_socket

__all__ = ["EventStream", "ServiceClient", "raise_error", "service"]

REQUEST_TIMEOUT_S = 120.0  # a unary call; creating, connecting and pausing may take longer
PROBE_TIMEOUT_S = 5.0
_EXCEPTIONS: dict[str, type[SandboxException]] = {
    "invalid_argument": InvalidArgumentException, "sandbox_not_found": SandboxNotFoundException,
    "not_found": NotFoundException, "timeout": TimeoutException,
    "not_enough_space": NotEnoughSpaceException,
}


def raise_error(error: Any, status: int | None = None) -> NoReturn:
    """Raise the SDK exception for a service error body ``{"type", "message", "errno"?}``."""
    if not isinstance(error, dict):
        raise SandboxException("malformed error from the vmpool service (status %s): %.300r" % (status, error))
    kind, message = str(error.get("type")), str(error.get("message", ""))
    if kind == "file_not_found":
        raise FileNotFoundException(errno.ENOENT, message)
    if kind == "os_error" and isinstance(error.get("errno"), int):
        raise OSError(error["errno"], message)
    raise _EXCEPTIONS.get(kind, SandboxException)(message)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class EventStream:
    """The events of a streamed answer, in order; iterating raises the SDK exception of an error
    event, and SandboxException if the stream is cut before its last event."""

    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 what: str) -> None:
        self._connection = connection
        self._response = response
        self._what = what
        self.finished = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.finished:
            raise StopIteration
        try:
            line = self._response.readline()
        except OSError as exc:
            self.close()
            raise SandboxException("lost the vmpool service while reading %s: %s" % (self._what, exc)) from None
        if not line:
            self.close()
            raise SandboxException("the vmpool service ended %s before its end (did the service stop?)"
                                   % self._what)
        event = json.loads(line)
        if event.get("type") == "stream_error":
            self.close()
            raise_error(event.get("error"))
        if event.get("type") == "end":
            self.finished = True
        return dict(event)

    def close(self) -> None:
        """Stop reading (the service sees the client go away). Idempotent."""
        self.finished = True
        self._connection.close()


class ServiceClient:
    """Calls to the service on the unix socket `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _open(self, method: str, route: str, body: Any, query: dict[str, Any] | None,
              timeout: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = _UnixConnection(self.path, timeout)
        url = "/v1" + route + ("?" + urlencode({k: v for k, v in query.items() if v is not None})
                               if query else "")
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            connection.request(method, url, body=payload, headers=headers)
            return connection, connection.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            connection.close()
            hint = ("start it with `vmpool serve`, or unset %s to use an in-process service" % SERVICE_ENV
                    if explicit_socket() is not None else "start it with `vmpool serve`")
            raise SandboxException("the vmpool service at %s does not answer (%s); %s"
                                   % (self.path, exc.strerror or exc, hint)) from None
        except TimeoutError:
            connection.close()
            raise TimeoutException("the vmpool service at %s did not answer %s %s in %s s"
                                   % (self.path, method, route, timeout)) from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise SandboxException("lost the vmpool service at %s during %s %s: %s"
                                   % (self.path, method, route, exc)) from None

    def _check(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if 200 <= response.status < 300:
            return
        raw = response.read()
        connection.close()
        try:
            error = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            raise SandboxException("the vmpool service at %s answered %d %s: %.300r"
                                   % (self.path, response.status, response.reason, raw)) from None
        raise_error(error, response.status)

    def call(self, method: str, route: str, body: Any = None, query: dict[str, Any] | None = None,
             timeout: float | None = REQUEST_TIMEOUT_S) -> Any:
        """One request and its JSON answer; the SDK exception if it failed."""
        connection, response = self._open(method, route, body, query, timeout)
        self._check(connection, response)
        try:
            return json.loads(response.read())
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise SandboxException("unreadable answer from the vmpool service to %s %s: %s"
                                   % (method, route, exc)) from None
        finally:
            connection.close()

    def stream(self, route: str, body: Any, what: str) -> EventStream:
        """A POST whose answer is a stream of events (it is read as it comes)."""
        connection, response = self._open("POST", route, body, None, None)
        self._check(connection, response)
        return EventStream(connection, response, what)

    def health(self, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("GET", "/health", timeout=timeout)
        if answer.get("service") != "vmpool" or answer.get("api_version") != 1:
            raise SandboxException(
                "the service at %s is not a vmpool service speaking API v1 (it said %.200r); restart "
                "`vmpool serve` from this vmpool install" % (self.path, answer))
        return answer

    def answers(self) -> bool:
        """Whether a vmpool service listens on the socket."""
        if not os.path.exists(self.path):
            return False
        try:
            self.health()
        except SandboxException:
            return False
        return True


def sandbox_route(sandbox_id: str, tail: str = "") -> str:
    return "/sandboxes/%s%s" % (quote(sandbox_id, safe=""), tail)


class InProcessService:
    """A service on a daemon thread of this process (see module docstring)."""

    def __init__(self) -> None:
        from ._service import SandboxManager
        from ._service_http import ServiceServer, serve_in_thread

        self.pid = os.getpid()
        self.manager = SandboxManager()
        try:
            self.server = ServiceServer(inprocess_socket(), self.manager)
        except BaseException:
            self.manager.close()
            raise
        serve_in_thread(self.server)
        self.client = ServiceClient(self.server.path)
        atexit.register(self.close)

    def close(self) -> None:
        """Stop serving and kill the sandboxes. Idempotent."""
        if os.getpid() != self.pid:
            return
        self.server.shutdown()
        self.server.server_close()
        self.manager.close()


_inprocess: InProcessService | None = None
_inprocess_lock = threading.Lock()
_checked: set[Path] = set()


def _in_process() -> ServiceClient:
    global _inprocess
    with _inprocess_lock:
        if _inprocess is None or _inprocess.pid != os.getpid():  # a fork does not inherit the thread
            _inprocess = InProcessService()
        return _inprocess.client


def service() -> ServiceClient:
    """The service this process's SDK calls use now (see module docstring)."""
    explicit = explicit_socket()
    if explicit is not None:
        client = ServiceClient(explicit)
        if explicit not in _checked:
            client.health()
            _checked.add(explicit)
        return client
    with _inprocess_lock:
        if _inprocess is not None and _inprocess.pid == os.getpid():
            return _inprocess.client
    default = ServiceClient(default_socket())
    return default if default.answers() else _in_process()
