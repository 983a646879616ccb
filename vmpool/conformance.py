"""The conformance suite every vmpool driver must pass: program outcomes, limits, isolation
between programs and from the host, files/commands, background processes, lifecycle and
failure handling.

Run it for a driver by importing it into a test module and naming the driver::

    import pytest
    from vmpool.conformance import *  # noqa: F401,F403  (fixtures and Test* classes)

    @pytest.fixture(scope="module")
    def vmpool_driver() -> str:
        return "bwrap"

Tests are marked ``sandbox`` (declare the marker if you use ``--strict-markers``). They use
generous time bounds so that a busy 2-core CI machine does not make them flaky.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import tarfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ._agent_fs import unpack_tar
from ._driver import get_driver
from ._errors import ProtocolError, SandboxError
from ._protocol import PROTOCOL_VERSION, b64encode
from ._processes import ProcessInfo
from ._sandbox import LocalSandbox
from ._types import ExecResult, Limits

__all__ = ["TestAgentIsOutOfReach", "TestFileSystem", "TestFilesAndCommands", "TestIsolation", "TestLifecycle",
           "TestLimits", "TestProcesses", "TestProgramOutcomes", "fresh_sandbox", "sandbox",
           "sandbox_factory", "shared_sandbox"]

SandboxFactory = Callable[..., LocalSandbox]


@pytest.fixture(scope="module")
def shared_sandbox(vmpool_driver: str) -> Iterator[list[LocalSandbox]]:
    """A holder for one sandbox reused by the tests of a module (replaced if it died)."""
    holder: list[LocalSandbox] = []
    yield holder
    for sandbox in holder:
        sandbox.kill()


@pytest.fixture
def sandbox(shared_sandbox: list[LocalSandbox], vmpool_driver: str) -> LocalSandbox:
    """A running sandbox, shared between tests: programs must not affect each other anyway."""
    if not shared_sandbox or not shared_sandbox[0].is_running():
        shared_sandbox[:] = [LocalSandbox.create(vmpool_driver)]
    return shared_sandbox[0]


@pytest.fixture
def sandbox_factory(vmpool_driver: str) -> Iterator[SandboxFactory]:
    """Creates sandboxes of the driver under test (keyword arguments go to LocalSandbox.create);
    all are killed at the end of the test."""
    made: list[LocalSandbox] = []

    def make(**options: Any) -> LocalSandbox:
        made.append(LocalSandbox.create(vmpool_driver, **options))
        return made[-1]

    yield make
    for created in made:
        created.kill()


@pytest.fixture
def fresh_sandbox(sandbox_factory: SandboxFactory) -> LocalSandbox:
    """A sandbox of its own, for tests that break it."""
    return sandbox_factory()


def run(sandbox: LocalSandbox, code: str, **limits: Any) -> ExecResult:
    return sandbox.run_program(textwrap.dedent(code), Limits(**limits))


def reused_after_timeout(sandbox: LocalSandbox) -> bool:
    """Whether `sandbox`, whose program just timed out, is still in service: it must be on
    drivers that reuse sandboxes after a timeout, and must be gone on the others (microvm)."""
    expected = get_driver(sandbox.driver).reuse_after_timeout
    assert sandbox.is_running() == expected
    return expected


def live_processes(sandbox: LocalSandbox) -> list[str]:
    """Processes in the sandbox other than the agent's ancestors, kernel threads (a VM has them)
    and this probe itself."""
    result = run(sandbox, """
        import os
        me, agent = os.getpid(), os.getppid()
        for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
            if pid in (me, agent) or pid == 1:
                continue
            try:
                stat = open("/proc/%d/stat" % pid, "rb").read()
                cmdline = open("/proc/%d/cmdline" % pid, "rb").read()
            except OSError:  # ended meanwhile
                continue
            if not int(stat[stat.rindex(b")") + 2:].split()[6]) & 0x00200000:  # PF_KTHREAD
                print(pid, cmdline.replace(b"\\0", b" ").decode())
        """)
    assert result.status == "ok", result
    return result.stdout.splitlines()


@pytest.mark.sandbox
class TestProgramOutcomes:
    def test_ok(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "print('hello', __name__)")
        assert (result.status, result.exit_code, result.stdout) == ("ok", 0, "hello __main__\n")
        assert result.error is None and result.duration_s > 0

    def test_exception_is_error_with_type(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "print('before')\ndef f():\n    raise ValueError('bad\\nvalue')\nf()\n")
        assert result.status == "error"
        assert result.error == "ValueError: bad value"
        assert result.stdout == "before\n"
        assert "Traceback" in result.stderr and "<program>" in result.stderr

    def test_syntax_error(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "def f(:\n    pass\n")
        assert result.status == "error" and result.error is not None
        assert result.error.startswith("SyntaxError")

    @pytest.mark.parametrize("ending", [
        "import sys; sys.exit(0)", "raise SystemExit(0)", "import os; os._exit(0)",
        "import sys\ndef main():\n    sys.exit()\nmain()", "exit()", "quit()",
    ])
    def test_early_exit_is_never_ok(self, sandbox: LocalSandbox, ending: str) -> None:
        result = run(sandbox, "print('started', flush=True)\n%s\nprint('unreachable')\n" % ending)
        assert result.status == "exited", result
        assert result.exit_code == 0 and result.stdout == "started\n"

    def test_exit_code_and_message(self, sandbox: LocalSandbox) -> None:
        assert run(sandbox, "import sys; sys.exit(3)").exit_code == 3
        result = run(sandbox, "raise SystemExit('bye')")
        assert (result.status, result.exit_code, result.stderr) == ("exited", 1, "bye\n")

    def test_killed_by_signal_is_exited(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
        assert (result.status, result.signal) == ("exited", 15)

    def test_unicode_and_threads_and_subprocess(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import subprocess, threading
            out = []
            threads = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]
            [t.start() for t in threads]; [t.join() for t in threads]
            print(sorted(out), subprocess.run(["echo", "sub"], capture_output=True, text=True).stdout.strip())
            print("héllo ✓")
            """)
        assert result.status == "ok", result
        assert result.stdout == "[0, 1, 2, 3] sub\nhéllo ✓\n"

    def test_program_is_main_module(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import pickle, sys, __main__
            def answer():
                return 42
            print(pickle.loads(pickle.dumps(answer))(), __main__.answer is answer, sys.argv)
            """)
        assert result.stdout == "42 True ['<program>']\n", result

    def test_sabotaged_interpreter_still_reports(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "import os, sys\nos._exit = sys.exit = lambda *a: None\nprint('done')")
        assert (result.status, result.stdout) == ("ok", "done\n")
        result = run(sandbox, "import os\nos.makedirs('a/b')\nos.chmod('a', 0)\nos.chmod('.', 0)\n"
                              "try:\n    os.chmod('/tmp', 0)\nexcept PermissionError:\n    pass\n"  # root's /tmp in a VM
                              "print(os.getcwd())")
        assert result.status == "ok", result
        later = run(sandbox, "import os; print(os.path.exists(%r))" % result.stdout.strip())
        assert later.stdout == "False\n"

    def test_output_beyond_the_cap_does_not_change_the_outcome(self, sandbox: LocalSandbox) -> None:
        # a correct program that prints a lot must still pass: the surplus is dropped, not fatal
        result = run(sandbox, "import sys\nprint('x' * 3_000_000)\nprint('err', file=sys.stderr)\n")
        assert (result.status, result.exit_code, result.error) == ("ok", 0, None), result.error
        assert result.output_truncated
        assert result.stdout == "x" * 1_000_000  # the default cap, first bytes first
        assert result.stderr == "err\n"  # past the cap, but the end of stderr is always kept
        failing = run(sandbox, "print('y' * 200_000)\nraise ValueError('late')\n", max_output_bytes=10_000)
        assert (failing.status, failing.error) == ("error", "ValueError: late")
        assert failing.output_truncated and failing.stdout == "y" * 10_000
        # the cap was spent on stdout, yet the traceback that says why it failed is kept
        assert failing.stderr.startswith("Traceback") and failing.stderr.endswith("ValueError: late\n")

    def test_output_within_the_cap_is_not_truncated(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "print('x' * 999)", max_output_bytes=1000)
        assert (result.status, result.stdout, result.output_truncated) == ("ok", "x" * 999 + "\n", False)

    def test_output_is_kept_up_to_the_agent_ceiling(self, sandbox: LocalSandbox) -> None:
        # max_output_bytes above the 8 MiB ceiling: 8 MiB kept, the program still runs to its end
        result = run(sandbox, "import sys\nchunk = 'x' * 2**20\nfor _ in range(12):\n    sys.stdout.write(chunk)\n",
                     max_output_bytes=20_000_000)
        assert (result.status, result.output_truncated) == ("ok", True), result.error
        assert len(result.stdout) == 8 * 2**20

    @pytest.mark.parametrize("stream", ["stdout", "stderr"])
    def test_endless_output_times_out(self, sandbox: LocalSandbox, stream: str) -> None:
        # reading and dropping an endless flood must not keep the agent from the wall-time limit
        code = "import sys\nwhile True:\n    sys.%s.write('x' * 1000 + '\\n')\n" % stream
        result = run(sandbox, code, wall_time_s=2)
        assert result.status == "timeout", result.error
        assert 1.9 <= result.duration_s < 20
        assert result.output_truncated and getattr(result, stream).startswith("x" * 1000)
        if stream == "stdout":
            assert len(result.stdout) == 1_000_000
        else:  # the cap, then a marker, then the last 16 KiB of stderr
            head, marker, tail = result.stderr.partition("\n[vmpool: ")
            assert len(head) == 1_000_000 and marker and len(tail.split("follow]\n", 1)[1]) == 16 * 1024
        if reused_after_timeout(sandbox):
            assert run(sandbox, "print('fine')").stdout == "fine\n"

    def test_output_flood_from_many_processes_times_out(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import os, sys
            for _ in range(3):
                if os.fork() == 0:
                    break
            while True:
                print('x' * 1000)
            """, wall_time_s=1)
        assert result.status == "timeout", result.error
        assert result.duration_s < 20 and result.output_truncated
        if reused_after_timeout(sandbox):
            assert live_processes(sandbox) == []


