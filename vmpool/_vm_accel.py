"""Which accelerator this process's microVMs use, and the proof that KVM works.

`vmpool._qemu.detect_accelerator` reads what the host offers (CPU flags, /dev/kvm, PVM). That is
not proof: the first KVM snapshot boot on a host is (`vmpool._vm_machine`). If it fails, the
failure is recorded in the cache, keyed by host kernel and QEMU version, so that the other
processes of a run (Ray workers) do not each wait for the same failed boot; from then on VMs use
TCG and every result's isolation string says why. Deleting the record (`kvm_check_file`) makes
the next process try KVM again.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import threading
from pathlib import Path

from . import _qemu
from ._templates import cache_dir

__all__ = ["accelerator", "kvm_check_file", "record_kvm_failure"]

log = logging.getLogger("vmpool.microvm")

_chosen: _qemu.Accelerator | None = None
_lock = threading.Lock()


def kvm_check_file() -> Path:
    return cache_dir() / "kvm-boot-check.json"


def _host_key() -> str:
    qemu = _qemu.qemu_binary()
    return "%s/%s" % (platform.release(), _qemu.qemu_version(qemu) if qemu else "-")


def _after_failure(reason: str) -> _qemu.Accelerator:
    return _qemu.Accelerator("tcg", "q35", "a KVM guest did not boot on this host: %s (delete %s "
                             "to try KVM again)" % (reason, kvm_check_file()))


def accelerator() -> _qemu.Accelerator:
    """The accelerator VMs use in this process: what the host offers, unless a KVM guest was
    seen failing to boot on this host, then TCG. Decided once per process, and logged."""
    global _chosen
    with _lock:
        if _chosen is None:
            accel = _qemu.detect_accelerator()
            if accel.hardware:
                try:
                    record = json.loads(kvm_check_file().read_text())
                except (OSError, ValueError):
                    record = {}
                if isinstance(record, dict) and record.get("host") == _host_key():
                    accel = _after_failure(str(record.get("reason")))
            log.info("microvm accelerator: %s with machine %s (%s)", accel.name, accel.machine, accel.reason)
            _chosen = accel
        return _chosen


def record_kvm_failure(reason: str) -> _qemu.Accelerator:
    """Remember for this process, and through the cache for later ones, that a KVM guest did
    not boot here; the accelerator to use instead."""
    global _chosen
    reason = " ".join(reason.split())[:300]  # one line: it ends up in every result's isolation
    log.warning("a KVM guest did not boot (%s); using TCG emulation instead", reason)
    with _lock:
        _chosen = _after_failure(reason)
    path = kvm_check_file()
    fd, partial = tempfile.mkstemp(prefix=".kvm-check-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump({"host": _host_key(), "reason": reason}, handle)
    os.chmod(partial, 0o644)
    os.replace(partial, path)
    return _chosen
