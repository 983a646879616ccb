"""The microvm driver: every sandbox is a QEMU virtual machine restored from a snapshot.

A VM boots the template's Debian kernel with vmpool's initramfs (`vmpool._initramfs`): the
template's root image read-only under a tmpfs overlay, PID 1 ``_guest_init.py``, and the same
agent as the bwrap driver running as uid 65534, reached over a virtio-serial port. No network
device unless the template asks for one.

Snapshots: the first VM of a template (per QEMU version, accelerator and machine shape) is
booted cold, left with its agent idle and no host connected, and migrated to a file in the
cache. Every sandbox after that is QEMU restoring that file (``-incoming``): a fraction of a
second instead of a boot. After each restore the host sends the guest fresh entropy and the
time over a root-only control port, and the guest forces its kernel's random generator to reseed
(Debian's cloud kernel has no vmgenid driver to do it), so clones share neither random state
nor a stale clock.

Lifecycle: QEMU runs confined (`vmpool._qemu`), dies with the host process (bubblewrap's
``--die-with-parent``), and leftovers of a host that could not clean up (its run folders, and
QEMUs whose owner is gone) are reaped when the driver starts in a new process. The driver
never reuses a VM whose program timed out (`Driver.reuse_after_timeout`).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import platform
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from . import _qemu
from ._bwrap import BwrapProcess, _bwrap_path, _run_as, _runtime_binds
from ._driver import Driver, SandboxProcess, StartOptions
from ._errors import DriverUnavailableError, SandboxError
from ._initramfs import build_initramfs
from ._process import _deadline, _wait_s, spawn
from ._templates import BuiltTemplate, TemplateError, cache_dir, cached, ensure_built

__all__ = ["MicroVMDriver", "reap_leftovers", "snapshot_path"]

log = logging.getLogger("vmpool.microvm")

DEFAULT_TEMPLATE = "base"
GUEST_PYTHON = "/usr/bin/python3"
BOOT_TIMEOUT_S = 300.0  # a cold boot under TCG on a loaded 2-core host: ~7 s alone, 50 s x8
KVM_BOOT_TIMEOUT_S = 60.0  # hardware KVM boots in about a second; PVM-style fakes never do
RESTORE_TIMEOUT_S = 120.0
OWNER_PREFIX = "vmpool-owner-"
SNAPSHOT_FORMAT = 1  # bump when what a snapshot holds changes meaning


def _run_root() -> Path:
    """Where per-VM run folders live (sockets, console logs): short paths for unix sockets."""
    root = Path(tempfile.gettempdir()) / ("vmpool-microvm-%d" % os.geteuid())
    root.mkdir(mode=0o711, exist_ok=True)
    return root


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
            if arg.startswith(OWNER_PREFIX.encode()):
                owner = int(arg[len(OWNER_PREFIX):] or b"0")
                if owner != os.getpid() and not _pid_alive(owner):
                    try:
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed += 1
                    except OSError:
                        pass
    for folder in _run_root().iterdir():
        owner_text = folder.name.split("-", 1)[0]
        if owner_text.isdigit() and int(owner_text) != os.getpid() and not _pid_alive(int(owner_text)):
            shutil.rmtree(folder, ignore_errors=True)
    return killed


_reaped_in: set[int] = set()
_reap_lock = threading.Lock()


def _reap_once() -> None:
    with _reap_lock:
        if os.getpid() not in _reaped_in:
            _reaped_in.add(os.getpid())
            count = reap_leftovers()
            if count:
                log.warning("killed %d leftover QEMU process(es) of vmpool runs that crashed", count)


class SnapshotRejected(SandboxError):
    """QEMU exited while restoring a snapshot: the file cannot be used (see `discard`)."""

    def __init__(self, message: str, path: Path, inode: tuple[int, int]) -> None:
        super().__init__(message)
        self.path, self.inode = path, inode

    def discard(self) -> None:
        """Delete the snapshot, unless another process has replaced it meanwhile."""
        try:
            info = self.path.stat()
            if (info.st_dev, info.st_ino) == self.inode:
                self.path.unlink()
        except OSError:
            pass


class MicroVMProcess(BwrapProcess):
    """One VM: the confining bwrap -> QEMU; the agent's channel is a unix socket to QEMU."""

    def __init__(self, popen: object, stderr_file: object, run_dir: Path) -> None:
        super().__init__(popen, stderr_file)  # type: ignore[arg-type]
        self.run_dir = run_dir
        self.sock: socket.socket | None = None

    def attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    def send(self, data: bytes, timeout: float) -> None:
        assert self.sock is not None
        deadline = _deadline(timeout)
        view = memoryview(data)
        while view:
            wait = _wait_s(deadline)
            if wait <= 0:
                raise TimeoutError("the agent did not read its input for %.0fs" % timeout)
            if select.select([], [self.sock], [], wait)[1]:
                try:
                    view = view[self.sock.send(view):]
                except BlockingIOError:
                    continue

    def receive(self, timeout: float) -> bytes:
        assert self.sock is not None
        deadline = _deadline(timeout)
        while not select.select([self.sock], [], [], _wait_s(deadline))[0]:
            if time.monotonic() >= deadline:
                raise TimeoutError("no answer from the agent within %.0fs" % timeout)
        try:
            return self.sock.recv(1 << 20)
        except ConnectionResetError:
            return b""

    def agent_host_pid(self) -> int | None:
        return None  # the agent is a process of the guest kernel

    def qemu_pid(self) -> int | None:
        """QEMU's host pid (the process inside the confining bwrap)."""
        return super().agent_host_pid()

    def kill(self) -> None:
        try:
            super().kill()
        finally:
            if self.sock is not None:
                self.sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def diagnostics(self) -> str:
        text = super().diagnostics()
        try:
            console = (self.run_dir / "console.log").read_bytes()[-3000:].decode("utf-8", "replace")
        except OSError:
            console = ""
        return "; ".join(part for part in (text, console.strip() and "guest console: " + console.strip()) if part)


