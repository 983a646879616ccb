"""The vmpool service over HTTP on a unix socket: a thin layer that turns requests into
`SandboxManager` calls (stdlib ``http.server``, one thread per request).

Wire format, version 1 (every path starts with ``/v1``; `API_VERSION` is also in /v1/health):

- Requests carry JSON bodies (unknown fields are refused), answers are JSON. One request per
  connection (HTTP/1.0): a stream ends when its connection closes.
- Calls that stream (``POST .../commands``, ``POST .../commands/{pid}/connect``,
  ``POST .../code``) answer ``application/x-ndjson``: one JSON object per line, written as it
  happens, the last one ``{"type": "end", ...}`` or ``{"type": "stream_error", "error": {...}}``
  (its ``error`` shaped like a failure's, below). A stream cut before its last line means the
  service died. A client that closes a stream early is noticed within `DISCONNECT_POLL_S`.
- Failures answer a 4xx/5xx status with ``{"error": {"type", "message", "errno"?}}``; ``type``
  is one of `ERROR_TYPES`, which `vmpool._service_client` turns back into the SDK's exceptions.

Routes (``{id}``: a sandbox id; a file op is one of `vmpool._service_files.FILE_OPS`; request
models and handlers: `vmpool._service_routes`):

    GET    /v1/health                               {"service": "vmpool", "api_version", "pid"}
    POST   /v1/sandboxes                            CreateRequest -> SandboxInfo
    GET    /v1/sandboxes?state=&metadata=&template=&started_after=&limit=&next_token=
                                                    {"sandboxes": [SandboxInfo], "next_token"}
    GET    /v1/sandboxes/{id}                       SandboxInfo
    DELETE /v1/sandboxes/{id}                       {"killed": bool}
    POST   /v1/sandboxes/{id}/timeout               {"timeout"} -> {}
    POST   /v1/sandboxes/{id}/connect               {"timeout"?} -> SandboxInfo
    POST   /v1/sandboxes/{id}/pause                 {} -> {"paused": bool}
    POST   /v1/sandboxes/{id}/files                 {"op", ...op arguments} -> op result
    GET    /v1/sandboxes/{id}/commands              {"processes": [ProcessInfo]}
    POST   /v1/sandboxes/{id}/commands              CommandRequest -> stream: start, stdout/stderr, end
    POST   /v1/sandboxes/{id}/commands/{pid}/connect   {} -> stream, like a start
    POST   /v1/sandboxes/{id}/commands/{pid}/kill      {} -> {"killed": bool}
    POST   /v1/sandboxes/{id}/commands/{pid}/stdin     {"data_b64"} -> {}
    POST   /v1/sandboxes/{id}/commands/{pid}/close_stdin  {} -> {}
    POST   /v1/sandboxes/{id}/code                  CodeRequest -> stream of kernel lines, then end
    GET    /v1/sandboxes/{id}/contexts              {"contexts": [...]}
    POST   /v1/sandboxes/{id}/contexts              {"language"?, "cwd"?} -> context
    DELETE /v1/sandboxes/{id}/contexts/{cid}        {}
    POST   /v1/sandboxes/{id}/contexts/{cid}/restart   {}
"""

from __future__ import annotations

import errno
import http.server
import json
import logging
import os
import select
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ValidationError

from ._errors import (
    InvalidArgumentException, NotFoundException, SandboxException, SandboxNotFoundException,
    TimeoutException, VmpoolError,
)
from ._service import SandboxManager
from ._service_routes import API_VERSION, ROUTES
from ._service_stream import Stream

__all__ = ["API_VERSION", "ERROR_TYPES", "ServiceServer"]

log = logging.getLogger("vmpool.service")

ERROR_TYPES = ("invalid_argument", "sandbox_not_found", "file_not_found", "not_found", "timeout",
               "not_enough_space", "os_error", "sandbox_error", "internal")
