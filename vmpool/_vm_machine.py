"""Starting microVMs of one template on this host: cold boot, snapshot, restore.

`Machine.snapshot` boots a VM cold (first use), waits for the agent's hello, disconnects so
that the agent waits for its next host, and migrates the running VM to a file in the cache,
keyed by everything that must match on restore (`Machine.identity`: template build, initramfs,
QEMU version, command line). On a KVM host that first boot is also the proof that KVM works
(`vmpool._vm_accel`).
`Machine.restore` starts QEMU with ``-incoming fd:N`` on that file, sends the guest init the
sync request (entropy, time, /tmp size; see `vmpool._guest_init`) and connects to the agent,
which greets the new host with a hello. A snapshot QEMU cannot load raises `SnapshotRejected`.
Every VM has a QMP monitor (``qmp.sock`` in its run folder), which pausing one uses
(`vmpool._vm_pause`).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import select
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _qemu
from ._bwrap import BwrapProcess, _run_as, _runtime_binds
from ._driver import StartOptions
from ._errors import SandboxError
from ._initramfs import build_initramfs
from ._process import Popen, _deadline, _wait_s, spawn
from ._templates import BuiltTemplate, cache_dir
from ._vm_accel import accelerator, record_kvm_failure
from ._vm_host import new_run_dir, owner_tag

__all__ = ["Machine", "MicroVMProcess", "SnapshotRejected"]

log = logging.getLogger("vmpool.microvm")

BOOT_TIMEOUT_S = 300.0  # a cold boot under TCG on a loaded 2-core host: ~7 s alone, 50 s x8
KVM_BOOT_TIMEOUT_S = 60.0  # hardware KVM boots in about a second; PVM-style fakes never do
RESTORE_TIMEOUT_S = 120.0
SNAPSHOT_FORMAT = 1  # bump when what a snapshot holds changes meaning


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
    """One VM as the host sees it: the confining bwrap -> QEMU (the bwrap process tree's
    lifecycle is `BwrapProcess`'s); the agent's channel is a unix socket to QEMU. The control
    socket stays connected for the VM's life, so the guest init sleeps instead of polling."""

    def __init__(self, popen: Popen, stderr_file: object, run_dir: Path, machine: Machine) -> None:
        super().__init__(popen, stderr_file)  # type: ignore[arg-type]
        self.run_dir = run_dir
        self.machine = machine  # what started it, with the configuration a pause must record
        self.sock: socket.socket | None = None
        self.control: socket.socket | None = None
        self._control_id = 0

    def attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    def control_request(self, op: str, deadline: float, **fields: Any) -> dict[str, Any]:
        """One request to the guest init over the control port (see `vmpool._guest_init`),
        connected on first use; the reply's result. SandboxError if the guest init reports a
        failure or does not answer by `deadline` (monotonic)."""
        if self.control is None:
            self.control = _qemu.connect_unix(self.run_dir / "control.sock", deadline, self.alive)
        self._control_id += 1
        self.control.sendall(json.dumps({"id": self._control_id, "op": op, **fields}).encode() + b"\n")
        reply = json.loads(_qemu.read_line(self.control, bytearray(), deadline, "the guest init"))
        if not reply.get("ok") or not isinstance(reply.get("result"), dict):
            raise SandboxError("the guest init failed %s: %s" % (op, reply.get("error", reply)))
        result: dict[str, Any] = reply["result"]
        return result

    def _connected(self) -> socket.socket:
        if self.sock is None:  # between the agent's hosts (a pause) or killed
            raise ConnectionResetError("not connected to the agent")
        return self.sock

    def _wait(self, event: int, deadline: float) -> bool:
        poller = select.poll()
        poller.register(self._connected(), event)
        return bool(poller.poll(_wait_s(deadline) * 1000))

    def send(self, data: bytes, timeout: float) -> None:
        deadline = _deadline(timeout)
        view = memoryview(data)
        while view:
            if _wait_s(deadline) <= 0:
                raise TimeoutError("the agent did not read its input for %.0fs" % timeout)
            if self._wait(select.POLLOUT, deadline):
                try:
                    view = view[self._connected().send(view):]
                except BlockingIOError:
                    continue

    def receive(self, timeout: float) -> bytes:
        deadline = _deadline(timeout)
        while not self._wait(select.POLLIN, deadline):
            if time.monotonic() >= deadline:
                raise TimeoutError("no answer from the agent within %.0fs" % timeout)
        try:
            return self._connected().recv(1 << 20)
        except ConnectionResetError:
            return b""

    def agent_host_pid(self) -> int | None:
        return None  # the agent is a process of the guest kernel

    def qemu_pid(self) -> int | None:
        """QEMU's host pid: the child of bwrap's init, as the agent is in a bwrap sandbox."""
        return super().agent_host_pid()

    def kill(self) -> None:
        try:
            super().kill()
        finally:
            for sock in (self.sock, self.control):
                if sock is not None:
                    sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def diagnostics(self) -> str:
        text = super().diagnostics()
        try:
            console = (self.run_dir / "console.log").read_bytes()[-3000:].decode("utf-8", "replace").strip()
        except OSError:
            console = ""
        return "; ".join(part for part in (text, console and "guest console: " + console) if part)


class Machine:
    """How VMs of one template are started on this host (see the module docstring)."""

    def __init__(self, qemu: str, bwrap: str, template: BuiltTemplate) -> None:
        self.qemu, self.bwrap, self.template = qemu, bwrap, template
        self.network = bool(template.spec.vm.network)
        self.initrd = build_initramfs(template)
        self._use(accelerator())

    def _use(self, accel: _qemu.Accelerator) -> None:
        vm = self.template.spec.vm
        self.accel = accel
        self.argv = _qemu.qemu_argv(self.qemu, accel, vm.memory_mib, vm.vcpus, self.network, owner_tag())

    def identity(self) -> dict[str, Any]:
        """Everything a saved VM state depends on (JSON-able): the template build, its root
        image (this very file: a rebuild with --force differs), the initramfs (the guest files),
        the QEMU version and the command line, without the binary and the owner tag."""
        image = os.stat(self.template.rootfs)
        return {"template": self.template.hash, "image": [image.st_ino, image.st_size, image.st_mtime_ns],
                "initrd": self.initrd.name, "qemu": _qemu.qemu_version(self.qemu), "argv": self.argv[3:]}

    def snapshot_path(self) -> Path:
        shape = {"format": SNAPSHOT_FORMAT, **self.identity()}
        key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir() / "snapshots" / ("%s-%s.vmstate" % (self.template.name, key))

    def _launch(self, extra: list[str], pass_fds: tuple[int, ...] = (), network: bool | None = None) -> MicroVMProcess:
        uid = _run_as()
        run_dir = new_run_dir(uid)
        layout = _qemu.VmLayout(Path(self.template.kernel), self.initrd, Path(self.template.rootfs), run_dir)
        qemu = self.argv + _qemu.qmp_argv() + extra
        # network=False: the same devices (a snapshot must match), but QEMU's user-mode network
        # sits in an empty network namespace, so nothing the guest sends gets anywhere
        argv = _qemu.confine_argv(self.bwrap, _runtime_binds(), layout, qemu, kvm=self.accel.hardware,
                                  network=self.network and network is not False)
        groups = [_qemu.kvm_group()] if self.accel.hardware and uid is not None else []
        try:
            popen, stderr_file = spawn(argv, pass_fds=pass_fds, user=uid, groups=groups)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return MicroVMProcess(popen, stderr_file, run_dir, self)

    def snapshot(self) -> Path:
        """The snapshot of an idle VM of this shape, made now if it is not cached."""
        path = self.snapshot_path()
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / (path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                return path
            if not self.accel.hardware:
                self._make_snapshot(path, BOOT_TIMEOUT_S)
                return path
            try:  # the proof that KVM works here: a guest boots
                self._make_snapshot(path, KVM_BOOT_TIMEOUT_S)
                return path
            except SandboxError as exc:
                fallback = record_kvm_failure(str(exc))
        self._use(fallback)
        return self.snapshot()

    def _make_snapshot(self, path: Path, timeout: float) -> None:
        started = time.monotonic()
        log.info("booting template %s to snapshot it (%s)", self.template.name, self.accel.name)
        vm = self._launch([])
        fd, partial = tempfile.mkstemp(prefix=".%s." % path.name, dir=path.parent)
        try:
            deadline = time.monotonic() + timeout
            self._first_hello(vm, deadline)
            time.sleep(0.3)  # let the guest see the disconnect before its state is frozen
            qmp = _qemu.QMP(vm.run_dir / "qmp.sock", 60.0, vm.alive)
            qmp.migrate_to_fd(fd, deadline)
            qmp.close()
            os.chmod(partial, 0o644)
            os.replace(partial, path)
            self._prune(path)
        finally:
            os.close(fd)
            vm.kill()
            if os.path.exists(partial):
                os.unlink(partial)
        log.info("snapshot of %s ready in %.1fs: %s (%d MB)", self.template.name,
                 time.monotonic() - started, path, path.stat().st_size // 2**20)

    def _prune(self, current: Path) -> None:
        """Delete this template's other snapshots: made by an older agent, image or QEMU, they
        would only fill the disk (~100 MB each). A process still using one finds it gone and
        makes its own (`MicroVMDriver.start`)."""
        for old in current.parent.glob("%s-*.vmstate" % self.template.name):
            if old != current:
                for stale in (old, old.with_name(old.name + ".lock")):
                    try:
                        stale.unlink()
                    except OSError:
                        pass

    @staticmethod
    def _first_hello(vm: MicroVMProcess, deadline: float) -> None:
        """Wait for the cold-booted agent's hello, then disconnect: the snapshot holds an
        agent waiting for its next host."""
        agent = _qemu.connect_unix(vm.run_dir / "agent.sock", deadline, vm.alive)
        try:
            hello = json.loads(_qemu.read_line(agent, bytearray(), deadline, "the agent (cold boot)"))
        except SandboxError as exc:
            raise SandboxError("%s; %s" % (exc, vm.diagnostics())) from exc
        finally:
            agent.close()
        if hello.get("op") != "hello":
            raise SandboxError("unexpected first message from the agent: %.200r" % hello)

    def restore(self, snapshot: Path, options: StartOptions, stopped: bool = False) -> MicroVMProcess:
        """A VM restored from `snapshot`, synced (see `_sync`) and connected to its agent.
        `stopped`: the state was saved from a stopped VM (a pause), which QEMU leaves stopped
        once it has loaded it; continue it then."""
        fd = os.open(snapshot, os.O_RDONLY)
        info = os.fstat(fd)
        try:
            vm = self._launch(["-incoming", "fd:%d" % fd], pass_fds=(fd,), network=options.network)
        finally:
            os.close(fd)
        try:
            deadline = time.monotonic() + RESTORE_TIMEOUT_S
            if stopped:
                self._continue(vm, deadline)
            self._sync(vm, deadline, options)
            vm.attach(_qemu.connect_unix(vm.run_dir / "agent.sock", deadline, vm.alive))
            return vm
        except BaseException as exc:
            details = vm.diagnostics()
            # QEMU exits on its own, saying so, when it cannot load the snapshot
            exited = isinstance(exc, SandboxError) and vm.wait_exit(2.0)
            details = vm.diagnostics() or details
            rejected = exited and "load of migration failed" in details
            vm.kill()
            message = "%s (%s)" % (exc, details) if details else str(exc)
            if rejected:
                raise SnapshotRejected("QEMU could not restore %s: %s" % (snapshot, message), snapshot,
                                       (info.st_dev, info.st_ino)) from exc
            if isinstance(exc, SandboxError) and details:
                raise SandboxError(message) from exc
            raise

    @staticmethod
    def _continue(vm: MicroVMProcess, deadline: float) -> None:
        """Wait until QEMU has loaded the incoming state, then start the VM's CPUs."""
        qmp = _qemu.QMP(vm.run_dir / "qmp.sock", max(deadline - time.monotonic(), 1.0), vm.alive)
        try:
            while (status := qmp.execute("query-status").get("status")) == "inmigrate":
                if time.monotonic() > deadline:
                    raise SandboxError("QEMU did not load the saved VM in time")
                time.sleep(0.005)
            if status != "running":
                qmp.execute("cont")
        finally:
            qmp.close()

    @staticmethod
    def _sync(vm: MicroVMProcess, deadline: float, options: StartOptions) -> None:
        """Fresh entropy, clock and /tmp size for a restored guest; refused unless the guest
        kernel's random generator was reseeded."""
        result = vm.control_request("sync", deadline, time_ns=time.time_ns(), tmp_size_mb=options.tmp_size_mb,
                                    entropy_b64=base64.b64encode(os.urandom(64)).decode())
        if result.get("reseeded") is not True:
            raise SandboxError("the restored guest did not reseed its random generator: %s"
                               % result.get("reseed_error", "no reason given"))
