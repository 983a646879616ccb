"""The bubblewrap driver: every sandbox is a ``bwrap`` process tree on this host.

Isolation: new user, PID, network (loopback only), IPC, UTS, cgroup and mount namespaces; no
capabilities; nested user namespaces disabled; a read-only view of /usr (plus the Debian
/lib, /bin, ... symlinks), a fresh /dev and /proc, a size-limited tmpfs /tmp as the only
writable place, a synthetic /etc with just passwd/group/hosts, the guest files
(`vmpool._guest.GUEST_FILES`) read-only at /opt/vmpool, uid/gid 65534 inside, a cleared
environment and a seccomp deny-list.

/proc/1, bwrap's init inside the sandbox, is hidden behind an empty read-only directory. That
init runs as the sandbox's uid and is dumpable, so a program could otherwise write its memory
through /proc/1/mem (or raise its OOM score) and take the whole sandbox down with it.

Templates (``StartOptions.template``, see `vmpool._templates`): the sandbox runs on the template's
root tree instead of the host's: its /usr (so its python3, which runs the agent) and /bin, /lib...
links, its /etc with vmpool's passwd/group/hosts bound over it, the spec's env on top of vmpool's.
A missing template is built first, as root only (`vmpool._templates.ensure_built`). Such a
sandbox also has a writable home, `HOME_DIR` (a tmpfs of `HOME_SIZE_MB`, HOME points at it,
the cwd of the agent), with the image python's user site folder made at start, so that a
package `pip install --user` puts there is importable by every python3, even one started
before the install. ``vm.network: true`` shares the host's network namespace (``--share-net``)
with the host's resolv.conf: the sandbox reaches what the host reaches, **including services
on the host's loopback and abstract unix sockets**. A template with a ``start`` command is
refused (see `vmpool._template_spec.TemplateSpec`). ``template=None`` is the host tree as above.

bwrap itself runs as uid/gid 65534 when the host process is root. Measured reason: a sandbox
started by root is mapped to host uid 0, for which the kernel does not enforce RLIMIT_NPROC, so
a fork bomb would not be contained; started as an unprivileged uid, the limit holds per sandbox.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
from pathlib import Path

from . import _seccomp
from ._driver import Driver, SandboxProcess, StartOptions
from ._errors import DriverUnavailableError, TemplateError
from ._guest import GUEST_PYTHON, agent_command, guest_sources
from ._process import PopenSandboxProcess, spawn
from ._template_tree import guest_path
from ._templates import HOME_DIR, BuiltTemplate, ensure_built, load_spec

__all__ = ["BwrapDriver"]

log = logging.getLogger("vmpool.bwrap")

DEFAULT_PYTHON = "/usr/bin/python3"
HOME_SIZE_MB = 1024  # a tmpfs: memory is taken only by what is written (pip installs, caches)
SANDBOX_UID = 65534  # "nobody"
AGENT_DIR = "/opt/vmpool"
INSTALL_BWRAP = "install it with: apt-get install bubblewrap"
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
    "LANG": "C.UTF-8", "USER": "nobody", "LOGNAME": "nobody",
}
_ETC = {
    "/etc/passwd": "nobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n",
    "/etc/group": "nogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
}
_TEMPLATE_ENV = {**_ENV, "HOME": HOME_DIR}
# the home, and a shell for tools that start the user's (a terminal, pexpect)
_TEMPLATE_ETC = {**_ETC, "/etc/passwd": "nobody:x:65534:65534:nobody:%s:/bin/sh\n" % HOME_DIR}


def _bwrap_path() -> str | None:
    found = shutil.which("bwrap")
    return found or ("/usr/bin/bwrap" if os.path.exists("/usr/bin/bwrap") else None)


@functools.cache
def _bwrap_version(path: str) -> tuple[int, ...]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def _run_as() -> int | None:
    """The uid to start bwrap as: 65534 when we are root (see module docstring), else ours."""
    return SANDBOX_UID if os.geteuid() == 0 else None


def _check_python(python: str) -> str:
    if not os.path.exists(python):
        raise DriverUnavailableError(
            "python interpreter %s not found; install it with: apt-get install python3 "
            "(or pass python= an interpreter under /usr)" % python)
    real = os.path.realpath(python)
    if not real.startswith("/usr/"):
        raise DriverUnavailableError(
            "python interpreter %s resolves to %s, outside /usr, the only host tree the sandbox "
            "sees; pass python= an interpreter installed under /usr" % (python, real))
    return python


def _template(name: str) -> BuiltTemplate:
    """The built template `name` (a shipped name or a spec path), built first if it is not.
    DriverUnavailableError for a bad spec, a spec bwrap cannot run, or a build that fails or
    cannot run here (not root)."""
    try:
        spec = load_spec(name)
        if spec.start is not None:  # refused before any build: see TemplateSpec
            raise DriverUnavailableError(
                "template %r has a start command (%r), which the bwrap driver cannot run: it runs as "
                "root in a VM, and a bwrap sandbox has no root and ends every process but the agent "
                "after each program; use the microvm driver, or a spec without 'start'" % (spec.name, spec.start))
        return ensure_built(spec, progress=log.info)
    except TemplateError as exc:
        raise DriverUnavailableError(str(exc)) from exc


def _template_python(template: BuiltTemplate, python: str | None) -> str:
    python = python or GUEST_PYTHON
    if not guest_path(template.tree, python).is_file():
        raise DriverUnavailableError("template %r has no python interpreter %s (its agent runs %s)"
                                     % (template.name, python, GUEST_PYTHON))
    return python


def _memfd(name: str, data: bytes) -> int:
    """An anonymous file holding `data`, readable by bwrap whatever its uid; no temp files."""
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Argv:
    """Accumulates a bwrap command line and the fds it refers to."""

    def __init__(self, bwrap: str) -> None:
        self.args = [bwrap]
        self.fds: list[int] = []

    def add(self, *args: str) -> None:
        self.args.extend(args)

    def data(self, option: str, name: str, payload: bytes, dest: str | None = None) -> None:
        fd = _memfd(name, payload)
        self.fds.append(fd)
        self.add(option, str(fd), *([dest] if dest else []))


def _build_argv(bwrap: str, python: str, options: StartOptions, template: BuiltTemplate | None = None) -> _Argv:
    argv = _Argv(bwrap)
    argv.add("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
             "--cap-drop", "ALL", "--hostname", "vmpool")
    network = template is not None and template.spec.vm.network and options.network is not False
    if network:
        argv.add("--share-net")
    if _bwrap_version(bwrap) >= (0, 8, 0):
        argv.add("--disable-userns")  # no nested user namespaces (seccomp blocks them too)
    argv.add(*(_runtime_binds() if template is None else _template_binds(template.tree)))
    argv.add("--dev", "/dev", "--proc", "/proc")
    argv.add("--tmpfs", "/proc/1", "--remount-ro", "/proc/1")  # bwrap's init: see module docstring
    argv.add("--size", str(options.tmp_size_mb * 1024 * 1024), "--tmpfs", "/tmp")
    if template is not None:
        argv.add("--size", str(HOME_SIZE_MB * 1024 * 1024), "--perms", "0755", "--tmpfs", HOME_DIR)
        if template.user_site is not None:
            argv.add("--dir", template.user_site)
    for name, source in guest_sources():
        argv.data("--ro-bind-data", "vmpool-guest", source, "%s/%s" % (AGENT_DIR, name))
    etc = dict(_ETC if template is None else _TEMPLATE_ETC)
    if network:
        etc["/etc/resolv.conf"] = _host_resolv_conf()
    for path, content in etc.items():
        argv.data("--ro-bind-data", "vmpool-etc", content.encode(), path)
    argv.add("--remount-ro", "/", "--remount-ro", "/dev")  # /tmp (and the home) stay writable
    argv.add("--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
             "--chdir", "/tmp" if template is None else HOME_DIR, "--clearenv")
    env = _ENV if template is None else {**_TEMPLATE_ENV, **template.spec.env}
    for key, value in env.items():
        argv.add("--setenv", key, value)
    seccomp = _seccomp.build_filter()
    if seccomp is not None:
        argv.data("--seccomp", "vmpool-seccomp", seccomp)
    argv.add("--", *agent_command(python, AGENT_DIR, "--exclusive", *options.agent_args))
    return argv


def _runtime_binds() -> list[str]:
    """Read-only /usr plus the top-level runtime directories, as on the host."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):  # merged-/usr layout (Debian 12): recreate the symlink
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    return args


