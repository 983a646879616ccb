"""The kernel bridge: the Jupyter kernels of one sandbox behind a JSON-lines protocol, the guest
side of E2B's ``run_code`` and code contexts.

The host starts it inside a sandbox whose template has ipykernel and jupyter_client (the
``code-interpreter`` template) as a background process, ``python3 /opt/vmpool/_guest_kernel.py``,
with the sandbox's environment and working directory, and talks to it over its stdin and stdout.
It owns every kernel it starts: each runs in its own session (process group), talks to the bridge
over ipc sockets in a private 0700 directory (no TCP, no loopback needed) and dies with it.

Protocol 1. Requests are JSON objects, one a line, each with a string ``id`` that every line
answering it repeats; requests run concurrently, so answers to different ids interleave.

- ``{"op": "create_context", "id", "language": "python", "cwd": str|null, "envs": {}}`` starts a
  kernel (cwd null: the bridge's) -> ``{"id", "type": "context", "context_id", "language", "cwd"}``.
  ``envs`` are added to that kernel's environment.
- ``{"op": "execute", "id", "code", "context_id": str|null, "language": str|null, "envs": {},
  "timeout": float|null}`` runs `code` in a context (null: the default context of `language`,
  python if null; the python one is started with the bridge, so the first execution is warm)
  -> zero or more of
  ``{"id", "type": "stdout"|"stderr", "text", "timestamp"}`` (timestamp: Unix ns, the kernel's),
  ``{"id", "type": "result", "data": {mime: value}, "is_main_result": bool}`` (the cell's value
  is the main result, display() calls and figures are not; a matplotlib figure carries
  ``image/png`` and the chart data of `_guest_charts.CHART_MIME`),
  ``{"id", "type": "error", "name", "value", "traceback": str}`` (at most one),
  then exactly one ``{"id", "type": "end", "execution_count": int|null, "timed_out": bool}``.
  ``envs`` (names: ASCII letters, digits and _) hold for that execution only: set before it,
  then restored to the values the kernel started with (E2B's semantics). Executions of one context run one at a time, in the order they
  arrived; those of different contexts run at once. After `timeout` seconds the kernel is
  interrupted (the code usually ends with a KeyboardInterrupt error); if it is not idle
  `INTERRUPT_GRACE_S` later it is restarted, which a stderr line of that execution says. A kernel
  that dies is reported as error ``KernelDied`` and restarted for the next execution; restarting
  or removing a context ends its running and queued executions with error ``ContextRestarted`` /
  ``ContextRemoved``.
- ``{"op": "interrupt" | "restart_context" | "remove_context", "id", "context_id"}`` ->
  ``{"id", "type": "ok"}``. A removed default context is started afresh when next used.
- ``{"op": "list_contexts", "id"}`` -> ``{"id", "type": "contexts", "contexts": [{"context_id",
  "language", "cwd"}]}`` (default contexts included).
- A request that cannot be carried out -> ``{"id", "type": "failed", "message"}`` as its only
  (or last) line; a line that is not a JSON object with a string id -> ``failed`` with id null.
- Unasked: ``{"id": null, "type": "ready", "protocol": 1, "contexts": [...]}`` once the default
  python context is up (preceded by a ``failed`` line with id null if it could not start).

Languages: ``python`` (ipykernel, with the bridge's interpreter) always; any other (``javascript``
or ``js``, ``typescript`` or ``ts``, ``bash``, ...) if a Jupyter kernel spec of that language is
installed, else ``failed`` naming the installed ones. Nothing but protocol lines is ever written
on stdout: the bridge points its own fd 1, and so its kernels', at stderr, where logs go. EOF on
stdin (or SIGTERM) shuts every kernel down, their process groups included, and ends the bridge.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import queue
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from typing import Any, BinaryIO, Coroutine

try:
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
except ImportError as exc:  # reported by main(): the template lacks the kernel stack
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

PROTOCOL_VERSION = 1
PYTHON_KERNEL = "vmpool-python"  # the kernel spec the bridge writes for its own interpreter
START_TIMEOUT_S = 120.0  # a cold ipykernel in an emulated VM takes seconds
INTERRUPT_GRACE_S = 5.0
IDLE_GRACE_S = 5.0  # after the execute_reply, how long the idle status may lag
SILENT_TIMEOUT_S = 30.0
POLL_S = 0.2
ALIVE_EVERY_S = 1.0
SHUTDOWN_WAIT_S = 2.0
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ALIASES = {"python3": "python", "py": "python", "js": "javascript", "ts": "typescript", "sh": "bash"}
KERNEL_ARGS = [
    "--InteractiveShell.colors=nocolor",  # tracebacks as plain text
    "--HistoryManager.hist_file=:memory:",  # no sqlite file shared (and locked) by kernels
    "--PlainTextFormatter.max_seq_length=0",  # whole lists in text/plain, as E2B
]
# Run silently in every python kernel: load the chart formatters from the file beside this one
# without putting the guest directory on the user's sys.path, and leave no names behind.
SETUP_CODE = """\
def _vmpool_setup(path):
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("_vmpool_charts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["_vmpool_charts"] = module
    module.install(get_ipython())
_vmpool_setup(%r)
del _vmpool_setup
"""
CHARTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_guest_charts.py")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class RequestError(Exception):
    """A request cannot be carried out; the message becomes its ``failed`` line."""


def log(message: str) -> None:
    print("vmpool kernel bridge: " + message, file=sys.stderr, flush=True)


class Output:
    """The protocol's output: JSON lines on the fd that was stdout. Only the event loop's thread
    writes; once the host stops reading, lines are dropped."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.closed = False

    def send(self, request_id: str | None, kind: str, **fields: Any) -> None:
        if self.closed:
            return
        line = json.dumps({"id": request_id, "type": kind, **fields}, separators=(",", ":"))
        try:
            self._stream.write(line.encode() + b"\n")
            self._stream.flush()
        except OSError:
            self.closed = True


def _timestamp(msg: dict[str, Any]) -> int:
    date = msg.get("header", {}).get("date")
    if isinstance(date, str):
        date = datetime.datetime.fromisoformat(date.replace("Z", "+00:00"))
    if isinstance(date, datetime.datetime):
        if date.tzinfo is None:
            date = date.replace(tzinfo=datetime.timezone.utc)
        return (date - EPOCH) // datetime.timedelta(microseconds=1) * 1000
    return time.time_ns()


def _env_code(language: str, assign: dict[str, str], unset: list[str]) -> str:
    """Code that sets `assign` and removes `unset` from a kernel's environment."""
    if language == "python":
        return "__import__('os').environ.update(%r)\n[__import__('os').environ.pop(k, None) for k in %r]" % (
            assign, unset)
    if language in ("javascript", "typescript"):
        return "\n".join(["process.env[%s] = %s;" % (json.dumps(k), json.dumps(v)) for k, v in assign.items()]
                         + ["delete process.env[%s];" % json.dumps(k) for k in unset])
    if language == "bash":
        return "\n".join(["export %s=%s" % (k, shlex.quote(v)) for k, v in assign.items()]
                         + ["unset %s" % k for k in unset])
    raise RequestError("envs are not supported in %s contexts" % language)


def _envs(request: dict[str, Any]) -> dict[str, str]:
    envs = request.get("envs") or {}
    if not isinstance(envs, dict) or not all(
            isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str) and "\0" not in v
            for k, v in envs.items()):
        raise RequestError("envs must map variable names (ASCII letters, digits and _, not starting with "
                           "a digit) to strings")
    return envs


