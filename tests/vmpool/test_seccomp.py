"""The seccomp filters: their BPF programs checked with a small interpreter, then the sandbox
filter's effect inside a real bubblewrap sandbox (syscalls made with ctypes). The program filter's
effect is covered by the conformance suite (TestAgentIsOutOfReach) and test_agent."""

import errno
import os
import struct
import textwrap

import pytest

from vmpool import Limits, LocalSandbox, get_driver
from vmpool import _seccomp as seccomp

ALLOW = seccomp.SECCOMP_RET_ALLOW
EPERM = seccomp.SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
AUDIT_ARCH_I386 = 0x40000003
CLONE_NEWUSER = 0x10000000
THREAD_FLAGS = 0x003D0F00  # what glibc's pthread_create passes to clone


def evaluate(program: bytes, nr: int, arch: int = seccomp.AUDIT_ARCH_X86_64, arg0: int = 0,
             arg1: int = 0) -> int:
    """Run a classic-BPF seccomp program on one syscall (the subset of BPF the filters use)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0 & 2**64 - 1, arg1 & 2**64 - 1, 0, 0, 0, 0)
    code = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif op == 0x06:
            return int(k)
        elif op == 0x05:
            pc += 1 + k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += 1 + (jt if taken else jf)


@pytest.fixture(scope="module")
def program() -> bytes:
    built = seccomp.build_filter("x86_64")
    assert built is not None
    return built


def test_layout(program: bytes) -> None:
    assert len(program) % 8 == 0 and len(program) // 8 < 100
    assert seccomp.build_filter("aarch64") is None and not seccomp.supported("aarch64")


@pytest.mark.parametrize("name", sorted(seccomp.DENIED_SYSCALLS))
def test_denied(program: bytes, name: str) -> None:
    assert evaluate(program, seccomp.DENIED_SYSCALLS[name]) == EPERM


@pytest.mark.parametrize("nr", [0, 1, 2, 9, 57, 59, 61, 231])  # read write open mmap fork execve wait4 exit_group
def test_ordinary_syscalls_allowed(program: bytes, nr: int) -> None:
    assert evaluate(program, nr) == ALLOW


def test_clone(program: bytes) -> None:
    assert evaluate(program, seccomp.CLONE, arg0=THREAD_FLAGS) == ALLOW
    assert evaluate(program, seccomp.CLONE, arg0=17) == ALLOW  # fork: SIGCHLD
    assert evaluate(program, seccomp.CLONE, arg0=CLONE_NEWUSER | 17) == EPERM
    assert evaluate(program, seccomp.CLONE, arg0=0x40000000 | 17) == EPERM  # CLONE_NEWNET
    assert evaluate(program, seccomp.CLONE3) == ENOSYS


def test_other_abis_denied(program: bytes) -> None:
    assert evaluate(program, seccomp.X32_SYSCALL_BIT | 39) == EPERM
    assert evaluate(program, 20, arch=AUDIT_ARCH_I386) == EPERM


PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if ret == 0 and nr == 56:
        os._exit(0)  # a clone that went through: the child leaves at once
    return "ok" if ret >= 0 else os.strerror(ctypes.get_errno())
print("ptrace", call(101, 0, 0, 0, 0))                    # PTRACE_TRACEME
print("unshare", call(272, 0x10000000))                   # CLONE_NEWUSER
print("mount", call(165, 0, 0, 0, 0, 0))
print("clone_newuser", call(56, 0x10000000 | 17, 0, 0, 0, 0))
print("clone3", call(435, 0, 0))
print("x32_getpid", call(0x40000000 + 39))
print("keyctl", call(250, 0, 0, 0, 0, 0))
print("bpf", call(321, 0, 0, 0))
print("getpid", call(39))
"""


