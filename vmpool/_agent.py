"""vmpool guest agent: a fork-server that runs programs for the host, one request at a time.

Runs inside the sandbox (bubblewrap now, a microVM later) as a plain script next to the other
guest modules, its only non-stdlib imports; `vmpool._guest.GUEST_FILES` lists them, and they are
the whole guest side. Start (`vmpool._guest.agent_command`)::

    python3 -I -B _agent.py [--channel stdio|DEVICE] [--exclusive]

Contract:

- Speaks ``_protocol`` on the channel (stdin/stdout, or a device such as a virtio-serial port):
  one hello, then one reply per request, in order. A malformed request gets an error reply, never
  a crash; EOF on the channel ends the agent.
- ``run_program`` forks a fresh child of this warm interpreter (common stdlib modules are
  pre-imported). The child gets a new session, a fresh scratch directory as cwd, rlimits, stdin
  from /dev/null, stdout/stderr on pipes the agent reads up to a cap, and a private status pipe.
  Its address-space limit is its own size when the program starts plus ``memory_mb``, so that
  ``memory_mb`` is what the program may allocate, however large the agent has grown.
  It runs the code with ``exec`` and, only if ``exec`` returns, writes ``<token> ok`` to the status
  pipe (token: random per run, known only to the agent and that child) before ``os._exit(0)``.
  A run is ``ok`` only with that report *and* exit status 0; SystemExit, MemoryError and other
  exceptions are reported the same way as ``exited``/``oom``/``error``; no report at all (e.g.
  ``os._exit``, a signal) means the program ended early: ``exited``. A report that the child
  could not start the program (reply kind ``sandbox``) counts only if it precedes the
  ``started`` marker the child writes just before ``exec``.
- The agent installs the program filter (``_seccomp.build_program_filter``) on itself at start,
  so every child is born with it and nothing a program starts can remove it: programs cannot
  signal, limit or reschedule the agent, its ancestors or their process groups, and cannot
  create SysV IPC objects or POSIX message queues (they would outlive the program). The filter
  refuses nothing the agent does. The agent is also non-dumpable, so processes of its uid cannot
  read or write its memory or fds through /proc. No filter on other architectures than x86_64,
  for which ``_seccomp`` has none.
- ``--exclusive`` (the agent owns its PID namespace or VM): after every program and command the
  agent SIGKILLs every process except itself and its ancestors, waits until they are gone
  (reply kind ``sandbox`` if they are not), and deletes what a program created at the top level
  of /tmp. Without it only the child's process group is killed. The flag is refused when the
  agent visibly is not alone (more than two ancestor processes), so a stray run on a host
  cannot kill the host's processes.

Known limit: a program can forge its own result. The code that reports ``ok`` runs in the
program's process, after the program, so whatever it does the program can do first: find the
``report`` closure (``sys._getframe(1).f_locals['report']``, or among ``gc.get_objects()``) or
the token in its memory, call it or write ``<token> ok`` to the status pipe (an fd it can list),
then ``os._exit(0)``; the run is then ``ok``, or whichever of ``error``/``oom``/``exited`` it
wrote. The token only defends against programs that end early by accident. Hiding the token
better (an fd recorded nowhere, a C-level buffer, delivering it only after ``exec``) changes
which few lines do this, not whether they can: memory and fds of one process are all readable
by the code it runs. Closing it needs a verdict from outside the program's process (e.g. the
host judging the program's output). A forged report cannot pass for a broken sandbox (see
``started`` above) nor reach anything beyond that one result.
"""

from __future__ import annotations

import argparse
import builtins
import gc
import importlib
import linecache
import math
import os
import random
import secrets
import signal
import sys
import traceback
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

if __package__:  # imported as vmpool._agent (tests, type checking)
    from . import _agent_child as child
    from . import _agent_files as files
    from . import _agent_procs as procs
    from . import _protocol as proto
else:  # run as a script inside the sandbox: the sibling files, never an installed vmpool
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _agent_child as child  # type: ignore[no-redef]
    import _agent_files as files  # type: ignore[no-redef]
    import _agent_procs as procs  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]
    del sys.path[0]

AGENT_VERSION = "0.1.0"
PREIMPORTS = (
    "abc", "array", "base64", "bisect", "cmath", "collections", "collections.abc", "contextlib",
    "copy", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib",
    "heapq", "io", "itertools", "json", "math", "numbers", "operator", "pprint", "queue", "random",
    "re", "statistics", "string", "struct", "textwrap", "threading", "typing", "unicodedata",
)