class MicroVMDriver(Driver):
    """QEMU microVMs from templates (see the module docstring).

    template: the template of sandboxes whose `StartOptions.template` is None.
    """

    name = "microvm"
    reuse_after_timeout = False
    takes_agent_args = False

    def __init__(self, template: str = DEFAULT_TEMPLATE) -> None:
        self.template = template
        self.qemu = _qemu.qemu_binary()
        self.bwrap = _bwrap_path()

    def available(self) -> str | None:
        if self.qemu is None:
            return "QEMU (qemu-system-x86_64) is not installed; " + _qemu.INSTALL_QEMU
        if self.bwrap is None:
            return "bubblewrap (which confines QEMU) is not installed; apt-get install bubblewrap"
        if cached(self.template) is None:
            missing = [tool for tool in ("debootstrap", "mkfs.ext4", "apt-get", "dpkg-deb")
                       if shutil.which(tool) is None]
            if missing:
                return ("template %r is not built and building it needs %s; install with: "
                        "apt-get install debootstrap e2fsprogs" % (self.template, ", ".join(missing)))
            if os.geteuid() != 0:
                return ("template %r is not built and building it needs root (debootstrap); run "
                        "`sudo vmpool template build %s`" % (self.template, self.template))
        return None

    def auto_reason(self) -> str | None:
        reason = self.available()
        if reason is None:
            accel = accelerator()
            if not accel.hardware:
                return "no hardware virtualization (%s); emulated VMs are only used when asked for" % accel.reason
        return reason

    def isolation(self) -> str:
        accel = accelerator()
        version = _qemu.qemu_version(self.qemu) if self.qemu else "missing"
        kind = "KVM" if accel.hardware else "TCG emulation"
        return "microVM (QEMU %s, %s, %s; %s)" % (version, kind, accel.machine, accel.reason)

    def start(self, options: StartOptions) -> SandboxProcess:
        reason = self.available()
        if reason is not None or self.qemu is None or self.bwrap is None:
            raise DriverUnavailableError(reason or "QEMU or bubblewrap is missing")
        if options.agent_args:
            raise DriverUnavailableError(
                "the microvm driver cannot pass agent arguments (%s): its agent is already running "
                "in the snapshot a VM is restored from" % " ".join(options.agent_args))
        if options.python not in (None, GUEST_PYTHON):
            raise DriverUnavailableError(
                "the microvm driver runs the template's %s, not %s" % (GUEST_PYTHON, options.python))
        _reap_once()
        try:
            template = ensure_built(options.template or self.template, progress=log.info)
        except TemplateError as exc:
            raise DriverUnavailableError(str(exc)) from exc
        vm = _Machine(self.qemu, self.bwrap, template)
        try:
            return vm.restore(vm.snapshot(), options)
        except SnapshotRejected as exc:  # corrupt, or from a QEMU build that cannot read it
            log.warning("%s; making a new snapshot", exc)
            exc.discard()
            return vm.restore(vm.snapshot(), options)


