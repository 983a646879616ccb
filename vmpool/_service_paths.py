"""Where the vmpool service listens, and the checks that make its socket safe to trust.

The socket lives in a private folder of this user: ``$VMPOOL_SERVICE`` if set, else
``$XDG_RUNTIME_DIR/vmpool/service.sock``, else ``/tmp/vmpool-<uid>/service.sock``. Anyone who
can connect to the socket controls every sandbox of the service, so its folder is created 0700
and checked before use like `vmpool._vm_host.run_root`: a real directory (not a symlink), owned
by this user, with no permissions for group or others. An in-process service (see
`vmpool._service_client`) listens on ``inproc-<pid>-<n>.sock`` in the same folder; leftovers of
processes that died are removed when the next one starts.
"""

from __future__ import annotations

import itertools
import os
import stat
import tempfile
from pathlib import Path

from ._errors import SandboxException

__all__ = ["default_socket", "explicit_socket", "inprocess_socket", "private_dir"]

SERVICE_ENV = "VMPOOL_SERVICE"
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
_inproc_numbers = itertools.count(1)


def explicit_socket() -> Path | None:
    """The socket named by $VMPOOL_SERVICE, if set (not checked: the caller says it failed)."""
    value = os.environ.get(SERVICE_ENV, "")
    return Path(value).expanduser().absolute() if value else None


def _default_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime) / "vmpool"
    return Path(tempfile.gettempdir()) / ("vmpool-%d" % os.geteuid())


def default_socket() -> Path:
    """The socket `vmpool serve` listens on and the SDK tries first ($VMPOOL_SERVICE or the
    default described in the module docstring)."""
    return explicit_socket() or _default_dir() / "service.sock"


def private_dir(folder: Path) -> Path:
    """`folder`, created 0700 if missing (with its parents), checked to be a directory of this
    user that nobody else can enter; SandboxException saying what to do otherwise."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)):
        raise SandboxException(
            "%s is not a private folder of this user (a symlink, someone else's, or open to "
            "others), so a vmpool service socket there could be hijacked; remove it, or set "
            "%s to a socket path in a folder only you can enter" % (folder, SERVICE_ENV))
    return folder


def check_socket_path(path: Path) -> Path:
    """`path` with its folder checked (`private_dir`) and its length checked for AF_UNIX."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise SandboxException("the service socket path %s is too long for a unix socket (at most "
                               "%d bytes); set %s to a shorter path" % (path, UNIX_PATH_MAX, SERVICE_ENV))
    private_dir(path.parent)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def inprocess_socket() -> Path:
    """A fresh socket path for an in-process service of this process, in the checked default
    folder; sockets left there by in-process services of dead processes are removed first."""
    folder = private_dir(_default_dir())
    for leftover in folder.glob("inproc-*.sock"):
        owner = leftover.name.split("-")[1]
        if owner.isdigit() and int(owner) != os.getpid() and not _pid_alive(int(owner)):
            leftover.unlink(missing_ok=True)
    return check_socket_path(folder / ("inproc-%d-%d.sock" % (os.getpid(), next(_inproc_numbers))))