@pytest.mark.sandbox
class TestLimits:
    def test_infinite_loop_times_out_and_sandbox_survives(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "while True:\n    pass\n", wall_time_s=1.5)
        assert result.status == "timeout"
        assert 1.4 <= result.duration_s < 15
        if reused_after_timeout(sandbox):
            assert run(sandbox, "print(1)").status == "ok"

    def test_sleeping_program_times_out_on_wall_time(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "import time; time.sleep(60)", wall_time_s=1)
        assert result.status == "timeout" and result.duration_s < 15

    def test_longest_time_limits_are_usable(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "print(1)", wall_time_s=86400, cpu_time_s=86400)
        assert (result.status, result.stdout) == ("ok", "1\n"), result

    def test_cpu_limit(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "while True:\n    pass\n", wall_time_s=60, cpu_time_s=1)
        assert result.status == "timeout", result
        assert result.duration_s < 20 and result.error is not None and "cpu" in result.error

    def test_memory_mb_is_counted_beyond_the_interpreter(self, sandbox: LocalSandbox) -> None:
        # memory_mb is what the program may allocate, whatever the size of the (forked, already
        # large) interpreter it runs in; a small allowance must not fail trivial programs
        trivial = "import threading\nt = threading.Thread(target=print)\nt.start(); t.join()\nprint(len([0] * 10**6))"
        assert run(sandbox, trivial, memory_mb=32).status == "ok"
        assert run(sandbox, "x = bytearray(20 * 2**20)", memory_mb=32).status == "ok"
        assert run(sandbox, "x = bytearray(20 * 2**20)", memory_mb=64).status == "ok"
        assert run(sandbox, "x = bytearray(100 * 2**20)", memory_mb=32).status == "oom"
        assert run(sandbox, "print(1)", memory_mb=2**50).status == "ok"  # beyond setrlimit: no limit

    def test_memory_bomb_is_oom(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "x = []\nwhile True:\n    x.append(bytearray(10**7))\n", memory_mb=256)
        assert result.status == "oom", result
        assert run(sandbox, "print(sum(range(10)))").stdout == "45\n"

    def test_processes_are_capped(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import os, time
            children = 0
            try:
                for _ in range(200):
                    if os.fork() == 0:
                        time.sleep(60)
                        os._exit(0)
                    children += 1
            except OSError as exc:
                print("capped", children, exc.errno)
            """, max_processes=8)
        assert result.status == "ok", result
        words = result.stdout.split()
        assert words[0] == "capped" and int(words[1]) < 8 and words[2] == "11"  # EAGAIN

    def test_fork_bomb_is_contained(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import os
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
            """, wall_time_s=2, max_processes=16)
        assert result.status == "timeout"
        if reused_after_timeout(sandbox):
            assert live_processes(sandbox) == []
            assert run(sandbox, "print('fine')").stdout == "fine\n"

    def test_file_size_limit(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "open('big', 'wb').write(b'x' * (3 * 1024 * 1024))", max_file_size_mb=1)
        assert result.status == "error" and result.error is not None
        assert "File too large" in result.error


