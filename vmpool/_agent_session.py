"""The agent's background processes (E2B's commands) as a whole: the table of them and the
``process_*`` ops of ``_protocol``. One process, its start and its pump thread, is
``_agent_process.py``.

The handlers run on the agent's reader thread and never block for long (``process_start``
hands the start to the new process's pump thread). The table keeps running processes and ended
ones whose exit nobody has collected yet (at most ``MAX_ENDED``; an ended one whose pid is
reused is forgotten). The ``--exclusive`` sweep after every program spares the sessions of the
processes not reaped yet (`spared`; a program cannot join a session) and their members'
descendants; a daemon that leaves the session and loses its parent is swept. No process is
forked while a sweep runs (`Manager.spawning`), so none can be caught between its fork and
its entry in the table. Background processes die with the sandbox, and the agent kills them
when it shuts down.

Part of the guest side (see ``_agent.py``): stdlib only, imported as ``vmpool._agent_session`` on
the host and as the top-level ``_agent_session`` inside the sandbox.
"""

from __future__ import annotations

import collections
import errno
import math
import os
import signal
import threading
from typing import Any, Callable, Deque, Dict, Optional, Set

if __package__:  # imported as vmpool._agent_session (tests, type checking)
    from . import _agent_channel as channel
    from . import _agent_files as files
    from . import _agent_process as proc
    from . import _protocol as proto
else:  # a top-level module inside the sandbox, imported by _agent.py next to its siblings
    import _agent_channel as channel  # type: ignore[no-redef]
    import _agent_files as files  # type: ignore[no-redef]
    import _agent_process as proc  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]

BASE_ENV = dict(os.environ)  # the agent's environment as the driver started it
Handler = Callable[[Dict[str, Any], int, int], Optional[Dict[str, Any]]]


