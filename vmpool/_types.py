"""Host-side types of vmpool: the limits a program runs under and the result it produces.

These are the typed (pydantic) face of the wire messages defined in `vmpool._protocol`; the
agent itself is stdlib-only and never imports this module.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._protocol import MAX_OUTPUT_BYTES

MAX_TIME_S = 86400.0
"""The longest wall-time or CPU-time limit a program may have: a day. Deadlines far beyond it
overflow the kernel's timeouts, and no program that is meant to end needs more."""

ExecStatus = Literal["ok", "error", "exited", "timeout", "oom"]
"""How a program ended; how much it printed plays no part (see `ExecResult.output_truncated`).

- ``ok``: the program ran to its last statement (confirmed by the agent, not by an exit code);
- ``error``: it raised an exception that nothing caught;
- ``exited``: it ended before its last statement: ``sys.exit``, ``os._exit``, a signal;
- ``timeout``: it exceeded its wall-time or CPU-time limit and was killed with its process tree;
- ``oom``: it exceeded its memory limit, or the sandbox (a VM) ran out of memory and the kernel
  killed it.
"""


class Limits(BaseModel):
    """Resource limits for one program. Every limit applies to the program's whole process tree
    unless stated otherwise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_time_s: float = Field(10.0, gt=0, le=MAX_TIME_S, allow_inf_nan=False,
                               description="wall-clock limit, at most MAX_TIME_S (a day)")
    cpu_time_s: float | None = Field(None, gt=0, le=MAX_TIME_S, allow_inf_nan=False,
                                     description="CPU-time limit, at most a day; None: same as wall_time_s")
    memory_mb: int = Field(512, gt=0, description=(
        "memory the program may allocate beyond the interpreter it runs in (a fork of the "
        "agent's warm interpreter): RLIMIT_AS is that interpreter's size + memory_mb, for the "
        "program and for each process it starts; beyond it allocations fail (oom). Shell "
        "commands (LocalSandbox.commands.run) start afresh: for them it is each process's whole "
        "address space"))
    max_processes: int = Field(32, gt=0, description="processes and threads the program may run at once")
    max_file_size_mb: int = Field(16, gt=0, description="largest file the program may write")
    max_output_bytes: int = Field(1_000_000, gt=0, description=(
        "stdout + stderr kept (together, first bytes first); the rest is read and dropped "
        "while the program goes on, and the result says output_truncated. Capped at 8 MiB "
        "(8388608 bytes) whatever this says, so that a result fits one protocol message. The "
        "last 16 KiB of stderr are kept beyond the cap, so that a traceback survives a flood"))

    @property
    def output_cap_bytes(self) -> int:
        """The stdout + stderr bytes a run keeps: max_output_bytes, at most 8 MiB."""
        return min(self.max_output_bytes, MAX_OUTPUT_BYTES)


class ExecResult(BaseModel):
    """What happened to one program. Expected outcomes (failing tests, timeouts, OOM) are
    results; a sandbox or agent that breaks raises `SandboxError` instead."""

    model_config = ConfigDict(frozen=True)

    status: ExecStatus
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = Field(None, description="one line: exception type and message, or why it ended")
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = Field(False, description=(
        "the program wrote more than Limits.output_cap_bytes: stdout/stderr hold only the first "
        "bytes; the program was not stopped for it"))
    duration_s: float = 0.0
    cpu_time_s: float = 0.0
    max_rss_mb: float = 0.0


class CommandResult(BaseModel):
    """What a shell command produced. From `LocalSandbox.commands.run`, like `ExecResult`, every
    outcome of the command (failure, timeout) is a result, never an exception; the SDK's
    `Sandbox.commands.run` returns it for exit code 0 and raises E2B's exceptions otherwise."""

    model_config = ConfigDict(frozen=True)

    exit_code: int = Field(description="exit status; -N if killed by signal N (subprocess convention)")
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    output_truncated: bool = Field(False, description=(
        "output exceeded the cap: only its first bytes are kept; the command was not stopped for it"))
    duration_s: float = 0.0
    error: str | None = Field(None, description=(
        'how a failed command ended, in E2B\'s words ("exit status 1", "signal: SIGKILL"); '
        "None for success. Set by the SDK (`vmpool.Sandbox.commands`)"))


FileType = Literal["file", "dir", "symlink"]


class EntryInfo(BaseModel):
    """One filesystem entry inside a sandbox, as E2B's SDK describes it (`LocalSandbox.files`)."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: str = Field(description="absolute path inside the sandbox")
    type: FileType = Field(description=(
        "the entry itself, a final symlink not followed; devices and fifos count as files"))
    size: int
    mode: int = Field(description="permission bits, e.g. 0o644")
    permissions: str = Field(description='as ls shows them, e.g. "-rw-r--r--"')
    modified_time: datetime
    symlink_target: str | None = None
