"""Code execution of one sandbox: `CodeRunner` relays `run_code` and code contexts to the
sandbox's Jupyter kernel bridge (``_guest_kernel.py``; its docstring is the protocol), started
in the sandbox as a background process on first use, or with the sandbox for code templates so
that the first run is warm.

The bridge speaks JSON lines on its stdin/stdout: a request carries a string ``id`` that every
line answering it echoes. An execution's lines (stdout, stderr, result, error, then end) go to
the client unchanged, in a `Stream`; `vmpool._code` turns them into an `Execution` on the
client's side, firing the callbacks as they arrive. An execution whose end says it timed out
(the bridge interrupted the kernel) ends the stream with ``{"type": "stream_error", "error": {"type":
"timeout", ...}}`` instead; a client that goes away has its execution interrupted.

Pausing a sandbox keeps its bridge: `suspend` ends the runs in flight for their clients, and the
bridge's pid (with its default contexts) is saved with the paused sandbox. On resume the runner
follows that process again (`Processes.connect`): on a driver that keeps memory (microvm) the
kernels and their state are still there; elsewhere the process is gone and a new bridge starts
on first use.
"""

from __future__ import annotations

import itertools
import json
import logging
import posixpath
import queue
import secrets
import shlex
import threading
from typing import Any

from ._errors import InvalidArgumentException, NotFoundException, TimeoutException
from ._processes import ProcessHandle
from ._sandbox import LocalSandbox
from ._service_commands import KERNEL_TAG
from ._service_stream import Stream

__all__ = ["CodeRunner"]

log = logging.getLogger("vmpool.service")

BRIDGE_SCRIPT = "_guest_kernel.py"
DEFAULT_RUN_TIMEOUT_S = 300.0  # E2B's run_code default
CALL_TIMEOUT_S = 120.0  # a context call (creating one starts a kernel)
WATCHDOG_GRACE_S = 30.0  # beyond a run's timeout: the bridge interrupts, then restarts a kernel
Route = Stream | queue.Queue[dict[str, Any]]


def _failure(message: dict[str, Any]) -> dict[str, Any]:
    """The service error for a bridge's ``failed`` line."""
    text = str(message.get("message") or "the code kernel failed")
    lowered = text.lower()
    kind = "not_found" if "not found" in lowered or lowered.startswith("no context") else "invalid_argument"
    return {"type": kind, "message": text}


