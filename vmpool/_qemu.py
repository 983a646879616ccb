"""QEMU for the microvm driver: which accelerator this host offers, the command line of one VM,
the confinement QEMU itself runs in, and a small QMP client.

Accelerator: KVM with QEMU's ``microvm`` machine where the CPU has hardware virtualization
(vmx/svm) and /dev/kvm is real KVM; otherwise TCG (emulation) with ``q35``, because ``microvm``
under TCG hangs at timer calibration and PVM (software nested virtualization, which also
provides /dev/kvm) cannot run stock kernels. Whether a KVM guest really boots is checked by the
driver on first use (`vmpool._vm_machine`, `vmpool._vm_accel`), which falls back to TCG and says why.

Confinement: QEMU runs inside bubblewrap (new user/PID/IPC/UTS/mount namespaces, no network
namespace access unless the template has a network, read-only /usr, only the VM's files and its
run folder visible), as uid 65534 when the host process is root, with QEMU's own seccomp filter
(``-sandbox on``: no exec, no privilege changes, no obsolete syscalls). Under TCG the emulator
parses everything the guest does, and QEMU does not treat TCG as a security boundary; this is
what stands between a guest that escapes the emulator and the host.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import SandboxError

__all__ = ["Accelerator", "QMP", "VmLayout", "confine_argv", "connect_unix", "detect_accelerator",
           "kvm_group", "qemu_argv", "qemu_binary", "qemu_version", "qmp_argv", "read_line"]

INSTALL_QEMU = "install it with: apt-get install --no-install-recommends qemu-system-x86"
VM_ROOT = "/vm"  # where the VM's files appear inside QEMU's mount namespace
# quiet boot, a panic or reboot ends the VM (with -no-reboot), one serial port, no PS/2 probing
# (slow under TCG), the CPU's RNG trusted at boot. KASLR stays on, but it is drawn once, at the
# cold boot: every clone of a snapshot shares that kernel layout.
KERNEL_ARGS = ("console=ttyS0 quiet reboot=t panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux "
               "i8042.nopnp i8042.dumbkbd random.trust_cpu=on")
MIGRATION_BANDWIDTH = 1 << 40  # bytes/s: unthrottled (see QMP.migrate_to_fd)
TCG_TB_MIB = 128  # TCG's translated-code cache per VM (QEMU's default, 1 GiB, costs host RSS)


@dataclass(frozen=True)
class Accelerator:
    """name: "kvm" or "tcg"; machine: QEMU machine type; reason: why this one, for humans."""

    name: str
    machine: str
    reason: str

    @property
    def hardware(self) -> bool:
        return self.name == "kvm"


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


@functools.cache
def qemu_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"version (\d+\.\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def detect_accelerator() -> Accelerator:
    """KVM+microvm if this host has usable hardware virtualization, else TCG+q35 (see module
    docstring). ``VMPOOL_ACCEL=tcg`` forces emulation (e.g. to compare on a KVM host);
    ``VMPOOL_ACCEL=kvm`` skips the checks (the boot check on first use still applies)."""
    tcg = functools.partial(Accelerator, "tcg", "q35")
    forced = os.environ.get("VMPOOL_ACCEL")
    if forced == "tcg":
        return tcg("VMPOOL_ACCEL=tcg")
    if forced == "kvm":
        return Accelerator("kvm", "microvm", "VMPOOL_ACCEL=kvm")
    if not os.path.exists("/dev/kvm"):
        return tcg("no /dev/kvm (no hardware virtualization, or the kvm module is not loaded)")
    if os.path.isdir("/sys/module/kvm_pvm"):
        return tcg("/dev/kvm is PVM (software nested virtualization), which cannot run stock "
                   "guest kernels in useful time")
    if not _cpu_flags() & {"vmx", "svm"}:
        return tcg("the CPU has no vmx/svm flag, so /dev/kvm is not hardware virtualization")
    if os.geteuid() == 0:  # QEMU will run as uid 65534 with /dev/kvm's group (kvm_group)
        mode = os.stat("/dev/kvm").st_mode
        if not mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP:
            return tcg("/dev/kvm (mode %o) is not open to its group, so the unprivileged user QEMU "
                       "runs as cannot use it; give it mode 0660 and group kvm, as Debian's udev "
                       "rules do" % stat.S_IMODE(mode))
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return tcg("no read/write access to /dev/kvm (add the user to the 'kvm' group)")
    return Accelerator("kvm", "microvm", "hardware virtualization (vmx/svm) and /dev/kvm")


def kvm_group() -> int:
    """The group that may use /dev/kvm: QEMU's supplementary group when it runs as uid 65534."""
    return os.stat("/dev/kvm").st_gid