def _template_binds(tree: Path) -> list[str]:
    """The template's /usr and /etc read-only, and its top-level links or directories."""
    args = ["--ro-bind", str(tree / "usr"), "/usr", "--ro-bind", str(tree / "etc"), "/etc"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = tree / name
        if path.is_symlink():  # merged /usr (Debian 12)
            args += ["--symlink", os.readlink(path), "/" + name]
        elif path.is_dir():
            args += ["--ro-bind", str(path), "/" + name]
    return args


def _host_resolv_conf() -> str:
    """The host's resolver configuration (its content: /etc/resolv.conf is often a symlink into
    /run). With the host's network namespace, even a loopback resolver (127.0.0.53) works."""
    try:
        return Path("/etc/resolv.conf").read_text(encoding="utf-8")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """Host pids whose parent is `pid` (no /proc/<pid>/task/*/children on every kernel)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path("/proc/%s/stat" % entry).read_bytes()
            except OSError:
                continue
            if int(data[data.rindex(b")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


class BwrapProcess(PopenSandboxProcess):
    """A bwrap sandbox: outer bwrap (host) -> bwrap init (PID 1 inside) -> the agent."""

    def _inner_init(self) -> int | None:
        children = _children(self.pid)
        return children[0] if children else None

    def agent_host_pid(self) -> int | None:
        init = self._inner_init()
        agents = _children(init) if init is not None else []
        return agents[0] if agents else None

    def _teardown(self) -> None:
        # SIGKILL to the namespace's init makes the kernel kill everything in the PID namespace
        # before init's exit completes; bwrap then exits, so reaping it means nothing is left.
        init = self._inner_init()
        if init is not None:
            try:
                os.kill(init, signal.SIGKILL)
            except OSError:
                pass
            if self.wait_exit(5.0):
                return
        super()._teardown()


class BwrapDriver(Driver):
    """Sandboxes made of Linux namespaces with bubblewrap. See the module docstring.

    bwrap: path of the bwrap binary (default: found on PATH, else /usr/bin/bwrap).
    python: default interpreter inside the sandbox (``LocalSandbox.create(python=...)`` overrides it);
    a sandbox from a template runs the template's /usr/bin/python3 instead (or the ``python=``
    given, which must exist in the template).
    """

    name = "bwrap"

    def __init__(self, bwrap: str | None = None, python: str = DEFAULT_PYTHON) -> None:
        self.bwrap = bwrap or _bwrap_path()
        self.python = python

    def available(self) -> str | None:
        if self.bwrap is None or not os.access(self.bwrap, os.X_OK):
            return "bubblewrap (%s) is not installed; %s" % (self.bwrap or "bwrap", INSTALL_BWRAP)
        try:
            _check_python(self.python)
        except DriverUnavailableError as exc:
            return str(exc)
        return _probe(self.bwrap)

    def isolation(self) -> str:
        if self.bwrap is None or not os.access(self.bwrap, os.X_OK):
            tool = "bubblewrap missing"
        else:
            tool = "bubblewrap %s" % ".".join(map(str, _bwrap_version(self.bwrap)))
        if _seccomp.supported():
            return "namespaces+seccomp (%s)" % tool
        return "namespaces, no seccomp filter on %s (%s)" % (platform.machine(), tool)

    def start(self, options: StartOptions) -> SandboxProcess:
        reason = self.available()
        if reason is not None or self.bwrap is None:
            raise DriverUnavailableError(reason or "bubblewrap is not installed; " + INSTALL_BWRAP)
        template = _template(options.template) if options.template is not None else None
        if template is not None:
            python = _template_python(template, options.python)
        else:
            python = _check_python(options.python or self.python)
        argv = _build_argv(self.bwrap, python, options, template)
        try:
            popen, stderr_file = spawn(argv.args, pass_fds=argv.fds, user=_run_as())
        finally:
            for fd in argv.fds:
                os.close(fd)
        return BwrapProcess(popen, stderr_file)


@functools.cache
def _probe(bwrap: str) -> str | None:
    """Start one trivial sandbox to learn whether user namespaces work here (once per process)."""
    argv = [bwrap, "--unshare-all", "--unshare-user", *_runtime_binds(), "--", "/usr/bin/true"]
    ids = {} if _run_as() is None else {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/", **ids)  # type: ignore[call-overload]
    except (OSError, subprocess.SubprocessError) as exc:
        return "bubblewrap cannot run: %s" % exc
    if done.returncode != 0:
        return ("bubblewrap cannot create namespaces here (%s); unprivileged user namespaces must "
                "be enabled (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces)"
                % done.stderr.strip()[:200])
    return None