@pytest.mark.sandbox
class TestIsolation:
    def test_background_daemon_does_not_survive(self, sandbox: LocalSandbox) -> None:
        started = run(sandbox, """
            import os, subprocess
            p = subprocess.Popen(["sleep", "600"], start_new_session=True)
            if os.fork() == 0:          # classic double-fork daemon
                os.setsid()
                if os.fork() == 0:
                    import time; time.sleep(600)
                os._exit(0)
            print(p.pid)
            """)
        assert started.status == "ok", started
        pid = int(started.stdout)
        later = run(sandbox, "import os; print(os.path.exists('/proc/%d'))" % pid)
        assert later.stdout == "False\n"
        assert live_processes(sandbox) == []

    def test_scratch_is_private_and_cleaned(self, sandbox: LocalSandbox) -> None:
        first = run(sandbox, """
            import os
            open("mine.txt", "w").write("secret")
            open("/tmp/leftover.txt", "w").write("secret")
            print(os.getcwd())
            """)
        assert first.status == "ok", first
        second = run(sandbox, """
            import os
            print(os.listdir("."), os.path.exists(%r), os.path.exists("/tmp/leftover.txt"))
            """ % first.stdout.strip())
        assert second.stdout == "[] False False\n"

    def test_no_network(self, sandbox: LocalSandbox) -> None:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        try:
            port = server.getsockname()[1]
            result = run(sandbox, """
                import socket
                print(sorted(name for _, name in socket.if_nameindex()))
                for address in [("127.0.0.1", %d), ("1.1.1.1", 53)]:
                    try:
                        socket.create_connection(address, timeout=3).close()
                        print("connected", address)
                    except OSError as exc:
                        print("refused")
                """ % port)
        finally:
            server.close()
        assert result.status == "ok", result
        assert result.stdout.splitlines()[1:] == ["refused", "refused"]
        assert set(eval(result.stdout.splitlines()[0])) <= {"lo"}

    def test_host_files_are_invisible(self, sandbox: LocalSandbox, tmp_path: Path) -> None:
        name = ".vmpool-secret-%s" % uuid.uuid4().hex
        secrets = [tmp_path / name]
        for place in (Path.home(), Path.cwd()):  # e.g. /root and the checkout under test
            if os.access(place, os.W_OK):
                secrets.append(place / name)
        try:
            for path in secrets:
                path.write_text("top secret")
            probe = "import os\nprint([os.path.exists(p) for p in %r])" % [str(p) for p in secrets]
            # a VM has its own /etc/shadow and /root; neither may be readable by programs
            result = run(sandbox, probe + "\nprint(os.access('/etc/shadow', os.R_OK), os.access('/root', os.R_OK))")
            assert result.stdout == "%r\nFalse False\n" % ([False] * len(secrets)), result
        finally:
            for path in secrets:
                path.unlink(missing_ok=True)

    def test_cannot_write_outside_tmp(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import os
            for d in ["/", "/usr", "/usr/lib", "/etc", "/dev", "/dev/shm", "/opt/vmpool", "/proc", "/bin"]:
                try:
                    open(os.path.join(d, "x"), "w").close()
                    print("WROTE", d)
                except OSError:
                    pass
            open("/tmp/ok", "w").close()
            """)
        assert result.status == "ok", result
        assert result.stdout == ""

    def test_ipc_objects_cannot_be_created(self, sandbox: LocalSandbox) -> None:
        # SysV IPC objects and POSIX message queues outlive their creator: a program could leave
        # memory behind (a 400 MB segment, filled and detached) or a message for the next one
        result = run(sandbox, """
            import ctypes, ctypes.util, os
            libc = ctypes.CDLL(None, use_errno=True)
            if not hasattr(libc, "mq_open"):  # glibc < 2.34 keeps it in librt
                libc = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)
            def report(name, ret):
                print(name, "created" if ret >= 0 else os.strerror(ctypes.get_errno()))
            IPC_PRIVATE, IPC_CREAT, mode = 0, 0o1000, 0o600
            report("shmget", libc.shmget(IPC_PRIVATE, ctypes.c_size_t(400 * 2**20), IPC_CREAT | mode))
            report("semget", libc.semget(IPC_PRIVATE, 1, IPC_CREAT | mode))
            report("msgget", libc.msgget(IPC_PRIVATE, IPC_CREAT | mode))
            report("mq_open", libc.mq_open(b"/vmpool-conformance", os.O_CREAT | os.O_RDWR,
                                           ctypes.c_uint(mode), None))
            """)
        assert result.status == "ok", result
        assert all(not line.endswith("created") for line in result.stdout.splitlines()), result.stdout
        assert len(result.stdout.splitlines()) == 4
        later = run(sandbox, """
            import os
            for kind in ("shm", "sem", "msg"):
                path = "/proc/sysvipc/" + kind
                print(kind, len(open(path).readlines()) - 1 if os.path.exists(path) else 0)
            """)
        assert later.stdout == "shm 0\nsem 0\nmsg 0\n", later

    def test_random_state_differs_between_programs(self, sandbox: LocalSandbox) -> None:
        code = "import random; print(random.getrandbits(64), random.random())"
        assert run(sandbox, code).stdout != run(sandbox, code).stdout

    def test_runs_unprivileged(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, "import os; print(os.getuid() != 0 and os.geteuid() != 0)")
        assert result.stdout == "True\n"


AGENT_STATE = """
import os
agent = os.getppid()
print(os.getpriority(os.PRIO_PROCESS, agent), sorted(os.sched_getaffinity(agent)),
      os.sched_getscheduler(agent), open("/proc/%d/limits" % agent).read())