@dataclass(frozen=True)
class VmLayout:
    """Host paths of one VM's files; QEMU sees them under VM_ROOT (`guest_path`)."""

    kernel: Path
    initrd: Path
    rootfs: Path
    run_dir: Path  # per VM, writable by QEMU: sockets and the console log

    @staticmethod
    def guest_path(name: str) -> str:
        return "%s/run/%s" % (VM_ROOT, name)


def qemu_argv(qemu: str, accel: Accelerator, memory_mib: int, vcpus: int, network: bool,
              owner_tag: str) -> list[str]:
    """The QEMU command line of one VM (paths as QEMU sees them inside its confinement).

    The same line boots a VM and restores a snapshot of one (plus ``-incoming``): device
    configuration must match exactly between the two. Every VM also gets `qmp_argv`, which
    is not part of that configuration (a monitor is no device).
    """
    run = VmLayout.guest_path
    argv = [qemu, "-name", owner_tag, "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-m", str(memory_mib), "-smp", str(vcpus)]
    if accel.hardware:
        argv += ["-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on", "-accel", "kvm",
                 "-cpu", "host"]
        bus = "device"  # virtio-mmio
    else:
        argv += ["-M", "q35", "-accel", "tcg,thread=multi,tb-size=%d" % TCG_TB_MIB, "-cpu", "max"]
        bus = "pci"
    argv += [
        "-kernel", VM_ROOT + "/boot/vmlinuz", "-initrd", VM_ROOT + "/boot/initrd.img",
        "-append", KERNEL_ARGS + (" vmpool.net=1" if network else ""),
        "-serial", "file:" + run("console.log"),
        "-drive", "id=root,file=%s/boot/rootfs.ext4,format=raw,if=none,readonly=on" % VM_ROOT,
        "-device", "virtio-blk-%s,drive=root" % bus,
        "-device", "virtio-serial-%s" % bus,
        "-chardev", "socket,id=agent,path=%s,server=on,wait=off" % run("agent.sock"),
        "-device", "virtserialport,chardev=agent,name=agent",
        "-chardev", "socket,id=control,path=%s,server=on,wait=off" % run("control.sock"),
        "-device", "virtserialport,chardev=control,name=control",
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]
    if network:
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-%s,netdev=net0,romfile=" % bus]
    return argv


def qmp_argv() -> list[str]:
    """A QMP monitor on a unix socket in the VM's run folder (which only the host user and
    QEMU's uid can enter): how the host stops, snapshots and pauses the VM. QEMU's ``-sandbox``
    filter allows it: migrating to an fd the host passes over it is plain I/O."""
    return ["-qmp", "unix:%s,server=on,wait=off" % VmLayout.guest_path("qmp.sock")]


