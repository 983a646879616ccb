"""Two small seccomp filters, hand-assembled as classic BPF.

`build_filter`, the sandbox filter, is a second line of defence behind the namespaces: it removes
kernel attack surface a code-generation benchmark never needs (namespaces, mounts, ptrace,
keyrings, eBPF, module loading, ...) from everything in the sandbox, agent included. bubblewrap
installs it (``--seccomp FD``).

`build_program_filter`, the program filter, is installed by the agent on itself when it starts,
so every child it forks (every program and command, and all they start) is born with it and
cannot remove it: filters only stack. It keeps programs away from the agent: no signal, resource
limit or scheduling change may target the agent or its ancestors (killing or stopping the agent
would turn the program's own failure into a broken sandbox, and a lowered priority would be
inherited by every later program), and it refuses to create SysV IPC objects and POSIX message
queues, which would outlive the program (see `IPC_CREATE_SYSCALLS`). The agent itself never
does any of that.

Everything not named is allowed. Refused syscalls fail with an errno, so a program sees an
ordinary error instead of dying. Both filters are arrays of ``struct sock_filter`` (u16 code,
u8 jt, u8 jf, u32 k) in native byte order.

Only x86_64 is supported: the syscall numbers below are x86_64's. Both builders return None
elsewhere, and the driver reports the missing filter in its isolation string. On x86_64 every
non-x86_64 ABI (i386 via int 0x80, x32 via the 0x40000000 bit) is refused outright, because a
deny-list by number is meaningless under another numbering.

This module also runs inside the sandbox, next to the agent (it is one of
`vmpool._guest.GUEST_FILES`): stdlib only, no vmpool imports.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Dict, Iterable, List, Optional, Tuple, Union

__all__ = ["DENIED_SYSCALLS", "IPC_CREATE_SYSCALLS", "TARGET_SYSCALLS", "WHICH_WHO_SYSCALLS",
           "build_filter", "build_program_filter", "supported"]

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_OFFSET_NR, _OFFSET_ARCH = 0, 4
_OFFSET_ARG0_LOW, _OFFSET_ARG1_LOW = 16, 24  # little endian: the low word of each u64 first
_WORD = 0xFFFFFFFF

# classic BPF opcodes
_LD_W_ABS = 0x20
_JA, _JEQ_K, _JGE_K, _JSET_K = 0x05, 0x15, 0x35, 0x45
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

# The program filter. Syscalls that act on another process named by args[0], a pid_t: the
# kernel truncates it to 32 bits, so comparing the low word is exactly what the kernel acts on
# (a program cannot hide a protected pid behind high bits). For tgkill and rt_tgsigqueueinfo
# args[0] is the thread group, which must contain the thread named in args[1]; tkill names a
# thread, whose id is the pid for the single-threaded processes protected here.
TARGET_SYSCALLS: Dict[str, int] = {
    "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
    "pidfd_open": 434, "prlimit64": 302, "sched_setparam": 142, "sched_setscheduler": 144,
    "sched_setaffinity": 203, "sched_setattr": 314,
}
# (which, who) syscalls: args[0] says what kind of id args[1] is. The "user" kind (PRIO_USER,
# IOPRIO_WHO_USER) reaches every process of the uid, the agent included, so it is refused.
WHICH_WHO_SYSCALLS: Dict[str, Tuple[int, int]] = {"setpriority": (141, 2), "ioprio_set": (251, 3)}
# pidfd_send_signal names its target by an fd, which seccomp cannot resolve (and an open
# /proc/<pid> directory is such an fd), so it is refused outright, with ENOSYS as on a kernel
# without pidfds: code that handles older kernels falls back to kill(2), which is checked.
PIDFD_SEND_SIGNAL = 424
# Objects of the sandbox's IPC namespace that outlive the process that made them: a program
# could leave hundreds of MB of shared memory (unaccounted by RLIMIT_AS once detached) or a
# message for the next program. Refused with ENOSYS, as on a kernel built without SysV IPC or
# POSIX message queues, which portable code already handles.
IPC_CREATE_SYSCALLS: Dict[str, int] = {"shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240}

Instruction = Tuple[int, int, int, int]  # code, jt, jf, k
Target = Union[int, str]  # an offset or a label


def supported(machine: Optional[str] = None) -> bool:
    """Whether the builders can produce filters for this (or the given) machine."""
    return (machine or os.uname().machine) == "x86_64"


class _Assembler:
    """Emits instructions whose jump targets are labels, resolved to BPF's forward offsets."""

    def __init__(self) -> None:
        self.code: List[Tuple[int, Target, Target, Target]] = []
        self.labels: Dict[str, int] = {}

    def emit(self, code: int, k: int, jt: Target = 0, jf: Target = 0) -> None:
        self.code.append((code, jt, jf, k))

    def jump(self, target: str) -> None:
        """Unconditional jump: its offset is in k (32 bits), not in jt/jf."""
        self.code.append((_JA, 0, 0, target))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> List[Instruction]:
        out: List[Instruction] = []
        for index, (code, jt, jf, k) in enumerate(self.code):
            out.append((code, self._offset(index, jt, 255), self._offset(index, jf, 255),
                        self._offset(index, k, _WORD)))
        return out

    def _offset(self, index: int, target: Target, limit: int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - index - 1
        if not 0 <= offset <= limit:  # classic BPF jumps are forward-only; jt/jf are 8-bit
            raise ValueError("jump to %s out of range" % target)
        return offset


def _check_abi(asm: _Assembler) -> None:
    """Jump to "deny" unless the syscall uses the x86_64 ABI; leave its number loaded."""
    asm.emit(_LD_W_ABS, _OFFSET_ARCH)
    asm.emit(_JEQ_K, AUDIT_ARCH_X86_64, 0, "deny")
    asm.emit(_LD_W_ABS, _OFFSET_NR)
    asm.emit(_JGE_K, X32_SYSCALL_BIT, "deny", 0)


def _instructions() -> List[Instruction]:
    asm = _Assembler()
    _check_abi(asm)
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


def _program_instructions(protected: Iterable[int]) -> List[Instruction]:
    values = {-1 & _WORD}  # kill(-1): every process the caller may signal
    for number in protected:
        if number <= 0:  # 0 means "myself" or "my own group" to these syscalls
            raise ValueError("protected ids must be positive, got %d" % number)
        values.update((number, -number & _WORD))  # a process, or the group with that id
    asm = _Assembler()
    _check_abi(asm)
    # Dispatch on the number alone first: a syscall that is not named below is allowed without
    # looking at its arguments, so the kernel can cache that verdict and skip this filter.
    for number in sorted(TARGET_SYSCALLS.values()):
        asm.emit(_JEQ_K, number, "target_in_arg0", 0)
    for number, _user_kind in sorted(WHICH_WHO_SYSCALLS.values()):
        asm.emit(_JEQ_K, number, "which_who_%d" % number, 0)
    for number in sorted(IPC_CREATE_SYSCALLS.values()) + [PIDFD_SEND_SIGNAL]:
        asm.emit(_JEQ_K, number, "enosys", 0)
    asm.emit(_RET_K, SECCOMP_RET_ALLOW)
    asm.label("deny")
    asm.emit(_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
    asm.label("enosys")
    asm.emit(_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS)
    for number, user_kind in sorted(WHICH_WHO_SYSCALLS.values()):
        asm.label("which_who_%d" % number)
        asm.emit(_LD_W_ABS, _OFFSET_ARG0_LOW)
        asm.emit(_JEQ_K, user_kind, 0, 1)
        asm.emit(_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
        asm.emit(_LD_W_ABS, _OFFSET_ARG1_LOW)  # a pid or a process group id: same check
        asm.jump("compare")
    asm.label("target_in_arg0")
    asm.emit(_LD_W_ABS, _OFFSET_ARG0_LOW)
    asm.label("compare")
    for value in sorted(values):  # a refusal after each test keeps every jump short
        asm.emit(_JEQ_K, value, 0, 1)
        asm.emit(_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
    asm.emit(_RET_K, SECCOMP_RET_ALLOW)
    return asm.assemble()


def _pack(instructions: List[Instruction]) -> bytes:
    return b"".join(struct.pack("=HBBI", *ins) for ins in instructions)


def build_filter(machine: Optional[str] = None) -> Optional[bytes]:
    """The sandbox filter as bytes for ``bwrap --seccomp FD``, or None on unsupported
    architectures."""
    if not supported(machine):
        return None
    return _pack(_instructions())


def build_program_filter(protected: Iterable[int], machine: Optional[str] = None) -> Optional[bytes]:
    """The program filter as bytes for ``PR_SET_SECCOMP``, or None on unsupported architectures.

    protected: positive pids and process-group ids of the processes programs must not touch (the
    agent, its ancestors and their groups). A syscall of `TARGET_SYSCALLS` or
    `WHICH_WHO_SYSCALLS` fails with EPERM when the low 32 bits of its target equal n or -n for
    any protected n, or -1 (kill's "everyone"); any other target is allowed, so a program can
    still signal itself, its children and their groups.
    """
    if not supported(machine):
        return None
    return _pack(_program_instructions(protected))