@pytest.mark.sandbox
@pytest.mark.parametrize("driver", ["bwrap", pytest.param("microvm", marks=pytest.mark.microvm)])
def test_filter_applies_inside_the_sandbox(driver: str) -> None:
    # bwrap applies it to the whole sandbox; in a VM the agent installs it (--sandbox-filter),
    # so that no program can leave a key or a namespace behind for the next one
    reason = get_driver(driver).available()
    if reason is not None:
        pytest.skip("needs the %s driver: %s" % (driver, reason))
    with LocalSandbox.create(driver) as sandbox:
        if driver == "bwrap":
            assert "seccomp" in sandbox.isolation
        result = sandbox.run_program(textwrap.dedent(PROBE), Limits(wall_time_s=10))
    assert result.status == "ok", result
    seen = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    denied = os.strerror(errno.EPERM)
    assert seen == {"ptrace": denied, "unshare": denied, "mount": denied, "clone_newuser": denied,
                    "clone3": os.strerror(errno.ENOSYS), "x32_getpid": denied, "keyctl": denied,
                    "bpf": denied, "getpid": "ok"}



AGENT, INIT, OTHER = 2, 1, 3  # inside a bwrap sandbox: the agent, bwrap's init, a program
KILL, SETPRIORITY, IOPRIO_SET = 62, 141, 251
PRIO_PROCESS, PRIO_PGRP, PRIO_USER = 0, 1, 2
IOPRIO_WHO_PROCESS, IOPRIO_WHO_USER = 1, 3


@pytest.fixture(scope="module")
def guard() -> bytes:
    built = seccomp.build_program_filter([INIT, AGENT], "x86_64")
    assert built is not None
    return built


@pytest.mark.parametrize("name", sorted(seccomp.TARGET_SYSCALLS))
def test_program_filter_protects_the_agent(guard: bytes, name: str) -> None:
    nr = seccomp.TARGET_SYSCALLS[name]
    for target in (AGENT, INIT, -AGENT, -INIT, -1, AGENT | 1 << 32, (-AGENT) & 2**32 - 1):
        assert evaluate(guard, nr, arg0=target) == EPERM, target
    for target in (0, OTHER, -OTHER, 4 << 32):  # itself, its own group, its children
        assert evaluate(guard, nr, arg0=target) == ALLOW, target


def test_program_filter_which_who(guard: bytes) -> None:
    for nr, process, user in ((SETPRIORITY, PRIO_PROCESS, PRIO_USER), (IOPRIO_SET, IOPRIO_WHO_PROCESS, IOPRIO_WHO_USER)):
        assert evaluate(guard, nr, arg0=process, arg1=AGENT) == EPERM
        assert evaluate(guard, nr, arg0=process, arg1=INIT | 1 << 40) == EPERM
        assert evaluate(guard, nr, arg0=process, arg1=0) == ALLOW
        assert evaluate(guard, nr, arg0=process, arg1=OTHER) == ALLOW
        assert evaluate(guard, nr, arg0=user, arg1=OTHER) == EPERM  # every process of a uid
    assert evaluate(guard, SETPRIORITY, arg0=PRIO_PGRP, arg1=INIT) == EPERM
    assert evaluate(guard, SETPRIORITY, arg0=PRIO_PGRP, arg1=OTHER) == ALLOW


@pytest.mark.parametrize("name", sorted(seccomp.IPC_CREATE_SYSCALLS))
def test_program_filter_refuses_lasting_ipc_objects(guard: bytes, name: str) -> None:
    assert evaluate(guard, seccomp.IPC_CREATE_SYSCALLS[name]) == ENOSYS


def test_program_filter_other_syscalls(guard: bytes) -> None:
    assert evaluate(guard, seccomp.PIDFD_SEND_SIGNAL, arg0=5) == ENOSYS  # target unknowable
    for nr in (0, 1, 2, 9, 39, 56, 57, 59, 61, 101, 231):  # including ptrace: the sandbox filter's job
        assert evaluate(guard, nr, arg0=AGENT, arg1=AGENT) == ALLOW, nr
    assert evaluate(guard, seccomp.X32_SYSCALL_BIT | KILL, arg0=OTHER) == EPERM
    assert evaluate(guard, 37, arch=AUDIT_ARCH_I386, arg0=OTHER) == EPERM  # i386 kill


def test_program_filter_arguments() -> None:
    assert seccomp.build_program_filter([AGENT], "aarch64") is None
    with pytest.raises(ValueError):
        seccomp.build_program_filter([0, AGENT], "x86_64")  # 0 means "myself": never protected
    many = seccomp.build_program_filter(range(1, 300), "x86_64")  # jumps stay in range
    assert many is not None and evaluate(many, KILL, arg0=-299) == EPERM
    assert evaluate(many, KILL, arg0=300) == ALLOW