# --------------------------------------------------------------------------------- programs

_KEEP_ALIVE: List[Any] = []  # the agent's own std streams, kept so GC never closes fds 0-2


def _std_streams() -> List[Any]:
    """Fresh sys.std* objects on fds 0-2 (which now point at /dev/null and the pipes)."""
    _KEEP_ALIVE.append((sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__))
    streams = (
        open(0, "r", encoding="utf-8", closefd=False),
        open(1, "w", encoding="utf-8", closefd=False),
        open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1),
    )
    for name, stream in zip(("stdin", "stdout", "stderr"), streams):
        setattr(sys, name, stream)
        setattr(sys, "__%s__" % name, stream)
    return list(streams[1:])


def _flush(streams: List[Any]) -> None:
    for stream in streams + [sys.stdout, sys.stderr]:
        try:
            stream.flush()
        except BaseException:
            pass  # e.g. the agent stopped reading after an output flood


def _one_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:
        text = ""
    line = " ".join(("%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__).splitlines())
    return line if len(line) <= 300 else line[:297] + "..."


def _exit_status(exc: SystemExit) -> int:
    """The exit status CPython would give for this SystemExit (printing a non-int code)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def _print_traceback(exc: BaseException) -> None:
    try:
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # hide the wrapper frame
        traceback.print_exception(type(exc), exc, tb)
    except BaseException:
        pass


def _fresh_main(code: str) -> Dict[str, Any]:
    """A new __main__ module for the program (pickle, unittest.main and ``import __main__`` must
    find the program, not the agent); its __dict__ is the program's globals."""
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = ["<program>"]
    linecache.cache["<program>"] = (len(code), None, code.splitlines(True), "<program>")
    return module.__dict__


def _program_main(code: str, memory_mb: int, report: child.Report) -> None:
    """Child side of run_program: run `code` as __main__, report how it ended, exit."""
    random.seed()  # from os.urandom: never the agent's (or a sibling's) random state
    streams = _std_streams()
    namespace = _fresh_main(code)
    # memory_mb is what the program may allocate beyond the interpreter it was forked from, so
    # it does not shrink as the agent grows; compiling the code already counts against it.
    child.limit_address_space(child.address_space() + memory_mb * child.MIB)
    report("started", None)  # the program writes next: see _agent_child.Capture.report
    try:
        exec(compile(code, "<program>", "exec"), namespace)
    except SystemExit as exc:
        status = _exit_status(exc)
        _flush(streams)
        report("exited", status)
        child.EXIT(status)
    except MemoryError as exc:
        namespace.clear()  # free what we can so that reporting works
        _print_traceback(exc)
        _flush(streams)
        report("oom", _one_line(exc))
        child.EXIT(1)
    except BaseException as exc:
        _print_traceback(exc)
        _flush(streams)
        report("error", _one_line(exc))
        child.EXIT(1)
    _flush(streams)
    report("ok", None)
    child.EXIT(0)


def _command_main(command: str, memory_mb: int, report: child.Report) -> None:
    """Child side of run_command: exec /bin/sh -c with the default signal dispositions."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # CPython ignores these; a shell must not
        signal.signal(sig, signal.SIG_DFL)
    child.limit_address_space(memory_mb * child.MIB)  # the shell starts afresh: nothing to add to
    try:
        os.execv("/bin/sh", ["/bin/sh", "-c", command])
    except OSError as exc:
        report("setup", "cannot run /bin/sh: %s" % exc)
        child.EXIT(child.SETUP_FAILED)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %d" % number


def program_result(run: child.Finished, limits: proto.WireLimits) -> Dict[str, Any]:
    """Map a finished run to ExecResult fields (see vmpool._types.ExecStatus)."""
    exit_code = os.WEXITSTATUS(run.wait_status) if os.WIFEXITED(run.wait_status) else None
    signum = os.WTERMSIG(run.wait_status) if os.WIFSIGNALED(run.wait_status) else None
    cpu = run.usage.ru_utime + run.usage.ru_stime
    status, error = _classify(run, exit_code, signum, cpu, limits)
    return {
        "status": status, "exit_code": exit_code, "signal": signum, "error": error,
        "stdout": run.stdout, "stderr": run.stderr, "output_truncated": run.truncated,
        "duration_s": round(run.duration_s, 6), "cpu_time_s": round(cpu, 6),
        "max_rss_mb": round(run.usage.ru_maxrss / 1024.0, 3),
    }


def _classify(run: child.Finished, exit_code: Optional[int], signum: Optional[int], cpu: float,
              limits: proto.WireLimits) -> Tuple[str, Optional[str]]:
    """(status, error), first rule that applies: the agent's own wall-time kill -> timeout;
    output cap -> output_limit; the child's report: ok (with exit status 0) / error / oom /
    exited (SystemExit); SIGXCPU, or SIGKILL after using the whole CPU budget (RLIMIT_CPU's hard
    limit) -> timeout; any other signal -> exited with `signal` set; anything else (os._exit, a
    crash before reporting) -> exited. OOM is only ever reported from a MemoryError: with
    RLIMIT_AS an allocation fails instead of inviting the kernel's OOM killer."""
    cpu_limit = max(1, math.ceil(limits["cpu_time_s"]))
    if run.reason == "timeout":
        return "timeout", "wall-time limit of %gs exceeded" % limits["wall_time_s"]
    if run.reason == "output_limit":
        cap = child.output_cap(limits)  # the cap that applied, which may be below max_output_bytes
        if cap < limits["max_output_bytes"]:
            return "output_limit", "output exceeded %d bytes, the most the agent keeps" % cap
        return "output_limit", "output exceeded %d bytes" % cap
    kind, detail = run.report or ("", None)
    if kind == "ok" and exit_code == 0:
        return "ok", None
    if kind == "error" or kind == "oom":
        return kind, str(detail)
    if kind == "exited":
        return "exited", "SystemExit with status %s before the end of the program" % detail
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu >= cpu_limit - 0.05):
        return "timeout", "cpu-time limit of %ds exceeded" % cpu_limit
    if signum is not None:
        return "exited", "killed by %s" % _signal_name(signum)
    return "exited", "process exited with code %s before the end of the program" % exit_code


def run_program(code: str, limits: proto.WireLimits, cwd: str, exclusive: bool) -> Dict[str, Any]:
    token = secrets.token_hex(16)
    run = child.run_child(lambda report: _program_main(code, limits["memory_mb"], report), token, cwd,
                     limits, exclusive)
    return program_result(run, limits)


def run_command(command: str, cwd: str, limits: proto.WireLimits, exclusive: bool) -> Dict[str, Any]:
    token = secrets.token_hex(16)
    run = child.run_child(lambda report: _command_main(command, limits["memory_mb"], report), token, cwd,
                     limits, exclusive)
    if os.WIFEXITED(run.wait_status):
        exit_code = os.WEXITSTATUS(run.wait_status)
    else:
        exit_code = -os.WTERMSIG(run.wait_status)  # subprocess convention
    return {"exit_code": exit_code, "stdout": run.stdout, "stderr": run.stderr,
            "timed_out": run.reason == "timeout", "output_truncated": run.truncated,
            "duration_s": round(run.duration_s, 6)}


def warm_up() -> None:
    """Pre-import what programs commonly use, so every forked child starts warm."""
    for name in PREIMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    procs.set_dumpable(False)
    gc.freeze()  # keep the warm heap out of the children's GC passes: fewer copy-on-write faults


# --------------------------------------------------------------------------------- serving


class Channel:
    """The byte stream to the host. For stdio, the original fds 0/1 are moved aside and fds 0/1
    pointed at /dev/null and stderr, so a stray print can never corrupt the protocol."""

    def __init__(self, spec: str) -> None:
        if spec == "stdio":
            self.rfd, self.wfd = os.dup(0), os.dup(1)  # dup() fds are close-on-exec
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            os.dup2(2, 1)
        else:
            self.rfd = self.wfd = os.open(spec, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)

    def read(self) -> bytes:
        return os.read(self.rfd, 1 << 20)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view):]