def snapshot_path(template: BuiltTemplate) -> Path | None:
    """Where the snapshot of `template` for this host's QEMU and accelerator is (or will be)
    cached; None without QEMU or bubblewrap."""
    qemu, bwrap = _qemu.qemu_binary(), _bwrap_path()
    if qemu is None or bwrap is None:
        return None
    return _Machine(qemu, bwrap, template).snapshot_path()


_accelerator: _qemu.Accelerator | None = None
_accelerator_lock = threading.Lock()


def _kvm_check_file() -> Path:
    return cache_dir() / "kvm-boot-check.json"


def _host_key() -> str:
    qemu = _qemu.qemu_binary()
    return "%s/%s" % (platform.release(), _qemu.qemu_version(qemu) if qemu else "-")


def accelerator() -> _qemu.Accelerator:
    """The accelerator VMs use in this process: `_qemu.detect_accelerator`, unless a KVM guest
    was seen failing to boot on this host (kernel and QEMU version), then TCG."""
    global _accelerator
    with _accelerator_lock:
        if _accelerator is None:
            accel = _qemu.detect_accelerator()
            if accel.hardware:
                try:
                    record = json.loads(_kvm_check_file().read_text())
                except (OSError, ValueError):
                    record = {}
                if isinstance(record, dict) and record.get("host") == _host_key():
                    accel = _tcg_after_kvm_failure(str(record.get("reason")))
            log.info("microvm accelerator: %s with machine %s (%s)", accel.name, accel.machine, accel.reason)
            _accelerator = accel
        return _accelerator


def _tcg_after_kvm_failure(reason: str) -> _qemu.Accelerator:
    return _qemu.Accelerator("tcg", "q35", "a KVM guest did not boot on this host (%s)" % reason)


def _record_kvm_failure(reason: str) -> None:
    """Remember (for this process and, through the cache, later ones) that KVM cannot boot a
    guest here, so every Ray worker does not wait for the same failed boot."""
    global _accelerator
    reason = " ".join(reason.split())[:300]  # one line: it ends up in every result's isolation
    log.warning("a KVM guest did not boot (%s); using TCG emulation instead", reason)
    with _accelerator_lock:
        _accelerator = _tcg_after_kvm_failure(reason)
    path = _kvm_check_file()
    partial = path.with_suffix(".partial-%d" % os.getpid())
    partial.write_text(json.dumps({"host": _host_key(), "reason": reason}))
    os.chmod(partial, 0o644)
    os.replace(partial, path)


