"""What a child of the agent runs, and what its end means: the wrapper that runs a program as
``__main__`` and reports how it ended on the status pipe (``started``, then ``ok``, ``exited``,
``oom`` or ``error``), ``/bin/sh -c`` for a command, and the mapping of a finished run to
ExecResult fields (`program_result`, `_classify`). The rules of that mapping, and how a program
can forge its own report, are stated in the docstring of ``_agent.py``; forking and
supervising the child is ``_agent_child.py``.

Part of the guest side (see ``_agent.py``): stdlib only, imported as ``vmpool._agent_run`` on
the host and as the top-level ``_agent_run`` inside the sandbox.
"""

from __future__ import annotations

import builtins
import linecache
import math
import os
import random
import secrets
import signal
import sys
import traceback
import types
from typing import Any, Dict, List, Optional, Tuple

if __package__:  # imported as vmpool._agent_run (tests, type checking)
    from . import _agent_child as child
    from . import _protocol as proto
else:  # a top-level module inside the sandbox, imported by _agent.py next to its siblings
    import _agent_child as child  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]

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
            pass  # e.g. a pipe whose reader is gone: reporting how the program ended matters more


_type = type  # bound before any program runs, which may rebind builtins.type


def _one_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:
        text = ""
    name = _type(exc).__name__
    line = " ".join(("%s: %s" % (name, text) if text else name).splitlines())
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
    exit_now = child.EXIT  # a local: the program may rebind the EXIT of the guest modules in sys.modules
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
        exit_now(status)
    except MemoryError as exc:
        namespace.clear()  # free what we can so that reporting works
        _print_traceback(exc)
        _flush(streams)
        report("oom", _one_line(exc))
        exit_now(1)
    except BaseException as exc:
        _print_traceback(exc)
        _flush(streams)
        report("error", _one_line(exc))
        exit_now(1)
    _flush(streams)
    report("ok", None)
    exit_now(0)


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


def program_result(run: child.Finished, limits: proto.WireLimits, oom_killed: bool = False) -> Dict[str, Any]:
    """Map a finished run to ExecResult fields (see vmpool._types.ExecStatus)."""
    exit_code = os.WEXITSTATUS(run.wait_status) if os.WIFEXITED(run.wait_status) else None
    signum = os.WTERMSIG(run.wait_status) if os.WIFSIGNALED(run.wait_status) else None
    cpu = run.usage.ru_utime + run.usage.ru_stime
    status, error = _classify(run, exit_code, signum, cpu, limits, oom_killed)
    return {
        "status": status, "exit_code": exit_code, "signal": signum, "error": error,
        "stdout": run.stdout, "stderr": run.stderr, "output_truncated": run.truncated,
        "duration_s": round(run.duration_s, 6), "cpu_time_s": round(cpu, 6),
        "max_rss_mb": round(run.usage.ru_maxrss / 1024.0, 3),
    }


def oom_kills() -> int:
    """How many processes the kernel's OOM killer has killed since boot (0 if unknown)."""
    try:
        with open("/proc/vmstat", "rb") as handle:
            for line in handle:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _classify(run: child.Finished, exit_code: Optional[int], signum: Optional[int], cpu: float,
              limits: proto.WireLimits, oom_killed: bool = False) -> Tuple[str, Optional[str]]:
    """(status, error), first rule that applies: the agent's own wall-time kill -> timeout;
    the child's report: ok (with exit status 0) / error / oom / exited (SystemExit); SIGXCPU,
    or SIGKILL after using the whole CPU budget (RLIMIT_CPU's hard limit) -> timeout; any other
    signal -> exited with `signal` set; anything else (os._exit, a crash before reporting) ->
    exited. OOM comes from a MemoryError (RLIMIT_AS makes an allocation fail first), or from a
    SIGKILL while the kernel's OOM killer struck (`oom_killed`): when the processes of a VM
    together exhaust its RAM, the killer picks a program (see ``_prefer_for_oom_kill``).
    Output beyond the cap plays no part: it is
    only ``output_truncated``, so a program that prints too much ends as it would have anyway."""
    cpu_limit = max(1, math.ceil(limits["cpu_time_s"]))
    if run.reason == "timeout":
        return "timeout", "wall-time limit of %gs exceeded" % limits["wall_time_s"]
    kind, detail = run.report or ("", None)
    if kind == "ok" and exit_code == 0:
        return "ok", None
    if kind == "error" or kind == "oom":
        return kind, str(detail)
    if kind == "exited":
        return "exited", "SystemExit with status %s before the end of the program" % detail
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu >= cpu_limit - 0.05):
        return "timeout", "cpu-time limit of %ds exceeded" % cpu_limit
    if signum == signal.SIGKILL and oom_killed:
        return "oom", "killed by the kernel's OOM killer: the sandbox ran out of memory"
    if signum is not None:
        return "exited", "killed by %s" % _signal_name(signum)
    return "exited", "process exited with code %s before the end of the program" % exit_code


def run_program(code: str, limits: proto.WireLimits, cwd: str, sweep: Optional[child.Sweep]) -> Dict[str, Any]:
    token = secrets.token_hex(16)
    kills_before = oom_kills()
    run = child.run_child(lambda report: _program_main(code, limits["memory_mb"], report), token, cwd,
                          limits, sweep)
    return program_result(run, limits, oom_kills() > kills_before)


def run_command(command: str, cwd: str, limits: proto.WireLimits, sweep: Optional[child.Sweep]) -> Dict[str, Any]:
    token = secrets.token_hex(16)
    run = child.run_child(lambda report: _command_main(command, limits["memory_mb"], report), token, cwd,
                          limits, sweep)
    if os.WIFEXITED(run.wait_status):
        exit_code = os.WEXITSTATUS(run.wait_status)
    else:
        exit_code = -os.WTERMSIG(run.wait_status)  # subprocess convention
    return {"exit_code": exit_code, "stdout": run.stdout, "stderr": run.stderr,
            "timed_out": run.reason == "timeout", "output_truncated": run.truncated,
            "duration_s": round(run.duration_s, 6)}
