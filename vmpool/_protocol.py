"""The host <-> agent wire protocol of vmpool, shared by the host library and the guest agent.

Stdlib only and self-contained: this file is bind-mounted (or baked) next to ``_agent.py`` into
every sandbox, where no other part of vmpool exists (it is one of `vmpool._guest.GUEST_FILES`).

Wire format (PROTOCOL_VERSION 2)
--------------------------------
Transport: any reliable byte stream (pipes to a bubblewrap sandbox, a virtio-serial port).
Framing: one JSON object per line, UTF-8, terminated by ``\\n``; a line is at most
MAX_LINE_BYTES. Binary payloads are base64 strings (fields ending in ``_b64``).

1. When the agent is ready it sends, unprompted, exactly one hello::

     {"id": 0, "op": "hello", "protocol": 2, "agent_version": "0.2.0",
      "python": "3.11.2", "pid": 2, "guest_dir": "/opt/vmpool"}

   ``guest_dir`` is the directory holding the guest files inside the sandbox (so the host can
   start e.g. ``python3 <guest_dir>/_guest_kernel.py``). The host refuses any other
   ``protocol`` (ProtocolError naming both versions), and skips whatever precedes the hello
   (the unfinished line of a previous host's connection, see 5.).
2. The host sends requests whenever it likes, without waiting for earlier replies; ``id`` is a
   positive int unique per connection::

     {"id": 7, "op": "<op>", ...op fields}

3. The agent answers every request exactly once, echoing ``id``::

     {"id": 7, "ok": true, "result": {...}}
     {"id": 7, "ok": false, "error": {"kind": "<kind>", "message": "...", "errno": 2,
                                      "filename": "/tmp/x"}}     # errno/filename: os_error only

   Before its reply, a request may get events, lines that belong to it (``process_start`` and
   ``process_connect`` do), in order::

     {"id": 7, "event": "<name>", ...event fields}

   A line that is not a valid request is answered with ``"id": null`` (or its id, if readable)
   and kind ``bad_request``; the agent never dies of a malformed request.
4. Order. The serial ops (SERIAL_OPS: ``run_program``, ``run_command``, the file ops,
   ``shutdown``) run one at a time in the order they arrived, in the agent's main thread (the
   fork-server), and are answered in that order. All other ops (``ping`` and the process ops)
   are served at once, concurrently with a running serial op, so their replies and events
   interleave freely with everything else: the host matches them by ``id``. Events of one
   request keep their order and precede its reply.
5. Connections. On stdio, EOF ends the agent (after the serial ops already read). A device
   (virtio-serial port) reads EOF while no host is connected: then the old host's serial ops
   not yet started are dropped, replies and events still due to it are discarded (at most the
   line being written when it went away is cut short), its process subscriptions end (the
   processes keep running and buffer their output), and the next host to connect gets a new
   hello. The agent only notices a disconnect that lasts until it looks (it polls every
   RECONNECT_POLL_S of the agent), so a host that reconnects must have stayed away that long.

Ops (request fields -> result fields):

- ``ping``: {} -> {}   (concurrent: answers even while a program runs)
- ``run_program``: {code: str, limits: WireLimits} -> ExecResult fields (see vmpool._types);
  stdout+stderr are kept up to min(max_output_bytes, MAX_OUTPUT_BYTES = 8 MiB) so that a reply
  always fits a line; the rest is read and dropped (``output_truncated``), never a reason to
  stop the program
- ``run_command``: {command: str, cwd: str, limits: WireLimits}
  -> {exit_code, stdout, stderr, timed_out, output_truncated, duration_s}
- ``write_file``: {path: str, data_b64: str} -> {size: int}   (parents are created)
- ``read_file``: {path: str} -> {data_b64: str}
- ``write_files``: {files: [{path: str, data_b64: str}, ...]} -> {sizes: [int, ...]}
  (all validated before any is written)
- ``stat``: {path: str} -> Entry, where Entry is {name: str, path: str (resolved),
  type: "file"|"dir"|"symlink", size: int, mode: int (permission bits),
  permissions: str (e.g. "-rw-r--r--"), modified_time: float (Unix time),
  symlink_target: str|null}; a final symlink is not followed; anything that is neither a
  directory nor a symlink (devices, fifos) is a "file"
- ``list_dir``: {path: str, depth: int >= 1} -> {entries: [Entry, ...]} sorted by path, down
  to `depth` levels below `path`; symlinked directories are not entered; at most 100000
  entries (os_error EFBIG beyond)
- ``remove``: {path: str} -> {}   (a file, a symlink, or a directory tree)
- ``rename``: {old_path: str, new_path: str} -> Entry of new_path
- ``make_dir``: {path: str} -> {created: bool}   (parents are created; false if it existed)
- ``pack_dir``: {path: str} -> {tar_b64: str}: an uncompressed tar of the directory's contents,
  members relative to it, symlinks as links; os_error EFBIG if more than MAX_LINE_BYTES/4*3-4096
  bytes (so that the reply fits a line)
- ``unpack_dir``: {path: str, tar_b64: str} -> {}: extracts into path (created); members that
  are not files, directories or links, with absolute or ``..`` paths, or links leading outside
  path are refused with os_error EINVAL (earlier members may stay)
- ``shutdown``: {} -> {}, then the agent kills its background processes and exits.

Process ops: background processes (E2B's commands), concurrent, outliving the request and the
host connection that started them (see ``_agent_session.py`` for how they run):

- ``process_start``: {cmd: str, envs: {str: str}, cwd: str|null, stdin: bool,
  timeout_s: float|null, tag: str|null} runs ``/bin/bash -l -c cmd`` (``/bin/sh -c`` without
  bash) in its own session, in `cwd` (relative to /tmp; null: $HOME if it is a directory, else
  /tmp), with the agent's environment plus `envs`, stdin a pipe if `stdin` else /dev/null;
  `timeout_s` null or 0: no limit, else the process group is SIGKILLed after that many seconds.
  Events: ``start`` {pid}, then ``stdout`` / ``stderr`` {data_b64} as output arrives (chunks of
  at most CHUNK_BYTES, in order per stream); final reply {pid, exit_code (-N if killed by
  signal N), timed_out, duration_s} once it has exited (whatever was left in its process group
  is killed then). os_error if it cannot start (e.g. ENOENT: no such cwd; EAGAIN: already
  MAX_PROCESSES running).
- ``process_connect``: {pid: int} -> the same events from now on (``start`` first, then, if
  output was dropped while nobody was subscribed, ``dropped`` {stdout: int, stderr: int}
  bytes, then the output buffered meanwhile) and the same final reply when it ends, at once if
  it has ended and its exit was not collected yet. Several subscribers all get everything.
- ``process_input``: {pid, data_b64} -> {}   (queued for its stdin; os_error EPIPE if its stdin
  is not a pipe or was closed, EAGAIN if more than MAX_STDIN_PENDING bytes are still unread)
- ``process_close_stdin``: {pid} -> {}   (after the queued input)
- ``process_signal``: {pid, signal: "SIGTERM"|"SIGKILL"|"SIGINT"|... or int} -> {}   (to its
  process group; os_error ESRCH once it has exited)
- ``process_list``: {} -> {processes: [{pid, cmd, tag, cwd, running}, ...]}: running processes
  and ended ones whose exit nobody has collected yet.

An unknown pid is os_error ESRCH. While nobody is subscribed (no host, or none connected to it)
a process's output is buffered up to UNSUBSCRIBED_BUFFER_BYTES, the oldest dropped beyond; a
process exit that reaches a subscriber is collected (the process leaves the list); at most
MAX_ENDED uncollected exits are kept, the oldest forgotten beyond.

Error kinds: ``bad_request`` (malformed or unknown op), ``os_error`` (file operation failed),
``sandbox`` (the sandbox is no longer trustworthy, e.g. leftover processes could not be killed),
``internal`` (agent bug).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Dict, Optional, TypedDict

PROTOCOL_VERSION = 2
MAX_LINE_BYTES = 64 * 1024 * 1024
MAX_OUTPUT_BYTES = 8 * 1024 * 1024  # stdout+stderr a reply carries at most, whatever the limits say
HELLO_ID = 0
SERIAL_OPS = ("run_program", "run_command", "write_file", "read_file", "write_files", "stat",
              "list_dir", "remove", "rename", "make_dir", "pack_dir", "unpack_dir", "shutdown")
PROCESS_OPS = ("process_start", "process_connect", "process_input", "process_close_stdin",
               "process_signal", "process_list")
OPS = ("ping",) + SERIAL_OPS + PROCESS_OPS
EVENTS = ("start", "stdout", "stderr", "dropped")
ERROR_KINDS = ("bad_request", "os_error", "sandbox", "internal")
CHUNK_BYTES = 64 * 1024  # output of a background process per event, at most
UNSUBSCRIBED_BUFFER_BYTES = 4 * 1024 * 1024  # per process, kept while nobody is subscribed
MAX_STDIN_PENDING = 8 * 1024 * 1024  # stdin bytes queued for a process and not read yet
MAX_PROCESSES = 256  # background processes running at once
MAX_ENDED = 64  # ended background processes whose exit nobody collected yet
RECONNECT_POLL_S = 0.01  # how often a device channel checks whether a host has connected


class MessageError(ValueError):
    """A line that is not a well-formed protocol message (bad JSON, wrong shape, too long)."""


class WireLimits(TypedDict):
    """`vmpool.Limits` as sent on the wire; every field is present, cpu_time_s already resolved."""

    wall_time_s: float
    cpu_time_s: float
    memory_mb: int
    max_processes: int
    max_file_size_mb: int
    max_output_bytes: int


class Hello(TypedDict):
    id: int
    op: str
    protocol: int
    agent_version: str
    python: str
    pid: int
    guest_dir: str


class ErrorInfo(TypedDict, total=False):
    kind: str
    message: str
    errno: int
    filename: str


LIMIT_FIELDS: Dict[str, type] = {
    "wall_time_s": float, "cpu_time_s": float, "memory_mb": int,
    "max_processes": int, "max_file_size_mb": int, "max_output_bytes": int,
}


def encode(message: Dict[str, Any]) -> bytes:
    """Serialise one message to one wire line (with its newline)."""
    line = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(line) >= MAX_LINE_BYTES:
        raise MessageError("message of %d bytes exceeds the %d-byte line limit" % (len(line), MAX_LINE_BYTES))
    return line + b"\n"


def decode(line: bytes) -> Dict[str, Any]:
    """Parse one wire line (newline optional) into a JSON object; MessageError if it is not one."""
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError("not a JSON line: %s" % exc) from None
    if not isinstance(message, dict):
        raise MessageError("expected a JSON object, got %s" % type(message).__name__)
    return message


def request(request_id: int, op: str, **fields: Any) -> Dict[str, Any]:
    """Build a request message."""
    return dict(fields, id=request_id, op=op)


def ok_reply(request_id: Optional[int], result: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": request_id, "ok": True, "result": result}


def error_reply(request_id: Optional[int], kind: str, message: str, **extra: Any) -> Dict[str, Any]:
    error: Dict[str, Any] = dict(extra, kind=kind, message=message)
    return {"id": request_id, "ok": False, "error": error}


def event(request_id: int, name: str, **fields: Any) -> Dict[str, Any]:
    """Build an event belonging to request `request_id`."""
    return dict(fields, id=request_id, event=name)


def hello(agent_version: str, python: str, pid: int, guest_dir: str,
          protocol: int = PROTOCOL_VERSION) -> Hello:
    return {"id": HELLO_ID, "op": "hello", "protocol": protocol, "agent_version": agent_version,
            "python": python, "pid": pid, "guest_dir": guest_dir}


def check_hello(message: Dict[str, Any]) -> Hello:
    """Validate the shape of a hello. Only ``protocol`` is checked first: a hello of another
    version may lack the other fields, and the host wants to name the version mismatch."""
    if message.get("op") != "hello":
        raise MessageError("expected a hello from the agent, got %.200r" % (message,))
    if not isinstance(message.get("protocol"), int):
        raise MessageError("hello field 'protocol' missing or not int")
    if message["protocol"] != PROTOCOL_VERSION:
        return message  # type: ignore[return-value]  # the caller refuses it by its version
    for key, kind in (("agent_version", str), ("python", str), ("pid", int), ("guest_dir", str)):
        if not isinstance(message.get(key), kind):
            raise MessageError("hello field %r missing or not %s" % (key, kind.__name__))
    return {"id": HELLO_ID, "op": "hello", "protocol": message["protocol"],
            "agent_version": message["agent_version"], "python": message["python"],
            "pid": message["pid"], "guest_dir": message["guest_dir"]}


def check_limits(value: Any) -> WireLimits:
    """Validate wire limits: every field present, numeric, positive, finite (JSON from Python
    may carry Infinity and NaN, which no deadline or rlimit can use). MessageError otherwise."""
    if not isinstance(value, dict):
        raise MessageError("limits must be an object")
    out: Dict[str, Any] = {}
    for key, kind in LIMIT_FIELDS.items():
        item = value.get(key)
        if (isinstance(item, bool) or not isinstance(item, (int, float)) or not item > 0
                or not math.isfinite(item)):
            raise MessageError("limits.%s must be a positive finite number, got %r" % (key, item))
        out[key] = kind(item)
    return out  # type: ignore[return-value]


def field(message: Dict[str, Any], key: str, kind: type) -> Any:
    """message[key], which must be of type `kind`; MessageError naming the field otherwise."""
    value = message.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise MessageError("field %r must be %s" % (key, kind.__name__))
    return value


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MessageError("invalid base64: %s" % exc) from None


class LineBuffer:
    """Splits a byte stream into lines of at most `max_line` bytes.

    `feed` bytes as they arrive, then call `next_line` until it returns None. A line longer than
    the limit raises MessageError once and is skipped up to its newline, so a reader can reply
    and go on with the next line.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline: avoids quadratic rescans
        self._max = max_line
        self._skipping = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> Optional[bytes]:
        """The next complete line (without its newline), or None if none is complete yet."""
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buf)
                if self._skipping or self._scanned > self._max:
                    self._drop(len(self._buf))
                    if not self._skipping:
                        self._skipping = True
                        raise MessageError("line exceeds %d bytes" % self._max)
                return None
            line = bytes(self._buf[:end])
            self._drop(end + 1)
            if self._skipping:
                self._skipping = False  # the tail of an over-long line: already reported
                continue
            if len(line) > self._max:
                raise MessageError("line exceeds %d bytes" % self._max)
            return line

    def _drop(self, count: int) -> None:
        del self._buf[:count]
        self._scanned = 0

    @property
    def pending(self) -> int:
        """Bytes buffered that do not form a complete line yet."""
        return len(self._buf)
