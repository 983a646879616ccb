"""Pausing a microVM to a file and resuming it: the microvm driver's `Driver.pause`/`resume`.

A VM's whole state is its memory: the root image is read-only and everything written (/tmp,
the overlay) lives in guest RAM, so one QEMU migration stream is the complete sandbox, with
its processes. Pause:

1. the host closes its agent connection and asks the guest init to confirm that the agent has
   seen it (``await_detached``, see `vmpool._guest_init`): the frozen agent then waits for its
   next host as in a template snapshot, and greets whoever resumes it with a hello;
2. QMP ``stop`` (no guest instruction runs from here on), then ``migrate`` into `MEMORY_FILE`,
   fsynced; uncompressed, because resuming is what users wait for (the README has the
   figures: compressing with zlib saves about two thirds of the file and makes resuming
   several times slower);
3. QEMU is killed. If 1 or 2 fail, the VM is continued and the agent's channel connected
   again instead (the agent greets it with a hello), so a pause that could not be written
   leaves the sandbox running.

Resume is a snapshot restore (`Machine.restore`) of that file by a `Machine` whose
`Machine.identity` (template build, root image, initramfs, QEMU version, command line) equals
the one saved: anything else would run the guest against another disk or device model, so
it is refused with `PausedStateError` before QEMU starts. The restore sends the same ``sync``
clones get: the clock (the guest's has stood still since the pause), the /tmp size, and fresh
entropy with a forced reseed. A resumed VM is no clone, but its random state has lain in a
file that may have been copied (two resumes would share it) or read (later random numbers
would be predictable), and a reseed costs nothing.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import _qemu
from ._driver import StartOptions
from ._errors import PausedStateError, SandboxError
from ._templates import BuiltTemplate, cached
from ._vm_machine import Machine, MicroVMProcess

__all__ = ["MEMORY_FILE", "pause", "resume", "saved_template"]

MEMORY_FILE = "memory.vmstate"
DETACH_TIMEOUT_S = 30.0  # the guest init's wait for the agent to see its host leave
SAVE_TIMEOUT_S = 600.0  # writing the memory: a 512 MiB guest takes about a second here
RECOVER_TIMEOUT_S = 30.0

_WHAT_DIFFERS = {
    "template": "the template was rebuilt from another spec since the pause",
    "image": "the template's root image was rebuilt (vmpool template build --force) since the pause",
    "initrd": "vmpool's guest files (agent, init) changed since the pause: resume it with the vmpool "
              "version that paused it",
    "qemu": "QEMU was upgraded or downgraded since the pause",
    "argv": "the VM's QEMU command line differs (another vmpool version or accelerator)",
}


class SavedVM(BaseModel, extra="forbid"):
    """What `pause` returns and `resume` checks (stored in state.json as ``driver_state``)."""

    template: dict[str, str]  # {"name", "hash"}
    image: list[int]
    initrd: str
    qemu: str
    argv: list[str]
    accelerator: str
    memory_file: str


def pause(vm: MicroVMProcess, directory: Path) -> dict[str, Any]:
    """Save `vm` into `directory` and kill it (see the module docstring)."""
    machine = vm.machine
    identity = machine.identity()
    saved = SavedVM(template={"name": machine.template.name, "hash": identity.pop("template")},
                    accelerator=machine.accel.name, memory_file=MEMORY_FILE, **identity)
    fd = os.open(directory / MEMORY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        qmp = _qemu.QMP(vm.run_dir / "qmp.sock", 60.0, vm.alive)
    except BaseException:
        os.close(fd)
        vm.kill()  # a VM whose monitor does not answer is broken
        raise
    try:
        try:
            _detach_agent(vm)
            qmp.execute("stop")
            qmp.migrate_to_fd(fd, time.monotonic() + SAVE_TIMEOUT_S)
            os.fsync(fd)
        except BaseException as exc:
            _recover(vm, qmp, exc)
            if not isinstance(exc, Exception):  # Ctrl-C: the VM runs on, the caller stops
                raise
            raise OSError("could not save the VM (it keeps running): %s" % exc) from exc
    finally:
        os.close(fd)
        qmp.close()
    vm.kill()
    return saved.model_dump()


def _detach_agent(vm: MicroVMProcess) -> None:
    if vm.sock is not None:
        vm.sock.shutdown(socket.SHUT_RDWR)  # ends the connection even while a reader polls it
        vm.sock.close()
        vm.sock = None
    result = vm.control_request("await_detached", time.monotonic() + DETACH_TIMEOUT_S + 10,
                                timeout_s=DETACH_TIMEOUT_S)
    if result.get("detached") is not True:
        raise SandboxError("the agent did not notice its host leaving within %.0fs (its threads wait in %s)"
                           % (DETACH_TIMEOUT_S, result.get("waits")))


def _recover(vm: MicroVMProcess, qmp: _qemu.QMP, failure: BaseException) -> None:
    """Let a VM whose pause failed run on: continue its CPUs and connect to its agent again
    (which greets with a hello). SandboxError (the VM killed) if that fails too."""
    try:
        qmp.execute("cont")
        if vm.sock is None:
            vm.attach(_qemu.connect_unix(vm.run_dir / "agent.sock", time.monotonic() + RECOVER_TIMEOUT_S, vm.alive))
    except BaseException as exc:
        vm.kill()
        raise SandboxError("pausing the VM failed (%s), and it could not go on running either (%s); "
                           "it was killed" % (failure, exc)) from failure


def saved_template(saved: dict[str, Any]) -> BuiltTemplate:
    """The built template a paused VM runs: PausedStateError if `saved` is malformed or the
    cache no longer has that build."""
    state = _parse(saved)
    name, digest = state.template.get("name", ""), state.template.get("hash", "")
    template = cached(name)
    if template is None or template.hash != digest:
        raise PausedStateError(
            "the VM was paused running template %r build %s, which is no longer built here (its spec "
            "changed or its cache was cleared): it cannot be resumed" % (name, digest[:16]))
    return template


def resume(machine: Machine, directory: Path, options: StartOptions, saved: dict[str, Any]) -> MicroVMProcess:
    """Restore the VM `pause` saved into `directory` on `machine`, which must have the saved
    identity (see the module docstring)."""
    state = _parse(saved)
    if state.accelerator != machine.accel.name:
        raise PausedStateError("the VM was paused running under %s, and this process's VMs use %s (%s)"
                               % (state.accelerator.upper(), machine.accel.name.upper(), machine.accel.reason))
    if not (directory / MEMORY_FILE).is_file():
        raise PausedStateError("the paused VM in %s has no %s" % (directory, MEMORY_FILE))
    now = machine.identity()
    then = state.model_dump(include=set(now))
    then["template"] = state.template.get("hash")
    for key in now:
        if now[key] != then[key]:
            was, is_ = then[key], now[key]
            if key == "argv":  # only what differs: the whole line is long
                was, is_ = [arg for arg in was if arg not in is_], [arg for arg in is_ if arg not in was]
            raise PausedStateError("cannot resume the paused VM: %s (%s: %s then, %s now)"
                                   % (_WHAT_DIFFERS.get(key, key + " differs"), key, was, is_))
    return machine.restore(directory / MEMORY_FILE, options, stopped=True)


def _parse(saved: dict[str, Any]) -> SavedVM:
    try:
        state = SavedVM.model_validate(saved)
    except ValidationError as exc:
        raise PausedStateError("the paused VM's state is malformed: %s" % exc) from None
    if state.memory_file != MEMORY_FILE:
        raise PausedStateError("the paused VM's memory is in %r, not %r: not written by this vmpool"
                               % (state.memory_file, MEMORY_FILE))
    return state
