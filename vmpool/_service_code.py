"""Code execution of one sandbox: `CodeRunner` relays `run_code` and code contexts to the
sandbox's Jupyter kernel bridge (``_guest_kernel.py``, started in the sandbox as a background
process on first use, or with the sandbox for code templates so that the first run is warm).

The bridge speaks JSON lines on its stdin/stdout (its docstring is the spec): a request carries
an ``id``; its answer is one or more lines with that id, the last of type "end" (or an error).
A run's lines go to the client unchanged, in a `Stream`, and `vmpool._code` turns them into an
`Execution` on the client's side, firing the callbacks as they arrive. The runner adds a
terminal line: ``{"type": "end"}`` after the bridge's end, or ``{"type": "error", "error":
{"type": "timeout", ...}}`` when the run exceeded its timeout (the kernel is then interrupted,
as it is when the client goes away).
"""

from __future__ import annotations

import itertools
import json
import logging
import posixpath
import queue
import threading
from typing import Any

from ._errors import NotFoundException, SandboxException, TimeoutException
from ._sandbox import LocalSandbox
from ._service_commands import KERNEL_TAG
from ._service_stream import Stream

__all__ = ["CodeRunner"]

log = logging.getLogger("vmpool.service")

BRIDGE_SCRIPT = "_guest_kernel.py"
DEFAULT_RUN_TIMEOUT_S = 300.0  # E2B's run_code default
CALL_TIMEOUT_S = 120.0  # a context call (creating one starts a kernel)


class _Bridge:
    """The running kernel bridge: requests out on its stdin, lines back routed by id."""

    def __init__(self, local: LocalSandbox, envs: dict[str, str]) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._routes: dict[int, Stream | queue.Queue[dict[str, Any]]] = {}
        self._buffer = b""
        script = posixpath.join(local.guest_dir, BRIDGE_SCRIPT)
        self.handle = local.processes.start(
            ["python3", script], envs=envs, cwd=None, stdin=True, timeout=None, tag=KERNEL_TAG,
            on_stdout=self._feed, on_stderr=self._log)

    def _log(self, data: bytes | str) -> None:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        log.debug("code kernel: %s", text.rstrip())

    def _feed(self, data: bytes | str) -> None:
        self._buffer += data.encode() if isinstance(data, str) else data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("code kernel: unreadable line %.200r", line)
                continue
            with self._lock:
                route = self._routes.get(message.get("id")) if isinstance(message, dict) else None
            if isinstance(route, Stream):
                route.put(message)
                if message.get("type") in ("end", "error_end"):
                    self._drop(message["id"])
                    route.put({"type": "end"}, last=True)
            elif route is not None:
                route.put(message)

    def _drop(self, request_id: int) -> None:
        with self._lock:
            self._routes.pop(request_id, None)

    def send(self, op: str, route: Stream | queue.Queue[dict[str, Any]], **fields: Any) -> int:
        request_id = next(self._ids)
        with self._lock:
            self._routes[request_id] = route
        line = json.dumps({"id": request_id, "op": op, **fields}) + "\n"
        self.handle.send_stdin(line.encode())
        return request_id

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request whose answer is a single line (context calls)."""
        answers: queue.Queue[dict[str, Any]] = queue.Queue()
        request_id = self.send(op, answers, **fields)
        try:
            answer = answers.get(timeout=CALL_TIMEOUT_S)
        except queue.Empty:
            raise TimeoutException("the code kernel did not answer %s in %g s" % (op, CALL_TIMEOUT_S)) from None
        finally:
            self._drop(request_id)
        if answer.get("type") == "error":
            message = str(answer.get("message") or answer.get("value") or answer)
            if "not found" in message.lower() or answer.get("name") == "NotFound":
                raise NotFoundException(message)
            raise SandboxException("the code kernel failed %s: %s" % (op, message))
        return answer

    def alive(self) -> bool:
        return self.handle.exit_code is None

    def close(self) -> None:
        with self._lock:
            routes, self._routes = list(self._routes.values()), {}
        for route in routes:
            if isinstance(route, Stream):
                route.put({"type": "error", "error": {"type": "sandbox_error",
                                                      "message": "the sandbox was killed or paused"}}, last=True)
        self.handle.kill()


class CodeRunner:
    """`run_code` and code contexts of one sandbox (see module docstring)."""

    def __init__(self, local: LocalSandbox, envs: dict[str, str]) -> None:
        self._local = local
        self._envs = envs
        self._bridge: _Bridge | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the kernel bridge now (it warms up while the caller goes on)."""
        self._get()

    def _get(self) -> _Bridge:
        with self._lock:
            if self._bridge is None or not self._bridge.alive():
                self._bridge = _Bridge(self._local, self._envs)
            return self._bridge

    def run(self, code: str, language: str | None, context_id: str | None, envs: dict[str, str],
            timeout: float | None) -> Stream:
        """Execute `code`; the stream of the bridge's lines for it, then a terminal line."""
        if language and context_id:
            raise ValueError("pass a language or a context, not both")
        bridge = self._get()
        limit = DEFAULT_RUN_TIMEOUT_S if timeout is None else timeout
        request_id: list[int] = []
        stream = Stream(on_detach=lambda: self._interrupt(bridge, request_id))
        request_id.append(bridge.send("execute", stream, code=code, language=language,
                                      context_id=context_id, envs=envs))
        if limit:
            timer = threading.Timer(limit, self._expire, args=(bridge, request_id, stream, limit))
            timer.daemon = True
            timer.start()
        return stream

    def _interrupt(self, bridge: _Bridge, request_id: list[int]) -> None:
        bridge._drop(request_id[0])
        try:
            bridge.send("interrupt", queue.Queue(), request_id=request_id[0])
        except Exception as exc:
            log.warning("could not interrupt the code kernel: %s", exc)

    def _expire(self, bridge: _Bridge, request_id: list[int], stream: Stream, limit: float) -> None:
        if stream.ended:
            return
        stream.put({"type": "error", "error": {"type": "timeout", "message": (
            "the code ran longer than its timeout of %g s and was interrupted" % limit)}}, last=True)
        self._interrupt(bridge, request_id)

    def create_context(self, language: str | None, cwd: str | None) -> dict[str, Any]:
        return self._get().call("create_context", language=language, cwd=cwd)

    def list_contexts(self) -> list[dict[str, Any]]:
        return list(self._get().call("list_contexts").get("contexts", []))

    def remove_context(self, context_id: str) -> None:
        self._get().call("remove_context", context_id=context_id)

    def restart_context(self, context_id: str) -> None:
        self._get().call("restart_context", context_id=context_id)

    def close(self) -> None:
        with self._lock:
            bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.close()