DISCONNECT_POLL_S = 0.5  # how often an idle stream checks whether its client went away


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and JSON body that report `exc` to a client."""
    kind, status = "internal", 500
    detail: dict[str, Any] = {}
    if isinstance(exc, SandboxNotFoundException):
        kind, status = "sandbox_not_found", 404
    elif isinstance(exc, FileNotFoundError):
        kind, status = "file_not_found", 404
    elif isinstance(exc, NotFoundException):
        kind, status = "not_found", 404
    elif isinstance(exc, (InvalidArgumentException, ValidationError, ValueError)):
        kind, status = "invalid_argument", 400
    elif isinstance(exc, TimeoutException):
        kind, status = "timeout", 504
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        kind, status = "not_enough_space", 507
    elif isinstance(exc, OSError) and exc.errno is not None:
        kind, status = "os_error", 400
        detail = {"errno": exc.errno}
    elif isinstance(exc, VmpoolError):
        kind, status = "sandbox_error", 500
    if isinstance(exc, ValidationError):
        message = "; ".join("%s: %s" % (".".join(map(str, e["loc"])) or "body", e["msg"]) for e in exc.errors())
    elif isinstance(exc, OSError) and exc.strerror:
        message = exc.strerror + (": %r" % exc.filename if exc.filename else "")
    else:
        message = str(exc) or type(exc).__name__
    return status, {"error": {"type": kind, "message": message, **detail}}


class RequestHandler(http.server.BaseHTTPRequestHandler):
    server: ServiceServer
    protocol_version = "HTTP/1.0"  # one request per connection: a stream ends when it closes
    server_version = "vmpool-service"

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s", format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        for route_method, pattern, handler in ROUTES:
            match = pattern.fullmatch(url.path)
            if match and route_method == method:
                try:
                    query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                    handler(self, *match.groups(), query=query)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away mid-answer
                except BaseException as exc:  # every failure is an answer, never a dead thread
                    self._fail(exc)
                return
        self._fail(NotFoundException("no route %s %s (this service speaks API v%d)" % (method, url.path, API_VERSION)))

    def _fail(self, exc: BaseException) -> None:
        status, body = error_body(exc)
        if status == 500 and body["error"]["type"] == "internal":
            log.error("internal error answering %s %s", self.command, self.path, exc_info=exc)
        try:
            self._json(body, status)
        except OSError:
            pass

    def body(self, model: type[BaseModel]) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise InvalidArgumentException("the request body is not JSON: %s" % exc) from None
        return model.model_validate(data)

    def _json(self, body: Any, status: int = 200) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def reply(self, body: Any, status: int = 200) -> None:
        self._json(body.model_dump(mode="json") if isinstance(body, BaseModel) else body, status)

    def stream(self, stream: Stream) -> None:
        """Write `stream`'s events as NDJSON until its last one; if the client goes away first,
        `stream.detach()` says so (a foreground command is then killed, a code run interrupted)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        try:
            for event in stream.events(DISCONNECT_POLL_S):
                if event is None:
                    if self._client_gone():
                        raise ConnectionResetError
                    continue
                self.wfile.write(json.dumps(event).encode() + b"\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            stream.detach()
            raise

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return bool(self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"")
        except BlockingIOError:
            return False
        except OSError:
            return True


class ServiceServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A `SandboxManager` served on the unix socket `path` (see module docstring). `serve_forever`
    serves it; `shutdown` stops serving, `server_close` removes the socket. The manager is the
    caller's to close."""

    address_family = socket.AF_UNIX
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, path: Path, manager: SandboxManager) -> None:
        self.manager = manager
        self.path = path
        _clear_stale(path)
        super().__init__(str(path), RequestHandler)  # type: ignore[arg-type]
        os.chmod(path, 0o600)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0

    def server_close(self) -> None:
        super().server_close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    def server_activate(self) -> None:
        super().server_activate()
        self._inode = os.stat(self.path).st_ino


def _clear_stale(path: Path) -> None:
    """Remove a socket left by a service that died; refuse to take over one that answers."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SandboxException("a vmpool service is already listening on %s; stop it first, or pass "
                           "another socket path" % path)


def serve_in_thread(server: ServiceServer) -> threading.Thread:
    """Serve on a daemon thread (the in-process service)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="vmpool-service", daemon=True)
    thread.start()
    return thread