def confine_argv(bwrap: str, runtime_binds: list[str], layout: VmLayout, qemu: list[str],
                 kvm: bool, network: bool) -> list[str]:
    """`qemu` wrapped in bubblewrap (see module docstring)."""
    argv = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", *runtime_binds, "--dev", "/dev", "--proc", "/proc",
            "--size", str(16 * 2**20), "--tmpfs", "/tmp"]
    if network:  # QEMU's user-mode network forwards the guest's DNS to the host's resolvers
        argv += ["--share-net", "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    if kvm:
        argv += ["--dev-bind", "/dev/kvm", "/dev/kvm"]
    argv += ["--ro-bind", str(layout.kernel), VM_ROOT + "/boot/vmlinuz",
             "--ro-bind", str(layout.initrd), VM_ROOT + "/boot/initrd.img",
             "--ro-bind", str(layout.rootfs), VM_ROOT + "/boot/rootfs.ext4",
             "--bind", str(layout.run_dir), VM_ROOT + "/run",
             "--remount-ro", "/", "--chdir", VM_ROOT + "/run", "--clearenv",
             "--setenv", "PATH", "/usr/bin:/bin", "--", *qemu]
    return argv


def connect_unix(path: Path, deadline: float, alive: Any = None) -> socket.socket:
    """Connect to a listening unix socket QEMU creates, retrying until `deadline` (monotonic)
    while it does not exist or refuses. `alive`: a callable; once it returns False, stop
    waiting (QEMU died)."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise SandboxError("QEMU did not open %s in time (%s)" % (path.name, exc)) from exc
            if alive is not None and not alive():
                raise SandboxError("QEMU exited before opening %s" % path.name) from exc
            time.sleep(0.005)


def read_line(sock: socket.socket, buffer: bytearray, deadline: float, what: str,
              limit: int = 1 << 20) -> bytes:
    """The next newline-terminated line from `sock` (without the newline), at most `limit`."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while b"\n" not in buffer:
        if len(buffer) > limit:
            raise SandboxError("%s sent a line longer than %d bytes" % (what, limit))
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(min(remaining, 3600) * 1000):
            raise SandboxError("no answer from %s in time" % what)
        try:
            data = sock.recv(65536)
        except OSError as exc:  # e.g. reset: QEMU died with the connection open
            raise SandboxError("%s closed the connection (%s)" % (what, exc)) from exc
        if not data:
            raise SandboxError("%s closed the connection" % what)
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


class QMP:
    """A blocking QMP (QEMU Machine Protocol) connection: enough to stop, resume and migrate a
    VM. Events QEMU sends meanwhile are skipped."""

    def __init__(self, path: Path, timeout: float, alive: Any = None) -> None:
        deadline = time.monotonic() + timeout
        self._sock = connect_unix(path, deadline, alive)
        self._buffer = bytearray()
        self._timeout = timeout
        read_line(self._sock, self._buffer, deadline, "QMP")  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, fds: tuple[int, ...] = (), **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        data = json.dumps(message).encode() + b"\n"
        if fds:
            socket.send_fds(self._sock, [data], list(fds))
        else:
            self._sock.sendall(data)
        deadline = time.monotonic() + self._timeout
        while True:
            reply = json.loads(read_line(self._sock, self._buffer, deadline, "QMP"))
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise SandboxError("QMP %s failed: %s" % (command, reply["error"].get("desc", reply)))

    def migrate_to_fd(self, fd: int, deadline: float) -> None:
        """Write the VM's state into `fd` (a file) and wait until it is complete; SandboxError
        (the migration cancelled) if it fails or is not done by `deadline` (monotonic). A
        running VM keeps running during and after it; stop it first for a consistent state."""
        # QEMU throttles migrations to 128 MiB/s by default, for the network; a file takes
        # what the disk gives (measured: 312 MB in 0.25 s instead of 2.4 s)
        unthrottled: dict[str, Any] = {"max-bandwidth": MIGRATION_BANDWIDTH}
        self.execute("migrate-set-parameters", **unthrottled)
        self.execute("getfd", fds=(fd,), fdname="migration")
        self.execute("migrate", uri="fd:migration")
        while True:
            state = self.execute("query-migrate")
            status = state.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise SandboxError("saving the VM failed: %s" % state.get("error-desc", "migration " + status))
            if time.monotonic() > deadline:
                self.execute("migrate_cancel")
                raise SandboxError("saving the VM did not finish in time (migration %s)" % status)
            time.sleep(0.02)

    def close(self) -> None:
        self._sock.close()
