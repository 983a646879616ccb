"""vmpool guest agent: a fork-server that runs programs for the host, one at a time, and
background processes beside them.

Runs inside the sandbox (a bubblewrap namespace or a microVM) as a plain script next to the other
guest modules, its only non-stdlib imports; `vmpool._guest.GUEST_FILES` lists them, and they are
the whole guest side. Start (`vmpool._guest.agent_command`)::

    python3 -I -B _agent.py [--channel stdio|DEVICE] [--exclusive] [--sandbox-filter]

Contract:

- Speaks ``_protocol`` on the channel (stdin/stdout, or a device such as a virtio-serial port):
  one hello, then one reply per request (events before it for some), matched by id. A malformed
  request gets an error reply, never a crash; EOF on stdin ends the agent. A device channel
  reads EOF whenever no host is connected (a VM restored from a snapshot starts that way): the
  agent drops what it still owed the old host, waits for the next host and greets it with a new
  hello, so one snapshot of a waiting agent serves every clone; background processes go on.
- Threads: the main thread is the fork-server and runs the serial ops (programs, commands, file
  ops, shutdown) one at a time, in order; a reader thread reads the channel, queues serial ops
  for the main thread and answers the others itself (ping, the ``process_*`` ops of
  ``_agent_session.py``, each of whose processes has a pump thread). Every line to the host goes
  through one writer, `_agent_channel.Outbox`, first come first served.
- Fork safety. ``run_program`` forks the main thread *without exec* while the other threads run;
  only the forking thread exists in the child, so a lock another thread held at that moment
  stays held there forever. The child takes none of them: it never touches the channel, the
  outbox, the process table or any lock of the agent's threads (they hold only those: the
  outbox's turn lock, the process table's lock, each process's locks, the request queue); it
  replaces sys.stdin/stdout/stderr with fresh objects before the program runs, so the lock of a
  stream another thread was printing to is not its own; and the threads import nothing after
  start-up (every module they use is imported by then), so no import lock is held by a thread
  that does not exist in the child (CPython itself re-initialises the GIL, the global import
  lock and the locks of ``threading``, ``logging`` and ``random`` in a forked child). The
  threads themselves only ever start processes with ``posix_spawn`` (vfork+exec), whose child
  runs no Python. Fds: the run child closes every fd but its own pipes, and every fd of the
  agent is close-on-exec (those it inherited are made so at start), so a background process
  gets its three pipes only and neither kind of child holds the other's pipes open.
- ``run_program`` forks a fresh child of this warm interpreter (common stdlib modules are
  pre-imported). The child gets a new session, a fresh scratch directory as cwd, rlimits, stdin
  from /dev/null, stdout/stderr on pipes the agent reads to the end but keeps only up to a cap
  (the rest is dropped and ``output_truncated`` set; output never ends a run), and a private
  status pipe.
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
  for which ``_seccomp`` has none. ``--sandbox-filter`` first installs the filter bwrap puts on a
  whole bwrap sandbox (``_seccomp.build_filter``: no keyrings, namespaces, ...), for sandboxes
  that nothing else filters: a VM, where the guest kernel would otherwise let one program leave
  a key or a namespace for the next.
- ``--exclusive`` (the agent owns its PID namespace or VM): after every program and command the
  agent SIGKILLs every process of its uid except itself, its ancestors and its background
  processes (their sessions and descendants, see ``_agent_session.py``), waits until they are
  gone (reply kind ``sandbox`` if they are not), and deletes what appeared at the top level of
  /tmp while the program ran (whoever made it: a background process writing there meanwhile
  loses it too). Without it only the child's process group is killed. The flag is refused when
  the agent visibly is not alone (more than two ancestor processes), so a stray run on a host
  cannot kill the host's processes. No background process is forked while a sweep runs.

Modules, one concept each (all listed in `vmpool._guest.GUEST_FILES`): this file is the entry
point and the request loops that dispatch ops; ``_agent_channel.py`` is the channel and the one
writer; ``_agent_session.py`` runs background processes; ``_agent_run.py`` is what a child
runs (the program wrapper, ``/bin/sh`` for commands) and how its end is classified;
``_agent_child.py`` forks one child, applies the limits, supervises it and captures its output
and status pipe; ``_agent_procs.py`` reads /proc, sweeps processes and shields the agent (the
program filter, non-dumpable); ``_agent_files.py`` owns /tmp, scratch directories and the file
read/write; ``_agent_fs.py`` has the other filesystem ops (info, listing, tar archives); ``_protocol.py`` is the wire format and ``_seccomp.py`` builds the filters.

Known limit: a program can forge its own result. The code that reports ``ok`` runs in the
program's process, after the program, so whatever it does the program can do first: find the
``report`` closure (``sys._getframe(1).f_locals['report']``, or among ``gc.get_objects()``) or
the token in its memory, call it or write ``<token> ok`` to the status pipe (an fd it can list),
then ``os._exit(0)``; the run is then ``ok``, or whichever of ``error``/``oom``/``exited`` it
wrote. Rebinding public names is not enough: what the wrapper calls once the program is
over (``os.write``, ``json.dumps``, the exit) is bound before it starts, so a program that
rebinds them, or the guest modules' ``EXIT`` in ``sys.modules``, still ends as it did. The
token only defends against programs that end early by accident. Hiding the token
better (an fd recorded nowhere, a C-level buffer, delivering it only after ``exec``) changes
which few lines do this, not whether they can: memory and fds of one process are all readable
by the code it runs. Closing it needs a verdict from outside the program's process (e.g. the
host judging the program's output). A forged report cannot pass for a broken sandbox (see
``started`` above) nor reach anything beyond that one result.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import queue
import sys
import threading
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

if __package__:  # imported as vmpool._agent (tests, type checking)
    from . import _agent_channel as chan
    from . import _agent_files as files
    from . import _agent_fs as fs
    from . import _agent_procs as procs
    from . import _agent_run as run
    from . import _agent_session as session
    from . import _protocol as proto
else:  # run as a script inside the sandbox: the sibling files, never an installed vmpool
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also for their own imports
    import _agent_channel as chan  # type: ignore[no-redef]
    import _agent_files as files  # type: ignore[no-redef]
    import _agent_fs as fs  # type: ignore[no-redef]
    import _agent_procs as procs  # type: ignore[no-redef]
    import _agent_run as run  # type: ignore[no-redef]
    import _agent_session as session  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]
    del sys.path[0]

AGENT_VERSION = "0.2.0"
GUEST_DIR = os.path.dirname(os.path.abspath(__file__))
PREIMPORTS = (
    "abc", "array", "base64", "bisect", "cmath", "collections", "collections.abc", "contextlib",
    "copy", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib",
    "heapq", "io", "itertools", "json", "math", "numbers", "operator", "pprint", "queue", "random",
    "re", "statistics", "string", "struct", "textwrap", "threading", "typing", "unicodedata",
)
Request = Tuple[int, int, str, Dict[str, Any]]  # (generation, id, op, message) for the main thread


def respond(request_id: Optional[int], call: Callable[[], Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    """The reply to a request whose handler is `call`, errors mapped to their kinds; None if
    the handler answers later itself (streaming process ops). Never raises."""
    try:
        result = call()
        return None if result is None else proto.ok_reply(request_id, result)
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


class Agent:
    """Serves one channel until EOF (stdio) or ``shutdown``: the main thread runs `serve`."""

    def __init__(self, channel: chan.Channel, exclusive: bool, hello: proto.Hello) -> None:
        self.channel = channel
        self.exclusive = exclusive
        self.hello = hello
        self.outbox = chan.Outbox(channel)
        self.session = session.Manager(self.outbox)
        self.requests: "queue.SimpleQueue[Optional[Request]]" = queue.SimpleQueue()
        self.stopping = False
        self.runs = 0
        self.serial: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
            "run_program": self.run_program,
            "run_command": self.run_command,
            "write_file": self.write_file,
            "read_file": self.read_file,
            "shutdown": self.shutdown,
            **fs.HANDLERS,
        }
        self.concurrent: Dict[str, session.Handler] = {
            "ping": lambda message, request_id, generation: {},
            **self.session.handlers,
        }

    def serve(self) -> None:
        """The main thread: serial ops one at a time until EOF or ``shutdown``."""
        threading.Thread(target=self.read_requests, name="vmpool-reader", daemon=True).start()
        try:
            while not self.stopping:
                item = self.requests.get()
                if item is None:
                    return
                generation, request_id, op, message = item
                if generation != self.outbox.generation:
                    continue  # its host has gone: nobody waits for it any more
                reply = respond(request_id, lambda: self.serial[op](message))
                assert reply is not None
                self.outbox.send(reply, generation)
        finally:
            self.session.kill_all()

    def read_requests(self) -> None:
        """The reader thread: greet each host, then dispatch its requests."""
        try:
            generation = self.outbox.generation
            self.outbox.send(dict(self.hello), generation)
            lines = proto.LineBuffer()
            while True:
                data = self.channel.read()
                if not data:
                    if not self.channel.device:
                        return  # the host is gone
                    # A device outlives host connections: every new host gets its own hello.
                    generation = self.outbox.disconnected()
                    self.channel.wait_for_host()
                    lines = proto.LineBuffer()
                    self.outbox.send(dict(self.hello), generation)
                    continue
                lines.feed(data)
                while True:
                    try:
                        line = lines.next_line()
                    except proto.MessageError as exc:
                        self.outbox.send(proto.error_reply(None, "bad_request", str(exc)), generation)
                        continue
                    if line is None:
                        break
                    self.dispatch(line, generation)
        except Exception:
            traceback.print_exc()  # e.g. the channel failed: the agent ends
        finally:
            self.requests.put(None)

    def dispatch(self, line: bytes, generation: int) -> None:
        """Queue a serial op for the main thread, or serve a concurrent one now."""
        request_id: Optional[int] = None
        try:
            message = proto.decode(line)
            raw_id = message.get("id")
            if isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id > 0:
                request_id = raw_id
            else:
                raise proto.MessageError("a request needs a positive integer 'id'")
            op = message.get("op")
            if isinstance(op, str) and op in self.serial:
                self.requests.put((generation, request_id, op, message))
                return
            handler = self.concurrent.get(op) if isinstance(op, str) else None
            if handler is None:
                raise proto.MessageError("unknown op %.50r; this agent knows %s"
                                         % (op, ", ".join(list(self.concurrent) + list(self.serial))))
        except proto.MessageError as exc:
            self.outbox.send(proto.error_reply(request_id, "bad_request", str(exc)), generation)
            return
        known_id = request_id
        reply = respond(known_id, lambda: handler(message, known_id, generation))
        if reply is not None:
            self.outbox.send(reply, generation)

    def sweep(self) -> None:
        """The --exclusive sweep, sparing background processes; none is forked meanwhile."""
        with self.session.spawning:
            procs.sweep_processes(self.session.spared)

    def run_program(self, message: Dict[str, Any]) -> Dict[str, Any]:
        code = proto.field(message, "code", str)
        limits = proto.check_limits(message.get("limits"))
        self.runs += 1
        try:
            workspace = files.Workspace(files.TMP_DIR, self.runs, clean_tmp=self.exclusive)
        except OSError as exc:
            raise procs.AgentFailure("cannot create a scratch directory: %s" % exc) from exc
        # Only between programs: while background processes run, the home is theirs too.
        home = files.HomeGuard(os.environ.get("HOME") if self.exclusive and not self.session.spared() else None)
        try:
            return run.run_program(code, limits, workspace.path, self.sweep if self.exclusive else None)
        finally:
            workspace.cleanup()
            home.cleanup()

    def run_command(self, message: Dict[str, Any]) -> Dict[str, Any]:
        command = proto.field(message, "command", str)
        cwd = files.resolve(proto.field(message, "cwd", str))
        limits = proto.check_limits(message.get("limits"))
        if not os.path.isdir(cwd):
            raise OSError(2, "no such directory", cwd)
        return run.run_command(command, cwd, limits, self.sweep if self.exclusive else None)

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


def warm_up() -> None:
    """Pre-import what programs commonly use, so every forked child starts warm."""
    for name in PREIMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    procs.set_dumpable(False)
    # Python >= 3.12 warns on every fork of a threaded process; ours is safe (module docstring)
    warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
    gc.freeze()  # keep the warm heap out of the children's GC passes: fewer copy-on-write faults


def _close_on_exec_inherited() -> None:
    """Make every fd the agent inherited beyond 0-2 close-on-exec (those it opens itself are
    anyway), so that background processes, which are spawned without closing fds, get none."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.set_inheritable(int(name), False)
            except OSError:
                pass  # the fd of the listing itself, closed by now


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vmpool-agent", description="vmpool guest agent")
    parser.add_argument("--channel", default="stdio", help="'stdio' or a device path (virtio-serial)")
    parser.add_argument("--exclusive", action="store_true",
                        help="the agent owns its PID namespace/VM: kill all leftovers after each run")
    parser.add_argument("--sandbox-filter", action="store_true",
                        help="install the sandbox seccomp filter first (where no bwrap did: a VM)")
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
        if args.sandbox_filter:
            procs.install_sandbox_filter()
        procs.install_program_filter()
    except OSError as exc:  # never run programs that could take the agent down
        print("vmpool-agent: %s" % exc, file=sys.stderr)
        return 2
    _close_on_exec_inherited()
    channel = chan.Channel(args.channel)
    warm_up()
    protocol = proto.PROTOCOL_VERSION if args.fake_protocol is None else args.fake_protocol
    python = "%d.%d.%d" % sys.version_info[:3]
    hello = proto.hello(AGENT_VERSION, python, os.getpid(), GUEST_DIR, protocol)
    Agent(channel, args.exclusive, hello).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
