"""Host-side housekeeping of microVMs: their run folders, and reaping what a crashed run left.

Every VM gets a run folder (QEMU's unix sockets and the guest console log) under one root per
host uid in the temp folder. The root is checked before use (ours, not a symlink, not writable
by others), because root hands each run folder to uid 65534 and must not be tricked into
handing over something else. QEMU processes carry ``vmpool-owner-<pid>`` on their command line
(``-name``), and run folders start with that pid, so a new process can kill the QEMUs and delete
the folders of owners that no longer exist (`reap_once`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path

from ._errors import DriverUnavailableError

__all__ = ["OWNER_PREFIX", "new_run_dir", "owner_tag", "reap_leftovers", "reap_once", "run_root"]

log = logging.getLogger("vmpool.microvm")

OWNER_PREFIX = "vmpool-owner-"
LONGEST_SOCKET = "control.sock"
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


def owner_tag() -> str:
    return OWNER_PREFIX + str(os.getpid())


def run_root() -> Path:
    """The checked root of this uid's run folders (see module docstring)."""
    root = Path(tempfile.gettempdir()) / ("vmpool-microvm-%d" % os.geteuid())
    try:
        root.mkdir(mode=0o711)
    except FileExistsError:
        pass
    info = os.lstat(root)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise DriverUnavailableError(
            "%s is not a private folder of this user (a symlink, someone else's, or writable by "
            "others); remove it, or set TMPDIR to another folder" % root)
    return root


def new_run_dir(uid: int | None) -> Path:
    """A fresh run folder, handed to `uid` (QEMU's) if given; checked to be short enough for
    the unix sockets in it."""
    root = run_root()
    path = Path(tempfile.mkdtemp(prefix="%d-" % os.getpid(), dir=root))
    if len(str(path / LONGEST_SOCKET)) > UNIX_PATH_MAX:
        os.rmdir(path)
        raise DriverUnavailableError(
            "the VM run folder %s is too long a path for a unix socket; set TMPDIR to a shorter "
            "folder (e.g. /tmp)" % path)
    if uid is not None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, uid, uid)
        finally:
            os.close(fd)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def reap_leftovers() -> int:
    """Kill QEMUs started by a vmpool process that no longer exists and delete its run
    folders; the number of processes killed."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"qemu-system-x86_64"):
            continue
        for arg in argv:
            owner = arg[len(OWNER_PREFIX):] if arg.startswith(OWNER_PREFIX.encode()) else b""
            if owner.isdigit() and int(owner) != os.getpid() and not _pid_alive(int(owner)):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
                except OSError:
                    pass
    for folder in run_root().iterdir():
        owner_text = folder.name.split("-", 1)[0]
        if owner_text.isdigit() and int(owner_text) != os.getpid() and not _pid_alive(int(owner_text)):
            shutil.rmtree(folder, ignore_errors=True)
    return killed


_reaped_in: set[int] = set()
_reap_lock = threading.Lock()


def reap_once() -> None:
    """`reap_leftovers`, once per process."""
    with _reap_lock:
        if os.getpid() not in _reaped_in:
            _reaped_in.add(os.getpid())
            count = reap_leftovers()
            if count:
                log.warning("killed %d leftover QEMU process(es) of vmpool runs that crashed", count)
