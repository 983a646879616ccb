"""Running one child of the agent: fork it with fresh pipes and rlimits, supervise it until it
exits or its wall time runs out, capture its stdout+stderr up to a cap (draining and dropping
the rest, so output never decides how a run ends) and its private status pipe, kill it and
whatever it left, and collect how it ended (`Finished`). What the child runs, and what its
end means, is ``_agent_run.py``.

Part of the guest side (see ``_agent.py``): stdlib only, imported as ``vmpool._agent_child`` on
the host and as the top-level ``_agent_child`` inside the sandbox.
"""

from __future__ import annotations

import json
import math
import os
import resource
import select
import signal
import time
from typing import Any, Callable, NamedTuple, Optional, Tuple

if __package__:  # imported as vmpool._agent_child (tests, type checking)
    from . import _agent_procs as procs
    from . import _protocol as proto
else:  # a top-level module inside the sandbox, imported by _agent.py next to its siblings
    import _agent_procs as procs  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]

STATUS_CAP = 64 * 1024  # bytes of the private status pipe kept
STDERR_TAIL = 16 * 1024  # bytes at the end of stderr kept beyond the output cap (tracebacks)
SETUP_FAILED = 125  # child exit code when it could not even start the program
MAX_OUTPUT_CAP = proto.MAX_OUTPUT_BYTES  # stdout+stderr kept at most: the reply must fit in one line
MAX_POLL_S = 3600.0  # longest single poll(): its timeout is a C int of milliseconds
MIB = 1024 * 1024
EXIT = os._exit  # captured before any program runs: a program may replace os._exit
Report = Callable[[str, Any], None]
Body = Callable[[Report], None]
Sweep = Callable[[], None]


class Finished(NamedTuple):
    reason: str  # "exited" | "timeout"
    wait_status: int
    usage: Any  # resource.struct_rusage
    stdout: str
    stderr: str
    truncated: bool
    duration_s: float
    report: Optional[Tuple[str, Any]]  # (kind, detail) the child wrote after the token