class Context:
    """One kernel and the executions queued for it."""

    def __init__(self, bridge: Bridge, language: str, spec: str, cwd: str, envs: dict[str, str]) -> None:
        self.bridge, self.language, self.cwd = bridge, language, cwd
        self.id = str(uuid.uuid4())
        self.env = {**bridge.kernel_env, **envs}
        name = os.path.join(bridge.directory, self.id[:8])
        self.km = AsyncKernelManager(kernel_name=spec, kernel_spec_manager=bridge.specs, transport="ipc",
                                     ip=name, connection_file=name + ".json")
        self.km.shutdown_wait_time = SHUTDOWN_WAIT_S
        self.kc: Any = None
        self.lock = asyncio.Lock()
        self.epoch = 0  # bumped by restart/remove: executions queued before then are ended
        self.closed = ""  # why it takes no more work: "removed", "shut down"
        self.broken = ""  # why its kernel cannot run
        self.pgid = 0
        self.started = asyncio.ensure_future(self._start())

    def describe(self) -> dict[str, Any]:
        return {"context_id": self.id, "language": self.language, "cwd": self.cwd}

    async def _start(self) -> None:
        try:
            await self.km.start_kernel(cwd=self.cwd, env=self.env)
            self.pgid = self._kernel_pgid()
            self.kc = self.km.client()
            self.kc.start_channels()
            await self.kc.wait_for_ready(timeout=START_TIMEOUT_S)
        except Exception as exc:
            await self._stop(now=True)
            raise RequestError("the %s kernel did not start: %s (its log is on the bridge's stderr)" % (
                self.language, exc)) from exc
        await self._setup()

    def _kernel_pgid(self) -> int:
        process = getattr(self.km.provisioner, "process", None)
        try:
            return os.getpgid(process.pid) if process is not None else 0
        except OSError:
            return 0

    async def _setup(self) -> None:
        if self.language == "python" and os.path.exists(CHARTS_FILE):
            await self._silent(SETUP_CODE % CHARTS_FILE, "the chart formatters' setup")

    async def _silent(self, code: str, what: str) -> None:
        """Run `code` without output, history or execution count; failures only go to the log."""
        msg_id = self.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + SILENT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                reply = await self.kc.get_shell_msg(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if reply["parent_header"].get("msg_id") == msg_id:
                if reply["content"].get("status") != "ok":
                    log("%s failed in context %s: %s: %s" % (
                        what, self.id, reply["content"].get("ename"), reply["content"].get("evalue")))
                return
        log("%s got no reply within %.0f s in context %s" % (what, SILENT_TIMEOUT_S, self.id))

    async def ready(self) -> None:
        """Wait until the kernel runs; RequestError if it cannot."""
        await self.started
        if self.broken:
            raise RequestError(self.broken)

    async def restart_kernel(self) -> None:
        """A fresh kernel (same cwd and environment), the old one's process group killed."""
        old = self.pgid
        try:
            await self.km.restart_kernel(now=True)
            _kill_group(old)
            self.pgid = self._kernel_pgid()
            await self.kc.wait_for_ready(timeout=START_TIMEOUT_S)
        except Exception as exc:
            self.broken = "the kernel of context %s could not be restarted: %s" % (self.id, exc)
            log(self.broken)
            return
        await self._setup()

    async def _stop(self, now: bool) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        try:
            if self.km.has_kernel:
                await self.km.shutdown_kernel(now=now)
        except Exception as exc:
            log("shutting down context %s: %s" % (self.id, exc))
        _kill_group(self.pgid)

    def close(self, why: str) -> Coroutine[Any, Any, None]:
        """End queued and running work now; the coroutine stops the kernel (gracefully if it is
        idle within a second)."""
        self.closed, self.epoch = why, self.epoch + 1
        return self._close()

    async def _close(self) -> None:
        done, _ = await asyncio.wait({self.started}, timeout=1.0)
        if not done:
            self.started.cancel()
        try:
            await asyncio.wait_for(self.lock.acquire(), 1.0)
        except asyncio.TimeoutError:
            await self._stop(now=True)
        else:
            try:
                await self._stop(now=False)
            finally:
                self.lock.release()

    def restart(self) -> Coroutine[Any, Any, None]:
        """End queued and running work now (executions sent later run after the restart); the
        coroutine restarts the kernel."""
        self.epoch += 1
        return self._restart()

    async def _restart(self) -> None:
        async with self.lock:
            await self.ready()
            await self.restart_kernel()
            if self.broken:
                raise RequestError(self.broken)

    async def execute(self, out: Output, rid: str, code: str, envs: dict[str, str],
                      timeout: float | None, epoch: int) -> None:
        async with self.lock:
            if self.epoch != epoch:
                self._ended(out, rid)
                return
            await self.ready()
            run = Execution(self, out, rid, epoch)
            if envs:
                await self._silent(_env_code(self.language, envs, []), "setting envs")
            await run.run(code, timeout)
            if envs and not run.restarted and self.epoch == epoch:
                baseline = {k: self.env[k] for k in envs if k in self.env}
                await self._silent(_env_code(self.language, baseline, [k for k in envs if k not in self.env]),
                                   "restoring envs")

    def _ended(self, out: Output, rid: str) -> None:
        name = "ContextRemoved" if self.closed else "ContextRestarted"
        out.send(rid, "error", name=name, value="the context was %s before this execution finished" % (
            self.closed or "restarted"), traceback="")
        out.send(rid, "end", execution_count=None, timed_out=False)


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a kernel's process group (processes the user's code started)."""
    if pgid > 1 and pgid != os.getpgid(0):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


class Execution:
    """One execute request in a context whose lock it holds: relays the kernel's messages."""

    def __init__(self, context: Context, out: Output, rid: str, epoch: int) -> None:
        self.context, self.out, self.rid, self.epoch = context, out, rid, epoch
        self.count: int | None = None
        self.errored = False
        self.restarted = False

    def send(self, kind: str, **fields: Any) -> None:
        self.out.send(self.rid, kind, **fields)

    async def run(self, code: str, timeout: float | None) -> None:
        context, kc, km = self.context, self.context.kc, self.context.km
        msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        clock = asyncio.get_running_loop().time
        deadline = None if timeout is None else clock() + timeout
        interrupted_at = replied_at = None
        next_check = clock() + ALIVE_EVERY_S
        timed_out = False
        while True:
            if context.epoch != self.epoch:
                context._ended(self.out, self.rid)
                return
            try:
                msg = await kc.get_iopub_msg(timeout=POLL_S)
            except queue.Empty:
                msg = None
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id and self._relay(msg):
                break
            if replied_at is None:
                try:
                    reply = await kc.get_shell_msg(timeout=0)
                except queue.Empty:
                    reply = None
                if reply is not None and reply["parent_header"].get("msg_id") == msg_id:
                    replied_at = clock()
                    self._reply(reply["content"])
            now = clock()
            if replied_at is not None and now - replied_at > IDLE_GRACE_S:
                log("no idle status %.0f s after the reply to %s; ending it" % (IDLE_GRACE_S, self.rid))
                break
            if deadline is not None and now >= deadline and interrupted_at is None:
                timed_out, interrupted_at = True, now
                await km.interrupt_kernel()
            elif interrupted_at is not None and now - interrupted_at >= INTERRUPT_GRACE_S:
                self.send("stderr", timestamp=time.time_ns(), text=(
                    "vmpool: the execution timed out and the kernel did not stop within %.0f s of an "
                    "interrupt; it was restarted, and the context's state is lost\n" % INTERRUPT_GRACE_S))
                await self._restart()
                break
            if now >= next_check:
                next_check = now + ALIVE_EVERY_S
                if not await km.is_alive():
                    code_ = await km.provisioner.poll() if km.provisioner is not None else None
                    self._error("KernelDied", "the kernel died (exit status %s); it was restarted, and the "
                                "context's state is lost" % code_)
                    await self._restart()
                    break
        self.send("end", execution_count=self.count, timed_out=timed_out)

    async def _restart(self) -> None:
        self.restarted = True
        await self.context.restart_kernel()

    def _error(self, name: str, value: str, trace: str = "") -> None:
        if not self.errored:
            self.errored = True
            self.send("error", name=name, value=value, traceback=trace)

    def _relay(self, msg: dict[str, Any]) -> bool:
        """Forward one iopub message of this execution; True once the kernel is idle again."""
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            return bool(content.get("execution_state") == "idle")
        if kind == "stream" and content.get("name") in ("stdout", "stderr"):
            self.send(content["name"], text=content.get("text", ""), timestamp=_timestamp(msg))
        elif kind in ("execute_result", "display_data"):
            self.send("result", data=content.get("data", {}), is_main_result=kind == "execute_result")
        elif kind == "error":
            self._error(content.get("ename", ""), content.get("evalue", ""),
                        "\n".join(line.rstrip("\n") for line in content.get("traceback", [])))
        elif kind == "execute_input":
            self.count = content.get("execution_count")
        return False

    def _reply(self, content: dict[str, Any]) -> None:
        self.count = content.get("execution_count", self.count)
        if content.get("status") == "error":
            self._error(content.get("ename", ""), content.get("evalue", ""),
                        "\n".join(line.rstrip("\n") for line in content.get("traceback", [])))
        elif content.get("status") == "aborted":
            self._error("ExecutionAborted", "the kernel aborted this execution")