class _Bridge:
    """The running kernel bridge: requests out on its stdin, lines back routed by id. Started
    anew, or followed again (`pid`) after the sandbox was paused and resumed."""

    def __init__(self, local: LocalSandbox, envs: dict[str, str], pid: int | None = None,
                 defaults: dict[str, str] | None = None) -> None:
        # ids unique across pauses: lines of a run from before a pause may still come
        self._ids = ("%s-%d" % (secrets.token_hex(4), n) for n in itertools.count(1))
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._buffer = ""
        self.defaults: dict[str, str] = dict(defaults or {})  # language -> its default context's id
        if pid is not None:
            self.handle: ProcessHandle = local.processes.connect(pid, on_stdout=self._feed, on_stderr=self._log)
            return
        script = posixpath.join(local.guest_dir, BRIDGE_SCRIPT)
        self.handle = local.processes.start(
            "exec python3 %s" % shlex.quote(script), envs=envs, stdin=True, tag=KERNEL_TAG,
            on_stdout=self._feed, on_stderr=self._log)

    def _log(self, text: str) -> None:
        log.debug("code kernel: %s", text.rstrip())

    def _feed(self, text: str) -> None:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("code kernel: unreadable line %.200r", line)
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == "ready":
                for context in message.get("contexts") or []:
                    self.defaults.setdefault(str(context.get("language")), str(context.get("context_id")))
                continue
            with self._lock:
                route = self._routes.get(str(message.get("id")))
            if isinstance(route, Stream):
                self._to_stream(route, message)
            elif route is not None:
                route.put(message)

    def _to_stream(self, stream: Stream, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "end":
            self.drop(str(message["id"]))
            if message.get("timed_out"):
                stream.put({"type": "stream_error", "error": {"type": "timeout", "message": (
                    "the code ran longer than its timeout and was interrupted")}}, last=True)
            else:
                stream.put(message, last=True)
        elif kind == "failed":
            self.drop(str(message["id"]))
            stream.put({"type": "stream_error", "error": _failure(message)}, last=True)
        else:
            stream.put(message)

    def drop(self, request_id: str) -> None:
        with self._lock:
            self._routes.pop(request_id, None)

    def send(self, op: str, route: Route | None, **fields: Any) -> str:
        request_id = next(self._ids)
        if route is not None:
            with self._lock:
                self._routes[request_id] = route
        self.handle.send_stdin(json.dumps({"op": op, "id": request_id, **fields}) + "\n")
        return request_id

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request answered by a single line (context calls)."""
        answers: queue.Queue[dict[str, Any]] = queue.Queue()
        request_id = self.send(op, answers, **fields)
        try:
            answer = answers.get(timeout=CALL_TIMEOUT_S)
        except queue.Empty:
            raise TimeoutException("the code kernel did not answer %s in %g s" % (op, CALL_TIMEOUT_S)) from None
        finally:
            self.drop(request_id)
        if answer.get("type") == "failed":
            error = _failure(answer)
            raise (NotFoundException if error["type"] == "not_found" else InvalidArgumentException)(error["message"])
        return answer

    def alive(self) -> bool:
        return self.handle.exit_code is None

    def end_runs(self, why: str) -> None:
        """End the streams of the runs in flight (their clients get `why`)."""
        with self._lock:
            routes, self._routes = list(self._routes.values()), {}
        for route in routes:
            if isinstance(route, Stream):
                route.put({"type": "stream_error", "error": {"type": "sandbox_error", "message": why}}, last=True)



class CodeRunner:
    """`run_code` and code contexts of one sandbox (see module docstring). `envs` is the
    sandbox's environment, which the bridge (and so every kernel) starts with. `saved` is what
    `suspend` returned before the sandbox was paused, to follow its bridge again."""

    def __init__(self, local: LocalSandbox, envs: dict[str, str], saved: dict[str, Any] | None = None) -> None:
        self._local = local
        self._envs = envs
        self._bridge: _Bridge | None = None
        self._lock = threading.Lock()
        if saved and isinstance(saved.get("pid"), int):
            try:
                self._bridge = _Bridge(local, envs, saved["pid"], saved.get("defaults"))
            except ProcessLookupError:  # the driver kept files only: a new bridge on first use
                pass

    def start(self) -> None:
        """Start the kernel bridge now (it warms its default kernel while the caller goes on)."""
        self._get()

    def _get(self) -> _Bridge:
        with self._lock:
            if self._bridge is None or not self._bridge.alive():
                self._bridge = _Bridge(self._local, self._envs)
            return self._bridge

    def run(self, code: str, language: str | None, context_id: str | None, envs: dict[str, str],
            timeout: float | None) -> Stream:
        """Execute `code`: the stream of the bridge's lines for it (see module docstring)."""
        if language and context_id:
            raise InvalidArgumentException("pass a language or a context, not both")
        bridge = self._get()
        limit = DEFAULT_RUN_TIMEOUT_S if timeout is None else timeout
        sent: list[str] = []
        stream = Stream(on_detach=lambda: self._interrupt(bridge, sent, context_id, language))
        sent.append(bridge.send("execute", stream, code=code, context_id=context_id, language=language,
                                envs=envs, timeout=limit or None))
        if limit:
            watchdog = threading.Timer(limit + WATCHDOG_GRACE_S, self._give_up, args=(bridge, sent, stream, limit))
            watchdog.daemon = True
            watchdog.start()
        return stream

    def _interrupt(self, bridge: _Bridge, sent: list[str], context_id: str | None, language: str | None) -> None:
        """The client of a run went away: interrupt the kernel that runs it."""
        bridge.drop(sent[0])
        context_id = context_id or bridge.defaults.get(language or "python")
        if context_id is None:
            log.warning("cannot interrupt an abandoned run: the kernel bridge named no default context")
            return
        try:
            bridge.send("interrupt", None, context_id=context_id)
        except Exception as exc:
            log.warning("could not interrupt the code kernel: %s", exc)

    def _give_up(self, bridge: _Bridge, sent: list[str], stream: Stream, limit: float) -> None:
        if stream.ended:
            return
        bridge.drop(sent[0])
        stream.put({"type": "stream_error", "error": {"type": "timeout", "message": (
            "the code kernel did not end the run %g s after its timeout of %g s"
            % (WATCHDOG_GRACE_S, limit))}}, last=True)

    def create_context(self, language: str | None, cwd: str | None) -> dict[str, Any]:
        answer = self._get().call("create_context", language=language or "python", cwd=cwd, envs={})
        return {"id": answer["context_id"], "language": answer.get("language"), "cwd": answer.get("cwd")}

    def list_contexts(self) -> list[dict[str, Any]]:
        contexts = self._get().call("list_contexts").get("contexts", [])
        return [{"id": c["context_id"], "language": c.get("language"), "cwd": c.get("cwd")} for c in contexts]

    def remove_context(self, context_id: str) -> None:
        self._get().call("remove_context", context_id=context_id)

    def restart_context(self, context_id: str) -> None:
        self._get().call("restart_context", context_id=context_id)

    def suspend(self) -> dict[str, Any] | None:
        """The sandbox is being paused: end the runs in flight and return what a resumed runner
        needs to follow the bridge again (None if there is none). The bridge keeps running."""
        with self._lock:
            bridge = self._bridge
        if bridge is None or not bridge.alive():
            return None
        bridge.end_runs("the sandbox was paused")
        return {"pid": bridge.handle.pid, "defaults": dict(bridge.defaults)}

    def close(self) -> None:
        """The sandbox is being killed: end the runs in flight (the bridge dies with it)."""
        with self._lock:
            bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.end_runs("the sandbox was killed")