class _Machine:
    """How VMs of one template are started on this host: cold boot, snapshot, restore."""

    def __init__(self, qemu: str, bwrap: str, template: BuiltTemplate) -> None:
        self.qemu, self.bwrap, self.template = qemu, bwrap, template
        self.network = bool(template.spec.vm.network)
        self.initrd = build_initramfs(template)
        self._use(accelerator())

    def _use(self, accel: _qemu.Accelerator) -> None:
        vm = self.template.spec.vm
        self.accel = accel
        self.argv = _qemu.qemu_argv(self.qemu, accel, vm.memory_mib, vm.vcpus, self.network,
                                    OWNER_PREFIX + str(os.getpid()))

    def _key(self) -> str:
        shape = {"format": SNAPSHOT_FORMAT, "template": self.template.hash,
                 "initrd": self.initrd.name, "qemu": _qemu.qemu_version(self.qemu),
                 "argv": self.argv[3:]}  # without the binary and the owner tag
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    def _launch(self, extra: list[str], pass_fds: tuple[int, ...] = ()) -> MicroVMProcess:
        run_dir = Path(tempfile.mkdtemp(prefix="%d-" % os.getpid(), dir=_run_root()))
        uid = _run_as()
        if uid is not None:
            os.chown(run_dir, uid, uid)
        layout = _qemu.VmLayout(Path(self.template.kernel), self.initrd, Path(self.template.rootfs), run_dir)
        argv = _qemu.confine_argv(self.bwrap, _runtime_binds(), layout, self.argv + extra,
                                  kvm=self.accel.hardware, network=self.network)
        try:
            popen, stderr_file = spawn(argv, pass_fds=pass_fds, user=uid)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return MicroVMProcess(popen, stderr_file, run_dir)

    def snapshot_path(self) -> Path:
        return cache_dir() / "snapshots" / ("%s.vmstate" % self._key())

    def snapshot(self) -> Path:
        """The snapshot of an idle VM of this shape, made now if it is not cached."""
        path = self.snapshot_path()
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return path
        with open(folder / (path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                return path
            if not self.accel.hardware:
                self._make_snapshot(path, BOOT_TIMEOUT_S)
                return path
            try:  # the proof that KVM works here: a guest boots (a real one does in ~1 s)
                self._make_snapshot(path, KVM_BOOT_TIMEOUT_S)
                return path
            except SandboxError as exc:
                _record_kvm_failure(str(exc))
        self._use(accelerator())
        return self.snapshot()

    def _make_snapshot(self, path: Path, timeout: float) -> None:
        started = time.monotonic()
        log.info("booting template %s to snapshot it (%s)", self.template.name, self.accel.name)
        vm = self._launch([])
        partial = path.with_suffix(".partial-%d" % os.getpid())
        try:
            deadline = time.monotonic() + timeout
            agent = _qemu.connect_unix(vm.run_dir / "agent.sock", deadline, vm.alive)
            try:
                hello = json.loads(_qemu.read_line(agent, bytearray(), deadline, "the agent (cold boot)"))
            except SandboxError as exc:
                raise SandboxError("%s; %s" % (exc, vm.diagnostics())) from exc
            finally:
                agent.close()  # the snapshot holds an agent waiting for its next host
            if hello.get("op") != "hello":
                raise SandboxError("unexpected first message from the agent: %.200r" % hello)
            time.sleep(0.3)  # let the guest see the disconnect before its state is frozen
            qmp = _qemu.QMP(vm.run_dir / "qmp.sock", 60.0, vm.alive)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                qmp.execute("getfd", fds=(fd,), fdname="snapshot")
            finally:
                os.close(fd)
            qmp.execute("migrate", uri="fd:snapshot")
            while True:
                status = qmp.execute("query-migrate").get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise SandboxError("snapshotting the VM failed (migration %s)" % status)
                time.sleep(0.05)
            qmp.close()
            os.chmod(partial, 0o644)
            os.replace(partial, path)
        finally:
            vm.kill()
            if partial.exists():
                partial.unlink()
        log.info("snapshot of %s ready in %.1fs: %s (%d MB)", self.template.name,
                 time.monotonic() - started, path, path.stat().st_size // 2**20)

    def restore(self, snapshot: Path, options: StartOptions) -> MicroVMProcess:
        fd = os.open(snapshot, os.O_RDONLY)
        info = os.fstat(fd)
        try:
            vm = self._launch(["-incoming", "fd:%d" % fd], pass_fds=(fd,))
        finally:
            os.close(fd)
        try:
            deadline = time.monotonic() + RESTORE_TIMEOUT_S
            self._sync(vm, deadline, options)
            vm.attach(_qemu.connect_unix(vm.run_dir / "agent.sock", deadline, vm.alive))
            return vm
        except BaseException as exc:
            details = vm.diagnostics()
            # QEMU exits on its own when it cannot load the snapshot (it may still be exiting)
            rejected = isinstance(exc, SandboxError) and vm.wait_exit(2.0)
            vm.kill()
            message = "%s (%s)" % (exc, details) if details else str(exc)
            if rejected:
                raise SnapshotRejected("QEMU could not restore %s: %s" % (snapshot, message), snapshot,
                                       (info.st_dev, info.st_ino)) from exc
            if isinstance(exc, SandboxError) and details:
                raise SandboxError(message) from exc
            raise

    @staticmethod
    def _sync(vm: MicroVMProcess, deadline: float, options: StartOptions) -> None:
        """Fresh entropy, clock and /tmp size for a restored guest (see module docstring)."""
        control = _qemu.connect_unix(vm.run_dir / "control.sock", deadline, vm.alive)
        try:
            request = {"id": 1, "op": "sync", "entropy_b64": base64.b64encode(os.urandom(64)).decode(),
                       "time_ns": time.time_ns(), "tmp_size_mb": options.tmp_size_mb}
            control.sendall(json.dumps(request).encode() + b"\n")
            reply = json.loads(_qemu.read_line(control, bytearray(), deadline, "the guest init"))
        finally:
            control.close()
        if not reply.get("ok"):
            raise SandboxError("the restored guest could not be prepared: %s" % reply.get("error"))
