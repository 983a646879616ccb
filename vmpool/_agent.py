"""vmpool guest agent: a fork-server that runs programs for the host, one request at a time.

Runs inside the sandbox (a bubblewrap namespace or a microVM) as a plain script next to the other
guest modules, its only non-stdlib imports; `vmpool._guest.GUEST_FILES` lists them, and they are
the whole guest side. Start (`vmpool._guest.agent_command`)::

    python3 -I -B _agent.py [--channel stdio|DEVICE] [--exclusive] [--sandbox-filter]

Contract:

- Speaks ``_protocol`` on the channel (stdin/stdout, or a device such as a virtio-serial port):
  one hello, then one reply per request, in order. A malformed request gets an error reply, never
  a crash; EOF on stdin ends the agent. A device channel reads EOF whenever no host is connected
  (a VM restored from a snapshot starts that way): the agent waits for the next host and greets
  it with a new hello, so one snapshot of a waiting agent serves every clone.
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
  agent SIGKILLs every process of its uid except itself and its ancestors, waits until they are gone
  (reply kind ``sandbox`` if they are not), and deletes what a program created at the top level
  of /tmp. Without it only the child's process group is killed. The flag is refused when the
  agent visibly is not alone (more than two ancestor processes), so a stray run on a host
  cannot kill the host's processes.

Modules, one concept each (all listed in `vmpool._guest.GUEST_FILES`): this file is the entry
point, the channel and the request loop that dispatches ops; ``_agent_run.py`` is what a child
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
wrote. The token only defends against programs that end early by accident. Hiding the token
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
import select
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

if __package__:  # imported as vmpool._agent (tests, type checking)
    from . import _agent_files as files
    from . import _agent_fs as fs
    from . import _agent_procs as procs
    from . import _agent_run as run
    from . import _protocol as proto
else:  # run as a script inside the sandbox: the sibling files, never an installed vmpool
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also for their own imports
    import _agent_files as files  # type: ignore[no-redef]
    import _agent_fs as fs  # type: ignore[no-redef]
    import _agent_procs as procs  # type: ignore[no-redef]
    import _agent_run as run  # type: ignore[no-redef]
    import _protocol as proto  # type: ignore[no-redef]
    del sys.path[0]

AGENT_VERSION = "0.1.0"
RECONNECT_POLL_S = 0.01  # how often a device channel checks whether a host has connected
PREIMPORTS = (
    "abc", "array", "base64", "bisect", "cmath", "collections", "collections.abc", "contextlib",
    "copy", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib",
    "heapq", "io", "itertools", "json", "math", "numbers", "operator", "pprint", "queue", "random",
    "re", "statistics", "string", "struct", "textwrap", "threading", "typing", "unicodedata",
)


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
        self.device = spec != "stdio"

    def read(self) -> bytes:
        return os.read(self.rfd, 1 << 20)

    def wait_for_host(self) -> None:
        """Block until a host is connected to the device again. A virtio-serial port reads as
        EOF and polls as POLLHUP while no host is connected (before the host connects, after it
        disconnects, and after a VM is restored from a snapshot); it wakes nobody on connect, so
        this polls."""
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        while any(events & select.POLLHUP for _, events in poller.poll(0)):
            time.sleep(RECONNECT_POLL_S)

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
            **fs.HANDLERS,
        }

    def serve(self, hello: proto.Hello) -> None:
        lines = proto.LineBuffer()
        self.send(dict(hello))
        while not self.stopping:
            data = self.channel.read()
            if not data:
                if not self.channel.device:
                    return  # the host is gone
                # A device outlives host connections: every new host gets its own hello.
                self.channel.wait_for_host()
                lines = proto.LineBuffer()
                self.send(dict(hello))
                continue
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
            return run.run_program(code, limits, workspace.path, self.exclusive)
        finally:
            workspace.cleanup()

    def run_command(self, message: Dict[str, Any]) -> Dict[str, Any]:
        command = proto.field(message, "command", str)
        cwd = files.resolve(proto.field(message, "cwd", str))
        limits = proto.check_limits(message.get("limits"))
        if not os.path.isdir(cwd):
            raise OSError(2, "no such directory", cwd)
        return run.run_command(command, cwd, limits, self.exclusive)

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
    gc.freeze()  # keep the warm heap out of the children's GC passes: fewer copy-on-write faults


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
    channel = Channel(args.channel)
    warm_up()
    protocol = proto.PROTOCOL_VERSION if args.fake_protocol is None else args.fake_protocol
    python = "%d.%d.%d" % sys.version_info[:3]
    Agent(channel, args.exclusive).serve(proto.hello(AGENT_VERSION, python, os.getpid(), protocol))
    return 0


if __name__ == "__main__":
    sys.exit(main())