class Agent:
    """Serves requests from one channel until EOF or ``shutdown``."""

    def __init__(self, channel: Channel, exclusive: bool) -> None:
        self.channel = channel
        self.exclusive = exclusive
        self.stopping = False
        self.runs = 0
        self.handlers: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
            "ping": lambda message: {},
            "run_program": self.run_program,
            "run_command": self.run_command,
            "write_file": self.write_file,
            "read_file": self.read_file,
            "shutdown": self.shutdown,
        }

    def serve(self, hello: proto.Hello) -> None:
        lines = proto.LineBuffer()
        self.send(dict(hello))
        while not self.stopping:
            data = self.channel.read()
            if not data:
                return  # the host is gone
            lines.feed(data)
            while not self.stopping:
                try:
                    line = lines.next_line()
                except proto.MessageError as exc:
                    self.send(proto.error_reply(None, "bad_request", str(exc)))
                    continue
                if line is None:
                    break
                self.send(self.handle(line))

    def send(self, message: Dict[str, Any]) -> None:
        try:
            line = proto.encode(message)
        except proto.MessageError as exc:  # cannot happen with capped outputs; never crash
            line = proto.encode(proto.error_reply(message.get("id"), "internal", str(exc)))
        self.channel.write(line)

    def handle(self, line: bytes) -> Dict[str, Any]:
        """One request line in, one reply out; never raises."""
        request_id: Optional[int] = None
        try:
            message = proto.decode(line)
            raw_id = message.get("id")
            if isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id > 0:
                request_id = raw_id
            else:
                raise proto.MessageError("a request needs a positive integer 'id'")
            op = message.get("op")
            handler = self.handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise proto.MessageError("unknown op %.50r; this agent knows %s" % (op, ", ".join(self.handlers)))
            return proto.ok_reply(request_id, handler(message))
        except proto.MessageError as exc:
            return proto.error_reply(request_id, "bad_request", str(exc))
        except OSError as exc:
            extra: Dict[str, Any] = {"errno": exc.errno or 0}
            if isinstance(exc.filename, str):
                extra["filename"] = exc.filename
            return proto.error_reply(request_id, "os_error", exc.strerror or str(exc), **extra)
        except procs.AgentFailure as exc:
            return proto.error_reply(request_id, "sandbox", str(exc))
        except Exception as exc:
            traceback.print_exc()  # to the agent's stderr, which the host keeps for diagnostics
            return proto.error_reply(request_id, "internal", "%s: %s" % (type(exc).__name__, exc))

    def run_program(self, message: Dict[str, Any]) -> Dict[str, Any]:
        code = proto.field(message, "code", str)
        limits = proto.check_limits(message.get("limits"))
        self.runs += 1
        try:
            workspace = files.Workspace(files.TMP_DIR, self.runs, clean_tmp=self.exclusive)
        except OSError as exc:
            raise procs.AgentFailure("cannot create a scratch directory: %s" % exc) from exc
        try:
            return run_program(code, limits, workspace.path, self.exclusive)
        finally:
            workspace.cleanup()

    def run_command(self, message: Dict[str, Any]) -> Dict[str, Any]:
        command = proto.field(message, "command", str)
        cwd = files.resolve(proto.field(message, "cwd", str))
        limits = proto.check_limits(message.get("limits"))
        if not os.path.isdir(cwd):
            raise OSError(2, "no such directory", cwd)
        return run_command(command, cwd, limits, self.exclusive)

    def write_file(self, message: Dict[str, Any]) -> Dict[str, Any]:
        path = files.resolve(proto.field(message, "path", str))
        data = proto.b64decode(proto.field(message, "data_b64", str))
        return {"size": files.write_file(path, data)}

    def read_file(self, message: Dict[str, Any]) -> Dict[str, Any]:
        limit = proto.MAX_LINE_BYTES // 4 * 3 - 4096  # what still fits in one line as base64
        data = files.read_file(files.resolve(proto.field(message, "path", str)), limit)
        return {"data_b64": proto.b64encode(data)}

    def shutdown(self, message: Dict[str, Any]) -> Dict[str, Any]:
        self.stopping = True
        return {}


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vmpool-agent", description="vmpool guest agent")
    parser.add_argument("--channel", default="stdio", help="'stdio' or a device path (virtio-serial)")
    parser.add_argument("--exclusive", action="store_true",
                        help="the agent owns its PID namespace/VM: kill all leftovers after each run")
    parser.add_argument("--fake-protocol", type=int, default=None,
                        help="announce this protocol version in the hello (tests of version checks)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    if args.exclusive:
        refusal = procs.exclusive_refusal()
        if refusal:
            print("vmpool-agent: refusing --exclusive: %s" % refusal, file=sys.stderr)
            return 2
    try:
        procs.install_program_filter()
    except OSError as exc:  # never run programs that could take the agent down
        print("vmpool-agent: %s" % exc, file=sys.stderr)
        return 2
    channel = Channel(args.channel)
    warm_up()
    protocol = proto.PROTOCOL_VERSION if args.fake_protocol is None else args.fake_protocol
    python = "%d.%d.%d" % sys.version_info[:3]
    Agent(channel, args.exclusive).serve(proto.hello(AGENT_VERSION, python, os.getpid(), protocol))
    return 0


if __name__ == "__main__":
    sys.exit(main())
