"""The guest side of vmpool as drivers see it: which files make up the agent, and how to start it.

Every driver ships exactly `GUEST_FILES` into one directory of its sandbox (bwrap binds them
read-only at /opt/vmpool; the microvm driver puts them, with its PID 1 `INIT_SCRIPT`, in the
initramfs, which copies them to /opt/vmpool) and starts the agent with `agent_command` (in a VM
PID 1 runs the command line the host wrote for it). Inside the sandbox these files are top-level modules of that directory, where
no other part of vmpool exists: each is stdlib only and imports its siblings as top-level
modules when it has no package (``_agent.py`` puts their directory first on sys.path while it
imports them, so no guest file may be named like a stdlib module). This is the one place that
lists them; a guest module importing a sibling missing here fails in every sandbox.

Host only: this module is not shipped.
"""

from __future__ import annotations

import functools
import posixpath
from pathlib import Path

__all__ = ["AGENT_SCRIPT", "GUEST_FILES", "GUEST_PYTHON", "INIT_SCRIPT", "agent_command", "guest_sources"]

AGENT_SCRIPT = "_agent.py"  # the entry point; it imports the others
GUEST_PYTHON = "/usr/bin/python3"  # the interpreter of a VM template's image
INIT_SCRIPT = "_guest_init.py"  # PID 1 of a microVM (stdlib only); shipped by that driver alone
GUEST_FILES = (
    AGENT_SCRIPT, "_agent_channel.py", "_agent_child.py", "_agent_files.py", "_agent_fs.py",
    "_agent_process.py", "_agent_procs.py", "_agent_run.py", "_agent_session.py", "_protocol.py",
    "_seccomp.py",
    "_guest_kernel.py",  # the kernel bridge of run_code: a script the host starts; needs jupyter_client
    "_guest_charts.py",  # chart data of figures, loaded by the kernel bridge into each python kernel
)


@functools.cache
def guest_sources(*extra: str) -> tuple[tuple[str, bytes], ...]:
    """(file name, content) of every guest file (and of the `extra` ones, e.g. INIT_SCRIPT),
    read once from this package."""
    here = Path(__file__).resolve().parent
    return tuple((name, (here / name).read_bytes()) for name in GUEST_FILES + extra)


def agent_command(python: str, directory: str, *agent_args: str) -> list[str]:
    """The command line that starts the agent from the guest files in `directory` (a path
    inside the sandbox): isolated mode (PYTHON* variables, the user site and the script's
    directory are all ignored) and no bytecode files written."""
    return [python, "-I", "-B", posixpath.join(directory, AGENT_SCRIPT), *agent_args]