class Capture:
    """stdout+stderr of one child up to a shared byte cap, and its private status pipe.

    Every pipe is read to its end, whatever the caps: what is beyond them is dropped, so the
    agent's memory stays bounded while a writer past the cap never blocks on a full pipe (a
    program that prints too much goes on, and ends like any other; `truncated` records it).
    """

    def __init__(self, out_fd: int, err_fd: int, status_fd: int, cap: int) -> None:
        self.out_fd, self.err_fd, self.status_fd = out_fd, err_fd, status_fd
        self.buffers = {out_fd: bytearray(), err_fd: bytearray(), status_fd: bytearray()}
        self.open = set(self.buffers)
        self.cap, self.used, self.truncated = cap, 0, False
        # The end of stderr is kept even past the cap: a program that prints a lot and then
        # fails must not lose the traceback that says why.
        self.err_tail, self.err_dropped = bytearray(), 0

    def pump(self, fd: int) -> None:
        """Read one chunk from fd (it must be readable); keeps what fits within the caps."""
        data = os.read(fd, 65536)
        if not data:
            self.open.discard(fd)
            return
        if fd == self.status_fd:
            room = STATUS_CAP - len(self.buffers[fd])
        else:
            room = self.cap - self.used
            self.truncated = self.truncated or len(data) > room
            self.used += min(len(data), max(room, 0))
            if fd == self.err_fd and len(data) > max(room, 0):
                dropped = data[max(room, 0):]
                self.err_dropped += len(dropped)
                self.err_tail = (self.err_tail + dropped)[-STDERR_TAIL:]
        self.buffers[fd] += data[:max(room, 0)]

    def drain(self, timeout: float) -> None:
        """Read until every pipe is at EOF (all writers dead) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while self.open:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for fd in select.select(sorted(self.open), [], [], remaining)[0]:
                self.pump(fd)

    def report(self, token: str) -> Optional[Tuple[str, Any]]:
        """The child's first report with this token. A ``setup`` report after ``started`` is
        skipped: only the program writes after that marker, and a program must not be able to
        pass its own failure off as a broken sandbox."""
        started = False
        for line in bytes(self.buffers[self.status_fd]).split(b"\n"):
            parts = line.decode("utf-8", "replace").split(" ", 2)
            if len(parts) == 3 and parts[0] == token:
                try:
                    kind, detail = parts[1], json.loads(parts[2])
                except ValueError:
                    return None
                if kind == "started":
                    started = True
                elif not (started and kind == "setup"):
                    return kind, detail
        return None

    def text(self, fd: int) -> str:
        kept = bytes(self.buffers[fd])
        if fd == self.err_fd and self.err_dropped:
            skipped = self.err_dropped - len(self.err_tail)
            if skipped:
                kept += b"\n[vmpool: %d bytes of stderr left out; its last %d bytes follow]\n" % (skipped, len(self.err_tail))
            kept += bytes(self.err_tail)
        return kept.decode("utf-8", "replace")

    def close(self) -> None:
        for fd in self.buffers:
            os.close(fd)


def _apply_limits(limits: proto.WireLimits, baseline_tasks: int) -> None:
    """Every limit but memory, which the program and command paths set themselves."""
    cpu = max(1, math.ceil(limits["cpu_time_s"]))
    _set_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
    tasks = limits["max_processes"] + baseline_tasks
    _set_limit(resource.RLIMIT_NPROC, tasks, tasks)
    _set_limit(resource.RLIMIT_FSIZE, limits["max_file_size_mb"] * MIB, limits["max_file_size_mb"] * MIB)
    _set_limit(resource.RLIMIT_CORE, 0, 0)


def _set_limit(which: int, soft: int, hard: int) -> None:
    current_hard = resource.getrlimit(which)[1]
    if current_hard != resource.RLIM_INFINITY:  # an unprivileged process cannot raise it
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    # setrlimit takes a signed 64-bit value: anything larger (memory_mb=2**50) means no limit
    soft, hard = (resource.RLIM_INFINITY if value >= 2**63 else value for value in (soft, hard))
    resource.setrlimit(which, (soft, hard))


def address_space() -> int:
    """Bytes of address space this process maps now: VmSize, the first field of
    /proc/self/statm (in pages), which is simpler to parse than /proc/self/status."""
    fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 256)
    finally:
        os.close(fd)
    return int(data.split()[0]) * resource.getpagesize()


def limit_address_space(total: int) -> None:
    """RLIMIT_AS: fails allocations (MemoryError) beyond `total` bytes of address space."""
    _set_limit(resource.RLIMIT_AS, total, total)


def _child_setup(out_w: int, err_w: int, status_w: int, cwd: str,
                 limits: proto.WireLimits, baseline_tasks: int) -> None:
    os.setsid()  # own session and process group: killpg reaches everything it spawns
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.closerange(3, status_w)  # the protocol channel and all agent fds must not leak
    os.closerange(status_w + 1, 1 << 20)
    os.chdir(cwd)
    procs.set_dumpable(True)  # the program is an ordinary process; only the agent is shielded
    _prefer_for_oom_kill()
    _apply_limits(limits, baseline_tasks)


def _prefer_for_oom_kill() -> None:
    """Make the program (and what it spawns) the kernel's first victim when the sandbox runs out
    of memory (a VM's RAM is shared by all its processes), so the agent survives to report
    ``oom``. Raising one's own score needs no privilege."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass


def output_cap(limits: proto.WireLimits) -> int:
    """The stdout+stderr cap that applies: max_output_bytes, at most MAX_OUTPUT_CAP."""
    return min(limits["max_output_bytes"], MAX_OUTPUT_CAP)


def run_child(body: Body, token: str, cwd: str, limits: proto.WireLimits,
              sweep: Optional[Sweep]) -> Finished:
    """Fork a child that runs `body` under `limits`; supervise, kill leftovers (its process
    group, then everything `sweep` kills, if given: the agent's ``--exclusive`` sweep), collect."""
    try:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()  # non-inheritable: closed if the child execs
        baseline = procs.task_count()
    except OSError as exc:
        raise procs.AgentFailure("cannot prepare a child: %s" % exc) from exc

    # Bound here, before any program runs: a program may rebind os.write or json.dumps (to
    # rewrite the report it is about to fail with); reaching these takes the wrapper's frames.
    write, dumps = os.write, json.dumps

    def report(kind: str, detail: Any) -> None:
        try:
            write(status_w, ("%s %s %s\n" % (token, kind, dumps(detail))).encode())
        except (OSError, ValueError, TypeError):
            pass

    started = time.monotonic()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (out_r, out_w, err_r, err_w, status_r, status_w):
            os.close(fd)
        raise procs.AgentFailure("cannot fork: %s" % exc) from exc
    if pid == 0:  # child: never returns
        try:
            _child_setup(out_w, err_w, status_w, cwd, limits, baseline)
            body(report)
        except BaseException as exc:
            report("setup", "%s: %s" % (type(exc).__name__, exc))
        EXIT(SETUP_FAILED)
    for fd in (out_w, err_w, status_w):
        os.close(fd)
    capture = Capture(out_r, err_r, status_r, output_cap(limits))
    try:
        return _supervise_and_collect(pid, capture, token, limits, sweep, started)
    finally:
        capture.close()


def _supervise_and_collect(pid: int, capture: Capture, token: str, limits: proto.WireLimits,
                           sweep: Optional[Sweep], started: float) -> Finished:
    reason = "exited"
    try:
        reason = _supervise(pid, capture, started + limits["wall_time_s"])
    finally:  # whatever happened, the child and its process group die and the child is reaped
        duration = time.monotonic() - started
        procs.send_signal(pid, signal.SIGKILL, group=True)  # background helpers of the program, if any
        procs.send_signal(pid, signal.SIGKILL)  # in case it was killed before its setsid()
        _, wait_status, usage = os.wait4(pid, 0)
    if sweep is not None:
        sweep()  # also closes every pipe writer, so the drain below hits EOF
    capture.drain(2.0 if sweep is not None else 0.2)
    report = capture.report(token)
    if report is not None and report[0] == "setup":
        raise procs.AgentFailure("the child could not start the program: %s" % (report[1],))
    return Finished(reason, wait_status, usage, capture.text(capture.out_fd),
                    capture.text(capture.err_fd), capture.truncated, duration, report)


def _supervise(pid: int, capture: Capture, deadline: float) -> str:
    """Pump output until the child exits ("exited") or time runs out ("timeout"). The exit is
    watched with a pidfd, not pipe EOF, because a daemonized grandchild may keep the pipes open.
    The deadline is checked before every poll and each pump reads one bounded chunk, so a
    flood of output (always ready to read) cannot keep the loop from timing the child out."""
    pidfd = pidfd_open(pid)
    poller = select.poll()
    for fd in capture.open:
        poller.register(fd, select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            wait = min(remaining, MAX_POLL_S) if pidfd >= 0 else min(remaining, 0.005)
            for fd, _event in poller.poll(max(1, math.ceil(wait * 1000))):
                if fd == pidfd:
                    return "exited"
                capture.pump(fd)
                if fd not in capture.open:
                    poller.unregister(fd)
            if pidfd < 0 and has_exited(pid):
                return "exited"
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def pidfd_open(pid: int) -> int:
    opener = getattr(os, "pidfd_open", None)  # Python >= 3.9 on Linux >= 5.3
    if opener is None:
        return -1
    try:
        return int(opener(pid))
    except OSError:
        return -1


def has_exited(pid: int) -> bool:
    """Polling fallback without pidfd; WNOWAIT leaves the zombie (and its group id) for its
    reaper (wait4 here, the pump of a background process) to collect."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