class Bridge:
    """The contexts of this sandbox and the requests that act on them."""

    def __init__(self, out: Output, directory: str) -> None:
        self.out, self.directory = out, directory
        self.contexts: dict[str, Context] = {}
        self.defaults: dict[str, Context] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.kernel_env = _kernel_env(directory)
        self.specs = KernelSpecManager()
        self.specs.kernel_dirs = [_write_python_spec(directory), *self.specs.kernel_dirs]

    # --- requests

    def on_line(self, raw: bytes) -> None:
        try:
            request = json.loads(raw)
        except ValueError as exc:
            if raw.strip():
                self.out.send(None, "failed", message="not a JSON line: %s" % exc)
            return
        if not isinstance(request, dict) or not isinstance(request.get("id"), str):
            self.out.send(None, "failed", message="a request is a JSON object with a string id")
            return
        rid, op = request["id"], request.get("op")
        handler = getattr(self, "op_" + op, None) if isinstance(op, str) else None
        if handler is None:
            self.out.send(rid, "failed", message="unknown op %r" % (op,))
            return
        try:
            work = handler(rid, request)
        except RequestError as exc:
            self.out.send(rid, "failed", message=str(exc))
            return
        self.spawn(self._answer(rid, work))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, rid: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except RequestError as exc:
            self.out.send(rid, "failed", message=str(exc))
        except asyncio.CancelledError:
            self.out.send(rid, "failed", message="the kernel bridge shut down")
        except Exception as exc:
            log("request %s failed:\n%s" % (rid, traceback.format_exc()))
            self.out.send(rid, "failed", message="%s: %s" % (type(exc).__name__, exc))

    def op_create_context(self, rid: str, request: dict[str, Any]) -> Coroutine[Any, Any, None]:
        cwd = request.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise RequestError("cwd must be a path or null")
        context = self.new_context(request.get("language"), cwd, _envs(request))

        async def answer() -> None:
            await context.ready()
            self.out.send(rid, "context", **context.describe())
        return answer()

    def op_execute(self, rid: str, request: dict[str, Any]) -> Coroutine[Any, Any, None]:
        code, timeout = request.get("code"), request.get("timeout")
        if not isinstance(code, str):
            raise RequestError("code must be a string")
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                    or not timeout > 0):
            raise RequestError("timeout must be a positive number of seconds or null")
        envs = _envs(request)
        if request.get("context_id") is not None:
            context = self.context(request)
        else:
            language = self.language(request.get("language"))
            context = self.defaults.get(language) or self.new_context(language, None, {}, default=True)
        if envs:
            _env_code(context.language, {}, [])  # fails now for a language without env support
        return context.execute(self.out, rid, code, envs, None if timeout is None else float(timeout),
                               context.epoch)

    def op_interrupt(self, rid: str, request: dict[str, Any]) -> Coroutine[Any, Any, None]:
        context = self.context(request)

        async def answer() -> None:
            await context.ready()
            await context.km.interrupt_kernel()
            self.out.send(rid, "ok")
        return answer()

    def op_restart_context(self, rid: str, request: dict[str, Any]) -> Coroutine[Any, Any, None]:
        restarting = self.context(request).restart()

        async def answer() -> None:
            await restarting
            self.out.send(rid, "ok")
        return answer()

    def op_remove_context(self, rid: str, request: dict[str, Any]) -> Coroutine[Any, Any, None]:
        context = self.context(request)
        self.forget(context)
        closing = context.close("removed")

        async def answer() -> None:
            await closing
            self.out.send(rid, "ok")
        return answer()

    def op_list_contexts(self, rid: str, request: dict[str, Any]) -> Coroutine[Any, Any, None]:
        async def answer() -> None:
            self.out.send(rid, "contexts", contexts=[c.describe() for c in self.contexts.values()])
        return answer()

    # --- contexts

    def context(self, request: dict[str, Any]) -> Context:
        context_id = request.get("context_id")
        if not isinstance(context_id, str) or context_id not in self.contexts:
            raise RequestError("no context %r in this sandbox" % (context_id,))
        return self.contexts[context_id]

    def language(self, language: Any) -> str:
        if language is None:
            return "python"
        if not isinstance(language, str):
            raise RequestError("language must be a string or null")
        return ALIASES.get(language.lower(), language.lower())

    def new_context(self, language: Any, cwd: str | None, envs: dict[str, str], default: bool = False) -> Context:
        language = self.language(language)
        cwd = os.path.abspath(cwd) if cwd else os.getcwd()
        if not os.path.isdir(cwd):
            raise RequestError("cwd %s is not a directory in this sandbox" % cwd)
        context = Context(self, language, self.kernel_spec(language), cwd, envs)
        self.contexts[context.id] = context
        if default:
            self.defaults[language] = context

        def started(task: asyncio.Future[None]) -> None:
            if task.cancelled() or task.exception() is not None:
                self.forget(context)
        context.started.add_done_callback(started)
        return context

    def forget(self, context: Context) -> None:
        self.contexts.pop(context.id, None)
        if self.defaults.get(context.language) is context:
            del self.defaults[context.language]

    def kernel_spec(self, language: str) -> str:
        if language == "python":
            return PYTHON_KERNEL
        specs = self.specs.get_all_specs()
        for name, spec in sorted(specs.items()):
            if str(spec["spec"].get("language", "")).lower() == language:
                return str(name)
        installed = ", ".join("%s (%s)" % (name, spec["spec"].get("language"))
                              for name, spec in sorted(specs.items()) if name != PYTHON_KERNEL)
        raise RequestError("no Jupyter kernel for %s is installed in this sandbox (installed kernels: %s); "
                           "python always works" % (language, installed or "none but vmpool's python"))

    # --- lifecycle

    async def serve(self, requests: BinaryIO) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.done.set)

        def read() -> None:
            for raw in requests:
                loop.call_soon_threadsafe(self.on_line, raw)
            loop.call_soon_threadsafe(self.done.set)
        self.spawn(self._warm(self.new_context("python", None, {}, default=True)))
        threading.Thread(target=read, name="requests", daemon=True).start()
        await self.done.wait()
        await self.shutdown()

    async def _warm(self, context: Context) -> None:
        try:
            await context.ready()
        except RequestError as exc:
            self.out.send(None, "failed", message=str(exc))
        self.out.send(None, "ready", protocol=PROTOCOL_VERSION,
                      contexts=[c.describe() for c in self.contexts.values()])

    async def shutdown(self) -> None:
        contexts = list(self.contexts.values())
        self.contexts.clear()
        self.defaults.clear()
        await asyncio.gather(*(context.close("shut down") for context in contexts), return_exceptions=True)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _writable(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _kernel_env(directory: str) -> dict[str, str]:
    """The environment kernels start with: the bridge's, figures shown inline, and writable
    config directories for matplotlib and IPython when $HOME is not writable."""
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
    if not _writable(os.path.expanduser("~")):
        for name, sub in (("MPLCONFIGDIR", "matplotlib"), ("IPYTHONDIR", "ipython")):
            if name not in env:
                env[name] = os.path.join(directory, sub)
                os.makedirs(env[name], mode=0o700, exist_ok=True)
    return env


def _write_python_spec(directory: str) -> str:
    """A kernel spec for ipykernel under this interpreter; returns the kernels directory."""
    kernels = os.path.join(directory, "kernels")
    os.makedirs(os.path.join(kernels, PYTHON_KERNEL), mode=0o700)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", *KERNEL_ARGS],
            "display_name": "Python 3 (vmpool)", "language": "python", "interrupt_mode": "signal"}
    with open(os.path.join(kernels, PYTHON_KERNEL, "kernel.json"), "w") as file:
        json.dump(spec, file)
    return kernels


def main() -> int:
    """Serve the protocol on stdin/stdout until EOF; returns the exit status."""
    out = Output(os.fdopen(os.dup(1), "wb"))
    requests = os.fdopen(os.dup(0), "rb")
    # From here on fd 1 is stderr and fd 0 is /dev/null, for this process and every kernel: a
    # stray print cannot corrupt the protocol, and no kernel can read the requests.
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if _MISSING is not None:
        out.send(None, "failed", message="the kernel bridge needs jupyter_client and ipykernel in this "
                 "sandbox's python (%s); use a template that has them, e.g. code-interpreter" % _MISSING)
        return 3
    directory = tempfile.mkdtemp(prefix="vmpool-kernels-")  # 0700
    try:
        asyncio.run(Bridge(out, directory).serve(requests))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
