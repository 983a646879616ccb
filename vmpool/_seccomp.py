"""A small seccomp deny-list for sandboxed programs, hand-assembled as classic BPF.

The filter is a second line of defence behind the namespaces: it removes kernel attack surface
a code-generation benchmark never needs (namespaces, mounts, ptrace, keyrings, eBPF, module
loading, ...). Everything else is allowed. Denied syscalls fail with EPERM, so a program sees an
ordinary error instead of dying. The program is what bubblewrap's ``--seccomp FD`` reads: an
array of ``struct sock_filter`` (u16 code, u8 jt, u8 jf, u32 k) in native byte order.

Only x86_64 is supported: the syscall numbers below are x86_64's. `build_filter` returns None
elsewhere, and the driver reports the missing filter in its isolation string. On x86_64 every
non-x86_64 ABI (i386 via int 0x80, x32 via the 0x40000000 bit) is denied outright, because a
deny-list by number is meaningless under another numbering.
"""

from __future__ import annotations

import errno
import platform
import struct
from typing import Dict, List, Optional, Tuple

__all__ = ["DENIED_SYSCALLS", "build_filter", "supported"]

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0_LOW = 0, 4, 16  # little endian: low word of args[0] first

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45
_RET_K = 0x06

DENIED_SYSCALLS: Dict[str, int] = {  # x86_64 numbers (arch/x86/entry/syscalls/syscall_64.tbl)
    "ptrace": 101, "mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272,
    "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
    "userfaultfd": 323, "perf_event_open": 298, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169,
    "swapon": 167, "swapoff": 168, "open_by_handle_at": 304, "process_vm_readv": 310,
    "process_vm_writev": 311, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
}
CLONE = 56
CLONE3 = 435
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 \
    | 0x20000000 | 0x40000000 | 0x00000080

Instruction = Tuple[int, int, int, int]  # code, jt, jf, k


def supported(machine: Optional[str] = None) -> bool:
    """Whether `build_filter` can produce a filter for this (or the given) machine."""
    return (machine or platform.machine()) == "x86_64"


class _Assembler:
    """Emits instructions whose jump targets are labels, resolved to BPF's forward offsets."""

    def __init__(self) -> None:
        self.code: List[Tuple[int, object, object, int]] = []
        self.labels: Dict[str, int] = {}

    def emit(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> List[Instruction]:
        out: List[Instruction] = []
        for index, (code, jt, jf, k) in enumerate(self.code):
            out.append((code, self._offset(index, jt), self._offset(index, jf), k))
        return out

    def _offset(self, index: int, target: object) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[str(target)] - index - 1
        if not 0 <= offset <= 255:  # classic BPF jumps are forward-only, 8-bit
            raise ValueError("jump to %s out of range" % target)
        return offset


def _instructions() -> List[Instruction]:
    asm = _Assembler()
    asm.emit(_LD_W_ABS, _OFFSET_ARCH)
    asm.emit(_JEQ_K, AUDIT_ARCH_X86_64, 0, "deny")
    asm.emit(_LD_W_ABS, _OFFSET_NR)
    asm.emit(_JGE_K, X32_SYSCALL_BIT, "deny", 0)
    for number in sorted(DENIED_SYSCALLS.values()):
        asm.emit(_JEQ_K, number, "deny", 0)
    # clone3 passes its flags in memory, which seccomp cannot read: ENOSYS makes glibc fall
    # back to clone(2), whose flags are a register we can check.
    asm.emit(_JEQ_K, CLONE3, "enosys", 0)
    asm.emit(_JEQ_K, CLONE, 0, "allow")
    asm.emit(_LD_W_ABS, _OFFSET_ARG0_LOW)
    asm.emit(_JSET_K, CLONE_NAMESPACE_FLAGS, "deny", "allow")
    asm.label("allow")
    asm.emit(_RET_K, SECCOMP_RET_ALLOW)
    asm.label("deny")
    asm.emit(_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
    asm.label("enosys")
    asm.emit(_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS)
    return asm.assemble()


def build_filter(machine: Optional[str] = None) -> Optional[bytes]:
    """The filter as bytes for ``bwrap --seccomp FD``, or None on unsupported architectures."""
    if not supported(machine):
        return None
    return b"".join(struct.pack("=HBBI", *ins) for ins in _instructions())
