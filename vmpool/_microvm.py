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

Pause and resume (`Driver.pause`, `Driver.resume`; `vmpool._vm_pause`): the running VM is
migrated to a file and later restored from it like a snapshot, processes and files included.

Lifecycle: QEMU runs confined (`vmpool._qemu`), dies with the host process (bubblewrap's
``--die-with-parent``), and leftovers of a host that could not clean up (its run folders, and
QEMUs whose owner is gone) are reaped when the driver starts in a new process
(`vmpool._vm_host`). The driver never reuses a VM whose program timed out
(`Driver.reuse_after_timeout`).

Modules: this one is the driver; `vmpool._vm_machine` boots, snapshots and restores VMs;
`vmpool._vm_accel` decides the accelerator; `vmpool._vm_host` keeps run folders and reaps;
`vmpool._vm_pause` pauses and resumes;
`vmpool._qemu` builds QEMU's command line and confinement; `vmpool._initramfs` and
`vmpool._guest_init` are what the guest boots.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from . import _qemu, _vm_pause
from ._bwrap import _bwrap_path, _probe
from ._driver import Driver, SandboxProcess, StartOptions
from ._errors import DriverUnavailableError, TemplateError
from ._guest import GUEST_PYTHON
from ._template_build import check_can_build
from ._templates import BuiltTemplate, cache_dir, cached, ensure_built, load_spec
from ._vm_accel import accelerator
from ._vm_host import reap_once
from ._vm_machine import Machine, MicroVMProcess, SnapshotRejected

__all__ = ["MicroVMDriver", "snapshot_path"]

log = logging.getLogger("vmpool.microvm")

DEFAULT_TEMPLATE = "base"


class MicroVMDriver(Driver):
    """QEMU microVMs from templates (see the module docstring).

    template: the template of sandboxes whose `StartOptions.template` is None.
    """

    name = "microvm"
    reuse_after_timeout = False
    takes_agent_args = False
    keeps_memory = True

    def __init__(self, template: str = DEFAULT_TEMPLATE) -> None:
        self.template = template
        self.qemu = _qemu.qemu_binary()
        self.bwrap = _bwrap_path()

    def available(self) -> str | None:
        if self.qemu is None:
            return "QEMU (qemu-system-x86_64) is not installed; " + _qemu.INSTALL_QEMU
        if self.bwrap is None:
            return "bubblewrap (which confines QEMU) is not installed; apt-get install bubblewrap"
        reason = _probe(self.bwrap)  # QEMU runs in a bwrap user namespace
        if reason is not None:
            return reason
        if cached(self.template) is None:
            try:
                check_can_build(load_spec(self.template), cache_dir())
            except TemplateError as exc:
                return "template %r is not built, and cannot be built here: %s" % (self.template, exc)
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

    def _usable(self) -> tuple[str, str]:
        """QEMU and bwrap; DriverUnavailableError if this driver cannot run here."""
        reason = self.available()
        if reason is not None or self.qemu is None or self.bwrap is None:
            raise DriverUnavailableError(reason or "QEMU or bubblewrap is missing")
        return self.qemu, self.bwrap

    def start(self, options: StartOptions) -> SandboxProcess:
        qemu, bwrap = self._usable()
        if options.agent_args:
            raise DriverUnavailableError(
                "the microvm driver cannot pass agent arguments (%s): its agent is already running "
                "in the snapshot a VM is restored from" % " ".join(options.agent_args))
        if options.python not in (None, GUEST_PYTHON):
            raise DriverUnavailableError(
                "the microvm driver runs the template's %s, not %s" % (GUEST_PYTHON, options.python))
        reap_once()
        try:
            template = ensure_built(options.template or self.template, progress=log.info)
        except TemplateError as exc:
            raise DriverUnavailableError(str(exc)) from exc
        memory = template.spec.vm.memory_mib
        if not 1 <= options.tmp_size_mb <= memory // 2:
            raise DriverUnavailableError(
                "tmp_size_mb=%d does not fit template %r: its VM has %d MiB of RAM, and /tmp (a "
                "tmpfs) may take at most half of it" % (options.tmp_size_mb, template.name, memory))
        try:
            vm = _machine(qemu, bwrap, template)
            snapshot = vm.snapshot()
        except OSError as exc:  # e.g. a cache folder another user (root, through sudo) owns
            raise DriverUnavailableError("cannot write the microvm cache in %s: %s" % (cache_dir(), exc)) from exc
        try:
            return vm.restore(snapshot, options)
        except SnapshotRejected as exc:  # corrupt, or from a QEMU build that cannot read it
            log.warning("%s; making a new snapshot", exc)
            exc.discard()
        except FileNotFoundError:  # pruned meanwhile by a process with another agent or image
            pass
        return vm.restore(vm.snapshot(), options)

    def pause(self, process: SandboxProcess, directory: Path) -> dict[str, Any]:
        if not isinstance(process, MicroVMProcess):
            raise TypeError("not a sandbox of the microvm driver: %r" % process)
        return _vm_pause.pause(process, directory)

    def resume(self, directory: Path, options: StartOptions, saved: dict[str, Any]) -> SandboxProcess:
        qemu, bwrap = self._usable()
        reap_once()
        template = _vm_pause.saved_template(saved)
        return _vm_pause.resume(_machine(qemu, bwrap, template), directory, options, saved)


_machines: dict[tuple[str, str, str, int], Machine] = {}
_machines_lock = threading.Lock()


def _machine(qemu: str, bwrap: str, template: BuiltTemplate) -> Machine:
    """One `Machine` per template build and process: its initramfs is found (hashed) once, not
    on every sandbox start."""
    key = (qemu, bwrap, str(template.dir), os.stat(template.rootfs).st_mtime_ns)
    with _machines_lock:
        if key not in _machines:
            _machines[key] = Machine(qemu, bwrap, template)
        return _machines[key]


def snapshot_path(template: BuiltTemplate) -> Path | None:
    """Where the snapshot of `template` for this host's QEMU and accelerator is (or will be)
    cached; None without QEMU or bubblewrap."""
    qemu, bwrap = _qemu.qemu_binary(), _bwrap_path()
    if qemu is None or bwrap is None:
        return None
    return Machine(qemu, bwrap, template).snapshot_path()

