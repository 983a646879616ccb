"""The agent's view of the processes around it, through /proc: sweeping every other process
away (``--exclusive``), counting tasks for RLIMIT_NPROC, and shielding the agent from the
programs it runs (the program filter, non-dumpable).

Part of the guest side (see ``_agent.py``): stdlib only, imported as ``vmpool._agent_procs`` on
the host and as the top-level ``_agent_procs`` inside the sandbox.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Set, Tuple

if __package__:  # imported as vmpool._agent_procs (tests, type checking)
    from . import _seccomp as seccomp
else:  # a top-level module inside the sandbox, imported by _agent.py next to its siblings
    import _seccomp as seccomp  # type: ignore[no-redef]

PF_KTHREAD = 0x00200000  # /proc/<pid>/stat flags: kernel thread (never ours to kill, in a VM)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2  # <linux/prctl.h>, <linux/seccomp.h>


class AgentFailure(Exception):
    """The sandbox itself is broken or dirty (reply kind ``sandbox``): the host must discard it.
    Defined here, the lowest of the agent's modules, because the modules above raise it too."""


class Stat(NamedTuple):
    state: str
    ppid: int
    session: int
    flags: int


def _stat(pid: int) -> Optional[Stat]:
    """What /proc says of a process, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # comm may contain spaces and parentheses
    return Stat(fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[6]))


def _ancestors(pid: int) -> List[int]:
    chain: List[int] = []
    info = _stat(pid)
    while info is not None and info.ppid > 0 and len(chain) < 64:
        chain.append(info.ppid)
        info = _stat(info.ppid)
    return chain


def exclusive_refusal() -> Optional[str]:
    """Why --exclusive would be unsafe here, or None."""
    chain = _ancestors(os.getpid())
    if len(chain) > 2:
        return "it has %d ancestor processes, so it does not own its PID namespace" % len(chain)
    return None


def _others(spare: Set[int]) -> List[Tuple[int, str]]:
    """(pid, state) of every process of our uid but this agent, its ancestors, the members of
    the sessions in `spare` and their descendants. Others are not programs' doing: kernel
    threads, and in a VM the root-owned init and the template's start command (programs cannot
    create processes of another uid)."""
    protected = set(_ancestors(os.getpid()))
    protected.add(os.getpid())
    uid = os.getuid()
    mine: Dict[int, Stat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in protected:
            info = _stat(int(name))
            try:
                owner = os.stat("/proc/" + name).st_uid
            except OSError:
                continue  # gone
            if info is not None and not info.flags & PF_KTHREAD and owner == uid:
                mine[int(name)] = info
    return [(pid, info.state) for pid, info in mine.items() if not _spared(pid, mine, spare)]


def _spared(pid: int, known: Dict[int, Stat], spare: Set[int]) -> bool:
    """Whether `pid` or one of its ancestors (among `known`) is in a session of `spare`."""
    for _ in range(64):
        info = known.get(pid)
        if info is None:
            return False
        if info.session in spare:
            return True
        pid = info.ppid
    return False


def _reap(pids: List[int]) -> None:
    """Reap those of `pids` that are zombie children of the agent (never waitpid(-1): the
    agent's background processes are its children too, reaped by their own threads)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def sweep_processes(spare: Callable[[], Set[int]] = set, timeout: float = 5.0) -> None:
    """SIGKILL every other process and wait until all are reaped; AgentFailure if some persist.
    Processes in the sessions `spare()` returns, and their descendants, are left alone.

    Repeats the scan because a fork bomb may fork between scan and kill; waits for zombies too,
    because an unreaped process still counts against the next program's RLIMIT_NPROC.
    """
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        others = _others(spare())
        for pid, state in others:
            if state not in ("Z", "X"):
                send_signal(pid, signal.SIGKILL)
        _reap([pid for pid, _ in others])  # our own children; orphans go to the namespace's or VM's init
        if not others:
            return
        if time.monotonic() > deadline:
            raise AgentFailure("processes survived SIGKILL: %s" % sorted(pid for pid, _ in others)[:20])
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def send_signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except OSError:
        pass  # already gone


def task_count() -> int:
    """Tasks (threads) of our uid now: RLIMIT_NPROC counts them too, so they are added on top.
    A process whose status cannot be read (the bwrap driver hides its init, which runs as our
    uid) counts as one task: erring high loosens the limit by one, erring low would tighten it."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/status" % name) as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            total += 1
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == os.getuid():
            total += int(fields.get("Threads", "1"))
    return total


def set_dumpable(on: bool) -> None:
    """Non-dumpable: processes of the same uid cannot open the agent's /proc/<pid>/mem or fds."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, int(on), 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        pass


def protected_ids() -> List[int]:
    """The agent, its ancestors and their process groups: what programs may not signal, limit or
    reschedule (see `_seccomp.build_program_filter`). Fixed for the agent's lifetime: inside a
    sandbox its ancestors are the sandbox's init, which lives as long as the agent does."""
    pids = [os.getpid()] + _ancestors(os.getpid())
    ids = set(pids)
    for pid in pids:
        try:
            ids.add(os.getpgid(pid))
        except OSError:
            pass  # gone, or not visible from this PID namespace
    return sorted(number for number in ids if number > 0)  # 0: a group outside our namespace


def install_program_filter() -> bool:
    """Install the program filter on this process, for good: every child forked later is born
    with it (once, instead of in each child: no cost per program). It refuses nothing the agent
    does, which never signals, limits or reschedules itself or its ancestors, nor uses IPC.
    False where `_seccomp` has no filter (not x86_64); OSError if the kernel refuses it."""
    return _install(seccomp.build_program_filter(protected_ids()), "program filter")


def install_sandbox_filter() -> bool:
    """Install the sandbox filter (`_seccomp.build_filter`, what bwrap applies to a whole
    bwrap sandbox) on this process, where nothing outside applied it (a VM): no keyrings, no
    namespaces, no kernel modules, ... for the agent and every program. Same returns."""
    return _install(seccomp.build_filter(), "sandbox filter")


def _install(program: Optional[bytes], what: str) -> bool:
    if program is None:
        return False

    class SockFprog(ctypes.Structure):  # struct sock_fprog; the kernel copies the program
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    code = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(code))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    arg = ctypes.c_ulong  # prctl is variadic: pass full-width arguments, not C ints
    # no-new-privs is required for an unprivileged filter (bwrap has set it already)
    if (prctl(arg(PR_SET_NO_NEW_PRIVS), arg(1), arg(0), arg(0), arg(0)) != 0
            or prctl(arg(PR_SET_SECCOMP), arg(SECCOMP_MODE_FILTER), ctypes.byref(fprog), arg(0), arg(0)) != 0):
        number = ctypes.get_errno()
        raise OSError(number, "cannot install the %s: %s" % (what, os.strerror(number)))
    return True