class Manager(proc.Registry):
    """The background processes of one agent, and the ``process_*`` handlers. Handlers run on
    the agent's reader thread and never block for long; each process has its pump thread."""

    def __init__(self, outbox: channel.Outbox) -> None:
        self.outbox = outbox
        self.lock = threading.Lock()  # the table
        self.table: Dict[int, proc.Process] = {}
        self.ended_order: Deque[proc.Process] = collections.deque()
        self.spawning = threading.Lock()  # held while a process is forked, and by the sweep
        self.handlers: Dict[str, Handler] = {
            "process_start": self.start, "process_connect": self.connect,
            "process_input": self.input, "process_close_stdin": self.close_stdin,
            "process_signal": self.signal, "process_list": self.list,
        }

    # -- bookkeeping ---------------------------------------------------------------------------

    def spawn(self, process: proc.Process) -> None:
        """Start `process` (its pump thread calls this) and enter it in the table."""
        with self.lock:
            if sum(1 for known in self.table.values() if not known.reaped) >= proto.MAX_PROCESSES:
                raise OSError(errno.EAGAIN, "%d background processes are running already" % proto.MAX_PROCESSES)
        with self.spawning:  # the sweep must not see the child before it is in the table
            proc.spawn(process)
            process.running = True
            with self.lock:
                stale = self.table.get(process.pid)
                if stale is not None:  # an uncollected exit whose pid is now reused
                    self._drop_ended(stale)
                self.table[process.pid] = process

    def get(self, pid: int) -> proc.Process:
        with self.lock:
            process = self.table.get(pid)
        if process is None:
            raise OSError(errno.ESRCH, "no background process with pid %d" % pid)
        return process

    def forget(self, process: proc.Process) -> None:
        with self.lock:
            if self.table.get(process.pid) is process:
                del self.table[process.pid]
            if process in self.ended_order:
                self.ended_order.remove(process)

    def ended(self, process: proc.Process) -> None:
        """Keep an exit nobody has collected, for a later ``process_connect`` (unless its pid
        belongs to a new process already)."""
        with self.lock:
            if self.table.setdefault(process.pid, process) is not process:
                return
            self.ended_order.append(process)
            while len(self.ended_order) > proto.MAX_ENDED:
                self._drop_ended(self.ended_order[0])

    def _drop_ended(self, process: proc.Process) -> None:
        """Forget an ended process (caller holds `lock`)."""
        if self.table.get(process.pid) is process:
            del self.table[process.pid]
        if process in self.ended_order:
            self.ended_order.remove(process)

    def spared(self) -> Set[int]:
        """Session ids the sweep must spare: those of processes not reaped yet (a process's
        session id is its pid)."""
        with self.lock:
            return {process.pid for process in self.table.values() if not process.reaped}

    def kill_all(self) -> None:
        with self.lock:
            processes = list(self.table.values())
        for process in processes:
            with process.state_lock:
                if process.running:
                    proc.kill_group(process.pid)

    # -- handlers ------------------------------------------------------------------------------

    def start(self, message: Dict[str, Any], request_id: int, generation: int) -> Optional[Dict[str, Any]]:
        cmd = _text(proto.field(message, "cmd", str), "cmd")
        envs = {} if message.get("envs") is None else message["envs"]
        if not isinstance(envs, dict) or not all(
                isinstance(key, str) and isinstance(value, str) and key and "=" not in key
                and "\0" not in key + value for key, value in envs.items()):
            raise proto.MessageError("field 'envs' must map names (no '=' or NUL) to strings")
        cwd = message.get("cwd")
        if cwd is None:
            home = BASE_ENV.get("HOME", "")
            cwd = home if home.startswith("/") and os.path.isdir(home) else files.TMP_DIR
        else:
            cwd = files.resolve(proto.field(message, "cwd", str))
            if not os.path.isdir(cwd):
                raise OSError(errno.ENOENT, "no such directory", cwd)
        stdin = message.get("stdin", False)
        if not isinstance(stdin, bool):
            raise proto.MessageError("field 'stdin' must be bool")
        timeout_s = 0.0 if message.get("timeout_s") is None else message["timeout_s"]
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
                math.isfinite(timeout_s) and timeout_s >= 0):
            raise proto.MessageError("field 'timeout_s' must be null or a finite number >= 0")
        tag = message.get("tag")
        if tag is not None and not isinstance(tag, str):
            raise proto.MessageError("field 'tag' must be a string or null")
        process = proc.Process(self, cmd, tag, cwd, dict(BASE_ENV, **envs), stdin, float(timeout_s))
        threading.Thread(target=process.run, args=(proc.Subscriber(request_id, generation),),
                         name="vmpool-process", daemon=True).start()
        return None  # the pump thread answers

    def connect(self, message: Dict[str, Any], request_id: int, generation: int) -> Optional[Dict[str, Any]]:
        self.get(_pid(message)).connect(proc.Subscriber(request_id, generation))
        return None

    def input(self, message: Dict[str, Any], request_id: int, generation: int) -> Optional[Dict[str, Any]]:
        process = self.get(_pid(message))
        data = proto.b64decode(proto.field(message, "data_b64", str))
        with process.state_lock:
            if not process.stdin_open or process.stdin_closing:
                raise OSError(errno.EPIPE, "the stdin of process %d is not open" % process.pid)
            if process.stdin_pending + len(data) > proto.MAX_STDIN_PENDING:
                raise OSError(errno.EAGAIN, "process %d has %d bytes of input still unread"
                              % (process.pid, process.stdin_pending))
            if data:
                process.stdin_queue.append(data)
                process.stdin_pending += len(data)
        process.wake()
        return {}

    def close_stdin(self, message: Dict[str, Any], request_id: int, generation: int) -> Optional[Dict[str, Any]]:
        process = self.get(_pid(message))
        with process.state_lock:
            if process.stdin_open:
                process.stdin_closing = True
        process.wake()
        return {}

    def signal(self, message: Dict[str, Any], request_id: int, generation: int) -> Optional[Dict[str, Any]]:
        process = self.get(_pid(message))
        number = _signal_number(message.get("signal"))
        with process.state_lock:
            if not process.running:
                raise OSError(errno.ESRCH, "process %d has exited" % process.pid)
            try:
                os.killpg(process.pid, number)
            except ProcessLookupError:  # the leader left its group: signal the leader alone
                os.kill(process.pid, number)
        return {}

    def list(self, message: Dict[str, Any], request_id: int, generation: int) -> Optional[Dict[str, Any]]:
        with self.lock:
            return {"processes": [process.info() for process in self.table.values()]}


def _text(value: str, name: str) -> str:
    if "\0" in value:
        raise proto.MessageError("field %r must not contain NUL" % name)
    return value


def _pid(message: Dict[str, Any]) -> int:
    pid: int = proto.field(message, "pid", int)
    return pid


def _signal_number(value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(signal.Signals[value])
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool) and 0 < value < signal.NSIG:
        return value
    raise proto.MessageError("field 'signal' must be a signal name such as 'SIGTERM' or a number, got %.50r" % (value,))