"""


@pytest.mark.sandbox
class TestAgentIsOutOfReach:
    """A program that attacks its agent (or the agent's ancestors) fails like any program that
    does something forbidden: the attack is refused, the run is a normal result, never a
    SandboxError, and the next program finds the agent as it was."""

    @pytest.mark.parametrize("attack", [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.kill(os.getppid(), signal.SIGSTOP)",
        "os.kill(-1, signal.SIGKILL)",
        "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "os.kill(1, signal.SIGKILL)",
        "os.kill(os.getppid(), signal.SIGINT)",
        "resource.prlimit(os.getppid(), resource.RLIMIT_CPU, (0, 0))",
        "resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (3, 3))",
        "os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)",
        "os.setpriority(os.PRIO_USER, os.getuid(), 19)",
        "os.sched_setaffinity(os.getppid(), {min(os.sched_getaffinity(0))})",
        "os.pidfd_open(os.getppid())",
    ])
    def test_attack_is_refused(self, sandbox: LocalSandbox, attack: str) -> None:
        before = run(sandbox, AGENT_STATE)
        assert before.status == "ok", before
        result = run(sandbox, "import os, resource, signal\n" + attack)
        assert result.status == "error", result
        assert result.error is not None and result.error.startswith("PermissionError"), result.error
        assert run(sandbox, AGENT_STATE).stdout == before.stdout

    def test_other_signal_syscalls_are_refused(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import ctypes, os, signal
            if os.uname().machine != "x86_64":
                raise SystemExit("syscall numbers below are x86_64's")
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            def call(nr, *args):
                ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
                return "done" if ret >= 0 else os.strerror(ctypes.get_errno())
            agent, info = os.getppid(), ctypes.create_string_buffer(128)
            siginfo = ctypes.addressof(info)
            ctypes.memmove(siginfo, (ctypes.c_int * 3)(signal.SIGKILL, 0, -1), 12)  # SI_QUEUE
            print("tkill", call(200, agent, signal.SIGKILL))
            print("tgkill", call(234, agent, agent, signal.SIGKILL))
            print("rt_sigqueueinfo", call(129, agent, signal.SIGKILL, siginfo))
            print("rt_tgsigqueueinfo", call(297, agent, agent, signal.SIGKILL, siginfo))
            print("kill_high_bits", call(62, agent | (1 << 32), signal.SIGKILL))
            procfd = os.open("/proc/%d" % agent, os.O_RDONLY | os.O_DIRECTORY)  # a pidfd too
            print("pidfd_send_signal", call(424, procfd, signal.SIGKILL, 0, 0))
            """)
        if result.status == "exited" and "x86_64" in result.stderr:
            pytest.skip(result.stderr.strip())
        assert result.status == "ok", result
        seen = dict(line.split(" ", 1) for line in result.stdout.splitlines())
        assert seen.keys() == {"tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
                               "kill_high_bits", "pidfd_send_signal"}
        assert "done" not in seen.values(), seen
        assert run(sandbox, "print(1)").stdout == "1\n"

    def test_memory_of_the_agent_and_its_ancestors_is_out_of_reach(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.restype = ctypes.c_long
            def parent(pid):
                try:
                    stat = open("/proc/%d/stat" % pid, "rb").read()
                except OSError:
                    return 0
                return int(stat[stat.rindex(b")") + 2:].split()[1])
            pid, ancestors = os.getpid(), []
            while parent(pid) > 0:
                pid = parent(pid)
                ancestors.append(pid)
            print("ancestors", ancestors)
            for pid in ancestors:
                for path, mode in [("mem", "r+b"), ("task/%d/mem" % pid, "r+b"), ("oom_score_adj", "w")]:
                    try:
                        open("/proc/%d/%s" % (pid, path), mode).close()
                        print("OPENED /proc/%d/%s" % (pid, path))
                    except OSError:
                        pass
                for request in (16, 0x4206):  # PTRACE_ATTACH, PTRACE_SEIZE
                    if libc.ptrace(ctypes.c_long(request), ctypes.c_long(pid), None, None) == 0:
                        print("TRACED", pid)
            """)
        assert result.status == "ok", result
        lines = result.stdout.splitlines()
        assert lines[0].startswith("ancestors [") and lines[0] != "ancestors []"
        assert lines[1:] == []

    def test_programs_still_signal_themselves_and_their_children(self, sandbox: LocalSandbox) -> None:
        result = run(sandbox, """
            import os, resource, signal, threading, time
            os.kill(os.getpid(), 0)
            os.kill(0, 0)  # our own process group
            signal.pthread_kill(threading.get_ident(), 0)
            resource.prlimit(0, resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
            os.setpriority(os.PRIO_PROCESS, 0, 1)
            def child():
                pid = os.fork()
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                return pid
            plain, grouped = child(), child()
            os.setpgid(grouped, grouped)  # a group of its own, led by the child
            resource.prlimit(plain, resource.RLIMIT_CPU, resource.getrlimit(resource.RLIMIT_CPU))
            os.setpriority(os.PRIO_PROCESS, plain, 5)
            os.setpriority(os.PRIO_PGRP, grouped, 5)
            os.sched_setaffinity(plain, os.sched_getaffinity(0))
            os.close(os.pidfd_open(plain))
            os.kill(plain, signal.SIGKILL)
            os.killpg(grouped, signal.SIGTERM)
            print(os.waitpid(plain, 0)[1] & 0x7F, os.waitpid(grouped, 0)[1] & 0x7F)
            """)
        assert (result.status, result.stdout) == ("ok", "9 15\n"), result


@pytest.mark.sandbox
class TestFilesAndCommands:
    def test_files_round_trip(self, sandbox: LocalSandbox) -> None:
        sandbox.files.write("/tmp/dir/a.txt", "héllo")
        sandbox.files.write("b.bin", b"\x00\xff" * 1000)
        assert sandbox.files.read("/tmp/dir/a.txt") == "héllo"
        assert sandbox.files.read("/tmp/b.bin", format="bytes") == b"\x00\xff" * 1000
        result = run(sandbox, "print(open('/tmp/dir/a.txt').read())")
        assert result.stdout == "héllo\n"  # files written by the host survive programs

    def test_file_errors_are_oserrors(self, sandbox: LocalSandbox) -> None:
        with pytest.raises(FileNotFoundError):
            sandbox.files.read("/tmp/does-not-exist")
        with pytest.raises(OSError):
            sandbox.files.write("/usr/x", "no")
        assert sandbox.is_running()

    def test_commands_run(self, sandbox: LocalSandbox) -> None:
        result = sandbox.commands.run("echo out; echo err >&2; exit 3")
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")

    def test_command_timeout(self, sandbox: LocalSandbox) -> None:
        result = sandbox.commands.run("sleep 100 & sleep 100", timeout=1)
        assert result.timed_out and result.exit_code == -9
        if reused_after_timeout(sandbox):
            assert live_processes(sandbox) == []


@pytest.mark.sandbox
class TestFileSystem:
    """`LocalSandbox.files`, E2B's filesystem API plus upload_dir/download_dir. Each test works in a
    directory of its own under /tmp of the shared sandbox."""

    @pytest.fixture
    def base(self, sandbox: LocalSandbox) -> str:
        return "/tmp/fs-%s" % uuid.uuid4().hex[:8]

    def test_text_bytes_and_write_files(self, sandbox: LocalSandbox, base: str) -> None:
        class Entry:
            path = base + "/obj.txt"
            data = "from an object"

        sandbox.files.write_files([{"path": base + "/a/t.txt", "data": "héllo"},
                                   {"path": base + "/b.bin", "data": bytes(range(256))}, Entry()])
        assert sandbox.files.read(base + "/a/t.txt") == "héllo"
        assert sandbox.files.read(base + "/b.bin", format="bytes") == bytes(range(256))
        assert sandbox.files.read(base + "/obj.txt") == "from an object"

    def test_list_depth_and_entry_fields(self, sandbox: LocalSandbox, base: str) -> None:
        sandbox.files.write(base + "/f.txt", "12345")
        sandbox.files.write(base + "/d/e/deep.txt", "x")
        sandbox.commands.run("chmod 640 %s/f.txt && ln -s f.txt %s/link" % (base, base))
        top = sandbox.files.list(base)
        assert [entry.name for entry in top] == ["d", "f.txt", "link"]
        info = {entry.name: entry for entry in top}
        f = info["f.txt"]
        assert (f.path, f.type, f.size, f.mode, f.permissions) == (base + "/f.txt", "file", 5, 0o640, "-rw-r-----")
        assert f.symlink_target is None and f.modified_time.tzinfo is not None
        assert abs(f.modified_time.timestamp() - time.time()) < 600
        assert (info["d"].type, info["link"].type, info["link"].symlink_target) == ("dir", "symlink", "f.txt")
        paths = [entry.path for entry in sandbox.files.list(base, depth=3)]
        assert paths == [base + p for p in ("/d", "/d/e", "/d/e/deep.txt", "/f.txt", "/link")]
        assert [entry.path for entry in sandbox.files.list(base, depth=2)] == [
            base + p for p in ("/d", "/d/e", "/f.txt", "/link")]

    def test_exists_get_info_and_missing_paths(self, sandbox: LocalSandbox, base: str) -> None:
        sandbox.files.write(base + "/f", "x")
        sandbox.commands.run("ln -s /nowhere %s/dangling" % base)
        assert sandbox.files.exists(base + "/f") and sandbox.files.exists(base)
        assert sandbox.files.exists(base + "/dangling") and not sandbox.files.exists(base + "/nope")
        assert sandbox.files.get_info(base).type == "dir"
        assert sandbox.files.get_info(base + "/dangling").symlink_target == "/nowhere"
        relative = base.removeprefix("/tmp/") + "/f"
        assert sandbox.files.get_info(relative).path == base + "/f"  # relative to /tmp
        for call in (sandbox.files.get_info, sandbox.files.remove, sandbox.files.list):
            with pytest.raises(FileNotFoundError):
                call(base + "/nope")
        with pytest.raises(FileNotFoundError):
            sandbox.files.download_dir(base + "/nope", "/tmp/unused")
        with pytest.raises(FileNotFoundError):
            sandbox.files.rename(base + "/nope", base + "/other")
        assert sandbox.is_running()

    def test_remove_rename_make_dir(self, sandbox: LocalSandbox, base: str) -> None:
        sandbox.files.write_files([{"path": base + "/tree/a/b/c.txt", "data": "c"},
                                   {"path": base + "/tree/d.txt", "data": "d"}])
        sandbox.files.remove(base + "/tree")
        assert not sandbox.files.exists(base + "/tree")
        sandbox.files.write(base + "/old.txt", "moved")
        info = sandbox.files.rename(base + "/old.txt", base + "/new.txt")
        assert (info.name, info.path, info.type, info.size) == ("new.txt", base + "/new.txt", "file", 5)
        assert sandbox.files.read(base + "/new.txt") == "moved" and not sandbox.files.exists(base + "/old.txt")
        assert sandbox.files.make_dir(base + "/m/n") is True
        assert sandbox.files.make_dir(base + "/m/n") is False
        assert sandbox.files.get_info(base + "/m/n").type == "dir"
        with pytest.raises(OSError):
            sandbox.files.make_dir("/usr/not-writable")

    def test_upload_and_download_a_tree(self, sandbox: LocalSandbox, base: str, tmp_path: Path) -> None:
        local = tmp_path / "up"
        (local / "sub" / "deeper").mkdir(parents=True)
        (local / "empty").mkdir()
        (local / "sub" / "deeper" / "t.txt").write_text("text")
        (local / "bin").write_bytes(bytes(range(256)) * 4)
        (local / "link").symlink_to("sub/deeper/t.txt")
        sandbox.files.upload_dir(local, base + "/tree")
        assert sandbox.files.read(base + "/tree/sub/deeper/t.txt") == "text"
        assert sandbox.files.get_info(base + "/tree/empty").type == "dir"
        assert sandbox.files.get_info(base + "/tree/link").symlink_target == "sub/deeper/t.txt"
        back = tmp_path / "down"
        sandbox.files.download_dir(base + "/tree", back)
        assert (back / "bin").read_bytes() == bytes(range(256)) * 4
        assert (back / "sub" / "deeper" / "t.txt").read_text() == "text"
        assert (back / "empty").is_dir() and not any((back / "empty").iterdir())
        assert os.readlink(back / "link") == "sub/deeper/t.txt"

    def test_download_refuses_links_out_of_the_directory(self, sandbox: LocalSandbox, base: str,
                                                         tmp_path: Path) -> None:
        sandbox.files.write(base + "/tree/ok.txt", "ok")
        sandbox.commands.run("ln -s /etc/passwd %s/tree/evil" % base)
        with pytest.raises(OSError, match="outside"):
            sandbox.files.download_dir(base + "/tree", tmp_path / "down")
        assert not os.path.lexists(tmp_path / "down" / "evil")

    @pytest.mark.parametrize("member", ["../escaped", "/tmp/absolute", "a/../../escaped"])
    def test_hostile_archives_are_refused_on_both_sides(self, sandbox: LocalSandbox, base: str,
                                                        tmp_path: Path, member: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(member)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        archive = buffer.getvalue()
        with pytest.raises(OSError, match="refusing archive member"):
            sandbox._call("unpack_dir", 30.0, path=base + "/in", tar_b64=b64encode(archive))
        assert not sandbox.files.exists(base + "/escaped") and not sandbox.files.exists("/tmp/absolute")
        with pytest.raises(OSError, match="refusing archive member"):
            unpack_tar(archive, str(tmp_path / "in"))
        assert not (tmp_path / "escaped").exists()
        assert sandbox.is_running()


@pytest.mark.sandbox
class TestLifecycle:
    def test_kill_is_idempotent_and_final(self, fresh_sandbox: LocalSandbox) -> None:
        assert fresh_sandbox.is_running()
        fresh_sandbox.kill()
        fresh_sandbox.kill()
        assert not fresh_sandbox.is_running()
        with pytest.raises(SandboxError):
            fresh_sandbox.run_program("print(1)")

    def test_context_manager_kills(self, sandbox_factory: SandboxFactory) -> None:
        with sandbox_factory() as sandbox:
            assert sandbox.run_program("print(1)").status == "ok"
        assert not sandbox.is_running()

    def test_agent_killed_from_host_is_sandbox_error(self, fresh_sandbox: LocalSandbox) -> None:
        agent = fresh_sandbox._process.agent_host_pid()
        if agent is None:
            pytest.skip("this driver's agent has no host process")
        os.kill(agent, 9)
        with pytest.raises(SandboxError):
            fresh_sandbox.run_program("print(1)")
        assert not fresh_sandbox.is_running()

    def test_protocol_mismatch_is_refused(self, sandbox_factory: SandboxFactory, vmpool_driver: str) -> None:
        if not get_driver(vmpool_driver).takes_agent_args:
            pytest.skip("the %s driver's agent starts before the host asks (snapshot), so it "
                        "cannot be started with --fake-protocol" % vmpool_driver)
        with pytest.raises(ProtocolError, match="v999.*v%d" % PROTOCOL_VERSION):
            sandbox_factory(agent_args=["--fake-protocol", "999"])

    def test_identity(self, sandbox: LocalSandbox, vmpool_driver: str) -> None:
        assert sandbox.driver == vmpool_driver and sandbox.isolation
        assert sandbox.sandbox_id.startswith(vmpool_driver)


@pytest.mark.sandbox
class TestProcesses:
    """Background processes (`LocalSandbox.processes`, E2B's commands): streamed output, stdin,
    signals, timeouts, and their life beside programs. Each test ends what it started (the
    `no_leftovers` fixture makes sure), so that the shared sandbox's other tests find no
    process they did not expect."""

    @pytest.fixture(autouse=True)
    def no_leftovers(self, sandbox: LocalSandbox) -> Iterator[None]:
        yield
        if sandbox.is_running():
            for info in sandbox.processes.list():
                sandbox.processes.kill(info.pid)
                try:
                    sandbox.processes.connect(info.pid).wait(60)  # collect its exit
                except ProcessLookupError:
                    pass  # collected by its handle meanwhile

    def test_output_and_exit_code(self, sandbox: LocalSandbox) -> None:
        handle = sandbox.processes.start("echo hello; echo oops >&2; exit 7")
        result = handle.wait(60)
        assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (7, "hello\n", "oops\n", False)
        assert (result.pid, handle.exit_code, handle.stdout, handle.stderr) == (handle.pid, 7, "hello\n", "oops\n")
        assert 0 < result.duration_s < 60 and not result.output_truncated

    def test_output_arrives_while_it_runs(self, sandbox: LocalSandbox) -> None:
        seen: list[str] = []
        first = threading.Event()

        def on_stdout(text: str) -> None:
            seen.append(text)
            first.set()

        handle = sandbox.processes.start("echo a; sleep 3; echo b", on_stdout=on_stdout)
        assert first.wait(60)
        assert "".join(seen) == "a\n" and handle.exit_code is None
        assert handle.wait(60).stdout == "".join(seen) == "a\nb\n"

    def test_utf8_is_decoded_across_chunks(self, sandbox: LocalSandbox) -> None:
        pieces: list[str] = []
        handle = sandbox.processes.start("python3 -c \"import sys; sys.stdout.write('€' * 100000)\"",
                                         on_stdout=pieces.append)
        result = handle.wait(120)
        assert result.stdout == "€" * 100000 == "".join(pieces)  # 3 bytes each: chunks split them

    def test_stdin_round_trip_through_cat(self, sandbox: LocalSandbox) -> None:
        handle = sandbox.processes.start("cat", stdin=True)
        handle.send_stdin("line one\n")
        assert handle.read_line(60) == "line one"
        handle.send_stdin("é two\n".encode())
        assert handle.read_line(60) == "é two"
        big = "x" * 3_000_000
        sandbox.processes.send_stdin(handle.pid, big + "\nlast")
        assert handle.read_line(120) == big
        handle.close_stdin()
        assert handle.wait(60).exit_code == 0
        assert handle.read_line(1) == "last" and handle.read_line(1) is None
        with pytest.raises(ProcessLookupError):
            handle.send_stdin("too late")
        without = sandbox.processes.start("sleep 60")
        with pytest.raises(BrokenPipeError):
            without.send_stdin("nobody reads this")

    def test_kill(self, sandbox: LocalSandbox) -> None:
        handle = sandbox.processes.start("sleep 600")
        assert handle.kill() is True
        assert handle.wait(60).exit_code == -signal.SIGKILL
        assert handle.kill() is False and sandbox.processes.kill(handle.pid) is False

    def test_signals_reach_the_process_group(self, sandbox: LocalSandbox) -> None:
        handle = sandbox.processes.start("trap 'echo terminated; exit 42' TERM; echo ready; "
                                         "while true; do sleep 0.1; done")
        assert handle.read_line(60) == "ready"
        handle.signal("SIGTERM")
        result = handle.wait(60)
        assert (result.exit_code, result.stdout) == (42, "ready\nterminated\n")
        sleeper = sandbox.processes.start("sleep 600")
        sleeper.signal(signal.SIGINT)
        assert sleeper.wait(60).exit_code == -signal.SIGINT
        with pytest.raises(ProcessLookupError):
            sleeper.signal("SIGTERM")

    def test_timeout_kills_the_group(self, sandbox: LocalSandbox) -> None:
        handle = sandbox.processes.start("sleep 600 & echo $!; sleep 600", timeout=1)
        background = int(handle.read_line(60) or "0")
        result = handle.wait(60)
        assert (result.timed_out, result.exit_code) == (True, -signal.SIGKILL)
        assert 0.9 <= result.duration_s < 30
        probe = run(sandbox, """
            import time
            for _ in range(100):
                try:
                    state = open("/proc/%d/stat").read().rsplit(")", 1)[1].split()[0]
                except OSError:
                    break
                if state == "Z":
                    break
                time.sleep(0.05)
            else:
                print("alive")
            """ % background)
        assert (probe.status, probe.stdout) == ("ok", ""), probe

    def test_envs_and_environment(self, sandbox: LocalSandbox) -> None:
        home = run(sandbox, "import os; print(os.environ['HOME'])").stdout.strip()
        handle = sandbox.processes.start('echo "$VMPOOL_A|$VMPOOL_B|$HOME"; python3 -c "print(1 + 1)"',
                                         envs={"VMPOOL_A": "1", "VMPOOL_B": "two words"})
        assert handle.wait(60).stdout == "1|two words|%s\n2\n" % home

    def test_cwd(self, sandbox: LocalSandbox) -> None:
        directory = "/tmp/proc-cwd-%s" % uuid.uuid4().hex[:8]
        sandbox.files.make_dir(directory)
        assert sandbox.processes.start("pwd", cwd=directory).wait(60).stdout == directory + "\n"
        relative = directory.removeprefix("/tmp/")
        assert sandbox.processes.start("pwd", cwd=relative).wait(60).stdout == directory + "\n"
        home = run(sandbox, "import os; print(os.environ['HOME'])").stdout.strip()
        default = sandbox.processes.start("pwd").wait(60).stdout.strip()
        assert default == (home if sandbox.files.exists(home) else "/tmp")
        with pytest.raises(FileNotFoundError):
            sandbox.processes.start("true", cwd=directory + "/missing")

    def test_list(self, sandbox: LocalSandbox) -> None:
        tagged = sandbox.processes.start("sleep 600", tag="tagged", cwd="/tmp")
        plain = sandbox.processes.start("sleep 601", cwd="/tmp")
        listed = {info.pid: info for info in sandbox.processes.list()}
        assert listed[tagged.pid] == ProcessInfo(pid=tagged.pid, cmd="sleep 600", tag="tagged", cwd="/tmp", running=True)
        assert listed[plain.pid] == ProcessInfo(pid=plain.pid, cmd="sleep 601", tag=None, cwd="/tmp", running=True)
        tagged.kill()
        tagged.wait(60)
        assert [info.pid for info in sandbox.processes.list()] == [plain.pid]  # its exit was collected

    def test_processes_outlive_programs_whose_leftovers_are_swept(self, sandbox: LocalSandbox) -> None:
        # the background process, a child in its session and one that left it (setsid) survive;
        # what a program leaves behind (in a session of its own too) does not
        handle = sandbox.processes.start("sleep 600 & echo $!; setsid sleep 600 & echo $!; sleep 600")
        child, detached = int(handle.read_line(60) or "0"), int(handle.read_line(60) or "0")
        started = run(sandbox, "import subprocess\nprint(subprocess.Popen(['sleep', '600'], start_new_session=True).pid)")
        assert started.status == "ok", started
        leftover = int(started.stdout)
        probe = "import os\nprint([os.path.exists('/proc/%%d' %% pid) for pid in %r])" % (
            [leftover, handle.pid, child, detached],)
        for _ in range(3):
            assert run(sandbox, probe).stdout == "[False, True, True, True]\n"
            assert sandbox.commands.run("true").exit_code == 0
        assert handle.exit_code is None
        assert [info.running for info in sandbox.processes.list() if info.pid == handle.pid] == [True]
        handle.kill()
        assert handle.wait(60).exit_code == -signal.SIGKILL
        assert run(sandbox, "pass").status == "ok"  # its sweep takes the detached sleep: it lost its parent
        assert live_processes(sandbox) == []

    def test_requests_are_answered_while_a_process_floods(self, sandbox: LocalSandbox) -> None:
        received = [0]
        flowing = threading.Event()

        def count(text: str) -> None:
            received[0] += len(text)
            if received[0] > 1_000_000:
                flowing.set()

        handle = sandbox.processes.start("yes vmpool-flood", on_stdout=count, timeout=300)
        assert flowing.wait(120)
        at_start, started = received[0], time.monotonic()
        sandbox.ping(timeout=30)
        path = "/tmp/flood-%s" % uuid.uuid4().hex[:8]
        sandbox.files.write(path, "written during the flood")
        assert sandbox.files.read(path) == "written during the flood"
        assert run(sandbox, "print('ran during the flood')").stdout == "ran during the flood\n"
        assert time.monotonic() - started < 60
        assert handle.exit_code is None and received[0] > at_start  # it flooded meanwhile
        assert handle.kill()
        result = handle.wait(120)
        assert result.exit_code == -signal.SIGKILL and result.stdout.startswith("vmpool-flood\n")

    def test_20_mb_of_output_arrive_complete(self, sandbox: LocalSandbox) -> None:
        handle = sandbox.processes.start("seq -w 1 2500000")
        result = handle.wait(600)
        assert (result.exit_code, len(result.stdout), result.output_truncated) == (0, 20_000_000, False)
        assert result.stdout == "".join("%07d\n" % number for number in range(1, 2_500_001))

    def test_connect_to_a_running_process(self, sandbox: LocalSandbox) -> None:
        handle = sandbox.processes.start("cat", stdin=True)
        other = sandbox.processes.connect(handle.pid)
        assert other.pid == handle.pid and other.exit_code is None
        handle.send_stdin("shared\n")
        assert other.read_line(60) == "shared" and handle.read_line(60) == "shared"
        other.close_stdin()
        assert other.wait(60).exit_code == 0 == handle.wait(60).exit_code
        with pytest.raises(ProcessLookupError):
            sandbox.processes.connect(handle.pid)  # its exit has been collected
        with pytest.raises(ProcessLookupError):
            sandbox.processes.connect(2**22 + 7)

    def test_programs_run_while_a_process_streams(self, sandbox: LocalSandbox) -> None:
        lines: list[str] = []
        handle = sandbox.processes.start("for i in $(seq 1 40); do echo $i; sleep 0.1; done",
                                         on_stdout=lines.append)
        handle.read_line(60)
        before = len("".join(lines).splitlines())
        for number in range(4):
            result = run(sandbox, "import time; time.sleep(0.3); print(%d)" % number)
            assert (result.status, result.stdout) == ("ok", "%d\n" % number), result
        assert len("".join(lines).splitlines()) > before  # output kept arriving during the programs
        assert handle.wait(120).stdout == "".join("%d\n" % number for number in range(1, 41))

    def test_guest_dir(self, sandbox: LocalSandbox) -> None:
        assert sandbox.guest_dir.startswith("/")
        assert sandbox.files.exists(sandbox.guest_dir + "/_agent.py")

    def test_killing_the_sandbox_ends_everything(self, fresh_sandbox: LocalSandbox) -> None:
        root = getattr(fresh_sandbox._process, "pid", None)  # a host process tree (bwrap), if any
        handle = fresh_sandbox.processes.start("sleep 600 & sleep 600")
        assert handle.exit_code is None
        tree = _host_descendants(root) if root is not None else []
        fresh_sandbox.kill()
        with pytest.raises(SandboxError):
            handle.wait(30)
        assert handle.exit_code is None and not fresh_sandbox.is_running()
        with pytest.raises(SandboxError):
            fresh_sandbox.processes.list()
        assert [pid for pid in tree if os.path.exists("/proc/%d" % pid)] == []


def _host_descendants(root: int) -> list[int]:
    """Host pids of every process below `root`."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path("/proc/%s/stat" % name).read_bytes()
            except OSError:
                continue
            parents[int(name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found
